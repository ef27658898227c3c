"""The fast path's convolution: the teaching path's integers, channels last.

:class:`~ptqlib.int8_layers.Int8Conv2d` computes each layer as notebook 07 writes it. Most of
its time goes into elementwise int64 work on every output value (requantization) and into
layout copies, not into the GEMM. :class:`~ptqlib.fast.model.FastInt8Model` runs the same
layers (it reads their buffers) with three changes that leave every integer unchanged:

1. **Channels last.** Activations travel as ``[N, H, W, C]``. The GEMM's output rows are
   (image, row, column) with one column per channel: that already *is* ``[N, OH, OW, O]``,
   so no permute or copy is needed after it. Only Flatten goes back to ``[N, C, H, W]``
   order (a small tensor), so the Linear's weights are used as they are.
2. **Pool before requantizing.** Requantization ``q = clamp(round(M acc) + Z, lo, hi)`` with
   M > 0 never decreases when acc grows (in both modes), so
   ``max(requantize(acc)) = requantize(max(acc))`` over a window: the same argument as
   max-pooling integers. A conv followed by a 2x2 pool requantizes a quarter of the values.
   The max-pool is the teaching path's :func:`~ptqlib.int8_layers.max_of_windows`, on a
   channels-last view. (Hand-set buffers can break the premise, a negative M or integers
   that wrap: ``ptqlib.fast.folding.teaching_integers_are_exact``; such a conv pools after.)
3. **Folded requantization** (``ptqlib.fast.folding``), as for a Linear.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from ptqlib.fast.folding import FoldedStep
from ptqlib.int8_gemm import gemm_product, int8_channelwise_dot
from ptqlib.int8_layers import Int8Conv2d, max_of_windows


def conv_products(x: torch.Tensor, conv: Int8Conv2d, folded: FoldedStep) -> torch.Tensor:
    """The sums ``g = sum_k c_k q_w,k`` ``[N, OH, OW, O]`` (no correction or bias) of ``conv``
    for carriers ``x [N, H, W, C]`` (int8, or floats holding them); ``folded`` holds the
    ``[K, O]`` GEMM weight (unused by a depthwise conv) and the padding carrier. int32, or
    the float GEMM's exact integers."""
    if not conv.depthwise:  # convert before im2col, which copies every value kh kw times
        x = x.to(folded.weight_t.dtype)
    pad_h, pad_w = conv.padding
    padding = (0, 0, pad_w, pad_w, pad_h, pad_h)
    padded = functional.pad(x, padding, value=folded.input_zero_carrier)
    windows = padded.unfold(1, conv.kernel_size[0], conv.stride[0])
    windows = windows.unfold(2, conv.kernel_size[1], conv.stride[1])  # N OH OW C kh kw
    batch, out_h, out_w = windows.shape[:3]
    rows = windows.reshape(batch * out_h * out_w, -1)  # the same (C, kh, kw) order as patches()
    if conv.depthwise:
        by_channel = rows.view(len(rows), conv.in_channels, -1)
        product = int8_channelwise_dot(by_channel, conv.weight_matrix())
    else:
        product = gemm_product(rows, folded.weight_t)
    return product.view(batch, out_h, out_w, conv.out_channels)


def max_pool_channels_last(
    x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """The teaching path's max-pool of integers ``[N, H, W, C]``, through an NCHW view."""
    return max_of_windows(x.permute(0, 3, 1, 2), kernel_size, stride).permute(0, 2, 3, 1)
