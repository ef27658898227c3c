"""Benchmark: SimpleNet as C against PyTorch, ptqlib's fast path and ONNX Runtime (notebook 10).

The cached FP32 baseline and its INT8 model (normalisation folded, raw uint8 pixels in,
calibrated on 1,000 class-balanced training digits) are exported as C, compiled with the
system C compiler (-O3 -march=native) and called through ctypes. One interleaved run on one
thread at batch 1, 64 and 1024: the whole call from Python, median over the repeats, as a
speed-up over PyTorch FP32 eager. It first checks that the C integers equal ptqlib's on the
test split. On a machine shared with other work the times are noisy: run it idle.

Run: python benchmarks/bench_c.py [--repeats N] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from ptqlib.calibration import calibrate
from ptqlib.data import calibration_images, load_mnist
from ptqlib.deploy.c_latency import REFERENCE, c_builds, latency_markdown, latency_table, ratio
from ptqlib.deploy.onnx_export import int8_to_onnx
from ptqlib.deploy.onnx_runtime import OnnxModel
from ptqlib.fast import FastInt8Model
from ptqlib.hardware import cpu_name, int8_instructions
from ptqlib.int8_model import convert
from ptqlib.models import fold_input_normalization
from ptqlib.training import load_or_train_baseline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="interleaved rounds (default 21)")
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
    with tempfile.TemporaryDirectory(prefix="ptqlib-bench-c-") as directory:
        builds = c_builds(fp32, int8, directory)
        test_pixels = data.test.pixels()
        same = torch.equal(
            builds["int8_native"].quantized_logits(test_pixels.reshape(len(test_pixels), -1)),
            int8.quantized_logits(test_pixels),
        )
        flags = ", ".join(name for name, present in int8_instructions().items() if present)
        print(f"{data.describe()}")
        print(f"CPU: {cpu_name()} (int8 dot-product instructions: {flags or 'none'}), 1 thread")
        print(f"C INT8 integers equal to ptqlib's on the whole test split: {same}")
        sizes = (1, 64) if args.smoke else (1, 64, 1024)
        repeats = 3 if args.smoke else args.repeats
        seconds = 0.002 if args.smoke else 0.02
        ort = OnnxModel(int8_to_onnx(int8), threads=1)
        table = latency_table(fp32, FastInt8Model(int8), builds, ort, sizes, repeats, seconds)
        print(f"\nMedian of {repeats} interleaved rounds; speed-up over {REFERENCE} (time):")
        print(latency_markdown(table))
        for size in sizes:
            print(
                f"batch {size}: C INT8 native / C FP32 "
                f"{ratio(table, 'C INT8, native build', 'C FP32 (axpy loops)', size):.2f}x, "
                f"portable / C FP32 "
                f"{ratio(table, 'C INT8, portable loops', 'C FP32 (axpy loops)', size):.2f}x"
            )


if __name__ == "__main__":
    main()
