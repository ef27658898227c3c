"""A k-means codebook: every weight becomes the index of one of 16 shared values.

All the other formats put their values on a fixed grid (uniform for integers, binades for
floats) and only choose the scale. A codebook chooses the values themselves: Deep Compression
(Han, Mao, Dally, ICLR 2016, section 3) clusters a layer's weights with k-means and stores,
per weight, only the index of its cluster (log2 k bits), plus the k centroids once per layer.
With n weights of b bits and k clusters the compression is (their section 3.1)::

    r = n b / (n log2(k) + k b)

Here ``k = 16`` (4-bit indices) and FP32 centroids, so a layer of n weights costs
``4 n + 16 * 32`` bits: 4.005 bits per weight for SimpleNet's first layer. The values are
non-uniform: where the weights are dense (near 0) the centroids crowd together, so the codebook
spends its 16 levels where the weights are, which a uniform grid of 16 levels cannot.

**k-means** (Lloyd's algorithm), deterministic:

1. *linear initialization*: the k centroids evenly spaced from the smallest to the largest
   weight, which the paper (section 3.2) found best because it keeps the rare large weights,
   which matter most, represented;
2. assign every weight to its nearest centroid (ties to the lower one);
3. move each centroid to the mean of its weights (a centroid with none stays where it is);
4. repeat 2-3 until no assignment changes, at most ``iterations`` times.

Deep Compression then fine-tunes the centroids with the gradients of each cluster; this is
post-training quantization, so the centroids stay as k-means left them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ptqlib.errors import InputError
from ptqlib.quantization import check_finite

CENTROID_BITS = 32  # the codebook is stored in FP32


@dataclass(frozen=True)
class CodebookTensor:
    """``indices`` (uint8, the tensor's shape) into ``centroids`` (float32, sorted)."""

    indices: torch.Tensor
    centroids: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        return self.centroids[self.indices.long()]

    @property
    def index_bits(self) -> int:
        """Bits of one index: ceil(log2 k) (4 for 16 entries)."""
        return max(1, math.ceil(math.log2(self.centroids.numel())))

    @property
    def numel(self) -> int:
        return self.indices.numel()

    @property
    def storage_bits(self) -> int:
        return self.numel * self.index_bits + self.centroids.numel() * CENTROID_BITS


def nearest_centroid(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The index of the nearest of the sorted ``centroids`` for every value (the lower one on
    a tie): the values up to the midpoint between two neighbours go to the lower one.

    (In one dimension k-means keeps its centroids in order: each moves to the mean of the
    values between its two midpoints, which lies between its neighbours' means.)"""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values.reshape(-1), midpoints)


def kmeans_codebook(x: torch.Tensor, entries: int = 16, iterations: int = 30) -> CodebookTensor:
    """Cluster the values of ``x`` into ``entries`` centroids (see the module docstring)."""
    check_finite(x, "x")
    if isinstance(entries, bool) or not isinstance(entries, int) or not 2 <= entries <= 256:
        raise InputError(f"entries: expected a codebook size from 2 to 256, got {entries!r}")
    values = x.detach().double().reshape(-1)
    centroids = torch.linspace(
        float(values.min()), float(values.max()), entries, dtype=torch.float64
    )
    assignment = nearest_centroid(values, centroids)
    for _ in range(iterations):
        counts = torch.bincount(assignment, minlength=entries)
        sums = torch.bincount(assignment, weights=values, minlength=entries)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        updated = nearest_centroid(values, centroids)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    # Store the centroids in float32 and assign to those, so the indices match what is stored.
    stored = centroids.float()
    indices = nearest_centroid(values.float(), stored).to(torch.uint8).reshape(x.shape)
    return CodebookTensor(indices, stored)
