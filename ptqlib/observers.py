"""Observers: small modules that watch tensors go by and then choose a scale and zero-point.

An observer is called like a layer, ``obs(x)``: it records some statistics of ``x`` and
returns ``x`` unchanged, so it can sit anywhere in a model during calibration. Afterwards
``obs.calculate_qparams()`` turns what it saw into ``(scale, zero_point)``. Every observer
here works in two steps:

1. choose a *clipping range* ``[min_val, max_val]`` from the statistics
   (:meth:`Observer.clipping_range`); values outside it will be clamped;
2. turn the range into qparams with :func:`ptqlib.quantization.qparams_from_range`
   (which first widens the range to include 0; see ``ptqlib.quantization``).

The observers differ only in step 1:

- ``MinMaxObserver``: the smallest and largest value seen in all batches.
- ``MovingAverageMinMaxObserver``: min and max averaged over batches, m <- m + c (m_batch - m).
- ``PerChannelMinMaxObserver``: min and max of every slice along ``ch_axis`` (for weights).
- ``HistogramObserver``: a histogram of all values, then torch.ao's greedy search for the
  range with the smallest L2 quantization error.
- ``PercentileObserver``: clip at the p-th percentile of |x| (e.g. 99.99).
- ``EntropyObserver``: TensorRT's threshold, the smallest KL divergence between the
  histogram of |x| and its quantized version.
- ``MSEObserver``: shrink the range step by step and keep the one whose quantized values
  have the smallest mean squared error.

The min/max observers reproduce ``torch.ao.quantization``'s observers exactly; the
HistogramObserver ports torch.ao's algorithm (the tests compare both). Their arguments
mirror torch.ao's, except that ``symmetric: bool`` replaces ``qscheme`` and ``dtype`` is
the plain ``torch.uint8`` / ``torch.int8``.

Unlike torch.ao, bad input is an error here, never a silent NaN or a default scale:
an empty tensor, NaN or Inf in the input, asking for qparams before any data, a
``ch_axis`` that the input does not have, or ``quant_min >= quant_max``.
"""

from __future__ import annotations

import bisect
import functools
import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from ptqlib.quantization import (
    QParams,
    check_finite,
    check_float_tensor,
    fake_quantize,
    normalise_axis,
    qparams_from_range,
    quant_range,
)

# Each histogram bin is split into this many equal sub-bins whenever a histogram is
# re-binned (torch.ao's ``upsample_rate``): each sub-bin carries 1/16 of the bin's count
# and moves as a whole to the new bin that holds its midpoint.
SUB_BINS = 16

# torch.ao's L2 search moves the quantile bounds alpha (low) and beta (high) in steps of
# 1e-5, i.e. at most 100,000 steps from (0, 1) until they meet.
QUANTILE_STEP = 1e-5
MAX_QUANTILE_STEPS = 100_100  # 100,000 plus a margin for the rounding of the running sums


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def _check_positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive whole number, got {value!r}")


