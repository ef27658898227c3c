"""Where the error comes from: layer-by-layer diagnosis, sensitivity and mixed precision.

This is the job PyTorch's Numeric Suite did for eager-mode models: compare every layer of
the quantized model with the same layer of the FP32 model, on the same images. The measure
is the signal-to-quantization-noise ratio (``ptqlib.quantization.sqnr_db``)::

    SQNR = 10 log10( sum y^2 / sum (y - y~)^2 )  dB       (about 6 dB per bit)

of each layer's output (after its fused ReLU: the tensor the INT8 model really holds),
measured four ways, which separate the causes:

- ``propagated``: the INT8 model's own output of the layer; the errors of all earlier
  layers arrive with its input;
- ``alone``: only this layer quantized (its input quantized from the FP32 input, its
  weights, bias and output), everything before it in FP32;
- ``weights_only``: FP32 input and bias, quantized weights, no output rounding;
- ``activations_only``: FP32 weights, quantized input and output.

A layer whose ``alone`` SQNR is low is hard to quantize by itself; one whose
``propagated`` SQNR is much lower than its ``alone`` SQNR mostly inherits error. Which of
``weights_only``/``activations_only`` is lower says which fix to try first.

Then: *sensitivity* (accuracy with one layer's weights at low bits, the others FP32) and a
*mixed-precision* choice (a bit width per layer under a size budget), chosen on held-out
training images, never on the test set. Differences between two models are judged by the
digits that changed (:func:`paired_flips`), not by each model's own standard error: both
models see the same 1,000 digits, and most of their answers are the same.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.evaluation import mcnemar_p_value
from ptqlib.int8_gemm import from_carrier
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import Int8Model
from ptqlib.lowbit.rounding import round_to_nearest
from ptqlib.lowbit.weights import layer_inputs, linear_names, weight_qparams
from ptqlib.packing import bits_for_range
from ptqlib.quantization import dequantize, fake_quantize, sqnr_db


@dataclass(frozen=True)
class LayerError:
    """One layer's bit widths and its four SQNRs in dB (see the module docstring)."""

    name: str
    weight_bits: int
    activation_bits: int
    propagated: float
    alone: float
    weights_only: float
    activations_only: float


def _linears(model: Int8Model) -> list[Int8Linear]:
    if not isinstance(model, Int8Model):
        raise TypeError(f"int8_model: expected an Int8Model, got {type(model).__name__}")
    return [layer for layer in model.layers if isinstance(layer, Int8Linear)]


def _float_layer(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool
) -> torch.Tensor:
    """``relu?(x W^T + b)`` in float: one layer as the FP32 model (or a simulation) runs it."""
    y = x @ weight.T if bias is None else x @ weight.T + bias
    return torch.relu(y) if relu else y


