"""Fewer bits than 8: B-bit weights and activations through the same INT8 pipeline.

A B-bit integer is simply an int8 (weights, signed) or uint8 (activations, unsigned)
restricted to a smaller range, so everything downstream (conversion, the integer engine,
the fake-quant simulation) works unchanged::

    weights      q_w in -2^(B-1) .. 2^(B-1) - 1,  Z_w = 0,
                 S_w = c / 2^(B-1)           for B <= 4
                 S_w = c / ((2^B - 1) / 2)   for B >= 5 (torch.ao's symmetric scale)
    activations  q_x in 0 .. 2^B - 1,             S_x, Z_x from calibration     affine

where ``c`` is the *clipping value* of a channel: its largest |w| (``"minmax"``) or the value
that minimises the channel's mean squared error ``||w - S clamp(round(w/S))||^2``
(``"mse"``: shrinking c clips a few outliers but makes the step S finer for all the others).

**Which scale: a trade-off.** torch.ao's symmetric scale c / ((2^B - 1) / 2) maps the
weights onto ``w/S`` in [-(2^B - 1)/2, (2^B - 1)/2]: at 2 bits that is [-1.5, 1.5], so nearest
rounding reaches -2 only for the one weight at exactly -c, and "2-bit" weights are in
practice ternary {-1, 0, 1} (about 1.58 bits). It uses 2^B - 1 of the 2^B levels: one of 256
at 8 bits, one of 16 at 4, one of 4 at 2. The *full-grid* scale c / 2^(B-1) puts -c exactly on
-2^(B-1) and uses every level, with a step smaller by the factor (2^B - 1) / 2^B; the price
is that positive weights above (2^(B-1) - 1/2) S = (1 - 2^-B) c are clipped to the top level
(at 2 bits, those above 0.75 c: the few largest of a channel). The finer step alone is worth
-20 log10(1 - 2^-B) dB of weight SQNR, before the clipping takes its share: 2.5 dB at 2 bits,
0.56 dB at 4, 0.03 dB at 8. So
ptqlib uses the full grid for B <= ``full_grid_bits`` (4 by default) and torch.ao's scale
above, where the gain is a fraction of a dB and torch.ao's rule keeps ptqlib bit-exact with
PyTorch; ``full_grid_bits=0`` gives torch.ao's scale at every width (notebook 06 measures
both). An MSE-chosen c (``clipping="mse"``) then trades the two ends.

:func:`quantize_weights` goes layer by layer, in order. Each layer's inputs are recorded from
a working copy in which the earlier layers are already quantized, so a later layer sees (and
can compensate) the errors of the earlier ones. Its integers come from one of three
``rounding`` methods (``"nearest"``, ``"gptq"``, ``"adaround"``: ``ptqlib.lowbit.rounding``),
and optionally its bias is corrected (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction", section 4.2, empirical form)::

    b <- b - ( E[W~ x~] - E[W x] )

the expected shift of each output over the calibration images: ``x`` is the layer's input
in the FP32 model, ``x~`` in the working copy. Quantization errors that do not average out
shift every output by a constant; this removes it for free.

**How the integers reach the INT8 model.** The result is a float copy of the model whose
weights lie exactly on the grid (``W = S q``) plus the weight qparams. Converting that copy
with those qparams gives back exactly the chosen integers (checked here, integer by integer),
so ``ptqlib.int8_model.convert``, the simulation and the checkpoint format need no change and
there is one source of truth for the quantized model: an ordinary float model. The
alternative, passing an extra ``{name: (integers, qparams)}`` argument through ``convert``,
``plan_conversion`` and ``simulate``, would add a second path to every one of them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ptqlib.calibration import calibrate
from ptqlib.errors import InputError
from ptqlib.int8_model import Int8Model, convert
from ptqlib.lowbit.rounding import adaround, gptq, round_to_nearest
from ptqlib.quantization import (
    EPS,
    QParams,
    bit_range,
    dequantize,
    fake_quantize,
    min_max,
    qparams_from_range,
    quantize,
)

ROUNDINGS = ("nearest", "gptq", "adaround")
CLIPPINGS = ("minmax", "mse")
WEIGHT_BITS = range(2, 9)
# By default, at this many bits or fewer the scale is c / 2^(B-1), not c / ((2^B - 1) / 2): see
# the module docstring ("Which scale").
FULL_GRID_BITS = 4
ACTIVATION_BITS = range(4, 9)
# Candidate clipping values for "mse": c = fraction * max|w|, fraction from 0.2 to 1.
MSE_FRACTIONS = torch.linspace(0.2, 1.0, 81)


def check_bits(bits: object, name: str, allowed: range = WEIGHT_BITS) -> int:
    """``bits`` if it is a whole number in ``allowed``, else a ValueError naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise InputError(
            f"{name}: expected a whole number of bits from {allowed.start} to "
            f"{allowed.stop - 1}, got {bits!r}"
        )
    return bits


