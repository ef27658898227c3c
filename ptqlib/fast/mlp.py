"""The fast path: the same integers as ``ptqlib.int8_model``, in fewer passes over memory.

The teaching path (``Int8Linear.forward``) does each step of the math as its own tensor
operation: the int8 GEMM, add the zero-point correction, add the bias, widen to int64,
multiply by M0, add the rounding half, shift, add Z_y, clamp, subtract the carrier offset,
narrow to int8. Each is one pass over an ``[N, out]`` tensor, and at small batch each is a
few microseconds of call overhead. :class:`FastInt8Model` computes exactly the same integers
with three changes, each an identity of integer arithmetic:

1. **Constants folded at build time.** Per output channel j, with the GEMM's sum
   ``g = sum_k c_k q_w,k`` over the int8 carriers, the teaching path computes
   ``floor(((g + d_j) M0_j + 2^(n_j - 1)) / 2^n_j) + Z_y`` with ``d_j`` = zero-point
   correction + bias. Multiplying numerator and denominator by ``2^(s - n_j)`` for the
   layer's largest shift ``s`` changes nothing, so every channel shares one shift::

       q = clamp((g * A_j + C_j) >> s, lo, hi)      A_j = M0_j 2^(s - n_j)
                                                     C_j = d_j A_j + 2^(s - 1) + Z'_y 2^s

   (``Z'_y`` is the output zero-point minus the carrier offset, so ``q`` is already the
   int8 carrier). A multiply-add, a shift, a clamp and a cast: four passes instead of ten.
   Int64 cannot overflow: :func:`_requantization_constants` checks
   ``max|g| A_j + |C_j| < 2^63`` per channel, with ``max|g| <= 128 sum_k |q_w,k|``.

   Most CPUs multiply int64 vectors slowly, float64 ones fast. Where a layer allows it,
   the same value is computed in float64, *exactly*: ``g A_j + C_j`` is an integer, and
   when ``max|g| A_j + |C_j| < 2^53`` every integer the float64 multiply-add meets is
   representable, so it rounds nothing; scaling by a power of two is exact too, and
   ``floor`` of the exact quotient is the arithmetic shift. Here each channel keeps its own
   shift n_j (``A_j = M0_j``), which keeps the bound lowest: ``q = clamp(floor(g A'_j +
   C'_j), lo, hi)`` with ``A'_j = M0_j 2^-n_j`` and ``C'_j = C_j 2^-n_j`` gives the same
   integers. The bound is checked per layer; where it fails, int64 it is.
2. **Raw pixels in.** For a model converted from ``fold_input_normalization`` (input
   qparams S = 1, Z = 0), a uint8 image already is the quantized input; its carrier
   ``p - 128`` is ``p XOR 0x80`` read as int8 (flipping the top bit of a byte subtracts
   128 modulo 256): no float work at all before the first GEMM.
3. **The right GEMM for this CPU** (:func:`ptqlib.hardware.int8_gemm_is_fast`). Without
   AVX-512 VNNI, ``torch._int_mm`` is a scalar loop (measured on AVX2-only CPUs; other CPUs
   are treated the same way), so the same sums are computed with the
   float32 GEMM, *exactly*: every product ``c q_w`` is an integer of at most 2^14 in
   magnitude, and every partial sum, in whatever order the GEMM adds them (blocked,
   vectorised, with fused multiply-adds), is an integer of magnitude at most
   ``sum_k |c_k q_w,k| <= 128 sum_k |q_w,k|``. Float32 represents every integer up to 2^24
   exactly, so where ``128 sum_k |q_w,k| <= 2^24`` (checked per layer; always true for
   K <= 1024 inputs) no addition ever rounds: the float unit does exact integer arithmetic.

``FastInt8Model(model)`` reads the teaching model's buffers once: rebuild it after changing
the model. The tests prove both equal, bit for bit, at every batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.hardware import int8_gemm_is_fast
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import Int8Model, is_pixel_input
from ptqlib.integer_arithmetic import carrier_offset, int8_matmul

FLOAT32_EXACT_INTEGERS = 2**24  # every integer of at most this magnitude is a float32
FLOAT64_EXACT_INTEGERS = 2**53  # ... a float64
SIGN_BIT = torch.tensor(
    0x80, dtype=torch.uint8
)  # a tensor: XOR with it is ~3x faster than with 128
INT64_LIMIT = 2**63


@dataclass(frozen=True)
class FastLayer:
    """One Linear's folded constants (see the module docstring)."""

    weight_t: torch.Tensor  # [in, out], int8 for _int_mm or float32 for the float GEMM
    multiplier: torch.Tensor  # A_j: int64, or A'_j = A_j 2^-s in float64
    constant: torch.Tensor  # C_j: int64, or C'_j = C_j 2^-s in float64
    shift: int  # s (0 for float64: already applied)
    lowest: int  # clamp bounds of the int8 carriers
    highest: int


