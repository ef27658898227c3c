"""The observers that clip on purpose: they keep a histogram of all values, then search it.

Min/max (``ptqlib.observers``) never clips, so one outlier decides the scale. These
observers keep a histogram of everything seen (:class:`HistogramRecorder`, the same
histogram as torch.ao's HistogramObserver) and choose a narrower clipping range from it:

- ``HistogramObserver``: torch.ao's greedy search for the range with the smallest L2
  quantization error (the search is in ``ptqlib.observers.l2_search``);
- ``PercentileObserver``: clip at the p-th percentile of |x| (e.g. 99.99);
- ``EntropyObserver``: TensorRT's threshold, the smallest KL divergence between the
  histogram of |x| and its quantized version;
- ``MSEObserver``: shrink the range step by step and keep the one whose quantized values
  have the smallest mean squared error.

Each takes its own arguments (``bins``, ``percentile``, ``num_candidates``) and then the
settings of every observer (``ptqlib.observers.base.ObserverSettings``).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from ptqlib.errors import InputError
from ptqlib.observers.base import Observer, ObserverSettings, check_positive_int
from ptqlib.observers.l2_search import search_range
from ptqlib.quantization import fake_quantize

# Each histogram bin is split into this many equal sub-bins whenever a histogram is
# re-binned (torch.ao's ``upsample_rate``): each sub-bin carries 1/16 of the bin's count
# and moves as a whole to the new bin that holds its midpoint.
SUB_BINS = 16


def _spread(
    histogram: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split every bin of a histogram over [low, high] into SUB_BINS equal sub-bins.

    Returns the midpoint of every sub-bin and the count it carries (1/SUB_BINS of its
    bin's count): the histogram as weighted points, ready to be binned again.
    """
    bins = histogram.numel()
    counts = histogram.repeat_interleave(SUB_BINS) / SUB_BINS
    sub_width = (high - low) / (bins * SUB_BINS)
    starts = torch.linspace(float(low), float(high), bins * SUB_BINS + 1)[:-1]
    return starts + 0.5 * sub_width, counts


def _collect(
    points: torch.Tensor, counts: torch.Tensor, low: float, high: float, bins: int
) -> torch.Tensor:
    """A histogram of weighted ``points`` with ``bins`` equal bins over [low, high].

    Points outside the range (only by float rounding, as used here) go to the end bins.
    """
    edges = torch.linspace(low, high, bins + 1)
    which_bin = (torch.bucketize(points, edges, right=True) - 1).clamp(0, bins - 1)
    return torch.bincount(which_bin, weights=counts, minlength=bins)


def _rebin(
    histogram: torch.Tensor,
    old_low: torch.Tensor,
    old_high: torch.Tensor,
    new_low: torch.Tensor,
    new_high: torch.Tensor,
) -> torch.Tensor:
    """Move a histogram over [old_low, old_high] onto the wider range [new_low, new_high].

    torch.ao's ``_upscale_histogram``: each sub-bin's count goes to the new bin that
    holds the sub-bin's midpoint.
    """
    points, counts = _spread(histogram, old_low, old_high)
    return _collect(points, counts, float(new_low), float(new_high), histogram.numel())


