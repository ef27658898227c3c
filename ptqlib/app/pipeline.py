"""The whole series in one call: the FP32 baseline, calibration, two INT8 conversions,
and their accuracy, size and latency side by side.

    python -m ptqlib pipeline --out results/
    python -m ptqlib pipeline --model cnn --out results-cnn/      (notebook 07's SmallCNN)

1. the FP32 SimpleNet (the cached baseline of notebook 01, trained if missing);
2. calibration on ``calib`` class-balanced training images with one activation observer;
3. conversion with ptqlib (integer-only inference) and with torch.ao's eager mode (its
   quantized x86/qnnpack kernels), both from the same images;
4. for each model: test accuracy, agreement with FP32, size of the saved state and latency
   at several batch sizes, measured interleaved on a fixed number of threads.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from torch import nn

from ptqlib.calibration import calibrate
from ptqlib.checkpoints import saved_size_bytes
from ptqlib.data import MNIST, calibration_images, load_mnist
from ptqlib.errors import InputError
from ptqlib.evaluation import Latency, agreement, latency_table, predict
from ptqlib.fast import FastInt8Model
from ptqlib.hardware import machine_info
from ptqlib.int8_checkpoint import int8_state
from ptqlib.int8_model import convert, quantize_cnn
from ptqlib.models import MODELS, fold_input_normalization
from ptqlib.reference import torch_eager as reference
from ptqlib.training import DEFAULT_EPOCHS_BY_MODEL, load_or_train_baseline

BATCH_SIZES = (1, 64, 1024)
MODEL_TITLES = {"cnn": "SmallCNN, notebook 07", "dwcnn": "DepthwiseCNN, notebook 09"}
MODEL_NAMES = ("fp32", "int8_ptqlib", "int8_ptqlib_teaching", "int8_torch")


def build_models(
    data: MNIST,
    calib: int = 1000,
    observer: str = "histogram",
    progress: bool = True,
    model: str = "simplenet",
) -> tuple[dict[str, nn.Module], dict[str, int], dict[str, str]]:
    """The four models of the comparison, their saved sizes in bytes, and the settings.

    - ``fp32``: the baseline, on normalised images;
    - ``int8_ptqlib_teaching``: ptqlib's INT8 model of notebook 04, converted from the
      baseline with its input normalisation folded into fc1, so it reads raw uint8 pixels;
    - ``int8_ptqlib``: the same model on the fast path (``ptqlib.fast``): same integers;
    - ``int8_torch``: torch.ao's eager-mode PTQ of the baseline.

    torch.ao gets its own observer of the same name where it has one (min/max, moving
    average, histogram), else its default for x86, the histogram. On the x86 engine
    torch.ao's activations use 7 bits (``reduce_range``): without AVX512-VNNI its kernels
    add pairs of uint8 x int8 products in int16, which saturates with 8-bit activations.
    ``model`` "cnn" runs notebook 07's SmallCNN: BatchNorm folded and conv+BN+ReLU fused on
    both sides.
    """
    if model not in MODELS:
        raise InputError(f"model: unknown model {model!r}; expected one of {sorted(MODELS)}")
    epochs = DEFAULT_EPOCHS_BY_MODEL[model]
    fp32, _ = load_or_train_baseline(data, epochs=epochs, progress=progress, model=model)
    images = calibration_images(data.train, calib)
    torch_observer = observer if observer in reference.TORCH_ACTIVATION_OBSERVERS else "histogram"
    engine = reference.default_quantized_engine()
    if model in ("cnn", "dwcnn"):
        teaching, _, _ = quantize_cnn(fp32, images, observer, progress=progress)
    else:  # the MLP reads raw pixels: its input normalisation is folded into fc1
        pixel_model = fold_input_normalization(fp32)
        pixels = calibration_images(data.train.pixel_values(), calib)  # the same digits
        calibration = calibrate(
            pixel_model, pixels, activation_observer=observer, progress=progress
        )
        teaching = convert(pixel_model, calibration.qparams, pixel_input=True)
    fast = FastInt8Model(teaching)
    int8_torch = reference.torch_eager_ptq(
        fp32, images, reduce_range=engine == "x86", activation_observer=torch_observer
    )
    models = {
        "fp32": fp32,
        "int8_ptqlib": fast,
        "int8_ptqlib_teaching": teaching,
        "int8_torch": int8_torch,
    }
    int8_bytes = saved_size_bytes(int8_state(teaching))
    sizes = {
        "fp32": saved_size_bytes(fp32.state_dict()),
        "int8_ptqlib": int8_bytes,
        "int8_ptqlib_teaching": int8_bytes,
        "int8_torch": reference.torch_state_dict_bytes(int8_torch),
    }
    settings = {
        "model": model,
        "ptqlib_accumulator": fast.accumulator,
        "observer": observer,
        "torch_observer": torch_observer,
        "quantized_engine": engine,
        "torch_reduce_range": str(engine == "x86"),
    }
    return models, sizes, settings


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
            "data": data.describe(),
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
    models, sizes, settings = build_models(data, calib, observer, progress, model)
    latencies = latency_table(models, batch_sizes, threads)
    setup = {"calibration_images": calib, **settings, "machine": machine_info(threads)}
    results = collect_results(data, models, sizes, setup, latencies)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    return results


def machine_line(machine: dict) -> str:
    return (
        f"Machine: {machine['cpu']} ({machine['cpu_capability']}; int8 dot-product "
        f"instructions: {machine['int8_instructions']}), {machine['threads']} threads, "
        f"torch {machine['torch']}, quantized engine {machine['quantized_engine']}."
    )


def latency_markdown(rows: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown rows of median latency (ms) and speed relative to FP32, one row per model;
    ``rows`` as made by :func:`latency_rows`."""
    batch_sizes = list(rows["fp32"])
    lines = [
        "| model |" + "".join(f" batch {size}: ms (IQR) | vs FP32 |" for size in batch_sizes),
        "|---" * (1 + 2 * len(batch_sizes)) + "|",
    ]
    for name in rows:  # every model measured, in the order measured (MODEL_NAMES first)
        cells = [name]
        for size in batch_sizes:
            row = rows[name][size]
            speedup = rows["fp32"][size]["median_ms"] / row["median_ms"]
            cells += [
                f"{row['median_ms']:.3f} ({row['q1_ms']:.3f}-{row['q3_ms']:.3f})",
                "(reference)" if name == "fp32" else f"{speedup:.2f}x",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def results_markdown(results: dict) -> str:
    """The results as Markdown tables, with the data and machine they were measured on."""
    setup = results["setup"]
    fp32_size = results["fp32"]["size_bytes"]
    model = setup.get("model", "simplenet")
    lines = [
        ("" if model == "simplenet" else f"Model: {model} ({MODEL_TITLES[model]}). ")
        + f"Data: {setup['data']}. Calibration: {setup['calibration_images']:,} images, "
        f"observer {setup['observer']} (torch.ao: {setup['torch_observer']}).",
        machine_line(setup["machine"]),
        f"ptqlib's fast path accumulates with the {setup['ptqlib_accumulator']}.",
        "",
        "| model | test accuracy | agrees with FP32 | size (bytes) | FP32 size / size |",
        "|---|---|---|---|---|",
    ]
    for name in MODEL_NAMES:
        row = results[name]
        lines.append(
            f"| {name} | {row['accuracy']:.2%} | {row['agreement_with_fp32']:.2%} "
            f"| {row['size_bytes']:,} | {fp32_size / row['size_bytes']:.2f}x |"
        )
    lines += [
        "",
        "Latency per batch: median ms (interquartile range) and throughput relative to FP32",
        "(above 1: faster than FP32):",
        "",
    ]
    lines += latency_markdown({name: results[name]["latency"] for name in MODEL_NAMES})
    return "\n".join(lines) + "\n"
