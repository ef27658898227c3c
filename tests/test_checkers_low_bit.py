"""The notebook-06 checkers accept right answers, reject wrong ones, and wait for attempts."""

import math

import pytest
import torch

from ptqlib.classroom.checkers.low_bit import (
    _relu_mean,
    _step_gain_db,
    check_pack_two_bit,
    check_relu_mean,
    check_step_gain_db,
)
from ptqlib.classroom.checkers.low_bit_rounding import (
    _adaround_loss,
    _gptq_column,
    check_adaround_loss,
    check_gptq_column,
)
from ptqlib.lowbit.rounding import (
    GPTQ_DAMPENING,
    gptq,
    hessian,
    reconstruction_error,
    rectified_sigmoid,
)
from ptqlib.lowbit.weights import weight_qparams


def pack_two_bit(values):
    padded = torch.cat([values, values.new_zeros((-len(values)) % 4)]).reshape(-1, 4)
    return (padded * torch.tensor([1, 4, 16, 64])).sum(dim=1).to(torch.uint8)


def relu_mean(beta, gamma):
    normal = torch.distributions.Normal(0.0, 1.0)
    sigma = gamma.abs()
    return sigma * normal.log_prob(beta / sigma).exp() + beta * normal.cdf(beta / sigma)


def gptq_column(weight, hessian_inverse, column, scale, quant_min, quant_max):
    w = weight[:, column]
    q = torch.clamp(torch.round(w / scale), quant_min, quant_max)
    error = (w - scale * q) / hessian_inverse[column, column]
    updated = weight.clone()
    updated[:, column + 1 :] -= torch.outer(error, hessian_inverse[column, column + 1 :])
    return q.long(), updated


def adaround_loss(weight, v, scale, inputs, regularisation, beta):
    h = torch.clamp(torch.sigmoid(v) * 1.2 - 0.1, 0, 1)
    soft = scale[:, None] * (torch.floor(weight / scale[:, None]) + h)
    error = ((inputs @ soft.T - inputs @ weight.T) ** 2).sum(dim=1).mean()
    return error + regularisation * (1 - (2 * h - 1).abs() ** beta).sum()


def step_gain_db(bits):
    return 20 * math.log10(2**bits / (2**bits - 1))


def gptq_column_as_gptqs_code(weight, hessian_inverse, column, scale, quant_min, quant_max):
    """GPTQ's reference code subtracts the update from column j too: it then holds S q."""
    q, updated = gptq_column(weight, hessian_inverse, column, scale, quant_min, quant_max)
    updated[:, column] = scale * q
    return q, updated


def gptq_column_without_clamp(weight, hessian_inverse, column, scale, quant_min, quant_max):
    return gptq_column(weight, hessian_inverse, column, scale, -(2**31), 2**31)


@pytest.mark.parametrize(
    "checker, solution",
    [
        (check_pack_two_bit, pack_two_bit),
        (check_gptq_column, gptq_column_as_gptqs_code),
        (check_relu_mean, relu_mean),
        (check_gptq_column, gptq_column),
        (check_adaround_loss, adaround_loss),
        (check_step_gain_db, step_gain_db),
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
        # The right values, but one int64 (8 bytes) per byte: nothing is packed.
        (check_pack_two_bit, lambda v: pack_two_bit(v).long(), "case 1 of 4 failed"),
        # round(w / S) not clamped to the grid: 2 where the grid ends at 1.
        (check_gptq_column, gptq_column_without_clamp, "case 4 of 4 failed"),
        # The ReLU of the mean instead of the mean of the ReLU.
        (check_relu_mean, lambda beta, gamma: beta.clamp(min=0), "case 1 of 4 failed"),
        # gamma used as the standard deviation with its sign.
        (
            check_relu_mean,
            lambda beta, gamma: relu_mean(beta, gamma) if bool((gamma > 0).all()) else beta,
            "case 3 of 4 failed",
        ),
        # The error as w - q, forgetting the scale (the slip notebook 06 once printed).
        (
            check_gptq_column,
            lambda w, hinv, j, s, lo, hi: (
                gptq_column(w, hinv, j, s, lo, hi)[:1]
                + (gptq_column(w, hinv, j, torch.ones_like(s), lo, hi)[1],)
            ),
            "case 1 of 4 failed",
        ),
        # No regulariser at all.
        (check_adaround_loss, lambda w, v, s, x, lam, b: adaround_loss(w, v, s, x, 0, b), "case 2"),
        # 10 log10 of the step ratio: a power ratio taken for an amplitude ratio.
        (check_step_gain_db, lambda b: step_gain_db(b) / 2, "case 1 of 3"),
    ],
)
def test_wrong_answers_fail_with_the_case(checker, wrong, message):
    with pytest.raises(AssertionError, match=message):
        checker(wrong)


