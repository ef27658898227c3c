"""The INT8 model: a calibrated float network turned into layers that compute on integers.

``convert`` pairs every Linear of the float model with the ReLU after it (fusion: the ReLU
becomes the lower clamp of the Linear's output) and with the qparams that calibration chose,
then builds one :class:`Int8Linear` per pair. Each layer computes, exactly as notebook 04
writes it (the math is in ``ptqlib.integer_arithmetic``)::

    acc = sum_k (q_x,k - Z_x) q_w,k + q_b                  int8 x int8, summed in int32
    q_y = clamp(round(M acc) + Z_y, lo, hi),  M ~= M0 2^-n  integer requantization

- weights: int8, symmetric (Z_w = 0), one scale per output channel by default (so M and
  its M0, n are per channel too) or one per tensor;
- bias: int32 with scale S_x S_w and zero-point 0, so it adds straight into acc;
- activations: uint8 or int8, affine, with the qparams from calibration. A fused ReLU is
  the lower clamp ``lo = Z_y`` (the integer of real 0).

``requantization="float32"`` swaps the last step for ONNX Runtime's (a float32 multiplier,
rounding half to even, and the input quantized by division): the same model then computes
ORT's integers exactly (``ptqlib.runtime_arithmetic``, notebook 08).

**Carriers.** ``torch._int_mm`` multiplies int8 by int8. A uint8 activation q (0..255)
therefore travels between layers as the int8 value ``c = q - 128`` (its *carrier*); an int8
activation is its own carrier. Since ``q - Z_x = c - (Z_x - 128)``, the sum splits into
``sum_k c_k q_w,k`` (the int8 GEMM) and ``(128 - Z_x) sum_k q_w,k``, the *zero-point
correction*, one integer per output channel.

From the quantized input to the quantized logits there is no float. Float appears only
where the images are quantized and where the logits are dequantized.

Every number a layer computes with is in its buffers (int8 weight, int32 bias, scales,
zero-points, M0 and n) or derived from them at each call. ``load_state_dict``, ``.to()``
and ``copy.deepcopy`` carry all of them, so they can never leave a stale constant behind. This is
the *teaching path*: plain and direct, not fast; ``ptqlib.fast_int8`` computes the same
integers quickly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ptqlib.conversion_plan import (
    RESTRICTED_WEIGHT_RANGE,
    LinearStep,
    bias_of,
    plan_conversion,
)
from ptqlib.integer_arithmetic import (
    carrier_offset,
    check_accumulator_fits,
    fixed_point_multiplier,
    int8_matmul,
    quantize_bias,
    requantize,
)
from ptqlib.quantization import QParams
from ptqlib.quantization import quantize as quantize_tensor
from ptqlib.runtime_arithmetic import float32_multiplier, quantize_by_division, requantize_float32

# Raw pixels as the input (a model from ptqlib.models.fold_input_normalization): S = 1, Z = 0,
# so the quantized input is the uint8 pixel itself.
PIXEL_QPARAMS = QParams(torch.tensor(1.0), torch.tensor(0, dtype=torch.int64), 0, 255, torch.uint8)
DTYPE_NAMES = {torch.uint8: "uint8", torch.int8: "int8"}
# How a layer turns its int32 accumulator into the next 8-bit activation: ptqlib's integer
# M0 2^-n (the default), or ONNX Runtime's float32 multiplier (``ptqlib.runtime_arithmetic``).
REQUANTIZATION_MODES = ("fixed_point", "float32")


def check_requantization(requantization: object) -> str:
    """``requantization`` if it names a mode of REQUANTIZATION_MODES, else a ValueError."""
    if requantization not in REQUANTIZATION_MODES:
        raise ValueError(
            f"requantization: expected one of {', '.join(REQUANTIZATION_MODES)}, "
            f"got {requantization!r}"
        )
    return requantization


def is_pixel_input(qparams: QParams) -> bool:
    """Whether these input qparams are :data:`PIXEL_QPARAMS`: the model takes raw pixels."""
    return (
        qparams.dtype == torch.uint8
        and float(qparams.scale) == 1.0
        and int(qparams.zero_point) == 0
        and (qparams.quant_min, qparams.quant_max) == (0, 255)
    )


# --- the integer modules -----------------------------------------------------------------------


def _activation_qparams_from(
    scale: torch.Tensor, zero_point: torch.Tensor, like: QParams
) -> QParams:
    """QParams with the stored scale and zero-point and the fixed range and dtype of ``like``."""
    return QParams(scale, zero_point, like.quant_min, like.quant_max, like.dtype)


class Int8Step(nn.Module):
    """What every integer layer (a Linear here, a Conv2d in ``ptqlib.int8_conv``) stores and
    derives: one fused step of the plan, int8 carriers in, int8 carriers out.

    State (buffers): ``weight`` (int8, output channels first), ``bias`` (int32, scale
    S_x S_w), ``weight_scale`` (float32, per output channel or one value; zero-point 0),
    ``input_scale``/``input_zero_point``, ``output_scale``/``output_zero_point``, and the
    integer multiplier ``multiplier``/``shift`` (M0, n per output channel) derived from the
    scales at construction. Fixed at construction: the activations' dtypes and integer
    ranges, and whether a ReLU is fused.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        weight_qparams: QParams,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool,
        name: str,
    ) -> None:
        super().__init__()
        if weight_qparams.dtype != torch.int8 or bool((weight_qparams.zero_point != 0).any()):
            raise ValueError(
                f"layer {name!r}: weights must be int8 and symmetric (zero-point 0), "
                f"got {weight_qparams}"
            )
        self.name = name
        self.relu = relu
        self.register_buffer("weight", weight.to(torch.int8).contiguous())
        self.register_buffer("bias", bias.to(torch.int32).contiguous())
        self.register_buffer("weight_scale", weight_qparams.scale.to(torch.float32))
        self.register_buffer("input_scale", input_qparams.scale.to(torch.float32))
        self.register_buffer("input_zero_point", input_qparams.zero_point.to(torch.int64))
        self.register_buffer("output_scale", output_qparams.scale.to(torch.float32))
        self.register_buffer("output_zero_point", output_qparams.zero_point.to(torch.int64))
        self.weight_range = (weight_qparams.quant_min, weight_qparams.quant_max)
        self._input_like, self._output_like = input_qparams, output_qparams
        # M = S_x S_w / S_y per output channel (float64: the product of float32 scales is
        # exact), kept as its integers (M0, n): state like the rest, so the forward pass
        # touches no float.
        real_multiplier = (
            self.input_scale.double() * self.weight_scale.double() / self.output_scale.double()
        )
        multiplier, shift = fixed_point_multiplier(real_multiplier.expand(len(self.weight)))
        self.register_buffer("multiplier", multiplier)
        self.register_buffer("shift", shift)
        check_accumulator_fits(
            self.name, self.weight_matrix(), self.bias, self.zero_point_correction()
        )

    # The qparams, always built from the buffers (the state), never cached.
    @property
    def input_qparams(self) -> QParams:
        return _activation_qparams_from(self.input_scale, self.input_zero_point, self._input_like)

    @property
    def output_qparams(self) -> QParams:
        return _activation_qparams_from(
            self.output_scale, self.output_zero_point, self._output_like
        )

    @property
    def weight_qparams(self) -> QParams:
        axis = 0 if self.weight_scale.dim() == 1 else None
        zero_point = torch.zeros(self.weight_scale.shape, dtype=torch.int64)
        return QParams(self.weight_scale, zero_point, *self.weight_range, torch.int8, axis=axis)

    def weight_matrix(self) -> torch.Tensor:
        """The weights as rows ``[out, K]``, one row per output channel."""
        return self.weight.reshape(len(self.weight), -1)

    def zero_point_correction(self) -> torch.Tensor:
        """``(offset - Z_x) sum_k q_w,k`` per output channel (int32): what the int8 carriers
        leave out of ``sum_k (q_x,k - Z_x) q_w,k`` (see the module docstring)."""
        offset = carrier_offset(self._input_like.dtype) - int(self.input_zero_point)
        return (offset * self.weight_matrix().to(torch.int32).sum(dim=1)).to(torch.int32)

    def output_range(self) -> tuple[int, int]:
        """The clamp ``(lo, hi)`` of the output's integers; a fused ReLU raises lo to Z_y."""
        lowest, highest = self._output_like.quant_min, self._output_like.quant_max
        if self.relu:
            lowest = max(lowest, int(self.output_zero_point))
        return lowest, highest


