"""torch.ao's L2 range search over a histogram, ported so it makes the same choices.

:class:`ptqlib.observers.histogram.HistogramObserver` keeps a histogram of ``bins`` equal
bins and asks :func:`search_range` for the range of the bins to keep. This is the algorithm of
``torch.ao.quantization.HistogramObserver._non_linear_param_search`` (itself from
Caffe2's ``NonlinearQuantizationParamsSearch``): start from the full histogram and shrink
the range [first bin, last bin] greedily.

- Two quantiles, alpha = 0 and beta = 1, move towards each other in steps of 1e-5; the
  candidate first bin is where the cumulative count reaches alpha * total, the candidate
  last bin where it still stays within beta * total.
- Each step moves the end that would drop more bins.
- Each new candidate range is scored by :func:`quantization_error`; the search stops at
  the first candidate that is worse than the previous one, and keeps the previous one.

Matching torch.ao bit for bit
-----------------------------
The search stops at the first candidate whose error grows, so a difference in the last
bit of one score can change the range it returns. Everything in this module therefore
repeats torch.ao's arithmetic exactly, and only for that reason:

- the bin width is a Python float in the search, a float32 tensor in the final range
  (:func:`search_range`);
- the quantiles are Python floats advanced by repeated ``+ 1e-5`` (:func:`_quantile_steps`);
- they are compared with float32 cumulative counts in float32 (:class:`_BinsAtQuantiles`);
- the error is computed with the same float32 tensor operations in the same order,
  down to writing ``e * e * e`` instead of ``e ** 3`` (:func:`quantization_error`).

Nothing else in ptqlib needs these details; read the algorithm in the list above. The
search itself runs in plain Python integers over precomputed quantile positions, with
one vectorised pass over the bins per score, instead of indexing tensors at each of its
up to 100,000 steps (``benchmarks/bench_calibration.py`` times it against torch.ao).
"""

from __future__ import annotations

import bisect
import functools
import math

import torch

# The quantiles alpha (low) and beta (high) move in steps of 1e-5, i.e. at most
# 100,000 steps from (0, 1) until they meet.
QUANTILE_STEP = 1e-5
MAX_QUANTILE_STEPS = 100_100  # 100,000 plus a margin for the rounding of the running sums


def search_range(
    histogram: torch.Tensor, min_val: torch.Tensor, max_val: torch.Tensor, levels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping range: from the start of the first bin :func:`search_bins` keeps to the
    end of the last, for a histogram over [min_val, max_val] (0-d float32, min_val < max_val).
    """
    bins = histogram.numel()
    first_bin, last_bin = search_bins(histogram, search_bin_width(min_val, max_val, bins), levels)
    # Here the bin width is a float32 tensor, in the search a Python float: as in torch.ao.
    bin_width = (max_val - min_val) / bins
    return min_val + bin_width * first_bin, min_val + bin_width * (last_bin + 1)


def search_bin_width(min_val: torch.Tensor, max_val: torch.Tensor, bins: int) -> float:
    """The width of one bin as the search uses it: computed in Python floats, as torch.ao does."""
    return (max_val.item() - min_val.item()) / bins


def search_bins(histogram: torch.Tensor, bin_width: float, levels: int) -> tuple[int, int]:
    """The first and last bin of the range with the smallest L2 error (torch.ao's search).

    ``histogram``: float32 counts of ``bins`` equal bins of width ``bin_width`` (> 0);
    ``levels``: how many quantization levels the error assumes (torch.ao's ``dst_nbins``).
    """
    bins = histogram.numel()
    total = histogram.sum().item()
    cumulative = histogram.cumsum(0)
    # After k + 1 steps of alpha (of beta), the range could start (end) at this bin:
    alpha_tensor, beta_tensor = _quantile_steps()
    first_bin_at = _BinsAtQuantiles(cumulative, total, alpha_tensor, first=True)
    last_bin_at = _BinsAtQuantiles(cumulative, total, beta_tensor, first=False)
    alphas, betas = _quantile_lists()

    first_bin, last_bin = 0, bins - 1
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
        error = quantization_error(histogram, bin_width, *candidate, levels)
        if error > best_error:
            break
        best_error = error
        first_bin, last_bin = candidate
    return first_bin, last_bin


def quantization_error(
    histogram: torch.Tensor, bin_width: float, first_bin: int, last_bin: int, levels: int
) -> float:
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

    torch.ao's ``_compute_quantization_error``, operation by operation.
    """
    cell_width = bin_width * (last_bin - first_bin + 1) / levels
    if cell_width == 0.0:
        return 0.0
    density = histogram / bin_width
    # Where every bin begins and ends, measured from the start of the range.
    bin_begin = (torch.arange(histogram.numel()) - first_bin) * bin_width
    bin_end = bin_begin + bin_width
    last_cell = levels - 1
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
    return density * ((end * end * end - begin * begin * begin) / 3)  # e*e*e: as torch.ao


@functools.cache
def _quantile_steps() -> tuple[torch.Tensor, torch.Tensor]:
    """alpha and beta after 1, 2, 3... steps of the search, rounded as torch.ao's are.

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
