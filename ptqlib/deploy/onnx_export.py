"""Export to ONNX: ptqlib's INT8 model, with ptqlib's own qparams, as a QDQ graph.

ONNX describes a quantized network in the *QDQ* form: the float graph, with a
``QuantizeLinear`` / ``DequantizeLinear`` pair wherever a tensor is quantized::

    images -> Flatten -> Q(S_x, Z_x) -> DQ -> Gemm(DQ(W_q, S_w), DQ(b_q, S_x S_w)) -> Relu
           -> Q(S_y, Z_y) -> DQ -> Gemm ... -> Q -> DQ -> logits

- ``QuantizeLinear``:   q = clamp(round(x / S) + Z)   (uint8 activations, per tensor);
- ``DequantizeLinear``: r = S (q - Z)                 (weights, per output channel: axis 0;
  int32 biases with scale S_x S_w and zero-point 0);
- ``Gemm`` with ``transB=1`` is ``x W^T + b``, exactly ``nn.Linear``.

Read literally, the graph computes in float on fake-quantized values. A runtime such as ONNX
Runtime recognises each ``DQ -> Gemm -> (Relu) -> Q`` group and runs it as one integer
kernel (QGemm: int8 GEMM, int32 bias, requantization), which is what ptqlib's Int8Linear
does. The ReLU stays in the graph; where Z_y is the lowest integer (the usual case after a
ReLU) the runtime drops it, since the clamp already does its work. An activation of fewer
bits (4-bit: 0..15) gets a ``Clip`` to its range after its ``QuantizeLinear``, which
saturates at the dtype's ends only (:func:`clip_range`).

**The weights are stored as uint8 with zero-point 128** (``weight_dtype="uint8"``, the
default): the integer ``q_w + 128`` with Z_w = 128 dequantizes to the same real weight as
ptqlib's int8 ``q_w`` with Z_w = 0, and ``q_w,k + 128 - 128`` puts the same integer into every
product. What changes is the kernel ONNX Runtime picks. With int8 weights (U8S8, what
``quantize_static`` writes) its MLAS library uses, on x86 CPUs without VNNI (AVX2, AVX-512
without VNNI), ``vpmaddubsw``, which adds each pair of uint8 x int8 products into a
*saturating* int16: 2 * 255 * 127 > 32767, so some accumulators are not the exact sum
(``ptqlib.deploy.u8s8_saturation`` reproduces them). With uint8 weights (U8U8) MLAS widens both
operands to int16 and uses ``vpmaddwd`` (exact) there; with VNNI or AMX it turns them back into
int8 (XOR 0x80: zero-point 0) for its exact U8S8 kernel (``vpdpbusd``, ``tdpbusd``). So the
uint8 file gives ptqlib's integers on every x86 CPU. ``weight_dtype="int8"`` writes ORT's
U8S8 layout instead: faster without VNNI, exact only with VNNI, AMX or on ARM.

The graph is written node by node with the ``onnx`` package's helpers: every initializer is a
buffer of ptqlib's model, so the file holds ptqlib's integers and scales, nothing
re-computed. The batch dimension is symbolic ("batch"). ``expose_integers`` adds every
quantized activation as an extra graph output, to compare them with ptqlib layer by layer.

:func:`save_onnx` stamps the file with ``ptqlib.sha256`` in its ``metadata_props``: the
SHA-256 digest of the serialized model without that entry (every initializer's bytes,
dtype and shape, every node, every other metadata entry). ``load_onnx``
(``ptqlib.deploy.onnx_runtime``) recomputes it and refuses a file that does not match.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ptqlib.digests import bytes_digest
from ptqlib.errors import InputError
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import Int8Model
from ptqlib.quantization import QParams

OPSET = 21
PRODUCER = "ptqlib"
DIGEST_KEY = "ptqlib.sha256"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# MNIST images, any number of them: the batch dimension is symbolic.
IMAGE_SHAPE = ["batch", 1, 28, 28]
ONNX_DTYPES = {torch.uint8: TensorProto.UINT8, torch.int8: TensorProto.INT8}
NUMPY_DTYPES = {torch.uint8: np.uint8, torch.int8: np.int8}
# How the weights are stored (module docstring): the dtype and the zero-point of ptqlib's int8
# symmetric weights (zero-point 0) in each layout.
WEIGHT_ZERO_POINTS = {"uint8": 128, "int8": 0}


class _GraphBuilder:
    """Collects nodes and initializers; names every tensor after the layer it belongs to."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(self, op_type: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(
            helper.make_node(op_type, inputs, [output], name=f"{output}_{op_type}", **attributes)
        )
        return output

    def quantize(self, x: str, qparams: QParams, output: str) -> str:
        """QuantizeLinear with ``qparams``, named ``output``; a ``Clip`` to the qparams' range
        after it where that range is narrower than its dtype's (see :func:`clip_range`)."""
        # Per-tensor qparams are scalars in ONNX (a 1-d scale would mean per-axis).
        numpy_dtype = NUMPY_DTYPES[qparams.dtype]
        scale = self.constant(
            f"{output}_scale", qparams.scale.reshape(()).numpy().astype(np.float32)
        )
        zero_point = self.constant(
            f"{output}_zero_point", np.array(int(qparams.zero_point), dtype=numpy_dtype)
        )
        bounds = clip_range(qparams)
        if bounds is None:
            return self.node("QuantizeLinear", [x, scale, zero_point], output)
        saturated = self.node("QuantizeLinear", [x, scale, zero_point], f"{output}_saturated")
        lowest, highest = (
            self.constant(f"{output}_{end}", np.array(bound, dtype=numpy_dtype))
            for end, bound in zip(("min", "max"), bounds, strict=True)
        )
        return self.node("Clip", [saturated, lowest, highest], output)

    def dequantize(self, q: str, output: str) -> str:
        """DequantizeLinear reusing the scale and zero-point initializers of ``q``'s Q node."""
        return self.node("DequantizeLinear", [q, f"{q}_scale", f"{q}_zero_point"], output)


