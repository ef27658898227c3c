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

from ptqlib.conversion_plan import LinearStep, plan_conversion
from ptqlib.integer_arithmetic import quantize_bias
from ptqlib.quantization import QParams, dequantize
from ptqlib.quantization import quantize as quantize_tensor


class FakeQuantModel(nn.Module):
    """The same quantized network simulated in float64: quantize and dequantize at every
    quantization point (input, weights, bias, each layer's output), everything else real
    arithmetic with the real multiplier S_x S_w / S_y. It needs no integer tricks at all,
    so it is an independent check of :class:`Int8Model`."""

    def __init__(self, steps: list[LinearStep | nn.Flatten]) -> None:
        super().__init__()
        self.steps = steps
        self.input_qparams = next(s for s in steps if isinstance(s, LinearStep)).input_qparams
        self.output_qparams = [s for s in steps if isinstance(s, LinearStep)][-1].output_qparams

    @torch.no_grad()
    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers (int64) as the simulation finds them."""
        qparams = self.input_qparams
        q = quantize_tensor(images, qparams).long()
        for step in self.steps:
            if isinstance(step, nn.Flatten):
                q = step(q)
                continue
            x = (q - qparams.zero_point).double() * qparams.scale.double()
            weight_q = quantize_tensor(step.linear.weight.detach(), step.weight_qparams)
            weight = dequantize(weight_q, step.weight_qparams).double()
            weight_scale = step.weight_qparams.scale.double()
            bias = step.linear.bias
            bias = bias.detach() if bias is not None else torch.zeros(weight.shape[0])
            bias_q = quantize_bias(bias, qparams.scale, step.weight_qparams.scale)
            y = x @ weight.T + bias_q.double() * qparams.scale.double() * weight_scale
            if step.relu_name is not None:
                y = torch.relu(y)
            qparams = step.output_qparams
            q = torch.round(y / qparams.scale.double()).long() + qparams.zero_point
            q = q.clamp(qparams.quant_min, qparams.quant_max)
        return q

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        q = self.quantized_logits(images)
        return dequantize(q, self.output_qparams)


def simulate(
    model: nn.Module, qparams: Mapping[str, QParams], per_channel: bool = True
) -> FakeQuantModel:
    """A float (fake-quant) simulation of ``convert(model, qparams, per_channel)``."""
    return FakeQuantModel(plan_conversion(model, qparams, per_channel))
