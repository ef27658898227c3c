"""From a calibrated float model to an INT8 model that computes with integers only.

Every Linear ``y = W x + b`` of the float model becomes integer arithmetic (Jacob et al.
2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", section 2). With the qparams found by calibration::

    real values     x = S_x (q_x - Z_x)       w = S_w q_w        b = S_x S_w q_b
    accumulator     acc = sum_k (q_x,k - Z_x) q_w,k  +  q_b                       int32
    output          q_y = clamp(round(M acc) + Z_y, lo, hi),     M = S_x S_w / S_y
    fixed point     M = M0 2^-n  with  M0 an integer in [2^30, 2^31)
                    round(M acc) = (acc M0 + 2^(n-1)) >> n                         int64

- weights: int8, symmetric (Z_w = 0), one scale per output channel by default (so M and
  its M0, n are per channel too) or one per tensor;
- bias: int32 with scale S_x S_w and zero-point 0, so it adds straight into acc;
- activations: uint8 or int8, affine, with the qparams from calibration. A ReLU after a
  Linear costs nothing: it becomes the lower clamp ``lo = Z_y`` (the integer of real 0).

From the quantized input to the quantized logits there is no float: int8 x int8 products
summed in int32 (``torch._int_mm``), then int64 multiply, add and shift. Float appears only
where the images are quantized and where the logits are dequantized.

Two constants are folded at conversion time so that they cost nothing per call:

- ``torch._int_mm`` multiplies int8 by int8. A uint8 activation q (0..255) therefore
  travels between layers as the int8 value ``c = q - 128`` (its "carrier"). Since
  ``sum_k (q_k - Z_x) w_k = sum_k c_k w_k + (128 - Z_x) sum_k w_k``, the second term is a
  constant per output channel and joins the bias.
- The bias, the rounding constant 2^(n-1) and the output zero-point Z_y are added as one
  int64 constant before the shift: ``((acc + q_b) M0 + 2^(n-1) + Z_y 2^n) >> n`` equals
  ``round(M (acc + q_b)) + Z_y``.

Rounding is to nearest, ties upwards (the shift rounds toward minus infinity after adding
half). gemmlowp, the library of Jacob et al., rounds twice (a rounding doubling high
multiply to 32 bits, then a rounding shift) and breaks ties away from zero; here one exact
int64 product is rounded once. The two can differ by one step, rarely (on ties, and where
the first of gemmlowp's two roundings tips the second).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptqlib.checkpoints import load_checkpoint, save_checkpoint
from ptqlib.quantization import QParams, check_finite, dequantize, min_max, qparams_from_range
from ptqlib.quantization import quantize as quantize_tensor

SUPPORTED_LAYERS = (nn.Linear, nn.ReLU, nn.Flatten)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
# M0 has 31 significant bits: it lies in [2^30, 2^31) and fits in an int32.
MULTIPLIER_BITS = 31
# The largest shift n: 2^n must fit in an int64 (Int8Linear checks the whole sum).
MAX_SHIFT = 62
DTYPE_NAMES = {torch.uint8: "uint8", torch.int8: "int8"}


# --- the integer building blocks ---------------------------------------------------------------


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
        raise ValueError(f"real_multiplier: expected positive finite values, got {real_multiplier}")
    fraction, exponent = torch.frexp(real_multiplier)
    multiplier = torch.round(fraction * 2.0**MULTIPLIER_BITS).to(torch.int64)
    exponent = exponent.to(torch.int64)
    # f rounded up to 1.0: use 0.5 with the next exponent instead, keeping M0 < 2^31.
    rounded_up = multiplier == 2**MULTIPLIER_BITS
    multiplier = torch.where(rounded_up, 2 ** (MULTIPLIER_BITS - 1), multiplier)
    exponent = exponent + rounded_up.to(torch.int64)
    shift = MULTIPLIER_BITS - exponent
    if bool((shift < 1).any()) or bool((shift > MAX_SHIFT).any()):
        raise ValueError(
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
        raise ValueError(
            "bias: does not fit in int32 at scale S_x * S_w (a weight scale is tiny for a large "
            f"bias; largest |b / (S_x S_w)| = {quantized.abs().max().item():.3g})"
        )
    return quantized.to(torch.int32)


def carrier_offset(dtype: torch.dtype) -> int:
    """What is subtracted from an activation's integer to carry it as int8: 128 for uint8
    (0..255 becomes -128..127), 0 for int8."""
    return 128 if dtype == torch.uint8 else 0


# --- planning: which qparams each layer uses ---------------------------------------------------


@dataclass(frozen=True)
class LinearStep:
    """One Linear of the float model with everything its integer version needs.

    ``relu_name`` names the ReLU fused into it (None if there is none); the output
    qparams are then those of the ReLU's output, as in PyTorch's fused LinearReLU.
    """

    name: str
    linear: nn.Linear
    relu_name: str | None
    input_qparams: QParams
    weight_qparams: QParams
    output_qparams: QParams


def _activation_qparams(qparams: Mapping[str, QParams], key: str, role: str) -> QParams:
    if key not in qparams:
        raise ValueError(
            f"qparams: no entry for {key!r} ({role}); the model is uncalibrated or was "
            "calibrated differently. Run ptqlib.calibrate.calibrate(model, images) first "
            f"(qparams has {sorted(qparams) or 'no entries'})"
        )
    found = qparams[key]
    if not isinstance(found, QParams):
        raise TypeError(f"qparams[{key!r}]: expected a QParams, got {type(found).__name__}")
    if found.axis is not None or found.scale.dim() != 0:
        raise ValueError(f"qparams[{key!r}]: activations need per-tensor qparams, got {found}")
    return found


def weight_qparams_for(
    name: str, weight: torch.Tensor, qparams: Mapping[str, QParams], per_channel: bool
) -> QParams:
    """The int8 symmetric qparams of a Linear's weight.

    The calibration's ``"<name>.weight"`` entry is used when it has the requested
    granularity (per output channel, axis 0, or per tensor). Otherwise (missing, or of the
    other granularity) they are computed here from the weight's own min/max: a weight is
    fixed, so its min/max observer sees all of it at once. The integer engine needs
    symmetric int8 weights (zero-point 0), so an entry that is not is an error.
    """
    found = qparams.get(f"{name}.weight")
    wanted_axis = 0 if per_channel else None
    if found is None or found.axis != wanted_axis:
        low, high = min_max(weight, axis=wanted_axis)
        return qparams_from_range(low, high, torch.int8, symmetric=True, axis=wanted_axis)
    if found.dtype != torch.int8 or bool((found.zero_point != 0).any()):
        raise ValueError(
            f"qparams[{name + '.weight'!r}]: the integer engine needs int8 symmetric weights "
            f"(zero-point 0), got {found}; use a symmetric int8 weight observer"
        )
    return found


def plan_conversion(
    model: nn.Module, qparams: Mapping[str, QParams], per_channel: bool = True
) -> list[LinearStep | nn.Flatten]:
    """Walk the children of a Sequential of Linear / ReLU / Flatten and pair each Linear
    with the ReLU that follows it and with its qparams. Raises a clear error for anything
    the integer engine cannot run."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model: expected an nn.Sequential of Linear, ReLU and Flatten (like SimpleNet), "
            f"got {type(model).__name__}"
        )
    qparams = getattr(qparams, "qparams", qparams)  # a Calibration or its qparams dict
    if not isinstance(qparams, Mapping):
        raise TypeError(f"qparams: expected a dict of QParams, got {type(qparams).__name__}")
    children = list(model.named_children())
    for name, module in children:
        if not isinstance(module, SUPPORTED_LAYERS):
            raise ValueError(
                f"layer {name!r} is a {type(module).__name__}, which the INT8 conversion does "
                "not support; supported layers: Linear, ReLU (after a Linear), Flatten"
            )
    if not any(isinstance(module, nn.Linear) for _, module in children):
        raise ValueError("model: has no Linear layer, nothing to quantize")

    steps: list[LinearStep | nn.Flatten] = []
    current = _activation_qparams(qparams, "input", "the model's input")
    index = 0
    while index < len(children):
        name, module = children[index]
        if isinstance(module, nn.Flatten):
            steps.append(module)
            index += 1
            continue
        if isinstance(module, nn.ReLU):
            raise ValueError(
                f"layer {name!r} (ReLU) does not follow a Linear; the INT8 conversion fuses "
                "each ReLU into the Linear before it"
            )
        check_finite(module.weight.detach(), f"{name}.weight")
        if module.bias is not None:
            check_finite(module.bias.detach(), f"{name}.bias")
        following = children[index + 1] if index + 1 < len(children) else None
        relu_name = following[0] if following and isinstance(following[1], nn.ReLU) else None
        output_key = relu_name or name
        output = _activation_qparams(qparams, output_key, f"the output of {output_key}")
        weight = weight_qparams_for(name, module.weight.detach(), qparams, per_channel)
        steps.append(LinearStep(name, module, relu_name, current, weight, output))
        current = output
        index += 2 if relu_name else 1
    if not isinstance(steps[-1], LinearStep):
        raise ValueError("model: must end with a Linear (the logits), optionally with its ReLU")
    return steps


