"""Practice checkers for the parts of notebook 04's integer layer (no notebook asks for
them): the int32 bias and the zero-point correction.

The functions a student writes, with their arguments in this order:

- :func:`check_int32_bias`: ``(bias, input_scale, weight_scale, output_scale) -> q_b``, the
  int32 bias ``round(b / (S_x S_w))`` (one of the three scales is a distractor);
- :func:`check_zero_point_correction`: ``(weight, input_zero_point) -> correction``, the int32
  ``-Z_x sum_k q_w,k`` per output row, so that ``q_x @ q_w.T + correction`` equals
  ``(q_x - Z_x) @ q_w.T``.

When an answer is wrong, the checker also tries the classic mistakes (the wrong scale, the
wrong sign...) and names the one that reproduces it exactly. The references are written out
in plain tensor arithmetic; ``tests/test_checkers_int8_conversion.py`` proves them equal to
:mod:`ptqlib.int8_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import (
    Case,
    comparing_mistakes,
    distance_to_tie,
    draw_uniform,
)
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise

INT8_MIN, INT8_MAX = -128, 127


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the int32 bias ----------------------------------------------------------------------------


def _int32_bias_reference(
    bias: torch.Tensor, input_scale: float, weight_scale: torch.Tensor
) -> torch.Tensor:
    """``q_b = round(b / (S_x S_w))`` as int64 (float64 arithmetic): the bias in the units of
    the accumulator, scale S_x S_w (per output row), zero-point 0."""
    return torch.round(bias.double() / (input_scale * weight_scale.double())).to(torch.int64)


HINT_BIAS = (
    "the accumulator sum_k (q_x - Z_x) q_w is in units of S_x * S_w, so q_b = round(b / "
    "(S_x * S_w)) per output row, stored as torch.int32; S_y plays no part"
)


def _int32_bias_case(
    name: str,
    integers: list | torch.Tensor,
    input_scale: float,
    weight_scale: float | list | torch.Tensor,
    output_scale: float,
    fractions: torch.Tensor,
) -> Case:
    """A bias built from known integers plus ``fractions`` of a step (far from 0.5)."""
    weight_scale = torch.as_tensor(weight_scale, dtype=torch.float32)
    integers = torch.as_tensor(integers, dtype=torch.float64)
    steps = integers + fractions[: len(integers)].double()
    bias = (steps * input_scale * weight_scale.double()).float()
    expected = _int32_bias_reference(bias, input_scale, weight_scale)
    arguments = (
        ("bias", bias),
        ("input_scale", input_scale),
        ("weight_scale", weight_scale),
        ("output_scale", output_scale),
    )
    return Case(name, arguments, expected, HINT_BIAS)


def int32_bias_cases() -> list[Case]:
    """Biases built from known integers plus a fraction at least 0.05 away from a tie."""
    table = [  # name, integers of q_b, input scale, weight scales, output scale
        (
            "per-channel weight scales, a few hundred steps",
            [312, -95, 40, -407],
            0.0127,
            [0.0031, 0.0052, 0.0018, 0.0044],
            0.071,
        ),
        (
            "biases far beyond int8: the bias needs 32 bits",
            [21000, -130, 150000, -70000],
            0.02,
            [0.0011, 0.0025, 0.0007, 0.0016],
            0.09,
        ),
        ("a per-tensor weight scale (one number)", [7, -3, 0, 1234, -640], 0.5, 0.004, 0.25),
    ]
    fractions = torch.tensor([0.3, -0.7, 0.6, -0.2, 0.55])  # round() and trunc() differ
    return [_int32_bias_case(*row, fractions) for row in table]


def draw_int32_bias_cases(generator: torch.Generator) -> list[Case]:
    """Random integers (some beyond int8), random scales per channel or per tensor, and
    fractions of a step between 0.1 and 0.4 from an integer, of either sign."""
    cases = []
    for per_channel in (True, True, False):
        case = None
        while case is None or not _bias_far_from_ties(case):
            case = _draw_int32_bias_case(generator, per_channel)
        cases.append(case)
    return cases


def _draw_int32_bias_case(generator: torch.Generator, per_channel: bool) -> Case:
    channels = int(torch.randint(3, 9, (), generator=generator))
    integers = torch.randint(-200000, 200000, (channels,), generator=generator)
    integers[: channels // 2] //= 1000  # some small, some far beyond int8
    fractions = draw_uniform(generator, 0.1, 0.4, (channels,))
    fractions = torch.where(torch.rand(channels, generator=generator) < 0.5, fractions, -fractions)
    fractions += torch.where(torch.rand(channels, generator=generator) < 0.5, 0.0, 0.5)
    input_scale = round(float(draw_uniform(generator, 0.005, 0.1)), 5)
    weight_scale = draw_uniform(generator, 0.0005, 0.01, (channels,) if per_channel else ())
    output_scale = round(float(draw_uniform(generator, 0.01, 0.2)), 4)
    name = f"random biases, {'per-channel' if per_channel else 'per-tensor'} weight scales"
    return _int32_bias_case(name, integers, input_scale, weight_scale, output_scale, fractions)


def _bias_far_from_ties(case: Case) -> bool:
    """Whether every b / (S_x S_w) of the case, as float32 gives it, is far from a tie."""
    values = dict(case.arguments)
    steps = values["bias"].double() / (values["input_scale"] * values["weight_scale"].double())
    return bool((distance_to_tie(steps) > 0.04).all())


def _bias_mistakes(arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
    bias = arguments["bias"].double()
    input_scale, output_scale = arguments["input_scale"], arguments["output_scale"]
    weight_scale = arguments["weight_scale"].double()
    right = torch.round(bias / (input_scale * weight_scale))
    return {
        "divide by S_w alone (the bias scale is S_x * S_w)": torch.round(bias / weight_scale),
        "divide by S_x alone (the bias scale is S_x * S_w)": torch.round(bias / input_scale),
        "use the output scale S_y (the bias joins the accumulator, scale S_x * S_w)": (
            torch.round(bias / output_scale)
        ),
        "use S_w * S_y (the bias scale is S_x * S_w)": torch.round(
            bias / (weight_scale * output_scale)
        ),
        "clamp the bias to int8 (-128..127): it needs int32": right.clamp(INT8_MIN, INT8_MAX),
        "cast the bias to int8, which wraps around: it needs int32": right.long().to(torch.int8),
        "truncate (.to(int32) or int()) instead of rounding to nearest": torch.trunc(
            bias / (input_scale * weight_scale)
        ),
    }


def check_int32_bias(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(bias, input_scale, weight_scale, output_scale) -> q_b``.

    ``bias`` float32 ``[out]``; ``input_scale`` S_x a float; ``weight_scale`` S_w a float32
    tensor, one per output row (or a 0-d tensor); ``output_scale`` S_y a float. ``q_b`` must
    be ``round(b / (S_x S_w))`` as a torch.int32 tensor of the bias's shape.
    """
    run_exercise(INT32_BIAS, student_fn)


