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
    distance_to_tie,
    draw_uniform,
)
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.errors import InputError

# A drawn value to be rounded stays this far from a tie (x.5), in steps.
TIE_MARGIN = 0.01


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
    return [_requantize_case(*row) for row in table]


def _requantize_case(
    name: str,
    values: list | torch.Tensor,
    multiplier: float,
    zero_point: int,
    quant_min: int,
    quant_max: int,
    hint: str,
) -> Case:
    acc = torch.as_tensor(values).to(torch.int32)
    expected = _requantize_reference(acc, multiplier, zero_point, quant_min, quant_max)
    arguments = (
        ("acc", acc),
        ("multiplier", multiplier),
        ("zero_point", zero_point),
        ("quant_min", quant_min),
        ("quant_max", quant_max),
    )
    return Case(name, arguments, expected, hint)


def draw_requantize_cases(generator: torch.Generator) -> list[Case]:
    """Random multipliers and accumulators whose scaled values lie around and beyond the
    output range, far from rounding ties in float64 and in float32."""
    hint = "q = clamp(zero_point + round(acc * multiplier), quant_min, quant_max)"
    cases = []
    for quant_min, quant_max in ((0, 255), (-128, 127), (-128, 127)):
        multiplier = float(10 ** draw_uniform(generator, -4, -0.05))
        zero_point = int(torch.randint(quant_min, quant_max + 1, (), generator=generator))
        acc = torch.zeros(10, dtype=torch.int32)
        far = torch.zeros(10, dtype=torch.bool)
        while not bool(far.all()):
            targets = draw_uniform(generator, -300, 300, (10,))  # acc * multiplier
            fresh = torch.round(targets / multiplier).to(torch.int32)
            acc = torch.where(far, acc, fresh)
            far = (distance_to_tie(acc.double() * multiplier) > TIE_MARGIN) & (
                distance_to_tie(acc.float() * multiplier) > TIE_MARGIN
            )
        name = f"random accumulators, multiplier {multiplier:.4g}, output {quant_min}..{quant_max}"
        cases.append(
            _requantize_case(name, acc, multiplier, zero_point, quant_min, quant_max, hint)
        )
    return cases


def _fixed_point_multiplier_reference(multiplier: float, bits: int = 31) -> tuple[int, int]:
    """``(m0, shift)`` with multiplier ~= m0 * 2**-shift and m0 in [2**(bits-1), 2**bits).

    Integer-only kernels cannot multiply by a real M, so they store it as an integer m0
    with ``bits`` significant bits (31: it fits in an int32) and a right shift:
    acc * M ~= (acc * m0) >> shift, rounded. Write M = f * 2**e with f in [0.5, 1)
    (``math.frexp``); then m0 = round(f * 2**bits) and shift = bits - e.
    """
    if not (isinstance(multiplier, float) and 0.0 < multiplier < 1.0):
        raise InputError(f"multiplier: expected a float in (0, 1), got {multiplier!r}")
    fraction, exponent = math.frexp(multiplier)
    m0 = round(fraction * 2**bits)
    if m0 == 2**bits:  # f rounded up to 1.0: use 0.5 with the next exponent instead
        m0, exponent = 2 ** (bits - 1), exponent + 1
    return m0, bits - exponent


HINT_FIXED_POINT = (
    "write M = f * 2**e with f in [0.5, 1) (math.frexp); then m0 = round(f * 2**bits) lies in "
    "[2**(bits-1), 2**bits) and shift = bits - e"
)
HINT_ROUNDS_UP = (
    "round(f * 2**bits) can round up to 2**bits itself (f just below 1), one bit too many: "
    "then use m0 = 2**(bits-1) and a shift one smaller (the same value)"
)


