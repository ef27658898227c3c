"""Known-answer checkers: is my own implementation of the quantization math right?

Write your own function in a notebook, hand it to the matching checker, and it runs your
function on a few hand-picked cases whose answers come from :mod:`ptqlib.quantization`
(bit-exact with PyTorch). It prints one ``PASS`` line, or raises ``AssertionError``
naming the first case that fails: the inputs, the expected answer, what your function
returned, and a hint about the usual mistake behind that case::

    from ptqlib.checkers import check_qparams

    def my_qparams(min_val, max_val, quant_min, quant_max):
        ...
        return scale, zero_point

    check_qparams(my_qparams)      # check_qparams: PASS (8 cases)

The function you write for each checker, with its arguments in this order:

- :func:`check_qparams`: ``(min_val, max_val, quant_min, quant_max) -> (scale, zero_point)``,
  the affine qparams for a tensor whose values lie in [min_val, max_val];
- :func:`check_quantize`: ``(x, scale, zero_point, quant_min, quant_max) -> q``, a float
  tensor to an integer tensor;
- :func:`check_dequantize`: ``(q, scale, zero_point) -> x``, an integer tensor back to a
  float tensor;
- :func:`check_requantize`: ``(acc, multiplier, zero_point, quant_min, quant_max) -> q``,
  int32 accumulators to the output's integers;
- :func:`check_fixed_point_multiplier`: ``(multiplier) -> (m0, shift)``, the integer form
  of the requantization multiplier.

Rounding: PyTorch rounds halves to even (``torch.round(2.5) == 2``); ``floor(v + 0.5)``
and fixed-point code round halves up or away from zero. The two differ only on exact
ties, so every case here keeps ``v`` at least 0.001 away from a tie (``tests/
test_checkers.py`` verifies that): any correct rounding to the nearest integer passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ptqlib.quantization import QParams, dequantize, qparams_from_range, quantize

# A wrong answer is off by at least one integer step; float round-off is far below this.
SCALE_RELATIVE_TOLERANCE = 1e-5
# Dequantized values may differ by float round-off: allow 1/10,000 of a step.
DEQUANTIZE_TOLERANCE_IN_STEPS = 1e-4


@dataclass(frozen=True)
class Case:
    """One known-answer case: the arguments, the right answer, and a hint if it fails."""

    name: str  # what the case exercises, e.g. "values beyond the range are clamped"
    arguments: tuple[tuple[str, Any], ...]  # (name, value) pairs, passed in this order
    expected: Any
    hint: str


# --- The cases ---------------------------------------------------------------------


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


def requantize_reference(
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
        expected = requantize_reference(acc, multiplier, zero_point, quant_min, quant_max)
        arguments = (
            ("acc", acc),
            ("multiplier", multiplier),
            ("zero_point", zero_point),
            ("quant_min", quant_min),
            ("quant_max", quant_max),
        )
        cases.append(Case(name, arguments, expected, hint))
    return cases


def fixed_point_multiplier_reference(multiplier: float) -> tuple[int, int]:
    """``(m0, shift)`` with multiplier ~= m0 * 2**-shift and m0 an int32 in [2**30, 2**31).

    Integer-only kernels cannot multiply by a real M, so they store it as an integer m0
    with 31 significant bits and a right shift: acc * M ~= (acc * m0) >> shift, rounded.
    Write M = f * 2**e with f in [0.5, 1) (``math.frexp``); then m0 = round(f * 2**31)
    and shift = 31 - e.
    """
    if not (isinstance(multiplier, float) and 0.0 < multiplier < 1.0):
        raise ValueError(f"multiplier: expected a float in (0, 1), got {multiplier!r}")
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
    table = [
        ("M = 0.5 exactly", 0.5),
        ("M = 0.75", 0.75),
        ("a typical M = 0.0042", 0.0042),
        ("M close to 1", 0.9876),
        ("a tiny M = 1e-5", 1e-5),
        ("M = 1/3", 1 / 3),
    ]
    cases = []
    for name, multiplier in table:
        expected = fixed_point_multiplier_reference(multiplier)
        cases.append(Case(name, (("multiplier", multiplier),), expected, hint))
    return cases


# --- Checking a student's answer -----------------------------------------------------


class _WrongAnswer(Exception):
    """Raised by the comparisons; turned into an AssertionError that names the case."""


def _as_integer(value: Any, what: str) -> int:
    """A Python int from an int or a one-element integer tensor, else a clear error."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            shape = tuple(value.shape)
            raise _WrongAnswer(f"{what} should be an integer, got a {value.dtype} tensor {shape}")
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongAnswer(
            f"{what} should be an integer (int), got {value!r} of type {type(value).__name__}; "
            "convert it with int(...)"
        )
    return value


