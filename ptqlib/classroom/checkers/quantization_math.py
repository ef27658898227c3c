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
    distance_to_tie,
    draw_uniform,
)
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.quantization import QParams, dequantize, qparams_from_range, quantize

# A wrong answer is off by at least one integer step; float round-off is far below this.
SCALE_RELATIVE_TOLERANCE = 1e-5
# The integer ranges a drawn case uses.
INTEGER_RANGES = ((0, 255), (-128, 127), (0, 15), (-8, 7), (0, 127))
# A drawn value to be rounded stays this far from a tie (x.5), in steps.
TIE_MARGIN = 0.01


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


HINT_WIDEN = "widen the range to include 0 first: min(min_val, 0) and max(max_val, 0)"
HINT_ROUND = "zero_point = quant_min - round(min_val / scale), rounded to the nearest int"
HINT_QUANTIZE = (
    "q = round(x / scale) + zero_point: round to the nearest integer (not floor or int()), "
    "then clamp to [quant_min, quant_max]"
)
HINT_WRAP = (
    "convert q to a wider type (q.to(torch.int32) or q.float()) before subtracting the "
    "zero-point: arithmetic in uint8/int8 wraps around (0 - 128 gives 128 in uint8)"
)


def qparams_cases() -> list[Case]:
    """Ranges [min_val, max_val] and integer ranges; answers from qparams_from_range."""
    hint_widen, hint_round = HINT_WIDEN, HINT_ROUND
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
    return [_qparams_case(*row) for row in table]


def _qparams_case(
    name: str, min_val: float, max_val: float, quant_min: int, quant_max: int, hint: str
) -> Case:
    answer = qparams_from_range(
        min_val, max_val, _dtype_for(quant_min), quant_min=quant_min, quant_max=quant_max
    )
    arguments = (
        ("min_val", min_val),
        ("max_val", max_val),
        ("quant_min", quant_min),
        ("quant_max", quant_max),
    )
    return Case(name, arguments, (answer.scale.item(), int(answer.zero_point.item())), hint)


def _integer_range(generator: torch.Generator) -> tuple[int, int]:
    return INTEGER_RANGES[int(torch.randint(len(INTEGER_RANGES), (), generator=generator))]


def draw_qparams_cases(generator: torch.Generator) -> list[Case]:
    """A range around 0, an all-positive and an all-negative one, random integer ranges;
    min_val / scale stays far from a rounding tie in float32 and in float64."""
    kinds = [
        ("a random range around 0", (-8.0, -0.1), (0.1, 8.0), HINT_ROUND),
        ("a random positive range", (0.1, 3.0), (3.0, 9.0), HINT_WIDEN),
        ("a random negative range", (-9.0, -3.0), (-3.0, -0.1), HINT_WIDEN),
    ]
    cases = []
    for name, lows, highs, hint in kinds:
        while True:
            min_val = round(float(draw_uniform(generator, *lows)), 4)
            max_val = round(float(draw_uniform(generator, *highs)), 4)
            quant_min, quant_max = _integer_range(generator)
            case = _qparams_case(name, min_val, max_val, quant_min, quant_max, hint)
            low, high = min(min_val, 0.0), max(max_val, 0.0)
            float64_scale = (high - low) / (quant_max - quant_min)
            steps = torch.tensor([low / case.expected[0], low / float64_scale])
            if bool((distance_to_tie(steps) > TIE_MARGIN).all()):
                cases.append(case)
                break
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
    return [_quantize_case(*row) for row in table]


def _quantize_case(
    name: str,
    values: list | torch.Tensor,
    scale: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    hint: str,
) -> Case:
    x = torch.as_tensor(values, dtype=torch.float32)
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
    return Case(name, arguments, expected, hint)