class HistogramRecorder(Observer):
    """The base of the histogram observers: a histogram of every value seen.

    The histogram has ``bins`` equal bins over ``[min_val, max_val]``, the range of all
    data so far, exactly as torch.ao's HistogramObserver keeps it: the first batch sets the
    range; when a later batch widens it, the new batch is binned over the new range and the
    old histogram is re-binned onto it (:func:`_rebin`) and added.

    Subclasses choose a clipping range from the histogram in :meth:`_search_range`.
    """

    def __init__(
        self,
        bins: int = 2048,
        settings: ObserverSettings | None = None,
        **overrides: object,
    ) -> None:
        super().__init__(settings, **overrides)
        check_positive_int(bins, "bins")
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins))

    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        if self.batches_seen == 0:
            self.histogram.copy_(
                torch.histc(x, self.bins, min=float(batch_min), max=float(batch_max))
            )
            self.min_val.copy_(batch_min)
            self.max_val.copy_(batch_max)
            return
        new_min = torch.min(batch_min, self.min_val)
        new_max = torch.max(batch_max, self.max_val)
        batch_histogram = torch.histc(x, self.bins, min=float(new_min), max=float(new_max))
        if new_min == self.min_val and new_max == self.max_val:
            self.histogram += batch_histogram
            return
        if self.min_val == self.max_val:
            # All earlier values were one number: put their whole count in its new bin.
            # (torch.histc puts the count of a single value into the middle bin.)
            earlier = (
                torch.histc(self.min_val, self.bins, min=float(new_min), max=float(new_max))
                * self.histogram.sum()
            )
        else:
            earlier = _rebin(self.histogram, self.min_val, self.max_val, new_min, new_max)
        self.histogram.copy_(batch_histogram + earlier)
        self.min_val.copy_(new_min)
        self.max_val.copy_(new_max)

    def _reset_statistics(self) -> None:
        super()._reset_statistics()
        self.histogram.zero_()

    def bin_edges(self) -> torch.Tensor:
        """The ``bins + 1`` edges of the histogram's bins (for plotting it)."""
        if self.batches_seen == 0:
            raise RuntimeError(f"{type(self).__name__}: no data observed yet, so no histogram")
        return torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1)

    def _choose_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val == self.max_val:
            return self.min_val.clone(), self.max_val.clone()  # one value: nothing to clip
        return self._search_range()

    @abstractmethod
    def _search_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipping range chosen from a histogram with min_val < max_val."""

    def _describe_statistics(self) -> str:
        return f"observed range [{self.min_val.item():.4g}, {self.max_val.item():.4g}]"

    def _magnitude_histogram(self) -> tuple[torch.Tensor, float]:
        """The histogram of |x|: ``bins`` equal bins over [0, max |x|], and max |x|."""
        largest = max(-float(self.min_val), float(self.max_val))
        points, counts = _spread(self.histogram, self.min_val, self.max_val)
        return _collect(points.abs(), counts, 0.0, largest, self.bins), largest

    def _clip_symmetrically(self, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The range [-threshold, threshold], intersected with the observed range."""
        min_val = torch.clamp(self.min_val, min=-threshold)
        max_val = torch.clamp(self.max_val, max=threshold)
        return min_val, max_val


class HistogramObserver(HistogramRecorder):
    """A histogram of all values, then the range with the smallest L2 quantization error.

    A port of ``torch.ao.quantization.HistogramObserver``: the same histogram, and the same
    greedy search from the full histogram towards the range [first bin, last bin] whose
    quantization error is smallest (:func:`ptqlib.observers.l2_search.search_range`, which
    explains the algorithm and repeats torch.ao's float rounding so it chooses the same
    bins). The result is the range from the start of the first bin to the end of the last.
    As in torch.ao, the error assumes ``levels`` = 2^8 = 256 quantization levels whatever
    ``quant_min``/``quant_max`` or ``reduce_range`` say; only the final qparams use them.
    """

    @property
    def levels(self) -> int:
        """The quantization levels the search's error assumes (torch.ao's ``dst_nbins``)."""
        return 2 ** torch.iinfo(self.dtype).bits

    def _search_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return search_range(self.histogram, self.min_val, self.max_val, self.levels)


