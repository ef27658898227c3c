"""The INT8 model: a calibrated float network turned into layers that compute on integers.

``convert`` pairs every Linear of the float model with the ReLU after it (fusion: the ReLU
becomes the lower clamp of the Linear's output) and with the qparams that calibration chose,
then builds one :class:`~ptqlib.int8_layers.Int8Linear` per pair (the integer layers and
their math are in ``ptqlib.int8_layers``). :class:`Int8Model` quantizes the images, runs the
layers on int8 carriers and dequantizes the logits.

From the quantized input to the quantized logits there is no float. Float appears only
where the images are quantized and where the logits are dequantized.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ptqlib.deploy.ort_arithmetic import (
    quantize_by_division,
)
from ptqlib.errors import InputError
from ptqlib.int8_layers import (
    DTYPE_NAMES,
    Int8Linear,
    _activation_qparams_from,
    check_requantization,
)
from ptqlib.integer_arithmetic import (
    carrier_offset,
    quantize_bias,
)
from ptqlib.plan import (
    RESTRICTED_WEIGHT_RANGE,
    LinearStep,
    bias_of,
    plan_conversion,
)
from ptqlib.quantization import QParams
from ptqlib.quantization import quantize as quantize_tensor

# Raw pixels as the input (a model from ptqlib.models.fold_input_normalization): S = 1, Z = 0,
# so the quantized input is the uint8 pixel itself.
PIXEL_QPARAMS = QParams(torch.tensor(1.0), torch.tensor(0, dtype=torch.int64), 0, 255, torch.uint8)


def is_pixel_input(qparams: QParams) -> bool:
    """Whether these input qparams are :data:`PIXEL_QPARAMS`: the model takes raw pixels."""
    return (
        qparams.dtype == torch.uint8
        and float(qparams.scale) == 1.0
        and int(qparams.zero_point) == 0
        and (qparams.quant_min, qparams.quant_max) == (0, 255)
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
            raise InputError("layers: an INT8 model needs at least one Int8Linear")
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
        raise InputError(
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
