"""An int64 reference of an INT8 model's integers, written from the math alone.

It reads an :class:`~ptqlib.int8_model.Int8Model`'s buffers (integer weights, int32 biases,
zero-points, M0 and n, ORT's float32 multiplier) and computes every layer the plainest way
there is, with none of the engine's devices: no carriers, no int8 or float GEMM, no im2col,
no folded constants, no rounding shift. Every sum is an int64 tensor product; a convolution
pads ``q - Z_x`` with 0 (the real 0) and adds one product per kernel position::

    acc = sum_k (q_x,k - Z_x) q_w,k + q_b
    fixed point:  q_y = clamp(floor((acc M0 + 2^(n-1)) / 2^n) + Z_y, lo, hi)
    float32:      q_y = clamp(round_half_even(float32(acc) M_f32) + Z_y, lo, hi)

Only the input quantization (float to integers) is taken from the model itself: it is not
integer arithmetic. The tests compare the teaching path, the fast path (and the exported C)
with it, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from ptqlib.int8_gemm import from_carrier
from ptqlib.int8_layers import Int8Conv2d, Int8GlobalAvgPool2d, Int8Linear, Int8MaxPool2d
from ptqlib.int8_model import Int8Model


def requantized(accumulator: torch.Tensor, layer, channel_dim: int) -> torch.Tensor:
    """``q_y`` of an int64 accumulator whose output channels lie along ``channel_dim``."""
    shape = [1] * accumulator.dim()
    shape[channel_dim] = -1
    zero_point = int(layer.output_zero_point)
    if layer.requantization == "float32":
        multiplier = layer.float32_multiplier.reshape(shape)
        rounded = torch.round(accumulator.to(torch.float32) * multiplier).to(torch.int64)
    else:
        multiplier = layer.multiplier.reshape(shape)
        shift = layer.shift.reshape(shape)
        numerator = accumulator * multiplier + torch.pow(2, shift - 1)
        rounded = torch.div(numerator, torch.pow(2, shift), rounding_mode="floor")
    qparams = layer.output_qparams
    lowest = max(qparams.quant_min, zero_point) if layer.relu else qparams.quant_min
    return (rounded + zero_point).clamp(lowest, qparams.quant_max)


def linear_accumulator(q: torch.Tensor, layer: Int8Linear) -> torch.Tensor:
    centred = q - int(layer.input_zero_point)
    return centred @ layer.weight.to(torch.int64).T + layer.bias.to(torch.int64)


def conv_accumulator(q: torch.Tensor, layer: Int8Conv2d) -> torch.Tensor:
    """One int64 product per kernel position over the input padded with the real 0."""
    (pad_h, pad_w), (stride_h, stride_w) = layer.padding, layer.stride
    kernel_h, kernel_w = layer.kernel_size
    centred = functional.pad(q - int(layer.input_zero_point), (pad_w, pad_w, pad_h, pad_h))
    out_h = (centred.shape[2] - kernel_h) // stride_h + 1
    out_w = (centred.shape[3] - kernel_w) // stride_w + 1
    weight = layer.weight.to(torch.int64)
    total = torch.zeros(q.shape[0], layer.out_channels, out_h, out_w, dtype=torch.int64)
    for row in range(kernel_h):
        for column in range(kernel_w):
            window = centred[
                :,
                :,
                row : row + stride_h * (out_h - 1) + 1 : stride_h,
                column : column + stride_w * (out_w - 1) + 1 : stride_w,
            ]
            if layer.depthwise:
                total += window * weight[:, 0, row, column].reshape(1, -1, 1, 1)
            else:
                total += torch.einsum("nchw,oc->nohw", window, weight[:, :, row, column])
    return total + layer.bias.to(torch.int64).reshape(1, -1, 1, 1)


def reference_integers(model: Int8Model, images: torch.Tensor) -> torch.Tensor:
    """The logits' integers (int64, in the logits' own range) of ``model`` for ``images``."""
    q = from_carrier(model.quantize_input(images), model.input_qparams.dtype).to(torch.int64)
    for layer in model.layers:
        if isinstance(layer, Int8Linear):
            q = requantized(linear_accumulator(q, layer), layer, channel_dim=1)
        elif isinstance(layer, Int8Conv2d):
            q = requantized(conv_accumulator(q, layer), layer, channel_dim=1)
        elif isinstance(layer, Int8MaxPool2d):
            q = functional.max_pool2d(q.double(), layer.kernel_size, layer.stride).to(torch.int64)
        elif isinstance(layer, Int8GlobalAvgPool2d):
            count = q.shape[2] * q.shape[3]
            total = q.sum(dim=(2, 3), keepdim=True)
            q = torch.div(2 * total + count, 2 * count, rounding_mode="floor")
        elif isinstance(layer, nn.Flatten):
            q = layer(q)
        else:
            raise TypeError(f"no reference for a {type(layer).__name__}")
    return q