class Int8Linear(Int8Step):
    """A Linear (and its fused ReLU) on integers: int8 carriers ``[N, in]`` in, ``[N, out]``
    out. The state is :class:`Int8Step`'s; the ``requantization`` is fixed at construction:
    ``"fixed_point"`` (M0 2^-n, the default) or ``"float32"`` (ONNX Runtime's way, with the
    buffer ``float32_multiplier``; see ``ptqlib.runtime_arithmetic``).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        weight_qparams: QParams,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool,
        name: str = "linear",
        requantization: str = "fixed_point",
    ) -> None:
        super().__init__(weight, bias, weight_qparams, input_qparams, output_qparams, relu, name)
        self.requantization = check_requantization(requantization)
        self.out_features, self.in_features = self.weight.shape
        if self.requantization == "float32":
            scales = (self.input_scale, self.weight_scale, self.output_scale)
            multiplier_f32 = float32_multiplier(*scales).expand(self.out_features)
            self.register_buffer("float32_multiplier", multiplier_f32.contiguous())

    def weight_matrix(self) -> torch.Tensor:
        """A Linear's weight already is the matrix ``[out, in]``."""
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """int8 carriers ``[N, in]`` to int8 carriers ``[N, out]``, integers only."""
        if x.dim() != 2 or x.shape[1] != self.in_features or x.dtype != torch.int8:
            raise ValueError(
                f"layer {self.name!r}: expected input [N, {self.in_features}] of int8 "
                f"carriers, got {x.dtype} {tuple(x.shape)}"
            )
        # acc = sum_k (q_x,k - Z_x) q_w,k + q_b: the int8 GEMM, the zero-point correction and
        # the int32 bias, all int32.
        accumulator = int8_matmul(x, self.weight.t())
        accumulator = accumulator + self.zero_point_correction() + self.bias
        # q_y = clamp(round(M acc) + Z_y, lo, hi), with M ~= M0 2^-n; the ReLU is lo = Z_y.
        lowest, highest = self.output_range()
        zero_point = int(self.output_zero_point)
        if self.requantization == "float32":
            # ONNX Runtime's way: q_y = clamp(round_half_even(float32(acc) M_f32) + Z_y).
            output = requantize_float32(
                accumulator, self.float32_multiplier, zero_point, lowest, highest
            )
        else:
            output = requantize(
                accumulator, self.multiplier, self.shift, zero_point, lowest, highest
            )
        return (output - carrier_offset(self._output_like.dtype)).to(torch.int8)

    def extra_repr(self) -> str:
        granularity = "per-channel" if self.weight_scale.dim() == 1 else "per-tensor"
        relu = ", relu" if self.relu else ""
        mode = ", float32 requantization" if self.requantization == "float32" else ""
        return (
            f"{self.in_features} -> {self.out_features}, int8 weights {granularity}, "
            f"output {DTYPE_NAMES[self._output_like.dtype]}{relu}{mode}"
        )