def _as_float(value: Any, what: str) -> float:
    """A Python float from a number or a one-element tensor, else a clear error."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise _WrongAnswer(f"{what} should be one number, got a tensor {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type(value).__name__
        raise _WrongAnswer(f"{what} should be a number, got {value!r} of type {kind}")
    return float(value)


def _as_pair(got: Any, names: str) -> Sequence[Any]:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise _WrongAnswer(f"your function should return a pair ({names}), got {got!r}")
    return got


def _check_tensor(got: Any, expected: torch.Tensor, kind: str) -> torch.Tensor:
    """``got`` as a tensor of the expected shape and kind ('integer' or 'float')."""
    if not isinstance(got, torch.Tensor):
        raise _WrongAnswer(f"your function should return a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise _WrongAnswer(
            f"the shape is {tuple(got.shape)}, expected {tuple(expected.shape)} (as the input)"
        )
    is_integer = not got.is_floating_point() and not got.is_complex() and got.dtype != torch.bool
    if kind == "integer" and not is_integer:
        raise _WrongAnswer(
            f"expected an integer tensor, got dtype {got.dtype}; quantized values are integers "
            "(convert with .to(torch.int64) after rounding)"
        )
    if kind == "float" and not got.is_floating_point():
        raise _WrongAnswer(f"expected a float tensor, got dtype {got.dtype}")
    return got


def _first_difference(got: torch.Tensor, expected: torch.Tensor, close: torch.Tensor) -> str:
    index = tuple(int(i) for i in torch.nonzero(~close)[0])
    return (
        f"first difference at index {list(index)}: "
        f"expected {_describe(expected[index].item())}, got {_describe(got[index].item())}"
    )


def _compare_qparams(case: Case, got: Any) -> None:
    scale, zero_point = _as_pair(got, "scale, zero_point")
    scale = _as_float(scale, "scale")
    zero_point = _as_integer(zero_point, "zero_point")
    expected_scale, expected_zero_point = case.expected
    if not math.isclose(scale, expected_scale, rel_tol=SCALE_RELATIVE_TOLERANCE):
        raise _WrongAnswer(f"scale is {scale!r}, expected {expected_scale!r}")
    if zero_point != expected_zero_point:
        raise _WrongAnswer(f"zero_point is {zero_point}, expected {expected_zero_point}")


def _compare_integers(case: Case, got: Any) -> None:
    got = _check_tensor(got, case.expected, "integer").to(torch.int64)
    same = got == case.expected
    if not bool(same.all()):
        raise _WrongAnswer(_first_difference(got, case.expected, same))


def _compare_floats(case: Case, got: Any) -> None:
    got = _check_tensor(got, case.expected, "float").to(torch.float64)
    expected = case.expected.to(torch.float64)
    scale = dict(case.arguments)["scale"]
    close = (got - expected).abs() <= DEQUANTIZE_TOLERANCE_IN_STEPS * scale
    if not bool(close.all()):
        raise _WrongAnswer(_first_difference(got, expected, close))


def _compare_fixed_point(case: Case, got: Any) -> None:
    m0, shift = _as_pair(got, "m0, shift")
    m0 = _as_integer(m0, "m0")
    shift = _as_integer(shift, "shift")
    if not 2**30 <= m0 < 2**31:
        raise _WrongAnswer(f"m0 = {m0} is not in [2**30, 2**31) = [{2**30}, {2**31})")
    if (m0, shift) != case.expected:
        raise _WrongAnswer(f"(m0, shift) is {(m0, shift)}, expected {case.expected}")


def _describe(value: Any) -> str:
    """A short, readable form of an argument or a result (floats to 7 significant digits)."""
    if isinstance(value, torch.Tensor):
        return f"tensor({_describe(value.tolist())}, dtype={value.dtype})"
    if isinstance(value, (tuple, list)):
        inside = ", ".join(_describe(v) for v in value)
        return f"({inside})" if isinstance(value, tuple) else f"[{inside}]"
    if isinstance(value, float):
        text = f"{value:.7g}"
        return text if any(c in text for c in ".einf") else text + ".0"  # 6.0, not 6
    return repr(value)


def _failure(
    checker: str, number: int, cases: list[Case], case: Case, got: str, problem: str
) -> str:
    arguments = ", ".join(f"{name}={_describe(value)}" for name, value in case.arguments)
    return (
        f"{checker}: case {number} of {len(cases)} failed: {case.name}\n"
        f"  called with: {arguments}\n"
        f"  expected:    {_describe(case.expected)}\n"
        f"  got:         {got}\n"
        f"  problem:     {problem}\n"
        f"  hint:        {case.hint}"
    )


def _run_cases(
    checker: str,
    student_fn: Callable[..., Any],
    cases: list[Case],
    compare: Callable[[Case, Any], None],
) -> None:
    """Run ``student_fn`` on every case: print PASS, or raise AssertionError on a failure."""
    if not callable(student_fn):
        raise TypeError(f"{checker}: expected your function, got {student_fn!r}")
    for number, case in enumerate(cases, start=1):
        # Fresh copies, so a function that changes its input in place cannot affect the answer.
        arguments = [v.clone() if isinstance(v, torch.Tensor) else v for _, v in case.arguments]
        try:
            got = student_fn(*arguments)
        except Exception as error:
            message = _failure(
                checker,
                number,
                cases,
                case,
                "(nothing: it raised an exception)",
                f"your function raised {type(error).__name__}: {error}",
            )
            raise AssertionError(message) from error
        try:
            compare(case, got)
        except _WrongAnswer as wrong:
            message = _failure(checker, number, cases, case, _describe(got), str(wrong))
            raise AssertionError(message) from None
    print(f"{checker}: PASS ({len(cases)} cases)")


# --- The checkers ------------------------------------------------------------------


def check_qparams(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(min_val, max_val, quant_min, quant_max) -> (scale, zero_point)``.

    Affine quantization of the range [min_val, max_val] (floats) onto the integers
    quant_min..quant_max: widen the range to include 0, then
    S = (max_val - min_val) / (quant_max - quant_min) (at least float32 eps) and
    Z = quant_min - round(min_val / S), an int. The scale is compared to a relative
    tolerance of 1e-5, the zero-point exactly.
    """
    _run_cases("check_qparams", student_fn, qparams_cases(), _compare_qparams)


