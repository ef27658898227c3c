"""The quantized network simulated in float: one simulation, configured by what is quantized.

*Fake quantization* rounds a real tensor to the grid of its qparams and maps it straight back
to reals, ``fake_quantize(x) = S (clamp(round(x / S) + Z) - Z)``: the values are float, but
only the ones the integers could represent. :class:`FakeQuantModel` runs an INT8 model's
network in float with a chosen set of quantization points on the grid: every layer's weights
or some of them, the activations (the input and each fused step's output, named as
``ptqlib.fusion`` names them) or some of them. Everything else is the float model's own
arithmetic, in float32 (with nothing quantized it *is* the float model). Three uses, one
code:

- **the whole model** (:func:`simulate`, notebooks 04 and 07): everything quantized. It then
  equals the integer model on every logit, and needs none of its devices: no carriers, no
  int8 GEMM, no im2col, no folded constants; a convolution pads with the real 0, pools run on
  the values. What it shares with the integer model is the definition of the quantized
  network: the integers (weights, int32 bias, qparams) and how a layer's output is rounded.
- **some layers or points** (``ptqlib.debugging``, notebook 09): which ones break accuracy;
- **one layer alone** (``ptqlib.lowbit.layer_errors``, notebook 06): the error of a layer's
  weights, its activations, or both.

**How a layer's output is rounded.** A layer whose input and weights are both on their grids
has an integer accumulator, ``y = S_x S_w acc`` with
``acc = sum_k (q_x,k - Z_x) q_w,k + q_b`` (the bias on its int32 grid, scale S_x S_w). The
simulation computes ``acc`` with the float op itself (``F.linear``, ``F.conv2d``) on the grid
values ``q_x - Z_x`` and ``q_w``: integers, which float64 sums exactly (every sum is far
below 2^53). If the output is quantized, ``y / S_y = M acc`` is rounded as the integer layer
rounds it (``Int8Step.output_integers``: M0 2^-n with ties upwards, or ONNX Runtime's
float32). A layer with a float input or float weights has no integer accumulator: it
computes ``y`` in float32 with the float bias, and a quantized output is ``quantize(y)``, the
rounding of ``ptqlib.quantization``. A max-pool picks values; a global
average pool of integers rounds its mean back to the grid as the integer pool does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn
from torch.nn import functional

from ptqlib.errors import InputError
from ptqlib.fusion import fusion_groups
from ptqlib.int8_gemm import from_carrier
from ptqlib.int8_layers import (
    Int8Conv2d,
    Int8GlobalAvgPool2d,
    Int8MaxPool2d,
    Int8Step,
    rounded_mean,
)
from ptqlib.int8_model import Int8Model, convert
from ptqlib.integer_arithmetic import Requantization
from ptqlib.plan import bias_of
from ptqlib.quantization import QParams, dequantize, quantize


class Activation:
    """A tensor between two layers: integers on a grid (``qparams`` set) or real values."""

    def __init__(self, values: torch.Tensor, qparams: QParams | None) -> None:
        self.values, self.qparams = values, qparams

    def real(self) -> torch.Tensor:
        """The real values in float32, the float model's precision: ``S (q - Z)`` on a grid."""
        if self.qparams is None:
            return self.values
        return dequantize(self.values, self.qparams)

    def centred(self) -> torch.Tensor:
        """``q - Z`` as float64 (integers): the grid values a layer's accumulator sums."""
        return (self.values - self.qparams.zero_point).double()


def output_points(float_model: nn.Module) -> dict[str, str]:
    """The name of each fused step's output point by its Linear's or Conv2d's name
    (``{"fc1": "relu1", ..., "fc3": "fc3"}`` for SimpleNet), as ``ptqlib.fusion`` names them."""
    return {group[0]: group[-1] for group in fusion_groups(float_model)}


def _chosen(names: Collection[str] | None, valid: list[str], what: str) -> set[str]:
    """``names`` as a set, every one of ``valid`` for None; an unknown name is an InputError."""
    if names is None:
        return set(valid)
    if isinstance(names, str):
        raise InputError(f"{what}: expected a collection of names, got the string {names!r}")
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise InputError(f"{what}: unknown {unknown}; expected names from {valid}")
    return set(names)