def clip_range(qparams: QParams) -> tuple[int, int] | None:
    """``(quant_min, quant_max)`` if they are narrower than the dtype's range, else None.

    ``QuantizeLinear`` saturates at its dtype's ends (0..255 for uint8): a 4-bit activation
    (0..15) needs its own clamp, or the runtime passes 16..255 on to the next layer. ONNX
    has no 4- or 6-bit type that every runtime fuses, so the clamp is a ``Clip`` on the
    integers right after the quantization: ``clamp(clamp(q, 0, 255), lo, hi)`` is
    ``clamp(q, lo, hi)``, the integer layer's own output."""
    info = torch.iinfo(qparams.dtype)
    if (qparams.quant_min, qparams.quant_max) == (info.min, info.max):
        return None
    return qparams.quant_min, qparams.quant_max


def _int8_linear_nodes(
    builder: _GraphBuilder, layer: Int8Linear, x_q: str, weight_dtype: str
) -> str:
    """DQ(x), DQ(W), DQ(b) -> Gemm -> Relu? -> Q(y): one Int8Linear. Returns Q(y)'s name."""
    name = layer.name
    per_channel = layer.weight_scale.numel() > 1
    axis = {"axis": 0} if per_channel else {}
    scale_shape = (layer.out_features,) if per_channel else ()
    x = builder.dequantize(x_q, f"{name}_input")
    # q_w + Z_w with zero-point Z_w: the same real weights, the same products (docstring).
    zero_point = WEIGHT_ZERO_POINTS[weight_dtype]
    stored = (layer.weight.numpy().astype(np.int16) + zero_point).astype(weight_dtype)
    weight_q = builder.constant(f"{name}_weight_quantized", stored)
    weight_scale = builder.constant(
        f"{name}_weight_scale", layer.weight_scale.reshape(scale_shape).numpy()
    )
    weight_zero = builder.constant(
        f"{name}_weight_zero_point", np.full(scale_shape, zero_point, dtype=weight_dtype)
    )
    weight = builder.node(
        "DequantizeLinear", [weight_q, weight_scale, weight_zero], f"{name}_weight", **axis
    )
    # The bias's scale is S_x S_w (float32, as ORT's own quantizer writes it); a fused
    # integer kernel adds the int32 values straight into the accumulator.
    bias_scale = (layer.input_scale.reshape(()) * layer.weight_scale).expand(layer.out_features)
    bias_q = builder.constant(f"{name}_bias_quantized", layer.bias.numpy())
    bias_scale = builder.constant(f"{name}_bias_scale", bias_scale.numpy().astype(np.float32))
    bias_zero = builder.constant(
        f"{name}_bias_zero_point", np.zeros(layer.out_features, dtype=np.int32)
    )
    bias = builder.node("DequantizeLinear", [bias_q, bias_scale, bias_zero], f"{name}_bias", axis=0)
    y = builder.node("Gemm", [x, weight, bias], f"{name}_output", transB=1)
    if layer.relu:
        y = builder.node("Relu", [y], f"{name}_relu")
    return builder.quantize(y, layer.output_qparams, f"{name}_quantized")


