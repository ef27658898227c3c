"""The integer convolution and max-pool, and a folded, calibrated CNN turned into integers.

**A convolution is a matrix product of patches.** Output pixel (i, j) of channel o is the
dot product of filter o (C x kh x kw weights) with the input patch under it. Cut every patch
out of the (padded) input as one row of length K = C kh kw (*im2col*, ``Tensor.unfold``) and
reshape the filters to ``[O, K]``: the convolution is ``patches @ filters^T``, one int8 GEMM
(``torch._int_mm``) of ``[N OH OW, K] x [K, O]``. Every row is a Linear's input, so the
integer math is that of ``ptqlib.int8_model`` unchanged::

    acc = sum_k (q_x,k - Z_x) q_w,k + q_b                 int32, per output pixel and channel
    q_y = clamp(round(M acc) + Z_y, lo, hi),  M = S_x S_w / S_y ~= M0 2^-n   (per channel)

with int8 symmetric weights (one scale per output channel), an int32 bias of scale S_x S_w,
the same carriers (a uint8 activation travels as the int8 ``q - 128``) and the same
zero-point correction ``(128 - Z_x) sum_k q_w,k`` per channel.

**Padding with the zero-point.** A float conv pads with the *real* 0. Its integer is Z_x,
not 0: a padded pixel must hold Z_x (carrier ``Z_x - 128``), so that ``q_x - Z_x = 0``
there, as in the float model. Padding with the integer 0 would add the real value
``S_x (0 - Z_x)``, a large negative number when Z_x is large, along every border. It also
makes the zero-point correction the same for every output pixel, border or not.

**Max-pooling on integers.** Dequantization ``r = S (q - Z)`` with S > 0 is strictly
increasing, so the largest integer of a window is the integer of the largest real value:
``max(r) = S (max(q) - Z)``. The pool runs on the integers directly, and its output keeps
its input's qparams (it only picks existing values). Carriers ``q - 128`` keep the order too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from ptqlib.int8_model import DTYPE_NAMES, Int8Step
from ptqlib.integer_arithmetic import (
    carrier_offset,
    requantize,
)
from ptqlib.quantization import QParams


def patches(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """im2col: every ``kh x kw`` window of the (already padded) ``x [N, C, H, W]`` as one row
    ``[C kh kw]``, rows ordered by (image, output row, output column): ``[N OH OW, C kh kw]``.
    Works on any dtype (``Tensor.unfold`` only takes views)."""
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_size, stride
    windows = x.unfold(2, kernel_h, stride_h).unfold(3, kernel_w, stride_w)  # N C OH OW kh kw
    batch, channels, out_h, out_w = windows.shape[:4]
    rows = windows.permute(0, 2, 3, 1, 4, 5)  # N OH OW C kh kw: a row per output pixel
    return rows.reshape(batch * out_h * out_w, channels * kernel_h * kernel_w)


class Int8Conv2d(Int8Step):
    """A Conv2d (BatchNorm folded, ReLU fused) on integers: int8 carriers ``[N, C, H, W]`` in,
        int8 carriers ``[N, O, OH, OW]`` out.

        The state is :class:`~ptqlib.int8_model.Int8Step`'s, the same as an Int8Linear's, with
        ``weight`` as ``[O, C, kh, kw]``: its ``weight_matrix()`` rows ``[O, C kh kw]`` are in the
    order of :func:`patches`' columns. Fixed at construction besides: stride and padding.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        weight_qparams: QParams,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        name: str = "conv",
    ) -> None:
        if weight.dim() != 4:
            raise ValueError(
                f"layer {name!r}: weight must be [O, C, kh, kw], got {tuple(weight.shape)}"
            )
        super().__init__(weight, bias, weight_qparams, input_qparams, output_qparams, relu, name)
        self.stride, self.padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
        self.out_channels, self.in_channels = self.weight.shape[:2]
        self.kernel_size = tuple(self.weight.shape[2:])

    def padding_carrier(self) -> int:
        """What padded pixels hold: the carrier of the real 0, ``Z_x - offset``."""
        return int(self.input_zero_point) - carrier_offset(self._input_like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.dtype != torch.int8:
            raise ValueError(
                f"layer {self.name!r}: expected input [N, {self.in_channels}, H, W] of int8 "
                f"carriers, got {x.dtype} {tuple(x.shape)}"
            )
        pad_h, pad_w = self.padding
        # Pad with the integer of the real 0 (see the module docstring), not with 0.
        padded = functional.pad(x, (pad_w, pad_w, pad_h, pad_h), value=self.padding_carrier())
        out_h = (padded.shape[2] - self.kernel_size[0]) // self.stride[0] + 1
        out_w = (padded.shape[3] - self.kernel_size[1]) // self.stride[1] + 1
        rows = patches(padded, self.kernel_size, self.stride)
        # acc = sum_k (q_x,k - Z_x) q_w,k + q_b for every output pixel: the int8 GEMM, the
        # zero-point correction and the int32 bias; then requantize per channel (columns).
        accumulator = torch._int_mm(rows, self.weight_matrix().t())
        # Add the per-channel constants together first: one pass over the large accumulator.
        accumulator = accumulator + (self.zero_point_correction() + self.bias)
        lowest, highest = self.output_range()
        output = requantize(
            accumulator, self.multiplier, self.shift, int(self.output_zero_point), lowest, highest
        )
        carriers = (output - carrier_offset(self._output_like.dtype)).to(torch.int8)
        # rows are (image, row, column); channels last -> [N, O, OH, OW]
        return carriers.reshape(x.shape[0], out_h, out_w, self.out_channels).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        granularity = "per-channel" if self.weight_scale.dim() == 1 else "per-tensor"
        relu = ", relu" if self.relu else ""
        return (
            f"{self.in_channels} -> {self.out_channels}, kernel {self.kernel_size}, "
            f"stride {self.stride}, padding {self.padding}, int8 weights {granularity}, "
            f"output {DTYPE_NAMES[self._output_like.dtype]}{relu}"
        )


class Int8MaxPool2d(nn.Module):
    """Max-pooling of integers (carriers): the largest integer of each window is the
    integer of the largest real value, since dequantization is increasing. No padding."""

    def __init__(
        self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(kernel_size if stride is None else stride, "stride", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.is_floating_point():
            raise ValueError(
                f"max-pool: expected integers [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
            )
        # The maximum over the window, taken as kh x kw strided views of x (one per position
        # in the window): elementwise torch.maximum of integers, exact and fast. (PyTorch's
        # max_pool2d accepts int8 too, but fails on channels-last int8 tensors in 2.14.)
        (kernel_h, kernel_w), (stride_h, stride_w) = self.kernel_size, self.stride
        out_h = (x.shape[2] - kernel_h) // stride_h + 1
        out_w = (x.shape[3] - kernel_w) // stride_w + 1
        pooled = None
        for row in range(kernel_h):
            for column in range(kernel_w):
                view = x[:, :, row::stride_h, column::stride_w][:, :, :out_h, :out_w]
                pooled = view if pooled is None else torch.maximum(pooled, view)
        return pooled

    def extra_repr(self) -> str:
        return f"kernel {self.kernel_size}, stride {self.stride}, on integers"


def _pair(value: object, name: str, smallest: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= smallest for v in pair):
        raise ValueError(
            f"{name}: expected an integer >= {smallest} or a pair of them, got {value!r}"
        )
    return pair
