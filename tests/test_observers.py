"""Tests for ptqlib.observers: exactness against torch.ao, the histogram search, the
percentile / entropy / MSE observers, the common interface and every bad input.

torch.ao is reached only through ptqlib.reference, which filters its deprecation warnings.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptqlib.data import calibration_images
from ptqlib.observers import (
    OBSERVERS,
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    PerChannelMinMaxObserver,
    make_observer,
)
from ptqlib.quantization import EPS, QParams, fake_quantize, mse
from ptqlib.reference import deprecated_api, torch_histogram_range, torch_observer
from ptqlib.train import load_or_train_baseline

PER_TENSOR = [name for name in OBSERVERS if name != "per_channel_minmax"]
HISTOGRAM_BASED = ["histogram", "percentile", "entropy", "mse"]

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
# HistogramObserver: torch.ao's algorithm, within one bin of its range
# ---------------------------------------------------------------------------------------


def compare_histograms(xs: list[torch.Tensor], **kwargs) -> float:
    """Feed both histogram observers; check their histograms agree and return the
    distance between their chosen ranges, in bins."""
    ours = HistogramObserver(**kwargs)
    with deprecated_api():
        theirs = torch_observer("HistogramObserver", **kwargs)
        for x in xs:
            ours(x)
            theirs(x)
    assert float(ours.min_val) == float(theirs.min_val)
    assert float(ours.max_val) == float(theirs.max_val)
    torch.testing.assert_close(ours.histogram, theirs.histogram, rtol=1e-5, atol=1e-3)
    low, high = ours.clipping_range()
    torch_low, torch_high = torch_histogram_range(theirs)
    bin_width = float(ours.max_val - ours.min_val) / ours.bins
    if bin_width == 0.0:
        assert float(low) == float(torch_low) and float(high) == float(torch_high)
        return 0.0
    return max(abs(float(low - torch_low)), abs(float(high - torch_high))) / bin_width


@pytest.fixture(scope="module")
def simplenet_activations(offline_data):
    """The outputs of every SimpleNet layer on 1,000 calibration images, in 10 batches."""
    model, _ = load_or_train_baseline(offline_data, progress=False)
    images = calibration_images(offline_data.train, 1000)
    outputs = {name: [] for name, _ in model.named_children()}
    handles = [
        module.register_forward_hook(lambda m, i, output, name=name: outputs[name].append(output))
        for name, module in model.named_children()
    ]
    with torch.no_grad():
        for batch in images.split(100):
            model(batch)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("layer", ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"])
def test_histogram_range_within_one_bin_on_simplenet(simplenet_activations, layer):
    assert compare_histograms(simplenet_activations[layer]) <= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"bins": 256},
        {"bins": 100, "dtype": torch.int8, "symmetric": True},
        {"reduce_range": True},
    ],
    ids=["default", "256-bins", "100-bins-int8-sym", "reduce-range"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_range_within_one_bin_on_synthetic_data(kwargs, seed):
    generator = torch.Generator().manual_seed(seed)
    xs = [torch.randn(2000, generator=generator) * (1 + index) + index for index in range(4)]
    xs.append(torch.relu(torch.randn(3000, generator=generator)) * 3)
    xs[2][:3] = torch.tensor([40.0, -30.0, 55.0])  # outliers
    assert compare_histograms(xs, **kwargs) <= 1.0


def test_histogram_handles_a_constant_first_batch():
    xs = [torch.full((50,), 2.0), torch.randn(500, generator=torch.Generator().manual_seed(0))]
    assert compare_histograms(xs) <= 1.0
    assert compare_histograms([torch.full((10,), -1.5)]) == 0.0


def random_batches(seed: int, kind: str, scale: float, sizes: list[int]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    xs = []
    for index, size in enumerate(sizes):
        if kind == "uniform":
            x = torch.rand(size, generator=generator)
        elif kind == "exponential":
            x = -torch.log(torch.rand(size, generator=generator).clamp(min=1e-12))
        else:
            x = torch.randn(size, generator=generator)
        if kind == "relu":
            x = torch.relu(x)
        xs.append(x * scale * (index + 1) + index * scale)
    return xs


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(["normal", "uniform", "relu", "exponential"]),
    scale=st.floats(1e-3, 1e3),
    sizes=st.lists(st.integers(10, 500), min_size=1, max_size=3),
)
def test_histogram_within_one_bin_on_random_data(seed, kind, scale, sizes):
    assert compare_histograms(random_batches(seed, kind, scale, sizes), bins=64) <= 1.0


@pytest.mark.parametrize(
    "values", [[0.0, 1.0], [-5.0, 0.0, 0.0, 0.0, 7.0]], ids=["two-values", "three-values"]
)
def test_histogram_within_one_bin_on_a_few_distinct_values(values):
    # The search runs (almost) all its 100,000 steps here: slow for torch.ao.
    assert compare_histograms([torch.tensor(values)], bins=64) <= 1.0


def test_histogram_keeps_every_count():
    observer = HistogramObserver(bins=128)
    generator = torch.Generator().manual_seed(0)
    for scale in (1.0, 3.0, 10.0):
        observer(torch.randn(1000, generator=generator) * scale)
    assert float(observer.histogram.sum()) == pytest.approx(3000.0, rel=1e-5)


def test_histogram_choice_has_no_more_error_than_the_full_range():
    # The search accepts a candidate only if its error is no larger than the last one's.
    generator = torch.Generator().manual_seed(0)
    observer = HistogramObserver(bins=256)
    observer(torch.randn(20000, generator=generator))
    low, high = observer.clipping_range()
    bin_width = float(observer.max_val - observer.min_val) / observer.bins
    first = round(float(low - observer.min_val) / bin_width)
    last = round(float(high - observer.min_val) / bin_width) - 1
    full = observer.quantization_error(0, observer.bins - 1)
    assert observer.quantization_error(first, last) <= full


# ---------------------------------------------------------------------------------------
# Percentile, entropy and MSE observers
# ---------------------------------------------------------------------------------------


def few_big_outliers() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=generator)
    x[:5] = torch.tensor([100.0, -80.0, 60.0, 90.0, -100.0])
    return x


def heavy_tailed() -> torch.Tensor:
    """Student's t with 3 degrees of freedom: many moderate outliers."""
    generator = torch.Generator().manual_seed(1)
    normal = torch.randn(100_000, generator=generator)
    chi_square = (torch.randn(100_000, 3, generator=generator) ** 2).sum(dim=1)
    return normal / torch.sqrt(chi_square / 3)


