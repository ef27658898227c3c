"""The model as the exported C sees it (notebook 10): a chain of layers with their shapes,
their C names and their constants folded for the C.

``int8_graph(model)`` and ``fp32_graph(model)`` turn an :class:`~ptqlib.int8_model.Int8Model`
or an FP32 ``nn.Sequential`` (SimpleNet, SmallCNN, DepthwiseCNN; BatchNorm folded first)
into a list of :class:`CLayer`. Every activation of one image is stored as the C wants it:
**channels last** (``[H][W][C]``, so a 1x1 convolution is a Linear per pixel and a Flatten
is no copy; the first Linear after a Flatten gets its weight columns permuted from
PyTorch's ``(C, H, W)`` order to ``(H, W, C)``).

**INT8: what is folded at export.** Every integer step computes (``ptqlib.int8_layers``)::

    acc = sum_k (q_x,k - Z_x) q_w,k + q_b         q_y = clamp(round(M acc) + Z_y, lo, hi)

The C keeps every activation as uint8 ``u`` (0..255): a uint8 activation is its own ``u``;
one with negative integers (int8) travels as ``u = q + 128`` (its zero-point and clamp move
by 128 too). Then ``sum_k (u_k - Z_u) q_w,k = sum_k u_k q_w,k - Z_u sum_k q_w,k``: the second
term is one integer per output channel, folded into the bias, ``b = q_b - Z_u sum_k q_w,k``.
What is left, ``b + sum_k u_k q_w,k``, is uint8 x int8 products summed into int32 (what
AVX-512 VNNI's ``vpdpbusd`` computes). A convolution pads with ``u = Z_u``, so that the padded
taps add ``Z_u q_w`` and the folded bias takes it out again, exactly as ptqlib pads.

**When the int32 sum cannot overflow** (:func:`check_int32_sums`). Let P and N be the sums
of a row's positive and of its negative weights. Each product ``u_k q_w,k`` with u in
0..255 lies in ``[255 min(q_w,k, 0), 255 max(q_w,k, 0)]``, so for every input

    255 N + b  <=  b + sum_k u_k q_w,k  <=  255 P + b.

If ``|b| <= INT32_MAX`` (b is stored as an int32), ``255 P + b <= INT32_MAX`` and
``255 N + b >= INT32_MIN``, the final sum fits in int32, and so does every partial sum of a
loop that starts from b and adds the products in any order (each is b plus a subset of the
products, bounded the same way): the portable C starts its accumulator at the bias, so its
signed arithmetic never overflows. SIMD code sums the products of one row in several lanes
(or accumulators) that start from 0 and adds them up at the end: its partial sums may leave
the int32 range, but vector additions wrap modulo 2^32, and a sum computed modulo 2^32 in
any order equals the true sum whenever the true sum fits in int32. So the three conditions
are exact: they accept every row whose result fits, for every summation order, SIMD lanes
included, and refuse the others (an input reaching 255 P + b or 255 N + b exists).

**The input.** ptqlib's default INT8 checkpoint takes normalised float images and quantizes
them in float32. The C takes raw pixels ``p`` (0..255) instead, through a 256-entry table
``p -> u`` computed here by ptqlib's own ``quantize_input``: exact, no float at run time. A
model converted with ``pixel_input=True`` reads pixels directly: no table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from ptqlib.batchnorm import fold_model, has_batchnorm
from ptqlib.data import normalise
from ptqlib.errors import InputError
from ptqlib.int8_gemm import carrier_offset
from ptqlib.int8_layers import Int8Conv2d, Int8GlobalAvgPool2d, Int8Linear, Int8MaxPool2d
from ptqlib.int8_model import Int8Model, is_pixel_input
from ptqlib.int8_pooling import int_pair
from ptqlib.integer_arithmetic import INT32_MAX, INT32_MIN, MAX_SHIFT

SUPPORTED = (
    "C export supports Linear, Conv2d (plain or depthwise), ReLU, MaxPool2d, "
    "AdaptiveAvgPool2d(1) and Flatten"
)
# What the C reads: one 28x28 digit, as [H][W][C].
IMAGE_SHAPE = (28, 28, 1)
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def c_identifier(name: str) -> str:
    """``name`` as a C identifier part: every character other than a letter, digit or ``_``
    becomes ``_`` (``"0"`` stays ``"0"``: it always follows a prefix)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", str(name))