# --- the zero-point correction -----------------------------------------------------------------


def _zero_point_correction_reference(weight: torch.Tensor, input_zero_point: int) -> torch.Tensor:
    """``-Z_x sum_k q_w,k`` per output row (int64): ``sum_k (q_x,k - Z_x) q_w,k`` =
    ``sum_k q_x,k q_w,k - Z_x sum_k q_w,k``, so the second term is one constant per row."""
    return -input_zero_point * weight.to(torch.int64).sum(dim=1)


HINT_CORRECTION = (
    "sum_k (q_x,k - Z_x) q_w,k = sum_k q_x,k q_w,k - Z_x sum_k q_w,k: the correction is "
    "-Z_x times the sum of each output row (sum over dim=1 of the [out, in] weight), int32"
)


def _correction_case(name: str, weight: torch.Tensor, zero_point: int) -> Case:
    weight = weight.to(torch.int8)
    expected = _zero_point_correction_reference(weight, zero_point)
    arguments = (("weight", weight), ("input_zero_point", zero_point))
    return Case(name, arguments, expected, HINT_CORRECTION)


def zero_point_correction_cases() -> list[Case]:
    """int8 weights ``[out, in]`` and an input zero-point."""
    extremes = torch.full((3, 784), -128, dtype=torch.int8)
    extremes[1] = 127
    extremes[2, ::2] = 127
    table = [
        ("uint8 input, Z_x = 33", torch.randint(-127, 128, (4, 6), generator=_generator(1)), 33),
        (
            "int8 input, negative Z_x = -7",
            torch.randint(-127, 128, (5, 9), generator=_generator(2)),
            -7,
        ),
        (
            "Z_x = 0: no correction at all",
            torch.randint(-127, 128, (3, 5), generator=_generator(3)),
            0,
        ),
        ("784 inputs at the int8 extremes, Z_x = 255: sums need 32 bits", extremes, 255),
    ]
    return [_correction_case(*row) for row in table]


