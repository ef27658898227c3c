"""Notebook 09's checkers accept right answers, reject the usual mistakes, and report a
skeleton that still raises NotImplementedError as not attempted."""

import pytest
import torch

from ptqlib.classroom.checkers.debugging import check_cle_scales, check_find_culprit


def right_scales(weight1, weight2, depthwise):
    r1 = weight1.abs().flatten(1).amax(dim=1)
    r2 = (weight2 if depthwise else weight2.transpose(0, 1)).abs().flatten(1).amax(dim=1)
    return torch.sqrt(r1 * r2) / r2


def scales_from_the_wrong_axis(weight1, weight2, depthwise):
    r1 = weight1.abs().flatten(1).amax(dim=1)
    r2 = weight2.abs().flatten(1).amax(dim=1)  # output channels of a plain conv: wrong
    return torch.sqrt(r1 * r2[: len(r1)]) / r2[: len(r1)]


def right_culprit(accuracy_alone, fp32_accuracy, tolerance):
    worst = min(accuracy_alone, key=accuracy_alone.get)
    return worst if fp32_accuracy - accuracy_alone[worst] > tolerance else None


def always_the_worst(accuracy_alone, fp32_accuracy, tolerance):
    return min(accuracy_alone, key=accuracy_alone.get)


def skeleton(*arguments):
    raise NotImplementedError


def test_right_answers_pass(capsys):
    check_cle_scales(right_scales)
    check_find_culprit(right_culprit)
    assert capsys.readouterr().out.count("PASS") == 2


def test_the_wrong_axis_fails_with_its_hint():
    with pytest.raises(AssertionError, match="INPUT channel"):
        check_cle_scales(scales_from_the_wrong_axis)


def test_a_culprit_when_nothing_is_wrong_fails():
    with pytest.raises(AssertionError, match="None"):
        check_find_culprit(always_the_worst)


def test_skeletons_are_not_attempted(capsys):
    check_cle_scales(skeleton)
    check_find_culprit(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == 2