# --- the integer modules -----------------------------------------------------------------------


class Int8Linear(nn.Module):
    """A Linear (and its fused ReLU) on integers: int8 in, int8 out.

    Inputs and outputs are activations carried as int8 (see :func:`carrier_offset`).
    Stored state, as in the checkpoint: ``weight`` (int8, ``[out, in]``), ``bias`` (int32,
    scale S_x S_w), the weight qparams (``weight_scale``: float32, per output channel or a
    single value; zero-point 0), the input and output qparams and whether a ReLU is fused.
    Derived at construction: ``multiplier`` M0 and ``shift`` n per output channel, and one
    int64 ``constant`` per output channel that holds the folded bias, rounding and
    zero-point (see the module docstring).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        weight_qparams: QParams,
        input_qparams: QParams,
        output_qparams: QParams,
        relu: bool,
        name: str = "linear",
    ) -> None:
        super().__init__()
        if weight_qparams.dtype != torch.int8 or bool((weight_qparams.zero_point != 0).any()):
            raise ValueError(
                f"layer {name!r}: weights must be int8 and symmetric (zero-point 0), "
                f"got {weight_qparams}"
            )
        self.name = name
        self.relu = relu
        self.input_qparams = input_qparams
        self.weight_qparams = weight_qparams
        self.output_qparams = output_qparams
        self.register_buffer("weight", weight.to(torch.int8).contiguous())
        self.register_buffer("bias", bias.to(torch.int32).contiguous())
        self.register_buffer("weight_scale", weight_qparams.scale.to(torch.float32))
        self.out_features, self.in_features = self.weight.shape

        # M = S_x S_w / S_y per output channel, in float64 so the product is exact.
        real_multiplier = (
            input_qparams.scale.double()
            * self.weight_scale.double()
            / output_qparams.scale.double()
        )
        multiplier, shift = fixed_point_multiplier(real_multiplier.expand(self.out_features))
        # The derived constants are plain attributes, not buffers: they are not state (the
        # checkpoint does not hold them) and reading a buffer goes through
        # nn.Module.__getattr__, about 1 us, as long as a small kernel at batch 1.
        self.multiplier, self.shift = multiplier, shift

        input_shift = carrier_offset(input_qparams.dtype) - int(input_qparams.zero_point)
        folded_bias = self.bias.long() + input_shift * self.weight.long().sum(dim=1)
        output_offset = carrier_offset(output_qparams.dtype)
        output_zero_point = int(output_qparams.zero_point) - output_offset
        self._check_no_overflow(folded_bias, output_zero_point)
        self.constant = (
            folded_bias * multiplier + (1 << (shift - 1)) + output_zero_point * (1 << shift)
        )
        # A fused ReLU: nothing below the integer of real 0, which is Z_y.
        lowest = output_qparams.quant_min
        if relu:
            lowest = max(lowest, int(output_qparams.zero_point))
        self.clamp_min = lowest - output_offset
        self.clamp_max = output_qparams.quant_max - output_offset
        # _int_mm takes the weight as [in, out]; the transposed view costs no copy.
        self.weight_t = self.weight.t()

    def _check_no_overflow(self, folded_bias: torch.Tensor, output_zero_point: int) -> None:
        """For any int8 input, the int32 accumulator and the int64 sum acc M0 + constant
        must not overflow. Bounded in float64, which cannot overflow here."""
        largest_sum = self.weight.double().abs().sum(dim=1) * 128 + folded_bias.double().abs()
        if bool((largest_sum > INT32_MAX).any()):
            raise ValueError(f"layer {self.name!r}: the int32 accumulator could overflow")
        power = 2.0 ** self.shift.double()
        largest = largest_sum * self.multiplier.double() + (abs(output_zero_point) + 1) * power
        if bool((largest >= 2.0**63).any()):
            raise ValueError(f"layer {self.name!r}: the int64 requantization could overflow")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """int8 activations ``[N, in]`` to int8 activations ``[N, out]``, integers only."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"layer {self.name!r}: expected input [N, {self.in_features}], got {tuple(x.shape)}"
            )
        # int8 x int8, summed in int32. On a CPU without AVX-512 VNNI, torch._int_mm is a
        # plain loop and takes most of the time: see benchmarks/profile_int8.py.
        accumulator = torch._int_mm(x, self.weight_t)
        scaled = accumulator.long()  # acc * M0 needs up to 62 bits
        # In place: one new tensor for the whole requantization. (torch.addcmul would do
        # multiply and add in one call, but is several times slower on int64.)
        scaled.mul_(self.multiplier).add_(self.constant)
        scaled >>= self.shift  # = round(M (acc + bias)) + Z_y: the constant holds the rest
        return scaled.clamp_(self.clamp_min, self.clamp_max).to(torch.int8)

    def extra_repr(self) -> str:
        granularity = "per-channel" if self.weight_scale.dim() == 1 else "per-tensor"
        relu = ", relu" if self.relu else ""
        return (
            f"{self.in_features} -> {self.out_features}, int8 weights {granularity}, "
            f"output {DTYPE_NAMES[self.output_qparams.dtype]}{relu}"
        )


