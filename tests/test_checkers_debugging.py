"""Notebook 09's checkers accept right answers, reject the usual mistakes, and report a
skeleton that still raises NotImplementedError as not attempted."""

import math

import pytest
import torch

from ptqlib.classroom.checkers.debugging import (
    check_cle_scales,
    check_steps_since_dead,
    check_zeroed_filters,
    zeroed_cases,
)


def right_scales(weight1, weight2, depthwise):
    r1 = weight1.abs().flatten(1).amax(dim=1)
    r2 = (weight2 if depthwise else weight2.transpose(0, 1)).abs().flatten(1).amax(dim=1)
    return torch.sqrt(r1 * r2) / r2


def scales_from_the_wrong_axis(weight1, weight2, depthwise):
    r1 = weight1.abs().flatten(1).amax(dim=1)
    r2 = weight2.abs().flatten(1).amax(dim=1)  # output channels of a plain conv: wrong
    return torch.sqrt(r1 * r2[: len(r1)]) / r2[: len(r1)]


def right_zeroed(weight, gamma, running_var, eps):
    folded = weight * (gamma / torch.sqrt(running_var + eps)).reshape(-1, 1, 1, 1)
    step = folded.abs().max() / 127.5
    return int((torch.round(folded / step) == 0).flatten(1).all(dim=1).sum())


def zeroed_without_absolute_value(weight, gamma, running_var, eps):
    folded = weight * (gamma / torch.sqrt(running_var + eps)).reshape(-1, 1, 1, 1)
    step = folded.max() / 127.5  # the largest value, not the largest magnitude: wrong
    return int((torch.round(folded / step) == 0).flatten(1).all(dim=1).sum())


def zeroed_before_folding(weight, gamma, running_var, eps):
    step = weight.abs().max() / 127.5  # forgets the BatchNorm: wrong
    return int((torch.round(weight / step) == 0).flatten(1).all(dim=1).sum())


def right_steps(variance, start_variance, momentum):
    return math.log(variance / start_variance) / math.log(1 - momentum)


def steps_with_keras_momentum(variance, start_variance, momentum):
    return math.log(variance / start_variance) / math.log(momentum)  # the wrong weight


def skeleton(*arguments):
    raise NotImplementedError


def test_right_answers_pass(capsys):
    check_cle_scales(right_scales)
    check_zeroed_filters(right_zeroed)
    check_steps_since_dead(right_steps)
    assert capsys.readouterr().out.count("PASS") == 3


def test_the_wrong_axis_fails_with_its_hint():
    with pytest.raises(AssertionError, match="INPUT channel"):
        check_cle_scales(scales_from_the_wrong_axis)


def test_the_dead_channel_wipes_out_filters_unless_eps_caps_it():
    ordinary, dead, keras, _ = (case.expected for case in zeroed_cases())
    assert ordinary == keras == 0 and dead > 0


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [(zeroed_without_absolute_value, "MAGNITUDE"), (zeroed_before_folding, r"gamma / sqrt\(eps\)")],
)
def test_the_usual_mistakes_of_the_per_tensor_count_fail_with_their_hint(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        check_zeroed_filters(wrong)


def test_the_keras_momentum_convention_fails_with_its_hint():
    with pytest.raises(AssertionError, match=r"\(1 - momentum\)\^n"):
        check_steps_since_dead(steps_with_keras_momentum)


def test_skeletons_are_not_attempted(capsys):
    check_cle_scales(skeleton)
    check_zeroed_filters(skeleton)
    check_steps_since_dead(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == 3
