"""Cutting a tensor into blocks along its last axis, the axis a GEMM sums over.

Block-scaled formats (MX, NVFP4, group-wise integers) give every run of ``block_size``
consecutive values their own scale. The runs follow the *reduction* axis of the matrix
product: for a weight ``W [out, K]`` (a Linear's ``[out, in]``, a convolution's
``[out, in * kh * kw]``) each block holds ``block_size`` inputs of one output, so a dot product
``sum_k W[o, k] x[k]`` splits into per-block partial sums, each scaled once by the product of
the two block scales. That is what the hardware does (OCP MX v1.0 section 6.1, the dot product
of two MX vectors), and why the blocks of a weight and of an activation must line up along K.

A length that is not a multiple of ``block_size`` is padded with zeros up to one: a zero does
not change a block's largest magnitude, so the padded values neither change the scale nor get
stored (SimpleNet's first layer has K = 784 = 24.5 blocks of 32). A row shorter than one block
(a convolution's input with 1 or 16 channels) is one partial block, held without padding.
"""

from __future__ import annotations

import math

import torch

from ptqlib.errors import InputError


def check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"block_size: expected a whole number >= 1, got {block_size!r}")


def split_into_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``x [..., K]`` as ``[..., ceil(K / block_size), block_size]``, zero-padded at the end
    (``[..., 1, K]`` if K < block_size: the one partial block, unpadded)."""
    check_block_size(block_size)
    length = x.shape[-1]
    block_size = min(block_size, length)
    padding = (-length) % block_size
    if padding:
        x = torch.nn.functional.pad(x, (0, padding))
    return x.reshape(*x.shape[:-1], -1, block_size)


def join_blocks(blocks: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of :func:`split_into_blocks`: ``[..., n_blocks, block_size]`` back to
    ``[..., length]``, dropping the padding."""
    return blocks.reshape(*blocks.shape[:-2], -1)[..., :length]


def block_count(shape: tuple[int, ...], block_size: int) -> int:
    """How many blocks (and so how many scales) a tensor of ``shape`` has."""
    rows = math.prod(shape[:-1])
    return rows * math.ceil(shape[-1] / block_size)


def repeat_per_element(per_block: torch.Tensor, block_size: int, length: int) -> torch.Tensor:
    """A per-block value ``[..., n_blocks]`` repeated for each element: ``[..., length]``."""
    return join_blocks(per_block.unsqueeze(-1).expand(*per_block.shape, block_size), length)