def _check_exportable(model: Int8Model) -> list[Int8Linear]:
    if not isinstance(model, Int8Model):
        raise TypeError(f"model: expected an Int8Model (from convert), got {type(model).__name__}")
    layers = list(model.layers)
    linears = [layer for layer in layers if isinstance(layer, Int8Linear)]
    first_linear = layers.index(linears[0])
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Flatten) and index > first_linear:
            raise InputError("model: ONNX export supports Flatten only before the first Linear")
        if not isinstance(layer, (nn.Flatten, Int8Linear)):
            raise InputError(f"model: cannot export a {type(layer).__name__} layer to ONNX")
    pixels = IMAGE_SHAPE[1] * IMAGE_SHAPE[2] * IMAGE_SHAPE[3]
    if linears[0].in_features != pixels:  # the graph's input is the MNIST image
        raise InputError(
            f"model: layer {linears[0].name!r} takes {linears[0].in_features} features; the "
            f"ONNX graph's input is a {IMAGE_SHAPE[2]} x {IMAGE_SHAPE[3]} image ({pixels} values)"
        )
    return linears


def int8_to_onnx(
    model: Int8Model, expose_integers: bool = False, weight_dtype: str = "uint8"
) -> onnx.ModelProto:
    """The QDQ ONNX graph of an :class:`Int8Model` (see the module docstring).

    ``expose_integers`` adds the quantized input and every layer's quantized output
    (uint8/int8, named ``<layer>_quantized``) as graph outputs. ``weight_dtype`` stores the
    weights as ``"uint8"`` (zero-point 128: exact in ONNX Runtime on x86, with or without
    VNNI, and ARM) or ``"int8"`` (zero-point 0: ORT's U8S8 kernels, which can saturate on x86
    without VNNI).
    """
    if weight_dtype not in WEIGHT_ZERO_POINTS:
        raise InputError(
            f"weight_dtype: expected one of {sorted(WEIGHT_ZERO_POINTS)}, got {weight_dtype!r}"
        )
    linears = _check_exportable(model)
    builder = _GraphBuilder()
    flat = builder.node("Flatten", [INPUT_NAME], "flat", axis=1)
    current = builder.quantize(flat, model.input_qparams, "input_quantized")
    integer_outputs = [(current, model.input_qparams)]
    for layer in linears:
        current = _int8_linear_nodes(builder, layer, current, weight_dtype)
        integer_outputs.append((current, layer.output_qparams))
    builder.dequantize(current, OUTPUT_NAME)
    outputs = [
        helper.make_tensor_value_info(
            OUTPUT_NAME, TensorProto.FLOAT, ["batch", linears[-1].out_features]
        )
    ]
    if expose_integers:
        outputs += [
            helper.make_tensor_value_info(name, ONNX_DTYPES[qparams.dtype], ["batch", None])
            for name, qparams in integer_outputs
        ]
    metadata = {"ptqlib.kind": "int8", "ptqlib.layers": ",".join(layer.name for layer in linears)}
    if model.takes_pixels:  # raw pixel values in (see ptqlib.models.fold_input_normalization)
        metadata["ptqlib.input"] = "pixels"
    return _model(builder, outputs, "ptqlib_int8", metadata)