def check_full_grid_bits(full_grid_bits: object) -> int:
    """``full_grid_bits`` if it is a whole number from 0 to 8, else a ValueError."""
    if (
        isinstance(full_grid_bits, bool)
        or not isinstance(full_grid_bits, int)
        or not 0 <= full_grid_bits <= 8
    ):
        raise InputError(
            f"full_grid_bits: expected a whole number from 0 (torch.ao's scale at every "
            f"width) to 8, got {full_grid_bits!r}"
        )
    return full_grid_bits


def linear_names(model: nn.Module) -> list[str]:
    """The names of the model's Linear layers, in order (SimpleNet: fc1, fc2, fc3)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def parse_layer_bits(text: str, names: list[str] | None = None) -> dict[str, int]:
    """``"fc1=8,fc2=4"`` as ``{"fc1": 8, "fc2": 4}``; every name must appear once (and be
    one of ``names``, if given), every width a whole number from 2 to 8."""
    chosen: dict[str, int] = {}
    for item in text.split(","):
        name, equals, bits = item.strip().partition("=")
        if not equals or not name or not bits.strip().lstrip("-").isdigit():
            raise InputError(f"layer bits: expected NAME=BITS like fc2=4, got {item.strip()!r}")
        if names is not None and name not in names:
            raise InputError(
                f"layer bits: unknown layer {name!r}; the layers are {', '.join(names)}"
            )
        if name in chosen:
            raise InputError(f"layer bits: layer {name!r} is given twice")
        chosen[name] = check_bits(int(bits), f"layer bits for {name}")
    return chosen


def weight_qparams(
    weight: torch.Tensor,
    bits: int,
    per_channel: bool = True,
    clipping: str = "minmax",
    full_grid_bits: int = FULL_GRID_BITS,
) -> QParams:
    """Symmetric B-bit qparams for a Linear weight [out, in] (see the module docstring):
    one scale per output channel (``per_channel``) or one for the tensor; the full-grid
    scale c / 2^(B-1) when ``bits <= full_grid_bits``, torch.ao's c / ((2^B - 1) / 2) above."""
    check_bits(bits, "bits")
    check_full_grid_bits(full_grid_bits)
    if clipping not in CLIPPINGS:
        raise InputError(f"clipping: expected one of {', '.join(CLIPPINGS)}, got {clipping!r}")
    quant_min, quant_max = bit_range(bits, torch.int8)
    axis = 0 if per_channel else None
    low, high = min_max(weight.detach(), axis=axis)
    largest = torch.max(-low, high)

    def grid(clip: torch.Tensor) -> QParams:
        if bits <= full_grid_bits:
            # S = c / 2^(B-1): -c lands on quant_min, so all 2^B levels are reachable.
            scale = torch.max(clip.float() / 2 ** (bits - 1), torch.tensor(EPS))
            zero_point = torch.zeros_like(scale, dtype=torch.int64)
            return QParams(scale, zero_point, quant_min, quant_max, torch.int8, axis)
        return qparams_from_range(
            -clip,
            clip,
            torch.int8,
            symmetric=True,
            quant_min=quant_min,
            quant_max=quant_max,
            axis=axis,
        )

    if clipping == "minmax":
        return grid(largest)
    rows = weight.detach().float().reshape(weight.shape[0] if per_channel else 1, -1)
    errors = []
    for fraction in MSE_FRACTIONS:
        candidate = grid(largest * fraction)
        approximation = fake_quantize(weight.detach().float(), candidate)
        errors.append(((approximation.reshape(rows.shape) - rows) ** 2).mean(dim=1))
    best = torch.stack(errors).argmin(dim=0)  # first (smallest) fraction among equals
    return grid(largest * MSE_FRACTIONS[best].reshape(largest.shape))


@dataclass(frozen=True)
class LowBitSettings:
    """How to quantize: bits per layer (``weight_bits``, overridden by ``layer_bits``),
    activation bits, rounding and clipping method, bias correction, granularity, the widest
    weights that use the full-grid scale (``full_grid_bits``, module docstring), and the
    arguments of AdaRound (its ``seed`` included)."""

    weight_bits: int = 8
    activation_bits: int = 8
    rounding: str = "nearest"
    clipping: str = "minmax"
    bias_correction: bool = False
    per_channel: bool = True
    layer_bits: Mapping[str, int] = field(default_factory=dict)
    adaround_kwargs: Mapping[str, object] = field(default_factory=dict)
    full_grid_bits: int = FULL_GRID_BITS

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        check_full_grid_bits(self.full_grid_bits)
        check_bits(self.activation_bits, "activation_bits", ACTIVATION_BITS)
        if self.rounding not in ROUNDINGS:
            raise InputError(
                f"rounding: expected one of {', '.join(ROUNDINGS)}, got {self.rounding!r}"
            )
        if self.clipping not in CLIPPINGS:
            raise InputError(
                f"clipping: expected one of {', '.join(CLIPPINGS)}, got {self.clipping!r}"
            )
        for name, bits in self.layer_bits.items():
            check_bits(bits, f"layer_bits[{name!r}]")

    def bits_for(self, layer: str) -> int:
        return self.layer_bits.get(layer, self.weight_bits)


