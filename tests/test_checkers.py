"""Tests for ptqlib.classroom.checkers: right answers pass, typical student mistakes fail
clearly."""

from __future__ import annotations

import math

import pytest
import torch

from ptqlib.classroom import checkers
from ptqlib.classroom.checkers import (
    check_dequantize,
    check_fixed_point_multiplier,
    check_qparams,
    check_quantize,
    check_requantize,
)
from ptqlib.reference.torch_eager import deprecated_api, torch_observer, torch_quantize

# --- Correct student implementations, written the way a student would ----------------


def good_qparams(min_val, max_val, quant_min, quant_max):
    min_val, max_val = min(min_val, 0.0), max(max_val, 0.0)
    scale = max((max_val - min_val) / (quant_max - quant_min), torch.finfo(torch.float32).eps)
    zero_point = quant_min - round(min_val / scale)
    return scale, min(max(zero_point, quant_min), quant_max)


def good_quantize(x, scale, zero_point, quant_min, quant_max):
    return (torch.round(x / scale) + zero_point).clamp(quant_min, quant_max).to(torch.int64)


def good_dequantize(q, scale, zero_point):
    return (q.to(torch.int32) - zero_point).float() * scale


def good_requantize(acc, multiplier, zero_point, quant_min, quant_max):
    scaled = torch.round(acc.to(torch.float64) * multiplier).to(torch.int64)
    return (scaled + zero_point).clamp(quant_min, quant_max)


def good_fixed_point_multiplier(multiplier):
    shift = 0
    while multiplier * 2**shift < 2**30:
        shift += 1
    m0 = round(multiplier * 2**shift)
    return (2**30, shift - 1) if m0 == 2**31 else (m0, shift)  # rounded up: renormalise


@pytest.mark.parametrize(
    ("checker", "student_fn"),
    [
        (check_qparams, good_qparams),
        (check_quantize, good_quantize),
        (check_dequantize, good_dequantize),
        (check_requantize, good_requantize),
        (check_fixed_point_multiplier, good_fixed_point_multiplier),
    ],
)
def test_a_correct_implementation_passes(checker, student_fn, capsys):
    checker(student_fn)
    assert capsys.readouterr().out.startswith(f"{checker.__name__}: PASS (")


def test_other_correct_variants_pass(capsys):
    """Equivalent formulas must pass too: float32 math, fixed point, torch tensors as qparams."""

    def qparams_in_torch(min_val, max_val, quant_min, quant_max):
        low, high = torch.tensor(min(min_val, 0.0)), torch.tensor(max(max_val, 0.0))
        scale = torch.clamp((high - low) / (quant_max - quant_min), min=1.1920928955078125e-07)
        return scale, (quant_min - torch.round(low / scale)).to(torch.int64)

    def dequantize_expanded(q, scale, zero_point):
        return q.float() * scale - zero_point * scale

    def requantize_float32(acc, multiplier, zero_point, quant_min, quant_max):
        scaled = torch.round(acc.float() * multiplier)
        return (scaled + zero_point).clamp(quant_min, quant_max).to(torch.int32)

    def requantize_fixed_point(acc, multiplier, zero_point, quant_min, quant_max):
        # Integer-only: (acc * m0) >> shift with round-half-up, as gemmlowp-style kernels do.
        m0, shift = good_fixed_point_multiplier(multiplier)
        product = acc.to(torch.int64) * m0
        scaled = (product + (1 << (shift - 1))) >> shift
        return (scaled + zero_point).clamp(quant_min, quant_max)

    check_qparams(qparams_in_torch)
    check_dequantize(dequantize_expanded)
    check_requantize(requantize_float32)
    check_requantize(requantize_fixed_point)
    assert capsys.readouterr().out.count("PASS") == 4


