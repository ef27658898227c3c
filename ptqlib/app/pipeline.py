"""The whole series in one call: the FP32 baseline, its INT8 checkpoint, torch.ao's INT8
model, and their accuracy, size and latency side by side.

    python -m ptqlib pipeline --out results/
    python -m ptqlib pipeline --model cnn --out results-cnn/      (notebook 07's SmallCNN)

The pipeline is ``python -m ptqlib quantize`` plus evaluation:

1. the FP32 model (the cached baseline of notebook 01, trained if missing; its file);
2. its INT8 checkpoint, written into the output folder by
   ``ptqlib.app.quantize.quantize_checkpoint`` (calibration on ``calib`` class-balanced
   training images with one activation observer; SimpleNet reads raw uint8 pixels, its input
   normalisation folded into fc1);
3. torch.ao's eager-mode PTQ of the same model, calibrated on the same images;
4. for each model: test accuracy, agreement with FP32, size on disk and latency at several
   batch sizes, measured interleaved on a fixed number of threads (``ptqlib.app.report``
   writes the tables).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from torch import nn

from ptqlib.app.quantize import QuantizeSettings, quantize_checkpoint
from ptqlib.app.report import results_markdown
from ptqlib.catalog import BATCH_SIZES
from ptqlib.data import MNIST, calibration_images, load_mnist
from ptqlib.errors import InputError
from ptqlib.evaluation import Latency, agreement, latency_table, predict
from ptqlib.fast import FastInt8Model
from ptqlib.hardware import machine_info
from ptqlib.models import MODELS
from ptqlib.paths import artifacts_dir
from ptqlib.reference import torch_eager as reference
from ptqlib.training import DEFAULT_EPOCHS_BY_MODEL, baseline_path, load_or_train_baseline

MODEL_NAMES = ("fp32", "int8_ptqlib", "int8_ptqlib_teaching", "int8_torch")


def build_models(
    data: MNIST,
    calib: int = 1000,
    observer: str = "histogram",
    progress: bool = True,
    model: str = "simplenet",
    out_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, nn.Module], dict[str, int], dict[str, str]]:
    """The four models of the comparison, their sizes on disk in bytes, and the settings.

    - ``fp32``: the baseline, on normalised images;
    - ``int8_ptqlib_teaching``: its INT8 checkpoint, quantized by ``quantize_checkpoint``
      into ``out_dir`` (default ``artifacts/``) as ``<model>_int8.pt``; SimpleNet's reads
      raw uint8 pixels (``pixel_input``);
    - ``int8_ptqlib``: the same model on the fast path (``ptqlib.fast``): same integers;
    - ``int8_torch``: torch.ao's eager-mode PTQ of the baseline.

    torch.ao gets its own observer of the same name where it has one (min/max, moving
    average, histogram), else its default for x86, the histogram. On the x86 engine
    torch.ao's activations use 7 bits (``reduce_range``): without AVX512-VNNI its kernels
    add pairs of uint8 x int8 products in int16, which saturates with 8-bit activations.
    ``model`` "cnn" or "dwcnn" runs notebook 07's SmallCNN or notebook 09's DepthwiseCNN:
    BatchNorm folded and conv+BN+ReLU fused on both sides.
    """
    if model not in MODELS:
        raise InputError(f"model: unknown model {model!r}; expected one of {sorted(MODELS)}")
    epochs = DEFAULT_EPOCHS_BY_MODEL[model]
    fp32, _ = load_or_train_baseline(data, epochs=epochs, progress=progress, model=model)
    out = Path(artifacts_dir() if out_dir is None else out_dir) / f"{model}_int8.pt"
    settings = QuantizeSettings(
        checkpoint=baseline_path(data, epochs, model=model),
        out=out,
        observer=observer,
        calib=calib,
        model=model,
        pixel_input=model == "simplenet",
    )
    quantized = quantize_checkpoint(settings, progress=progress, data=data)
    teaching = quantized.model
    fast = FastInt8Model(teaching)
    images = calibration_images(data.train, calib)  # the digits quantize calibrated on
    torch_observer = observer if observer in reference.TORCH_ACTIVATION_OBSERVERS else "histogram"
    engine = reference.default_quantized_engine()
    int8_torch = reference.torch_eager_ptq(
        fp32, images, reduce_range=engine == "x86", activation_observer=torch_observer
    )
    models = {
        "fp32": fp32,
        "int8_ptqlib": fast,
        "int8_ptqlib_teaching": teaching,
        "int8_torch": int8_torch,
    }
    sizes = {
        "fp32": quantized.fp32_bytes,
        "int8_ptqlib": quantized.int8_bytes,
        "int8_ptqlib_teaching": quantized.int8_bytes,
        "int8_torch": reference.torch_state_dict_bytes(int8_torch),
    }
    setup = {
        "model": model,
        "ptqlib_accumulator": fast.accumulator,
        "observer": observer,
        "torch_observer": torch_observer,
        "quantized_engine": engine,
        "torch_reduce_range": str(engine == "x86"),
    }
    return models, sizes, setup


def latency_rows(table: dict[int, dict[str, Latency]]) -> dict[str, dict[str, dict]]:
    """``rows[model][str(batch_size)]``: a latency table as JSON-ready numbers."""
    rows: dict[str, dict[str, dict]] = {}
    for batch_size, by_model in table.items():
        for name, latency in by_model.items():
            row = {**asdict(latency), "images_per_second": latency.images_per_second}
            rows.setdefault(name, {})[str(batch_size)] = {
                key: round(value, 4) if isinstance(value, float) else value
                for key, value in row.items()
            }
    return rows


def collect_results(
    data: MNIST,
    models: dict[str, nn.Module],
    sizes: dict[str, int],
    setup: dict,
    latencies: dict[int, dict[str, Latency]],
) -> dict:
    """The content of results.json: the setup, then for every model its test accuracy,
    agreement with FP32, size in bytes and latency per batch size."""
    predictions = {name: predict(model, data.test) for name, model in models.items()}
    rows = latency_rows(latencies)
    results: dict = {
        "setup": {
            "data": data.describe(width=None),
            "n_train": len(data.train),
            "n_test": len(data.test),
            **setup,
        }
    }
    for name in models:
        correct = (predictions[name] == data.test.labels).float().mean()
        results[name] = {
            "accuracy": round(float(correct), 6),
            "agreement_with_fp32": round(agreement(predictions[name], predictions["fp32"]), 6),
            "size_bytes": sizes[name],
            "latency": rows[name],
        }
    return results


def run_pipeline(
    data_dir: str | os.PathLike | None = None,
    calib: int = 1000,
    observer: str = "histogram",
    out_dir: str | os.PathLike = "results",
    threads: int = 2,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    progress: bool = True,
    model: str = "simplenet",
) -> dict:
    """Run the pipeline on ``model`` ("simplenet" or "cnn"); write ``results.json`` and
    ``results.md`` to ``out_dir``; return the results (the JSON's content)."""
    data = load_mnist(data_dir, verbose=progress)
    models, sizes, settings = build_models(data, calib, observer, progress, model, out_dir)
    latencies = latency_table(models, batch_sizes, threads)
    setup = {"calibration_images": calib, **settings, "machine": machine_info(threads)}
    results = collect_results(data, models, sizes, setup, latencies)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    return results
