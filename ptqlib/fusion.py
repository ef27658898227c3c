"""Fusion before calibration: which tensors of a CNN remain quantization points.

A float CNN runs ``conv -> BatchNorm -> ReLU`` as three steps with two tensors in between.
The INT8 model runs them as **one** step: the BatchNorm is folded into the convolution's
weights and bias (``ptqlib.batchnorm``), and the ReLU becomes the lower clamp of the
requantization (``lo = Z_y``), exactly as a Linear+ReLU in ``ptqlib.int8_model``. So the
conv's output and the BatchNorm's output never exist as INT8 tensors: only the ReLU's output
does. Calibrating them would waste observers and, worse, suggest qparams that are never used.

The quantization points of SmallCNN after fusion are therefore::

    input                                          the images
    relu1    (conv1 + bn1 + relu1)                 uint8, its own qparams
    pool1    max-pool: no new qparams (it picks some of its input's integers, see
             ptqlib.int8_layers), so no observer either
    relu2    (conv2 + bn2 + relu2)
    pool2, flatten: the same integers, rearranged
    fc       the logits

and the weights ``conv1.weight``, ``conv2.weight``, ``fc.weight`` (of the folded model).

The same rule covers SimpleNet (``[fc1, relu1], [fc2, relu2], [fc3]``): every Linear with
the ReLU after it is one step. ``ptqlib.calibration`` observes exactly these points, and
``ptqlib.ptq.calibrate_fused`` folds the BatchNorms first. Order matters: fold,
*then* calibrate. The weight observers must see the folded weights
W' = W gamma / sqrt(var + eps), whose ranges differ per channel from W's (notebook 07).
"""

from __future__ import annotations

from torch import nn

from ptqlib.batchnorm import BATCHNORMS, FOLDABLE_LAYERS

STEP_MODULES = (*FOLDABLE_LAYERS, nn.ReLU)


def fusion_groups(model: nn.Module) -> list[list[str]]:
    """The modules that run as one quantized step, by name, in run order: every Conv2d or
    Linear with the BatchNorm and/or ReLU right after it (SimpleNet: ``[["fc1", "relu1"],
    ["fc2", "relu2"], ["fc3"]]``; SmallCNN: ``[["conv1", "bn1", "relu1"], ...]``); a ReLU
    after anything else is a step of its own. Max-pool and Flatten are in no group: they
    only move or pick integers. Only an ``nn.Sequential``'s direct children are fused (their
    order is the run order); in any other model every Conv2d, Linear and ReLU is alone."""
    if not isinstance(model, nn.Sequential):
        return [
            [name] for name, module in model.named_modules() if isinstance(module, STEP_MODULES)
        ]
    children = list(model.named_children())
    groups: list[list[str]] = []
    index = 0
    while index < len(children):
        name, module = children[index]
        index += 1
        if not isinstance(module, STEP_MODULES):
            continue
        group = [name]
        if isinstance(module, FOLDABLE_LAYERS):
            for kinds in (BATCHNORMS, (nn.ReLU,)):
                if index < len(children) and isinstance(children[index][1], kinds):
                    group.append(children[index][0])
                    index += 1
        groups.append(group)
    return groups


def quantization_points(model: nn.Module) -> list[str]:
    """The activations the INT8 model stores as integers, in run order: ``"input"``, then
    the output of every fused step (:func:`fusion_groups`), named by its last module."""
    return ["input"] + [group[-1] for group in fusion_groups(model)]