def fp32_to_onnx(model: nn.Sequential) -> onnx.ModelProto:
    """The float graph of a Sequential of Flatten / Linear / ReLU (e.g. SimpleNet):
    Flatten -> Gemm -> Relu -> ... -> Gemm. Written with the same helpers as the INT8 graph,
    so no exporter (and no ``onnxscript``) is needed."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
    builder = _GraphBuilder()
    current, out_features = INPUT_NAME, None
    for name, module in model.named_children():
        if isinstance(module, nn.Flatten):
            current = builder.node("Flatten", [current], f"{name}_output", axis=1)
        elif isinstance(module, nn.ReLU):
            current = builder.node("Relu", [current], f"{name}_output")
        elif isinstance(module, nn.Linear):
            weight = builder.constant(f"{name}_weight", module.weight.detach().numpy())
            inputs = [current, weight]
            if module.bias is not None:
                inputs.append(builder.constant(f"{name}_bias", module.bias.detach().numpy()))
            current = builder.node("Gemm", inputs, f"{name}_output", transB=1)
            out_features = module.out_features
        else:
            raise InputError(f"layer {name!r}: cannot export a {type(module).__name__} to ONNX")
    if out_features is None:
        raise InputError("model: has no Linear layer")
    builder.node("Identity", [current], OUTPUT_NAME)
    output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", out_features])
    return _model(builder, [output], "ptqlib_fp32", {"ptqlib.kind": "fp32"})


def _model(
    builder: _GraphBuilder,
    outputs: list[onnx.ValueInfoProto],
    graph_name: str,
    metadata: dict[str, str],
) -> onnx.ModelProto:
    images = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, IMAGE_SHAPE)
    graph = helper.make_graph(
        builder.nodes, graph_name, [images], outputs, initializer=builder.initializers
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER
    )
    # An IR version every current runtime reads (make_model writes the newest one).
    onnx_model.ir_version = 10
    helper.set_model_props(onnx_model, metadata)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def unsigned_copy(onnx_model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``onnx_model`` without its ``ptqlib.sha256`` metadata entry."""
    copy = onnx.ModelProto()
    copy.CopyFrom(onnx_model)
    kept = [entry for entry in copy.metadata_props if entry.key != DIGEST_KEY]
    del copy.metadata_props[:]
    copy.metadata_props.extend(kept)
    return copy


def onnx_digest(onnx_model: onnx.ModelProto) -> str:
    """SHA-256 of the serialized model without its digest entry (see the module docstring).
    Protobuf writes the fields of a message in a fixed order, so the same model always
    serializes to the same bytes."""
    return bytes_digest(unsigned_copy(onnx_model).SerializeToString())


def save_onnx(onnx_model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write an ONNX model to ``path`` atomically (a temporary file, then a rename), with
    its digest in ``metadata_props`` (``onnx_model`` itself is not changed)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"out: {str(path)!r} is a directory; give a file name like model.onnx")
    stamped = unsigned_copy(onnx_model)
    digest = onnx_digest(stamped)
    entry = stamped.metadata_props.add()
    entry.key, entry.value = DIGEST_KEY, digest
    temporary = path.with_name(path.name + ".partial")
    onnx.save(stamped, temporary)
    os.replace(temporary, path)
    return path
