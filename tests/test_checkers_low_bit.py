"""The notebook-06 checkers accept right answers, reject wrong ones, and wait for attempts."""

import pytest
import torch

from ptqlib.checkers.low_bit import check_bias_shift, check_pack_two_bit


def pack_two_bit(values):
    padded = torch.cat([values, values.new_zeros((-len(values)) % 4)]).reshape(-1, 4)
    return (padded * torch.tensor([1, 4, 16, 64])).sum(dim=1).to(torch.uint8)


def bias_shift(weight, quantized_weight, inputs):
    return (inputs @ quantized_weight.T - inputs @ weight.T).mean(dim=0)


@pytest.mark.parametrize(
    "checker, solution",
    [
        (check_pack_two_bit, pack_two_bit),
        (check_bias_shift, bias_shift),
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
    ],
)
def test_wrong_answers_fail_with_the_case(checker, wrong, message):
    with pytest.raises(AssertionError, match=message):
        checker(wrong)


def test_an_unattempted_exercise_is_not_a_failure(capsys):
    def skeleton(*args):
        raise NotImplementedError

    for checker in (check_pack_two_bit, check_bias_shift):
        checker(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == 2
