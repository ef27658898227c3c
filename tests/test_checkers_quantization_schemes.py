"""Tests for ptqlib.classroom.checkers.quantization_schemes (notebook 02): symmetric and per-channel
qparams and SQNR. A correct implementation passes; each classic mistake fails, naming the
case and the hint that explains it; the untouched skeleton is reported, not raised."""

from __future__ import annotations

import math

import pytest
import torch

from ptqlib.classroom.checkers import (
    check_per_channel_qparams,
    check_sqnr_db,
    check_symmetric_qparams,
)
from ptqlib.classroom.checkers.quantization_schemes import (
    per_channel_qparams_cases,
    symmetric_qparams_cases,
)
from ptqlib.reference.torch_eager import deprecated_api, torch_observer

EPS = torch.finfo(torch.float32).eps

# --- Correct implementations, written the way a student would ------------------------


def good_symmetric(min_val, max_val, quant_min, quant_max):
    largest = max(abs(min_val), abs(max_val))
    return max(largest / ((quant_max - quant_min) / 2), EPS), 0


def good_per_channel(weight, axis):
    rows = weight.transpose(0, axis).reshape(weight.shape[axis], -1)
    scales = torch.clamp(rows.abs().amax(dim=1) / 127.5, min=EPS)
    return scales, torch.zeros(weight.shape[axis], dtype=torch.int64)


def good_sqnr(reference, approximation):
    noise = ((reference - approximation) ** 2).sum()
    return 10 * math.log10((reference**2).sum().item() / noise.item())


@pytest.mark.parametrize(
    ("checker", "student_fn"),
    [
        (check_symmetric_qparams, good_symmetric),
        (check_per_channel_qparams, good_per_channel),
        (check_sqnr_db, good_sqnr),
    ],
)
def test_a_correct_implementation_passes(checker, student_fn, capsys):
    checker(student_fn)
    assert capsys.readouterr().out.startswith(f"{checker.__name__}: PASS (")


@pytest.mark.parametrize(
    "checker", [check_symmetric_qparams, check_per_channel_qparams, check_sqnr_db]
)
def test_the_untouched_skeleton_is_not_attempted_and_does_not_raise(checker, capsys):
    def skeleton(*arguments):
        # YOUR CODE HERE
        raise NotImplementedError

    checker(skeleton)
    assert "NOT ATTEMPTED" in capsys.readouterr().out


def failure(checker, student_fn) -> str:
    with pytest.raises(AssertionError) as caught:
        checker(student_fn)
    return str(caught.value)


# --- Symmetric qparams ---------------------------------------------------------------


def test_symmetric_answers_agree_with_pytorch_symmetric_observer():
    """The full-range int8 cases are what torch.ao's MinMaxObserver computes."""
    for case in symmetric_qparams_cases():
        arguments = dict(case.arguments)
        if (arguments["quant_min"], arguments["quant_max"]) != (-128, 127):
            continue
        with deprecated_api():
            observer = torch_observer("MinMaxObserver", torch.int8, symmetric=True)
            observer(torch.tensor([arguments["min_val"], arguments["max_val"]]))
            scale, zero_point = observer.calculate_qparams()
        assert case.expected == (scale.item(), int(zero_point.item()))


def test_the_restricted_range_divides_by_127():
    restricted = [c for c in symmetric_qparams_cases() if dict(c.arguments)["quant_min"] == -127]
    assert len(restricted) == 1
    arguments = dict(restricted[0].arguments)
    largest = max(abs(arguments["min_val"]), abs(arguments["max_val"]))
    assert math.isclose(restricted[0].expected[0], largest / 127, rel_tol=1e-6)


def test_symmetric_dividing_by_255_fails_with_its_hint():
    def divides_by_255(min_val, max_val, quant_min, quant_max):
        return max(abs(min_val), abs(max_val)) / (quant_max - quant_min), 0

    message = failure(check_symmetric_qparams, divides_by_255)
    assert "case 1 of" in message and "not by quant_max - quant_min (255)" in message


def test_symmetric_ignoring_the_negative_side_fails_with_its_hint():
    def only_max(min_val, max_val, quant_min, quant_max):
        return max(max_val / ((quant_max - quant_min) / 2), EPS), 0

    message = failure(check_symmetric_qparams, only_max)
    assert "all negative" in message and "max(|min_val|, |max_val|)" in message


def test_symmetric_hard_coding_127_5_fails_on_the_restricted_range():
    def always_127_5(min_val, max_val, quant_min, quant_max):
        return max(max(abs(min_val), abs(max_val)) / 127.5, EPS), 0

    message = failure(check_symmetric_qparams, always_127_5)
    assert "-127..127" in message and "S = m / 127" in message


