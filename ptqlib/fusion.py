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
             ptqlib.int8_conv), so no observer either
    relu2    (conv2 + bn2 + relu2)
    pool2, flatten: the same integers, rearranged
    fc       the logits

and the weights ``conv1.weight``, ``conv2.weight``, ``fc.weight`` (of the folded model).

Order matters: fold, *then* calibrate. The weight observers must see the folded weights
W' = W gamma / sqrt(var + eps), whose ranges differ per channel from W's (notebook 07).
"""

from __future__ import annotations

from torch import nn

from ptqlib.batchnorm import BATCHNORMS, FOLDABLE_LAYERS, fold_model
from ptqlib.calibrate import Calibration, calibrate


def fusion_groups(model: nn.Sequential) -> list[list[str]]:
    """The children of ``model`` that run as one quantized step, by name: every Conv2d or
    Linear with the BatchNorm and/or ReLU right after it (SmallCNN:
    ``[["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc"]]``). Max-pool and
    Flatten are not in any group: they only move or pick integers."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
    children = list(model.named_children())
    groups: list[list[str]] = []
    index = 0
    while index < len(children):
        name, module = children[index]
        index += 1
        if not isinstance(module, FOLDABLE_LAYERS):
            continue
        group = [name]
        for kinds in (BATCHNORMS, (nn.ReLU,)):
            if index < len(children) and isinstance(children[index][1], kinds):
                group.append(children[index][0])
                index += 1
        groups.append(group)
    if not groups:
        raise ValueError("model: has no Conv2d or Linear layer, nothing to quantize")
    return groups


def quantization_points(model: nn.Sequential) -> list[str]:
    """The modules whose outputs are quantized after fusion: the last module of every
    fusion group (SmallCNN: ``["relu1", "relu2", "fc"]``). The model's input is a
    quantization point too ("input", observed by ``calibrate`` in any case)."""
    return [group[-1] for group in fusion_groups(model)]


def calibrate_fused(
    model: nn.Sequential,
    images,
    activation_observer: str = "histogram",
    weight_observer: str = "per_channel_minmax",
    batch_size: int = 100,
    activation_kwargs: dict | None = None,
    weight_kwargs: dict | None = None,
    progress: bool = True,
) -> tuple[nn.Sequential, Calibration]:
    """Fold every BatchNorm, then calibrate only the quantization points that remain.

    Returns the folded model (a copy; ``model`` is not changed) and its
    :class:`~ptqlib.calibrate.Calibration`, whose keys are ``"input"``, the points of
    :func:`quantization_points` in run order, and ``"<layer>.weight"`` for every Conv2d and
    Linear. The arguments are those of :func:`ptqlib.calibrate.calibrate`.
    """
    folded = fold_model(model)
    calibration = calibrate(
        folded,
        images,
        activation_observer=activation_observer,
        weight_observer=weight_observer,
        batch_size=batch_size,
        activation_kwargs=activation_kwargs,
        weight_kwargs=weight_kwargs,
        progress=progress,
        points=quantization_points(folded),
    )
    return folded, calibration
