"""Benchmark: SimpleNet as C, every build, against this core's peaks and against PyTorch.

The cached FP32 baseline and its INT8 model (normalisation folded, raw uint8 pixels in,
calibrated on 1,000 class-balanced training digits) are exported as C and compiled in every
build this CPU runs: the portable loops (any compiler) and the AVX2 + FMA kernels. It checks
that every INT8 build returns ptqlib's integers on the test split, then prints

1. the measured peak of one core for the instructions of the kernels, and the compute limit
   of INT8 over FP32 they imply (``ptqlib.deploy.c_peaks``);
2. the C alone, per image at batch 1, 64 and 1024 (timed in C, thread CPU time, median of
   interleaved rounds), each build's fraction of its peak, and the INT8/FP32 ratios;
3. the whole call from Python (one thread, thread CPU time, interleaved): PyTorch FP32
   eager, ptqlib's fast path, ONNX Runtime, every C build called bound to its buffers,
   through ``run()``, and through the torch wrapper (``CModel.forward``).

Thread CPU time does not count the time another process holds the core, but a loaded machine
still slows the caches: run it idle for numbers to quote.

Run: python benchmarks/bench_c.py [--rounds N] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn

from ptqlib.calibration import calibrate
from ptqlib.data import calibration_images, load_mnist
from ptqlib.deploy.c_avx2_packing import PANEL, padded_inputs, panels
from ptqlib.deploy.c_graph import int8_graph
from ptqlib.deploy.c_latency import (
    REFERENCE,
    c_builds,
    c_latency_table,
    contenders,
    kernel_table,
    latency_markdown,
)
from ptqlib.deploy.c_peaks import measure_peaks
from ptqlib.deploy.c_runtime import compiler_version
from ptqlib.deploy.onnx_export import int8_to_onnx
from ptqlib.deploy.onnx_runtime import OnnxModel
from ptqlib.fast import FastInt8Model
from ptqlib.hardware import cpu_name, int8_instructions
from ptqlib.int8_model import convert
from ptqlib.models import fold_input_normalization
from ptqlib.training import load_or_train_baseline

# Which peak bounds each build: the instruction its inner loop is made of.
PEAK_OF = {"int8": "maddwd_add", "fp32": "fma"}


class TorchWrapper(nn.Module):
    """A C build called the way ``evaluate`` calls it: ``CModel.forward`` (no_grad, the
    tensor checks, an output allocated, the logits dequantized)."""

    takes_pixels = True

    def __init__(self, c_model: nn.Module) -> None:
        super().__init__()
        self.c_model = c_model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.c_model(pixels)


def print_peaks(peaks: dict) -> None:
    print("\nPeak of one core (12 independent registers, thread CPU time, best of 5):")
    for peak in peaks.values():
        print(
            f"  {peak.instruction:36s} {peak.instructions_per_second / 1e9:5.2f} G/s "
            f"= {peak.macs_per_second / 1e9:6.1f} G MAC/s" + ("" if peak.exact else " (inexact)")
        )
    if peaks:
        limit = peaks["maddwd_add"].macs_per_second / peaks["fma"].macs_per_second
        free = peaks["maddwd"].macs_per_second / peaks["fma"].macs_per_second
        print(f"  compute limit INT8/FP32: {limit:.2f}x ({free:.2f}x if the adds were free)")


def print_kernels(table: dict, macs: int, peaks: dict) -> None:
    sizes = list(table)
    print("\nThe C alone, ns per image (median; % of the core's peak for its instructions):")
    print("| build | " + " | ".join(f"batch {size}" for size in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for name in table[sizes[0]]:
        cells = []
        for size in sizes:
            nanoseconds = table[size][name]
            peak = peaks.get(PEAK_OF[name.split()[0]])
            share = f" ({macs / nanoseconds / (peak.macs_per_second / 1e9):.0%})" if peak else ""
            cells.append(f"{nanoseconds:,.0f}{share}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for size in sizes:
        row = table[size]
        pairs = [("portable", "portable", "portable"), ("avx2", "avx2", "avx2")]
        best_int8 = min(v for k, v in row.items() if k.startswith("int8"))
        best_fp32 = min(v for k, v in row.items() if k.startswith("fp32"))
        ratios = [
            f"{what} {row[f'fp32 {fp}'] / row[f'int8 {i8}']:.2f}x"
            for what, i8, fp in pairs
            if f"int8 {i8}" in row and f"fp32 {fp}" in row
        ]
        ratios.append(f"both at their best {best_fp32 / best_int8:.2f}x")
        print(f"batch {size:4d}: INT8/FP32 " + ", ".join(ratios))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds (default 21)")
    parser.add_argument(
        "--smoke", action="store_true", help="3 short rounds at batch 1 and 64: checks it runs"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_mnist(verbose=False)
    fp32, _ = load_or_train_baseline(data, progress=False)
    pixel_model = fold_input_normalization(fp32)
    pixels = calibration_images(data.train.pixel_values(), 1000)
    int8 = convert(pixel_model, calibrate(pixel_model, pixels, progress=False).qparams,
                   pixel_input=True)  # fmt: skip
    sizes = (1, 64) if args.smoke else (1, 64, 1024)
    rounds = 3 if args.smoke else args.rounds
    seconds = 0.002 if args.smoke else 0.02
    with tempfile.TemporaryDirectory(prefix="ptqlib-bench-c-") as directory:
        builds = c_builds(fp32, int8, directory)
        test_pixels = data.test.pixels()
        flat = test_pixels.reshape(len(test_pixels), -1)
        expected = int8.quantized_logits(test_pixels)
        flags = ", ".join(name for name, present in int8_instructions().items() if present)
        print(f"{data.describe()}")
        print(f"CPU: {cpu_name()} (int8 dot-product instructions: {flags or 'none'}), 1 thread")
        print(f"C compiler: {compiler_version()}")
        for name, build in builds.items():
            if name.startswith("int8"):
                same = torch.equal(build.quantized_logits(flat), expected)
                print(f"C {name}: integers equal to ptqlib's on the whole test split: {same}")
        peaks = measure_peaks(repeats=2 if args.smoke else 5)
        print_peaks(peaks)
        layers = int8_graph(int8)
        macs = sum(layer.multiply_accumulates for layer in layers)
        padded = sum(
            panels(layer.outputs) * PANEL * padded_inputs(layer, index, layers, "int8")
            for index, layer in enumerate(layers)
        )
        print(
            f"\nSimpleNet: {macs:,} multiply-accumulates per image (the AVX2 kernels compute "
            f"{padded:,}\nwith the zero padding of their panels; a share of peak counts the "
            "model's own)"
        )
        print_kernels(kernel_table(builds, sizes, rounds, seconds), macs, peaks)
        rows = contenders(fp32, FastInt8Model(int8), builds, OnnxModel(int8_to_onnx(int8), 1))
        best = "int8 avx2" if "int8 avx2" in builds else "int8 portable"
        rows[f"C {best}, torch wrapper"] = TorchWrapper(builds[best])
        table = c_latency_table(rows, sizes, max(3, rounds // 3), seconds)
        print(f"\nThe whole call from Python: median of {max(3, rounds // 3)} interleaved")
        print(f"rounds, thread CPU time (speed-up over {REFERENCE}):")
        print(latency_markdown(table))


if __name__ == "__main__":
    main()
