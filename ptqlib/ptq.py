"""Post-training quantization in one call: fold, calibrate, convert.

Every model of the series (the MLP of notebook 04, the CNNs of notebooks 07 and 09) becomes
an INT8 model by the same three steps, in this order:

1. **fold** every BatchNorm into the Conv2d or Linear before it (``ptqlib.batchnorm``): the
   INT8 model has no BatchNorm, so the weights to quantize are the folded ones;
2. **calibrate** the folded model (``ptqlib.calibration``): observers on exactly the tensors
   the INT8 model will hold, the quantization points after fusion (``ptqlib.fusion``);
3. **convert** it with those qparams (``ptqlib.int8_model.convert``).

Folding after calibrating would be wrong: the observers would have seen the unfolded weights
and the BatchNorm's output, neither of which the INT8 model computes. A repair that changes
the folded weights (cross-layer equalization, ``ptqlib.equalization``) goes between 1 and 2:
fold, equalize, then call :func:`post_training_quantize` on the result (folding a model
without BatchNorm changes nothing).

**Raw pixels in** (``pixel_input=True``, the MLP only): the input normalisation
``x = (p / 255 - mean) / std`` is folded into the first Linear
(``ptqlib.models.fold_input_normalization``), so the INT8 model reads the uint8 pixel
itself, with S = 1 and Z = 0: the input costs no quantization error and no float work.

``python -m ptqlib quantize`` (``ptqlib.app.quantize``) is this function plus the file: it
checks its settings, loads the calibration images, runs it (or the low-bit path of
``ptqlib.lowbit``) and saves the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptqlib.batchnorm import fold_model
from ptqlib.calibration import Calibration, calibrate
from ptqlib.int8_model import Int8Model, convert
from ptqlib.integer_arithmetic import Requantization
from ptqlib.models import fold_input_normalization


def calibrate_fused(
    model: nn.Module,
    images: torch.Tensor,
    activation_observer: str = "histogram",
    **calibrate_arguments,
) -> tuple[nn.Module, Calibration]:
    """Steps 1 and 2: fold every BatchNorm into the Conv2d or Linear before it, then calibrate
    the folded copy: its weight observers see the folded weights, and its quantization points
    are those after fusion (SmallCNN: input, relu1, relu2, fc). Returns the folded model
    (``model`` itself is not changed) and its Calibration; the keyword arguments are those of
    :func:`ptqlib.calibration.calibrate`."""
    folded = fold_model(model)
    return folded, calibrate(folded, images, activation_observer, **calibrate_arguments)


@dataclass
class PostTrainingQuantization:
    """What :func:`post_training_quantize` made: the INT8 model, the float model it was
    converted from (BatchNorm folded; with pixel input, the normalisation too) and its
    Calibration (the qparams and the observers that chose them)."""

    int8_model: Int8Model
    folded: nn.Module
    calibration: Calibration


def post_training_quantize(
    model: nn.Module,
    images: torch.Tensor,
    *,
    observer: str = "histogram",
    per_channel: bool = True,
    requantization: Requantization | str = Requantization.FIXED_POINT,
    pixel_input: bool = False,
    activation_kwargs: dict | None = None,
    progress: bool = True,
) -> PostTrainingQuantization:
    """The INT8 model of the FP32 ``model``: fold, calibrate on ``images``, convert.

    ``images`` are what the INT8 model will read: normalised images, or with ``pixel_input``
    the raw pixel values 0..255 (``MNISTSplit.pixel_values``) of a model whose first layer
    is a Linear. ``observer`` (with ``activation_kwargs``) chooses the activation ranges,
    ``per_channel`` one weight scale per output channel or per tensor, ``requantization``
    the integer arithmetic (:class:`~ptqlib.integer_arithmetic.Requantization`).
    """
    if pixel_input:
        model = fold_input_normalization(model)
    folded, calibration = calibrate_fused(
        model,
        images,
        activation_observer=observer,
        activation_kwargs=activation_kwargs,
        progress=progress,
    )
    int8_model = convert(
        folded,
        calibration.qparams,
        per_channel,
        pixel_input=pixel_input,
        requantization=requantization,
    )
    return PostTrainingQuantization(int8_model, folded, calibration)