def test_ptqlib_convert_integer_requantization_passes(capsys):
    """The library's integer-only path agrees with the checkers' exact answers."""
    from ptqlib import integer_arithmetic

    def fixed_point(multiplier):
        m0, shift = integer_arithmetic.fixed_point_multiplier(multiplier)
        return int(m0), int(shift)

    def requantize(acc, multiplier, zero_point, quant_min, quant_max):
        m0, shift = integer_arithmetic.fixed_point_multiplier(multiplier)
        return integer_arithmetic.requantize(acc, m0, shift, zero_point, quant_min, quant_max)

    check_fixed_point_multiplier(fixed_point)
    check_requantize(requantize)
    assert capsys.readouterr().out.count("PASS") == 2


# --- The known answers are right ----------------------------------------------------


def test_qparams_answers_agree_with_pytorch_minmax_observer():
    for case in checkers.qparams_cases():
        args = dict(case.arguments)
        dtype = torch.uint8 if args["quant_min"] >= 0 else torch.int8
        observer = torch_observer(
            "MinMaxObserver", dtype, quant_min=args["quant_min"], quant_max=args["quant_max"]
        )
        with deprecated_api():
            observer(torch.tensor([args["min_val"], args["max_val"]]))
            scale, zero_point = observer.calculate_qparams()
        assert case.expected == (scale.item(), int(zero_point.item())), case.name


def test_full_range_quantize_answers_agree_with_pytorch():
    checked = 0
    for case in checkers.quantize_cases():
        args = dict(case.arguments)
        for dtype in (torch.uint8, torch.int8):
            info = torch.iinfo(dtype)
            if (args["quant_min"], args["quant_max"]) == (info.min, info.max):
                q = torch_quantize(
                    args["x"], torch.tensor(args["scale"]), torch.tensor(args["zero_point"]), dtype
                )
                assert torch.equal(q.to(torch.int64), case.expected), case.name
                checked += 1
    assert checked >= 3


def test_fixed_point_reference_reconstructs_the_multiplier():
    for case in checkers.fixed_point_cases():
        multiplier = dict(case.arguments)["multiplier"]
        m0, shift = case.expected
        assert 2**30 <= m0 < 2**31
        # m0 has 31 significant bits: the relative error is at most 2**-31.
        assert abs(m0 * 2.0**-shift - multiplier) <= multiplier * 2.0**-30


def distance_to_tie(values: torch.Tensor) -> float:
    """How far the values are from the nearest x.5 (where rounding conventions differ)."""
    fraction = values.double().abs() % 1.0
    return float((fraction - 0.5).abs().min())


def test_no_case_is_near_a_rounding_tie():
    """So round-half-even, round-half-up and fixed point all give the same answers."""
    for case in checkers.quantize_cases():
        args = dict(case.arguments)
        x, scale = args["x"], args["scale"]
        assert distance_to_tie(x.double() / scale) > 1e-3, case.name
        assert distance_to_tie(x * torch.tensor(1.0 / scale, dtype=torch.float32)) > 1e-3
    for case in checkers.qparams_cases():
        args = dict(case.arguments)
        scale = case.expected[0]
        assert distance_to_tie(torch.tensor(min(args["min_val"], 0.0) / scale)) > 1e-3, case.name
    for case in checkers.requantize_cases():
        args = dict(case.arguments)
        assert distance_to_tie(args["acc"].double() * args["multiplier"]) > 1e-3, case.name
        assert distance_to_tie(args["acc"].float() * args["multiplier"]) > 1e-3, case.name


# --- Typical mistakes fail, naming the case and the problem --------------------------


def failure_message(checker, student_fn) -> str:
    with pytest.raises(AssertionError) as caught:
        checker(student_fn)
    return str(caught.value)


def test_qparams_without_widening_the_range_to_include_zero():
    def no_widening(min_val, max_val, quant_min, quant_max):
        scale = (max_val - min_val) / (quant_max - quant_min)
        return scale, quant_min - round(min_val / scale)

    message = failure_message(check_qparams, no_widening)
    assert "case 3 of 8 failed: all positive (after a ReLU)" in message
    assert "called with: min_val=0.5, max_val=6.0, quant_min=0, quant_max=255" in message
    assert "expected:    (0.02352941, 0)" in message
    assert "widen the range to include 0" in message


