"""The fast path's requantization: the teaching path's constants folded into one multiply-add.

The teaching path (``Int8Step.requantize``) does each step of the math as its own tensor
operation: add the carrier correction, add the bias, widen to int64, multiply by M0, add the
rounding half, shift, add Z_y, clamp, subtract the carrier offset, narrow to int8. Each is
one pass over an ``[N, out]`` tensor, and at small batch each is a few microseconds of call
overhead. :func:`fold` rewrites the fixed-point step with an identity of integer arithmetic.

**Constants folded.** Per output channel j, with the GEMM's sum ``g = sum_k c_k q_w,k`` over
the int8 carriers, the teaching path computes
``floor(((g + d_j) M0_j + 2^(n_j - 1)) / 2^n_j) + Z'_y`` with ``d_j`` = carrier correction +
bias and ``Z'_y`` the output zero-point minus the carrier offset (so the result already is
the int8 carrier). ``Z'_y`` is an integer, so it moves inside the floor::

    q = clamp(floor((g A_j + N_j) / 2^n_j), lo, hi)     A_j = M0_j
                                                          N_j = d_j M0_j + 2^(n_j - 1) + Z'_y 2^n_j

A multiply-add, a shift, a clamp and a cast: four passes instead of ten. ``A_j``, ``N_j``
and the bound below are computed in Python integers, which cannot overflow; only numbers
that fit go into tensors.

**All-zero rows.** A pruned output channel has weights all 0, so its weight scale is the
smallest one (EPS) and its shift n_j is 56-62: ``Z'_y 2^n_j`` alone would not fit in int64.
But its g is 0 for every input, so its output is one constant, the teaching path's own
``requantize(d_j)``: such a channel gets ``A_j = 0, n_j = 0, N_j`` = that constant.

**Which arithmetic.** With ``max|g| <= G_j = 128 sum_k |q_w,k|``:

1. *float64*, if ``G_j A_j + |N_j| < 2^53`` for every channel. Most CPUs multiply int64
   vectors slowly and float64 ones fast. ``A_j 2^-n_j`` and ``N_j 2^-n_j`` are then exact
   float64 numbers, and every value the multiply-add meets is an integer below 2^53 times
   ``2^-n_j``, so it rounds nothing; ``floor`` of the exact quotient is the shift:
   ``q = clamp(floor(g A'_j + N'_j), lo, hi)``.
2. *int64*, if ``G_j A_j + |N_j| < 2^63`` for every channel: ``(g A_j + N_j) >> n_j``.
   Where the bound still holds with every channel scaled to the layer's largest shift n
   (``A_j 2^(n - n_j)`` and ``N_j 2^(n - n_j)``: the same quotient), one shift serves them
   all: a shift by one number took half the time of a shift per channel for a
   1024 x 128 output (27 against 48 us on an Intel Xeon, torch 2.14.1).
3. otherwise (extreme scales: a shift near 62 with a large ``Z'_y``) the teaching path's own
   ``requantize`` for that layer. No layer the teaching path runs is refused.

ONNX Runtime's float32 requantization has nothing to fold (its M_f32 already is one
constant, and the order of its float32 operations is part of its result), so the fast path
runs the teaching path's ``requantize`` for it too.

**Exact integers only.** The identities above hold for exact integer arithmetic. Conversion
makes layers whose teaching path computes exactly that (int32 accumulators that cannot wrap,
0 <= M0 < 2^31, 1 <= n <= 62), but hand-set buffers can hold anything: where
:func:`teaching_integers_are_exact` says the teaching path's int32 or int64 could wrap, or M0
or n is outside that range, the layer gets the teaching path's own ``requantize``. Where it
holds, every mode is non-decreasing in the accumulator (in ONNX Runtime's, with M_f32 >= 0
and products far below 2^63, where its float-to-int64 conversion would wrap), which lets
the fast CNN max-pool before requantizing (``ptqlib.fast.conv``); elsewhere it pools after,
as the teaching path does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch

from ptqlib.int8_gemm import FLOAT32_EXACT_INTEGERS, carrier_of, gemm_weight
from ptqlib.int8_layers import Int8Step
from ptqlib.integer_arithmetic import Requantization

FLOAT64_EXACT_INTEGERS = 2**53  # every integer of at most this magnitude is a float64
INT32_LIMIT = 2**31
INT64_LIMIT = 2**63
SMALL_OUTPUT = 8192  # values: requantize_folded's one fused call up to here (64 KB of float64)


class FoldedArithmetic(StrEnum):
    """How a folded step requantizes (module docstring, "Which arithmetic")."""

    FLOAT64 = "float64 multiply-add"
    INT64 = "int64 multiply-add"
    TEACHING = "the teaching path's requantize"


@dataclass(frozen=True)
class FoldedStep:
    """One integer step's weights for the GEMM, its folded requantization constants and the
    numbers the fast path reads on every call, taken from its buffers once."""

    weight_t: torch.Tensor  # [K, out]: int8 for _int_mm, or float for the exact float GEMM
    arithmetic: FoldedArithmetic
    multiplier: torch.Tensor | None  # A'_j (float64) or A_j (int64); None: TEACHING
    constant: torch.Tensor | None  # N'_j (float64) or N_j (int64)
    shift: torch.Tensor | None  # INT64: n (0-d int64) shared by every channel, or n_j
    lowest: int  # clamp bounds of the output's carriers
    highest: int
    input_zero_carrier: int  # Z_x - offset: what a conv pads with
    output_zero_carrier: torch.Tensor | int  # Z_y - offset (zero_operand)
    output_scale: torch.Tensor  # S_y (float32), to dequantize the logits
    monotone: bool  # exact integers, non-decreasing in g: a max-pool may come first


@dataclass(frozen=True)
class ChannelConstants:
    """Exact Python integers of one output channel: ``q = floor((g A + N) / 2^n)`` for every
    GEMM sum ``|g| <= largest_g``."""

    multiplier: int  # A
    constant: int  # N
    shift: int  # n
    largest_g: int  # G

    def largest_sum(self) -> int:
        """``G A + |N|``: a bound of ``|g A + N|``."""
        return self.largest_g * self.multiplier + abs(self.constant)

    def with_shift(self, shift: int) -> ChannelConstants:
        """The same quotient with a shift of ``shift >= n``: A and N times ``2^(shift - n)``."""
        extra = shift - self.shift
        return ChannelConstants(
            self.multiplier << extra, self.constant << extra, shift, self.largest_g
        )


def _bounds_and_offsets(step: Int8Step) -> tuple[list[int], torch.Tensor]:
    """Per output channel: ``G_j = 128 sum_k |q_w,k|``, a bound of the GEMM's ``|g|`` for
    int8 carriers, and ``d_j`` = carrier correction + bias (int32, as the teaching path adds
    them)."""
    largest_gs = (128 * step.weight_matrix().to(torch.int64).abs().sum(dim=1)).tolist()
    return largest_gs, step.carrier_correction() + step.bias


def channel_constants(step: Int8Step) -> list[ChannelConstants]:
    """The fixed-point step's folded constants, channel by channel (module docstring)."""
    largest_gs, offsets = _bounds_and_offsets(step)
    # What every channel gives for g = 0: the output of an all-zero row, whatever its input.
    constant_outputs = step.requantize(offsets.unsqueeze(0))[0].tolist()
    output_zero_point = carrier_of(int(step.output_zero_point), step.output_dtype)
    channels = []
    for largest_g, offset, multiplier, shift, constant_output in zip(
        largest_gs,
        offsets.tolist(),
        step.multiplier.tolist(),
        step.shift.tolist(),
        constant_outputs,
        strict=True,
    ):
        if largest_g == 0:  # an all-zero row
            channels.append(ChannelConstants(0, constant_output, 0, 0))
            continue
        constant = offset * multiplier + (1 << (shift - 1)) + (output_zero_point << shift)
        channels.append(ChannelConstants(multiplier, constant, shift, largest_g))
    return channels