def draw_zero_point_correction_cases(generator: torch.Generator) -> list[Case]:
    """Random int8 weights of random shapes, zero-points of uint8 and int8 inputs."""
    cases = []
    for low, high in ((0, 256), (-128, 128), (0, 256)):
        shape = tuple(int(n) for n in torch.randint(2, 60, (2,), generator=generator))
        weight = torch.randint(-128, 128, shape, generator=generator)
        zero_point = int(torch.randint(low, high, (), generator=generator))
        cases.append(
            _correction_case(f"random weight {list(shape)}, Z_x = {zero_point}", weight, zero_point)
        )
    return cases


def _correction_mistakes(arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
    weight, zero_point = arguments["weight"].to(torch.int64), arguments["input_zero_point"]
    row_sums = weight.sum(dim=1)
    return {
        "use the wrong sign (+Z_x sum_k q_w,k; it is subtracted)": zero_point * row_sums,
        "forget the zero-point factor (sum_k q_w,k alone)": row_sums,
        "forget the correction (it is zero only when Z_x = 0)": torch.zeros_like(row_sums),
        "sum in int8, which wraps around: widen to int32 before summing": (
            -zero_point * weight.to(torch.int8).sum(dim=1, dtype=torch.int8).to(torch.int64)
        ),
    }


def check_zero_point_correction(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, input_zero_point) -> correction``.

    ``weight`` int8 ``[out, in]``, ``input_zero_point`` Z_x an int. ``correction`` must be the
    torch.int32 tensor ``[out]`` with ``q_x @ weight.T + correction == (q_x - Z_x) @ weight.T``.
    """
    run_exercise(ZERO_POINT_CORRECTION, student_fn)


INT32_BIAS = Exercise(
    id="int32_bias",
    notebook=None,  # no notebook asks for it: a checker to practise with
    function="my_int32_bias",
    cases=int32_bias_cases,
    draw=draw_int32_bias_cases,
    compare=comparing_mistakes(
        torch.int32,
        "the bias is added to the int32 accumulator: return torch.int32",
        _bias_mistakes,
    ),
    answers=("ptqlib.integer_arithmetic.quantize_bias",),
)
ZERO_POINT_CORRECTION = Exercise(
    id="zero_point_correction",
    notebook=None,  # no notebook asks for it: a checker to practise with
    function="my_zero_point_correction",
    cases=zero_point_correction_cases,
    draw=draw_zero_point_correction_cases,
    compare=comparing_mistakes(
        torch.int32,
        "the correction joins the int32 accumulator: return torch.int32",
        _correction_mistakes,
    ),
    answers=("ptqlib.integer_arithmetic.zero_point_correction",),
)