class PercentileObserver(HistogramRecorder):
    """Clip at the ``percentile``-th percentile of |x| (default 99.99).

    With threshold t chosen so that ``percentile`` % of all values satisfy |x| <= t, the
    range is [-t, t] intersected with the observed range (so [0, t] after a ReLU). The
    few largest values, often outliers, are clamped to +-t; everything else gets a finer
    grid. t is read from the histogram of |x|, interpolating linearly inside a bin.
    """

    def __init__(
        self,
        percentile: float = 99.99,
        bins: int = 2048,
        settings: ObserverSettings | None = None,
        **overrides: object,
    ) -> None:
        super().__init__(bins, settings, **overrides)
        if isinstance(percentile, bool) or not isinstance(percentile, int | float):
            raise TypeError(f"percentile: expected a number, got {percentile!r}")
        if not 0.0 < percentile <= 100.0:
            raise InputError(f"percentile: expected a number in (0, 100], got {percentile!r}")
        self.percentile = percentile

    def _search_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        magnitudes, largest = self._magnitude_histogram()
        if largest == 0.0:
            return self.min_val.clone(), self.max_val.clone()
        cumulative = magnitudes.double().cumsum(0)
        wanted = self.percentile / 100.0 * float(cumulative[-1])
        # The first bin whose cumulative count reaches the wanted count ...
        bin_index = min(int(torch.searchsorted(cumulative, wanted)), self.bins - 1)
        before = float(cumulative[bin_index - 1]) if bin_index > 0 else 0.0
        in_bin = float(magnitudes[bin_index])
        # ... and how far into that bin, taking its values as spread evenly.
        fraction = (wanted - before) / in_bin if in_bin > 0 else 1.0
        threshold = (bin_index + min(max(fraction, 0.0), 1.0)) * largest / self.bins
        return self._clip_symmetrically(threshold)