class Int8Model(nn.Module):
    """The INT8 network: quantize the images, run every layer on integers, dequantize the
    logits. ``forward`` maps images to float logits like the FP32 model, so
    :mod:`ptqlib.evaluation` works on it unchanged. With ``requantization="float32"`` the images
    are quantized by division (x / S, as ONNX's QuantizeLinear does) instead of x (1 / S)."""

    def __init__(
        self,
        input_qparams: QParams,
        layers: list[nn.Module],
        requantization: str = "fixed_point",
    ) -> None:
        super().__init__()
        self.requantization = check_requantization(requantization)
        if not any(isinstance(layer, Int8Linear) for layer in layers):
            raise ValueError("layers: an INT8 model needs at least one Int8Linear")
        self.layers = nn.ModuleList(layers)
        self.register_buffer("input_scale", input_qparams.scale.to(torch.float32))
        self.register_buffer("input_zero_point", input_qparams.zero_point.to(torch.int64))
        self._input_like = input_qparams

    @property
    def input_qparams(self) -> QParams:
        return _activation_qparams_from(self.input_scale, self.input_zero_point, self._input_like)

    @property
    def output_qparams(self) -> QParams:
        return [layer for layer in self.layers if isinstance(layer, Int8Linear)][-1].output_qparams

    @property
    def takes_pixels(self) -> bool:
        """True for a model converted with ``pixel_input=True``: ``ptqlib.evaluation`` then
        feeds it raw uint8 pixels instead of normalised images."""
        return is_pixel_input(self.input_qparams)

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """Float images to int8 carriers: ``quantize(x) - offset``."""
        qparams = self.input_qparams
        if self.requantization == "float32":
            quantized = quantize_by_division(images.float(), qparams).to(torch.int16)
        else:
            quantized = quantize_tensor(images.float(), qparams).to(torch.int16)
        return (quantized - carrier_offset(qparams.dtype)).to(torch.int8)

    def integer_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits as int8 carriers: everything after quantize_input is integer."""
        x = self.quantize_input(images)
        for layer in self.layers:
            x = layer(x)
        return x

    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers in their own dtype (uint8 0..255 or int8), as torch's
        ``int_repr()`` shows them."""
        carriers = self.integer_forward(images)
        output_dtype = self.output_qparams.dtype
        return (carriers.to(torch.int16) + carrier_offset(output_dtype)).to(output_dtype)

    def dequantize_output(self, carriers: torch.Tensor) -> torch.Tensor:
        """Int8 carriers of the logits to float logits: ``S_y (q - Z_y)``."""
        qparams = self.output_qparams
        zero_point = int(qparams.zero_point) - carrier_offset(qparams.dtype)
        return (carriers.float() - zero_point) * qparams.scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dequantize_output(self.integer_forward(images))

    def extra_repr(self) -> str:
        return f"input {DTYPE_NAMES[self._input_like.dtype]} {self.input_qparams}"