def c_prefix(model_name: str, kind: str) -> str:
    """The prefix of every C name of an export: ``<model>_<kind>``, a valid identifier."""
    prefix = f"{c_identifier(model_name)}_{kind}".lower()
    if not IDENTIFIER.fullmatch(prefix) or not model_name:
        raise InputError(
            f"model_name: {model_name!r} does not start a C identifier; expected a name "
            "starting with a letter, such as 'simplenet'"
        )
    return prefix


@dataclass(frozen=True)
class CLayer:
    """One layer as the C computes it, for one image.

    ``kind``: "linear", "conv" (``groups`` 1), "depthwise", "maxpool" or "avgpool" (global).
    Shapes are ``(H, W, C)``, channels last (a Linear's are ``(1, 1, features)``). A weighted
    layer's ``weight`` is ``[out, K]`` with K in the C's order: ``(ky, kx, c)`` for a
    convolution, ``(ky, kx)`` for a depthwise one, the (permuted) inputs for a Linear.
    INT8 (``weight`` int8): ``bias`` int32 (folded, see the module docstring), ``multiplier``
    int32 and ``shift`` int8 per output channel, the output's zero-point and clamp and the
    input's zero-point (what padding holds), all in the C's uint8 domain. FP32 (``weight``
    float32): ``bias`` float32 and ``relu``.
    """

    kind: str
    name: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    multiplier: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    input_zero_point: int = 0
    output_zero_point: int = 0
    lowest: int = 0
    highest: int = 255
    relu: bool = False

    @property
    def weighted(self) -> bool:
        return self.weight is not None

    @property
    def inputs(self) -> int:
        """Values per image going in."""
        height, width, channels = self.input_shape
        return height * width * channels

    @property
    def outputs(self) -> int:
        height, width, channels = self.output_shape
        return height * width * channels

    @property
    def multiply_accumulates(self) -> int:
        """Multiply-accumulates per image."""
        if not self.weighted:
            return 0
        height, width, _ = self.output_shape
        return height * width * self.weight.numel()


def uint8_shift(dtype: torch.dtype) -> int:
    """What turns an activation's integer q into the C's uint8 u = q + shift: 0 for uint8,
    128 for int8 (the carrier ``q - offset`` plus 128)."""
    return 128 - carrier_offset(dtype)


def pooled_shape(shape: tuple, kernel: tuple, stride: tuple, padding=(0, 0)) -> tuple:
    """``(H, W, C)`` after a window ``kernel`` moved by ``stride`` over ``shape`` padded."""
    height, width, channels = shape
    out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return out_h, out_w, channels


def c_weight_matrix(name: str, weight: torch.Tensor, shape: tuple, flattened: bool) -> torch.Tensor:
    """A weight as ``[out, K]`` in the C's channels-last order (see :class:`CLayer`), for
    inputs of ``shape``."""
    if weight.dim() == 4:  # [O, C/groups, kh, kw] -> [O, kh, kw, C/groups]
        return weight.permute(0, 2, 3, 1).reshape(len(weight), -1)
    height, width, channels = shape
    if height * width * channels != weight.shape[1]:
        raise InputError(
            f"layer {name!r}: takes {weight.shape[1]} features, gets {height * width * channels}"
        )
    if flattened and height * width > 1:  # Flatten of [C, H, W]: columns (c, h, w) -> (h, w, c)
        columns = weight.reshape(len(weight), channels, height, width).permute(0, 2, 3, 1)
        return columns.reshape(len(weight), -1)
    return weight


def check_input_size(first: CLayer) -> None:
    """The first layer must take one 28x28 digit: what main.c reads and CModel passes."""
    if first.inputs != IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        raise InputError(
            f"model: its first layer {first.name!r} takes {first.inputs} values per image; "
            f"the C reads one 28x28 digit ({IMAGE_SHAPE[0] * IMAGE_SHAPE[1]} pixels)"
        )