def test_qparams_with_floor_instead_of_round():
    def with_floor(min_val, max_val, quant_min, quant_max):
        scale, _ = good_qparams(min_val, max_val, quant_min, quant_max)
        return scale, quant_min - math.floor(min(min_val, 0.0) / scale)

    message = failure_message(check_qparams, with_floor)
    assert "case 2 of 8 failed: a range around 0, int8" in message
    assert "zero_point is 45, expected 44" in message
    assert "rounded to the nearest int" in message


def test_qparams_dividing_by_a_zero_scale():
    def no_eps(min_val, max_val, quant_min, quant_max):
        min_val, max_val = min(min_val, 0.0), max(max_val, 0.0)
        scale = (max_val - min_val) / (quant_max - quant_min)
        return scale, quant_min - round(min_val / scale)

    message = failure_message(check_qparams, no_eps)
    assert "case 8 of 8 failed: an all-zero tensor" in message
    assert "your function raised ZeroDivisionError" in message
    assert "torch.finfo(torch.float32).eps" in message


def test_qparams_returning_the_wrong_types():
    def float_zero_point(min_val, max_val, quant_min, quant_max):
        scale, zero_point = good_qparams(min_val, max_val, quant_min, quant_max)
        return scale, float(zero_point)

    def only_the_scale(min_val, max_val, quant_min, quant_max):
        return good_qparams(min_val, max_val, quant_min, quant_max)[0]

    def vector_scale(min_val, max_val, quant_min, quant_max):
        scale, zero_point = good_qparams(min_val, max_val, quant_min, quant_max)
        return torch.tensor([scale, scale]), zero_point

    assert "zero_point should be an integer (int), got 64.0 of type float" in failure_message(
        check_qparams, float_zero_point
    )
    assert "should return a pair (scale, zero_point), got 0.0156" in failure_message(
        check_qparams, only_the_scale
    )
    assert "scale should be one number, got a tensor (2,)" in failure_message(
        check_qparams, vector_scale
    )


def test_quantize_with_floor_instead_of_round():
    def with_floor(x, scale, zero_point, quant_min, quant_max):
        return (torch.floor(x / scale) + zero_point).clamp(quant_min, quant_max).long()

    message = failure_message(check_quantize, with_floor)
    assert "case 1 of 5 failed: values inside the range, uint8" in message
    assert "first difference at index [0, 0]: expected 116, got 115" in message
    assert "round to the nearest integer" in message


def test_quantize_without_clamping():
    def no_clamp(x, scale, zero_point, quant_min, quant_max):
        return (torch.round(x / scale) + zero_point).long()

    message = failure_message(check_quantize, no_clamp)
    assert "case 3 of 5 failed: values beyond the range are clamped" in message
    assert "expected 0, got -50" in message
    assert "clamp the result to [quant_min, quant_max]" in message


def test_quantize_returning_the_wrong_kind_of_result():
    def float_result(x, scale, zero_point, quant_min, quant_max):
        return good_quantize(x, scale, zero_point, quant_min, quant_max).float()

    def flattened(x, scale, zero_point, quant_min, quant_max):
        return good_quantize(x, scale, zero_point, quant_min, quant_max).flatten()

    def a_list(x, scale, zero_point, quant_min, quant_max):
        return good_quantize(x, scale, zero_point, quant_min, quant_max).tolist()

    assert "expected an integer tensor, got dtype torch.float32" in failure_message(
        check_quantize, float_result
    )
    assert "the shape is (6,), expected (2, 3)" in failure_message(check_quantize, flattened)
    assert "should return a torch.Tensor, got list" in failure_message(check_quantize, a_list)