def check_quantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(x, scale, zero_point, quant_min, quant_max) -> q``.

    ``x`` is a float32 tensor, ``scale`` a float, the rest ints; ``q`` must be an integer
    tensor of the same shape with q = clamp(round(x / scale) + zero_point, quant_min,
    quant_max). Compared exactly.
    """
    _run_cases("check_quantize", student_fn, quantize_cases(), _compare_integers)


def check_dequantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(q, scale, zero_point) -> x`` with x = scale * (q - zero_point).

    ``q`` is an integer tensor (uint8, int8 or int64), ``scale`` a float, ``zero_point``
    an int; ``x`` must be a float tensor of the same shape, right to 1/10,000 of a step.
    """
    _run_cases("check_dequantize", student_fn, dequantize_cases(), _compare_floats)


def check_requantize(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(acc, multiplier, zero_point, quant_min, quant_max) -> q``.

    ``acc`` is an int32 tensor of accumulators, ``multiplier`` M = S_in * S_w / S_out a
    float in (0, 1); q = clamp(zero_point + round(acc * M), quant_min, quant_max) must be
    an integer tensor of the same shape. A float or a fixed-point version
    (see :func:`check_fixed_point_multiplier`) both pass: no case is near a rounding tie.
    """
    _run_cases("check_requantize", student_fn, requantize_cases(), _compare_integers)


def check_fixed_point_multiplier(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(multiplier) -> (m0, shift)`` with M ~= m0 * 2**-shift.

    ``m0`` must be an int in [2**30, 2**31) (31 significant bits, fits in int32) equal to
    round(M * 2**shift); ``shift`` an int. See :func:`fixed_point_multiplier_reference`.
    """
    _run_cases(
        "check_fixed_point_multiplier", student_fn, fixed_point_cases(), _compare_fixed_point
    )