class Observer(nn.Module, ABC):
    """The common interface: ``obs(x)`` records, ``calculate_qparams()`` chooses.

    Args:
        dtype: ``torch.uint8`` (0..255) or ``torch.int8`` (-128..127), the stored integers.
        symmetric: a range symmetric around 0 (zero-point 0 for int8, 128 for uint8)
            instead of an affine one that fits [min, max] exactly.
        reduce_range: use one bit less (0..127 or -64..63), as some x86 kernels need.
        quant_min, quant_max: a custom integer range instead (give both), e.g. 0..15.
    """

    per_channel = False

    def __init__(
        self,
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__()
        _check_bool(symmetric, "symmetric")
        _check_bool(reduce_range, "reduce_range")
        # quant_range checks dtype and the custom range (both given, quant_min < quant_max,
        # includes 0, fits in dtype) and applies reduce_range.
        self.quant_min, self.quant_max = quant_range(dtype, reduce_range, quant_min, quant_max)
        self.dtype = dtype
        self.symmetric = symmetric
        self.reduce_range = reduce_range
        self._custom_range = (quant_min, quant_max)  # as given, before reduce_range
        self.batches_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record the statistics of ``x`` and return ``x`` itself, untouched."""
        name = f"{type(self).__name__} input"
        check_float_tensor(x, name, action="observe")
        values = x.detach().to(torch.float32)  # as torch.ao's min/max observers do
        batch_min, batch_max = self._extremes(values)
        # NaN propagates through min and max, and Inf is an extreme, so the data is finite
        # exactly when its extremes are: one pass over the data instead of two.
        check_finite(torch.stack([batch_min, batch_max]), name)
        self._observe(values, batch_min, batch_max)
        self.batches_seen += 1
        return x

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The smallest and largest value of the batch (per channel for per-channel observers)."""
        return torch.aminmax(x)

    @abstractmethod
    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        """Update the statistics with one finite, non-empty float32 batch and its extremes."""

    @abstractmethod
    def _choose_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipping range from the statistics (called only after some data)."""

    @abstractmethod
    def _reset_statistics(self) -> None:
        """Forget every batch seen so far."""

    def clipping_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range ``(min_val, max_val)`` this observer chose (before widening to 0)."""
        if self.batches_seen == 0:
            raise RuntimeError(
                f"{type(self).__name__}: no data observed yet; call the observer on at least "
                "one batch, obs(x), before asking for qparams"
            )
        return self._choose_range()

    def qparams(self) -> QParams:
        """The chosen range as a :class:`~ptqlib.quantization.QParams`."""
        min_val, max_val = self.clipping_range()
        quant_min, quant_max = self._custom_range
        return qparams_from_range(
            min_val,
            max_val,
            dtype=self.dtype,
            symmetric=self.symmetric,
            reduce_range=self.reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            axis=self.ch_axis if self.per_channel else None,
        )

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``: 0-d tensors, or 1-d ``[C]`` for a per-channel observer."""
        qparams = self.qparams()
        return qparams.scale, qparams.zero_point

    def reset(self) -> None:
        """Forget all data, as if just created."""
        self._reset_statistics()
        self.batches_seen = 0

    def extra_repr(self) -> str:
        scheme = "symmetric" if self.symmetric else "affine"
        settings = f"{self.dtype}, {scheme}, quant range {self.quant_min}..{self.quant_max}"
        if self.batches_seen == 0:
            return f"{settings}, no data yet"
        return f"{settings}, {self._describe_statistics()} after {self.batches_seen} batches"

    def _describe_statistics(self) -> str:
        min_val, max_val = self.min_val, self.max_val
        return f"range [{min_val.item():.4g}, {max_val.item():.4g}]"


# --- min / max -----------------------------------------------------------------------------


class MinMaxObserver(Observer):
    """The running minimum and maximum: min_val = min over all batches of min(x), same for max.

    Exactly ``torch.ao.quantization.MinMaxObserver``'s qparams for the same batches.
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__(dtype, symmetric, reduce_range, quant_min, quant_max)
        self.register_buffer("min_val", torch.tensor(math.inf))
        self.register_buffer("max_val", torch.tensor(-math.inf))

    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        # In place (copy_): cheaper than re-assigning a module's buffer on every batch.
        self.min_val.copy_(torch.min(batch_min, self.min_val))
        self.max_val.copy_(torch.max(batch_max, self.max_val))

    def _choose_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val.clone(), self.max_val.clone()

    def _reset_statistics(self) -> None:
        self.min_val.fill_(math.inf)
        self.max_val.fill_(-math.inf)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """An exponential moving average of each batch's min and max.

    The first batch sets ``min_val = min(x)``; every later batch moves it a fraction
    ``averaging_constant`` (c) of the way: ``min_val <- min_val + c * (min(x) - min_val)``,
    and the same for ``max_val``. One unusual batch therefore moves the range only a
    little. Exactly ``torch.ao.quantization.MovingAverageMinMaxObserver``'s qparams.
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__(dtype, symmetric, reduce_range, quant_min, quant_max)
        if isinstance(averaging_constant, bool) or not isinstance(averaging_constant, int | float):
            raise TypeError(f"averaging_constant: expected a number, got {averaging_constant!r}")
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(
                f"averaging_constant: expected a number in (0, 1], got {averaging_constant!r}"
            )
        self.averaging_constant = averaging_constant

    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        if self.batches_seen == 0:
            self.min_val.copy_(batch_min)
            self.max_val.copy_(batch_max)
            return
        # Written as torch.ao writes it, so that the float32 rounding is the same.
        self.min_val.copy_(self.min_val + self.averaging_constant * (batch_min - self.min_val))
        self.max_val.copy_(self.max_val + self.averaging_constant * (batch_max - self.max_val))


class PerChannelMinMaxObserver(Observer):
    """The running min and max of every slice along ``ch_axis`` (one range per channel).

    For a Linear weight ``[out_features, in_features]`` and ``ch_axis=0`` every output
    neuron gets its own scale. Exactly ``torch.ao.quantization.PerChannelMinMaxObserver``'s
    qparams; ``calculate_qparams()`` returns 1-d tensors ``[C]``.
    """

    per_channel = True

    def __init__(
        self,
        ch_axis: int = 0,
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__(dtype, symmetric, reduce_range, quant_min, quant_max)
        if not isinstance(ch_axis, int) or isinstance(ch_axis, bool):
            raise TypeError(f"ch_axis: expected an integer axis, got {ch_axis!r}")
        self.ch_axis = ch_axis
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        axis = normalise_axis(self.ch_axis, x.dim())  # a clear error for an axis x lacks
        # One row per channel; the order of the other values does not matter for min/max.
        rows = x.transpose(0, axis).reshape(x.shape[axis], -1)
        return torch.aminmax(rows, dim=1)

    def _observe(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        if self.batches_seen == 0:
            self.min_val, self.max_val = batch_min, batch_max
            return
        if batch_min.numel() != self.min_val.numel():
            raise ValueError(
                f"PerChannelMinMaxObserver input: {batch_min.numel()} channels along axis "
                f"{self.ch_axis}, but earlier batches had {self.min_val.numel()}"
            )
        self.min_val = torch.min(batch_min, self.min_val)
        self.max_val = torch.max(batch_max, self.max_val)

    def _choose_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val.clone(), self.max_val.clone()

    def _reset_statistics(self) -> None:
        self.min_val = torch.empty(0)
        self.max_val = torch.empty(0)

    def _describe_statistics(self) -> str:
        return (
            f"{self.min_val.numel()} channels along axis {self.ch_axis}, "
            f"min in [{self.min_val.min().item():.4g}, {self.min_val.max().item():.4g}], "
            f"max in [{self.max_val.min().item():.4g}, {self.max_val.max().item():.4g}]"
        )


# --- histograms ----------------------------------------------------------------------------


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
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__(dtype, symmetric, reduce_range, quant_min, quant_max)
        _check_positive_int(bins, "bins")
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins))
        self.register_buffer("min_val", torch.tensor(math.inf))
        self.register_buffer("max_val", torch.tensor(-math.inf))

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
        self.histogram.zero_()
        self.min_val.fill_(math.inf)
        self.max_val.fill_(-math.inf)

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


@functools.cache
def _quantile_steps() -> tuple[torch.Tensor, torch.Tensor]:
    """alpha and beta after 1, 2, 3... steps of torch.ao's search, with its float rounding.

    torch.ao updates ``alpha = alpha + 1e-5`` and ``beta = beta - 1e-5`` in Python
    floats; a float64 cumulative sum adds in the same order, so the values are identical.
    """
    steps = torch.full((MAX_QUANTILE_STEPS,), QUANTILE_STEP, dtype=torch.float64)
    alphas = steps.cumsum(0)
    betas = torch.cat([torch.ones(1, dtype=torch.float64), -steps]).cumsum(0)[1:]
    return alphas, betas


@functools.cache
def _quantile_lists() -> tuple[list[float], list[float]]:
    """:func:`_quantile_steps` as Python floats, for the search loop."""
    alphas, betas = _quantile_steps()
    return alphas.tolist(), betas.tolist()


class _BinsAtQuantiles:
    """For the k-th quantile q_k of a sequence: the bin where the cumulative count crosses q_k.

    ``first=True``: the first bin whose cumulative count reaches q_k * total; otherwise
    the last bin whose cumulative count stays <= q_k * total (-1 if none). torch.ao
    compares its float32 cumulative counts with the Python float q * total, that is, in
    float32; so the thresholds are rounded to float32 here too (a CHUNK at a time, as the
    search usually stops long before its 100,000 steps). The lookups are binary searches
    in Python lists: one at a time they are much cheaper than a torch call.
    """

    CHUNK = 1024

    def __init__(
        self, cumulative: torch.Tensor, total: float, quantiles: torch.Tensor, first: bool
    ) -> None:
        self.cumulative = cumulative.tolist()
        self.total = total
        self.quantiles = quantiles
        self.first = first
        self.thresholds: list[float] = []

    def __getitem__(self, step: int) -> int:
        while step >= len(self.thresholds):
            start = len(self.thresholds)
            chunk = self.quantiles[start : start + self.CHUNK] * self.total
            self.thresholds.extend(chunk.to(torch.float32).tolist())
        if self.first:
            return bisect.bisect_left(self.cumulative, self.thresholds[step])
        return bisect.bisect_right(self.cumulative, self.thresholds[step]) - 1


class HistogramObserver(HistogramRecorder):
    """A histogram of all values, then the range with the smallest L2 quantization error.

    A port of ``torch.ao.quantization.HistogramObserver`` (itself from Caffe2's
    ``NonlinearQuantizationParamsSearch``). The search shrinks the range [first bin,
    last bin] greedily from the full histogram:

    - two quantiles, alpha = 0 and beta = 1, move towards each other in steps of 1e-5;
      the candidate first bin is where the cumulative count reaches alpha * total, the
      candidate last bin where it still stays within beta * total;
    - each step moves the end that would drop more bins;
    - each new candidate range is scored by its quantization error
      (:meth:`quantization_error`); the search stops at the first candidate that is worse
      than the previous one, and keeps the previous one.

    The result is the range from the start of the first bin to the end of the last.
    As in torch.ao, the error assumes 2^8 = 256 quantization levels whatever
    ``quant_min``/``quant_max`` or ``reduce_range`` say; only the final qparams use them.
    The search runs in plain Python integers over precomputed quantile positions, and
    each score is one vectorised pass over the bins.
    """

    def __init__(
        self,
        bins: int = 2048,
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__(bins, dtype, symmetric, reduce_range, quant_min, quant_max)
        self.levels = 2 ** torch.iinfo(dtype).bits  # torch.ao's dst_nbins

    def _search_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        first_bin, last_bin = self._search_bins()
        bin_width = (self.max_val - self.min_val) / self.bins
        return self.min_val + bin_width * first_bin, self.min_val + bin_width * (last_bin + 1)

    def _search_bins(self) -> tuple[int, int]:
        """torch.ao's ``_non_linear_param_search``, returning the first and last bin kept."""
        total = self.histogram.sum().item()
        cumulative = self.histogram.cumsum(0)
        bin_index = torch.arange(self.bins)
        density = self.histogram / self._bin_width()
        alpha_tensor, beta_tensor = _quantile_steps()
        # After k + 1 steps of alpha (of beta), the range could start (end) at this bin:
        first_bin_at = _BinsAtQuantiles(cumulative, total, alpha_tensor, first=True)
        last_bin_at = _BinsAtQuantiles(cumulative, total, beta_tensor, first=False)
        alphas, betas = _quantile_lists()

        first_bin, last_bin = 0, self.bins - 1
        alpha_steps = beta_steps = 0
        alpha, beta = 0.0, 1.0
        best_error = math.inf
        while alpha < beta:
            # Where the next step of each quantile would put its end of the range
            # (never past the other end).
            next_first = min(last_bin, first_bin_at[alpha_steps])
            next_last = max(first_bin, last_bin_at[beta_steps])
            if next_first - first_bin > last_bin - next_last:
                candidate = (next_first, last_bin)
                alpha = alphas[alpha_steps]
                alpha_steps += 1
            else:
                candidate = (first_bin, next_last)
                beta = betas[beta_steps]
                beta_steps += 1
            if candidate == (first_bin, last_bin):
                continue  # the quantile moved but not enough to drop a bin
            error = self._quantization_error(*candidate, bin_index, density)
            if error > best_error:
                break
            best_error = error
            first_bin, last_bin = candidate
        return first_bin, last_bin

    def _bin_width(self) -> float:
        return (self.max_val.item() - self.min_val.item()) / self.bins

    def quantization_error(self, first_bin: int, last_bin: int) -> float:
        """The L2 error of quantizing the histogram onto the range [first_bin, last_bin].

        The range is cut into ``levels`` equal quantization cells of width w, and every
        value is represented by the centre of its cell (values outside the range by the
        centre of the end cell: that is the clipping error). The values of a histogram bin
        are taken as spread evenly over the bin, with density d = count / bin width, so a
        piece [b, e] of the bin, measured from the centre c of its cell, contributes
        ``d * integral_b^e (x - c)^2 dx = d * (e^3 - b^3) / 3``. A bin contributes three
        pieces: from its start to the end of its first cell, the whole cells in between,
        and from the start of its last cell to its end. (Units: the square of x's units,
        times counts; only comparisons between candidates matter.)

        Same float32 operations, in the same order, as torch.ao's
        ``_compute_quantization_error``, so the search makes the same choices.
        """
        density = self.histogram / self._bin_width()
        return self._quantization_error(first_bin, last_bin, torch.arange(self.bins), density)

    def _quantization_error(
        self, first_bin: int, last_bin: int, bin_index: torch.Tensor, density: torch.Tensor
    ) -> float:
        bin_width = self._bin_width()
        cell_width = bin_width * (last_bin - first_bin + 1) / self.levels
        if cell_width == 0.0:
            return 0.0
        # Where every bin begins and ends, measured from the start of the range.
        bin_begin = (bin_index - first_bin) * bin_width
        bin_end = bin_begin + bin_width
        last_cell = self.levels - 1
        cell_of_begin = torch.div(bin_begin, cell_width, rounding_mode="floor").clamp(0, last_cell)
        cell_of_end = torch.div(bin_end, cell_width, rounding_mode="floor").clamp(0, last_cell)
        centre_of_begin_cell = (cell_of_begin + 0.5) * cell_width
        centre_of_end_cell = cell_of_end * cell_width + cell_width / 2
        # float32 scalars, broadcast (torch.ao fills whole tensors with the same values).
        half_cell = torch.tensor(cell_width / 2)
        minus_half_cell = torch.tensor(-cell_width / 2)

        error = _squared_error(bin_begin - centre_of_begin_cell, half_cell, density)
        whole_cell = _squared_error(minus_half_cell, half_cell, density)
        error += (cell_of_end - cell_of_begin - 1) * whole_cell
        error += _squared_error(minus_half_cell, bin_end - centre_of_end_cell, density)
        return error.sum().item()


def _squared_error(begin: torch.Tensor, end: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """``density * integral_begin^end x^2 dx = density * (end^3 - begin^3) / 3``."""
    # Written e*e*e, not e**3, to round exactly as torch.ao does.
    return density * ((end * end * end - begin * begin * begin) / 3)


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
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__(bins, dtype, symmetric, reduce_range, quant_min, quant_max)
        if isinstance(percentile, bool) or not isinstance(percentile, int | float):
            raise TypeError(f"percentile: expected a number, got {percentile!r}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile: expected a number in (0, 100], got {percentile!r}")
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

    def __init__(
        self,
        bins: int = 2048,
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__(bins, dtype, symmetric, reduce_range, quant_min, quant_max)

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
        dtype: torch.dtype = torch.uint8,
        symmetric: bool = False,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
    ) -> None:
        super().__init__(bins, dtype, symmetric, reduce_range, quant_min, quant_max)
        _check_positive_int(num_candidates, "num_candidates")
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
        quant_min, quant_max = self._custom_range
        # One candidate per row: as per-channel qparams along axis 0, fake_quantize
        # scores every candidate in one call.
        qparams = qparams_from_range(
            low,
            high,
            dtype=self.dtype,
            symmetric=self.symmetric,
            reduce_range=self.reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            axis=0,
        )
        points, counts = _spread(self.histogram, self.min_val, self.max_val)
        values = points.expand(self.num_candidates, -1)
        squared = (values - fake_quantize(values, qparams)) ** 2
        errors = (squared.double() * counts.double()).sum(dim=1) / counts.double().sum()
        return fractions, errors


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average_minmax": MovingAverageMinMaxObserver,
    "per_channel_minmax": PerChannelMinMaxObserver,
    "histogram": HistogramObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MSEObserver,
}


def make_observer(name: str, **kwargs) -> Observer:
    """A new observer by its name in :data:`OBSERVERS`, e.g. ``make_observer("histogram")``."""
    if not isinstance(name, str):
        raise TypeError(f"observer name: expected a string, got {type(name).__name__}")
    if name not in OBSERVERS:
        raise ValueError(
            f"observer name: unknown observer {name!r}; expected one of {', '.join(OBSERVERS)}"
        )
    try:
        return OBSERVERS[name](**kwargs)
    except TypeError as error:
        raise TypeError(f"observer {name!r}: {error}") from error
