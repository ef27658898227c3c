"""The command line's number formats: ``python -m ptqlib quantize --format NAME`` writes an
FP32 checkpoint in a format (``ptqlib.formats.checkpoint``), and ``evaluate`` and
``layer-errors`` read it back.

``quantize`` checks everything first (the format's name, the FP32 checkpoint and the model it
holds, the output path), so that a bad setting costs nothing; then it folds the BatchNorm of a
CNN, calibrates the activation ranges on ``calib`` training images when the format is meant
for activations (FP8 E4M3, MX, NVFP4), and writes the checkpoint with metadata that names the
FP32 file it came from. Every format applies to every model of the series (all their layers
are Linear or Conv2d).

The arithmetic of a loaded checkpoint is simulated in FP32 (``ptqlib.formats.simulation``),
except for FP8 E4M3 weights *and* activations of an MLP, which run on PyTorch's FP8 GEMM,
``torch._scaled_mm`` (``ptqlib.formats.scaled_mm``). :func:`runnable_model` says which.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ptqlib.batchnorm import fold_model, has_batchnorm
from ptqlib.checkpoints import load_fp32
from ptqlib.data import MNIST, calibration_images, load_mnist
from ptqlib.errors import InputError
from ptqlib.formats.checkpoint import FormatModel, format_payload, load_formats, save_formats
from ptqlib.formats.scaled_mm import scaled_mm_model
from ptqlib.formats.schemes import get_scheme
from ptqlib.formats.simulation import (
    activation_amax,
    bits_per_weight,
    quantize_weights,
    weight_matrix,
    weighted_layers,
)
from ptqlib.models import model_name
from ptqlib.quantization import sqnr_db

SIMULATED = "simulated in FP32 (decoded values, FP32 products and sums)"
SCALED_MM = "FP8 GEMM: torch._scaled_mm on E4M3 weights and activations"


@dataclass(frozen=True)
class FormatQuantizeResult:
    """Where the checkpoint went, its size and the FP32 file's, and its metadata."""

    path: Path
    size_bytes: int
    fp32_bytes: int
    meta: dict

    def summary(self) -> str:
        """One line: the format, what was quantized, the bits, the file."""
        meta = self.meta
        calibrated = (
            f" and activations (ranges from {meta['calibration_images']:,} images)"
            if meta["activations"]
            else ""
        )
        return (
            f"{meta['description']}: the {meta['model']}'s weights{calibrated}, "
            f"{meta['bits_per_weight']:.3f} bits per weight, in {meta['seconds']:.2f} s; wrote "
            f"{self.path} ({self.size_bytes:,} bytes, "
            f"{self.fp32_bytes / self.size_bytes:.2f}x smaller than FP32)"
        )


def quantize_to_format(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    format_name: str,
    calib: int = 1000,
    model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    data: MNIST | None = None,
) -> FormatQuantizeResult:
    """Write the FP32 ``checkpoint`` in ``format_name`` to ``out`` (see the module docstring);
    ``model``, if given, is the model the checkpoint must hold."""
    scheme = get_scheme(format_name)
    if isinstance(calib, bool) or not isinstance(calib, int) or calib < 1:
        raise InputError(f"calib: expected a positive number of images, got {calib!r}")
    if Path(out).is_dir():
        raise InputError(f"out: {out} is a directory; expected a file name")
    fp32, _ = load_fp32(checkpoint, expected_model=model)
    name = model_name(fp32)
    start = time.perf_counter()
    folded = fold_model(fp32) if has_batchnorm(fp32) else fp32
    ranges = None
    if scheme.for_activations:
        if data is None:
            data = load_mnist(data_dir, splits=("train",), verbose=False)
        ranges = activation_amax(folded, calibration_images(data.train, calib))
    quantized = quantize_weights(folded, scheme)
    meta = {
        "source_checkpoint": Path(checkpoint).name,
        "source_path": str(Path(checkpoint).resolve()),
        "model": name,
        "format": scheme.name,
        "description": scheme.description,
        "activations": ranges is not None,
        "activation_bits": scheme.element_bits if ranges is not None else 32,
        "calibration_images": calib if ranges is not None else 0,
        "bits_per_weight": round(bits_per_weight(quantized), 4),
        "seconds": round(time.perf_counter() - start, 3),
    }
    payload = format_payload(folded, name, scheme.name, ranges, meta, quantized)
    path = save_formats(payload, out)
    return FormatQuantizeResult(path, path.stat().st_size, Path(checkpoint).stat().st_size, meta)


