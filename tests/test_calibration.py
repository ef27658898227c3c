"""Tests for ptqlib.calibration: keys, hook removal, observer choice, agreement with the
same calibration done by torch.ao's observers, and bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ptqlib.calibration import Calibration, calibrate, observe
from ptqlib.fusion import fusion_groups, quantization_points
from ptqlib.int8_model import convert
from ptqlib.models import SimpleNet
from ptqlib.observers import (
    HistogramObserver,
    MinMaxObserver,
    PercentileObserver,
    PerChannelMinMaxObserver,
)
from ptqlib.quantization import QParams
from ptqlib.reference.torch_eager import torch_calibrate, torch_histogram_range

ACTIVATION_KEYS = ["input", "relu1", "relu2", "fc3"]
WEIGHT_KEYS = ["fc1.weight", "fc2.weight", "fc3.weight"]


@pytest.fixture
def model() -> SimpleNet:
    torch.manual_seed(0)
    return SimpleNet().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """250 random "images" (3 batches of up to 100), normalised like MNIST."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(250, 1, 28, 28, generator=generator) * 3.2 - 0.42


def all_hooks(model: nn.Module) -> int:
    return sum(
        len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules()
    )


def test_keys_in_run_order_then_weights(model, images):
    result = calibrate(model, images, progress=False)
    assert isinstance(result, Calibration)
    assert list(result.qparams) == ACTIVATION_KEYS + WEIGHT_KEYS
    assert list(result.observers) == ACTIVATION_KEYS + WEIGHT_KEYS
    assert all(isinstance(qparams, QParams) for qparams in result.qparams.values())


def test_default_observers_and_settings(model, images):
    result = calibrate(model, images, progress=False)
    for key in ACTIVATION_KEYS:
        observer, qparams = result.observers[key], result.qparams[key]
        assert isinstance(observer, HistogramObserver)
        assert observer.batches_seen == 3  # 250 images in batches of 100
        assert (qparams.dtype, qparams.axis, qparams.quant_min, qparams.quant_max) == (
            torch.uint8,
            None,
            0,
            255,
        )
    for key, linear in zip(WEIGHT_KEYS, (model.fc1, model.fc2, model.fc3), strict=True):
        observer, qparams = result.observers[key], result.qparams[key]
        assert isinstance(observer, PerChannelMinMaxObserver)
        assert observer.batches_seen == 1
        assert (qparams.dtype, qparams.axis) == (torch.int8, 0)
        assert qparams.scale.shape == (linear.out_features,)
        assert bool((qparams.zero_point == 0).all())  # symmetric int8


def test_input_and_layer_ranges_are_those_of_the_real_tensors(model, images):
    result = calibrate(model, images, activation_observer="minmax", progress=False)
    low, high = result.observers["input"].clipping_range()
    assert float(low) == float(images.min()) and float(high) == float(images.max())
    with torch.no_grad():
        hidden = model.relu1(model.fc1(model.flatten(images)))
    low, high = result.observers["relu1"].clipping_range()
    assert float(low) == 0.0
    assert float(high) == pytest.approx(float(hidden.max()), rel=1e-6)


def test_model_is_left_exactly_as_it_was(model, images):
    model.train()  # a mode calibrate must restore
    model.fc2.eval()
    state_before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    modes_before = [module.training for module in model.modules()]
    with torch.no_grad():
        output_before = model(images)
    calibrate(model, images, progress=False)
    assert all_hooks(model) == 0
    assert [module.training for module in model.modules()] == modes_before
    state_after = model.state_dict()
    assert list(state_after) == list(state_before)
    for name, tensor in state_before.items():
        assert torch.equal(state_after[name], tensor)
    with torch.no_grad():
        assert torch.equal(model(images), output_before)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_hooks_are_removed_after_an_error(model):
    wrong_shape = torch.zeros(10, 1, 28, 27)  # the first Linear cannot take 756 features
    model.train()
    with pytest.raises(
        ValueError, match=r"images: the model cannot run a batch of shape \(10, 1, 28, 27\)"
    ):
        calibrate(model, wrong_shape, progress=False)
    assert all_hooks(model) == 0
    assert model.training


@pytest.mark.parametrize(
    "activation, weight",
    [("minmax", "per_channel_minmax"), ("moving_average_minmax", "minmax")],
)
def test_matches_the_same_calibration_with_torch_observers(model, images, activation, weight):
    torch_names = {
        "minmax": "MinMaxObserver",
        "moving_average_minmax": "MovingAverageMinMaxObserver",
        "per_channel_minmax": "PerChannelMinMaxObserver",
    }
    ours = calibrate(model, images, activation, weight, progress=False)
    theirs, _ = torch_calibrate(model, images, torch_names[activation], torch_names[weight])
    assert list(theirs) == list(ours.qparams)
    for key, (scale, zero_point) in theirs.items():
        assert torch.equal(ours.qparams[key].scale.reshape(-1), scale.reshape(-1)), key
        assert torch.equal(ours.qparams[key].zero_point.reshape(-1), zero_point.reshape(-1).long())


