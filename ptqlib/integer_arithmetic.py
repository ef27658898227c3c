"""The integer building blocks of an INT8 layer: requantization and the int32 bias.

A quantized Linear ``y = W x + b`` (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", section 2) computes, with the
qparams found by calibration::

    real values     x = S_x (q_x - Z_x)       w = S_w q_w        b = S_x S_w q_b
    accumulator     acc = sum_k (q_x,k - Z_x) q_w,k  +  q_b                       int32
    output          q_y = clamp(round(M acc) + Z_y, lo, hi),     M = S_x S_w / S_y
    fixed point     M ~= M0 2^-n  with  M0 an integer in [2^30, 2^31)
                    round(M acc) ~= (acc M0 + 2^(n-1)) >> n                        int64

The last line is an approximation twice over: M0 2^-n is M to 31 significant bits
(relative error below 2^-31), and the shift rounds ties *upwards* (``>>`` rounds toward
minus infinity after adding half), where Python's and torch's ``round`` go to the even
neighbour. gemmlowp and TFLite round twice (a rounding doubling high multiply to 32 bits,
then a rounding shift) and break ties away from zero; here one exact int64 product is
rounded once. All of them differ from the exact real rounding by one step, rarely:
notebook 04 counts how often.

This module holds the pieces as pure functions on integer tensors; ``ptqlib.int8_model``
puts them together into layers.
"""

from __future__ import annotations

import torch

from ptqlib.errors import InputError
from ptqlib.quantization import check_finite

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# M0 has 31 significant bits: it lies in [2^30, 2^31) and fits in an int32.
MULTIPLIER_BITS = 31
# The largest shift n: 2^n must fit in an int64.
MAX_SHIFT = 62


def fixed_point_multiplier(
    real_multiplier: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer form ``(M0, n)`` of a real multiplier: ``M ~= M0 * 2**-n``.

    Write ``M = f * 2**e`` with f in [0.5, 1) (``frexp``); then ``M0 = round(f * 2**31)``,
    an integer in [2^30, 2^31) (31 significant bits, an int32), and ``n = 31 - e``. The
    relative error of ``M0 * 2**-n`` is at most 2^-31. Works elementwise (per channel);
    returns two int64 tensors.
    """
    real_multiplier = torch.as_tensor(real_multiplier, dtype=torch.float64)
    if not bool(torch.isfinite(real_multiplier).all()) or bool((real_multiplier <= 0).any()):
        raise InputError(f"real_multiplier: expected positive finite values, got {real_multiplier}")
    fraction, exponent = torch.frexp(real_multiplier)
    multiplier = torch.round(fraction * 2.0**MULTIPLIER_BITS).to(torch.int64)
    exponent = exponent.to(torch.int64)
    # f rounded up to 1.0: use 0.5 with the next exponent instead, keeping M0 < 2^31.
    rounded_up = multiplier == 2**MULTIPLIER_BITS
    multiplier = torch.where(rounded_up, 2 ** (MULTIPLIER_BITS - 1), multiplier)
    exponent = exponent + rounded_up.to(torch.int64)
    shift = MULTIPLIER_BITS - exponent
    if bool((shift < 1).any()) or bool((shift > MAX_SHIFT).any()):
        raise InputError(
            f"real_multiplier: {real_multiplier.min().item():.3g}.."
            f"{real_multiplier.max().item():.3g} needs a shift outside 1..{MAX_SHIFT}; "
            "the scales of this layer are out of proportion"
        )
    return multiplier, shift


def rounding_right_shift(value: torch.Tensor, shift: torch.Tensor | int) -> torch.Tensor:
    """``round(value / 2**shift)`` for integer tensors: add half, then shift right.

    ``>>`` on signed integers is an arithmetic shift (it rounds toward minus infinity),
    so adding ``2**(shift - 1)`` first rounds to nearest, ties upwards.
    """
    shift = torch.as_tensor(shift, dtype=torch.int64)
    return (value.to(torch.int64) + (1 << (shift - 1))) >> shift


def requantize(
    accumulator: torch.Tensor,
    multiplier: torch.Tensor | int,
    shift: torch.Tensor | int,
    zero_point: int,
    quant_min: int,
    quant_max: int,
) -> torch.Tensor:
    """``q_y = clamp(round(acc * M0 / 2**n) + Z_y, quant_min, quant_max)``, in integers only.

    ``accumulator`` is the int32 sum (bias included); ``multiplier`` and ``shift`` are
    the ``(M0, n)`` of :func:`fixed_point_multiplier` (per channel: one per column).
    Returns int64; the product acc * M0 needs 62 bits.
    """
    multiplier = torch.as_tensor(multiplier, dtype=torch.int64)
    scaled = accumulator.to(torch.int64) * multiplier
    return (rounding_right_shift(scaled, shift) + zero_point).clamp(quant_min, quant_max)


def quantize_bias(
    bias: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor
) -> torch.Tensor:
    """The int32 bias ``q_b = round(b / (S_x S_w))``: scale S_x S_w, zero-point 0.

    With that scale the bias is in the same units as the accumulator, so it is simply
    added to it. Computed in float64 so that the product of the scales is exact.
    """
    check_finite(bias, "bias")
    bias_scale = torch.as_tensor(input_scale).double() * torch.as_tensor(weight_scale).double()
    quantized = torch.round(bias.double() / bias_scale)
    if bool((quantized.abs() > INT32_MAX).any()):
        raise InputError(
            "bias: does not fit in int32 at scale S_x * S_w (a weight scale is tiny for a large "
            f"bias; largest |b / (S_x S_w)| = {quantized.abs().max().item():.3g})"
        )
    return quantized.to(torch.int32)


def check_accumulator_fits(
    name: str, weight_matrix: torch.Tensor, bias: torch.Tensor, correction: torch.Tensor
) -> None:
    """Raise ValueError unless, for any int8 carriers (|c| <= 128), every int32 accumulator
    ``sum_k c_k q_w,k + correction + q_b`` of the int8 ``weight_matrix`` ``[out, K]`` fits in
    int32. Bounded in float64, which cannot overflow here; ``requantize`` then needs
    ``|acc| M0 < 2^62``, which holds since M0 < 2^31."""
    largest = (
        weight_matrix.double().abs().sum(dim=1) * 128
        + bias.double().abs()
        + correction.double().abs()
    )
    if bool((largest > INT32_MAX).any()):
        raise InputError(f"layer {name!r}: the int32 accumulator could overflow")


def carrier_offset(dtype: torch.dtype) -> int:
    """What is subtracted from an activation's integer to carry it as int8: 128 for uint8
    (0..255 becomes -128..127), 0 for int8."""
    return 128 if dtype == torch.uint8 else 0


def int8_matmul(carriers: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``sum_k c_k w_k``: int8 ``[N, K]`` times int8 ``[K, out]``, summed in int32.

    This is ``torch._int_mm``, with one guard. A dimension of size 1 may have any stride, and
    PyTorch calls such a tensor contiguous whatever it is; but on CPUs with AVX-512 VNNI
    (oneDNN's int8 GEMM) ``_int_mm`` misreads a ``[1, K]`` input whose row stride is not
    K (torch 2.14.1; ``torch.compile`` produces such tensors, see the README's "Known
    issues"). Copying into a fresh tensor with the standard strides costs one row.
    """
    if carriers.shape[0] == 1 and carriers.stride() != (carriers.shape[1], 1):
        carriers = torch.empty(carriers.shape, dtype=carriers.dtype).copy_(carriers)
    return torch._int_mm(carriers, weight_t)
