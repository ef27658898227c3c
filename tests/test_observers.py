"""Tests for ptqlib.observers and ptqlib.observers.base: the min/max family's exactness
against torch.ao, the settings, the common interface of every observer and every bad input.

The histogram-based observers have their own tests in test_histogram_observers.py.
torch.ao is reached only through ptqlib.reference, which filters its deprecation warnings.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptqlib.observers import (
    OBSERVERS,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    PerChannelMinMaxObserver,
    make_observer,
)
from ptqlib.observers.base import ObserverSettings
from ptqlib.observers.histogram import HistogramObserver
from ptqlib.quantization import EPS, QParams
from ptqlib.reference.torch_eager import deprecated_api, torch_observer

PER_TENSOR = [name for name in OBSERVERS if name != "per_channel_minmax"]

# ---------------------------------------------------------------------------------------
# Settings compared with torch.ao (which refuses reduce_range for symmetric uint8)
# ---------------------------------------------------------------------------------------

SETTINGS = [
    {"dtype": dtype, "symmetric": symmetric, "reduce_range": reduce_range}
    for dtype in (torch.uint8, torch.int8)
    for symmetric in (False, True)
    for reduce_range in (False, True)
    if not (symmetric and reduce_range and dtype == torch.uint8)
]
SETTINGS += [
    {"dtype": torch.uint8, "symmetric": False, "quant_min": 0, "quant_max": 15},
    {"dtype": torch.uint8, "symmetric": True, "quant_min": 0, "quant_max": 15},
    {"dtype": torch.int8, "symmetric": True, "quant_min": -8, "quant_max": 7},
    {"dtype": torch.int8, "symmetric": False, "quant_min": -64, "quant_max": 63},
    {
        "dtype": torch.uint8,
        "symmetric": False,
        "quant_min": 0,
        "quant_max": 127,
        "reduce_range": True,
    },
]


def settings_id(setting: dict) -> str:
    parts = ["uint8" if setting["dtype"] == torch.uint8 else "int8"]
    parts.append("sym" if setting["symmetric"] else "affine")
    if setting.get("reduce_range"):
        parts.append("reduce")
    if "quant_min" in setting:
        parts.append(f"{setting['quant_min']}..{setting['quant_max']}")
    return "-".join(parts)


SETTING_PARAMS = [pytest.param(setting, id=settings_id(setting)) for setting in SETTINGS]


def batches(seed: int, count: int = 5, shape: tuple[int, ...] = (64, 8)) -> list[torch.Tensor]:
    """Batches whose ranges move around: shifted, scaled, some all-positive, one with
    a wide outlier, so the running statistics change from batch to batch."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for index in range(count):
        x = torch.randn(shape, generator=generator) * (0.5 + index) + (index - 2) * 0.7
        result.append(x)
    result[count // 2] = result[count // 2].abs() + 0.1  # one all-positive batch
    result[-1][0, 0] = 25.0  # a late outlier widens the range
    return result


def torch_qparams(name: str, xs: list[torch.Tensor], **kwargs):
    with deprecated_api():
        observer = torch_observer(name, **kwargs)
        for x in xs:
            observer(x)
        return observer.calculate_qparams()


def ptqlib_qparams(name: str, xs: list[torch.Tensor], **kwargs):
    observer = make_observer(name, **kwargs)
    for x in xs:
        assert observer(x) is x
    return observer.calculate_qparams()


def assert_same_qparams(ours, theirs) -> None:
    """Bit-for-bit equal scales and equal zero-points (torch.ao's are shape [1] for
    per-tensor and int32 for affine)."""
    scale, zero_point = ours
    torch_scale, torch_zero_point = theirs
    assert torch.equal(scale.reshape(-1), torch_scale.reshape(-1).to(torch.float32))
    assert torch.equal(zero_point.reshape(-1), torch_zero_point.reshape(-1).to(torch.int64))


# ---------------------------------------------------------------------------------------
# Exactly torch.ao's qparams: MinMax, MovingAverage, PerChannel
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTING_PARAMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_minmax_matches_torch(setting, seed):
    xs = batches(seed)
    assert_same_qparams(
        ptqlib_qparams("minmax", xs, **setting), torch_qparams("MinMaxObserver", xs, **setting)
    )


@pytest.mark.parametrize("setting", SETTING_PARAMS)
@pytest.mark.parametrize("averaging_constant", [0.01, 0.3, 1.0])
def test_moving_average_matches_torch(setting, averaging_constant):
    xs = batches(2, count=20)
    ours = ptqlib_qparams(
        "moving_average_minmax", xs, averaging_constant=averaging_constant, **setting
    )
    theirs = torch_qparams(
        "MovingAverageMinMaxObserver", xs, averaging_constant=averaging_constant, **setting
    )
    assert_same_qparams(ours, theirs)


@pytest.mark.parametrize("setting", SETTING_PARAMS)
@pytest.mark.parametrize("ch_axis", [0, 1, -1])
def test_per_channel_matches_torch(setting, ch_axis):
    xs = batches(3, shape=(6, 5, 4))
    ours = ptqlib_qparams("per_channel_minmax", xs, ch_axis=ch_axis, **setting)
    theirs = torch_qparams("PerChannelMinMaxObserver", xs, ch_axis=ch_axis, **setting)
    assert ours[0].shape == (xs[0].shape[ch_axis],)
    assert_same_qparams(ours, theirs)


def test_defaults_mirror_torch():
    assert make_observer("minmax").dtype == torch.uint8
    assert make_observer("minmax").symmetric is False
    assert make_observer("minmax").reduce_range is False
    assert MovingAverageMinMaxObserver().averaging_constant == 0.01
    assert PerChannelMinMaxObserver().ch_axis == 0
    assert HistogramObserver().bins == 2048
    with deprecated_api():
        assert torch_observer("HistogramObserver").bins == HistogramObserver().bins
        torch_moving = torch_observer("MovingAverageMinMaxObserver")
    assert torch_moving.averaging_constant == MovingAverageMinMaxObserver().averaging_constant


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=20),
        min_size=1,
        max_size=4,
    ),
    setting=st.sampled_from(SETTINGS),
)
def test_minmax_family_matches_torch_on_any_batches(values, setting):
    xs = [torch.tensor(batch, dtype=torch.float32) for batch in values]
    for name, torch_name in (
        ("minmax", "MinMaxObserver"),
        ("moving_average_minmax", "MovingAverageMinMaxObserver"),
    ):
        assert_same_qparams(
            ptqlib_qparams(name, xs, **setting), torch_qparams(torch_name, xs, **setting)
        )


