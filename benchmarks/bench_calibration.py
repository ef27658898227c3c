"""Benchmark: calibrating SimpleNet with ptqlib's HistogramObserver vs torch.ao's.

Both calibrate the cached FP32 baseline on the same 1,000 calibration images, in the
same batches of 100, with observers at the same points (the model's input, every
Linear and ReLU output; weights with a per-channel min/max observer), and compute the
qparams of every tensor. Each side runs a few times, alternating, and the median wall
time is reported with the ratio torch.ao / ptqlib (> 1 means ptqlib is faster).

Run: python benchmarks/bench_calibration.py [--repeats N]
     python benchmarks/bench_calibration.py --smoke   (1 repeat, 100 images: checks it runs)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from ptqlib.calibration import calibrate
from ptqlib.data import calibration_images, load_mnist
from ptqlib.reference.torch_eager import torch_calibrate, torch_histogram_range
from ptqlib.training import load_or_train_baseline

CALIBRATION_IMAGES = 1000
SMOKE_CALIBRATION_IMAGES = 100
BATCH_SIZE = 100


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (default 5)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick run that checks the script works: 1 repeat, 100 images, no download",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive number, got {args.repeats}")
    if args.smoke:
        args.repeats = 1

    data = load_mnist(download=not args.smoke)
    model, _ = load_or_train_baseline(data, progress=False)
    n_images = SMOKE_CALIBRATION_IMAGES if args.smoke else CALIBRATION_IMAGES
    images = calibration_images(data.train, n_images)

    def run_ptqlib():
        return calibrate(model, images, "histogram", batch_size=BATCH_SIZE, progress=False)

    def run_torch():
        return torch_calibrate(model, images, "HistogramObserver", batch_size=BATCH_SIZE)

    # One untimed run each (warm-up), which also shows that both choose the same ranges.
    ours = run_ptqlib()
    _, theirs = run_torch()
    print(f"{'tensor':<8} {'ptqlib range':>22} {'torch.ao range':>22} {'diff (bins)':>11}")
    for name, observer in ours.observers.items():
        if name.endswith(".weight"):
            continue
        low, high = observer.clipping_range()
        torch_low, torch_high = torch_histogram_range(theirs[name])
        bin_width = float(observer.max_val - observer.min_val) / observer.bins
        difference = max(abs(float(low - torch_low)), abs(float(high - torch_high))) / bin_width
        print(
            f"{name:<8} [{float(low):>9.4f}, {float(high):>9.4f}] "
            f"[{float(torch_low):>9.4f}, {float(torch_high):>9.4f}] {difference:>11.3f}"
        )

    ptqlib_times, torch_times = [], []
    for _ in range(args.repeats):
        ptqlib_times.append(seconds(run_ptqlib))
        torch_times.append(seconds(run_torch))
    ptqlib_median = statistics.median(ptqlib_times)
    torch_median = statistics.median(torch_times)

    print()
    print(
        f"machine: {platform.machine()}, python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"data: {len(images)} calibration images from {data.source}")
    print(f"repeats: {args.repeats} per side, alternating; median wall time")
    print(f"ptqlib   HistogramObserver: {ptqlib_median * 1000:8.1f} ms")
    print(f"torch.ao HistogramObserver: {torch_median * 1000:8.1f} ms")
    print(f"ratio torch.ao / ptqlib:    {torch_median / ptqlib_median:8.2f}  (> 1: ptqlib faster)")


if __name__ == "__main__":
    main()
