"""A model's weights (and activations) in a number format, simulated in FP32.

No CPU here computes in MXFP4 or NVFP4, so a model "in a format" is simulated the way
notebook 04 simulated INT8 (fake quantization): every weight is replaced by the value its
code and scales stand for, ``dequantize(quantize(w))``, and where the format is meant for
activations too, every layer's input is rounded the same way on its way in. The arithmetic
is then FP32, which is what a tensor core does inside a block-scaled GEMM too: it multiplies
the small elements exactly and accumulates in FP32 (OCP MX v1.0, section 6.1). So the
simulation predicts a real kernel's result up to the order of the FP32 sums; for FP8,
``ptqlib.formats.scaled_mm`` runs the real kernel and checks it.

Blocks run along the reduction axis (``ptqlib.formats.blocks``): a Linear's weight
``[out, in]`` as it is, a convolution's ``[out, in, kh, kw]`` as ``[out, in * kh * kw]``;
an activation along its features (a Linear's input ``[N, in]``) or its channels (a
convolution's input ``[N, C, H, W]``, blocks of C at every pixel). Per-tensor activation
scales (FP8, NVFP4's FP32 scale) come from a calibration run, :func:`activation_amax`, like
the INT8 model's activation ranges; block scales are computed from each block as it arrives.

Biases and BatchNorm stay in FP32 (a bias is added to the FP32 accumulator). Fold BatchNorm
into the convolutions first (``ptqlib.batchnorm.fold_model``) to quantize the weights a
deployed model really holds.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ptqlib.errors import InputError
from ptqlib.formats.schemes import QuantizedTensor, Scheme
from ptqlib.quantization import sqnr_db

WEIGHTED_LAYERS = (nn.Linear, nn.Conv2d)


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and Conv2d children of ``model``, in order, with their names."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential such as SimpleNet, got {type(model)}")
    layers = [
        (name, layer)
        for name, layer in model.named_children()
        if isinstance(layer, WEIGHTED_LAYERS)
    ]
    if not layers:
        raise InputError("model: has no Linear or Conv2d layer to quantize")
    return layers


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a GEMM operand ``[out, K]`` (a conv's flattened to K = in*kh*kw)."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def quantize_weights(model: nn.Module, scheme: Scheme) -> dict[str, QuantizedTensor]:
    """Every weighted layer's weight in ``scheme``, as ``[out, K]``, by layer name."""
    return {name: scheme.quantize(weight_matrix(layer)) for name, layer in weighted_layers(model)}


def fake_quantize_activation(x: torch.Tensor, scheme: Scheme, amax: float | None) -> torch.Tensor:
    """``x`` rounded in ``scheme``, blocks along its features (dim 1 of [N, F] or [N, C, H, W])."""
    channels_last = x.movedim(1, -1)
    return scheme.fake_quantize(channels_last, amax).movedim(-1, 1)


class FormatLayer(nn.Module):
    """A Linear or Conv2d whose weight holds dequantized values, with its input rounded in
    ``scheme`` first when ``input_amax`` is not None (the calibrated range of the input).

    A Linear computes ``x @ W.T`` and then adds the bias, the order of a GEMM kernel (and of
    ``torch._scaled_mm``); ``F.linear`` fuses the bias into the product (addmm), which can
    change the last bit of a sum."""

    def __init__(self, layer: nn.Module, scheme: Scheme, input_amax: float | None) -> None:
        super().__init__()
        self.layer = layer
        self.scheme = scheme
        self.input_amax = input_amax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_amax is not None:
            x = fake_quantize_activation(x, self.scheme, self.input_amax)
        if isinstance(self.layer, nn.Linear):
            out = x @ self.layer.weight.T
            return out if self.layer.bias is None else out + self.layer.bias
        return self.layer(x)


@torch.no_grad()
def simulate(
    model: nn.Module,
    scheme: Scheme,
    activation_amax: dict[str, float] | None = None,
    quantized: dict[str, QuantizedTensor] | None = None,
) -> nn.Sequential:
    """A copy of ``model`` (an ``nn.Sequential``) whose Linear/Conv2d weights are in ``scheme``;
    with ``activation_amax`` (from :func:`activation_amax`) their inputs are too. Pass
    ``quantized`` (from :func:`quantize_weights`) to reuse weights already quantized."""
    if activation_amax is not None and not scheme.for_activations:
        raise InputError(
            f"activation_amax: {scheme.name} is a weight format; it is not meant for activations"
        )
    quantized = quantize_weights(model, scheme) if quantized is None else quantized
    simulated = copy.deepcopy(model).eval()
    for name, layer in weighted_layers(simulated):
        layer.weight.copy_(quantized[name].dequantize().reshape(layer.weight.shape))
        input_amax = None if activation_amax is None else activation_amax[name]
        setattr(simulated, name, FormatLayer(layer, scheme, input_amax))
    return simulated


@torch.no_grad()
def activation_amax(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """The largest magnitude of every weighted layer's input over ``images`` (calibration)."""
    ranges: dict[str, float] = {}
    handles = []
    for name, layer in weighted_layers(model):

        def record(module: nn.Module, inputs: tuple[torch.Tensor], name: str = name) -> None:
            ranges[name] = max(ranges.get(name, 0.0), float(inputs[0].abs().max()))

        handles.append(layer.register_forward_pre_hook(record))
    try:
        model.eval()(images)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def weight_sqnr(model: nn.Module, quantized: dict[str, QuantizedTensor]) -> dict[str, float]:
    """SQNR (dB) of every layer's weight against its value in the format."""
    return {
        name: sqnr_db(weight_matrix(layer), quantized[name].dequantize())
        for name, layer in weighted_layers(model)
    }


def bits_per_weight(quantized: dict[str, QuantizedTensor]) -> float:
    """Bits per weight over all layers, scales and codebooks included."""
    bits = sum(tensor.storage_bits for tensor in quantized.values())
    return bits / sum(tensor.numel for tensor in quantized.values())


def mean_sqnr(sqnr: dict[str, float]) -> float:
    """The mean of per-layer SQNRs in dB (infinite if every layer is exact)."""
    return sum(sqnr.values()) / len(sqnr) if all(map(math.isfinite, sqnr.values())) else math.inf
