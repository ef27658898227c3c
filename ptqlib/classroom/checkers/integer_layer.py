"""Checker for notebook 04's integer layer: a whole integer Linear (+ ReLU), int8 in, int8
out (its parts, the int32 bias and the zero-point correction, are practice checkers in
:mod:`ptqlib.classroom.checkers.integer_layer_parts`).

The function a student writes, with its arguments in this order:

- :func:`check_integer_layer`: ``(q_x, q_w, q_b, input_zero_point, multiplier, shift,
  output_zero_point, relu) -> q_y``, the whole layer in integers.

When an answer is wrong, the checker also tries the classic mistakes (the wrong scale, the
wrong sign, clamping the ReLU at 0 instead of Z_y...) and, if one of them reproduces the
answer exactly, names it. The reference requantizes with ptqlib's own ``requantize``
(integer layers are built in one place); ``tests/test_checkers_int8_conversion.py`` proves
it equal to :mod:`ptqlib.int8_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, comparing_mistakes
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.classroom.checkers.int8_conversion import _fixed_point_multiplier_reference
from ptqlib.integer_arithmetic import requantize

INT8_MIN, INT8_MAX = -128, 127


# --- a whole integer layer ---------------------------------------------------------------------


def _integer_layer_reference(
    q_x: torch.Tensor,
    q_w: torch.Tensor,
    q_b: torch.Tensor,
    input_zero_point: int,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    output_zero_point: int,
    relu: bool,
    lowest: int | None = None,
) -> torch.Tensor:
    """A quantized Linear (+ fused ReLU) on int8 activations, in integers only (int64)::

        acc = sum_k (q_x,k - Z_x) q_w,k + q_b
        q_y = clamp(((acc M0 + 2^(n-1)) >> n) + Z_y, lo, 127),  lo = Z_y with a ReLU, else -128

    The accumulator as its definition reads, the second line by ptqlib's own
    :func:`~ptqlib.integer_arithmetic.requantize` (the one the integer layers run).
    ``lowest`` overrides ``lo`` (used only to build the classic mistakes)."""
    centred = q_x.to(torch.int64) - input_zero_point
    accumulator = centred @ q_w.to(torch.int64).T + q_b.to(torch.int64)
    if lowest is None:
        lowest = output_zero_point if relu else INT8_MIN
    lowest = max(lowest, INT8_MIN)
    return requantize(accumulator, multiplier, shift, output_zero_point, lowest, INT8_MAX)


HINT_LAYER = (
    "acc = (q_x - Z_x) @ q_w.T + q_b in int32/int64; q_y = ((acc * M0 + 2**(n-1)) >> n) + Z_y; "
    "clamp to [Z_y, 127] with a ReLU (real 0 is the integer Z_y), else to [-128, 127]; int8"
)


def _integer_layer_case(
    name: str, generator: torch.Generator, input_zero_point: int, output_zero_point: int, relu: bool
) -> Case:
    """A random int8 layer (4 digits, 16 inputs, 5 outputs) whose outputs span int8."""
    q_x = torch.randint(-128, 128, (4, 16), generator=generator, dtype=torch.int8)
    q_w = torch.randint(-127, 128, (5, 16), generator=generator, dtype=torch.int8)
    q_b = torch.randint(-3000, 3000, (5,), generator=generator, dtype=torch.int32)
    reals = 0.002 + 0.004 * torch.rand(5, generator=generator, dtype=torch.float64)
    pairs = [_fixed_point_multiplier_reference(float(real)) for real in reals]
    multiplier = torch.tensor([m0 for m0, _ in pairs], dtype=torch.int64)
    shift = torch.tensor([n for _, n in pairs], dtype=torch.int64)
    arguments = (
        ("q_x", q_x),
        ("q_w", q_w),
        ("q_b", q_b),
        ("input_zero_point", input_zero_point),
        ("multiplier", multiplier),
        ("shift", shift),
        ("output_zero_point", output_zero_point),
        ("relu", relu),
    )
    expected = _integer_layer_reference(*(value for _, value in arguments))
    return Case(name, arguments, expected, HINT_LAYER)


def _far_from_ties(case: Case) -> bool:
    """Whether every acc * M0 / 2**n of the layer is far from a rounding tie."""
    values = dict(case.arguments)
    acc = (values["q_x"].long() - values["input_zero_point"]) @ values["q_w"].long().T
    remainder = ((acc + values["q_b"].long()) * values["multiplier"]) % (1 << values["shift"])
    return bool(((remainder.double() / 2.0 ** values["shift"].double() - 0.5).abs() > 1e-3).all())


def integer_layer_cases() -> list[Case]:
    """Random int8 layers (4 digits, 16 inputs, 5 outputs) whose outputs span the int8 range."""
    table = [  # name, seed, Z_x, Z_y, relu
        ("no ReLU, Z_y = 7", 11, -5, 7, False),
        ("fused ReLU with a negative Z_y = -20: the lower clamp is Z_y, not 0", 12, 3, -20, True),
        ("fused ReLU with a positive Z_y = 10", 13, -128, 10, True),
    ]
    return [
        _integer_layer_case(name, torch.Generator().manual_seed(seed), zero_x, zero_y, relu)
        for name, seed, zero_x, zero_y, relu in table
    ]


def draw_integer_layer_cases(generator: torch.Generator) -> list[Case]:
    """Random layers, zero-points and ReLUs, far from rounding ties."""
    cases = []
    for relu in (False, True, True):
        zero_x = int(torch.randint(-128, 128, (), generator=generator))
        zero_y = int(torch.randint(-40, 40, (), generator=generator))
        name = f"a random layer, Z_x = {zero_x}, Z_y = {zero_y}" + (", fused ReLU" if relu else "")
        case = _integer_layer_case(name, generator, zero_x, zero_y, relu)
        while not _far_from_ties(case):
            case = _integer_layer_case(name, generator, zero_x, zero_y, relu)
        cases.append(case)
    return cases


def _layer_mistakes(arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
    values = dict(arguments)
    zero_y, relu = values["output_zero_point"], values["relu"]
    lowest = zero_y if relu else INT8_MIN
    layer = _integer_layer_reference
    no_zero_y = {**values, "output_zero_point": 0}
    return {
        "clamp the ReLU at 0 instead of Z_y (real 0 is the integer Z_y)": layer(**values, lowest=0),
        "leave out the ReLU's lower clamp at Z_y": layer(**values, lowest=INT8_MIN),
        "forget to add Z_y after rounding": layer(**no_zero_y, lowest=lowest),
        "forget Z_y and clamp the ReLU at 0": layer(**no_zero_y, lowest=0),
        "forget the input zero-point (use q_x - Z_x)": layer(**{**values, "input_zero_point": 0}),
        "forget the bias q_b": layer(**{**values, "q_b": torch.zeros_like(values["q_b"])}),
        "shift without adding 2**(n-1) first (that truncates instead of rounding)": (
            _truncating_layer(values)
        ),
    }


def _truncating_layer(values: dict[str, Any]) -> torch.Tensor:
    # (acc M0) >> n without the rounding half: floor(acc M0 / 2^n).
    accumulator = (values["q_x"].long() - values["input_zero_point"]) @ values["q_w"].long().T
    accumulator = accumulator + values["q_b"].long()
    floored = (accumulator * values["multiplier"]) >> values["shift"]
    lowest = values["output_zero_point"] if values["relu"] else INT8_MIN
    return (floored + values["output_zero_point"]).clamp(lowest, INT8_MAX)


def check_integer_layer(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(q_x, q_w, q_b, input_zero_point, multiplier, shift,
    output_zero_point, relu) -> q_y``.

    ``q_x`` int8 ``[N, in]`` (activations, zero-point Z_x), ``q_w`` int8 ``[out, in]``
    (symmetric), ``q_b`` int32 ``[out]``, ``multiplier``/``shift`` the int64 ``(M0, n)`` per
    output row, ``output_zero_point`` Z_y, ``relu`` whether a ReLU is fused. ``q_y`` must be
    the int8 ``[N, out]`` of :func:`_integer_layer_reference`.
    """
    run_exercise(INTEGER_LAYER, student_fn)


INTEGER_LAYER = Exercise(
    id="integer_layer",
    notebook="04_int8_conversion",
    function="my_integer_layer",
    cases=integer_layer_cases,
    draw=draw_integer_layer_cases,
    compare=comparing_mistakes(
        torch.int8, "the layer's output is an int8 activation: return torch.int8", _layer_mistakes
    ),
    answers=(
        "ptqlib.int8_layers.Int8Linear",
        "ptqlib.integer_arithmetic.requantize",
        "ptqlib.integer_arithmetic.rounding_right_shift",
    ),
)