def check_int32_sums(name: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Refuse a layer whose int32 sum ``b + sum_k u_k q_w,k`` (u in 0..255) can leave the
    int32 range for some input: the exact condition of the module docstring, per row."""
    weight, bias = weight.to(torch.int64), bias.to(torch.int64)
    positive = weight.clamp(min=0).sum(dim=1)
    negative = weight.clamp(max=0).sum(dim=1)
    highest, lowest = 255 * positive + bias, 255 * negative + bias
    bad = (bias.abs() > INT32_MAX) | (highest > INT32_MAX) | (lowest < INT32_MIN)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise InputError(
            f"layer {name!r}: output channel {row} can sum to "
            f"{int(lowest[row]):,}..{int(highest[row]):,} (bias {int(bias[row]):,}), outside "
            "int32; the C's int32 accumulator would overflow"
        )


def int8_weighted(
    layer: Int8Linear | Int8Conv2d, shape: tuple, flattened: bool, shifts: tuple[int, int]
) -> CLayer:
    """One Int8Linear/Int8Conv2d with its constants folded (input and output as u = q +
    shift, ``shifts`` = (input shift, output shift))."""
    if layer.requantization.value != "fixed_point":
        raise InputError(
            f"layer {layer.name!r}: requantization {layer.requantization.value!r}; the C "
            "export implements only ptqlib's fixed point M0 2^-n (requantization='fixed_point')"
        )
    weight = c_weight_matrix(layer.name, layer.weight.to(torch.int64), shape, flattened)
    input_zero_point = int(layer.input_zero_point) + shifts[0]
    bias = layer.bias.to(torch.int64) - input_zero_point * weight.sum(dim=1)
    check_int32_sums(layer.name, weight, bias)
    multiplier = torch.as_tensor(layer.multiplier).expand(len(weight)).to(torch.int64)
    shift = torch.as_tensor(layer.shift).expand(len(weight)).to(torch.int64)
    if bool((shift < 1).any() | (shift > MAX_SHIFT).any() | (multiplier < 0).any()):
        raise InputError(f"layer {layer.name!r}: a multiplier outside M0 >= 0, n in 1..62")
    lowest, highest = layer.output_range()
    constants = dict(
        weight=weight.to(torch.int8),
        bias=bias.to(torch.int32),
        multiplier=multiplier.to(torch.int32),
        shift=shift.to(torch.int8),
        input_zero_point=input_zero_point,
        output_zero_point=int(layer.output_zero_point) + shifts[1],
        lowest=lowest + shifts[1],
        highest=highest + shifts[1],
    )
    return weighted_layer(layer, shape, constants)


def weighted_layer(layer: nn.Module, shape: tuple, constants: dict) -> CLayer:
    """The CLayer of a Linear or a Conv2d (integer or float) on inputs of ``shape``."""
    name = c_identifier(layer.name if hasattr(layer, "name") else constants.pop("name"))
    if isinstance(layer, (nn.Linear, Int8Linear)):
        out = (1, 1, layer.weight.shape[0])
        return CLayer("linear", name, (1, 1, layer.weight.shape[1]), out, **constants)
    groups = layer.groups
    if shape[2] != layer.weight.shape[1] * groups:
        raise InputError(f"layer {name!r}: expects {layer.weight.shape[1] * groups} channels")
    kernel, stride, padding = tuple(layer.weight.shape[2:]), tuple(layer.stride), layer.padding
    padding = tuple(padding)
    height, width, _ = pooled_shape(shape, kernel, stride, padding)
    kind = "conv" if groups == 1 else "depthwise"
    out = (height, width, layer.weight.shape[0])
    return CLayer(kind, name, shape, out, kernel, stride, padding, **constants)


def pool_layer(layer: nn.Module, name: str, shape: tuple) -> CLayer:
    """A max-pool (``kernel``, ``stride``, no padding) or a global average pool."""
    if isinstance(layer, (Int8MaxPool2d, nn.MaxPool2d)):
        kernel = int_pair(layer.kernel_size, "kernel_size", 1)
        stride = int_pair(layer.stride or layer.kernel_size, "stride", 1)
        padding = getattr(layer, "padding", 0)
        if padding not in (0, (0, 0)) or getattr(layer, "dilation", 1) not in (1, (1, 1)):
            raise InputError(f"layer {name!r}: the C max-pool has no padding or dilation")
        return CLayer("maxpool", name, shape, pooled_shape(shape, kernel, stride), kernel, stride)
    return CLayer("avgpool", name, shape, (1, 1, shape[2]), (shape[0], shape[1]))


def int8_graph(model: Int8Model) -> list[CLayer]:
    """The C layers of an INT8 model (Int8Linear, Int8Conv2d, the integer pools, Flatten),
    channels last, constants folded. Each activation between two layers gets one shift
    u = q + shift (128 only for a range reaching below 0): producer and consumer use the
    same one, and a pool keeps its input's. The input and output take their dtype's."""
    if not isinstance(model, Int8Model):
        raise InputError(f"model: expected an Int8Model, got {type(model).__name__}")
    layers, shape, flattened = [], IMAGE_SHAPE, False
    shift = uint8_shift(model.input_qparams.dtype)
    last = model.integer_layers()[-1]
    for index, layer in enumerate(model.layers):
        if isinstance(layer, nn.Flatten):
            flattened = True  # the next Linear reads shape's values in (h, w, c) order
            continue
        if isinstance(layer, (Int8Linear, Int8Conv2d)):
            if layer is last:
                output_shift = uint8_shift(model.output_qparams.dtype)
            else:
                output_shift = 128 if layer.output_range()[0] < 0 else 0
            c_layer = int8_weighted(layer, shape, flattened, (shift, output_shift))
            shift, flattened = output_shift, False
        elif isinstance(layer, (Int8MaxPool2d, Int8GlobalAvgPool2d)):
            c_layer = pool_layer(layer, f"pool{index}", shape)
        else:
            raise InputError(f"model: {SUPPORTED}; got a {type(layer).__name__}")
        layers.append(c_layer)
        shape = c_layer.output_shape
    check_input_size(layers[0])
    return layers


def fp32_graph(model: nn.Module) -> list[CLayer]:
    """The C layers of an FP32 Sequential (BatchNorm folded first), channels last, each
    Linear/Conv2d with the ReLU after it fused."""
    if not isinstance(model, nn.Sequential):
        raise InputError(f"model: expected an nn.Sequential, got {type(model).__name__}")
    if has_batchnorm(model):
        model = fold_model(model)
    layers: list[CLayer] = []
    shape, flattened = IMAGE_SHAPE, False
    for name, module in model.named_children():
        if isinstance(module, nn.ReLU) and layers and layers[-1].weighted and not layers[-1].relu:
            layers[-1] = replace(layers[-1], relu=True)
            continue
        if isinstance(module, nn.Flatten):
            flattened = True  # the next Linear reads shape's values in (h, w, c) order
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weight = module.weight.detach().float()
            bias = module.bias.detach().float() if module.bias is not None else None
            if bias is None:
                bias = torch.zeros(weight.shape[0])
            matrix = c_weight_matrix(name, weight, shape, flattened)
            constants = dict(name=name, weight=matrix.contiguous(), bias=bias)
            c_layer, flattened = weighted_layer(module, shape, constants), False
        elif isinstance(module, nn.MaxPool2d) or (
            isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))
        ):
            c_layer = pool_layer(module, c_identifier(name), shape)
        else:
            raise InputError(f"model: {SUPPORTED}; got a {type(module).__name__}")
        layers.append(c_layer)
        shape = c_layer.output_shape
    if not layers or not layers[-1].weighted:
        raise InputError(f"model: {SUPPORTED}, ending with a Linear")
    check_input_size(layers[0])
    return layers


def check_unique_names(layers: list[CLayer]) -> None:
    """Two layers whose names become the same C identifier cannot both be exported."""
    names = [layer.name for layer in layers]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(
            f"model: layers named {repeated} in C (after replacing characters C does not "
            "allow in names by '_'); rename the layers"
        )


def input_lookup_table(model: Int8Model) -> torch.Tensor | None:
    """``table[p]``: the C's uint8 input u for pixel p (0..255), by ptqlib's own
    quantize_input of the normalised pixel; None for a model that reads pixels directly
    (input qparams S = 1, Z = 0 on uint8 0..255: the pixel is q_x)."""
    if is_pixel_input(model.input_qparams):
        return None
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    carriers = model.quantize_input(normalise(pixels).reshape(256, 1)).flatten()  # 256 values
    return (carriers.to(torch.int16) + 128).to(torch.uint8)