def float_gemm_is_exact(weight: torch.Tensor) -> bool:
    """Whether float32 sums every ``sum_k c_k q_w,k`` of this int8 weight ``[out, in]``
    exactly for any int8 carriers ``c`` (|c| <= 128): the bound of the module docstring."""
    largest = 128 * weight.to(torch.int64).abs().sum(dim=1).max()
    return int(largest) <= FLOAT32_EXACT_INTEGERS


def _largest_sum(largest_g: torch.Tensor, factor: torch.Tensor, added: torch.Tensor) -> int:
    """``max_j (max|g_j| factor_j + |added_j|)``, in Python integers (which cannot overflow)."""
    return max(
        g * f + abs(a)
        for g, f, a in zip(largest_g.tolist(), factor.tolist(), added.tolist(), strict=True)
    )


def _requantization_constants(layer: Int8Linear) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(multiplier, constant, shift)`` of one layer: float64 ``(A'_j, C'_j, 0)`` where the
    bound of the module docstring makes float64 exact, else int64 ``(A_j, C_j, s)``."""
    offset = layer.carrier_correction().long() + layer.bias.long()
    output_zero_point = int(layer.output_zero_point) - carrier_offset(layer.output_dtype)
    largest_g = 128 * layer.weight.to(torch.int64).abs().sum(dim=1)
    # Each channel with its own shift n_j: float64 if exact.
    multiplier, shift = layer.multiplier, layer.shift
    constant = offset * multiplier + (1 << (shift - 1)) + output_zero_point * (1 << shift)
    if _largest_sum(largest_g, multiplier, constant) < FLOAT64_EXACT_INTEGERS:
        power = torch.pow(2.0, -shift.double())
        return multiplier.double() * power, constant.double() * power, 0
    # One shift s for all channels: int64.
    common = int(shift.max())
    multiplier = multiplier << (common - shift)
    constant = offset * multiplier + (1 << (common - 1)) + output_zero_point * (1 << common)
    if _largest_sum(largest_g, multiplier, constant) >= INT64_LIMIT:
        raise InputError(f"layer {layer.name!r}: the fast path's int64 sum could overflow")
    return multiplier, constant, common


def _fold(layer: Int8Linear, use_int8_gemm: bool) -> FastLayer:
    """One teaching-path layer's weights and folded constants for the fast path."""
    if use_int8_gemm:
        weight_t = layer.weight.t().contiguous()
    elif float_gemm_is_exact(layer.weight):
        weight_t = layer.weight.t().float().contiguous()
    else:
        raise InputError(
            f"layer {layer.name!r}: {layer.in_features} inputs are too many for exact float32 "
            "sums (128 * sum |q_w| > 2^24); use the int8 GEMM (use_int8_gemm=True)"
        )
    lowest, highest = layer.output_range()
    output_offset = carrier_offset(layer.output_dtype)
    return FastLayer(
        weight_t,
        *_requantization_constants(layer),
        lowest - output_offset,
        highest - output_offset,
    )