def observe_all(name: str, x: torch.Tensor, **kwargs):
    observer = make_observer(name, **kwargs)
    for batch in x.split(20_000):
        observer(batch)
    return observer


def max_abs(observer) -> float:
    low, high = observer.clipping_range()
    return max(-float(low), float(high))


@pytest.mark.parametrize("data", [few_big_outliers, heavy_tailed])
@pytest.mark.parametrize("name", ["percentile", "entropy"])
def test_percentile_and_entropy_clip_much_tighter_than_minmax(data, name):
    x = data()
    clipped = max_abs(observe_all(name, x))
    assert clipped < 0.65 * max_abs(observe_all("minmax", x))
    assert clipped > 2.0  # but they keep the bulk of a unit-scale distribution


@pytest.mark.parametrize("data", [few_big_outliers, heavy_tailed])
@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_observer_is_no_worse_than_minmax(data, symmetric):
    x = data()
    dtype = torch.int8 if symmetric else torch.uint8
    minmax = observe_all("minmax", x, dtype=dtype, symmetric=symmetric)
    best = observe_all("mse", x, dtype=dtype, symmetric=symmetric)
    assert max_abs(best) < max_abs(minmax)
    assert mse(x, fake_quantize(x, best.qparams())) <= mse(x, fake_quantize(x, minmax.qparams()))