def test_an_unattempted_exercise_is_not_a_failure(capsys):
    def skeleton(*args):
        raise NotImplementedError

    checkers = (
        check_pack_two_bit,
        check_relu_mean,
        check_gptq_column,
        check_adaround_loss,
        check_step_gain_db,
    )
    for checker in checkers:
        checker(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == len(checkers)


def test_the_gptq_step_column_after_column_is_ptqlibs_gptq():
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(6, 12, generator=generator, dtype=torch.float64)
    inputs = torch.rand(50, 12, generator=generator, dtype=torch.float64)
    qparams = weight_qparams(weight.float(), 2)
    h = hessian(inputs)
    h += GPTQ_DAMPENING * torch.diagonal(h).mean() * torch.eye(12, dtype=h.dtype)
    inverse = torch.linalg.inv(h)
    scale = qparams.scale.double()
    work, columns = weight.clone(), []
    for column in range(12):
        q, work = _gptq_column(work, inverse, column, scale, qparams.quant_min, qparams.quant_max)
        columns.append(q)
        # Remove the quantized column from the problem: the inverse of the remaining Hessian.
        pivot = inverse[column, column]
        inverse = inverse - torch.outer(inverse[:, column], inverse[column]) / pivot
    assert torch.equal(torch.stack(columns, dim=1), gptq(weight, inputs, qparams).long())


def test_the_adaround_loss_at_hard_rounding_is_ptqlibs_reconstruction_error():
    generator = torch.Generator().manual_seed(8)
    weight = torch.randn(4, 9, generator=generator)
    inputs = torch.rand(30, 9, generator=generator)
    qparams = weight_qparams(1.2 * weight, 3)  # a wider grid: no weight at the top level
    floor = torch.floor(weight / qparams.scale[:, None])
    # Round up only where floor + 1 stays on the grid: the exercise's loss has no clamp.
    up = (torch.rand(4, 9, generator=generator) < 0.5) & (floor + 1 <= qparams.quant_max)
    v = torch.where(up, 50.0, -50.0)  # h(V) exactly 1 or 0
    assert torch.equal(rectified_sigmoid(v), up.float())
    integers = torch.floor(weight / qparams.scale[:, None]) + up.float()
    integers = integers.clamp(qparams.quant_min, qparams.quant_max)
    unclamped = torch.floor(weight / qparams.scale[:, None]) + up.float()
    assert torch.equal(integers, unclamped)  # no clamping in this case: the loss has none
    expected = reconstruction_error(weight, integers, qparams, inputs)
    got = float(_adaround_loss(weight, v, qparams.scale, inputs, 0.0, 2.0))
    assert got == pytest.approx(expected, rel=1e-5)


def test_the_relu_mean_reference_is_the_mean_of_sampled_rectified_gaussians():
    generator = torch.Generator().manual_seed(8)
    beta, gamma = torch.tensor([-1.0, 0.0, 0.7]), torch.tensor([0.5, -2.0, 1.3])
    samples = beta + gamma.abs() * torch.randn(400_000, 3, generator=generator)
    sampled = samples.clamp(min=0).mean(dim=0).double()
    torch.testing.assert_close(_relu_mean(beta, gamma), sampled, atol=0.01, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_step_gain_is_the_ratio_of_ptqlibs_two_scales(bits):
    weight = torch.randn(4, 64, generator=torch.Generator().manual_seed(bits))
    ao = weight_qparams(weight, bits, full_grid_bits=0).scale
    full = weight_qparams(weight, bits, full_grid_bits=8).scale
    ratio_db = 20 * torch.log10(ao.double() / full.double())
    torch.testing.assert_close(ratio_db, _step_gain_db(bits).expand(4), rtol=1e-6, atol=1e-6)