def test_histogram_ranges_within_one_bin_of_torch(model, images):
    ours = calibrate(model, images, progress=False)
    _, theirs = torch_calibrate(model, images)
    for key in ACTIVATION_KEYS:
        observer = ours.observers[key]
        low, high = observer.clipping_range()
        torch_low, torch_high = torch_histogram_range(theirs[key])
        bin_width = float(observer.max_val - observer.min_val) / observer.bins
        assert abs(float(low - torch_low)) <= bin_width, key
        assert abs(float(high - torch_high)) <= bin_width, key


def test_observer_choice_by_name_and_kwargs(model, images):
    result = calibrate(
        model,
        images,
        activation_observer="percentile",
        weight_observer="minmax",
        activation_kwargs={"percentile": 99.0, "dtype": torch.int8, "symmetric": True},
        weight_kwargs={"symmetric": False},
        progress=False,
    )
    assert all(isinstance(result.observers[key], PercentileObserver) for key in ACTIVATION_KEYS)
    assert result.observers["relu1"].percentile == 99.0
    assert all(int(result.qparams[key].zero_point) == 0 for key in ACTIVATION_KEYS)
    assert result.qparams["relu1"].dtype == torch.int8
    assert all(isinstance(result.observers[key], MinMaxObserver) for key in WEIGHT_KEYS)
    assert all(result.qparams[key].axis is None for key in WEIGHT_KEYS)
    assert result.observers["fc1.weight"].symmetric is False


def test_batch_size_sets_the_number_of_batches(model, images):
    result = calibrate(model, images, "minmax", batch_size=50, progress=False)
    assert result.observers["relu1"].batches_seen == 5


def test_progress_bar_can_be_switched_off(model, images, capsys):
    calibrate(model, images, "minmax", progress=True)
    assert "calibrating" in capsys.readouterr().err
    calibrate(model, images, "minmax", progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_modules_are_found_by_name_in_any_model(images):
    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU())
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.body(x))

    torch.manual_seed(0)
    result = calibrate(TwoBranches(), images, "minmax", progress=False)
    assert list(result.qparams) == [
        "input",
        "body.1",
        "body.2",
        "head",
        "body.1.weight",
        "head.weight",
    ]


def test_a_module_that_never_runs_is_an_error(images):
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Sequential(nn.Flatten(), nn.Linear(784, 4))
            self.unused = nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    model = Skips()
    with pytest.raises(ValueError, match="unused.*never ran"):
        calibrate(model, images, "minmax", progress=False)
    assert all_hooks(model) == 0


def test_observe_accepts_any_observer_factory(model, images):
    observers = observe(model, images, MinMaxObserver, MinMaxObserver, progress=False)
    assert list(observers) == ACTIVATION_KEYS + WEIGHT_KEYS
    assert all_hooks(model) == 0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"model": "SimpleNet"}, TypeError, "model"),
        ({"images": [[0.0]]}, TypeError, "images"),
        ({"images": torch.empty(0, 1, 28, 28)}, ValueError, "images.*empty"),
        ({"images": torch.full((4, 1, 28, 28), float("nan"))}, ValueError, "images.*NaN"),
        ({"images": torch.zeros(4, 1, 28, 28, dtype=torch.uint8)}, TypeError, "images.*float"),
        ({"images": torch.zeros(784)}, ValueError, "images.*dimensions"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, ValueError, "batch_size"),
        ({"batch_size": True}, ValueError, "batch_size"),
        ({"activation_observer": "kl"}, ValueError, "unknown observer 'kl'.*histogram"),
        ({"weight_observer": "median"}, ValueError, "unknown observer 'median'"),
        ({"activation_observer": None}, TypeError, "observer name"),
        ({"activation_kwargs": [("bins", 10)]}, TypeError, "kwargs"),
        ({"activation_kwargs": {"bins": 0}}, ValueError, "bins"),
        ({"weight_kwargs": {"ch_axis": 2}}, ValueError, "out of range"),
        ({"weight_kwargs": {"dtype": torch.float16}}, TypeError, "dtype"),
    ],
)
def test_bad_arguments_are_clear_errors(model, images, kwargs, error, message):
    arguments = {"model": model, "images": images[:10], "progress": False, **kwargs}
    with pytest.raises(error, match=message):
        calibrate(**arguments)
    assert all_hooks(model) == 0


def test_per_channel_observer_is_refused_for_activations(model, images):
    with pytest.raises(ValueError, match="one range per tensor"):
        calibrate(model, images, activation_observer="per_channel_minmax", progress=False)


class RecordingQParams(dict):
    """A qparams dict that remembers which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().get(key, default)


def test_calibration_observes_exactly_what_convert_uses(model, images):
    """Fusion before calibration: every observed tensor is used by convert, and every
    qparam convert uses was observed (a fused Linear's own output is neither)."""
    result = calibrate(model, images, "minmax", progress=False)
    assert quantization_points(model) == ["input", "relu1", "relu2", "fc3"]
    assert fusion_groups(model) == [["fc1", "relu1"], ["fc2", "relu2"], ["fc3"]]
    recorded = RecordingQParams(result.qparams)
    convert(model, recorded)
    assert recorded.read == set(result.qparams)


def test_no_fusion_outside_a_sequential():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            return self.act(self.fc(x))

    assert fusion_groups(Custom()) == [["fc"], ["act"]]
    assert fusion_groups(nn.Sequential(nn.Linear(2, 2), nn.Flatten(), nn.ReLU())) == [["0"], ["2"]]