# ---------------------------------------------------------------------------------------
# The common interface
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_observer_returns_its_input_unchanged(name):
    observer = make_observer(name)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    copy = x.clone()
    assert observer(x) is x
    assert torch.equal(x, copy)
    assert isinstance(observer, torch.nn.Module)


@pytest.mark.parametrize("name", PER_TENSOR)
def test_per_tensor_qparams_are_0d_and_sane(name):
    observer = make_observer(name, dtype=torch.int8, symmetric=True)
    observer(torch.randn(100, generator=torch.Generator().manual_seed(0)))
    scale, zero_point = observer.calculate_qparams()
    assert scale.shape == () and zero_point.shape == ()
    assert scale.dtype == torch.float32 and zero_point.dtype == torch.int64
    assert float(scale) > 0 and int(zero_point) == 0
    qparams = observer.qparams()
    assert isinstance(qparams, QParams)
    assert (qparams.quant_min, qparams.quant_max, qparams.dtype, qparams.axis) == (
        -128,
        127,
        torch.int8,
        None,
    )


def test_per_channel_qparams_are_1d_with_the_axis():
    observer = PerChannelMinMaxObserver(ch_axis=1, dtype=torch.int8, symmetric=True)
    observer(torch.randn(4, 7, 3))
    scale, zero_point = observer.calculate_qparams()
    assert scale.shape == (7,) and zero_point.shape == (7,)
    qparams = observer.qparams()
    assert qparams.axis == 1 and qparams.dtype == torch.int8
    assert (qparams.quant_min, qparams.quant_max) == (-128, 127)


def test_reduce_range_and_custom_range_reach_the_qparams():
    observer = MinMaxObserver(dtype=torch.uint8, quant_min=0, quant_max=15)
    observer(torch.tensor([0.0, 3.0]))
    assert (observer.qparams().quant_min, observer.qparams().quant_max) == (0, 15)
    assert float(observer.qparams().scale) == pytest.approx(3.0 / 15)
    reduced = MinMaxObserver(reduce_range=True)
    reduced(torch.tensor([0.0, 127.0]))
    assert (reduced.quant_min, reduced.quant_max) == (0, 127)
    assert float(reduced.qparams().scale) == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_reset_forgets_everything(name):
    observer = make_observer(name)
    generator = torch.Generator().manual_seed(0)
    observer(torch.randn(10, 3, generator=generator) * 100)
    observer.reset()
    with pytest.raises(RuntimeError, match="no data"):
        observer.calculate_qparams()
    fresh = make_observer(name)
    x = torch.randn(10, 3, generator=generator)
    observer(x)
    fresh(x)
    for ours, theirs in zip(observer.calculate_qparams(), fresh.calculate_qparams(), strict=True):
        assert torch.equal(ours, theirs)