def _per_channel_integers(tensor: object, channels: int) -> bool:
    """Whether a hand-editable buffer is what conversion makes: ``channels`` integers."""
    return (
        isinstance(tensor, torch.Tensor)
        and tensor.shape == (channels,)
        and not tensor.is_floating_point()
        and not tensor.is_complex()
        and tensor.dtype != torch.bool
    )


def teaching_integers_are_exact(step: Int8Step) -> bool:
    """Whether the teaching path's requantization of ``step`` is exact arithmetic,
    non-decreasing in the accumulator, for every input (module docstring, "Exact integers
    only"): its int32 accumulators ``g + d_j`` cannot wrap; in fixed point, M0 and n are
    one integer per channel with ``M0_j >= 0``, ``1 <= n_j <= 62``, and its int64
    ``(g + d_j) M0_j + 2^(n_j - 1)``, shifted, plus Z_y, cannot wrap either (an all-zero
    row's one value is the teaching path's own); in ONNX Runtime's mode, ``M_f32 >= 0`` and
    ``float32(acc) M_f32 + Z_y`` far below 2^63 (its conversion to int64 would wrap)."""
    largest_gs, offsets = _bounds_and_offsets(step)
    largest_accumulators = [g + abs(d) for g, d in zip(largest_gs, offsets.tolist(), strict=True)]
    largest_zero_point = abs(int(step.output_zero_point))
    if max(largest_accumulators) >= INT32_LIMIT:
        return False
    if step.requantization == Requantization.FLOAT32:
        multiplier = getattr(step, "float32_multiplier", None)
        if not isinstance(multiplier, torch.Tensor) or not multiplier.is_floating_point():
            return False
        if not bool((multiplier >= 0).all()):  # NaN too
            return False
        largest = max(largest_accumulators) * float(multiplier.max()) + largest_zero_point
        return largest < INT64_LIMIT // 2  # float32 rounding: far from 2^63, not at it
    channels = len(largest_gs)
    if not (
        _per_channel_integers(step.multiplier, channels)
        and _per_channel_integers(step.shift, channels)
    ):
        return False
    for g, a, m, n in zip(
        largest_gs, largest_accumulators, step.multiplier.tolist(), step.shift.tolist(), strict=True
    ):
        if g == 0:  # an all-zero row: its one value is the teaching path's own
            continue
        if m < 0 or not 1 <= n <= 62:
            return False
        rounded = a * m + (1 << (n - 1))  # the largest |acc M0 + 2^(n - 1)|
        if rounded >= INT64_LIMIT or (rounded >> n) + largest_zero_point >= INT64_LIMIT:
            return False
    return True


