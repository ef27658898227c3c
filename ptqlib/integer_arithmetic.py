"""The integer arithmetic of one INT8 layer: the int32 accumulator and its requantization.

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

The accumulator splits into the product of the raw integers and one constant per output
channel: ``sum_k (q_x,k - Z_x) q_w,k = sum_k q_x,k q_w,k - Z_x sum_k q_w,k``, the
*zero-point correction* (:func:`zero_point_correction`); the bias is quantized at scale
``S_x S_w`` so that it adds straight in (:func:`quantize_bias`).

How the last step rounds is a property of every integer step, its :class:`Requantization`:
this fixed point (the default), or ONNX Runtime's float32 arithmetic
(``ptqlib.ort_arithmetic``, notebook 08). The products themselves go through the one GEMM
entry point, ``ptqlib.int8_gemm``. This module holds the pieces as pure functions on integer
tensors; ``ptqlib.int8_layers`` puts them together into layers.
"""

from __future__ import annotations

from enum import StrEnum

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
        bad = real_multiplier[~(torch.isfinite(real_multiplier) & (real_multiplier > 0))]
        raise InputError(
            f"real_multiplier: expected positive finite values, got {float(bad.flatten()[0]):g} "
            "(a scale that underflows or overflows float32?)"
        )
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


def zero_point_correction(weight_matrix: torch.Tensor, input_zero_point: int) -> torch.Tensor:
    """``-Z_x sum_k q_w,k`` per row of the int8 ``weight_matrix [out, K]`` (int32): the term
    that ``sum_k (q_x,k - Z_x) q_w,k = sum_k q_x,k q_w,k - Z_x sum_k q_w,k`` adds to the
    product of the raw integers. Taken at ``Z_x - offset`` it is the *carrier correction*
    ``(offset - Z_x) sum_k q_w,k`` that the int8 carriers ``c = q - offset`` need."""
    row_sums = weight_matrix.to(torch.int32).sum(dim=1)
    return (-int(input_zero_point) * row_sums).to(torch.int32)


class Requantization(StrEnum):
    """How an integer step turns its int32 accumulator into the next 8-bit activation, and how
    the model quantizes its float input. A ``StrEnum``: ``mode == "float32"`` holds."""

    FIXED_POINT = "fixed_point"  # M0 2^-n in integers; the input as round(x (1 / S))
    FLOAT32 = "float32"  # ONNX Runtime: float32(acc) M_f32, half to even; the input as x / S


def requantization_mode(value: object) -> Requantization:
    """``value`` (a :class:`Requantization` or its name) as a Requantization, else InputError."""
    names = [mode.value for mode in Requantization]
    if isinstance(value, str) and value in names:
        return Requantization(value)
    raise InputError(f"requantization: expected one of {', '.join(names)}, got {value!r}")