@torch.no_grad()
def integer_outputs(int8_model: Int8Model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every Int8Linear's output in the integer engine, dequantized: ``S_y (q_y - Z_y)``."""
    outputs = {}
    carriers = int8_model.quantize_input(images)
    for layer in int8_model.layers:
        carriers = layer(carriers)
        if isinstance(layer, Int8Linear):
            qparams = layer.output_qparams
            q = from_carrier(carriers, qparams.dtype)
            outputs[layer.name] = dequantize(q, qparams)
    return outputs


@torch.no_grad()
def layer_errors(fp32: nn.Module, int8_model: Int8Model, images: torch.Tensor) -> list[LayerError]:
    """The four SQNRs of every layer of ``int8_model`` against ``fp32`` on ``images``."""
    layers = _linears(int8_model)
    names = linear_names(fp32)
    if [layer.name for layer in layers] != names:
        raise InputError(
            f"int8_model: its layers {[layer.name for layer in layers]} are not the FP32 "
            f"model's {names}; was it quantized from this model?"
        )
    propagated = integer_outputs(int8_model, images)
    rows = []
    for layer in layers:
        module = fp32.get_submodule(layer.name)
        x = layer_inputs(fp32, layer.name, images)
        reference = _float_layer(x, module.weight, module.bias, layer.relu)
        weight = dequantize(layer.weight, layer.weight_qparams)
        bias = layer.bias.double() * layer.input_scale.double() * layer.weight_scale.double()
        x_q = fake_quantize(x, layer.input_qparams)
        alone = fake_quantize(
            _float_layer(x_q, weight, bias.float(), layer.relu), layer.output_qparams
        )
        activations = _float_layer(x_q, module.weight, module.bias, layer.relu)
        rows.append(
            LayerError(
                name=layer.name,
                weight_bits=bits_for_range(*layer.weight_range),
                activation_bits=bits_for_range(
                    layer.output_qparams.quant_min, layer.output_qparams.quant_max
                ),
                propagated=sqnr_db(reference, propagated[layer.name]),
                alone=sqnr_db(reference, alone),
                weights_only=sqnr_db(reference, _float_layer(x, weight, module.bias, layer.relu)),
                activations_only=sqnr_db(
                    reference, fake_quantize(activations, layer.output_qparams)
                ),
            )
        )
    return rows


def layer_error_table(rows: Sequence[LayerError]) -> str:
    """The diagnosis as a plain-text table, one line per layer."""
    lines = [
        f"{'layer':6s} {'W bits':>6s} {'A bits':>6s} {'propagated':>11s} {'alone':>8s} "
        f"{'weights only':>13s} {'acts only':>10s}   (SQNR, dB)"
    ]
    for row in rows:
        lines.append(
            f"{row.name:6s} {row.weight_bits:6d} {row.activation_bits:6d} {row.propagated:11.1f} "
            f"{row.alone:8.1f} {row.weights_only:13.1f} {row.activations_only:10.1f}"
        )
    return "\n".join(lines)


def layer_error_json(rows: Sequence[LayerError]) -> list[dict]:
    return [
        {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(r).items()} for r in rows
    ]


# --- paired comparison -------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedFlips:
    """Digits where two models disagree on being right: ``gained`` (B right, A wrong),
    ``lost`` (A right, B wrong), and McNemar's exact two-sided p-value for them."""

    gained: int
    lost: int
    p_value: float

    def __str__(self) -> str:
        net = self.gained - self.lost
        return f"+{self.gained} / -{self.lost} digits (net {net:+d}, p = {self.p_value:.2g})"


def paired_flips(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> PairedFlips:
    """Compare predictions ``after`` with ``before`` on the same digits (McNemar's test).

    Only the digits that changed from right to wrong or back carry information; under "no
    difference" each is equally likely to go either way, so the p-value is the two-sided
    binomial tail ``P(min(gained, lost) or fewer of n flips | p = 1/2)``, doubled (max 1).
    """
    if not (before.shape == after.shape == labels.shape):
        raise InputError(
            f"before {tuple(before.shape)}, after {tuple(after.shape)} and labels "
            f"{tuple(labels.shape)} must have the same shape"
        )
    right_before, right_after = before == labels, after == labels
    gained = int((right_after & ~right_before).sum())
    lost = int((right_before & ~right_after).sum())
    return PairedFlips(gained, lost, mcnemar_p_value(gained, lost))


# --- sensitivity and mixed precision -----------------------------------------------------------


def weight_quantized_copy(
    model: nn.Module, bits: Mapping[str, int | None], clipping: str = "minmax"
) -> nn.Module:
    """A copy of ``model`` whose listed Linear weights are rounded to nearest on a B-bit
    per-channel grid (``None`` keeps a layer FP32); activations stay float."""
    quantized = copy.deepcopy(model).eval()
    for name, width in bits.items():
        if width is None:
            continue
        layer = quantized.get_submodule(name)
        qparams = weight_qparams(layer.weight, width, True, clipping)
        with torch.no_grad():
            layer.weight.copy_(dequantize(round_to_nearest(layer.weight, qparams), qparams))
    return quantized


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(dim=1) == labels).float().mean())


def sensitivity(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, widths: Sequence[int] = (2, 3, 4)
) -> dict[str, dict[int, float]]:
    """Accuracy with one layer's weights at each of ``widths`` bits, the rest FP32:
    ``{layer: {bits: accuracy}}``."""
    return {
        name: {
            width: _accuracy(weight_quantized_copy(model, {name: width}), images, labels)
            for width in widths
        }
        for name in linear_names(model)
    }


def packed_weight_bytes(model: nn.Module, bits: Mapping[str, int | None]) -> int:
    """Bytes of the weights packed at ``bits`` per layer (FP32 layers: 4 bytes a weight)."""
    total = 0
    for name in linear_names(model):
        count, width = model.get_submodule(name).weight.numel(), bits.get(name)
        total += 4 * count if width is None else math.ceil(count * width / 8)
    return total


@dataclass(frozen=True)
class MixedPrecisionPoint:
    """One per-layer choice of bits, its packed weight size and its accuracy."""

    bits: dict[str, int | None]
    weight_bytes: int
    accuracy: float


def mixed_precision_points(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    widths: Sequence[int | None] = (2, 3, 4, 8),
) -> list[MixedPrecisionPoint]:
    """Every per-layer combination of ``widths`` (``None`` for FP32), measured on
    ``images``/``labels`` (held-out training images, not the test set)."""
    names = linear_names(model)
    points = []
    for combination in itertools.product(widths, repeat=len(names)):
        bits = dict(zip(names, combination, strict=True))
        quantized = weight_quantized_copy(model, bits)
        points.append(
            MixedPrecisionPoint(
                bits, packed_weight_bytes(model, bits), _accuracy(quantized, images, labels)
            )
        )
    return points


def pareto_front(points: Sequence[MixedPrecisionPoint]) -> list[MixedPrecisionPoint]:
    """The points no other point beats on both size and accuracy, smallest first."""
    front: list[MixedPrecisionPoint] = []
    for point in sorted(points, key=lambda p: (p.weight_bytes, -p.accuracy)):
        if not front or point.accuracy > front[-1].accuracy:
            front.append(point)
    return front


def best_under_budget(
    points: Sequence[MixedPrecisionPoint], budget_bytes: int
) -> MixedPrecisionPoint:
    """The most accurate point whose weights fit in ``budget_bytes`` (the smaller on a tie)."""
    fitting = [point for point in points if point.weight_bytes <= budget_bytes]
    if not fitting:
        smallest = min(point.weight_bytes for point in points)
        raise InputError(
            f"budget_bytes: {budget_bytes} is below the smallest choice ({smallest} bytes)"
        )
    return max(fitting, key=lambda p: (p.accuracy, -p.weight_bytes))
