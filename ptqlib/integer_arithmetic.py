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

A second requantization strategy is ONNX Runtime's (its MLAS library,
``MlasRequantizeOutput``), in float32 (notebook 08)::

    M_f32 = float32(float32(S_x S_w) / S_y)                     per output channel
    q_y   = clamp(round_half_even(float32(acc) * M_f32) + Z_y, lo, hi)

and its input quantization divides by the scale, ``round(x / S)`` (ONNX's QuantizeLinear),
where PyTorch multiplies by ``1 / S``. :class:`Requantization` names the two strategies;
every integer step stores one (``ptqlib.int8_layers``).

**Carriers.** ``torch._int_mm`` multiplies int8 by int8, so a uint8 activation q (0..255)
travels between layers as the int8 *carrier* ``c = q - 128`` (an int8 activation is its own
carrier): :func:`to_carrier` and :func:`from_carrier`. Since ``q - Z_x = c - (Z_x - 128)``,
``sum_k (q_x,k - Z_x) q_w,k = sum_k c_k q_w,k + (128 - Z_x) sum_k q_w,k``: the int8 GEMM
plus :func:`zero_point_correction` taken at ``Z_x - 128``, the *carrier correction*.

**One GEMM.** Every integer product goes through :func:`int8_matmul`, which picks
``torch._int_mm`` where oneDNN has a fast int8 kernel (AVX-512 VNNI, AMX) and an exact float
GEMM of the same integers elsewhere (see its docstring for why the float sums are exact).

This module holds the pieces as pure functions on integer tensors; ``ptqlib.int8_layers``
puts them together into layers.
"""

from __future__ import annotations

import functools
from enum import StrEnum

import torch

from ptqlib.errors import InputError
from ptqlib.hardware import int8_gemm_is_fast
from ptqlib.quantization import QParams, check_finite

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


# --- the second strategy: ONNX Runtime's float32 requantization --------------------------------


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


def float32_multiplier(
    input_scale: torch.Tensor, weight_scale: torch.Tensor, output_scale: torch.Tensor
) -> torch.Tensor:
    """``M = S_x S_w / S_y`` as ORT computes it: a float32 product, then a float32 division.

    All three scales are float32 (``weight_scale`` per output channel or one value); the
    result has the shape of ``weight_scale``.
    """
    named = {"input_scale": input_scale, "weight_scale": weight_scale, "output_scale": output_scale}
    scales = [torch.as_tensor(scale, dtype=torch.float32) for scale in named.values()]
    for name, scale in zip(named, scales, strict=True):
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise InputError(f"{name}: expected positive finite float32 scales, got {scale}")
    input_scale, weight_scale, output_scale = scales
    return (input_scale * weight_scale) / output_scale


def requantize_float32(
    accumulator: torch.Tensor,
    multiplier: torch.Tensor,
    zero_point: int,
    quant_min: int,
    quant_max: int,
) -> torch.Tensor:
    """``q_y = clamp(round_half_even(float32(acc) * M_f32) + Z_y, quant_min, quant_max)``.

    ``accumulator`` is the int32 sum (bias included), ``[N, out]``; ``multiplier`` the
    float32 ``M`` of :func:`float32_multiplier` (one per column, or one value). Like ORT,
    the zero-point is added after rounding and the clamp is the last step. Returns int64.
    The conversion of acc to float32 is exact while ``|acc| < 2^24``; above, it rounds as
    it does in ORT.
    """
    if accumulator.is_floating_point():
        raise TypeError(f"accumulator: expected an integer tensor, got {accumulator.dtype}")
    multiplier = torch.as_tensor(multiplier, dtype=torch.float32)
    # torch.round rounds half to even, like the x86 instruction MLAS uses (cvtps2dq).
    scaled = torch.round(accumulator.to(torch.float32) * multiplier)
    return (scaled.to(torch.int64) + zero_point).clamp(quant_min, quant_max)


def quantize_by_division(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """ONNX's QuantizeLinear for per-tensor qparams: ``clamp(round(x / S) + Z)`` with the
    division in float32 (``ptqlib.quantization.quantize`` multiplies by ``1 / S`` instead,
    as PyTorch does; the two differ by one step on rare values)."""
    if not isinstance(qparams, QParams) or qparams.axis is not None:
        raise InputError(f"qparams: expected per-tensor QParams, got {qparams!r}")
    check_finite(x, "x")
    scale = qparams.scale.to(torch.float32)
    quantized = torch.round(x.float() / scale) + qparams.zero_point.to(torch.float32)
    return quantized.clamp(qparams.quant_min, qparams.quant_max).to(qparams.dtype)


# --- carriers and the zero-point correction ---------------------------------------------------


def carrier_offset(dtype: torch.dtype) -> int:
    """What is subtracted from an activation's integer to carry it as int8: 128 for uint8
    (0..255 becomes -128..127), 0 for int8."""
    return 128 if dtype == torch.uint8 else 0


def to_carrier(integers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An activation's integers ``q`` (of ``dtype``'s range, any integer tensor) as int8
    carriers ``q - offset``."""
    return (integers.to(torch.int16) - carrier_offset(dtype)).to(torch.int8)


def from_carrier(carriers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Int8 carriers back to the activation's integers ``c + offset``, in ``dtype``."""
    return (carriers.to(torch.int16) + carrier_offset(dtype)).to(dtype)


def zero_point_correction(weight_matrix: torch.Tensor, input_zero_point: int) -> torch.Tensor:
    """``-Z_x sum_k q_w,k`` per row of the int8 ``weight_matrix [out, K]`` (int32): the term
    that ``sum_k (q_x,k - Z_x) q_w,k = sum_k q_x,k q_w,k - Z_x sum_k q_w,k`` adds to the
    product of the raw integers. Taken at ``Z_x - offset`` it is the *carrier correction*
    ``(offset - Z_x) sum_k q_w,k`` that the int8 carriers ``c = q - offset`` need."""
    row_sums = weight_matrix.to(torch.int32).sum(dim=1)
    return (-int(input_zero_point) * row_sums).to(torch.int32)


# --- the one GEMM entry point -----------------------------------------------------------------

FLOAT32_EXACT_INTEGERS = 2**24  # every integer of at most this magnitude is a float32
# |c q_w| <= 128 * 128 = 2^14 for int8 carriers and int8 weights.
LARGEST_PRODUCT = 128 * 128


@functools.cache
def default_uses_int8_gemm() -> bool:
    """Whether this CPU's ``torch._int_mm`` is fast (``ptqlib.hardware.int8_gemm_is_fast``),
    asked once: the answer cannot change while the process runs."""
    return int8_gemm_is_fast()


def exact_float_dtype(depth: int) -> torch.dtype:
    """The float type that sums ``depth`` int8 x int8 products exactly, in any order.

    Every product is an integer of magnitude at most 2^14 and every partial sum (however a
    blocked, vectorised GEMM orders them) is an integer of magnitude at most
    ``depth * 2^14``. float32 holds every integer up to 2^24, so for ``depth <= 1024`` no
    addition rounds; deeper sums use float64 (exact up to 2^53, beyond any int32 sum)."""
    return torch.float32 if depth * LARGEST_PRODUCT <= FLOAT32_EXACT_INTEGERS else torch.float64


def gemm_weight(weight_t: torch.Tensor, use_int8_gemm: bool | None = None) -> torch.Tensor:
    """An int8 ``[K, out]`` weight in the form :func:`int8_matmul` multiplies it: itself for
    ``torch._int_mm``, or its values in :func:`exact_float_dtype` for the float GEMM. The fast
    path converts once; the teaching path converts on each call."""
    use_int8_gemm = default_uses_int8_gemm() if use_int8_gemm is None else use_int8_gemm
    if use_int8_gemm:
        return weight_t
    return weight_t.to(exact_float_dtype(weight_t.shape[0]))


def int8_matmul(
    carriers: torch.Tensor, weight_t: torch.Tensor, use_int8_gemm: bool | None = None
) -> torch.Tensor:
    """``sum_k c_k w_k``: int8 carriers ``[N, K]`` times int8 weights ``[K, out]``, as int32.

    Which GEMM computes it is a question of speed only; the integers are the same:

    - ``torch._int_mm`` (``use_int8_gemm=True``; the default where oneDNN has a fast int8
      kernel, AVX-512 VNNI or AMX). One guard: a dimension of size 1 may have any stride,
      and PyTorch calls such a tensor contiguous whatever it is; but oneDNN's int8 GEMM
      misreads a ``[1, K]`` input whose row stride is not K (torch 2.14.1; ``torch.compile``
      produces such tensors, see the README's "Known issues"). Copying the row costs nothing.
    - an exact float GEMM of the same integers (``use_int8_gemm=False``; the default
      elsewhere, where ``_int_mm`` is a scalar loop): float32 while ``K <= 1024``, float64
      beyond (:func:`exact_float_dtype`). ``weight_t`` may already be that float tensor
      (:func:`gemm_weight`), as the fast path keeps it.
    """
    if weight_t.is_floating_point():
        use_int8_gemm = False
    elif use_int8_gemm is None:
        use_int8_gemm = default_uses_int8_gemm()
    if use_int8_gemm:
        if carriers.shape[0] == 1 and carriers.stride() != (carriers.shape[1], 1):
            carriers = torch.empty(carriers.shape, dtype=carriers.dtype).copy_(carriers)
        return torch._int_mm(carriers, weight_t)
    weight_t = gemm_weight(weight_t, use_int8_gemm=False)
    return torch.mm(carriers.to(weight_t.dtype), weight_t).to(torch.int32)


def int8_channelwise_dot(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``acc[m, c] = sum_k rows[m, c, k] w[c, k]``: one short dot product per channel, int32.

    This is a depthwise convolution's product: each output channel sees only its own input
    channel, so the filters do not form one ``[K, out]`` matrix and there is no single GEMM.
    ``rows`` are int8 carriers ``[M, C, kh kw]``, ``weight`` int8 ``[C, kh kw]``. The
    products are widened to int32 first (an int8 product would wrap) and summed exactly.
    """
    return (rows.to(torch.int32) * weight.to(torch.int32)).sum(dim=2, dtype=torch.int32)
