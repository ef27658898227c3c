"""An FP8 SimpleNet that runs on a real FP8 GEMM: ``torch._scaled_mm``.

``torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=torch.float32)`` takes two
``float8_e4m3fn`` matrices and computes ``(a * scale_a) @ (b * scale_b)`` with an FP32 result:
the operation of Hopper's FP8 tensor cores, which PyTorch also implements on CPUs. Each Linear
of the model becomes::

    x_fp8, scale_x = FP8 codes of x with its calibrated per-tensor scale     (ptqlib.formats.fp8)
    y = _scaled_mm(x_fp8, W_fp8.T, scale_x, scale_W) + bias

and the result is compared with the simulation of ``ptqlib.formats.simulation`` (the same
codes, decoded to FP32 and multiplied with an FP32 ``@``). The codes are ptqlib's own
(``ptqlib.formats.minifloat.encode``, bit-exact with PyTorch's casts), reinterpreted as
``float8_e4m3fn`` without conversion (``Tensor.view(dtype)``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.formats.fp8 import FP8Tensor, quantize_fp8
from ptqlib.formats.minifloat import E4M3


def as_float8(quantized: FP8Tensor) -> torch.Tensor:
    """The codes of an E4M3 tensor as a ``torch.float8_e4m3fn`` tensor (the same bytes)."""
    if quantized.element_format is not E4M3:
        raise InputError(f"quantized: _scaled_mm takes E4M3 here, got {quantized.element_format}")
    return quantized.codes.view(torch.float8_e4m3fn)


class ScaledMMLinear(nn.Module):
    """A Linear computed by ``torch._scaled_mm`` on FP8 E4M3 weights and inputs: ``weight``
    holds the weight's codes and scale, ``input_amax`` the calibrated range of the input."""

    def __init__(self, weight: FP8Tensor, bias: torch.Tensor | None, input_amax: float) -> None:
        super().__init__()
        self.weight = as_float8(weight)  # [out, in]; .T is the column-major operand it wants
        self.weight_scale = weight.scale
        self.bias = None if bias is None else bias.detach().clone()
        self.input_amax = input_amax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = quantize_fp8(x, E4M3, self.input_amax)
        out = torch._scaled_mm(
            as_float8(inputs),
            self.weight.T,
            scale_a=inputs.scale,
            scale_b=self.weight_scale,
            out_dtype=torch.float32,
        )
        return out if self.bias is None else out + self.bias


@torch.no_grad()
def scaled_mm_model(
    model: nn.Sequential,
    activation_amax: dict[str, float],
    weights: dict[str, FP8Tensor] | None = None,
) -> nn.Sequential:
    """A copy of an MLP (``nn.Sequential`` of Flatten, Linear and ReLU, like SimpleNet) with
    every Linear replaced by a :class:`ScaledMMLinear`; ``activation_amax`` holds each
    Linear's calibrated input range (``simulation.activation_amax``), ``weights`` each
    Linear's weight in E4M3 (default: quantized here from the Linear's weight)."""
    converted = copy.deepcopy(model).eval()
    for name, layer in converted.named_children():
        if isinstance(layer, nn.Linear):
            weight = quantize_fp8(layer.weight, E4M3) if weights is None else weights[name]
            setattr(converted, name, ScaledMMLinear(weight, layer.bias, activation_amax[name]))
        elif not isinstance(layer, (nn.Flatten, nn.ReLU)):
            raise InputError(
                f"model: layer {name!r} is a {type(layer).__name__}; the _scaled_mm model takes "
                "only Flatten, Linear and ReLU (an MLP such as SimpleNet)"
            )
    return converted
