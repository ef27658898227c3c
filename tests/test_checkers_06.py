"""The notebook-06 checkers accept right answers, reject wrong ones, and wait for attempts."""

import math

import pytest
import torch

from ptqlib.checkers_06 import check_bias_shift, check_mcnemar_p_value, check_pack_two_bit


def pack_two_bit(values):
    padded = torch.cat([values, values.new_zeros((-len(values)) % 4)]).reshape(-1, 4)
    return (padded * torch.tensor([1, 4, 16, 64])).sum(dim=1).to(torch.uint8)


def bias_shift(weight, quantized_weight, inputs):
    return (inputs @ quantized_weight.T - inputs @ weight.T).mean(dim=0)


def mcnemar_p_value(gained, lost):
    flips = gained + lost
    tail = sum(math.comb(flips, k) for k in range(min(gained, lost) + 1)) / 2**flips
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(
    "checker, solution",
    [
        (check_pack_two_bit, pack_two_bit),
        (check_bias_shift, bias_shift),
        (check_mcnemar_p_value, mcnemar_p_value),
    ],
)
def test_right_answers_pass(checker, solution, capsys):
    checker(solution)
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize(
    "checker, wrong, message",
    [
        # The most significant bits first: the wrong order within the byte.
        (
            check_pack_two_bit,
            lambda v: pack_two_bit(v.flip(0)).flip(0) if len(v) % 4 == 0 else pack_two_bit(v) + 1,
            "case 1 of 4 failed",
        ),
        (check_bias_shift, lambda w, q, x: (x @ (w - q).T).mean(0), "case 2 of 3 failed"),
        (check_mcnemar_p_value, lambda g, lost: 0.05, "case 1 of 5 failed"),
    ],
)
def test_wrong_answers_fail_with_the_case(checker, wrong, message):
    with pytest.raises(AssertionError, match=message):
        checker(wrong)


def test_an_unattempted_exercise_is_not_a_failure(capsys):
    def skeleton(*args):
        raise NotImplementedError

    for checker in (check_pack_two_bit, check_bias_shift, check_mcnemar_p_value):
        checker(skeleton)
    assert capsys.readouterr().out.count("not attempted yet") == 3
