"""Checkers for notebook 04's integer layer: the int32 bias, the zero-point correction and a
whole integer Linear (+ ReLU), int8 in, int8 out.

The functions a student writes, with their arguments in this order:

- :func:`check_int32_bias`: ``(bias, input_scale, weight_scale, output_scale) -> q_b``, the
  int32 bias ``round(b / (S_x S_w))`` (one of the three scales is a distractor);
- :func:`check_zero_point_correction`: ``(weight, input_zero_point) -> correction``, the int32
  ``-Z_x sum_k q_w,k`` per output row, so that ``q_x @ q_w.T + correction`` equals
  ``(q_x - Z_x) @ q_w.T``;
- :func:`check_integer_layer`: ``(q_x, q_w, q_b, input_zero_point, multiplier, shift,
  output_zero_point, relu) -> q_y``, the whole layer in integers.

When an answer is wrong, the checker also tries the classic mistakes (the wrong scale, the
wrong sign, clamping the ReLU at 0 instead of Z_y...) and, if one of them reproduces the
answer exactly, names it. The references are written out here in plain tensor arithmetic;
``tests/test_checkers_int8_conversion.py`` proves they equal :mod:`ptqlib.int8_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, compare_integers, run_cases
from ptqlib.classroom.checkers.int8_conversion import _fixed_point_multiplier_reference

INT8_MIN, INT8_MAX = -128, 127

# --- shared: an exact integer answer of a given dtype, and naming the mistake ------------------


def _compare_with_mistakes(
    dtype: torch.dtype, why: str, mistakes: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
) -> Callable[[Case, Any], None]:
    """A comparison: ``got`` must equal ``case.expected`` and have ``dtype`` (``why`` says
    why). If it is wrong and equals one of ``mistakes(arguments)``, the message names it."""

    def compare(case: Case, got: Any) -> None:
        try:
            compare_integers(case, got)
        except WrongAnswer as wrong:
            if not isinstance(got, torch.Tensor) or got.shape != case.expected.shape:
                raise
            got_values = got.to(torch.int64)
            for mistake, answer in mistakes(dict(case.arguments)).items():
                answer = answer.to(torch.int64)
                if answer.shape != got_values.shape or torch.equal(answer, case.expected):
                    continue
                if torch.equal(got_values, answer):
                    message = f"{wrong}; your answer is exactly what you get if you {mistake}"
                    raise WrongAnswer(message) from None
            raise
        if got.dtype != dtype:
            raise WrongAnswer(f"the values are right but the dtype is {got.dtype}: {why}")

    return compare


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the int32 bias ----------------------------------------------------------------------------


def _int32_bias_reference(
    bias: torch.Tensor, input_scale: float, weight_scale: torch.Tensor
) -> torch.Tensor:
    """``q_b = round(b / (S_x S_w))`` as int64 (float64 arithmetic): the bias in the units of
    the accumulator, scale S_x S_w (per output row), zero-point 0."""
    return torch.round(bias.double() / (input_scale * weight_scale.double())).to(torch.int64)


def int32_bias_cases() -> list[Case]:
    """Biases built from known integers plus a fraction at least 0.05 away from a tie."""
    hint = (
        "the accumulator sum_k (q_x - Z_x) q_w is in units of S_x * S_w, so q_b = round(b / "
        "(S_x * S_w)) per output row, stored as torch.int32; S_y plays no part"
    )
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
    cases = []
    for name, integers, input_scale, weight_scale, output_scale in table:
        weight_scale = torch.tensor(weight_scale, dtype=torch.float32)
        integers = torch.tensor(integers, dtype=torch.float64)
        steps = integers + fractions[: len(integers)].double()
        bias = (steps * input_scale * weight_scale.double()).float()
        expected = _int32_bias_reference(bias, input_scale, weight_scale)
        arguments = (
            ("bias", bias),
            ("input_scale", input_scale),
            ("weight_scale", weight_scale),
            ("output_scale", output_scale),
        )
        cases.append(Case(name, arguments, expected, hint))
    return cases


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
    why = "the bias is added to the int32 accumulator: return torch.int32"
    compare = _compare_with_mistakes(torch.int32, why, _bias_mistakes)
    run_cases("check_int32_bias", student_fn, int32_bias_cases(), compare)


# --- the zero-point correction -----------------------------------------------------------------


def _zero_point_correction_reference(weight: torch.Tensor, input_zero_point: int) -> torch.Tensor:
    """``-Z_x sum_k q_w,k`` per output row (int64): ``sum_k (q_x,k - Z_x) q_w,k`` =
    ``sum_k q_x,k q_w,k - Z_x sum_k q_w,k``, so the second term is one constant per row."""
    return -input_zero_point * weight.to(torch.int64).sum(dim=1)


def zero_point_correction_cases() -> list[Case]:
    """int8 weights ``[out, in]`` and an input zero-point."""
    hint = (
        "sum_k (q_x,k - Z_x) q_w,k = sum_k q_x,k q_w,k - Z_x sum_k q_w,k: the correction is "
        "-Z_x times the sum of each output row (sum over dim=1 of the [out, in] weight), int32"
    )
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
    cases = []
    for name, weight, zero_point in table:
        weight = weight.to(torch.int8)
        expected = _zero_point_correction_reference(weight, zero_point)
        arguments = (("weight", weight), ("input_zero_point", zero_point))
        cases.append(Case(name, arguments, expected, hint))
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
    why = "the correction joins the int32 accumulator: return torch.int32"
    compare = _compare_with_mistakes(torch.int32, why, _correction_mistakes)
    run_cases("check_zero_point_correction", student_fn, zero_point_correction_cases(), compare)


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

    ``lowest`` overrides ``lo`` (used only to build the classic mistakes)."""
    accumulator = (q_x.to(torch.int64) - input_zero_point) @ q_w.to(torch.int64).T + q_b.to(
        torch.int64
    )
    rounded = (accumulator * multiplier + (1 << (shift - 1))) >> shift
    if lowest is None:
        lowest = output_zero_point if relu else INT8_MIN
    return (rounded + output_zero_point).clamp(max(lowest, INT8_MIN), INT8_MAX)


def integer_layer_cases() -> list[Case]:
    """Random int8 layers (4 digits, 16 inputs, 5 outputs) whose outputs span the int8 range."""
    hint = (
        "acc = (q_x - Z_x) @ q_w.T + q_b in int32/int64; q_y = ((acc * M0 + 2**(n-1)) >> n) + Z_y; "
        "clamp to [Z_y, 127] with a ReLU (real 0 is the integer Z_y), else to [-128, 127]; int8"
    )
    table = [  # name, seed, Z_x, Z_y, relu
        ("no ReLU, Z_y = 7", 11, -5, 7, False),
        ("fused ReLU with a negative Z_y = -20: the lower clamp is Z_y, not 0", 12, 3, -20, True),
        ("fused ReLU with a positive Z_y = 10", 13, -128, 10, True),
    ]
    cases = []
    for name, seed, input_zero_point, output_zero_point, relu in table:
        generator = _generator(seed)
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
        cases.append(Case(name, arguments, expected, hint))
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
    why = "the layer's output is an int8 activation: return torch.int8"
    compare = _compare_with_mistakes(torch.int8, why, _layer_mistakes)
    run_cases("check_integer_layer", student_fn, integer_layer_cases(), compare)
