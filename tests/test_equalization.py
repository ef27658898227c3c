"""Cross-layer equalization and bias absorption (ptqlib.equalization): the float model is
unchanged, the ranges are equalized, and bias absorption narrows an activation's range."""

import copy
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ptqlib.batchnorm import fold_model
from ptqlib.debugging import calibrated_activation_qparams, partially_quantized
from ptqlib.equalization import (
    absorb_biases,
    cross_layer_equalization,
    data_free_quantization_prep,
    equalization_pairs,
    equalization_scales,
    equalize_pair,
    input_ranges,
    output_ranges,
    preactivation_statistics,
)
from ptqlib.errors import InputError
from ptqlib.models import DepthwiseCNN


def chain(seed: int, channels: int, spread: float) -> nn.Sequential:
    """conv 3x3 -> ReLU -> depthwise 3x3 -> ReLU -> pointwise 1x1, with output channels of
    the first conv scaled by up to ``spread`` (unequal ranges to equalize)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
        nn.ReLU(),
        nn.Conv2d(channels, 4, 1),
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(
            torch.logspace(0, torch.log10(torch.tensor(spread)), channels).reshape(-1, 1, 1, 1)
        )
    return model


def test_the_scale_of_one_pair():
    # s_i = sqrt(r1_i r2_i) / r2_i
    scales = equalization_scales(torch.tensor([4.0, 1.0, 3.0]), torch.tensor([1.0, 4.0, 3.0]))
    assert scales.tolist() == pytest.approx([2.0, 0.5, 1.0])
    # an all-zero channel on either side is left alone
    assert equalization_scales(torch.tensor([0.0, 2.0]), torch.tensor([5.0, 0.0])).tolist() == [
        1.0,
        1.0,
    ]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    channels=st.integers(1, 6),
    spread=st.floats(1.0, 1000.0),
)
def test_equalizing_one_pair_keeps_the_outputs_and_equalizes_the_ranges(seed, channels, spread):
    model = chain(seed, channels, spread)
    images = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(seed))
    reference = model(images).detach()
    equalized = copy.deepcopy(model)
    equalize_pair(equalized[0], equalized[2])
    tolerance = 1e-4 * max(1.0, float(reference.abs().max()))
    assert torch.allclose(equalized(images), reference, atol=tolerance)
    first, second = output_ranges(equalized[0]), input_ranges(equalized[2])
    assert torch.allclose(first, second, rtol=1e-4)
    # the geometric mean of the two old ranges
    old = torch.sqrt(output_ranges(model[0]) * input_ranges(model[2]))
    assert torch.allclose(first, old, rtol=1e-4)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), spread=st.floats(1.0, 1000.0))
def test_sweeps_keep_the_outputs_of_a_chain(seed, spread):
    model = chain(seed, 5, spread)
    images = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(seed))
    reference = model(images).detach()
    equalized, scales = cross_layer_equalization(model, sweeps=20)
    assert set(scales) == {"0", "2"}
    tolerance = 1e-4 * max(1.0, float(reference.abs().max()))
    assert torch.allclose(equalized(images), reference, atol=tolerance)
    # after the sweeps the first layer's channel ranges are far closer than the spread
    ranges = output_ranges(equalized[0])
    assert float(ranges.max() / ranges.min()) < max(2.0, spread**0.5 * 1.01)


def test_cle_on_the_folded_depthwise_cnn_keeps_its_logits():
    torch.manual_seed(0)
    model = DepthwiseCNN().eval()
    folded = fold_model(model)
    pairs = equalization_pairs(folded)
    assert [(p.first, p.second) for p in pairs] == [
        ("conv1", "dw1"),
        ("dw1", "pw1"),
        ("pw1", "dw2"),
        ("dw2", "pw2"),
        ("pw2", "dw3"),
        ("dw3", "pw3"),
    ]
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    equalized, _ = cross_layer_equalization(folded)
    assert torch.allclose(equalized(images), folded(images), atol=1e-4)
    assert torch.allclose(data_free_quantization_prep(model)(images), model(images), atol=1e-4)


def test_cle_needs_a_folded_model():
    with pytest.raises(InputError, match="BatchNorm"):
        cross_layer_equalization(DepthwiseCNN())
    with pytest.raises(InputError, match="sweeps"):
        cross_layer_equalization(fold_model(DepthwiseCNN().eval()), sweeps=0)


def shifted_pair() -> nn.Sequential:
    """conv 1x1 -> BN -> ReLU -> conv 1x1 where the BN output sits far above 0 (beta 10,
    gamma 0.5): the ReLU never clips, and the activation's range [~8.5, ~11.5] wastes most
    of the uint8 grid, which must include 0."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 1),
    ).eval()
    with torch.no_grad():
        model[1].running_mean.zero_()
        model[1].running_var.fill_(1.0)
        model[1].weight.fill_(0.5)
        model[1].bias.fill_(10.0)
        model[0].weight.fill_(1.0)
    return model


def test_bias_absorption_matters_when_an_activation_sits_far_from_zero():
    model = shifted_pair()
    statistics = preactivation_statistics(model)
    assert statistics["0"][0].tolist() == [10.0, 10.0, 10.0]
    folded = fold_model(model)
    absorbed, moved = absorb_biases(folded, statistics)
    assert moved["0"].tolist() == pytest.approx([8.5, 8.5, 8.5])  # 10 - 3 x 0.5
    images = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)).clamp(-3, 3)
    reference = folded(images)
    assert torch.allclose(absorbed(images), reference, atol=1e-4)  # every value >= c

    def error_with_quantized_activation(network: nn.Sequential) -> float:
        # The simulation needs the logits a Linear (as every INT8 model): an identity.
        classifier = nn.Linear(32, 32)
        with torch.no_grad():
            classifier.weight.copy_(torch.eye(32))
            classifier.bias.zero_()
        children = [*network.named_children(), ("flatten", nn.Flatten()), ("fc", classifier)]
        network = nn.Sequential(OrderedDict(children)).eval()
        qparams = calibrated_activation_qparams(network, images)
        quantized = partially_quantized(network, qparams, activations=["2"])
        return float((quantized(images) - reference.detach().flatten(1)).abs().mean())

    # the same 256 levels now cover [0, ~3] instead of [0, ~11.5]
    assert error_with_quantized_activation(absorbed) < error_with_quantized_activation(folded) / 2


def test_bias_absorption_leaves_padded_pairs_alone():
    model = fold_model(shifted_pair())
    padded = nn.Sequential(model[0], model[1], nn.Conv2d(3, 2, 3, padding=1)).eval()
    absorbed, moved = absorb_biases(padded, {"0": (torch.full((3,), 10.0), torch.ones(3))})
    assert moved == {}