def runnable_model(loaded: FormatModel) -> tuple[nn.Module, str]:
    """The model to run for a loaded checkpoint and how its arithmetic is done: the FP8 GEMM
    for E4M3 weights and activations of an MLP (SimpleNet), the FP32 simulation otherwise."""
    if (
        loaded.scheme_name == "fp8-e4m3"
        and loaded.activation_amax is not None
        and loaded.model_name == "simplenet"
    ):
        # The simulated layers hold the Linear modules (their biases); the weights' codes and
        # scales are the checkpoint's own.
        unwrapped = nn.Sequential(
            OrderedDict(
                (name, getattr(layer, "layer", layer))
                for name, layer in loaded.model.named_children()
            )
        )
        return scaled_mm_model(unwrapped, loaded.activation_amax, loaded.weights), SCALED_MM
    return loaded.model, SIMULATED


@dataclass(frozen=True)
class FormatLayerError:
    """One layer: its weight's SQNR in the format, and its output's SQNR in the quantized
    model against the FP32 model (errors of earlier layers included), on the same images."""

    name: str
    weight_sqnr: float
    output_sqnr: float


@torch.no_grad()
def format_layer_errors(
    fp32: nn.Module, loaded: FormatModel, images: torch.Tensor
) -> list[FormatLayerError]:
    """The per-layer errors of a loaded checkpoint against the FP32 model it came from."""
    reference = fold_model(fp32) if has_batchnorm(fp32) else fp32.eval()
    names = [name for name, _ in weighted_layers(reference)]
    if sorted(names) != sorted(loaded.weights):
        raise InputError(
            f"fp32: its layers {names} are not the checkpoint's {sorted(loaded.weights)}; "
            "was it quantized from this model?"
        )
    outputs = {}
    for label, model in (("fp32", reference), ("quantized", loaded.model)):
        x = images
        for name, layer in model.named_children():
            x = layer(x)
            outputs[label, name] = x
    return [
        FormatLayerError(
            name,
            sqnr_db(
                weight_matrix(reference.get_submodule(name)), loaded.weights[name].dequantize()
            ),
            sqnr_db(outputs["fp32", name], outputs["quantized", name]),
        )
        for name in names
    ]


def format_layer_error_table(rows: list[FormatLayerError]) -> str:
    lines = [f"{'layer':6s} {'weights':>9s} {'output':>9s}   (SQNR against FP32, dB)"]
    lines += [f"{row.name:6s} {row.weight_sqnr:9.1f} {row.output_sqnr:9.1f}" for row in rows]
    return "\n".join(lines)


def layer_error_report(
    checkpoint: str | os.PathLike,
    fp32_path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    as_json: bool = False,
) -> str:
    """``layer-errors`` of a checkpoint written by ``quantize --format``: every layer's weight
    and output SQNR against the FP32 model it came from (``fp32_path``, default: the one its
    metadata names), on the test digits; a table, or JSON."""
    loaded = load_formats(checkpoint)
    source = fp32_path or loaded.meta.get("source_path")
    if fp32_path is None and (source is None or not Path(source).is_file()):
        raise InputError(
            f"no FP32 checkpoint to compare with (the meta names {source!r}); give --fp32"
        )
    fp32, _ = load_fp32(source)
    data = load_mnist(data_dir, splits=("test",), verbose=False)
    rows = format_layer_errors(fp32, loaded, data.test.images)
    if as_json:
        layers = [vars(row) for row in rows]
        return json.dumps(
            {"checkpoint": str(checkpoint), "format": loaded.scheme_name, "layers": layers}
        )
    return (
        f"{data.describe()}\n{loaded.scheme_name}: SQNR of every layer against FP32, the "
        f"arithmetic {SIMULATED}:\n{format_layer_error_table(rows)}"
    )