def int8_linear(step: LinearStep, requantization: str = "fixed_point") -> Int8Linear:
    return Int8Linear(
        weight=quantize_tensor(step.linear.weight.detach(), step.weight_qparams),
        bias=quantize_bias(
            bias_of(step.linear), step.input_qparams.scale, step.weight_qparams.scale
        ),
        weight_qparams=step.weight_qparams,
        input_qparams=step.input_qparams,
        output_qparams=step.output_qparams,
        relu=step.relu_name is not None,
        name=step.name,
        requantization=requantization,
    )


def convert(
    model: nn.Module,
    qparams: Mapping[str, QParams],
    per_channel: bool = True,
    *,
    pixel_input: bool = False,
    requantization: str = "fixed_point",
    weight_range: tuple[int, int] | None = None,
) -> Int8Model:
    """Convert a calibrated Sequential of Linear / ReLU / Flatten into an :class:`Int8Model`.

    ``qparams`` is ``calibration.qparams`` (or the Calibration itself): ``"input"``, the
    output of every fused Linear(+ReLU) step by the name of its last module, and optionally
    ``"<linear>.weight"`` (see :func:`weight_qparams_for`). ``per_channel`` selects
    per-output-channel weight scales (the default) or one scale per weight tensor.

    ``pixel_input=True`` is for a model whose input normalisation was folded into its first
    Linear (:func:`ptqlib.models.fold_input_normalization`): its input is raw pixel values
    0..255, so the input qparams are not calibrated but exact, :data:`PIXEL_QPARAMS`.
    ``requantization`` is ``"fixed_point"`` (the default) or ``"float32"`` (ONNX Runtime's
    arithmetic, see :class:`Int8Linear`); ``weight_range`` forces the weights' integer range,
    e.g. ``RESTRICTED_WEIGHT_RANGE`` (-127..127, S_w = max|w| / 127) as ONNX Runtime's
    quantizer does (default: the calibration's, torch's -128..127).
    """
    for value, name in ((per_channel, "per_channel"), (pixel_input, "pixel_input")):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected True or False, got {value!r}")
    check_requantization(requantization)
    if weight_range is not None and not (
        isinstance(weight_range, tuple)
        and len(weight_range) == 2
        and all(isinstance(value, int) for value in weight_range)
        and -128 <= weight_range[0] < 0 < weight_range[1] <= 127
    ):
        raise ValueError(
            f"weight_range: expected (quant_min, quant_max) of int8 around 0 such as "
            f"RESTRICTED_WEIGHT_RANGE {RESTRICTED_WEIGHT_RANGE}, got {weight_range!r}"
        )
    qparams = getattr(qparams, "qparams", qparams)  # a Calibration or its qparams dict
    if pixel_input and isinstance(qparams, Mapping):
        qparams = {**qparams, "input": PIXEL_QPARAMS}
    steps = plan_conversion(model, qparams, per_channel, weight_range)
    layers = [
        int8_linear(step, requantization) if isinstance(step, LinearStep) else step
        for step in steps
    ]
    first = next(step for step in steps if isinstance(step, LinearStep))
    return Int8Model(first.input_qparams, layers, requantization).eval()
