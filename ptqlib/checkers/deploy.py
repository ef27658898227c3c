"""Known-answer checkers for notebook 08: compute the way ONNX Runtime does.

Same use as :mod:`ptqlib.checkers` (one ``PASS`` line, or an ``AssertionError`` naming the
first failing case, its inputs, the expected answer and a hint)::

    from ptqlib.checkers.deploy import check_quantize_linear, check_requantize_float32

- :func:`check_quantize_linear`: ``(x, scale, zero_point, quant_min, quant_max) -> q``,
  ONNX's QuantizeLinear: ``x / scale`` in float32 (a division, not a product with 1/scale),
  rounded half to even;
- :func:`check_requantize_float32`: ``(acc, input_scale, weight_scale, output_scale,
  zero_point, quant_min, quant_max) -> q``, ORT's requantization with a float32 multiplier.

Unlike the checkers of notebooks 02-04, these cases sit *on* the values where the usual
shortcuts differ (ties, float64 instead of float32, 1/S instead of /S): being within one
step is not enough here, the integers must be ORT's exactly. A function that still raises
``NotImplementedError`` (the notebook's skeleton) is reported as not attempted, not failed
(``ptqlib.checkers.core.run_cases``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.checkers.core import Case, compare_integers, run_cases
from ptqlib.deploy.ort_arithmetic import (
    float32_multiplier,
    quantize_by_division,
    requantize_float32,
)
from ptqlib.quantization import QParams


def _uint8(scale: float, zero_point: int) -> QParams:
    return QParams(torch.tensor(scale), torch.tensor(zero_point), 0, 255, torch.uint8)


def _near_halfway(scale: torch.Tensor, count: int = 400) -> torch.Tensor:
    """float32 values at and next to the half-way points (k + 1/2) scale."""
    halfway = (torch.arange(count, dtype=torch.float32) - count / 2 + 0.5) * scale
    return torch.cat(
        [halfway, torch.nextafter(halfway, halfway + 1), torch.nextafter(halfway, halfway - 1)]
    )


def quantize_linear_cases() -> list[Case]:
    """Values where ``x / S`` and ``x * (1 / S)`` round to different integers, and ties."""
    cases = []
    for scale, zero_point in ((0.0127, 33), (0.1, 128), (0.0731, 0)):
        qparams = _uint8(scale, zero_point)
        values = _near_halfway(qparams.scale)
        by_product = torch.round(values * (1.0 / qparams.scale)) + zero_point
        by_division = quantize_by_division(values, qparams)
        differ = by_product.clamp(0, 255).to(torch.uint8) != by_division
        chosen = torch.cat([values[differ][:6], values[:3], torch.tensor([1e6, -1e6])])
        cases.append(
            Case(
                f"scale {scale}: values where x / S and x * (1 / S) round differently",
                (
                    ("x", chosen),
                    ("scale", float(qparams.scale)),
                    ("zero_point", zero_point),
                    ("quant_min", 0),
                    ("quant_max", 255),
                ),
                quantize_by_division(chosen, qparams),
                "divide x by the scale in float32 (x * (1 / scale) rounds differently on rare "
                "values), round half to even (torch.round), add the zero-point, clamp",
            )
        )
    return cases


def requantize_float32_cases() -> list[Case]:
    """Accumulators where float32 and float64 multipliers round differently, and ties."""
    cases = []
    for input_scale, weight_scale, output_scale, zero_point in (
        (0.0127, 0.00097, 0.0655, 0),
        (0.0655, 0.0012, 0.1254, 103),
        (0.5, 1.0, 1.0, 128),  # M = 0.5: odd accumulators are exact ties
    ):
        scales = [
            torch.tensor(s, dtype=torch.float32) for s in (input_scale, weight_scale, output_scale)
        ]
        multiplier = float32_multiplier(*scales)
        accumulators = torch.arange(-(2**20), 2**20, 7, dtype=torch.int32)
        exact = torch.round(
            accumulators.double() * (scales[0].double() * scales[1].double() / scales[2].double())
        )
        ort = torch.round(accumulators.float() * multiplier).double()
        differ = accumulators[exact != ort][:6]
        chosen = torch.cat(
            [differ, torch.tensor([1, 3, -3, 5, 2**31 - 1, -(2**31)], dtype=torch.int32)]
        )
        arguments = (
            ("acc", chosen),
            ("input_scale", float(scales[0])),
            ("weight_scale", float(scales[1])),
            ("output_scale", float(scales[2])),
            ("zero_point", zero_point),
            ("quant_min", 0),
            ("quant_max", 255),
        )
        cases.append(
            Case(
                f"M = {float(multiplier):.6g}: float32 vs float64 and ties",
                arguments,
                requantize_float32(chosen, multiplier, zero_point, 0, 255),
                "M = float32(float32(S_x * S_w) / S_y); then float32(acc) * M in float32, "
                "round half to even, add Z_y, clamp. float64 or 1/S_y gives other integers here",
            )
        )
    return cases


def check_quantize_linear(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(x, scale, zero_point, quant_min, quant_max) -> q``: ONNX's
    QuantizeLinear, ``clamp(round_half_even(float32(x / scale)) + zero_point)``."""
    run_cases("check_quantize_linear", student_fn, quantize_linear_cases(), compare_integers)


def check_requantize_float32(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(acc, input_scale, weight_scale, output_scale, zero_point, quant_min,
    quant_max) -> q``: ORT's requantization (see ``ptqlib.deploy.ort_arithmetic``)."""
    run_cases("check_requantize_float32", student_fn, requantize_float32_cases(), compare_integers)