def test_symmetric_without_the_eps_floor_fails_on_an_all_zero_tensor():
    def no_floor(min_val, max_val, quant_min, quant_max):
        return max(abs(min_val), abs(max_val)) / ((quant_max - quant_min) / 2), 0

    message = failure(check_symmetric_qparams, no_floor)
    assert "all-zero" in message and "finfo" in message


def test_symmetric_affine_zero_point_fails():
    def affine_zero_point(min_val, max_val, quant_min, quant_max):
        scale, _ = good_symmetric(min_val, max_val, quant_min, quant_max)
        return scale, quant_min - round(min(min_val, 0.0) / scale)

    assert "zero_point is" in failure(check_symmetric_qparams, affine_zero_point)


# --- Per-channel qparams ---------------------------------------------------------------


def test_per_channel_answers_agree_with_pytorch_per_channel_observer():
    for case in per_channel_qparams_cases():
        arguments = dict(case.arguments)
        with deprecated_api():
            observer = torch_observer(
                "PerChannelMinMaxObserver", torch.int8, symmetric=True, ch_axis=arguments["axis"]
            )
            observer(arguments["weight"])
            scale, zero_point = observer.calculate_qparams()
        assert torch.equal(case.expected[0], scale)
        assert torch.equal(case.expected[1], zero_point.to(torch.int64))


def test_per_channel_reducing_over_the_wrong_axis_fails_even_when_the_shape_is_right():
    def wrong_axis(weight, axis):
        scales = torch.clamp(weight.abs().amax(dim=axis) / 127.5, min=EPS)
        return scales, torch.zeros_like(scales, dtype=torch.int64)

    message = failure(check_per_channel_qparams, wrong_axis)
    assert "reduce over every OTHER axis" in message


def test_per_channel_the_square_case_catches_the_wrong_axis_by_value():
    """A function that gets the shape right by luck (a square weight) still fails."""

    def wrong_axis_when_square(weight, axis):
        square = weight.dim() == 2 and weight.shape[0] == weight.shape[1]
        return good_per_channel(weight, 1 - axis if square else axis)

    message = failure(check_per_channel_qparams, wrong_axis_when_square)
    assert "square 4x4 weight" in message and "the scale of channel" in message


def test_per_channel_amax_instead_of_magnitude_fails_with_its_hint():
    def signed_max(weight, axis):
        rows = weight.transpose(0, axis).reshape(weight.shape[axis], -1)
        scales = torch.clamp(rows.amax(dim=1) / 127.5, min=EPS)
        return scales, torch.zeros(weight.shape[axis], dtype=torch.int64)

    message = failure(check_per_channel_qparams, signed_max)
    assert "only negative weights" in message and "largest MAGNITUDE" in message


def test_per_channel_reducing_one_other_axis_fails_on_a_3d_weight():
    def one_axis(weight, axis):
        scales = torch.clamp(weight.abs().amax(dim=1 - axis) / 127.5, min=EPS)
        return scales, torch.zeros_like(scales, dtype=torch.int64)

    message = failure(check_per_channel_qparams, one_axis)
    assert "3-d weight" in message and "all the other axes at once" in message


def test_per_channel_dividing_by_255_fails():
    def divides_by_255(weight, axis):
        scales, zero_points = good_per_channel(weight, axis)
        return scales * 127.5 / 255, zero_points

    assert "case 1 of" in failure(check_per_channel_qparams, divides_by_255)


def test_per_channel_one_scale_for_the_tensor_fails_on_the_shape():
    def per_tensor(weight, axis):
        return weight.abs().max() / 127.5, torch.tensor(0)

    assert "one entry per" in failure(check_per_channel_qparams, per_tensor)


# --- SQNR ------------------------------------------------------------------------------


def test_sqnr_twenty_log10_of_a_power_ratio_fails_with_its_hint():
    def twenty_log(reference, approximation):
        return 2 * good_sqnr(reference, approximation)

    message = failure(check_sqnr_db, twenty_log)
    assert "twice the right" in message and "20 * log10 is for amplitude ratios" in message


def test_sqnr_ratio_of_norms_with_ten_log10_fails_with_its_hint():
    def norms(reference, approximation):
        ratio = reference.norm() / (reference - approximation).norm()
        return 10 * math.log10(ratio.item())

    assert "half the right" in failure(check_sqnr_db, norms)


def test_sqnr_summing_errors_before_squaring_fails_with_its_hint():
    def sum_then_square(reference, approximation):
        noise = (reference - approximation).sum() ** 2
        return 10 * math.log10((reference**2).sum().item() / noise.item())

    message = failure(check_sqnr_db, sum_then_square)
    assert "case 1 of" in message and "square each error before summing" in message


def test_sqnr_mean_instead_of_sum_passes_because_the_counts_cancel(capsys):
    def with_means(reference, approximation):
        noise = ((reference - approximation) ** 2).mean()
        return 10 * torch.log10((reference**2).mean() / noise)

    check_sqnr_db(with_means)
    assert "PASS" in capsys.readouterr().out