def test_repr_shows_the_current_range():
    observer = MinMaxObserver()
    assert "no data yet" in repr(observer)
    observer(torch.tensor([-1.5, 2.25]))
    assert repr(observer) == (
        "MinMaxObserver(torch.uint8, affine, quant range 0..255, "
        "range [-1.5, 2.25] after 1 batches)"
    )
    histogram = HistogramObserver(dtype=torch.int8, symmetric=True)
    histogram(torch.tensor([-1.5, 2.25]))
    assert "observed range [-1.5, 2.25]" in repr(histogram)
    assert "symmetric" in repr(histogram)
    per_channel = PerChannelMinMaxObserver()
    per_channel(torch.tensor([[1.0, 2.0], [-3.0, 4.0]]))
    assert "2 channels along axis 0" in repr(per_channel)


def test_registry_and_make_observer():
    assert list(OBSERVERS) == [
        "minmax",
        "moving_average_minmax",
        "per_channel_minmax",
        "histogram",
        "percentile",
        "entropy",
        "mse",
    ]
    assert isinstance(make_observer("percentile", percentile=99.0), PercentileObserver)
    assert make_observer("percentile", percentile=99.0).percentile == 99.0
    assert isinstance(make_observer("mse"), MSEObserver)
    with pytest.raises(ValueError, match="unknown observer 'kl'.*minmax.*entropy.*mse"):
        make_observer("kl")
    with pytest.raises(TypeError, match="observer name"):
        make_observer(MinMaxObserver)
    with pytest.raises(TypeError, match="'minmax'.*bins"):
        make_observer("minmax", bins=10)


# ---------------------------------------------------------------------------------------
# One settings object, checked once; the statistics every observer declares
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_a_settings_object_and_its_fields_by_name_build_the_same_observer(name):
    fields = {"dtype": torch.int8, "symmetric": True, "quant_min": -64, "quant_max": 63}
    by_object = make_observer(name, settings=ObserverSettings(**fields))
    by_name = make_observer(name, **fields)
    assert by_object.settings == by_name.settings == ObserverSettings(**fields)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    by_object(x)
    by_name(x)
    for ours, theirs in zip(
        by_object.calculate_qparams(), by_name.calculate_qparams(), strict=True
    ):
        assert torch.equal(ours, theirs)
    assert (by_object.quant_min, by_object.quant_max, by_object.dtype) == (-64, 63, torch.int8)


def test_fields_by_name_override_the_settings_object():
    base = ObserverSettings(dtype=torch.int8, symmetric=True)
    observer = MinMaxObserver(base, reduce_range=True)
    assert observer.settings == ObserverSettings(torch.int8, True, True)
    assert (observer.quant_min, observer.quant_max) == (-64, 63)
    assert base.reduce_range is False  # the object passed in is not changed


def test_settings_are_checked_once_and_frozen():
    with pytest.raises(ValueError, match="smaller than quant_max"):
        ObserverSettings(quant_min=5, quant_max=5)
    with pytest.raises(TypeError, match="symmetric"):
        ObserverSettings(symmetric=1)
    settings = ObserverSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.symmetric = True
    custom = ObserverSettings(quant_min=0, quant_max=15, reduce_range=True)
    assert (custom.quant_min, custom.quant_max) == (0, 15)  # as given
    assert custom.integer_range() == (0, 7)  # as used


def test_settings_of_the_wrong_kind_or_unknown_names_are_type_errors():
    with pytest.raises(TypeError, match="settings: expected an ObserverSettings, got torch.int8"):
        MinMaxObserver(torch.int8)
    with pytest.raises(TypeError, match="MinMaxObserver: unexpected argument 'bins'"):
        MinMaxObserver(bins=10)
    with pytest.raises(TypeError, match="PercentileObserver: unexpected argument 'percentil'"):
        PercentileObserver(percentil=99.0)


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_every_observer_declares_min_val_max_val_and_ch_axis(name):
    observer = make_observer(name)
    buffers = dict(observer.named_buffers())
    assert "min_val" in buffers and "max_val" in buffers
    expected_axis = 0 if name == "per_channel_minmax" else None
    assert observer.ch_axis == expected_axis
    observer(torch.tensor([[-1.0, 2.0], [0.5, 3.0]]))
    assert "min_val" in observer.state_dict() and "max_val" in observer.state_dict()
    assert float(observer.min_val.min()) == -1.0 and float(observer.max_val.max()) == 3.0


