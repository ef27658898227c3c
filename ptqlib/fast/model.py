"""The fast path: an :class:`~ptqlib.int8_model.Int8Model` run with its constants folded.

One class for the MLP and the CNN. :class:`FastInt8Model` computes exactly the teaching
path's integers, with the changes of ``ptqlib.fast.folding`` (requantization folded into one
multiply-add) and ``ptqlib.fast.conv`` (convolutions channels last, max-pool before
requantizing), plus:

- **Raw pixels in.** For a model converted with ``pixel_input=True`` (input qparams S = 1,
  Z = 0, uint8), a uint8 image already is the quantized input; its carrier ``p - 128`` is
  ``p XOR 0x80`` read as int8 (flipping the top bit of a byte subtracts 128 modulo 256): no
  float work at all before the first GEMM. Float images are quantized by the teaching path's
  own ``quantize_input``.
- **The right GEMM for this CPU**: ``int8_gemm.int8_matmul``, ``torch._int_mm`` or
  the exact float GEMM (``use_int8_gemm``; default: whichever is fast here).

**State.** Like the teaching path, the fast path follows the model's state: it holds the
teaching model and folds each layer's constants from its buffers when they are first needed,
then again whenever a buffer changed (every in-place write, ``load_state_dict`` included,
bumps a tensor's version; a replaced buffer has a new identity) or the layer was replaced.
So ``load_state_dict`` on the teaching model changes the fast path's results too.
"""

from __future__ import annotations

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.fast.conv import conv_products, max_pool_channels_last
from ptqlib.fast.folding import FoldedStep, fold, requantize_folded
from ptqlib.int8_gemm import default_uses_int8_gemm, int8_matmul
from ptqlib.int8_layers import (
    Int8Conv2d,
    Int8GlobalAvgPool2d,
    Int8Linear,
    Int8MaxPool2d,
    Int8Step,
    rounded_mean,
)
from ptqlib.int8_model import Int8Model

SIGN_BIT = torch.tensor(0x80, dtype=torch.uint8)  # a tensor: XOR with it is ~3x faster than 128
FAST_LAYERS = (Int8Linear, Int8Conv2d, Int8MaxPool2d, Int8GlobalAvgPool2d, nn.Flatten)


def _stamp(step: Int8Step) -> tuple:
    """What the folded constants of ``step`` depend on: its buffers (identity and version)
    and its requantization. Read from the module's own buffer dict: ``step.buffers()`` walks
    the module tree and costs about four times as much on every call."""
    return (step.requantization, *[(id(b), b._version) for b in step._buffers.values()])


class FastInt8Model(nn.Module):
    """An :class:`~ptqlib.int8_model.Int8Model` (MLP or CNN), folded for speed: same input,
    same integers, same float logits (module docstring). ``use_int8_gemm`` picks the GEMM:
    ``torch._int_mm`` or the exact float GEMM (default: whichever is fast on this CPU)."""

    def __init__(self, model: Int8Model, use_int8_gemm: bool | None = None) -> None:
        super().__init__()
        if not isinstance(model, Int8Model):
            raise TypeError(f"model: expected an Int8Model (from convert), got {type(model)}")
        for layer in model.layers:
            if not isinstance(layer, FAST_LAYERS):
                raise InputError(f"model: the fast path cannot run a {type(layer).__name__}")
        self.model = model
        self.use_int8_gemm = default_uses_int8_gemm() if use_int8_gemm is None else use_int8_gemm
        self._folded: dict[int, tuple[Int8Step, tuple, FoldedStep]] = {}
        for step in model.integer_layers():
            self.folded(step)  # refuses an unsupported requantization now, not at the first call

    @property
    def accumulator(self) -> str:
        """Which GEMM sums the int8 products: for reports and the benchmark table."""
        if self.use_int8_gemm:
            return "int8 GEMM (_int_mm)"
        dtypes = {self.folded(step).weight_t.dtype for step in self.model.integer_layers()}
        return "float64 GEMM (exact)" if torch.float64 in dtypes else "float32 GEMM (exact)"

    @property
    def input_qparams(self):
        return self.model.input_qparams

    @property
    def output_qparams(self):
        return self.model.output_qparams

    @property
    def takes_pixels(self) -> bool:
        return self.model.takes_pixels

    def folded(self, step: Int8Step) -> FoldedStep:
        """``step``'s folded constants, refolded whenever its state changed."""
        stamp = _stamp(step)
        cached = self._folded.get(id(step))
        if cached is None or cached[0] is not step or cached[1] != stamp:
            cached = (step, stamp, fold(step, self.use_int8_gemm))
            self._folded[id(step)] = cached
        return cached[2]

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images to int8 carriers: uint8 pixels by flipping their top bit (``p XOR 0x80`` is
        ``p - 128``), float images as the teaching path quantizes them."""
        if images.dtype == torch.uint8 and self.takes_pixels:
            return torch.bitwise_xor(images, SIGN_BIT).view(torch.int8)
        return self.model.quantize_input(images)

    def integer_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits as int8 carriers, equal to ``Int8Model.integer_forward``."""
        x = self.quantize_input(images)
        channels_last = False  # after the first convolution, activations are [N, H, W, C]
        layers = list(self.model.layers)
        index = 0
        while index < len(layers):
            layer = layers[index]
            following = layers[index + 1] if index + 1 < len(layers) else None
            if isinstance(layer, Int8Conv2d):
                if not channels_last:
                    x, channels_last = x.permute(0, 2, 3, 1), True
                folded = self.folded(layer)
                product = conv_products(x, layer, folded.weight_t)
                if isinstance(following, Int8MaxPool2d):  # pool first: requantize is monotone
                    product = max_pool_channels_last(
                        product, following.kernel_size, following.stride
                    )
                    index += 1
                x = requantize_folded(product, layer, folded)
            elif isinstance(layer, Int8Linear):
                folded = self.folded(layer)
                x = requantize_folded(int8_matmul(x, folded.weight_t), layer, folded)
            elif isinstance(layer, Int8MaxPool2d):
                if channels_last:
                    x = max_pool_channels_last(x, layer.kernel_size, layer.stride)
                else:
                    x = layer(x)
            elif isinstance(layer, Int8GlobalAvgPool2d):
                x = rounded_mean(x, (1, 2) if channels_last else (2, 3)).to(torch.int8)
            else:  # Flatten, in the teaching path's C, H, W order
                if channels_last:
                    x, channels_last = x.permute(0, 3, 1, 2), False
                x = layer(x)
            index += 1
        return x

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The predicted class, straight from the integers: argmax needs no dequantization
        (dequantizing is increasing, so it keeps the order of the logits)."""
        return self.integer_forward(images).argmax(dim=1)

    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers in their own dtype, as ``Int8Model.quantized_logits``."""
        return self.model.logits_from_carriers(self.integer_forward(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits ``S_y (q - Z_y)``, so ``ptqlib.evaluation`` works unchanged."""
        return self.model.dequantize_output(self.integer_forward(images))