def _fixed_point_folding(
    step: Int8Step,
) -> tuple[FoldedArithmetic, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(arithmetic, multiplier, constant, shift)`` of a fixed-point step: the first
    arithmetic of the module docstring whose bound every channel meets."""
    channels = channel_constants(step)
    largest = max(channel.largest_sum() for channel in channels)
    if largest < FLOAT64_EXACT_INTEGERS:
        # Scaling by 2^-n is exact: A and N are integers below 2^53.
        multiplier = [math.ldexp(channel.multiplier, -channel.shift) for channel in channels]
        constant = [math.ldexp(channel.constant, -channel.shift) for channel in channels]
        multiplier, constant = (
            torch.tensor(v, dtype=torch.float64) for v in (multiplier, constant)
        )
        return FoldedArithmetic.FLOAT64, multiplier, constant, None
    if largest < INT64_LIMIT:
        common = max(channel.shift for channel in channels)
        shared = [channel.with_shift(common) for channel in channels]
        if max(channel.largest_sum() for channel in shared) < INT64_LIMIT:
            channels, shift = shared, torch.tensor(common, dtype=torch.int64)
        else:
            shift = torch.tensor([channel.shift for channel in channels], dtype=torch.int64)
        multiplier, constant = (
            torch.tensor([getattr(channel, field) for channel in channels], dtype=torch.int64)
            for field in ("multiplier", "constant")
        )
        return FoldedArithmetic.INT64, multiplier, constant, shift
    return FoldedArithmetic.TEACHING, None, None, None


def zero_operand(zero_point: int, device: torch.device) -> torch.Tensor | int:
    """A zero-point (carrier) to add to or subtract from float carriers: a 0-d float32 tensor
    on its buffer's device where float32 holds it exactly (a 0-d tensor does not promote the
    carriers' dtype, so the result is the one the Python int gives, and the call was about
    2 us cheaper on an Intel Xeon), else the Python int itself, as the teaching path uses it."""
    if abs(zero_point) <= FLOAT32_EXACT_INTEGERS:
        return torch.tensor(float(zero_point), dtype=torch.float32, device=device)
    return zero_point


def fold(step: Int8Step, use_int8_gemm: bool) -> FoldedStep:
    """One teaching-path step's GEMM weight and folded constants, from its buffers now."""
    weight_t = gemm_weight(step.weight_matrix().t().contiguous(), use_int8_gemm)
    # While torch.compile traces this fold, its Python integers are symbolic, and the
    # checks and shifts below grew expressions for minutes: there every layer gets the
    # teaching path's requantize (same integers; compiling rather than tracing the fold
    # needs torch.compiler.disable, whose import of torch._dynamo costs 1.4 s a process).
    exact = not torch.compiler.is_compiling() and teaching_integers_are_exact(step)
    if exact and step.requantization == Requantization.FIXED_POINT:
        arithmetic, multiplier, constant, shift = _fixed_point_folding(step)
    else:
        arithmetic, multiplier, constant, shift = FoldedArithmetic.TEACHING, None, None, None
    lowest, highest = (carrier_of(bound, step.output_dtype) for bound in step.output_range())
    return FoldedStep(
        weight_t,
        arithmetic,
        multiplier,
        constant,
        shift,
        lowest,
        highest,
        input_zero_carrier=step.zero_carrier(),
        output_zero_carrier=zero_operand(
            carrier_of(int(step.output_zero_point), step.output_dtype),
            step.output_zero_point.device,
        ),
        output_scale=step.output_scale.clone(),
        monotone=exact,
    )


