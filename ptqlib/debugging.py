"""Debugging a PTQ model that breaks, step by step (the flowchart of Nagel et al. 2021, "A White
Paper on Neural Network Quantization", section 4.8), as code.

Everything here runs the network in float with *chosen* tensors fake-quantized,
``fake_quantize(x) = S (clamp(round(x / S) + Z) - Z)`` (``ptqlib.quantization``): the weights
of chosen layers (int8 symmetric, one scale per tensor or per output channel, from their
min/max) and the activations at chosen quantization points (uint8 affine, from calibration).
Switching them on one group at a time is how the flowchart isolates a failure:

1. FP32, then everything quantized (W8A8). Within a point or so: done.
2. Weights only (W8, activations float) and activations only (A8): which side breaks?
3. Layer by layer: quantize one layer (or one activation), everything else float. The layer
   whose accuracy falls alone is the culprit.
4. Look at that layer: the spread of its per-channel weight ranges (max over min and over
   the median) and, before folding, the BatchNorm variances and the dead (never positive)
   ReLU channels that explain the spread.
5. Try the fixes: per-channel weights, cross-layer equalization (``ptqlib.equalization``),
   bias absorption, another activation range (the histogram observer); report each with
   accuracy and McNemar's counts against FP32 (``ptqlib.evaluation``).

Biases stay float here (the INT8 model keeps them in int32 at ``S_x S_w``: a far finer grid).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ptqlib.batchnorm import BATCHNORMS, fold_model
from ptqlib.calibration import calibrate
from ptqlib.data import MNISTSplit
from ptqlib.equalization import (
    cross_layer_equalization,
    data_free_quantization_prep,
    equalization_pairs,
)
from ptqlib.errors import InputError
from ptqlib.evaluation import paired_comparison, predict
from ptqlib.fusion import quantization_points
from ptqlib.quantization import QParams, fake_quantize, min_max, qparams_from_range

WEIGHTED = (nn.Conv2d, nn.Linear)
# A BatchNorm channel whose running variance is below this saw (almost) constant input.
TINY_VARIANCE = 1e-6
# A configuration is "fine" within this many points of FP32 accuracy.
TOLERANCE_POINTS = 1.0


def weighted_layers(model: nn.Module) -> list[str]:
    """The names of the Conv2d and Linear layers, in run order."""
    return [name for name, module in model.named_modules() if isinstance(module, WEIGHTED)]


def weight_qparams(weight: torch.Tensor, per_channel: bool) -> QParams:
    """Int8 symmetric qparams from the weight's min/max: ``S = max|w| / 127.5``, one per
    tensor or one per output channel (axis 0)."""
    axis = 0 if per_channel else None
    low, high = min_max(weight, axis=axis)
    return qparams_from_range(low, high, torch.int8, True, axis=axis)


def calibrated_activation_qparams(
    model: nn.Sequential, images: torch.Tensor, observer: str = "minmax"
) -> dict[str, QParams]:
    """Uint8 affine qparams of every quantization point of the folded ``model``
    (``ptqlib.fusion``: the input and every fused step's output), calibrated on ``images``."""
    calibration = calibrate(model, images, activation_observer=observer, progress=False)
    points = quantization_points(model)
    return {name: calibration.qparams[name] for name in points}


@torch.no_grad()
def partially_quantized(
    model: nn.Sequential,
    qparams: Mapping[str, QParams],
    weights: Iterable[str] = (),
    activations: Iterable[str] = (),
    per_channel: bool = False,
) -> nn.Sequential:
    """A copy of the folded ``model`` with the weights of the layers in ``weights``
    fake-quantized (int8, per tensor or per channel) and the activations named in
    ``activations`` (quantization points: ``"input"``, ``"relu1"``...) fake-quantized with
    ``qparams`` on every forward pass (hooks). Everything else stays float."""
    simulated = copy.deepcopy(model).eval()
    for name in weights:
        layer = simulated.get_submodule(name)
        if not isinstance(layer, WEIGHTED):
            raise InputError(f"weights: {name!r} is not a Conv2d or Linear of the model")
        layer.weight.copy_(fake_quantize(layer.weight, weight_qparams(layer.weight, per_channel)))
    for point in activations:
        if point not in qparams:
            raise InputError(f"activations: no qparams for {point!r}; have {sorted(qparams)}")
        point_qparams = qparams[point]
        if point == "input":
            simulated.register_forward_pre_hook(
                lambda module, inputs, q=point_qparams: (fake_quantize(inputs[0], q),)
            )
        else:
            simulated.get_submodule(point).register_forward_hook(
                lambda module, inputs, output, q=point_qparams: fake_quantize(output, q)
            )
    return simulated


@dataclass
class Trial:
    """One configuration: what was quantized, its accuracy, and McNemar's counts against FP32
    (``fixed``: FP32 wrong, this right; ``broken``: the reverse) with the exact p-value."""

    name: str
    accuracy: float
    fixed: int
    broken: int
    p_value: float


@dataclass
class LayerFacts:
    """One weighted layer of the folded model: its accuracy quantized alone (weights only,
    per tensor), and the spread of its per-channel weight ranges ``r_c = max |W[c]|``."""

    layer: str
    accuracy_alone: float
    range_spread: float  # max_c r_c / min_c r_c (channels with r_c = 0 left out)
    max_over_median: float  # max_c r_c / median_c r_c
    largest_range: float


@dataclass
class BatchNormFacts:
    """A BatchNorm before folding: channels with running variance below ``TINY_VARIANCE`` and
    the largest fold factor ``|gamma| / sqrt(var + eps)`` they give the layer before it."""

    batchnorm: str
    layer: str
    tiny_variance_channels: list[int]
    smallest_variance: float
    largest_fold_factor: float


@dataclass
class DebugReport:
    """What :func:`debug_model` found, in the flowchart's order."""

    fp32_accuracy: float
    steps: list[Trial] = field(default_factory=list)  # W8A8, W8 only, A8 only
    layers: list[LayerFacts] = field(default_factory=list)
    activations: list[Trial] = field(default_factory=list)  # one activation point alone
    batchnorms: list[BatchNormFacts] = field(default_factory=list)
    dead_channels: dict[str, list[int]] = field(default_factory=dict)
    fixes: list[Trial] = field(default_factory=list)
    culprit: str | None = None
    diagnosis: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _trial(name: str, model: nn.Module, split: MNISTSplit, reference: torch.Tensor) -> Trial:
    predictions = predict(model, split)
    counts = paired_comparison(reference, predictions, split.labels)
    correct = float((predictions == split.labels).float().mean())
    return Trial(name, correct, counts.fixed, counts.broken, counts.p_value)


def range_facts(layer: nn.Module) -> tuple[float, float, float]:
    """(max/min, max/median, max) of the per-output-channel ranges ``max |W[c]|``."""
    ranges = layer.weight.detach().abs().flatten(1).amax(dim=1).double()
    nonzero = ranges[ranges > 0]
    if len(nonzero) == 0:
        return 1.0, 1.0, 0.0
    largest = float(nonzero.max())
    return largest / float(nonzero.min()), largest / float(nonzero.median()), largest


def batchnorm_facts(model: nn.Sequential) -> list[BatchNormFacts]:
    """:class:`BatchNormFacts` of every BatchNorm of the unfolded ``model``."""
    children = list(model.named_children())
    facts = []
    for (layer_name, _), (name, module) in zip(children, children[1:], strict=False):
        if not isinstance(module, BATCHNORMS):
            continue
        variance = module.running_var.detach().double()
        gamma = module.weight.detach().double() if module.affine else torch.ones_like(variance)
        factor = gamma.abs() / torch.sqrt(variance + module.eps)
        tiny = torch.nonzero(variance < TINY_VARIANCE).flatten().tolist()
        facts.append(
            BatchNormFacts(name, layer_name, tiny, float(variance.min()), float(factor.max()))
        )
    return facts


@torch.no_grad()
def dead_channels(model: nn.Sequential, images: torch.Tensor) -> dict[str, list[int]]:
    """For every ReLU of ``model``: the channels that are 0 on every image of ``images``."""
    found: dict[str, list[int]] = {}
    largest: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_children():
        if isinstance(module, nn.ReLU):

            def hook(module, inputs, output, name=name):
                per_channel = output.transpose(0, 1).flatten(1).amax(dim=1)
                previous = largest.get(name)
                largest[name] = per_channel if previous is None else previous.maximum(per_channel)

            handles.append(module.register_forward_hook(hook))
    try:
        model.eval()(images)
    finally:
        for handle in handles:
            handle.remove()
    for name, values in largest.items():
        found[name] = torch.nonzero(values <= 0).flatten().tolist()
    return found


@torch.no_grad()
def debug_model(
    model: nn.Sequential,
    images: torch.Tensor,
    split: MNISTSplit,
    observer: str = "minmax",
    sweeps: int = 20,
) -> DebugReport:
    """Run the debugging procedure (module docstring) on the unfolded float ``model`` with
    calibration ``images`` and the test ``split``. Returns a :class:`DebugReport`; its
    ``culprit`` names the layer (or activation) that alone loses the most accuracy when the
    full model is more than ``TOLERANCE_POINTS`` below FP32."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
    model = model.eval()
    reference = predict(model, split)
    report = DebugReport(float((reference == split.labels).float().mean()))
    folded = fold_model(model)
    qparams = calibrated_activation_qparams(folded, images, observer)
    layers, points = weighted_layers(folded), list(qparams)

    def run(name, network, network_qparams, weights=(), activations=(), per_channel=False):
        simulated = partially_quantized(network, network_qparams, weights, activations, per_channel)
        return _trial(name, simulated, split, reference)

    report.steps = [
        run("W8A8 per-tensor", folded, qparams, layers, points),
        run("W8 only (per-tensor)", folded, qparams, layers),
        run("A8 only", folded, qparams, (), points),
    ]
    for layer in layers:
        alone = run(f"{layer} weights alone", folded, qparams, [layer])
        spread, over_median, largest = range_facts(folded.get_submodule(layer))
        report.layers.append(LayerFacts(layer, alone.accuracy, spread, over_median, largest))
    report.activations = [run(f"{point} alone", folded, qparams, (), [point]) for point in points]
    report.batchnorms = batchnorm_facts(model)
    report.dead_channels = {k: v for k, v in dead_channels(model, images).items() if v}

    # The fixes, each calibrated again on the same images (CLE changes the activations).
    report.fixes = [
        run("per-channel weights", folded, qparams, layers, points, per_channel=True),
        run(
            "histogram activation range, per-tensor",
            folded,
            calibrated_activation_qparams(folded, images, "histogram"),
            layers,
            points,
        ),
    ]
    if equalization_pairs(folded):  # CLE needs Conv2d -> ReLU -> Conv2d pairs
        equalized = cross_layer_equalization(folded, sweeps)[0]
        dfq = data_free_quantization_prep(model, sweeps, absorb=True)
        for name, network in (
            ("CLE, per-tensor", equalized),
            ("CLE + bias absorption, per-tensor", dfq),
        ):
            network_qparams = calibrated_activation_qparams(network, images, observer)
            report.fixes.insert(-1, run(name, network, network_qparams, layers, points))
    report.culprit, report.diagnosis = _diagnose(report)
    return report


def _diagnose(report: DebugReport) -> tuple[str | None, str]:
    """The culprit and one sentence, from the steps and the layer-by-layer results."""
    fp32 = report.fp32_accuracy
    full, weights_only, activations_only = report.steps
    lost = 100 * (fp32 - full.accuracy)
    if lost <= TOLERANCE_POINTS:
        return None, f"W8A8 per-tensor is within {lost:.1f} points of FP32: nothing to fix."
    if 100 * (fp32 - weights_only.accuracy) >= 100 * (fp32 - activations_only.accuracy):
        worst = min(report.layers, key=lambda facts: facts.accuracy_alone)
        also = [
            facts.layer
            for facts in report.layers
            if facts is not worst and 100 * (fp32 - facts.accuracy_alone) > 10
        ]
        return worst.layer, (
            f"the weights break it: {worst.layer}'s weights quantized alone give "
            f"{worst.accuracy_alone:.1%} (FP32 {fp32:.1%}); its per-channel ranges spread "
            f"{worst.range_spread:,.0f}x (largest {worst.largest_range:.3g})"
            + (f"; {', '.join(also)} alone also lose(s) more than 10 points" if also else "")
        )
    worst_point = min(report.activations, key=lambda trial: trial.accuracy)
    name = worst_point.name.removesuffix(" alone")
    return name, (
        f"the activations break it: {name} quantized alone gives {worst_point.accuracy:.1%} "
        f"(FP32 {fp32:.1%})"
    )


def format_report(report: DebugReport) -> str:
    """The report as plain-text tables."""
    fp32 = report.fp32_accuracy

    def trial_rows(trials: list[Trial]) -> list[str]:
        return [
            f"  {t.name:<42} {t.accuracy:7.1%} {100 * (t.accuracy - fp32):+7.1f} "
            f"{t.fixed:6d} {t.broken:6d} {t.p_value:9.2g}"
            for t in trials
        ]

    header = (
        f"  {'configuration':<42} {'acc':>7} {'vs FP32':>7} {'fixed':>6} {'broken':>6} {'p':>9}"
    )
    lines = [f"FP32 accuracy: {fp32:.1%}", "", "1-2. Everything, weights only, activations only:"]
    lines += [header, *trial_rows(report.steps), "", "3. One layer's weights alone (per-tensor):"]
    lines.append(f"  {'layer':<10} {'acc':>7} {'max/min':>10} {'max/median':>11} {'max |w|':>9}")
    for facts in report.layers:
        lines.append(
            f"  {facts.layer:<10} {facts.accuracy_alone:7.1%} {facts.range_spread:10.3g} "
            f"{facts.max_over_median:11.3g} {facts.largest_range:9.3g}"
        )
    lines += ["", "   One activation alone:", header, *trial_rows(report.activations), ""]
    lines.append("4. BatchNorm channels with running variance < 1e-6 (before folding):")
    for facts in report.batchnorms:
        if facts.tiny_variance_channels:
            lines.append(
                f"  {facts.batchnorm:<10} -> {facts.layer:<6} channels "
                f"{facts.tiny_variance_channels}; smallest variance {facts.smallest_variance:.2g}, "
                f"fold factor up to {facts.largest_fold_factor:.3g}"
            )
    dead = ", ".join(f"{name} {channels}" for name, channels in report.dead_channels.items())
    lines += [f"   dead ReLU channels: {dead or 'none'}", "", "5. Fixes:", header]
    lines += trial_rows(report.fixes)
    lines += ["", f"Culprit: {report.culprit or 'none'}: {report.diagnosis}"]
    return "\n".join(lines)