def test_dequantize_in_uint8_arithmetic_wraps_around():
    def narrow(q, scale, zero_point):
        return (q - zero_point).float() * scale  # uint8 - 128 wraps around

    message = failure_message(check_dequantize, narrow)
    assert "case 1 of 3 failed: uint8, zero-point 128" in message
    assert "expected -6.4" in message and "got 6.4" in message
    assert "arithmetic in uint8/int8 wraps around" in message


def test_dequantize_forgetting_the_zero_point():
    def no_zero_point(q, scale, zero_point):
        return q.float() * scale

    assert "case 1 of 3 failed" in failure_message(check_dequantize, no_zero_point)


def test_requantize_truncating_or_without_clamp():
    def truncating(acc, multiplier, zero_point, quant_min, quant_max):
        return ((acc * multiplier).long() + zero_point).clamp(quant_min, quant_max)

    def no_clamp(acc, multiplier, zero_point, quant_min, quant_max):
        return torch.round(acc.double() * multiplier).long() + zero_point

    message = failure_message(check_requantize, truncating)
    assert "case 1 of 5 failed: round to nearest, not truncate" in message
    assert "first difference at index [0]: expected 2, got 1" in message
    assert "int() and floor() are wrong" in message
    message = failure_message(check_requantize, no_clamp)
    assert "case 2 of 5 failed: typical accumulators, uint8 output" in message
    assert "first difference at index [5]: expected 255, got 258" in message


def test_fixed_point_multiplier_with_m0_out_of_range():
    def fixed_shift(multiplier):
        return round(multiplier * 2**31), 31

    message = failure_message(check_fixed_point_multiplier, fixed_shift)
    assert "case 3 of 8 failed: a typical M = 0.0042" in message
    assert "m0 = 9019431 is not in [2**30, 2**31)" in message


def test_an_exception_inside_the_student_function_is_reported_with_the_case():
    def wrong_signature(x, scale):
        return x

    message = failure_message(check_quantize, wrong_signature)
    assert "case 1 of 5 failed" in message
    assert "your function raised TypeError" in message
    assert "called with: x=tensor([[-1.23, -0.04, 0.0], [0.26, 3.37, 12.71]]" in message


def test_a_non_function_is_a_type_error():
    with pytest.raises(TypeError, match="check_qparams: expected your function, got 3"):
        check_qparams(3)


def test_the_message_shows_the_inputs_even_if_the_student_changed_them_in_place():
    def in_place_and_wrong(x, scale, zero_point, quant_min, quant_max):
        x.zero_()
        return x.long()

    message = failure_message(check_quantize, in_place_and_wrong)
    assert "called with: x=tensor([[-1.23, -0.04, 0.0]," in message


# --- The package: one module per notebook, the shared machinery reusable -------------


def test_checkers_live_in_the_module_of_their_notebook():
    from ptqlib.classroom.checkers import int8_conversion, quantization_math

    for checker in (check_qparams, check_quantize, check_dequantize):
        assert checker.__module__ == quantization_math.__name__
    for checker in (check_requantize, check_fixed_point_multiplier):
        assert checker.__module__ == int8_conversion.__name__


def test_a_new_checker_can_be_built_from_the_core(capsys):
    from ptqlib.classroom.checkers.core import Case, compare_integers, run_cases

    x = torch.tensor([-2, 0, 3])
    cases = [Case("negative and positive integers", (("x", x),), 2 * x, "multiply by 2")]
    run_cases("check_double", lambda values: values * 2, cases, compare_integers)
    assert capsys.readouterr().out == "check_double: PASS (1 cases)\n"
    with pytest.raises(AssertionError, match=r"(?s)expected -4, got 0.*hint:        multiply"):
        run_cases("check_double", lambda values: values + 2, cases, compare_integers)


def test_an_untouched_skeleton_is_not_attempted_not_failed(capsys):
    def skeleton(min_val, max_val, quant_min, quant_max):
        # YOUR CODE HERE
        raise NotImplementedError

    checkers.check_qparams(skeleton)
    assert "NOT ATTEMPTED" in capsys.readouterr().out