class EntropyObserver(HistogramRecorder):
    """TensorRT's entropy calibration: the threshold whose quantization loses least information.

    On the histogram of |x| (``bins`` bins h_0, h_1, ... over [0, max |x|]), for every
    candidate threshold of i bins (i = levels .. bins):

    - P: the first i bins, with the count of all larger values (the clipped outliers)
      added to bin i-1;
    - Q: the first i bins quantized to ``levels`` cells (bin j is in cell
      floor(j * levels / i)): each cell's count is shared equally among its non-empty
      bins, and empty bins stay empty;
    - the Kullback-Leibler divergence KL(P || Q) = sum_j P_j log(P_j / Q_j), after
      normalising both to sum to 1 (infinite if P_j > 0 where Q_j = 0).

    The threshold t is the end of bin i with the smallest divergence (the largest such
    i on ties), and the range is [-t, t] intersected with the observed range.
    ``levels`` is the number of integer levels on one side of zero: the whole range for
    affine quantization of non-negative data (e.g. after a ReLU), half of it otherwise.
    As NVIDIA's pytorch-quantization does, the first bin's count is replaced by the
    second's: the spike of exact zeros after a ReLU is exactly representable and should
    not dominate the divergence. Also as there, a threshold whose last kept bin is empty
    while larger values exist scores infinity (MXNet and ONNX Runtime smooth P and Q
    instead), so the threshold always ends on a non-empty bin.
    """

    def magnitude_levels(self) -> int:
        """How many integer levels cover [0, t]: all of them only for affine, non-negative data."""
        levels = self.quant_max - self.quant_min + 1
        if self.symmetric or float(self.min_val) < 0:
            return levels // 2
        return levels

    def _search_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        magnitudes, largest = self._magnitude_histogram()
        if largest == 0.0:
            return self.min_val.clone(), self.max_val.clone()
        kept_bins, divergences = self.divergences(magnitudes)
        smallest = divergences.min()
        best = int(kept_bins[divergences == smallest].max())  # the largest i on ties
        return self._clip_symmetrically(best * largest / self.bins)

    def divergences(self, magnitudes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(P || Q) for every candidate number of kept bins i; returns (i, divergence).

        Computed for all candidates at once from running sums instead of building P and
        Q: with T the total count, Z = sum_{j<i} h_j the count below the threshold,
        S_k and n_k the count and the number of non-empty bins of cell k, every kept
        non-empty bin j of cell k has P_j = h_j / T and Q_j = S_k / (n_k Z), so

            KL = (1/T) [sum_{j<i} h_j log h_j - sum_k S_k log(S_k / n_k)] + (Z/T) log(Z/T)

        plus a correction for bin i-1, whose P also holds the outliers O = T - Z.
        (The tests check this against the definition.)
        """
        counts = magnitudes.double().clone()
        if self.bins > 1:
            counts[0] = counts[1]
        levels = min(self.magnitude_levels(), self.bins)
        kept_bins = torch.arange(levels, self.bins + 1)  # the candidates i

        def running_sum(values: torch.Tensor) -> torch.Tensor:  # r[j] = sum of values[:j]
            return torch.cat([values.new_zeros(1), values.cumsum(0)])

        count_below = running_sum(counts)
        nonempty_below = running_sum((counts > 0).double())
        entropy_terms = torch.where(counts > 0, counts * torch.log(counts), 0.0)
        entropy_below = running_sum(entropy_terms)
        total = float(count_below[-1])

        # Cell k of candidate i covers bins ceil(k i / levels) .. ceil((k + 1) i / levels) - 1.
        cell = torch.arange(levels + 1)
        cell_start = (cell[None, :] * kept_bins[:, None] + levels - 1) // levels  # [i, k]
        cell_count = count_below[cell_start[:, 1:]] - count_below[cell_start[:, :-1]]
        cell_nonempty = nonempty_below[cell_start[:, 1:]] - nonempty_below[cell_start[:, :-1]]
        cell_average = cell_count / cell_nonempty.clamp(min=1)
        cell_terms = torch.where(cell_count > 0, cell_count * torch.log(cell_average), 0.0)

        below = count_below[kept_bins]  # Z
        divergence = (entropy_below[kept_bins] - cell_terms.sum(dim=1)) / total
        divergence += torch.where(below > 0, below / total * torch.log(below / total), 0.0)

        # Bin i-1: P_j = (h_j + O) / T instead of h_j / T; Q_j = average of the last cell / Z.
        last = counts[kept_bins - 1]
        outliers = total - below
        log_q_last = torch.log(cell_average[:, -1].clamp(min=1e-300) / below.clamp(min=1e-300))
        p_last = (last + outliers) / total
        with_outliers = p_last * (torch.log(p_last) - log_q_last)
        without = torch.where(last > 0, last / total * (torch.log(last / total) - log_q_last), 0.0)
        divergence += torch.where(outliers > 0, with_outliers - without, 0.0)
        # P > 0 where Q = 0: the outliers land in an empty bin, or nothing is kept at all.
        impossible = (below == 0) | ((last == 0) & (outliers > 0))
        return kept_bins, torch.where(impossible, math.inf, divergence)


class MSEObserver(HistogramRecorder):
    """The clipping range whose quantized values have the smallest mean squared error.

    Candidates shrink the observed range (widened to include 0) towards 0 by a factor
    c = 1/n, 2/n, ..., 1 (n = ``num_candidates``): [c * min(min_val, 0), c * max(max_val, 0)].
    Each is scored by the MSE between the histogram's values and their fake-quantized
    values (quantize, then dequantize, with the qparams of that range):
    ``sum counts * (x - fq(x))^2 / sum counts``, every bin represented by 16 evenly spaced
    points that share its count. The candidate with the smallest MSE wins; c = 1 is plain
    min/max, so on the histogram the result is never worse than min/max.
    """

    def __init__(
        self,
        num_candidates: int = 100,
        bins: int = 2048,
        settings: ObserverSettings | None = None,
        **overrides: object,
    ) -> None:
        super().__init__(bins, settings, **overrides)
        check_positive_int(num_candidates, "num_candidates")
        self.num_candidates = num_candidates

    def _search_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        fractions, errors = self.errors()
        best = fractions[int(torch.argmin(errors))]
        return self._scaled_range(best)

    def _scaled_range(self, fraction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The range widened to include 0, times ``fraction`` (one value or a tensor of them)."""
        low = torch.clamp(self.min_val, max=0.0) * fraction
        high = torch.clamp(self.max_val, min=0.0) * fraction
        return low, high

    def errors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fraction c of every candidate and its MSE on the histogram (x's units squared)."""
        fractions = torch.arange(1, self.num_candidates + 1) / self.num_candidates
        low, high = self._scaled_range(fractions)
        # One candidate per row: as per-channel qparams along axis 0, fake_quantize
        # scores every candidate in one call.
        qparams = self.settings.qparams_from_range(low, high, axis=0)
        points, counts = _spread(self.histogram, self.min_val, self.max_val)
        values = points.expand(self.num_candidates, -1)
        squared = (values - fake_quantize(values, qparams)) ** 2
        errors = (squared.double() * counts.double()).sum(dim=1) / counts.double().sum()
        return fractions, errors