# ---------------------------------------------------------------------------------------
# Bad input: a clear error, never a NaN or zero scale
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_qparams_before_any_data_is_an_error(name):
    observer = make_observer(name)
    with pytest.raises(RuntimeError, match="no data observed yet"):
        observer.calculate_qparams()
    with pytest.raises(RuntimeError, match="no data observed yet"):
        observer.qparams()


@pytest.mark.parametrize("name", list(OBSERVERS))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nan_or_inf_is_an_error_and_changes_nothing(name, bad):
    observer = make_observer(name)
    observer(torch.tensor([[0.5, 1.0], [2.0, -1.0]]))
    before = observer.calculate_qparams()
    with pytest.raises(ValueError, match="NaN or Inf"):
        observer(torch.tensor([[0.0, bad], [1.0, 2.0]]))
    for ours, theirs in zip(observer.calculate_qparams(), before, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_other_bad_batches_are_errors(name):
    observer = make_observer(name)
    with pytest.raises(ValueError, match="empty"):
        observer(torch.empty(0, 3))
    with pytest.raises(TypeError, match="float tensor"):
        observer(torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        observer([[1.0, 2.0]])
    with pytest.raises(ValueError, match="NaN or Inf"):
        observer(torch.tensor([[1e300, 0.0]], dtype=torch.float64))  # overflows float32
    assert observer.batches_seen == 0


@pytest.mark.parametrize("ch_axis", [2, -3, 5])
def test_ch_axis_out_of_range_is_an_error(ch_axis):
    observer = PerChannelMinMaxObserver(ch_axis=ch_axis)
    with pytest.raises(ValueError, match="out of range"):
        observer(torch.randn(3, 4))
    with pytest.raises(TypeError, match="ch_axis"):
        PerChannelMinMaxObserver(ch_axis=1.0)


def test_per_channel_count_must_not_change():
    observer = PerChannelMinMaxObserver()
    observer(torch.randn(3, 4))
    with pytest.raises(ValueError, match="channels"):
        observer(torch.randn(5, 4))


@pytest.mark.parametrize("name", list(OBSERVERS))
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"quant_min": 5, "quant_max": 5}, ValueError, "smaller than quant_max"),
        ({"quant_min": 10, "quant_max": 3}, ValueError, "smaller than quant_max"),
        ({"quant_min": 0}, ValueError, "both or neither"),
        ({"quant_min": 1, "quant_max": 10}, ValueError, "include 0"),
        ({"quant_min": 0, "quant_max": 300}, ValueError, "does not fit"),
        ({"dtype": torch.float32}, TypeError, "dtype"),
        ({"symmetric": "yes"}, TypeError, "symmetric"),
        ({"reduce_range": 1}, TypeError, "reduce_range"),
    ],
)
def test_bad_settings_are_errors(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_observer(name, **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, error",
    [
        ("moving_average_minmax", {"averaging_constant": 0.0}, ValueError),
        ("moving_average_minmax", {"averaging_constant": 1.5}, ValueError),
        ("moving_average_minmax", {"averaging_constant": "0.1"}, TypeError),
        ("histogram", {"bins": 0}, ValueError),
        ("entropy", {"bins": 2.5}, ValueError),
        ("percentile", {"percentile": 0.0}, ValueError),
        ("percentile", {"percentile": 100.5}, ValueError),
        ("percentile", {"percentile": None}, TypeError),
        ("mse", {"num_candidates": 0}, ValueError),
    ],
)
def test_bad_observer_arguments_are_errors(name, kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        make_observer(name, **kwargs)


@pytest.mark.parametrize("name", list(OBSERVERS))
@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_input_gives_a_positive_finite_scale(name, value):
    observer = make_observer(name)
    observer(torch.full((4, 5), value))
    scale, zero_point = observer.calculate_qparams()
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert bool((scale >= EPS).all())


@settings(max_examples=20, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=50),
    name=st.sampled_from(list(OBSERVERS)),
    symmetric=st.booleans(),
)
def test_scale_is_always_positive_and_finite(values, name, symmetric):
    observer = make_observer(name, dtype=torch.int8, symmetric=symmetric)
    observer(torch.tensor(values).reshape(1, -1))
    scale, zero_point = observer.calculate_qparams()
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert bool(((zero_point >= -128) & (zero_point <= 127)).all())