def requantize_folded(product: torch.Tensor, step: Int8Step, folded: FoldedStep) -> torch.Tensor:
    """The carriers of ``step``'s output from the GEMM's sums ``g`` (one column per output
    channel, carrier correction and bias *not* added; int32, or the float GEMM's exact
    integers): the same integers as ``step.requantize(g + correction + bias)``, in float64
    (FLOAT64), int64 (INT64) or int8 (TEACHING). The next GEMM converts them to its own type
    anyway, so they are not narrowed here."""
    if folded.arithmetic == FoldedArithmetic.FLOAT64:  # exact: see the module docstring
        # N'_j + g A'_j: every value it meets is exact, so one fused call (addcmul) gives
        # the float64 a multiply and an add give. For small outputs it reads g in its own
        # dtype. For a 1024 x 128 output its fresh 1 MB result cost more than the call
        # itself (658 against 47 us on an Intel Xeon, torch 2.14.1), so there it writes into
        # g's float64 copy: one pass fewer than multiplying and adding in place (with floor
        # and clamp, 141 against 162 us on one thread).
        if product.numel() <= SMALL_OUTPUT:
            scaled = torch.addcmul(folded.constant, product, folded.multiplier)
        else:
            scaled = product.double()
            torch.addcmul(folded.constant, scaled, folded.multiplier, out=scaled)
        return scaled.floor_().clamp_(folded.lowest, folded.highest)
    if folded.arithmetic == FoldedArithmetic.INT64:
        scaled = product.long().mul_(folded.multiplier).add_(folded.constant)
        scaled >>= folded.shift
        return scaled.clamp_(folded.lowest, folded.highest)
    accumulator = product.to(torch.int32) + (step.carrier_correction() + step.bias)
    return step.requantize(accumulator)
