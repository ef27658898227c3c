"""The fast path's requantization: the teaching path's constants folded into one multiply-add.

The teaching path (``Int8Step.requantize``) does each step of the math as its own tensor
operation: add the carrier correction, add the bias, widen to int64, multiply by M0, add the
rounding half, shift, add Z_y, clamp, subtract the carrier offset, narrow to int8. Each is
one pass over an ``[N, out]`` tensor, and at small batch each is a few microseconds of call
overhead. :func:`fold` rewrites the fixed-point step with two identities of integer
arithmetic:

1. **Constants folded.** Per output channel j, with the GEMM's sum ``g = sum_k c_k q_w,k``
   over the int8 carriers, the teaching path computes
   ``floor(((g + d_j) M0_j + 2^(n_j - 1)) / 2^n_j) + Z_y`` with ``d_j`` = carrier correction
   + bias. Multiplying numerator and denominator by ``2^(s - n_j)`` for the layer's largest
   shift ``s`` changes nothing, so every channel shares one shift::

       q = clamp((g * A_j + C_j) >> s, lo, hi)      A_j = M0_j 2^(s - n_j)
                                                     C_j = d_j A_j + 2^(s - 1) + Z'_y 2^s

   (``Z'_y`` is the output zero-point minus the carrier offset, so ``q`` is already the
   int8 carrier). A multiply-add, a shift, a clamp and a cast: four passes instead of ten.
   Int64 cannot overflow: :func:`fold` checks ``max|g| A_j + |C_j| < 2^63`` per channel,
   with ``max|g| <= 128 sum_k |q_w,k|``.
2. **Float64 where exact.** Most CPUs multiply int64 vectors slowly, float64 ones fast.
   ``g A_j + C_j`` is an integer, and when ``max|g| A_j + |C_j| < 2^53`` every integer the
   float64 multiply-add meets is representable, so it rounds nothing; scaling by a power of
   two is exact too, and ``floor`` of the exact quotient is the arithmetic shift. Here each
   channel keeps its own shift n_j (``A_j = M0_j``), which keeps the bound lowest:
   ``q = clamp(floor(g A'_j + C'_j), lo, hi)`` with ``A'_j = M0_j 2^-n_j`` and
   ``C'_j = C_j 2^-n_j`` gives the same integers. The bound is checked per layer; where it
   fails, int64 it is.

ONNX Runtime's float32 requantization has nothing to fold (its M_f32 already is one
constant, and the order of its float32 operations is part of its result), so the fast path
runs the teaching path's ``requantize`` for it. Both modes are monotone in the accumulator,
which lets the fast CNN max-pool before requantizing (``ptqlib.fast.conv``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptqlib.errors import InputError
from ptqlib.int8_gemm import carrier_of, gemm_weight
from ptqlib.int8_layers import Int8Step
from ptqlib.integer_arithmetic import Requantization

FLOAT64_EXACT_INTEGERS = 2**53  # every integer of at most this magnitude is a float64
INT64_LIMIT = 2**63
# The requantizations the fast path runs; any other is refused by name.
FAST_REQUANTIZATIONS = (Requantization.FIXED_POINT, Requantization.FLOAT32)


@dataclass(frozen=True)
class FoldedStep:
    """One integer step's weights for the GEMM and its folded requantization constants."""

    weight_t: torch.Tensor  # [K, out]: int8 for _int_mm, or float for the exact float GEMM
    multiplier: torch.Tensor | None  # A_j (int64) or A'_j (float64); None: float32 mode
    constant: torch.Tensor | None  # C_j (int64) or C'_j (float64)
    shift: int  # s (0 for float64: already applied)
    lowest: int  # clamp bounds of the int8 carriers
    highest: int


def _largest_sum(largest_g: torch.Tensor, factor: torch.Tensor, added: torch.Tensor) -> int:
    """``max_j (max|g_j| factor_j + |added_j|)``, in Python integers (which cannot overflow)."""
    return max(
        g * f + abs(a)
        for g, f, a in zip(largest_g.tolist(), factor.tolist(), added.tolist(), strict=True)
    )


def _fixed_point_constants(step: Int8Step) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(multiplier, constant, shift)`` of one step: float64 ``(A'_j, C'_j, 0)`` where the
    bound of the module docstring makes float64 exact, else int64 ``(A_j, C_j, s)``."""
    offset = step.carrier_correction().long() + step.bias.long()
    output_zero_point = carrier_of(int(step.output_zero_point), step.output_dtype)
    largest_g = 128 * step.weight_matrix().to(torch.int64).abs().sum(dim=1)
    # Each channel with its own shift n_j: float64 if exact.
    multiplier, shift = step.multiplier, step.shift
    constant = offset * multiplier + (1 << (shift - 1)) + output_zero_point * (1 << shift)
    if _largest_sum(largest_g, multiplier, constant) < FLOAT64_EXACT_INTEGERS:
        power = torch.pow(2.0, -shift.double())
        return multiplier.double() * power, constant.double() * power, 0
    # One shift s for all channels: int64.
    common = int(shift.max())
    multiplier = multiplier << (common - shift)
    constant = offset * multiplier + (1 << (common - 1)) + output_zero_point * (1 << common)
    if _largest_sum(largest_g, multiplier, constant) >= INT64_LIMIT:
        raise InputError(f"layer {step.name!r}: the fast path's int64 sum could overflow")
    return multiplier, constant, common


def fold(step: Int8Step, use_int8_gemm: bool) -> FoldedStep:
    """One teaching-path step's GEMM weight and folded constants, from its buffers now."""
    if step.requantization not in FAST_REQUANTIZATIONS:
        raise InputError(
            f"layer {step.name!r}: the fast path does not implement the "
            f"{step.requantization!r} requantization"
        )
    weight_t = gemm_weight(step.weight_matrix().t().contiguous(), use_int8_gemm)
    lowest, highest = step.output_range()
    if step.requantization == Requantization.FLOAT32:
        multiplier, constant, shift = None, None, 0
    else:
        multiplier, constant, shift = _fixed_point_constants(step)
    lowest, highest = (carrier_of(bound, step.output_dtype) for bound in (lowest, highest))
    return FoldedStep(weight_t, multiplier, constant, shift, lowest, highest)


def requantize_folded(product: torch.Tensor, step: Int8Step, folded: FoldedStep) -> torch.Tensor:
    """The int8 carriers of ``step``'s output from the GEMM's sums ``g`` (int32, one column per
    output channel, carrier correction and bias *not* added): the same integers as
    ``step.requantize(g + correction + bias)``."""
    if folded.multiplier is None:  # float32 mode: the teaching path's own requantize
        return step.requantize(product + (step.carrier_correction() + step.bias))
    if folded.multiplier.dtype == torch.float64:  # exact: see the module docstring
        scaled = product.double().mul_(folded.multiplier).add_(folded.constant)
        scaled.floor_()
    else:
        scaled = product.long().mul_(folded.multiplier).add_(folded.constant)
        scaled >>= folded.shift
    return scaled.clamp_(folded.lowest, folded.highest).to(torch.int8)
