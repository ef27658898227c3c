"""Tests for ptqlib.classroom.checkers.accumulator_terms (notebook 04, exercises 2 and 3) and
ptqlib.classroom.checkers.l2_search (notebook 03, exercise 2): right answers pass the known
cases and fresh draws, the classic mistakes fail and are named, untouched skeletons are 'not
attempted', and the references agree with ptqlib's own code."""

from __future__ import annotations

import math

import pytest
import torch

from ptqlib.classroom.checkers import (
    check_affine_accumulator,
    check_folded_constant,
    check_l2_error,
)
from ptqlib.classroom.checkers.accumulator_terms import (
    AFFINE_ACCUMULATOR,
    FOLDED_CONSTANT,
)
from ptqlib.classroom.checkers.core import WrongAnswer, call_case
from ptqlib.classroom.checkers.l2_search import L2_ERROR, l2_error_cases
from ptqlib.observers.l2_search import quantization_error

# --- Student answers, right and wrong ----------------------------------------------------------


def good_affine(products, input_sums, q_w, zero_x, zero_w):
    depth = q_w.shape[1]
    weight_sums = q_w.to(torch.int64).sum(dim=1)
    return (
        products.to(torch.int64)
        - zero_w * input_sums.to(torch.int64)[:, None]
        - zero_x * weight_sums[None, :]
        + depth * zero_x * zero_w
    )


def affine_without_constant(products, input_sums, q_w, zero_x, zero_w):
    weight_sums = q_w.to(torch.int64).sum(dim=1)
    return products.long() - zero_w * input_sums.long()[:, None] - zero_x * weight_sums


def good_folded(bias, correction, multiplier, shift, zero_y):
    return (bias.long() + correction.long()) * multiplier + (1 << (shift - 1)) + (zero_y << shift)


def folded_without_half(bias, correction, multiplier, shift, zero_y):
    return (bias.long() + correction.long()) * multiplier + (zero_y << shift)


def folded_with_unshifted_zero_point(bias, correction, multiplier, shift, zero_y):
    return (bias.long() + correction.long()) * multiplier + (1 << (shift - 1)) + zero_y


def good_l2_error(counts, bin_width, first_bin, last_bin, levels):
    # An independent formulation: the error of each bin is the integral over the bin of the
    # squared distance to the centre of the cell each point falls in, by cells.
    start, cell = first_bin * bin_width, (last_bin - first_bin + 1) * bin_width / levels
    total = 0.0
    for index, count in enumerate(counts.tolist()):
        if count:
            for which in range(levels):
                low = -math.inf if which == 0 else start + which * cell
                high = math.inf if which == levels - 1 else start + (which + 1) * cell
                begin = max(index * bin_width, low)
                end = min((index + 1) * bin_width, high)
                if begin < end:
                    centre = start + (which + 0.5) * cell
                    total += count / bin_width * ((end - centre) ** 3 - (begin - centre) ** 3) / 3
    return total


def l2_error_by_sampling(counts, bin_width, first_bin, last_bin, levels):
    # Notebook 03's brute force: each bin's count spread over 1,000 points.
    start, cell = first_bin * bin_width, (last_bin - first_bin + 1) * bin_width / levels
    error = 0.0
    for index, count in enumerate(counts.tolist()):
        for k in range(1000):
            x = (index + (k + 0.5) / 1000) * bin_width
            which = min(max(math.floor((x - start) / cell), 0), levels - 1)
            error += count / 1000 * (x - (start + (which + 0.5) * cell)) ** 2
    return error


def l2_error_without_clipping(counts, bin_width, first_bin, last_bin, levels):
    # Leaves out the values outside the range.
    kept = torch.zeros_like(counts)
    kept[first_bin : last_bin + 1] = counts[first_bin : last_bin + 1]
    return good_l2_error(kept, bin_width, first_bin, last_bin, levels)


def not_attempted(*arguments):
    raise NotImplementedError


# --- Right answers pass, on the known cases and on fresh draws ----------------------------------


@pytest.mark.parametrize(
    ("checker", "student_fn"),
    [
        (check_affine_accumulator, good_affine),
        (check_folded_constant, good_folded),
        (check_l2_error, good_l2_error),
    ],
)
def test_a_right_answer_passes(capsys, checker, student_fn):
    checker(student_fn)
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("exercise", "student_fn"),
    [(AFFINE_ACCUMULATOR, good_affine), (FOLDED_CONSTANT, good_folded), (L2_ERROR, good_l2_error)],
)
def test_a_right_answer_passes_fresh_draws(exercise, student_fn):
    for seed in range(5):
        for case in exercise.draw(torch.Generator().manual_seed(seed)):
            answer = call_case(student_fn, [value for _, value in case.arguments])
            exercise.compare(case, answer)


def test_the_l2_reference_is_torch_aos_error_and_the_notebooks_brute_force():
    for case in l2_error_cases():
        values = [value for _, value in case.arguments]
        assert quantization_error(*values) == pytest.approx(case.expected, rel=1e-5)
        assert l2_error_by_sampling(*values) == pytest.approx(case.expected, rel=1e-4)


# --- Classic mistakes fail, and the message names them -------------------------------------------


def failure_message(checker, student_fn) -> str:
    with pytest.raises(AssertionError) as caught:
        checker(student_fn)
    return str(caught.value)


def test_the_affine_mistakes_are_named():
    message = failure_message(check_affine_accumulator, affine_without_constant)
    assert "leave out the constant K * Z_x * Z_w" in message


@pytest.mark.parametrize(
    ("wrong", "named"),
    [
        (folded_without_half, "leave out the rounding half"),
        (folded_with_unshifted_zero_point, "without shifting it left by n"),
    ],
)
def test_the_folding_mistakes_are_named(wrong, named):
    assert named in failure_message(check_folded_constant, wrong)


def test_an_int32_constant_is_refused():
    case = FOLDED_CONSTANT.cases()[0]
    answer = call_case(good_folded, [value for _, value in case.arguments])
    with pytest.raises(WrongAnswer, match="C needs about 60 bits"):
        FOLDED_CONSTANT.compare(case, answer.to(torch.int32))


def test_an_l2_error_that_forgets_the_clipped_values_fails_with_the_clipping_hint():
    message = failure_message(check_l2_error, l2_error_without_clipping)
    assert "values below first_bin belong to the first cell" in message


@pytest.mark.parametrize(
    "checker", [check_affine_accumulator, check_folded_constant, check_l2_error]
)
def test_an_untouched_skeleton_is_not_attempted(capsys, checker):
    checker(not_attempted)
    assert "NOT ATTEMPTED" in capsys.readouterr().out
