"""Depthwise convolutions and the global average pool in the integer engine: the planner,
the teaching path against its float simulation and against torch.ao's quantized kernels."""

import pytest
import torch
from torch import nn

from ptqlib.calibration import calibrate
from ptqlib.errors import InputError
from ptqlib.fake_quant import simulate
from ptqlib.int8_layers import Int8Conv2d, Int8GlobalAvgPool2d, rounded_mean
from ptqlib.int8_model import convert
from ptqlib.reference.torch_eager import default_quantized_engine, torch_quantized_logits
from ptqlib.reference.torch_eager_cnn import torch_cnn_from_int8


def depthwise_cnn(seed: int = 0) -> nn.Sequential:
    """A tiny depthwise-separable CNN (random weights): conv, depthwise conv, pointwise
    conv, max-pool, global average pool, Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(1)) * 2 - 0.5


def calibrated(images, **activation_kwargs):
    model = depthwise_cnn()
    qparams = calibrate(
        model, images, "minmax", activation_kwargs=activation_kwargs or None, progress=False
    ).qparams
    return model, qparams


def test_depthwise_conv_converts_to_an_int8_conv_with_groups(images):
    model, qparams = calibrated(images)
    int8_model = convert(model, qparams)
    depthwise = int8_model.layers[1]
    assert isinstance(depthwise, Int8Conv2d) and depthwise.depthwise
    assert depthwise.groups == 8 and tuple(depthwise.weight.shape) == (8, 1, 3, 3)
    assert depthwise.weight_scale.shape == (8,)  # per channel, along axis 0
    assert isinstance(int8_model.layers[4], Int8GlobalAvgPool2d)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_depthwise_cnn_equals_its_simulation(images, dtype, per_channel):
    model, qparams = calibrated(images, dtype=dtype)
    ours = convert(model, qparams, per_channel).quantized_logits(images).long()
    simulated = simulate(model, qparams, per_channel).quantized_logits(images)
    difference = (ours - simulated).abs()
    assert int(difference.max()) <= 1 and float((difference == 0).float().mean()) > 0.95


def test_depthwise_cnn_agrees_with_torch_ao(images):
    reduce_range = default_quantized_engine() == "x86"
    model, qparams = calibrated(images, reduce_range=reduce_range)
    ours = convert(model, qparams)
    theirs = torch_cnn_from_int8(ours, model)
    their_logits, scale, zero_point = torch_quantized_logits(theirs, images)
    assert (scale, zero_point) == (
        float(ours.output_qparams.scale),
        int(ours.output_qparams.zero_point),
    )
    difference = (ours.quantized_logits(images).long() - their_logits.long()).abs()
    assert int(difference.max()) <= 1


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(8, 8, 3, groups=2),  # grouped, not depthwise
        nn.Conv2d(8, 16, 3, groups=8),  # depthwise with a channel multiplier
        nn.Conv2d(8, 8, 3, dilation=2),
    ],
)
def test_other_groups_and_dilations_are_refused(conv):
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(InputError, match="layer '0'"):
        convert(model, {})


def test_only_the_global_average_pool_converts():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    with pytest.raises(InputError, match="output size 1"):
        convert(model, {})


def test_global_average_pool_rounds_the_mean_half_up():
    values = torch.tensor([[[[1, 2], [2, 2]], [[1, 2], [3, 3]], [[-5, -4], [-4, -4]]]])
    # means 1.75, 2.25, -4.25 -> 2, 2, -4;  ties: 2.5 -> 3, -4.5 -> -4
    assert rounded_mean(values, (2, 3)).flatten().tolist() == [2, 2, -4]
    ties = torch.tensor([[[[2, 3]], [[-5, -4]]]])
    assert rounded_mean(ties, (2, 3)).flatten().tolist() == [3, -4]
    pooled = Int8GlobalAvgPool2d()(values.to(torch.int8))
    assert pooled.dtype == torch.int8 and pooled.shape == (1, 3, 1, 1)
