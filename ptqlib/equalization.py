"""Data-free quantization (DFQ, Nagel et al. 2019): cross-layer equalization and bias absorption.

**Cross-layer equalization (CLE).** Two convolutions with a ReLU between them,
``y = W2 relu(W1 x + b1) + b2``. A ReLU is positively homogeneous, ``relu(x / s) = relu(x) / s``
for any ``s > 0``, so dividing output channel i of layer 1 by ``s_i`` and multiplying input
channel i of layer 2 by the same ``s_i`` changes nothing in float::

    W1'[i] = W1[i] / s_i      b1'[i] = b1[i] / s_i      W2'[:, i] = W2[:, i] s_i

But it changes the weight *ranges*. With ``r1_i = max |W1[i]|`` (output channel i of layer 1)
and ``r2_i = max |W2[:, i]|`` (input channel i of layer 2), the choice

    s_i = sqrt(r1_i r2_i) / r2_i         gives         r1'_i = r2'_i = sqrt(r1_i r2_i)

makes channel i's range the same on both sides. A channel whose range was far larger than
its neighbours' is scaled down into the pack, so one scale per tensor fits every channel
better. Each layer sits in two pairs (as layer 2 of one, layer 1 of the next), so the pairs
are equalized again and again (*sweeps*) until the scales settle.

For a depthwise layer 2 (one filter per channel) input channel i is its filter i; for a
depthwise layer 1 output channel i is its filter i: the same formulas hold.

**Bias absorption.** After folding, output channel i of layer 1 before its ReLU is roughly
normal with the BatchNorm's ``beta_i`` as mean and ``|gamma_i|`` as standard deviation. If
``c_i = max(0, beta_i - 3 |gamma_i|) > 0``, then nearly always ``x_i >= c_i`` and
``relu(x_i - c_i) = relu(x_i) - c_i``; moving ``c_i`` out of layer 1's bias into layer 2's,
``b2' = b2 + W2 c``, leaves the output unchanged and shrinks the range of the activation
between the layers (it starts near 0 instead of near ``c_i``): fewer wasted uint8 levels.
It is exact for a layer 2 without padding (a pointwise 1x1 conv or a Linear): with zero
padding the border sees the padded 0, not ``-c_i``, so padded pairs are left alone here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ptqlib.batchnorm import BATCHNORMS, fold_model
from ptqlib.errors import InputError

DEFAULT_SWEEPS = 20
# Below this range a channel is all (or nearly all) zeros: there is nothing to equalize.
TINY_RANGE = 1e-12


@dataclass(frozen=True)
class Pair:
    """Two consecutive layers joined by a ReLU: ``second(relu(first(x)))``, by name."""

    first: str
    second: str


def equalization_pairs(model: nn.Sequential) -> list[Pair]:
    """Every Conv2d followed by a ReLU and then directly by another Conv2d, in a folded
    Sequential (no BatchNorm left). Only these pairs are equalized: anything else between
    the two layers (a pool, a Flatten) would need its own argument that scaling commutes."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
    if any(isinstance(module, BATCHNORMS) for module in model.modules()):
        raise InputError("model: still has a BatchNorm; fold it first (ptqlib.batchnorm)")
    children = list(model.named_children())
    pairs = []
    for index in range(len(children) - 2):
        (first, layer1), (_, between), (second, layer2) = children[index : index + 3]
        if (
            isinstance(layer1, nn.Conv2d)
            and isinstance(between, nn.ReLU)
            and isinstance(layer2, nn.Conv2d)
        ):
            pairs.append(Pair(first, second))
    return pairs


def output_ranges(layer: nn.Conv2d) -> torch.Tensor:
    """``r1_i = max |W[i]|`` for every output channel i of a convolution."""
    return layer.weight.detach().abs().flatten(1).amax(dim=1)


def input_ranges(layer: nn.Conv2d) -> torch.Tensor:
    """``r2_i = max |W[:, i]|`` for every input channel i of a convolution; for a depthwise
    one (groups = channels, weight ``[C, 1, k, k]``) input channel i is its filter i."""
    weight = layer.weight.detach().abs()
    if layer.groups == 1:
        return weight.transpose(0, 1).flatten(1).amax(dim=1)
    if layer.groups == layer.in_channels == layer.out_channels:
        return weight.flatten(1).amax(dim=1)
    raise InputError(
        f"layer: only plain or depthwise convolutions equalize, got groups={layer.groups}"
    )


def equalization_scales(first_ranges: torch.Tensor, second_ranges: torch.Tensor) -> torch.Tensor:
    """``s_i = sqrt(r1_i r2_i) / r2_i`` for every channel i (1 where either range is ~0: an
    all-zero channel has nothing to balance)."""
    if first_ranges.shape != second_ranges.shape:
        raise InputError(
            f"ranges: one per channel on both sides, got {tuple(first_ranges.shape)} and "
            f"{tuple(second_ranges.shape)}"
        )
    first, second = first_ranges.double(), second_ranges.double()
    usable = (first > TINY_RANGE) & (second > TINY_RANGE)
    scales = torch.sqrt(first * second) / second.clamp(min=TINY_RANGE)
    return torch.where(usable, scales, torch.ones_like(scales))


