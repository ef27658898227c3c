"""One FP32 checkpoint in, one INT8 checkpoint out: ``python -m ptqlib quantize``.

One settings object (:class:`QuantizeSettings`), one function (:func:`quantize_checkpoint`)
and one metadata schema (:func:`checkpoint_meta`) for every model and every bit width:

1. **check everything first** (:func:`check_settings`): the FP32 checkpoint, the model it
   holds, the observer, the output path and every combination of options, so that a bad
   setting costs nothing (no data loaded, no GPTQ or AdaRound run);
2. load ``calib`` class-balanced training images (:func:`ptqlib.data.calibration_images`);
3. quantize: ``ptqlib.ptq.post_training_quantize`` (fold BatchNorm, calibrate, convert;
   8 bits), after cross-layer equalization if asked, or the low-bit path of
   ``ptqlib.lowbit.weights`` (B-bit weights rounded by nearest / GPTQ / AdaRound, B-bit
   activations);
4. save the INT8 model with its metadata, which names the FP32 file it came from
   (``source_path``), so ``python -m ptqlib layer-errors`` finds it without ``--fp32``.

``python -m ptqlib pipeline`` is this function plus evaluation (``ptqlib.app.pipeline``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ptqlib.app.model_files import check_out_path
from ptqlib.batchnorm import fold_model
from ptqlib.catalog import ACTIVATION_OBSERVERS
from ptqlib.checkpoints import load_fp32
from ptqlib.data import MNIST, calibration_images, load_mnist
from ptqlib.equalization import cross_layer_equalization, equalization_pairs
from ptqlib.errors import InputError
from ptqlib.int8_checkpoint import save_int8
from ptqlib.int8_layers import Int8Step
from ptqlib.int8_model import Int8Model, convert
from ptqlib.integer_arithmetic import requantization_mode
from ptqlib.lowbit.rounding import ADAROUND_ITERATIONS, ADAROUND_SEED
from ptqlib.lowbit.weights import LowBitSettings, linear_names, quantize_low_bit
from ptqlib.models import MODELS, model_name
from ptqlib.packing import bits_for_range
from ptqlib.ptq import post_training_quantize

EIGHT_BITS = LowBitSettings()  # the plain INT8 quantization of notebooks 03-04


@dataclass(frozen=True)
class QuantizeSettings:
    """Everything :func:`quantize_checkpoint` needs.

    ``checkpoint`` (an FP32 ptqlib checkpoint) is quantized into ``out``; ``observer`` and
    ``calib`` (a number of training images) set the activation calibration; ``model``
    ("simplenet" or "cnn"), if given, is the model the checkpoint must hold; ``data_dir`` is
    where MNIST is (see :func:`ptqlib.data.load_mnist`); ``requantization`` is
    ``"fixed_point"`` (M0, n) or ``"float32"`` (ONNX Runtime's arithmetic). ``bits`` says how
    weights and activations are quantized (bits, rounding, clipping, bias correction,
    per-channel scales); its defaults are the plain INT8 of notebooks 03-04. ``equalize``
    runs cross-layer equalization (``ptqlib.equalization``, notebook 09) on the folded model
    before calibrating: 8 bits, convolutional models only. ``pixel_input`` folds the input
    normalisation into the first Linear so the INT8 model reads raw uint8 pixels
    (``ptqlib.ptq``): 8 bits, SimpleNet only.
    """

    checkpoint: str | os.PathLike
    out: str | os.PathLike
    observer: str = "histogram"
    calib: int = 1000
    model: str | None = None
    data_dir: str | os.PathLike | None = None
    requantization: str = "fixed_point"
    bits: LowBitSettings = field(default_factory=LowBitSettings)
    equalize: bool = False
    pixel_input: bool = False

    @property
    def low_bit(self) -> bool:
        """Whether anything but the plain INT8 quantization is asked for (the per-channel
        choice and AdaRound's arguments aside: they mean nothing at 8 bits with nearest)."""
        ignored = {"per_channel", "adaround_kwargs"}
        return any(
            getattr(self.bits, option.name) != getattr(EIGHT_BITS, option.name)
            for option in fields(LowBitSettings)
            if option.name not in ignored
        )


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


def unsupported_for_model(kind: str, settings: QuantizeSettings) -> str | None:
    """Why ``settings`` cannot quantize a model of ``kind`` (a name of ``ptqlib.models.MODELS``),
    or None.

    The one place that knows what each model supports: the low-bit methods of
    ``ptqlib.lowbit.weights`` walk Linear layers only; cross-layer equalization needs pairs of
    convolutions, and runs at 8 bits."""
    if kind == "simplenet":
        if settings.equalize:
            return "equalize: SimpleNet has no Conv2d -> ReLU -> Conv2d pair to equalize"
        if settings.pixel_input and settings.low_bit:
            return "pixel input is implemented for the 8-bit quantization; drop --pixel-input"
        return None
    if settings.pixel_input:
        return (
            "pixel input folds the normalisation into a first Linear layer, which only "
            "simplenet has; drop --pixel-input"
        )
    if settings.low_bit:
        return (
            "the low-bit options (--weight-bits, --activation-bits, --rounding, "
            "--bias-correction, --weight-clipping, --layer-bits) are implemented for simplenet "
            f"only; quantize the {kind} with the default 8 bits"
        )
    return None


def check_settings(settings: QuantizeSettings) -> nn.Module:
    """Check every setting and combination, cheapest first; return the FP32 model.

    Raises InputError (or FileNotFoundError for a missing checkpoint) before any data is
    loaded or any weight is rounded."""
    if settings.model is not None and settings.model not in MODELS:
        raise InputError(f"model: expected one of {sorted(MODELS)}, got {settings.model!r}")
    if settings.observer not in ACTIVATION_OBSERVERS:
        raise InputError(
            f"observer: unknown observer {settings.observer!r} for activations; expected one "
            f"of {', '.join(ACTIVATION_OBSERVERS)}"
        )
    calib = settings.calib
    if isinstance(calib, bool) or not isinstance(calib, int) or calib < 1:
        raise InputError(f"calib: expected a positive number of images, got {calib!r}")
    requantization_mode(settings.requantization)
    for option in ("equalize", "pixel_input"):
        if not isinstance(getattr(settings, option), bool):
            raise InputError(f"{option}: expected True or False, got {getattr(settings, option)!r}")
    if not isinstance(settings.bits, LowBitSettings):
        raise InputError(f"bits: expected a LowBitSettings, got {type(settings.bits).__name__}")
    if Path(settings.out).is_dir():
        raise InputError(f"out: {settings.out} is a directory; expected a file name")
    check_out_path(settings.out, settings.checkpoint, "the quantized model")
    model, _ = load_fp32(settings.checkpoint, expected_model=settings.model)
    kind = model_name(model)
    problem = unsupported_for_model(kind, settings)
    if problem is not None:
        raise InputError(f"{settings.checkpoint} holds a {kind}: {problem}")
    if settings.equalize and not equalization_pairs(fold_model(model)):
        raise InputError(
            f"{settings.checkpoint} holds a {kind}: equalize: it has no Conv2d -> ReLU -> "
            "Conv2d pair to equalize (a pool between two convolutions breaks the pair)"
        )
    unknown = sorted(set(settings.bits.layer_bits) - set(linear_names(model)))
    if unknown:
        raise InputError(
            f"layer bits: unknown layer(s) {', '.join(unknown)}; the layers are "
            f"{', '.join(linear_names(model))}"
        )
    return model


def weight_bits(int8_model: Int8Model) -> dict[str, int]:
    """The weight bits of every layer with weights (Linear and Conv2d), by layer name."""
    return {
        layer.name: bits_for_range(*layer.weight_range)
        for layer in int8_model.layers
        if isinstance(layer, Int8Step)
    }


def activation_bits(int8_model: Int8Model) -> int:
    """The widest activation of ``int8_model``, in bits (8 unless quantized with fewer)."""
    return max(
        bits_for_range(layer.output_qparams.quant_min, layer.output_qparams.quant_max)
        for layer in int8_model.layers
        if isinstance(layer, Int8Step)
    )


def checkpoint_meta(
    settings: QuantizeSettings, kind: str, int8_model: Int8Model, seconds: float
) -> dict:
    """The metadata of every INT8 checkpoint ``quantize`` writes: where it came from
    (``source_checkpoint``, the file's name; ``source_path``, its absolute path), the model,
    how it was calibrated and quantized, the bits of every layer and the seconds it took."""
    bits = settings.bits
    return {
        "source_checkpoint": Path(settings.checkpoint).name,
        "source_path": str(Path(settings.checkpoint).resolve()),
        "model": kind,
        "observer": settings.observer,
        "calibration_images": settings.calib,
        "per_channel": bits.per_channel,
        "requantization": str(requantization_mode(settings.requantization)),
        "weight_bits": weight_bits(int8_model),
        "activation_bits": activation_bits(int8_model),
        "rounding": bits.rounding,
        "clipping": bits.clipping,
        "bias_correction": bits.bias_correction,
        # AdaRound's batches and steps: with them the file can be made again exactly.
        "seed": bits.adaround_kwargs.get("seed", ADAROUND_SEED),
        "adaround_iterations": bits.adaround_kwargs.get("iterations", ADAROUND_ITERATIONS),
        "equalized": settings.equalize,
        "pixel_input": settings.pixel_input,
        "seconds": round(seconds, 3),
    }


def int8_model_of(
    model: nn.Module, images: torch.Tensor, settings: QuantizeSettings, progress: bool = True
) -> Int8Model:
    """The INT8 model of ``model`` (checked by :func:`check_settings`), calibrated on
    ``images`` (pixels with ``settings.pixel_input``): the low-bit path of
    ``ptqlib.lowbit.weights``, or ``ptqlib.ptq.post_training_quantize``, after cross-layer
    equalization of the folded model if ``settings.equalize``."""
    bits = settings.bits
    if settings.low_bit:
        quantized = quantize_low_bit(
            model, images, bits, observer=settings.observer, progress=progress
        )
        # Its int8_model has the default requantization: convert its grid model with ours.
        return convert(
            quantized.grid_model,
            quantized.qparams,
            per_channel=bits.per_channel,
            requantization=settings.requantization,
        )
    if settings.equalize:  # fold the BatchNorms, then equalize the folded convolutions
        model, _ = cross_layer_equalization(fold_model(model))
    return post_training_quantize(
        model,
        images,
        observer=settings.observer,
        per_channel=bits.per_channel,
        requantization=settings.requantization,
        pixel_input=settings.pixel_input,
        progress=progress,
    ).int8_model


def quantize_checkpoint(
    settings: QuantizeSettings, progress: bool = True, data: MNIST | None = None
) -> QuantizeResult:
    """Quantize ``settings.checkpoint`` into ``settings.out`` (see the module docstring):
    every check first, then the data (``data`` if given, else loaded from
    ``settings.data_dir``), the quantization and the INT8 checkpoint."""
    model = check_settings(settings)
    start = time.perf_counter()
    if data is None:
        data = load_mnist(settings.data_dir, splits=("train",), verbose=progress)
    train = data.train.pixel_values() if settings.pixel_input else data.train
    images = calibration_images(train, settings.calib)
    int8_model = int8_model_of(model, images, settings, progress)
    meta = checkpoint_meta(settings, model_name(model), int8_model, time.perf_counter() - start)
    path = save_int8(int8_model, settings.out, meta)
    fp32_bytes = Path(settings.checkpoint).stat().st_size
    return QuantizeResult(int8_model, path, fp32_bytes, path.stat().st_size, meta)