def draw_quantize_cases(generator: torch.Generator) -> list[Case]:
    """Random values inside and beyond random integer ranges, each x / scale (float64, and
    float32 times 1 / scale as PyTorch computes it) far from a rounding tie."""
    cases = []
    for number in range(3):
        quant_min, quant_max = _integer_range(generator)
        scale = torch.tensor(round(float(draw_uniform(generator, 0.01, 0.5)), 4)).item()
        zero_point = int(torch.randint(quant_min, quant_max + 1, (), generator=generator))
        steps = torch.randint(quant_min - 20, quant_max + 20, (12,), generator=generator)
        x = torch.zeros(12, dtype=torch.float32)
        far = torch.zeros(12, dtype=torch.bool)
        while not bool(far.all()):
            offsets = draw_uniform(generator, -0.45, 0.45, (12,))
            fresh = ((steps - zero_point + offsets) * scale).float()
            x = torch.where(far, x, fresh)
            by_division = x.double() / scale
            by_reciprocal = x * torch.tensor(1.0 / scale, dtype=torch.float32)
            far = (distance_to_tie(by_division) > TIE_MARGIN) & (
                distance_to_tie(by_reciprocal) > TIE_MARGIN
            )
        shape = (3, 4) if number == 0 else (12,)
        name = f"random values, integer range {quant_min}..{quant_max}"
        cases.append(
            _quantize_case(
                name, x.reshape(shape), scale, zero_point, quant_min, quant_max, HINT_QUANTIZE
            )
        )
    return cases


def dequantize_cases() -> list[Case]:
    """Integer tensors and per-tensor qparams; answers from ptqlib.quantization.dequantize."""
    hint_wrap = HINT_WRAP
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
    return [_dequantize_case(*row) for row in table]


def _dequantize_case(
    name: str,
    values: list | torch.Tensor,
    dtype: torch.dtype,
    scale: float,
    zero_point: int,
    hint: str,
) -> Case:
    q = torch.as_tensor(values).to(dtype)
    scale = torch.tensor(scale, dtype=torch.float32).item()
    quant_min = -128 if dtype == torch.int8 else 0
    expected = dequantize(q, _qparams(scale, zero_point, quant_min, 255 + quant_min))
    arguments = (("q", q), ("scale", scale), ("zero_point", zero_point))
    return Case(name, arguments, expected, hint)


def draw_dequantize_cases(generator: torch.Generator) -> list[Case]:
    """Random uint8, int8 and int64 tensors with random scales and zero-points."""
    cases = []
    for dtype, low, high in ((torch.uint8, 0, 256), (torch.int8, -128, 128), (torch.int64, 0, 16)):
        q = torch.randint(low, high, (2, 5), generator=generator).to(dtype)
        scale = round(float(draw_uniform(generator, 0.01, 0.5)), 4)
        zero_point = int(torch.randint(low, high, (), generator=generator))
        name = f"random {str(dtype).removeprefix('torch.')} values, zero-point {zero_point}"
        cases.append(_dequantize_case(name, q, dtype, scale, zero_point, HINT_WRAP))
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
    run_exercise(QPARAMS, student_fn)


def check_quantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(x, scale, zero_point, quant_min, quant_max) -> q``.

    ``x`` is a float32 tensor, ``scale`` a float, the rest ints; ``q`` must be an integer
    tensor of the same shape with q = clamp(round(x / scale) + zero_point, quant_min,
    quant_max). Compared exactly.
    """
    run_exercise(QUANTIZE, student_fn)


def check_dequantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(q, scale, zero_point) -> x`` with x = scale * (q - zero_point).

    ``q`` is an integer tensor (uint8, int8 or int64), ``scale`` a float, ``zero_point``
    an int; ``x`` must be a float tensor of the same shape, right to 1/10,000 of a step.
    """
    run_exercise(DEQUANTIZE, student_fn)


QPARAMS = Exercise(
    id="qparams",
    notebook="02_quantization_math",
    function="affine_qparams",
    cases=qparams_cases,
    draw=draw_qparams_cases,
    compare=compare_qparams,
    answers=("ptqlib.quantization.qparams_from_range",),
)
QUANTIZE = Exercise(
    id="quantize",
    notebook="02_quantization_math",
    function="my_quantize",
    cases=quantize_cases,
    draw=draw_quantize_cases,
    compare=compare_integers,
    answers=("ptqlib.quantization.quantize", "ptqlib.quantization.fake_quantize"),
)
DEQUANTIZE = Exercise(
    id="dequantize",
    notebook="02_quantization_math",
    function="my_dequantize",
    cases=dequantize_cases,
    draw=draw_dequantize_cases,
    compare=compare_floats,
    answers=("ptqlib.quantization.dequantize", "ptqlib.quantization.fake_quantize"),
)