@dataclass
class QuantizedWeights:
    """The float copy whose weights lie on the grid, the integers and qparams of every
    Linear weight, and the seconds the whole weight quantization took."""

    model: nn.Module
    integers: dict[str, torch.Tensor]
    qparams: dict[str, QParams]
    seconds: float


def layer_inputs(model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """The inputs ``[N, in]`` that ``model``'s module ``layer`` receives for ``images``."""
    module = model.get_submodule(layer)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return torch.cat(seen).flatten(1)


def output_shift(
    quantized_weight: torch.Tensor,
    quantized_inputs: torch.Tensor,
    weight: torch.Tensor,
    inputs: torch.Tensor,
) -> torch.Tensor:
    """Bias correction's ``E[W~ x~] - E[W x]``: the mean shift of every output over the
    calibration images (inputs ``[N, in]``; ``x~`` as the model quantized so far sees them)."""
    return (quantized_inputs @ quantized_weight.T).mean(0) - (inputs @ weight.T).mean(0)


def _round(
    weight: torch.Tensor, inputs: torch.Tensor | None, qparams: QParams, settings: LowBitSettings
) -> torch.Tensor:
    if settings.rounding == "gptq":
        return gptq(weight, inputs, qparams)
    if settings.rounding == "adaround":
        return adaround(weight, inputs, qparams, **settings.adaround_kwargs)
    return round_to_nearest(weight, qparams)


def quantize_weights(
    model: nn.Module, images: torch.Tensor | None, settings: LowBitSettings
) -> QuantizedWeights:
    """Quantize every Linear weight of ``model`` as ``settings`` say, layer by layer (see
    the module docstring). ``images`` (calibration images) are needed for GPTQ, AdaRound
    and bias correction; ``model`` itself is not changed. A model with convolutions is
    refused: their weights would stay at 8 bits while the result claims fewer."""
    convolutions = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if convolutions:
        raise InputError(
            f"model: the low-bit path quantizes Linear layers only, and this model has "
            f"Conv2d layers ({', '.join(convolutions)}); quantize it with the 8-bit path "
            "(ptqlib.ptq.post_training_quantize)"
        )
    names = linear_names(model)
    unknown = sorted(set(settings.layer_bits) - set(names))
    if unknown:
        raise InputError(
            f"layer_bits: unknown layer(s) {', '.join(unknown)}; the layers are {', '.join(names)}"
        )
    needs_data = settings.rounding != "nearest" or settings.bias_correction
    if needs_data and images is None:
        also = " with bias correction" if settings.bias_correction else ""
        raise InputError(f"images: rounding {settings.rounding!r}{also} needs calibration images")
    start = time.perf_counter()
    working = copy.deepcopy(model).eval()
    integers, all_qparams = {}, {}
    for name in names:
        layer = working.get_submodule(name)
        qparams = weight_qparams(
            layer.weight,
            settings.bits_for(name),
            settings.per_channel,
            settings.clipping,
            settings.full_grid_bits,
        )
        inputs = layer_inputs(working, name, images) if needs_data else None
        q = _round(layer.weight.detach(), inputs, qparams, settings)
        with torch.no_grad():
            layer.weight.copy_(dequantize(q, qparams))
            if not torch.equal(quantize(layer.weight, qparams), q):
                raise RuntimeError(f"layer {name!r}: the weights left the grid")  # a bug
            if settings.bias_correction and layer.bias is not None:
                float_layer = model.get_submodule(name)
                float_inputs = layer_inputs(model, name, images)
                layer.bias -= output_shift(layer.weight, inputs, float_layer.weight, float_inputs)
        integers[name], all_qparams[name] = q, qparams
    return QuantizedWeights(working, integers, all_qparams, time.perf_counter() - start)


def activation_kwargs(bits: int) -> dict | None:
    """Observer settings for unsigned B-bit activations (None at 8 bits: the defaults)."""
    check_bits(bits, "activation_bits", ACTIVATION_BITS)
    return None if bits == 8 else {"quant_min": 0, "quant_max": 2**bits - 1}


@dataclass
class LowBitModel:
    """A low-bit quantization: the INT8 engine model, the float copy on the grid, the full
    calibration qparams (activations and weights; ``simulate`` takes them) and timings."""

    int8_model: Int8Model
    grid_model: nn.Module
    qparams: dict[str, QParams]
    weights: QuantizedWeights


def quantize_low_bit(
    model: nn.Module,
    images: torch.Tensor,
    settings: LowBitSettings,
    observer: str = "histogram",
    progress: bool = False,
) -> LowBitModel:
    """Weights as :func:`quantize_weights` does, then activations calibrated at
    ``settings.activation_bits`` on the weight-quantized copy, then ``convert``."""
    weights = quantize_weights(model, images, settings)
    calibration = calibrate(
        weights.model,
        images,
        activation_observer=observer,
        activation_kwargs=activation_kwargs(settings.activation_bits),
        progress=progress,
    )
    qparams = dict(calibration.qparams)
    qparams.update({f"{name}.weight": found for name, found in weights.qparams.items()})
    int8_model = convert(weights.model, qparams, per_channel=settings.per_channel)
    return LowBitModel(int8_model, weights.model, qparams, weights)
