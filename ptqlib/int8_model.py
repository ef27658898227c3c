"""The INT8 model: a calibrated float network turned into layers that compute on integers.

``convert`` walks the plan of the float model (``ptqlib.plan``: every Linear or Conv2d
paired with the ReLU after it and with the qparams that calibration chose) and builds one
integer layer per step (``ptqlib.int8_layers``): Int8Linear, Int8Conv2d (plain or
depthwise), Int8MaxPool2d, Int8GlobalAvgPool2d, Flatten. The MLP of notebook 04 and the
folded CNN of notebook 07 go through the same ``convert``. :class:`Int8Model` quantizes the
images, runs the layers on int8 carriers and dequantizes the logits.

From the quantized input to the quantized logits there is no float. Float appears only
where the images are quantized and where the logits are dequantized.

The ``requantization`` (:class:`~ptqlib.integer_arithmetic.Requantization`) is chosen once,
at convert, and stored in every integer step and in the model, whose input quantization
follows it: ``round(x (1 / S))`` as PyTorch computes it for the fixed point, ``round(x / S)``
as ONNX's QuantizeLinear does for float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.int8_gemm import carrier_of, from_carrier, to_carrier
from ptqlib.int8_layers import (
    DTYPE_NAMES,
    Int8Conv2d,
    Int8GlobalAvgPool2d,
    Int8Linear,
    Int8MaxPool2d,
    Int8Step,
    activation_qparams_from,
    rebuilt,
)
from ptqlib.integer_arithmetic import Requantization, quantize_bias, requantization_mode
from ptqlib.ort_arithmetic import quantize_by_division
from ptqlib.plan import Step, WeightedStep, bias_of, plan_conversion
from ptqlib.quantization import RESTRICTED_WEIGHT_RANGE, QParams, quantize

# Raw pixels as the input (a model from ptqlib.models.fold_input_normalization): S = 1, Z = 0,
# so the quantized input is the uint8 pixel itself.
PIXEL_QPARAMS = QParams(torch.tensor(1.0), torch.tensor(0, dtype=torch.int64), 0, 255, torch.uint8)


def check_batch(images: object, takes_pixels: bool) -> None:
    """Raise a clear error unless ``images`` is a tensor holding at least one image, and
    holds uint8 pixels only for a model that takes pixels (``takes_pixels``): what both
    paths (teaching and fast) say about an empty batch or the wrong kind of input."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() < 2:
        raise InputError(
            f"images: expected a batch of images [N, ...], got shape {tuple(images.shape)}; "
            "for one image, add the batch dimension: images.unsqueeze(0)"
        )
    if images.shape[0] == 0:  # (len() of a tensor is slower Python)
        raise InputError(
            f"images: expected a batch of at least one image, got shape {tuple(images.shape)}"
        )
    if images.dtype == torch.uint8 and not takes_pixels:
        # Read as floats 0..255, they would saturate the input quantization without a word.
        raise InputError(
            "images: uint8 pixels, but this model takes normalised float images; give it "
            "ptqlib.data.normalise(pixels), or convert with pixel_input=True"
        )


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
        requantization: Requantization | str = Requantization.FIXED_POINT,
    ) -> None:
        super().__init__()
        self.requantization = requantization_mode(requantization)
        steps = [layer for layer in layers if isinstance(layer, Int8Step)]
        if not steps or not isinstance(steps[-1], Int8Linear):
            raise InputError("layers: an INT8 model needs integer layers ending with an Int8Linear")
        mixed = sorted({step.requantization.value for step in steps} - {self.requantization.value})
        if mixed:
            raise InputError(
                f"layers: requantization {mixed} differs from the model's "
                f"{self.requantization.value!r}; one model requantizes one way"
            )
        self.layers = nn.ModuleList(layers)
        self.register_buffer("input_scale", input_qparams.scale.to(torch.float32))
        self.register_buffer("input_zero_point", input_qparams.zero_point.to(torch.int64))
        self._input_like = input_qparams

    @property
    def input_qparams(self) -> QParams:
        return activation_qparams_from(self.input_scale, self.input_zero_point, self._input_like)

    @property
    def output_qparams(self) -> QParams:
        return self.integer_layers()[-1].output_qparams

    def integer_layers(self) -> list[Int8Step]:
        """The layers with weights (Int8Linear, Int8Conv2d), in order."""
        return [layer for layer in self.layers if isinstance(layer, Int8Step)]

    @property
    def takes_pixels(self) -> bool:
        """True for a model converted with ``pixel_input=True``: ``ptqlib.evaluation`` then
        feeds it raw uint8 pixels instead of normalised images."""
        return is_pixel_input(self.input_qparams)

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """Float images to int8 carriers: ``quantize(x) - offset``, with the division this
        model's ``requantization`` prescribes."""
        check_batch(images, self.takes_pixels)
        qparams = self.input_qparams
        if self.requantization == Requantization.FLOAT32:
            quantized = quantize_by_division(images.float(), qparams)
        else:
            quantized = quantize(images.float(), qparams)
        return to_carrier(quantized, qparams.dtype)

    def integer_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits as int8 carriers: everything after quantize_input is integer."""
        x = self.quantize_input(images)
        for layer in self.layers:
            x = layer(x)
        return x

    def logits_from_carriers(self, carriers: torch.Tensor) -> torch.Tensor:
        """The logits' int8 carriers as their integers in their own dtype (uint8 or int8)."""
        return from_carrier(carriers, self.output_qparams.dtype)

    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers in their own dtype (uint8 0..255 or int8), as torch's
        ``int_repr()`` shows them."""
        return self.logits_from_carriers(self.integer_forward(images))

    def dequantize_output(self, carriers: torch.Tensor) -> torch.Tensor:
        """Int8 carriers of the logits to float logits: ``S_y (q - Z_y)``."""
        qparams = self.output_qparams
        zero_point = carrier_of(int(qparams.zero_point), qparams.dtype)
        return (carriers.float() - zero_point) * qparams.scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dequantize_output(self.integer_forward(images))

    def extra_repr(self) -> str:
        mode = ", float32 requantization" if self.requantization == "float32" else ""
        return f"input {DTYPE_NAMES[self._input_like.dtype]} {self.input_qparams}{mode}"


def with_requantization(model: Int8Model, requantization: Requantization | str) -> Int8Model:
    """The same INT8 model (the same integers and scales) computing with another
    ``requantization``, e.g. a loaded checkpoint made to compute as ONNX Runtime does. Every
    integer layer is built again by its own constructor (``ptqlib.int8_layers.rebuilt``)."""
    if not isinstance(model, Int8Model):
        raise TypeError(f"model: expected an Int8Model, got {type(model).__name__}")
    requantization = requantization_mode(requantization)
    layers = [
        rebuilt(layer, requantization=requantization) if isinstance(layer, Int8Step) else layer
        for layer in model.layers
    ]
    return Int8Model(model.input_qparams, layers, requantization).eval()


def integer_layer(step: Step, requantization: Requantization) -> nn.Module:
    """The integer layer of one step of the plan."""
    if isinstance(step, nn.MaxPool2d):
        return Int8MaxPool2d(step.kernel_size, step.stride)
    if isinstance(step, nn.AdaptiveAvgPool2d):
        return Int8GlobalAvgPool2d()
    if not isinstance(step, WeightedStep):
        return step  # Flatten works on carriers as it is
    try:
        bias = quantize_bias(
            bias_of(step.layer), step.input_qparams.scale, step.weight_qparams.scale
        )
    except InputError as error:  # say which layer's bias
        raise InputError(f"layer {step.name!r}: {error}") from error
    weights = dict(
        weight=quantize(step.layer.weight.detach(), step.weight_qparams),
        bias=bias,
        weight_qparams=step.weight_qparams,
        input_qparams=step.input_qparams,
        output_qparams=step.output_qparams,
        relu=step.relu_name is not None,
        name=step.name,
        requantization=requantization,
    )
    if step.is_conv:
        conv = step.layer
        return Int8Conv2d(**weights, stride=conv.stride, padding=conv.padding, groups=conv.groups)
    return Int8Linear(**weights)


def convert(
    model: nn.Module,
    qparams: Mapping[str, QParams],
    per_channel: bool = True,
    *,
    pixel_input: bool = False,
    requantization: Requantization | str = Requantization.FIXED_POINT,
    weight_range: tuple[int, int] | None = None,
) -> Int8Model:
    """Convert a calibrated Sequential (the MLP, or a CNN with BatchNorm folded) into an
    :class:`Int8Model`. Supported layers: ``ptqlib.plan.SUPPORTED_NAMES``.

    ``qparams`` is ``calibration.qparams`` (or the Calibration itself): ``"input"``, the
    output of every fused Linear/Conv2d(+ReLU) step by the name of its last module, and
    optionally ``"<layer>.weight"`` (see :func:`ptqlib.plan.weight_qparams_for`).
    ``per_channel`` selects per-output-channel weight scales (the default) or one scale per
    weight tensor.

    ``pixel_input=True`` is for a model whose input normalisation was folded into its first
    layer (:func:`ptqlib.models.fold_input_normalization`): its input is raw pixel values
    0..255, so the input qparams are not calibrated but exact, :data:`PIXEL_QPARAMS`.
    ``requantization`` is ``"fixed_point"`` (the default) or ``"float32"`` (ONNX Runtime's
    arithmetic, see :class:`~ptqlib.integer_arithmetic.Requantization`); ``weight_range``
    forces the weights' integer range, e.g. ``RESTRICTED_WEIGHT_RANGE`` (-127..127,
    S_w = max|w| / 127) as ONNX Runtime's quantizer does (default: the calibration's,
    torch's -128..127).
    """
    for value, name in ((per_channel, "per_channel"), (pixel_input, "pixel_input")):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected True or False, got {value!r}")
    requantization = requantization_mode(requantization)
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
    layers = [integer_layer(step, requantization) for step in steps]
    first = next(step for step in steps if isinstance(step, WeightedStep))
    return Int8Model(first.input_qparams, layers, requantization).eval()
