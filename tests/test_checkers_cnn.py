"""Notebook 07's checkers accept right answers, reject the usual mistakes with their hint,
and report a skeleton that still raises NotImplementedError as not attempted."""

import pytest
import torch
from torch.nn import functional

from ptqlib.classroom.checkers.cnn import check_fold_batchnorm, check_padded_accumulator


def right_fold(weight, bias, mean, var, gamma, beta, eps):
    k = gamma / torch.sqrt(var + eps)
    bias = torch.zeros_like(mean) if bias is None else bias
    return weight * k.reshape(-1, *[1] * (weight.dim() - 1)), (bias - mean) * k + beta


def fold_without_eps(weight, bias, mean, var, gamma, beta, eps):
    return right_fold(weight, bias, mean, var, gamma, beta, 0.0)


def fold_along_the_last_axis(weight, bias, mean, var, gamma, beta, eps):
    k = gamma / torch.sqrt(var + eps)
    bias = torch.zeros_like(mean) if bias is None else bias
    return weight * k, (bias - mean) * k + beta  # broadcasts over the wrong axis


def right_accumulator(q_x, zero_point, q_w, padding):
    padded = functional.pad(q_x.long(), (padding,) * 4, value=zero_point)
    return functional.conv2d((padded - zero_point).double(), q_w.double()).round().long()


def zero_padded_accumulator(q_x, zero_point, q_w, padding):
    padded = functional.pad(q_x.long(), (padding,) * 4, value=0)
    return functional.conv2d((padded - zero_point).double(), q_w.double()).round().long()


def skeleton(*arguments):
    raise NotImplementedError


def test_right_answers_pass(capsys):
    check_fold_batchnorm(right_fold)
    check_padded_accumulator(right_accumulator)
    output = capsys.readouterr().out
    assert "check_fold_batchnorm: PASS (4 cases)" in output
    assert "check_padded_accumulator: PASS (3 cases)" in output


@pytest.mark.parametrize(
    "wrong, hint",
    [(fold_without_eps, "sqrt\\(var \\+ eps\\)"), (fold_along_the_last_axis, "axis 0")],
)
def test_fold_mistakes_fail_with_their_hint(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        check_fold_batchnorm(wrong)


def test_zero_padding_fails_on_the_border_only():
    with pytest.raises(AssertionError, match="only along the border(.|\n)*zero-point Z_x"):
        check_padded_accumulator(zero_padded_accumulator)


def test_skeleton_is_not_attempted_yet(capsys):
    check_fold_batchnorm(skeleton)
    check_padded_accumulator(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == 2
