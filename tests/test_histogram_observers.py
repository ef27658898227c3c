"""Tests for ptqlib.observers.histogram and ptqlib.observers.l2_search: the histogram
search against torch.ao, the percentile / entropy / MSE observers, and the histogram they
share.

torch.ao is reached only through ptqlib.reference, which filters its deprecation warnings.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptqlib.data import calibration_images
from ptqlib.observers import make_observer
from ptqlib.observers.histogram import EntropyObserver, HistogramObserver
from ptqlib.observers.l2_search import quantization_error, search_bin_width
from ptqlib.quantization import fake_quantize, mse
from ptqlib.reference.torch_eager import deprecated_api, torch_histogram_range, torch_observer
from ptqlib.training import load_or_train_baseline

HISTOGRAM_BASED = ["histogram", "percentile", "entropy", "mse"]

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

    def error(first_bin: int, last_bin: int) -> float:
        width = search_bin_width(observer.min_val, observer.max_val, observer.bins)
        return quantization_error(observer.histogram, width, first_bin, last_bin, observer.levels)

    assert error(first, last) <= error(0, observer.bins - 1)


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


def test_histogram_observers_share_one_histogram_of_the_data():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    histograms = [observe_all(name, x, bins=128).histogram for name in HISTOGRAM_BASED]
    for histogram in histograms[1:]:
        assert torch.equal(histogram, histograms[0])
    edges = observe_all("entropy", x, bins=128).bin_edges()
    assert edges.shape == (129,)
    assert float(edges[0]) == float(x.min()) and float(edges[-1]) == float(x.max())
