"""The conventions of CMSIS-NN and TensorFlow Lite Micro, as pure functions (notebook 11).

What people deploy int8 models with on a Cortex-M differs from ptqlib's defaults in three
ways, which :func:`cmsis_nn_model` and :func:`with_double_rounding` reproduce:

- **int8 activations** (TFLite's int8 scheme): an activation q on 0..255 with zero-point Z
  is the same real value as q - 128 with Z - 128, so this changes no real value and no
  integer of the C (which keeps activations as uint8 either way);
- **weights on -127..127** (symmetric, S_w = max|w| / 127), never -128, so that -w is
  representable. ptqlib's default (torch's) allows -128;
- **two roundings** in ``arm_nn_requantize`` (CMSIS-NN's ``arm_nnsupportfunctions.h``),
  with CMSIS-NN's ``shift = 31 - n`` (positive: a left shift):

      high = (acc 2^max(shift,0) M0 + 2^30) >> 31       arm_nn_doubling_high_mult_no_sat:
                                                          rounds, ties upwards
      q    = round(high / 2^max(-shift,0))               arm_nn_divide_by_power_of_two:
                                                          rounds again, ties away from zero

  Built with ``CMSIS_NN_USE_SINGLE_ROUNDING`` it computes ``(acc M0 >> (n - 1)) + 1 >> 1``
  instead: one rounding, ties upwards, which is ptqlib's ``(acc M0 + 2^(n-1)) >> n``
  exactly (same M0 and n: TFLite's QuantizeMultiplier and ptqlib's fixed_point_multiplier
  both round the fraction of frexp(M) to 31 bits).

The first rounding can land exactly on a half that the second then pushes away: 2.375 is
rounded to 2.5 (to 1/4) and then to 3, where one rounding gives 2. :func:`rounding_differences`
counts how often that happens on real data.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ptqlib.errors import InputError
from ptqlib.int8_gemm import to_carrier
from ptqlib.int8_layers import Int8Linear, Int8Step
from ptqlib.int8_model import Int8Model, convert
from ptqlib.quantization import RESTRICTED_WEIGHT_RANGE, QParams

# The right shifts arm_nn_divide_by_power_of_two accepts (its mask 2^exponent - 1 is an int32).
MAX_RIGHT_SHIFT = 30
ROUNDINGS = ("single", "double")


def doubling_high_multiply(value: torch.Tensor, multiplier: torch.Tensor | int) -> torch.Tensor:
    """``arm_nn_doubling_high_mult_no_sat``: the high 32 bits of ``2 value M0``, rounded
    (``(value M0 + 2^30) >> 31``, ties upwards). int64 in and out."""
    return (value.to(torch.int64) * torch.as_tensor(multiplier, dtype=torch.int64) + 2**30) >> 31


def divide_by_power_of_two(dividend: torch.Tensor, exponent: torch.Tensor | int) -> torch.Tensor:
    """``arm_nn_divide_by_power_of_two``: ``dividend / 2^exponent`` rounded to nearest, ties
    away from zero, written as CMSIS-NN writes it (a floor shift, then +1 if the remainder
    is above half, or at half for a negative result's threshold)."""
    exponent = torch.as_tensor(exponent, dtype=torch.int64)
    mask = (1 << exponent) - 1
    remainder = dividend & mask
    result = dividend >> exponent
    threshold = (mask >> 1) + (result < 0).to(torch.int64)
    return result + (remainder > threshold).to(torch.int64)


def arm_nn_requantize(
    accumulator: torch.Tensor,
    multiplier: torch.Tensor | int,
    shift: torch.Tensor | int,
    rounding: str = "double",
) -> torch.Tensor:
    """CMSIS-NN's ``arm_nn_requantize(acc, M0, shift)`` with ``shift = 31 - n``: two
    roundings by default, one with ``rounding="single"`` (``CMSIS_NN_USE_SINGLE_ROUNDING``).
    The zero-point and the clamp come after, as in CMSIS-NN's kernels."""
    if rounding not in ROUNDINGS:
        raise InputError(f"rounding: expected one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    shift = torch.as_tensor(shift, dtype=torch.int64)
    accumulator = accumulator.to(torch.int64)
    if rounding == "single":
        total_shift = 31 - shift
        scaled = accumulator * torch.as_tensor(multiplier, dtype=torch.int64)
        return ((scaled >> (total_shift - 1)) + 1) >> 1
    left, right = shift.clamp(min=0), (-shift).clamp(min=0)
    return divide_by_power_of_two(doubling_high_multiply(accumulator << left, multiplier), right)


def check_double_rounding_shifts(name: str, shift: torch.Tensor) -> None:
    """CMSIS-NN's double rounding handles n = 31 - shift in [31, 31 + MAX_RIGHT_SHIFT] here:
    a left shift (n < 31) of the int32 accumulator could overflow, as it can in C."""
    n = torch.as_tensor(shift)
    if bool((n < 31).any()) or bool((n > 31 + MAX_RIGHT_SHIFT).any()):
        raise InputError(
            f"layer {name!r}: shifts n = {int(n.min())}..{int(n.max())}; the double rounding "
            f"is implemented for n in 31..{31 + MAX_RIGHT_SHIFT} (multipliers below 1)"
        )


class DoubleRoundingLinear(Int8Linear):
    """An Int8Linear that requantizes as CMSIS-NN's default ``arm_nn_requantize`` does (two
    roundings); everything else, weights and accumulators included, is Int8Linear's."""

    def requantize(self, accumulator: torch.Tensor) -> torch.Tensor:
        lowest, highest = self.output_range()
        rounded = arm_nn_requantize(accumulator, self.multiplier, 31 - self.shift, "double")
        output = (rounded + int(self.output_zero_point)).clamp(lowest, highest)
        return to_carrier(output, self.output_dtype)


def with_double_rounding(model: Int8Model) -> Int8Model:
    """The same model (same integers, same scales) computing CMSIS-NN's two roundings."""
    if not isinstance(model, Int8Model):
        raise InputError(f"model: expected an Int8Model, got {type(model).__name__}")
    layers = []
    for layer in model.layers:
        if isinstance(layer, Int8Linear):
            check_double_rounding_shifts(layer.name, layer.shift)
            layer = DoubleRoundingLinear(**layer.construction_arguments())
        elif isinstance(layer, Int8Step):
            raise InputError(
                f"model: double rounding is implemented for Linear models; got a "
                f"{type(layer).__name__}"
            )
        layers.append(layer)
    return Int8Model(model.input_qparams, layers).eval()


def signed_activations(qparams: Mapping[str, QParams]) -> dict[str, QParams]:
    """Calibration qparams with every uint8 activation moved to int8 (Z - 128 on -128..127):
    the same real values, TFLite's int8 scheme."""
    return {
        name: QParams(entry.scale, entry.zero_point - 128, -128, 127, torch.int8)
        if entry.dtype == torch.uint8 and entry.axis is None
        else entry
        for name, entry in qparams.items()
    }


def cmsis_nn_model(
    model: torch.nn.Module, qparams: Mapping[str, QParams], pixel_input: bool = False
) -> Int8Model:
    """``convert`` with CMSIS-NN's conventions: int8 activations, weights on -127..127
    (ptqlib's single rounding; :func:`with_double_rounding` for CMSIS-NN's default)."""
    qparams = getattr(qparams, "qparams", qparams)
    return convert(
        model,
        signed_activations(qparams),
        pixel_input=pixel_input,
        weight_range=RESTRICTED_WEIGHT_RANGE,
    )


def rounding_differences(single: Int8Model, double: Int8Model, images: torch.Tensor) -> dict:
    """How many integers the two roundings give differently: every activation of every
    layer (after each integer layer) and the logits, on ``images``."""
    counts = {"activations": 0, "activations_total": 0}
    x_single, x_double = single.quantize_input(images), double.quantize_input(images)
    for layer_single, layer_double in zip(single.layers, double.layers, strict=True):
        x_single, x_double = layer_single(x_single), layer_double(x_double)
        if isinstance(layer_single, Int8Linear):
            counts["activations"] += int((x_single != x_double).sum())
            counts["activations_total"] += x_single.numel()
    counts["logits"] = int((x_single != x_double).sum())
    counts["logits_total"] = x_single.numel()
    counts["images_changed"] = int((x_single != x_double).any(dim=1).sum())
    return counts


DOUBLE_ROUNDING_C = """\
/* CMSIS-NN's arm_nn_requantize (default build): two roundings, then Z_y and the clamp.
 * shift = 31 - n is CMSIS-NN's (here always <= 0: a right shift by n - 31 <= 30).
 * 1. arm_nn_doubling_high_mult_no_sat: (acc * M0 + 2^30) >> 31, ties upwards;
 * 2. arm_nn_divide_by_power_of_two: divide by 2^(n - 31), ties away from zero. */
static uint8_t requantize(int32_t acc, int32_t multiplier, int32_t n, int32_t zero_point,
                          int32_t lowest, int32_t highest)
{
    const int32_t high = (int32_t)(((int64_t)acc * multiplier + (1 << 30)) >> 31);
    const int32_t exponent = n - 31;
    const int32_t mask = (1 << exponent) - 1;
    const int32_t remainder = high & mask;
    int32_t result = high >> exponent;
    const int32_t threshold = (mask >> 1) + (result < 0);
    if (remainder > threshold) result++;
    result += zero_point;
    if (result < lowest) result = lowest;
    if (result > highest) result = highest;
    return (uint8_t)result;
}
"""
