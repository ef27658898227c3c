"""Checkers for notebook 02 (quantization math): qparams, quantize and dequantize.

Each checker runs a student's function on hand-picked cases whose answers come from
:mod:`ptqlib.quantization` (bit-exact with PyTorch); see :mod:`ptqlib.classroom.checkers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import (
    Case,
    WrongAnswer,
    as_float,
    as_integer,
    as_pair,
    compare_floats,
    compare_integers,
    run_cases,
)
from ptqlib.quantization import QParams, dequantize, qparams_from_range, quantize

# A wrong answer is off by at least one integer step; float round-off is far below this.
SCALE_RELATIVE_TOLERANCE = 1e-5


def _dtype_for(quant_min: int) -> torch.dtype:
    """The storage dtype for a range: uint8 if it has no negative numbers, else int8."""
    return torch.uint8 if quant_min >= 0 else torch.int8


def _qparams(scale: float, zero_point: int, quant_min: int, quant_max: int) -> QParams:
    """ptqlib's QParams for per-tensor arguments given as plain numbers."""
    return QParams(
        torch.tensor(scale, dtype=torch.float32),
        torch.tensor(zero_point, dtype=torch.int64),
        quant_min,
        quant_max,
        _dtype_for(quant_min),
    )


def qparams_cases() -> list[Case]:
    """Ranges [min_val, max_val] and integer ranges; answers from qparams_from_range."""
    hint_widen = "widen the range to include 0 first: min(min_val, 0) and max(max_val, 0)"
    hint_round = "zero_point = quant_min - round(min_val / scale), rounded to the nearest int"
    hint_scale = "scale = (max_val - min_val) / (quant_max - quant_min)"
    hint_range = "use the quant_min and quant_max you are given"
    table = [
        ("a range around 0, uint8", -1.0, 3.0, 0, 255, hint_round),
        ("a range around 0, int8", -2.5, 1.2, -128, 127, hint_round),
        ("all positive (after a ReLU)", 0.5, 6.0, 0, 255, hint_widen),
        ("all negative", -4.0, -1.0, -128, 127, hint_widen),
        ("a wide range, int8", -31.0, 70.0, -128, 127, hint_round),
        ("a 4-bit range 0..15", -0.3, 0.9, 0, 15, hint_scale),
        ("a reduced range 0..127", -0.7, 1.3, 0, 127, hint_range),
        (
            "an all-zero tensor (min_val = max_val = 0)",
            0.0,
            0.0,
            0,
            255,
            "the scale must stay positive: PyTorch uses max(scale, torch.finfo(torch.float32).eps)",
        ),
    ]
    cases = []
    for name, min_val, max_val, quant_min, quant_max, hint in table:
        answer = qparams_from_range(
            min_val, max_val, _dtype_for(quant_min), quant_min=quant_min, quant_max=quant_max
        )
        arguments = (
            ("min_val", min_val),
            ("max_val", max_val),
            ("quant_min", quant_min),
            ("quant_max", quant_max),
        )
        expected = (answer.scale.item(), int(answer.zero_point.item()))
        cases.append(Case(name, arguments, expected, hint))
    return cases


def quantize_cases() -> list[Case]:
    """Float tensors and per-tensor qparams; answers from ptqlib.quantization.quantize."""
    table = [
        (
            "values inside the range, uint8",
            [[-1.23, -0.04, 0.0], [0.26, 3.37, 12.71]],
            0.1,
            128,
            0,
            255,
            "q = round(x / scale) + zero_point: round to the nearest integer (not floor or "
            "int()), and keep the shape of x",
        ),
        ("0.0 maps to the zero-point", [0.0], 0.05, 37, 0, 255, "add the zero-point"),
        (
            "values beyond the range are clamped",
            [-1.0, -0.013, 2.0, 5.1, 100.0],
            0.02,
            0,
            0,
            255,
            "clamp the result to [quant_min, quant_max]",
        ),
        (
            "negative values, int8",
            [-4.0, -1.01, -0.047, 0.5, 3.9, 4.2],
            0.03,
            -5,
            -128,
            127,
            "negative values round to the nearest integer too (int() truncates towards 0); "
            "then clamp to [quant_min, quant_max]",
        ),
        (
            "a 4-bit range 0..15",
            [-2.6, -0.3, 0.1, 0.6, 1.9, 2.2],
            0.25,
            8,
            0,
            15,
            "clamp to the quant_min and quant_max you are given, not to 0..255",
        ),
    ]
    cases = []
    for name, values, scale, zero_point, quant_min, quant_max, hint in table:
        x = torch.tensor(values, dtype=torch.float32)
        # Pass the scale as the float32 number PyTorch stores, so both sides use the same S.
        scale = torch.tensor(scale, dtype=torch.float32).item()
        expected = quantize(x, _qparams(scale, zero_point, quant_min, quant_max)).to(torch.int64)
        arguments = (
            ("x", x),
            ("scale", scale),
            ("zero_point", zero_point),
            ("quant_min", quant_min),
            ("quant_max", quant_max),
        )
        cases.append(Case(name, arguments, expected, hint))
    return cases