@torch.no_grad()
def equalize_pair(first: nn.Conv2d, second: nn.Conv2d) -> torch.Tensor:
    """Equalize one pair in place; returns the scales ``s`` it applied (float64)."""
    scales = equalization_scales(output_ranges(first), input_ranges(second))
    shape1 = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.copy_((first.weight.double() / scales.reshape(shape1)).to(first.weight.dtype))
    if first.bias is not None:
        first.bias.copy_((first.bias.double() / scales).to(first.bias.dtype))
    if second.groups == 1:  # input channels on axis 1: [out, in, k, k]
        shape2 = (1, -1) + (1,) * (second.weight.dim() - 2)
    else:  # depthwise: input channel i is filter i, axis 0
        shape2 = shape1
    second.weight.copy_((second.weight.double() * scales.reshape(shape2)).to(second.weight.dtype))
    return scales


def cross_layer_equalization(
    model: nn.Sequential, sweeps: int = DEFAULT_SWEEPS
) -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    """A copy of the folded ``model`` with every :func:`equalization_pairs` pair equalized,
    ``sweeps`` times over all pairs in order. Returns the copy and, for every layer whose
    outputs were divided, the product of all its scales (output channel i of that layer is
    now ``1 / s_i`` of what it was: what :func:`absorb_biases` needs to rescale its
    statistics). The float outputs are unchanged up to float32 rounding."""
    if not isinstance(sweeps, int) or isinstance(sweeps, bool) or sweeps < 1:
        raise InputError(f"sweeps: expected a positive whole number, got {sweeps!r}")
    equalized = copy.deepcopy(model).eval()
    pairs = equalization_pairs(equalized)
    if not pairs:
        raise InputError("model: has no Conv2d -> ReLU -> Conv2d pair to equalize")
    total: dict[str, torch.Tensor] = {}
    for _ in range(sweeps):
        for pair in pairs:
            first = equalized.get_submodule(pair.first)
            second = equalized.get_submodule(pair.second)
            scales = equalize_pair(first, second)
            total[pair.first] = total.get(pair.first, torch.ones_like(scales)) * scales
    return equalized, total


def preactivation_statistics(model: nn.Sequential) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For every layer of the *unfolded* ``model`` followed by a BatchNorm: the BatchNorm's
    ``(beta, |gamma|)``, the mean and standard deviation of the folded layer's output per
    channel that DFQ assumes (data-free: no image needed)."""
    children = list(model.named_children())
    statistics = {}
    for (name, _), (_, following) in zip(children, children[1:], strict=False):
        if isinstance(following, BATCHNORMS) and following.affine:
            statistics[name] = (following.bias.detach().clone(), following.weight.detach().abs())
    return statistics


@torch.no_grad()
def absorb_biases(
    model: nn.Sequential,
    statistics: dict[str, tuple[torch.Tensor, torch.Tensor]],
    sigmas: float = 3.0,
) -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    """A copy of the folded ``model`` with ``c = max(0, mean - sigmas std)`` moved from every
    pair's first layer into its second (``b1' = b1 - c``, ``b2' = b2 + W2 c``), for pairs whose
    second layer has no padding (there it is exact for every value ``>= c``). ``statistics``
    maps a layer to the (mean, std) of its output channels (:func:`preactivation_statistics`,
    divided by the CLE scales if the model was equalized). Returns the copy and the ``c``
    absorbed per layer."""
    absorbed = copy.deepcopy(model).eval()
    moved: dict[str, torch.Tensor] = {}
    for pair in equalization_pairs(absorbed):
        first = absorbed.get_submodule(pair.first)
        second = absorbed.get_submodule(pair.second)
        if pair.first not in statistics or second.padding not in (0, (0, 0)):
            continue
        mean, std = statistics[pair.first]
        shift = (mean.double() - sigmas * std.double()).clamp(min=0.0)
        if first.bias is None or not bool((shift > 0).any()):
            continue
        first.bias.copy_((first.bias.double() - shift).to(first.bias.dtype))
        weight = second.weight.double()
        if second.groups == 1:  # b2_o += sum_i (sum over the kernel of W2[o, i]) c_i
            added = weight.sum(dim=(2, 3)) @ shift
        else:  # depthwise: b2_i += (sum of filter i) c_i
            added = weight.sum(dim=(1, 2, 3)) * shift
        if second.bias is None:
            second.bias = nn.Parameter(torch.zeros(second.out_channels, dtype=second.weight.dtype))
        second.bias.copy_((second.bias.double() + added).to(second.bias.dtype))
        moved[pair.first] = shift
    return absorbed, moved


def data_free_quantization_prep(
    model: nn.Sequential, sweeps: int = DEFAULT_SWEEPS, absorb: bool = True
) -> nn.Sequential:
    """DFQ's float steps on a model with BatchNorms: fold them, equalize (``sweeps``), and
    with ``absorb`` move the biases using the BatchNorms' statistics (rescaled by the
    equalization scales). Returns the folded, equalized model, ready to calibrate."""
    statistics = preactivation_statistics(model)
    equalized, scales = cross_layer_equalization(fold_model(model), sweeps)
    if not absorb:
        return equalized
    rescaled = {
        name: (mean / scales[name].to(mean.dtype), std / scales[name].to(std.dtype))
        if name in scales
        else (mean, std)
        for name, (mean, std) in statistics.items()
    }
    return absorb_biases(equalized, rescaled)[0]