class FastInt8Model(nn.Module):
    """An :class:`~ptqlib.int8_model.Int8Model`, folded for speed (same integers).

    ``use_int8_gemm`` picks the accumulator: ``torch._int_mm`` or the exact float32 GEMM
    (default: whichever is fast on this CPU). Call it with float images (quantized exactly as
    the teaching path does) or, for a model whose input is pixels (S = 1, Z = 0, uint8),
    with the uint8 pixels themselves.
    """

    def __init__(self, model: Int8Model, use_int8_gemm: bool | None = None) -> None:
        super().__init__()
        if not isinstance(model, Int8Model):
            raise TypeError(f"model: expected an Int8Model (from convert), got {type(model)}")
        if not all(isinstance(layer, Int8Linear | nn.Flatten) for layer in model.layers):
            raise InputError("model: the fast path runs Int8Linear and Flatten layers only")
        self.use_int8_gemm = int8_gemm_is_fast() if use_int8_gemm is None else use_int8_gemm
        self.layers = [_fold(layer, self.use_int8_gemm) for layer in model.layers
                       if isinstance(layer, Int8Linear)]  # fmt: skip
        qparams = model.input_qparams
        self.input_qparams, self.output_qparams = qparams, model.output_qparams
        self.input_offset = carrier_offset(qparams.dtype)
        self.takes_pixels = is_pixel_input(qparams)

    @property
    def accumulator(self) -> str:
        """Which GEMM sums the int8 products: for reports and the benchmark table."""
        return "int8 GEMM (_int_mm)" if self.use_int8_gemm else "float32 GEMM (exact)"

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images to int8 carriers ``[N, features]``: uint8 pixels by flipping their top bit
        (``p XOR 0x80`` is ``p - 128``), float images as ``ptqlib.quantization.quantize``."""
        if images.dtype == torch.uint8 and self.takes_pixels:
            return torch.bitwise_xor(images.reshape(len(images), -1), SIGN_BIT).view(torch.int8)
        qparams = self.input_qparams
        scaled = images.reshape(len(images), -1).float() * (1.0 / qparams.scale)
        scaled.round_().add_(qparams.zero_point).clamp_(qparams.quant_min, qparams.quant_max)
        return scaled.sub_(self.input_offset).to(torch.int8)

    def run_layer(self, x: torch.Tensor, layer: FastLayer) -> torch.Tensor:
        """One layer: int8 carriers ``[N, in]`` to int8 carriers ``[N, out]``."""
        if self.use_int8_gemm:
            accumulator = int8_matmul(x, layer.weight_t)
        else:
            accumulator = torch.mm(x.float(), layer.weight_t)
        if layer.multiplier.dtype == torch.float64:  # exact: see the module docstring
            scaled = accumulator.double().mul_(layer.multiplier).add_(layer.constant)
            scaled.floor_()
        else:
            scaled = accumulator.long().mul_(layer.multiplier).add_(layer.constant)
            scaled >>= layer.shift
        return scaled.clamp_(layer.lowest, layer.highest).to(torch.int8)

    def integer_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits as int8 carriers, equal to ``Int8Model.integer_forward``."""
        x = self.quantize_input(images)
        for layer in self.layers:
            x = self.run_layer(x, layer)
        return x

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The predicted class, straight from the integers: argmax needs no dequantization
        (dequantizing is increasing, so it keeps the order of the logits)."""
        return self.integer_forward(images).argmax(dim=1)

    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers in their own dtype, as ``Int8Model.quantized_logits``."""
        output_dtype = self.output_qparams.dtype
        carriers = self.integer_forward(images).to(torch.int16)
        return (carriers + carrier_offset(output_dtype)).to(output_dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits ``S_y (q - Z_y)``, so ``ptqlib.evaluation`` works unchanged."""
        qparams = self.output_qparams
        zero_point = int(qparams.zero_point) - carrier_offset(qparams.dtype)
        return (self.integer_forward(images).float() - zero_point) * qparams.scale