def dequantize_cases() -> list[Case]:
    """Integer tensors and per-tensor qparams; answers from ptqlib.quantization.dequantize."""
    hint_wrap = (
        "convert q to a wider type (q.to(torch.int32) or q.float()) before subtracting the "
        "zero-point: arithmetic in uint8/int8 wraps around (0 - 128 gives 128 in uint8)"
    )
    table = [
        ("uint8, zero-point 128", [0, 100, 128, 200, 255], torch.uint8, 0.05, 128, hint_wrap),
        ("int8, negative zero-point", [-128, -5, 0, 127], torch.int8, 0.1, -5, hint_wrap),
        (
            "a 4-bit range in int64, 2-d",
            [[0, 3], [8, 15]],
            torch.int64,
            0.25,
            8,
            "x = scale * (q - zero_point), same shape as q",
        ),
    ]
    cases = []
    for name, values, dtype, scale, zero_point, hint in table:
        q = torch.tensor(values, dtype=dtype)
        scale = torch.tensor(scale, dtype=torch.float32).item()
        quant_min = -128 if dtype == torch.int8 else 0
        expected = dequantize(q, _qparams(scale, zero_point, quant_min, 255 + quant_min))
        arguments = (("q", q), ("scale", scale), ("zero_point", zero_point))
        cases.append(Case(name, arguments, expected, hint))
    return cases


def compare_qparams(case: Case, got: Any) -> None:
    """A ``(scale, zero_point)`` pair equal to ``case.expected`` (scale to float round-off)."""
    scale, zero_point = as_pair(got, "scale, zero_point")
    scale = as_float(scale, "scale")
    zero_point = as_integer(zero_point, "zero_point")
    expected_scale, expected_zero_point = case.expected
    if not math.isclose(scale, expected_scale, rel_tol=SCALE_RELATIVE_TOLERANCE):
        raise WrongAnswer(f"scale is {scale!r}, expected {expected_scale!r}")
    if zero_point != expected_zero_point:
        raise WrongAnswer(f"zero_point is {zero_point}, expected {expected_zero_point}")


def check_qparams(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(min_val, max_val, quant_min, quant_max) -> (scale, zero_point)``.

    Affine quantization of the range [min_val, max_val] (floats) onto the integers
    quant_min..quant_max: widen the range to include 0, then
    S = (max_val - min_val) / (quant_max - quant_min) (at least float32 eps) and
    Z = quant_min - round(min_val / S), an int. The scale is compared to a relative
    tolerance of 1e-5, the zero-point exactly.
    """
    run_cases("check_qparams", student_fn, qparams_cases(), compare_qparams)


def check_quantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(x, scale, zero_point, quant_min, quant_max) -> q``.

    ``x`` is a float32 tensor, ``scale`` a float, the rest ints; ``q`` must be an integer
    tensor of the same shape with q = clamp(round(x / scale) + zero_point, quant_min,
    quant_max). Compared exactly.
    """
    run_cases("check_quantize", student_fn, quantize_cases(), compare_integers)


def check_dequantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(q, scale, zero_point) -> x`` with x = scale * (q - zero_point).

    ``q`` is an integer tensor (uint8, int8 or int64), ``scale`` a float, ``zero_point``
    an int; ``x`` must be a float tensor of the same shape, right to 1/10,000 of a step.
    """
    run_cases("check_dequantize", student_fn, dequantize_cases(), compare_floats)