class FakeQuantModel(nn.Module):
    """An INT8 model's network simulated in float, quantized where chosen (module
    docstring): ``weights`` (layer names; None: every layer) and ``activations`` (point
    names, ``"input"`` and each fused step's output; None: every point). ``float_model``
    supplies the float weights, biases and point names where something is left float; with
    everything quantized it is not needed."""

    def __init__(
        self,
        int8_model: Int8Model,
        float_model: nn.Module | None = None,
        *,
        weights: Collection[str] | None = None,
        activations: Collection[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(int8_model, Int8Model):
            raise TypeError(f"int8_model: expected an Int8Model, got {type(int8_model).__name__}")
        self.int8_model = int8_model
        steps = int8_model.integer_layers()
        layer_names = [step.name for step in steps]
        if float_model is None:
            if weights is not None or activations is not None:
                raise InputError("float_model: needed to leave weights or activations float")
            self.points = {name: name for name in layer_names}
        else:
            named = output_points(float_model)
            missing = sorted(set(layer_names) - set(named))
            if missing:
                raise InputError(f"float_model: has no layers {missing} of the INT8 model")
            self.points = {name: named[name] for name in layer_names}
        self.float_model = float_model
        self.quantized_weights = _chosen(weights, layer_names, "weights")
        point_names = ["input", *self.points.values()]
        self.quantized_points = _chosen(activations, point_names, "activations")

    @property
    def takes_pixels(self) -> bool:
        return self.int8_model.takes_pixels

    @property
    def output_qparams(self) -> QParams:
        return self.int8_model.output_qparams

    def _input(self, images: torch.Tensor) -> Activation:
        if "input" not in self.quantized_points:
            return Activation(images.float(), None)
        qparams = self.int8_model.input_qparams
        # The model's own input quantization (x (1 / S), or x / S for ORT's arithmetic).
        carriers = self.int8_model.quantize_input(images)
        return Activation(from_carrier(carriers, qparams.dtype).long(), qparams)

    def _float_parameters(self, step: Int8Step) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.float_model.get_submodule(step.name)
        return layer.weight.detach(), bias_of(layer)

    def _weighted(self, step: Int8Step, x: Activation) -> Activation:
        """One fused step (module docstring, "How a layer's output is rounded")."""
        conv = isinstance(step, Int8Conv2d)
        quantized_weights = step.name in self.quantized_weights
        quantized_output = self.points[step.name] in self.quantized_points

        def apply(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            if conv:
                return functional.conv2d(
                    inputs, weight, bias, step.stride, step.padding, groups=step.groups
                )
            return functional.linear(inputs, weight, bias)

        if x.qparams is not None and quantized_weights:  # the integer accumulator, exactly
            accumulator = apply(x.centred(), step.weight.double(), step.bias.double()).long()
            if quantized_output:
                # Channels last for the requantization, one column per output channel.
                layout = accumulator.movedim(1, -1) if conv else accumulator
                integers = step.output_integers(layout)
                return Activation(
                    integers.movedim(-1, 1) if conv else integers, step.output_qparams
                )
            scale = step.input_scale.double() * step.weight_scale.double()
            scale = scale.reshape(-1, 1, 1) if conv and scale.dim() else scale
            y = (accumulator.double() * scale).float()
        else:  # in float32, as the float model computes
            weight, bias = self._float_parameters(step)
            if quantized_weights:
                weight = dequantize(step.weight, step.weight_qparams)
            y = apply(x.real(), weight, bias)
        if step.relu:
            y = torch.relu(y)
        if quantized_output:
            return Activation(quantize(y, step.output_qparams).long(), step.output_qparams)
        return Activation(y, None)

    @torch.no_grad()
    def layer_outputs(self, images: torch.Tensor) -> dict[str, Activation]:
        """Every fused step's output (after its ReLU and its quantization, if chosen), by the
        name of its Linear or Conv2d."""
        outputs = {}
        x = self._input(images)
        for layer in self.int8_model.layers:
            if isinstance(layer, Int8Step):
                x = outputs[layer.name] = self._weighted(layer, x)
            elif isinstance(layer, Int8MaxPool2d):  # the largest value: on the grid or not
                values = x.values if x.qparams is None else x.values.double()
                pooled = functional.max_pool2d(values, layer.kernel_size, layer.stride)
                x = Activation(pooled if x.qparams is None else pooled.long(), x.qparams)
            elif isinstance(layer, Int8GlobalAvgPool2d):
                if x.qparams is None:
                    x = Activation(functional.adaptive_avg_pool2d(x.values, 1), None)
                else:  # the mean rounded back to the grid, ties upwards
                    x = Activation(rounded_mean(x.values, (2, 3)), x.qparams)
            else:  # Flatten
                x = Activation(layer(x.values), x.qparams)
        return outputs

    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers (int64); the logits must be a quantized point."""
        last = self.int8_model.integer_layers()[-1]
        logits = self.layer_outputs(images)[last.name]
        if logits.qparams is None:
            raise InputError(f"activations: the logits ({self.points[last.name]!r}) are float")
        return logits.values

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits: ``S_y (q - Z_y)`` where the logits are quantized."""
        last = self.int8_model.integer_layers()[-1]
        logits = self.layer_outputs(images)[last.name]
        if logits.qparams is None:
            return logits.values
        return dequantize(logits.values, logits.qparams)


def simulate(
    model: nn.Module,
    qparams: Mapping[str, QParams],
    per_channel: bool = True,
    *,
    pixel_input: bool = False,
    requantization: Requantization | str = Requantization.FIXED_POINT,
    weight_range: tuple[int, int] | None = None,
    weights: Collection[str] | None = None,
    activations: Collection[str] | None = None,
) -> FakeQuantModel:
    """The float simulation of ``convert(model, qparams, per_channel, ...)`` (every option
    of ``convert``), quantized at the chosen ``weights`` and ``activations`` (None: all)."""
    int8_model = convert(
        model,
        qparams,
        per_channel,
        pixel_input=pixel_input,
        requantization=requantization,
        weight_range=weight_range,
    )
    return FakeQuantModel(int8_model, model, weights=weights, activations=activations)
