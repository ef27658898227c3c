"""The INT8 CNN, faster: the same integers as ``ptqlib.int8_layers``'s teaching path.

:class:`~ptqlib.int8_layers.Int8Conv2d` computes each layer as notebook 07 writes it. Most of its
time goes into elementwise int64 work on every output value (requantization) and into layout
copies, not into the int8 GEMM. :class:`FastInt8CNN` runs the same layers (it shares their
buffers) with three changes that leave every integer unchanged:

1. **Channels last.** Activations travel as ``[N, H, W, C]``. The GEMM's output rows are
   (image, row, column) with one column per channel: that already *is* ``[N, OH, OW, O]``,
   so no permute or copy is needed after it. Only Flatten goes back to ``[N, C, H, W]``
   order (a small tensor), so the Linear's weights are used as they are.
2. **Pool before requantizing.** Requantization ``q = clamp(round(M acc) + Z, lo, hi)`` with
   M > 0 never decreases when acc grows, so ``max(requantize(acc)) = requantize(max(acc))``
   over a window: the same argument as max-pooling integers. A conv followed by a 2x2 pool
   requantizes a quarter of the values.
3. **In place.** The requantization steps run in place on one int64 tensor, with the
   zero-point and the carrier offset added together and the clamp bounds shifted by the
   offset: ``clamp(v + Z, lo, hi) - 128 = clamp(v + (Z - 128), lo - 128, hi - 128)``.

``tests/test_cnn.py`` checks that every logit equals the teaching path's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from ptqlib.errors import InputError
from ptqlib.int8_layers import Int8Conv2d, Int8Linear, Int8MaxPool2d
from ptqlib.int8_model import Int8Model
from ptqlib.integer_arithmetic import carrier_offset


def _pool_channels_last(x: torch.Tensor, pool: Int8MaxPool2d) -> torch.Tensor:
    """Max-pool of ``[N, H, W, C]`` integers (any integer dtype): the maximum of strided views."""
    (kernel_h, kernel_w), (stride_h, stride_w) = pool.kernel_size, pool.stride
    out_h = (x.shape[1] - kernel_h) // stride_h + 1
    out_w = (x.shape[2] - kernel_w) // stride_w + 1
    pooled = None
    for row in range(kernel_h):
        for column in range(kernel_w):
            view = x[:, row::stride_h, column::stride_w][:, :out_h, :out_w]
            pooled = view if pooled is None else torch.maximum(pooled, view)
    return pooled


def _accumulators(x: torch.Tensor, conv: Int8Conv2d) -> torch.Tensor:
    """int32 accumulators ``[N, OH, OW, O]`` of ``conv`` for int8 carriers ``x [N, H, W, C]``."""
    pad_h, pad_w = conv.padding
    padded = functional.pad(x, (0, 0, pad_w, pad_w, pad_h, pad_h), value=conv.padding_carrier())
    windows = padded.unfold(1, conv.kernel_size[0], conv.stride[0])
    windows = windows.unfold(2, conv.kernel_size[1], conv.stride[1])  # N OH OW C kh kw
    batch, out_h, out_w = windows.shape[:3]
    rows = windows.reshape(batch * out_h * out_w, -1)  # the same (C, kh, kw) order as patches()
    accumulator = torch._int_mm(rows, conv.weight_matrix().t())
    accumulator += conv.carrier_correction() + conv.bias
    return accumulator.view(batch, out_h, out_w, conv.out_channels)


def _requantize_in_place(accumulator: torch.Tensor, conv: Int8Conv2d) -> torch.Tensor:
    """``requantize(acc) - offset`` as int8 carriers, in place on one int64 tensor."""
    offset = carrier_offset(conv.output_qparams.dtype)
    lowest, highest = conv.output_range()
    values = accumulator.to(torch.int64)
    values *= conv.multiplier
    values += 1 << (conv.shift - 1)
    values >>= conv.shift
    values += int(conv.output_zero_point) - offset
    values.clamp_(lowest - offset, highest - offset)
    return values.to(torch.int8)


class FastInt8CNN(nn.Module):
    """An :class:`~ptqlib.int8_model.Int8Model` of Int8Conv2d, Int8MaxPool2d, Flatten and
    Int8Linear layers, run channels-last and pooled before requantizing (module docstring).
    Same input, same integers, same float logits as ``int8_model``."""

    def __init__(self, int8_model: Int8Model) -> None:
        super().__init__()
        if not isinstance(int8_model, Int8Model):
            raise TypeError(f"int8_model: expected an Int8Model, got {type(int8_model).__name__}")
        supported = (Int8Conv2d, Int8MaxPool2d, nn.Flatten, Int8Linear)
        for layer in int8_model.layers:
            if not isinstance(layer, supported):
                raise InputError(f"int8_model: cannot run a {type(layer).__name__} channels-last")
        self.model = int8_model

    def integer_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits as int8 carriers, exactly ``self.model.integer_forward(images)``."""
        x = self.model.quantize_input(images).permute(0, 2, 3, 1)  # NCHW -> NHWC
        layers = list(self.model.layers)
        index = 0
        while index < len(layers):
            layer = layers[index]
            following = layers[index + 1] if index + 1 < len(layers) else None
            if isinstance(layer, Int8Conv2d):
                accumulator = _accumulators(x, layer)
                if isinstance(following, Int8MaxPool2d):
                    accumulator = _pool_channels_last(accumulator, following)
                    index += 1
                x = _requantize_in_place(accumulator, layer)
            elif isinstance(layer, Int8MaxPool2d):
                x = _pool_channels_last(x, layer)
            elif isinstance(layer, nn.Flatten):
                x = layer(x.permute(0, 3, 1, 2) if x.dim() == 4 else x)  # flatten in C, H, W order
            else:
                x = layer(x)
            index += 1
        return x

    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        output_dtype = self.model.output_qparams.dtype
        carriers = self.integer_forward(images).to(torch.int16)
        return (carriers + carrier_offset(output_dtype)).to(output_dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.dequantize_output(self.integer_forward(images))