class Int8Model(nn.Module):
    """The INT8 network: quantize the images, run every layer on integers, dequantize the
    logits. ``forward`` maps images to float logits like the FP32 model, so
    :mod:`ptqlib.evaluate` works on it unchanged."""

    def __init__(self, input_qparams: QParams, layers: list[nn.Module]) -> None:
        super().__init__()
        linears = [layer for layer in layers if isinstance(layer, Int8Linear)]
        if not linears:
            raise ValueError("layers: an INT8 model needs at least one Int8Linear")
        self.input_qparams = input_qparams
        self.output_qparams = linears[-1].output_qparams
        self.layers = nn.ModuleList(layers)
        # Kept as float32 0-d tensors: the same float32 arithmetic as ptqlib.quantization.
        # Plain attributes rather than buffers, as in Int8Linear (faster to read).
        self.input_inverse_scale = 1.0 / input_qparams.scale
        offset = carrier_offset(input_qparams.dtype)
        self.input_zero_point = int(input_qparams.zero_point) - offset
        self.input_min = input_qparams.quant_min - offset
        self.input_max = input_qparams.quant_max - offset
        self.output_zero_point = int(self.output_qparams.zero_point) - carrier_offset(
            self.output_qparams.dtype
        )
        self.output_scale = self.output_qparams.scale

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """Float images to int8 carriers: ``clamp(round(x / S) + Z) - offset``, the same
        integers as :func:`ptqlib.quantization.quantize` (minus the carrier offset)."""
        scaled = images.float() * self.input_inverse_scale
        scaled.round_().add_(self.input_zero_point).clamp_(self.input_min, self.input_max)
        return scaled.to(torch.int8)

    def integer_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits as int8 carriers: everything after quantize_input is integer."""
        x = self.quantize_input(images)
        for layer in self.layers:
            x = layer(x)
        return x

    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers in their own dtype (uint8 0..255 or int8), as torch's
        ``int_repr()`` shows them."""
        carriers = self.integer_forward(images)
        offset = carrier_offset(self.output_qparams.dtype)
        return (carriers.to(torch.int16) + offset).to(self.output_qparams.dtype)

    def dequantize_output(self, carriers: torch.Tensor) -> torch.Tensor:
        """Int8 carriers of the logits to float logits: ``S_y (q - Z_y)``."""
        return carriers.float().sub_(self.output_zero_point).mul_(self.output_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dequantize_output(self.integer_forward(images))

    def extra_repr(self) -> str:
        return f"input {DTYPE_NAMES[self.input_qparams.dtype]} {self.input_qparams}"


def _int8_linear(step: LinearStep) -> Int8Linear:
    weight = step.linear.weight.detach()
    bias = step.linear.bias
    bias = bias.detach() if bias is not None else torch.zeros(weight.shape[0])
    return Int8Linear(
        weight=quantize_tensor(weight, step.weight_qparams),
        bias=quantize_bias(bias, step.input_qparams.scale, step.weight_qparams.scale),
        weight_qparams=step.weight_qparams,
        input_qparams=step.input_qparams,
        output_qparams=step.output_qparams,
        relu=step.relu_name is not None,
        name=step.name,
    )


def convert(
    model: nn.Module, qparams: Mapping[str, QParams], per_channel: bool = True
) -> Int8Model:
    """Convert a calibrated Sequential of Linear / ReLU / Flatten into an :class:`Int8Model`.

    ``qparams`` is ``calibration.qparams`` (or the Calibration itself): ``"input"``, then
    the output of every Linear and ReLU by name, and optionally ``"<linear>.weight"`` (see
    :func:`weight_qparams_for`). ``per_channel`` selects per-output-channel weight scales
    (the default) or one scale per weight tensor.
    """
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel: expected True or False, got {per_channel!r}")
    steps = plan_conversion(model, qparams, per_channel)
    layers = [_int8_linear(step) if isinstance(step, LinearStep) else step for step in steps]
    first = next(step for step in steps if isinstance(step, LinearStep))
    return Int8Model(first.input_qparams, layers).eval()


# --- the float simulation ----------------------------------------------------------------------


class FakeQuantModel(nn.Module):
    """The same quantized network simulated in float64: quantize and dequantize at every
    quantization point (input, weights, bias, each layer's output), everything else real
    arithmetic with the real multiplier S_x S_w / S_y. It needs no integer tricks at all,
    so it is an independent check of :class:`Int8Model`."""

    def __init__(self, steps: list[LinearStep | nn.Flatten]) -> None:
        super().__init__()
        self.steps = steps
        self.input_qparams = next(s for s in steps if isinstance(s, LinearStep)).input_qparams
        self.output_qparams = [s for s in steps if isinstance(s, LinearStep)][-1].output_qparams

    @torch.no_grad()
    def quantized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits' integers (int64) as the simulation finds them."""
        qparams = self.input_qparams
        q = quantize_tensor(images, qparams).long()
        for step in self.steps:
            if isinstance(step, nn.Flatten):
                q = step(q)
                continue
            x = (q - qparams.zero_point).double() * qparams.scale.double()
            weight_q = quantize_tensor(step.linear.weight.detach(), step.weight_qparams)
            weight = dequantize(weight_q, step.weight_qparams).double()
            weight_scale = step.weight_qparams.scale.double()
            bias = step.linear.bias
            bias = bias.detach() if bias is not None else torch.zeros(weight.shape[0])
            bias_q = quantize_bias(bias, qparams.scale, step.weight_qparams.scale)
            y = x @ weight.T + bias_q.double() * qparams.scale.double() * weight_scale
            if step.relu_name is not None:
                y = torch.relu(y)
            qparams = step.output_qparams
            q = torch.round(y / qparams.scale.double()).long() + qparams.zero_point
            q = q.clamp(qparams.quant_min, qparams.quant_max)
        return q

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        q = self.quantized_logits(images)
        return dequantize(q, self.output_qparams)


def simulate(
    model: nn.Module, qparams: Mapping[str, QParams], per_channel: bool = True
) -> FakeQuantModel:
    """A float (fake-quant) simulation of ``convert(model, qparams, per_channel)``."""
    return FakeQuantModel(plan_conversion(model, qparams, per_channel))


# --- saving and loading ------------------------------------------------------------------------


def _activation_entry(qparams: QParams) -> dict[str, Any]:
    """Per-tensor activation qparams as plain numbers (a float32 scale is exact as a float)."""
    return {
        "scale": float(qparams.scale),
        "zero_point": int(qparams.zero_point),
        "quant_min": qparams.quant_min,
        "quant_max": qparams.quant_max,
        "dtype": DTYPE_NAMES[qparams.dtype],
    }


def _views_of_one_storage(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same tensors, as views into one flat tensor.

    ``torch.save`` writes every storage as its own record, with its own header: views of
    one storage are written once, as one record. On SimpleNet this saves about 160 bytes.
    """
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    views, start = [], 0
    for tensor in tensors:
        views.append(flat[start : start + tensor.numel()].view(tensor.shape))
        start += tensor.numel()
    return views


def int8_state(model: Int8Model) -> dict[str, Any]:
    """Everything an :class:`Int8Model` is, as plain tensors and numbers.

    Per Linear: the int8 weight, the int32 bias, the float32 weight scales and the output
    qparams. The input qparams of a layer are the output qparams of the one before, and
    M0, n and the folded constants are recomputed on loading, so nothing is stored twice.
    The tensors of one kind share one storage (see :func:`_views_of_one_storage`).
    """
    linears = [layer for layer in model.layers if isinstance(layer, Int8Linear)]
    weights = iter(_views_of_one_storage([layer.weight for layer in linears]))
    biases = iter(_views_of_one_storage([layer.bias for layer in linears]))
    scales = iter(_views_of_one_storage([layer.weight_scale for layer in linears]))
    layers = []
    for layer in model.layers:
        if isinstance(layer, nn.Flatten):
            layers.append(
                {"type": "flatten", "start_dim": layer.start_dim, "end_dim": layer.end_dim}
            )
            continue
        layers.append(
            {
                "type": "linear",
                "name": layer.name,
                "relu": layer.relu,
                "weight": next(weights),
                "bias": next(biases),
                "weight_scale": next(scales),
                "weight_range": [layer.weight_qparams.quant_min, layer.weight_qparams.quant_max],
                "output": _activation_entry(layer.output_qparams),
            }
        )
    return {"input": _activation_entry(model.input_qparams), "layers": layers}


def save_int8(model: Int8Model, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save an :class:`Int8Model` atomically; it loads with ``torch.load(weights_only=True)``."""
    if not isinstance(model, Int8Model):
        raise TypeError(f"model: expected an Int8Model (from convert), got {type(model).__name__}")
    return save_checkpoint({"kind": "int8", **int8_state(model), "meta": meta or {}}, path)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _activation_from_entry(entry: Any, where: str) -> QParams:
    _require(isinstance(entry, dict), f"{where}: expected a dict of qparams")
    dtype = {name: dtype for dtype, name in DTYPE_NAMES.items()}.get(entry.get("dtype"))
    _require(dtype is not None, f"{where}: dtype {entry.get('dtype')!r} is not uint8 or int8")
    scale, zero_point = entry.get("scale"), entry.get("zero_point")
    quant_min, quant_max = entry.get("quant_min"), entry.get("quant_max")
    _require(
        isinstance(scale, float) and scale > 0 and scale < float("inf"),
        f"{where}: scale {scale!r} is not a positive number",
    )
    info = torch.iinfo(dtype)
    _require(
        all(isinstance(v, int) for v in (zero_point, quant_min, quant_max))
        and info.min <= quant_min <= zero_point <= quant_max <= info.max
        and quant_min < quant_max,
        f"{where}: zero-point {zero_point!r} and range {quant_min!r}..{quant_max!r} "
        f"do not fit {dtype}",
    )
    return QParams(
        torch.tensor(scale, dtype=torch.float32),
        torch.tensor(zero_point, dtype=torch.int64),
        quant_min,
        quant_max,
        dtype,
    )


def _linear_from_entry(entry: dict, input_qparams: QParams, in_features: int | None) -> Int8Linear:
    name = entry.get("name")
    where = f"layer {name!r}"
    weight, bias, weight_scale = entry.get("weight"), entry.get("bias"), entry.get("weight_scale")
    _require(
        isinstance(weight, torch.Tensor) and weight.dtype == torch.int8 and weight.dim() == 2,
        f"{where}: weight must be a 2-d int8 tensor",
    )
    out_features = weight.shape[0]
    _require(
        in_features is None or weight.shape[1] == in_features,
        f"{where}: takes {weight.shape[1]} inputs, but the layer before gives {in_features}",
    )
    _require(
        isinstance(bias, torch.Tensor)
        and bias.dtype == torch.int32
        and tuple(bias.shape) == (out_features,),
        f"{where}: bias must be an int32 tensor of shape ({out_features},)",
    )
    _require(
        isinstance(weight_scale, torch.Tensor)
        and weight_scale.dtype == torch.float32
        and tuple(weight_scale.shape) in ((), (out_features,))
        and bool(torch.isfinite(weight_scale).all())
        and bool((weight_scale > 0).all()),
        f"{where}: weight_scale must hold 1 or {out_features} positive float32 values",
    )
    weight_range = entry.get("weight_range")
    _require(
        isinstance(weight_range, list)
        and len(weight_range) == 2
        and all(isinstance(v, int) for v in weight_range),
        f"{where}: weight_range must be [quant_min, quant_max]",
    )
    _require(isinstance(entry.get("relu"), bool), f"{where}: relu must be True or False")
    weight_qparams = QParams(
        weight_scale,
        torch.zeros(weight_scale.shape, dtype=torch.int64),
        weight_range[0],
        weight_range[1],
        torch.int8,
        axis=0 if weight_scale.dim() == 1 else None,
    )
    output_qparams = _activation_from_entry(entry.get("output"), f"{where} output")
    return Int8Linear(
        weight, bias, weight_qparams, input_qparams, output_qparams, entry["relu"], name
    )


def int8_model_from_state(state: dict[str, Any]) -> Int8Model:
    """Rebuild an :class:`Int8Model` from :func:`int8_state`, checking every field."""
    input_qparams = _activation_from_entry(state.get("input"), "input")
    entries = state.get("layers")
    _require(isinstance(entries, list) and entries, "layers: expected a non-empty list")
    layers: list[nn.Module] = []
    current, in_features = input_qparams, None
    for index, entry in enumerate(entries):
        _require(isinstance(entry, dict), f"layers[{index}]: expected a dict")
        if entry.get("type") == "flatten":
            layers.append(nn.Flatten(int(entry["start_dim"]), int(entry["end_dim"])))
        elif entry.get("type") == "linear":
            layer = _linear_from_entry(entry, current, in_features)
            layers.append(layer)
            current, in_features = layer.output_qparams, layer.out_features
        else:
            raise ValueError(f"layers[{index}]: unknown layer type {entry.get('type')!r}")
    return Int8Model(input_qparams, layers).eval()


def _int8_from_payload(payload: dict[str, Any], path: str | os.PathLike) -> Int8Model:
    try:
        return int8_model_from_state(payload)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a valid INT8 checkpoint: {error}") from error


def load_int8(path: str | os.PathLike) -> tuple[Int8Model, dict]:
    """Load an INT8 checkpoint written by :func:`save_int8`: the model (in eval mode) and meta."""
    payload = load_checkpoint(path, expected_kind="int8")
    return _int8_from_payload(payload, path), payload.get("meta", {})


def load_model(path: str | os.PathLike) -> tuple[nn.Module, str, dict]:
    """Load an FP32 or an INT8 checkpoint: ``(model, kind, meta)``, kind "fp32" or "int8"."""
    from ptqlib.train import load_fp32  # here: ptqlib.train imports the data and training code

    payload = load_checkpoint(path)
    if payload["kind"] == "int8":
        return _int8_from_payload(payload, path), "int8", payload.get("meta", {})
    model, meta = load_fp32(path)
    return model, "fp32", meta


# --- the whole pipeline, for the command line --------------------------------------------------


@dataclass
class QuantizeResult:
    """What :func:`quantize_checkpoint` made: the INT8 model, where it was saved, the sizes of
    both checkpoint files in bytes, and the metadata written with it."""

    model: Int8Model
    path: Path
    fp32_bytes: int
    int8_bytes: int
    meta: dict

    @property
    def size_ratio(self) -> float:
        return self.fp32_bytes / self.int8_bytes


def quantize_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    observer: str = "histogram",
    calib: int = 1000,
    per_channel: bool = True,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> QuantizeResult:
    """Load an FP32 checkpoint, calibrate on ``calib`` training images (class-balanced,
    :func:`ptqlib.data.calibration_images`) with the activation ``observer``, convert and
    save the INT8 model to ``out``."""
    from ptqlib.calibrate import calibrate
    from ptqlib.data import calibration_images, load_mnist
    from ptqlib.train import load_fp32

    model, _ = load_fp32(checkpoint)
    data = load_mnist(data_dir, splits=("train",), verbose=progress)
    images = calibration_images(data.train, calib)
    calibration = calibrate(model, images, activation_observer=observer, progress=progress)
    int8_model = convert(model, calibration.qparams, per_channel=per_channel)
    meta = {
        "source_checkpoint": Path(checkpoint).name,
        "observer": observer,
        "calibration_images": calib,
        "per_channel": per_channel,
    }
    path = save_int8(int8_model, out, meta)
    return QuantizeResult(
        int8_model, path, Path(checkpoint).stat().st_size, path.stat().st_size, meta
    )