def fixed_point_cases() -> list[Case]:
    """Multipliers M in (0, 1) and a number of bits, and their integer form (m0, shift)."""
    table = [
        ("M = 0.5 exactly, 31 bits", 0.5, 31, HINT_FIXED_POINT),
        ("M = 0.75, 31 bits", 0.75, 31, HINT_FIXED_POINT),
        ("a typical M = 0.0042, 31 bits", 0.0042, 31, HINT_FIXED_POINT),
        ("M close to 1, 31 bits", 0.9876, 31, HINT_FIXED_POINT),
        ("a tiny M = 1e-5, 31 bits", 1e-5, 31, HINT_FIXED_POINT),
        ("M = 1/3, 31 bits", 1 / 3, 31, HINT_FIXED_POINT),
        ("M = 0.0042 with 15 bits (a 16-bit machine)", 0.0042, 15, HINT_FIXED_POINT),
        ("M = 1/3 with 7 bits", 1 / 3, 7, HINT_FIXED_POINT),
        # f * 2**31 = 2**31 - 0.25: m0 rounds up to 2**31, the classic fixed-point bug.
        ("m0 rounds up to 2**31: M = 1 - 2**-33", 1 - 2.0**-33, 31, HINT_ROUNDS_UP),
        ("m0 rounds up: M = (1 - 2**-33) / 1024", (1 - 2.0**-33) / 1024, 31, HINT_ROUNDS_UP),
        ("m0 rounds up to 2**15 with 15 bits: M = 0.99999", 0.99999, 15, HINT_ROUNDS_UP),
    ]
    return [_fixed_point_case(*row) for row in table]


def _fixed_point_case(name: str, multiplier: float, bits: int, hint: str) -> Case:
    expected = _fixed_point_multiplier_reference(multiplier, bits)
    return Case(name, (("multiplier", multiplier), ("bits", bits)), expected, hint)


def draw_fixed_point_cases(generator: torch.Generator) -> list[Case]:
    """Random multipliers from 1e-6 to 1 and widths from 7 to 31 bits; f * 2**bits is never
    an exact tie."""
    cases = []
    while len(cases) < 4:
        multiplier = float(10 ** draw_uniform(generator, -6, -0.001))
        bits = 31 if not cases else int(torch.randint(7, 32, (), generator=generator))
        fraction, _ = math.frexp(multiplier)
        if (fraction * 2**bits) % 1.0 != 0.5:
            name = f"M = {multiplier!r}, {bits} bits"
            cases.append(_fixed_point_case(name, multiplier, bits, HINT_FIXED_POINT))
    return cases


def _compare_fixed_point(case: Case, got: Any) -> None:
    m0, shift = as_pair(got, "m0, shift")
    m0 = as_integer(m0, "m0")
    shift = as_integer(shift, "shift")
    bits = dict(case.arguments)["bits"]
    if m0 == 2**bits:
        raise WrongAnswer(
            f"m0 = 2**{bits} = {m0} needs {bits + 1} bits: it rounded up; renormalise to "
            f"m0 = 2**{bits - 1} with shift - 1"
        )
    if not 2 ** (bits - 1) <= m0 < 2**bits:
        raise WrongAnswer(f"m0 = {m0} is not in [2**{bits - 1}, 2**{bits}) for {bits} bits")
    if (m0, shift) != case.expected:
        raise WrongAnswer(f"(m0, shift) is {(m0, shift)}, expected {case.expected}")


def check_requantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(acc, multiplier, zero_point, quant_min, quant_max) -> q``.

    ``acc`` is an int32 tensor of accumulators, ``multiplier`` M = S_in * S_w / S_out a
    float in (0, 1); q = clamp(zero_point + round(acc * M), quant_min, quant_max) must be
    an integer tensor of the same shape. A float or a fixed-point version
    (see :func:`check_fixed_point_multiplier`) both pass: no case is near a rounding tie.
    """
    run_exercise(REQUANTIZE, student_fn)


def check_fixed_point_multiplier(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(multiplier, bits) -> (m0, shift)`` with M ~= m0 * 2**-shift.

    ``m0`` must be an int in [2**(bits-1), 2**bits) (``bits`` significant bits; 31 fits in an
    int32) equal to round(M * 2**shift); ``shift`` an int. See
    :func:`_fixed_point_multiplier_reference`.
    """
    run_exercise(FIXED_POINT_MULTIPLIER, student_fn)


REQUANTIZE = Exercise(
    id="requantize",
    notebook=None,  # no notebook asks for it: a checker to practise with
    function="my_requantize",
    cases=requantize_cases,
    draw=draw_requantize_cases,
    compare=compare_integers,
    answers=(
        "ptqlib.integer_arithmetic.requantize",
        "ptqlib.ort_arithmetic.requantize_float32",
    ),
)
FIXED_POINT_MULTIPLIER = Exercise(
    id="fixed_point_multiplier",
    notebook="04_int8_conversion",
    function="my_fixed_point_multiplier",
    cases=fixed_point_cases,
    draw=draw_fixed_point_cases,
    compare=_compare_fixed_point,
    answers=("ptqlib.integer_arithmetic.fixed_point_multiplier",),
)
