"""The quantized network simulated in float: fake quantization.

*Fake quantization* rounds a real tensor to the grid of its qparams and maps it straight
back to reals, ``fake_quantize(x) = S (clamp(round(x / S) + Z) - Z)``: the values are float,
but only the ones the integers could represent. Doing this at every quantization point of
the INT8 model (the input, the weights, the bias, each fused layer's output) and computing
everything else in real (float64) arithmetic with the real multiplier ``S_x S_w / S_y``
gives an independent check of ``ptqlib.int8_model``: it needs none of the integer tricks
(carriers, fixed-point multipliers, rounding shifts), so agreement within 1 LSB shows that
those tricks are right.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional

from ptqlib.integer_arithmetic import quantize_bias
from ptqlib.plan import Step, WeightedStep, bias_of, plan_conversion
from ptqlib.quantization import QParams, dequantize, quantize


def _dequantized_weight(step: WeightedStep) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight as the integers represent it and the real bias S_x S_w q_b, in float64."""
    layer = step.layer
    weight_q = quantize(layer.weight.detach(), step.weight_qparams)
    weight = dequantize(weight_q, step.weight_qparams).double()
    bias_q = quantize_bias(bias_of(layer), step.input_qparams.scale, step.weight_qparams.scale)
    bias = bias_q.double() * step.input_qparams.scale.double() * step.weight_qparams.scale.double()
    return weight, bias


class FakeQuantModel(nn.Module):
    """The same quantized network simulated in float64: quantize and dequantize at every
    quantization point (input, weights, bias, each fused step's output), everything else real
    arithmetic with the real multiplier S_x S_w / S_y (a convolution pads with the real 0, as
    the float model does; a max-pool runs on the real values; a global average pool takes the
    real mean and rounds it back to its input's grid, ties upwards as the integer pool does).
    It needs no integer tricks at all, so it is an independent check of
    :class:`~ptqlib.int8_model.Int8Model`; both are built from ``plan_conversion``'s steps."""

    def __init__(self, steps: list[Step]) -> None:
        super().__init__()
        self.steps = steps
        layers = [s for s in steps if isinstance(s, WeightedStep)]
        self.input_qparams, self.output_qparams = layers[0].input_qparams, layers[-1].output_qparams

    @torch.no_grad()
    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers (int64) as the simulation finds them."""
        qparams = self.input_qparams
        q = quantize(images, qparams).long()
        for step in self.steps:
            if isinstance(step, nn.Flatten):
                q = step(q)
                continue
            x = (q - qparams.zero_point).double() * qparams.scale.double()
            if isinstance(step, nn.MaxPool2d):  # real max-pool, then back to the same grid
                y = functional.max_pool2d(x, step.kernel_size, step.stride)
                q = torch.round(y / qparams.scale.double()).long() + qparams.zero_point
                continue
            if isinstance(step, nn.AdaptiveAvgPool2d):  # real mean, back to the grid, ties up
                y = x.mean(dim=(2, 3), keepdim=True)
                q = torch.floor(y / qparams.scale.double() + 0.5).long() + qparams.zero_point
                continue
            weight, bias = _dequantized_weight(step)
            if step.is_conv:
                conv = step.layer
                y = functional.conv2d(x, weight, bias, conv.stride, conv.padding, 1, conv.groups)
            else:
                y = x @ weight.T + bias
            if step.relu_name is not None:
                y = torch.relu(y)
            qparams = step.output_qparams
            q = torch.round(y / qparams.scale.double()).long() + qparams.zero_point
            q = q.clamp(qparams.quant_min, qparams.quant_max)
        return q

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return dequantize(self.quantized_logits(images), self.output_qparams)


def simulate(
    model: nn.Module, qparams: Mapping[str, QParams], per_channel: bool = True
) -> FakeQuantModel:
    """A float (fake-quant) simulation of ``convert(model, qparams, per_channel)``."""
    return FakeQuantModel(plan_conversion(model, qparams, per_channel))
