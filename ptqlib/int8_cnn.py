"""A calibrated, BatchNorm-folded CNN converted into an integer-only model, and its float
(fake-quant) simulation.

The steps (notebook 07)::

    fold BatchNorm     ptqlib.batchnorm.fold_model            conv+BN -> conv with bias
    calibrate fused    ptqlib.calibration.calibrate_fused          observers at relu1, relu2, fc
    convert            convert_cnn (here)                     Int8Conv2d, Int8MaxPool2d,
                                                              Flatten, Int8Linear
    check              simulate_cnn (here)                    the same network in float64

The INT8 CNN is an :class:`~ptqlib.int8_model.Int8Model`: quantize the images once, run
every layer on int8 carriers, dequantize the logits. ``ptqlib.evaluation`` and the INT8
checkpoint work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ptqlib.batchnorm import has_batchnorm
from ptqlib.calibration import calibrate_fused
from ptqlib.errors import InputError
from ptqlib.fake_quant import FakeQuantModel
from ptqlib.int8_layers import Int8Conv2d, Int8MaxPool2d
from ptqlib.int8_model import Int8Model, int8_linear
from ptqlib.integer_arithmetic import quantize_bias
from ptqlib.plan import (
    ConvStep,
    LinearStep,
    activation_qparams,  # the same checks and messages as the MLP conversion
    bias_of,
    weight_qparams_for,
)
from ptqlib.quantization import QParams, check_finite
from ptqlib.quantization import quantize as quantize_tensor

SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten)


Step = ConvStep | LinearStep | nn.MaxPool2d | nn.Flatten


def _check_supported(name: str, module: nn.Module) -> None:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise InputError(
            f"layer {name!r} is a BatchNorm: fold it first (ptqlib.batchnorm.fold_model, or "
            "calibrate with ptqlib.calibration.calibrate_fused, which folds)"
        )
    if not isinstance(module, SUPPORTED_LAYERS):
        raise InputError(
            f"layer {name!r} is a {type(module).__name__}, which the INT8 CNN conversion does "
            "not support; supported: Conv2d, Linear, ReLU (after either), MaxPool2d, Flatten"
        )
    if isinstance(module, nn.Conv2d) and (
        module.groups != 1
        or module.dilation != (1, 1)
        or module.padding_mode != "zeros"
        or isinstance(module.padding, str)
    ):
        raise InputError(f"layer {name!r}: only plain convolutions (no groups/dilation) convert")
    if isinstance(module, nn.MaxPool2d) and (
        module.padding not in (0, (0, 0)) or module.dilation not in (1, (1, 1)) or module.ceil_mode
    ):
        raise InputError(
            f"layer {name!r}: only max-pools without padding/dilation/ceil_mode convert"
        )


def plan_cnn(
    model: nn.Sequential, qparams: Mapping[str, QParams], per_channel: bool = True
) -> list[Step]:
    """Pair every Conv2d / Linear of the folded ``model`` with the ReLU after it and with its
    qparams (``calibration.qparams`` of :func:`ptqlib.calibration.calibrate_fused`). Max-pool and
    Flatten pass through: their output has their input's qparams."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model: expected an nn.Sequential (a folded CNN), got {type(model).__name__}"
        )
    qparams = getattr(qparams, "qparams", qparams)  # a Calibration or its qparams dict
    if not isinstance(qparams, Mapping):
        raise TypeError(f"qparams: expected a dict of QParams, got {type(qparams).__name__}")
    children = list(model.named_children())
    for name, module in children:
        _check_supported(name, module)
    steps: list[Step] = []
    current = activation_qparams(qparams, "input", "the model's input")
    index = 0
    while index < len(children):
        name, module = children[index]
        if isinstance(module, (nn.MaxPool2d, nn.Flatten)):
            steps.append(module)
            index += 1
            continue
        if isinstance(module, nn.ReLU):
            raise InputError(f"layer {name!r} (ReLU) does not follow a Conv2d or Linear")
        check_finite(module.weight.detach(), f"{name}.weight")
        following = children[index + 1] if index + 1 < len(children) else None
        relu_name = following[0] if following and isinstance(following[1], nn.ReLU) else None
        output_key = relu_name or name
        output = activation_qparams(qparams, output_key, f"the output of {output_key}")
        weight = weight_qparams_for(name, module.weight.detach(), qparams, per_channel)
        step_class = ConvStep if isinstance(module, nn.Conv2d) else LinearStep
        steps.append(step_class(name, module, relu_name, current, weight, output))
        current = output
        index += 2 if relu_name else 1
    if not steps or not isinstance(steps[-1], LinearStep):
        raise InputError("model: must end with a Linear (the logits)")
    return steps


def _int8_conv(step: ConvStep) -> Int8Conv2d:
    weight = step.conv.weight.detach()
    return Int8Conv2d(
        weight=quantize_tensor(weight, step.weight_qparams),
        bias=quantize_bias(bias_of(step.conv), step.input_qparams.scale, step.weight_qparams.scale),
        weight_qparams=step.weight_qparams,
        input_qparams=step.input_qparams,
        output_qparams=step.output_qparams,
        relu=step.relu_name is not None,
        stride=step.conv.stride,
        padding=step.conv.padding,
        name=step.name,
    )


def convert_cnn(
    model: nn.Sequential, qparams: Mapping[str, QParams], per_channel: bool = True
) -> Int8Model:
    """Convert a folded, calibrated CNN into an integer-only :class:`Int8Model`:
    Int8Conv2d (+ReLU), Int8MaxPool2d, Flatten and Int8Linear layers."""
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel: expected True or False, got {per_channel!r}")
    if isinstance(model, nn.Module) and has_batchnorm(model):
        raise InputError(
            "model: still has a BatchNorm; fold it first (ptqlib.batchnorm.fold_model)"
        )
    layers: list[nn.Module] = []
    steps = plan_cnn(model, qparams, per_channel)
    for step in steps:
        if isinstance(step, ConvStep):
            layers.append(_int8_conv(step))
        elif isinstance(step, LinearStep):
            layers.append(int8_linear(step))
        elif isinstance(step, nn.MaxPool2d):
            layers.append(Int8MaxPool2d(step.kernel_size, step.stride))
        else:
            layers.append(step)
    first = next(step for step in steps if isinstance(step, (ConvStep, LinearStep)))
    return Int8Model(first.input_qparams, layers).eval()


def quantize_cnn(
    model: nn.Sequential,
    images: torch.Tensor,
    activation_observer: str = "histogram",
    per_channel: bool = True,
    activation_kwargs: dict | None = None,
    progress: bool = True,
) -> tuple[Int8Model, nn.Sequential, dict[str, QParams]]:
    """The whole PTQ of a CNN with BatchNorm: fold, calibrate the fused points on ``images``,
    convert. Returns the INT8 model, the folded float model and the qparams."""
    folded, calibration = calibrate_fused(
        model,
        images,
        activation_observer=activation_observer,
        activation_kwargs=activation_kwargs,
        progress=progress,
    )
    return convert_cnn(folded, calibration.qparams, per_channel), folded, calibration.qparams


# --- the float simulation ----------------------------------------------------------------------


def simulate_cnn(
    model: nn.Sequential, qparams: Mapping[str, QParams], per_channel: bool = True
) -> FakeQuantModel:
    """A float (fake-quant) simulation of ``convert_cnn(model, qparams, per_channel)``."""
    return FakeQuantModel(plan_cnn(model, qparams, per_channel))
