"""Group-wise integers: INT4 weights with one FP16 scale per group of 32 or 128 (LLM runtimes).

Notebook 02 gave every output channel its own scale (per-channel). Group-wise quantization
goes one step further and gives every *group* of ``g`` consecutive weights along the input
axis its own scale: a group is simply a smaller channel. With B-bit symmetric integers::

    scale = FP16(amax(group) / (2^(B-1) - 1))        4 bits: amax / 7
    q     = clamp(round(w / scale), -(2^(B-1) - 1), 2^(B-1) - 1)
    w~    = q * scale

The scale is rounded to FP16 *before* the weights are divided by it, because FP16 is what the
file holds and what the kernel multiplies by: quantizing with the unrounded scale would leave
every weight slightly off the grid the kernel really uses. The grid is the symmetric
restricted one, -7..7 (the code -8 stays unused), so that w = -amax and w = +amax are both
exact. Each weight costs B bits plus its share of the scale, ``B + 16 / g``:
4.5 bits for g32, 4.125 for g128. (GPTQ checkpoints and llama.cpp's Q4 blocks are variants of
this: GPTQ adds a zero-point per group, llama.cpp's Q4_0 uses blocks of 32 with the -8..7 grid.)

The rounding itself is ``ptqlib.quantization.quantize`` with one scale per group, the same
code as per-channel quantization in notebook 02.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptqlib.errors import InputError
from ptqlib.formats.blocks import block_count, join_blocks, repeat_per_element, split_into_blocks
from ptqlib.quantization import QParams, check_finite, quantize

SCALE_DTYPES = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32}


@dataclass(frozen=True)
class GroupwiseTensor:
    """B-bit integers ``[..., K]`` (stored in int8) and one scale per group of ``group_size``
    along the last axis (``[..., n_groups]``, in the scale's storage dtype, e.g. float16)."""

    values: torch.Tensor
    scales: torch.Tensor
    group_size: int
    bits: int = 4

    def dequantize(self) -> torch.Tensor:
        per_element = repeat_per_element(
            self.scales.float(), self.group_size, self.values.shape[-1]
        )
        return self.values.float() * per_element

    @property
    def numel(self) -> int:
        return self.values.numel()

    @property
    def storage_bits(self) -> int:
        groups = block_count(tuple(self.values.shape), self.group_size)
        return self.numel * self.bits + groups * SCALE_DTYPES[self.scales.dtype]


def quantize_groupwise(
    x: torch.Tensor, group_size: int = 128, bits: int = 4, scale_dtype: torch.dtype = torch.float16
) -> GroupwiseTensor:
    """``x`` as symmetric ``bits``-bit integers with one ``scale_dtype`` scale per group of
    ``group_size`` along the last axis (see the module docstring)."""
    check_finite(x, "x")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise InputError(f"bits: expected a whole number from 2 to 8, got {bits!r}")
    if scale_dtype not in SCALE_DTYPES:
        raise InputError(f"scale_dtype: expected one of {list(SCALE_DTYPES)}, got {scale_dtype}")
    largest = 2 ** (bits - 1) - 1
    groups = split_into_blocks(x.detach().float(), group_size)
    scales = (groups.abs().amax(dim=-1) / largest).to(scale_dtype)
    # A scale is at least the smallest normal number of its format (2^-14 for FP16): an
    # all-zero group then rounds to 0 instead of dividing by zero, and a group of tiny weights
    # (amax < 7 * 2^-14) keeps a step of 2^-14, an error far below any weight that matters.
    scales = torch.clamp(scales, min=torch.finfo(scale_dtype).tiny)
    rows = groups.reshape(-1, groups.shape[-1])
    qparams = QParams(
        scales.float().reshape(-1),
        torch.zeros(rows.shape[0], dtype=torch.int64),
        -largest,
        largest,
        torch.int8,
        axis=0,
    )
    values = quantize(rows, qparams).reshape(groups.shape)
    return GroupwiseTensor(join_blocks(values, x.shape[-1]), scales, group_size, bits)
