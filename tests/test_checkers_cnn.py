"""Notebook 07's checkers accept right answers, reject the usual mistakes with their hint,
and report a skeleton that still raises NotImplementedError as not attempted."""

import pytest
import torch
from torch import nn
from torch.nn import functional

from ptqlib.classroom.checkers.cnn import (
    _border_error,
    _fold_into_next,
    check_border_error,
    check_fold_into_next,
)


def right_fold(weight, bias, mean, var, gamma, beta, eps):
    k = gamma / torch.sqrt(var + eps)
    bias = torch.zeros(weight.shape[0]) if bias is None else bias
    return weight * k[None, :], bias + weight @ (beta - mean * k)


def fold_the_rows(weight, bias, mean, var, gamma, beta, eps):
    k = gamma / torch.sqrt(var + eps)
    bias = torch.zeros(weight.shape[0]) if bias is None else bias
    return weight * k[: weight.shape[0], None], bias + weight @ (beta - mean * k)


def fold_without_eps(weight, bias, mean, var, gamma, beta, eps):
    return right_fold(weight, bias, mean, var, gamma, beta, 0.0)


def right_border_error(q_w, zero_point, height, width, padding):
    image = torch.randint(0, 256, (1, q_w.shape[1], height, width)).double()
    accumulators = []
    for value in (0, zero_point):
        padded = functional.pad(image, (padding,) * 4, value=value) - zero_point
        accumulators.append(functional.conv2d(padded, q_w.double())[0])
    return (accumulators[0] - accumulators[1]).round().long()


def interior_too(q_w, zero_point, height, width, padding):
    return right_border_error(q_w, zero_point, height, width, padding) - zero_point


def skeleton(*arguments):
    raise NotImplementedError


def test_right_answers_pass(capsys):
    check_fold_into_next(right_fold)
    check_border_error(right_border_error)
    output = capsys.readouterr().out
    assert "check_fold_into_next: PASS (4 cases)" in output
    assert "check_border_error: PASS (3 cases)" in output


@pytest.mark.parametrize(
    "wrong, hint",
    [(fold_the_rows, "columns of W"), (fold_without_eps, "sqrt\\(var \\+ eps\\)")],
)
def test_fold_mistakes_fail_with_their_hint(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        check_fold_into_next(wrong)


def test_a_wrong_border_error_fails():
    with pytest.raises(AssertionError, match="values are wrong"):
        check_border_error(interior_too)


def test_skeleton_is_not_attempted_yet(capsys):
    check_fold_into_next(skeleton)
    check_border_error(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == 2


def test_the_fold_reference_is_linear_after_batchnorm():
    generator = torch.Generator().manual_seed(3)
    batchnorm, linear = nn.BatchNorm1d(5), nn.Linear(5, 3)
    with torch.no_grad():
        for tensor in (batchnorm.running_mean, batchnorm.weight, batchnorm.bias):
            tensor.copy_(torch.randn(5, generator=generator))
        batchnorm.running_var.copy_(torch.rand(5, generator=generator) + 0.5)
    batchnorm.eval()
    arguments = (linear.weight, linear.bias, batchnorm.running_mean, batchnorm.running_var)
    weight, bias = _fold_into_next(
        *(a.detach() for a in arguments), batchnorm.weight.detach(), batchnorm.bias.detach(),
        batchnorm.eps,
    )  # fmt: skip
    x = torch.randn(20, 5, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(x @ weight.T + bias, linear(batchnorm(x)), atol=1e-5, rtol=1e-5)


def test_the_border_error_reference_is_the_difference_of_two_paddings():
    q_w = torch.randint(-127, 128, (3, 2, 3, 3), dtype=torch.int8)
    expected = right_border_error(q_w, 91, 7, 6, 1)
    assert torch.equal(_border_error(q_w, 91, 7, 6, 1), expected)
    assert not bool(expected[:, 1:-1, 1:-1].any())  # only windows touching the padding
