"""Pooling on integers: the max-pool and the global average pool of the INT8 CNN.

**Max-pooling on integers.** Dequantization ``r = S (q - Z)`` with S > 0 is strictly
increasing, so the largest integer of a window is the integer of the largest real value:
``max(r) = S (max(q) - Z)``. The pool runs on the integers directly, and its output keeps
its input's qparams (it only picks existing values). Carriers ``q - 128`` keep the order too.

**Global average pool on integers.** The mean of a channel's H W values is
``S (sum(q) / (H W) - Z)``: exact in integers up to the division. Its output keeps the
input's qparams, so it is rounded back to that grid, ``round(sum(q) / (H W))``, to nearest
with ties upwards (``floor((2 sum + H W) / (2 H W))``). That rounding is a real
quantization error (at most S / 2, like any other), not an identity like the max-pool's;
the float simulation (``ptqlib.fake_quant``) rounds the same way, and torch.ao's quantized
average pool agrees within one step. On carriers ``c = q - 128`` it is the same formula,
since the offset is an integer.
"""

from __future__ import annotations

import torch
from torch import nn

from ptqlib.errors import InputError


def max_of_windows(
    x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """The maximum over every ``kh x kw`` window (stride, no padding) of integers
    ``[N, C, H, W]`` (any memory layout, channels last included): elementwise
    ``torch.maximum`` of kh x kw strided views, exact and fast. (PyTorch's max_pool2d accepts
    int8 too, but fails on channels-last int8 tensors in 2.14.)"""
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_size, stride
    out_h = (x.shape[2] - kernel_h) // stride_h + 1
    out_w = (x.shape[3] - kernel_w) // stride_w + 1
    pooled = None
    for row in range(kernel_h):
        for column in range(kernel_w):
            view = x[:, :, row::stride_h, column::stride_w][:, :, :out_h, :out_w]
            pooled = view if pooled is None else torch.maximum(pooled, view)
    return pooled


class Int8MaxPool2d(nn.Module):
    """Max-pooling of integers (carriers): the largest integer of each window is the
    integer of the largest real value, since dequantization is increasing. No padding."""

    def __init__(
        self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.kernel_size = int_pair(kernel_size, "kernel_size", 1)
        self.stride = int_pair(kernel_size if stride is None else stride, "stride", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            raise InputError(f"max-pool: expected integers, got {x.dtype}")
        self.check_input_shape(tuple(x.shape))
        return max_of_windows(x, self.kernel_size, self.stride)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse an input that is not ``[N, C, H, W]`` with at least one window (no
        padding: H and W at least the kernel's); the teaching and the fast path both ask."""
        if len(shape) != 4 or shape[2] < self.kernel_size[0] or shape[3] < self.kernel_size[1]:
            raise InputError(
                f"max-pool: expected integers [N, C, H, W] of at least "
                f"{self.kernel_size[0]} x {self.kernel_size[1]} pixels (its kernel), got "
                f"{tuple(shape)}; give the model larger images"
            )

    def extra_repr(self) -> str:
        return f"kernel {self.kernel_size}, stride {self.stride}, on integers"


def rounded_mean(values: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``round(sum / count)`` over ``dims`` of integers, to nearest with ties upwards:
    ``floor((2 sum + count) / (2 count))``, exact in int64. Keeps the dims (size 1)."""
    count = 1
    for dim in dims:
        count *= values.shape[dim]
    total = values.to(torch.int64).sum(dim=dims, keepdim=True)
    return torch.div(2 * total + count, 2 * count, rounding_mode="floor")


class Int8GlobalAvgPool2d(nn.Module):
    """The global average pool on integers: int8 carriers ``[N, C, H, W]`` to
    ``[N, C, 1, 1]``, each the rounded mean of its channel (module docstring). The output
    keeps the input's qparams."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.dtype != torch.int8:
            raise InputError(
                f"average pool: expected int8 carriers [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
            )
        return rounded_mean(x, (2, 3)).to(torch.int8)

    def extra_repr(self) -> str:
        return "output 1x1, round(sum / count) on integers"


def int_pair(value: object, name: str, smallest: int) -> tuple[int, int]:
    """``value`` (one integer, used twice, or a pair of them) as a pair of integers of at
    least ``smallest``: a kernel size, a stride, a padding. Else an InputError naming ``name``."""
    pair = (value, value) if isinstance(value, int) else value
    if not (
        isinstance(pair, tuple | list)
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= smallest for v in pair)
    ):
        raise InputError(
            f"{name} must be a pair of integers >= {smallest} (or one integer), got {value!r}"
        )
    return pair[0], pair[1]
