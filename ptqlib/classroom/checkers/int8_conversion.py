"""Checkers for notebook 04 (INT8 conversion): requantization and the fixed-point multiplier.

The answers come from the plain references below (float64 requantization, ``math.frexp``
for the multiplier), not from :mod:`ptqlib.integer_arithmetic`, so the library's own
integer path can be checked against them too; see :mod:`ptqlib.classroom.checkers`. The checkers of
the int32 bias, the zero-point correction and a whole integer layer are in
:mod:`ptqlib.classroom.checkers.integer_layer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import (
    Case,
    WrongAnswer,
    as_integer,
    as_pair,
    compare_integers,
    run_cases,
)
from ptqlib.errors import InputError


def _requantize_reference(
    acc: torch.Tensor, multiplier: float, zero_point: int, quant_min: int, quant_max: int
) -> torch.Tensor:
    """The exact requantization: clamp(zero_point + round(acc * multiplier), quant_min, quant_max).

    ``acc`` holds int32 accumulators (sums of products of integers); ``multiplier`` is
    M = S_in * S_w / S_out, a real number in (0, 1). Computed in float64, where
    ``acc * multiplier`` is exact enough for any int32 ``acc``; rounds halves to even.
    """
    scaled = torch.round(acc.to(torch.float64) * multiplier).to(torch.int64)
    return (scaled + zero_point).clamp(quant_min, quant_max)


def requantize_cases() -> list[Case]:
    """int32 accumulators, a multiplier in (0, 1) and the output's zero-point and range."""
    table = [
        (
            "round to nearest, not truncate",
            [1000, -1000, 1300, -1300],
            0.0017,
            0,
            -128,
            127,
            "round(acc * multiplier) to the nearest integer: int() and floor() are wrong for "
            "fractions above one half and for negative values",
        ),
        (
            "typical accumulators, uint8 output",
            [-20000, -1234, 0, 517, 8001, 31000],
            0.0042,
            128,
            0,
            255,
            "q = clamp(zero_point + round(acc * multiplier), quant_min, quant_max)",
        ),
        (
            "int8 output, negative zero-point",
            [-251000, -70123, -999, 2500, 123456, 190000],
            0.00071,
            -3,
            -128,
            127,
            "add the output zero-point after rounding, then clamp",
        ),
        (
            "huge accumulators saturate",
            [2**31 - 1, -(2**31), 2**20, -(2**20)],
            0.0001,
            10,
            0,
            255,
            "clamp to [quant_min, quant_max]; and do not overflow int32 on the way (widen to "
            "int64 or float64 before multiplying)",
        ),
        (
            "a multiplier close to 1",
            [-130, -7, 0, 3, 100, 140],
            0.9876,
            0,
            -128,
            127,
            "clamp to the quant_min and quant_max you are given",
        ),
    ]
    cases = []
    for name, values, multiplier, zero_point, quant_min, quant_max, hint in table:
        acc = torch.tensor(values, dtype=torch.int32)
        expected = _requantize_reference(acc, multiplier, zero_point, quant_min, quant_max)
        arguments = (
            ("acc", acc),
            ("multiplier", multiplier),
            ("zero_point", zero_point),
            ("quant_min", quant_min),
            ("quant_max", quant_max),
        )
        cases.append(Case(name, arguments, expected, hint))
    return cases


def _fixed_point_multiplier_reference(multiplier: float) -> tuple[int, int]:
    """``(m0, shift)`` with multiplier ~= m0 * 2**-shift and m0 an int32 in [2**30, 2**31).

    Integer-only kernels cannot multiply by a real M, so they store it as an integer m0
    with 31 significant bits and a right shift: acc * M ~= (acc * m0) >> shift, rounded.
    Write M = f * 2**e with f in [0.5, 1) (``math.frexp``); then m0 = round(f * 2**31)
    and shift = 31 - e.
    """
    if not (isinstance(multiplier, float) and 0.0 < multiplier < 1.0):
        raise InputError(f"multiplier: expected a float in (0, 1), got {multiplier!r}")
    fraction, exponent = math.frexp(multiplier)
    m0 = round(fraction * 2**31)
    if m0 == 2**31:  # f rounded up to 1.0: use 0.5 with the next exponent instead
        m0, exponent = 2**30, exponent + 1
    return m0, 31 - exponent


def fixed_point_cases() -> list[Case]:
    """Multipliers M in (0, 1) and their integer form (m0, shift)."""
    hint = (
        "double M until it lies in [0.5, 1), counting the doublings k; then m0 = round(M * 2**k "
        "* 2**31) must lie in [2**30, 2**31) and shift = 31 + k"
    )
    rounds_up = (
        "round(f * 2**31) can round up to 2**31 itself (f just below 1), which needs 32 bits: "
        "then use m0 = 2**30 and a shift one smaller (the same value, M0 2^-n = 2^30 2^-(n-1))"
    )
    table = [
        ("M = 0.5 exactly", 0.5, hint),
        ("M = 0.75", 0.75, hint),
        ("a typical M = 0.0042", 0.0042, hint),
        ("M close to 1", 0.9876, hint),
        ("a tiny M = 1e-5", 1e-5, hint),
        ("M = 1/3", 1 / 3, hint),
        # f * 2**31 = 2**31 - 0.25: m0 rounds up to 2**31, the classic fixed-point bug.
        ("m0 rounds up to 2**31: M = 1 - 2**-33", 1 - 2.0**-33, rounds_up),
        ("m0 rounds up to 2**31: M = (1 - 2**-33) / 1024", (1 - 2.0**-33) / 1024, rounds_up),
    ]
    cases = []
    for name, multiplier, case_hint in table:
        expected = _fixed_point_multiplier_reference(multiplier)
        cases.append(Case(name, (("multiplier", multiplier),), expected, case_hint))
    return cases


def _compare_fixed_point(case: Case, got: Any) -> None:
    m0, shift = as_pair(got, "m0, shift")
    m0 = as_integer(m0, "m0")
    shift = as_integer(shift, "shift")
    if m0 == 2**31:
        raise WrongAnswer(
            f"m0 = 2**31 = {m0} does not fit in an int32 (largest 2**31 - 1): it rounded up; "
            "renormalise to m0 = 2**30 with shift - 1"
        )
    if not 2**30 <= m0 < 2**31:
        raise WrongAnswer(f"m0 = {m0} is not in [2**30, 2**31) = [{2**30}, {2**31})")
    if (m0, shift) != case.expected:
        raise WrongAnswer(f"(m0, shift) is {(m0, shift)}, expected {case.expected}")


def check_requantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(acc, multiplier, zero_point, quant_min, quant_max) -> q``.

    ``acc`` is an int32 tensor of accumulators, ``multiplier`` M = S_in * S_w / S_out a
    float in (0, 1); q = clamp(zero_point + round(acc * M), quant_min, quant_max) must be
    an integer tensor of the same shape. A float or a fixed-point version
    (see :func:`check_fixed_point_multiplier`) both pass: no case is near a rounding tie.
    """
    run_cases("check_requantize", student_fn, requantize_cases(), compare_integers)


def check_fixed_point_multiplier(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(multiplier) -> (m0, shift)`` with M ~= m0 * 2**-shift.

    ``m0`` must be an int in [2**30, 2**31) (31 significant bits, fits in int32) equal to
    round(M * 2**shift); ``shift`` an int. See :func:`_fixed_point_multiplier_reference`.
    """
    run_cases("check_fixed_point_multiplier", student_fn, fixed_point_cases(), _compare_fixed_point)
