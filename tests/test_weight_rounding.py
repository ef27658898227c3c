"""GPTQ and AdaRound against nearest rounding and against a brute-force optimum."""

import itertools

import pytest
import torch

from ptqlib.lowbit.rounding import (
    adaround,
    gptq,
    hessian,
    reconstruction_error,
    rectified_sigmoid,
    round_to_nearest,
)
from ptqlib.quantization import qparams_from_range


def two_bit_grid(weight):
    largest = weight.abs().max()
    return qparams_from_range(
        -largest, largest, torch.int8, symmetric=True, quant_min=-2, quant_max=1
    )


def correlated_toy(seed):
    """Six inputs in correlated pairs (where rounding errors can cancel) and one output."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(200, 3, generator=generator)
    inputs = torch.cat([base, base + 0.3 * torch.randn(200, 3, generator=generator)], dim=1)
    return torch.randn(1, 6, generator=generator), inputs


def brute_force_best(weight, inputs, qparams, candidates):
    return min(
        reconstruction_error(weight, torch.tensor([c], dtype=torch.int8), qparams, inputs)
        for c in candidates
    )


@pytest.mark.parametrize("seed", range(1, 6))
def test_adaround_finds_the_best_up_down_rounding_of_a_toy_layer(seed):
    weight, inputs = correlated_toy(seed)
    qparams = two_bit_grid(weight)
    floor = torch.floor(weight / qparams.scale).flatten().long().tolist()
    up_or_down = [
        [min(max(f + d, -2), 1) for f, d in zip(floor, choice, strict=True)]
        for choice in itertools.product(range(2), repeat=6)
    ]
    best = brute_force_best(weight, inputs, qparams, up_or_down)
    learned = adaround(weight, inputs, qparams, iterations=300, seed=0)
    nearest = round_to_nearest(weight, qparams)
    assert reconstruction_error(weight, learned, qparams, inputs) == pytest.approx(best, rel=1e-6)
    assert best <= reconstruction_error(weight, nearest, qparams, inputs)


def test_gptq_never_loses_to_nearest_and_beats_it_on_correlated_inputs():
    gains = []
    for seed in range(1, 6):
        weight, inputs = correlated_toy(seed)
        qparams = two_bit_grid(weight)
        nearest = reconstruction_error(weight, round_to_nearest(weight, qparams), qparams, inputs)
        solved = reconstruction_error(weight, gptq(weight, inputs, qparams), qparams, inputs)
        everything = itertools.product(range(-2, 2), repeat=6)
        assert brute_force_best(weight, inputs, qparams, everything) <= solved <= nearest + 1e-9
        gains.append(nearest / solved)
    assert max(gains) > 1.5


def test_gptq_is_nearest_rounding_when_the_inputs_are_uncorrelated():
    # H diagonal: no column can make up for another, and nearest rounding is the optimum.
    inputs = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])).repeat(5, 1)
    weight = torch.tensor([[0.31, -0.74, 0.12, 0.55], [-0.2, 0.9, -0.43, 0.05]])
    qparams = two_bit_grid(weight)
    assert torch.equal(gptq(weight, inputs, qparams), round_to_nearest(weight, qparams))


def test_gptq_on_a_wider_layer_cuts_the_output_error_and_handles_dead_inputs():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(32, 64, generator=generator)
    inputs = torch.randn(500, 32, generator=generator) @ mixing  # rank 32 of 64: correlated
    inputs[:, 5] = 0.0  # an input that never fires
    weight = torch.randn(16, 64, generator=generator)
    qparams = two_bit_grid(weight)
    integers = gptq(weight, inputs, qparams)
    assert integers.dtype == torch.int8
    assert int(integers.min()) >= -2 and int(integers.max()) <= 1
    assert torch.equal(integers[:, 5], torch.zeros(16, dtype=torch.int8))
    nearest = reconstruction_error(weight, round_to_nearest(weight, qparams), qparams, inputs)
    assert reconstruction_error(weight, integers, qparams, inputs) < 0.5 * nearest


def test_adaround_is_deterministic_under_a_seed():
    weight, inputs = correlated_toy(3)
    qparams = two_bit_grid(weight)
    first = adaround(weight, inputs, qparams, iterations=50, seed=7)
    assert torch.equal(first, adaround(weight, inputs, qparams, iterations=50, seed=7))


def test_rectified_sigmoid_reaches_exactly_zero_and_one():
    values = rectified_sigmoid(torch.tensor([-20.0, 0.0, 20.0]))
    assert values.tolist() == [0.0, 0.5, 1.0]


def test_hessian_is_twice_the_mean_outer_product():
    inputs = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    expected = 2 * (inputs.T @ inputs) / 2
    assert torch.allclose(hessian(inputs), expected.double())


@pytest.mark.parametrize(
    "weight, inputs, message",
    [
        (torch.ones(2, 3), torch.ones(4, 5), "do not match"),
        (torch.ones(2, 3), torch.full((4, 3), float("nan")), "NaN"),
    ],
)
def test_bad_layers_are_clear_errors(weight, inputs, message):
    with pytest.raises(ValueError, match=message):
        gptq(weight, inputs, two_bit_grid(torch.ones(2, 3)))


def test_bad_settings_are_clear_errors():
    weight, inputs = correlated_toy(1)
    qparams = two_bit_grid(weight)
    with pytest.raises(ValueError, match="dampening"):
        gptq(weight, inputs, qparams, dampening=0.0)
    with pytest.raises(ValueError, match="iterations"):
        adaround(weight, inputs, qparams, iterations=0)
    asymmetric = qparams_from_range(-1.0, 2.0, torch.int8, quant_min=-2, quant_max=1)
    with pytest.raises(ValueError, match="zero-point 0"):
        gptq(weight, inputs, asymmetric)