def test_mse_observer_scores_are_the_fake_quantization_error():
    observer = observe_all("mse", heavy_tailed(), num_candidates=10)
    fractions, errors = observer.errors()
    assert fractions.tolist() == pytest.approx([k / 10 for k in range(1, 11)])
    # The histogram's own estimate of the c = 1 (min/max) error is close to the real one.
    x = heavy_tailed()
    real = mse(x, fake_quantize(x, observe_all("minmax", x).qparams()))
    assert float(errors[-1]) == pytest.approx(real, rel=0.1)


@pytest.mark.parametrize("percentile", [90.0, 99.0, 99.9])
def test_percentile_matches_the_quantile_of_abs_x(percentile):
    x = heavy_tailed()
    observer = observe_all("percentile", x, percentile=percentile)
    expected = float(torch.quantile(x.abs(), percentile / 100))
    bin_width = max(-float(x.min()), float(x.max())) / observer.bins
    assert max_abs(observer) == pytest.approx(expected, abs=2 * bin_width)


def test_percentile_100_keeps_the_whole_range():
    x = heavy_tailed()
    observer = observe_all("percentile", x, percentile=100.0)
    low, high = observer.clipping_range()
    assert float(low) == float(x.min())
    assert float(high) == pytest.approx(float(x.max()), rel=1e-3)


def kl_by_definition(counts: torch.Tensor, kept: int, levels: int) -> float:
    """TensorRT's KL(P || Q) for a threshold of ``kept`` bins, written out plainly."""
    counts = counts.double().clone()
    counts[0] = counts[1]
    reference = counts[:kept].clone()
    reference[-1] += counts[kept:].sum()
    candidate = torch.zeros(kept, dtype=torch.float64)
    for cell in range(levels):
        members = [j for j in range(kept) if j * levels // kept == cell and counts[j] > 0]
        for j in members:
            candidate[j] = sum(float(counts[m]) for m in members) / len(members)
    p = reference / reference.sum()
    q = candidate / candidate.sum()
    divergence = 0.0
    for j in range(kept):
        if p[j] > 0:
            if q[j] == 0:
                return math.inf
            divergence += float(p[j] * torch.log(p[j] / q[j]))
    return divergence


def test_entropy_divergences_match_the_definition():
    generator = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 20, (64,), generator=generator).float()
    counts[counts < 4] = 0  # some empty bins, as in real histograms
    observer = EntropyObserver(bins=64, dtype=torch.int8, symmetric=True, quant_min=-8, quant_max=7)
    observer(torch.linspace(-1, 1, 10))  # sets min_val < 0, so 8 levels on each side
    levels = observer.magnitude_levels()
    assert levels == 8
    kept_bins, divergences = observer.divergences(counts)
    assert kept_bins.tolist() == list(range(8, 65))
    for kept, divergence in zip(kept_bins.tolist(), divergences.tolist(), strict=True):
        expected = kl_by_definition(counts, kept, levels)
        if math.isinf(expected):
            assert math.isinf(divergence)
        else:
            assert divergence == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_entropy_uses_all_levels_for_affine_non_negative_data():
    observer = EntropyObserver()
    observer(torch.relu(torch.randn(100)))
    assert observer.magnitude_levels() == 256
    symmetric = EntropyObserver(dtype=torch.int8, symmetric=True)
    symmetric(torch.relu(torch.randn(100)))
    assert symmetric.magnitude_levels() == 128


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


def test_histogram_observers_share_one_histogram_of_the_data():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    histograms = [observe_all(name, x, bins=128).histogram for name in HISTOGRAM_BASED]
    for histogram in histograms[1:]:
        assert torch.equal(histogram, histograms[0])
    edges = observe_all("entropy", x, bins=128).bin_edges()
    assert edges.shape == (129,)
    assert float(edges[0]) == float(x.min()) and float(edges[-1]) == float(x.max())


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
