"""ONNX Runtime's own quantizer, ``quantize_static``: the tool a practitioner would reach for.

``quantize_static`` takes an FP32 ONNX model and a reader of calibration batches, observes
every tensor (min/max here) and writes a QDQ model like ptqlib's export. Its choices,
which :func:`gemm_qparams` reads back from the graph:

- activations: uint8, affine, ``S = (max - min) / 255`` over the range widened to 0;
- weights: int8, symmetric, per output channel, on the *restricted* grid -127..127
  with ``S_w = max|w| / 127`` (torch uses -128..127 and ``max|w| / 127.5``);
- biases: int32, ``round(b / (S_x S_w))``.

ptqlib reproduces them with ``calibrate(..., activation_observer="minmax")`` and
``convert(..., weight_range=RESTRICTED_WEIGHT_RANGE)``; notebook 08 compares the two.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from torch import nn

from ptqlib.deploy.onnx_export import INPUT_NAME, fp32_to_onnx
from ptqlib.errors import InputError


class ImageBatches(CalibrationDataReader):
    """The calibration images as ORT's quantizer reads them: one ``{"images": batch}`` per
    call of ``get_next``, then None."""

    def __init__(self, images: torch.Tensor, batch_size: int = 100) -> None:
        batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self._batches = iter([{INPUT_NAME: batch.float().numpy()} for batch in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """quantize_static logs a warning that it would like a pre-processed model (shape
    inference and graph clean-up); ptqlib's graph is already minimal, so it is silenced."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def ort_quantize_static(
    model: nn.Sequential, images: torch.Tensor, per_channel: bool = True
) -> onnx.ModelProto:
    """The FP32 ``model`` exported to ONNX, then quantized by ORT's ``quantize_static`` (QDQ
    format, uint8 activations, int8 weights, min/max calibration on ``images``)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        raise InputError(f"images: expected a batch [N, 1, 28, 28], got {images!r:.60}")
    with tempfile.TemporaryDirectory() as folder:
        fp32_path, int8_path = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save(fp32_to_onnx(model), fp32_path)
        with _quiet_quantizer():
            quantize_static(
                str(fp32_path),
                str(int8_path),
                ImageBatches(images),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        quantized = onnx.load(int8_path)
    # Not ptqlib's export any more: drop the FP32 file's producer and metadata.
    quantized.producer_name = "onnxruntime.quantization"
    del quantized.metadata_props[:]
    return quantized


def gemm_qparams(onnx_model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """For every ``Gemm`` of a QDQ graph, in order: the input's scale and zero-point, the
    weight as stored (int8, or uint8 in ptqlib's export), its scales and zero-points, the
    int32 bias, and the output's scale and zero-point (of the ``QuantizeLinear`` after the
    Gemm, or after its Relu). ``"weight_integers"`` is ``weight - weight_zero_point`` (int32):
    the integers that enter the products, whatever the stored type."""
    graph = onnx_model.graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def dequantize_inputs(tensor: str) -> list[str]:
        node = producers.get(tensor)
        if node is None or node.op_type != "DequantizeLinear":
            raise InputError(f"onnx_model: {tensor!r} does not come from a DequantizeLinear")
        return list(node.input)

    layers = []
    for gemm in (node for node in graph.node if node.op_type == "Gemm"):
        x_q, x_scale, x_zero = dequantize_inputs(gemm.input[0])
        w_q, w_scale, w_zero = dequantize_inputs(gemm.input[1])
        b_q, _, _ = dequantize_inputs(gemm.input[2])
        output = gemm.output[0]
        following = consumers.get(output, [])
        if following and following[0].op_type == "Relu":
            output = following[0].output[0]
            following = consumers.get(output, [])
        if not following or following[0].op_type != "QuantizeLinear":
            raise InputError(f"onnx_model: the output of {gemm.name!r} is not quantized")
        _, y_scale, y_zero = following[0].input
        layers.append(
            {
                "input_scale": constants[x_scale],
                "input_zero_point": constants[x_zero],
                "weight": constants[w_q],
                "weight_scale": constants[w_scale],
                "weight_zero_point": constants[w_zero],
                "weight_integers": _integers_of(constants[w_q], constants[w_zero]),
                "bias": constants[b_q],
                "output_scale": constants[y_scale],
                "output_zero_point": constants[y_zero],
            }
        )
    return layers


def _integers_of(stored: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``q - Z`` in int32, with a per-channel zero-point broadcast along axis 0."""
    zero_point = zero_point.astype(np.int32).reshape((-1,) + (1,) * (stored.ndim - 1))
    return stored.astype(np.int32) - zero_point


def compare_qparams(
    ours: onnx.ModelProto, theirs: onnx.ModelProto, names: list[str]
) -> list[dict[str, object]]:
    """Layer by layer, how two QDQ graphs' qparams compare: the scales' largest relative
    difference, whether zero-points are equal, and the fraction of identical weight
    integers (``q_w - Z_w``, so int8 and uint8 storage compare by value) and bias
    integers. ``names`` labels the layers (e.g. fc1, fc2, fc3)."""
    rows = []
    pairs = zip(gemm_qparams(ours), gemm_qparams(theirs), strict=True)
    for name, (a, b) in zip(names, pairs, strict=True):
        row: dict[str, object] = {"layer": name}
        for key in ("input_scale", "weight_scale", "output_scale"):
            difference = np.abs(a[key].astype(np.float64) - b[key]) / b[key]
            row[f"{key} rel. diff"] = float(difference.max())
        for key in ("input_zero_point", "output_zero_point"):
            row[f"{key}s"] = f"{int(a[key])} / {int(b[key])}"
        ours_w, theirs_w = a["weight_integers"], b["weight_integers"]
        row["weights identical"] = float((ours_w == theirs_w).mean())
        row["weight range"] = f"{int(ours_w.min())}..{int(ours_w.max())} / "
        row["weight range"] += f"{int(theirs_w.min())}..{int(theirs_w.max())}"
        row["biases identical"] = float((a["bias"] == b["bias"]).mean())
        rows.append(row)
    return rows
