"""Profile ptqlib's integer-only INT8 engine: where its time goes, and why.

Builds the four models of ``python -m ptqlib pipeline`` (``ptqlib.app.pipeline.build_models``:
the cached FP32 SimpleNet; ptqlib's INT8 model on raw pixels, as the teaching path of
notebook 04 and as the fast path of ``ptqlib.fast``; torch.ao's eager-mode INT8 model),
calibrated on 1,000 training images with the histogram observer, then prints

1. the machine: CPU model, the instruction set torch's kernels use, threads, versions;
2. a GEMM micro-benchmark at SimpleNet's three shapes: ``torch._int_mm`` (int8 x int8
   summed in int32) against ``torch.mm`` (float32), at batch 1, 64 and 1024;
3. the latency of the four whole models at batch 1 and 1024;
4. the split of both ptqlib paths' time into input, GEMMs and requantization;
5. ``torch.profiler`` tables of both ptqlib paths at batch 1 and 1024: the operators
   sorted by self CPU time, and the share of the GEMMs;
6. issue 11's targets, read off this run.

Timing: the candidates of one table take turns, repeat by repeat; each repeat times enough
back-to-back calls to last ``--min-ms``; the table shows the median over ``--repeats``
and the quartiles. On a machine shared with other jobs, a busy moment slows a
multi-threaded kernel by whole scheduler time slices (its threads wait for each other),
so the script prints the Linux CPU pressure (PSI) measured during each table: if it is
high, run again.

Run: python benchmarks/profile_int8.py [--threads 2] [--repeats 9]
     python benchmarks/profile_int8.py --smoke   (3 repeats of 0.1 ms, 100 images, 2 profiled
     calls: checks the script works; its numbers mean nothing)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ptqlib.app.pipeline import build_models
from ptqlib.data import load_mnist, normalise
from ptqlib.evaluation import time_interleaved
from ptqlib.fast.profiling import time_split
from ptqlib.hardware import machine_info
from ptqlib.int8_layers import Int8Linear

CALIBRATION_IMAGES = 1000
BATCH_SIZES = (1, 64, 1024)
MODEL_BATCH_SIZES = (1, 1024)
PRESSURE_FILE = Path("/proc/pressure/cpu")  # Linux pressure stall information


# --- measuring -----------------------------------------------------------------------------


def cpu_pressure_seconds() -> float | None:
    """Total time (s) during which some runnable task of this machine waited for a CPU
    (Linux pressure stall information); None where the kernel does not provide it."""
    try:
        first_line = PRESSURE_FILE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(field.split("=") for field in first_line.split()[1:])
    return int(fields["total"]) / 1e6


class PressureMeter:
    """The share of wall time during which some task waited for a CPU, between start and
    ``note()``. Other jobs on the machine show up here: a 2-thread kernel on 2 busy cores
    waits for its second thread, and its time is then the scheduler's, not the kernel's."""

    def __init__(self) -> None:
        self.start_pressure = cpu_pressure_seconds()
        self.start_wall = time.perf_counter()

    def note(self) -> str:
        end_pressure = cpu_pressure_seconds()
        if self.start_pressure is None or end_pressure is None:
            return "CPU pressure: not available on this system"
        share = (end_pressure - self.start_pressure) / (time.perf_counter() - self.start_wall)
        advice = "  (high: the machine was busy, run again)" if share > 0.1 else ""
        return (
            f"CPU pressure during the table: tasks waited for a CPU {share:.0%} of the time{advice}"
        )


def interleaved_times(
    candidates: dict[str, Callable[[], object]], repeats: int, min_seconds: float
) -> dict[str, tuple[float, float, float]]:
    """Time per call (microseconds) of each candidate: ``(q1, median, q3)`` over repeats,
    measured interleaved by :func:`ptqlib.evaluation.time_interleaved`."""
    samples = time_interleaved(
        candidates,
        threads=torch.get_num_threads(),
        repeats=repeats,
        min_seconds_per_repeat=min_seconds,
    )
    return {
        name: tuple(1000.0 * value for value in statistics.quantiles(times, n=4))
        for name, times in samples.items()
    }


def format_time(microseconds: float) -> str:
    if microseconds >= 1000:
        return f"{microseconds / 1000:.2f} ms"
    return f"{microseconds:.1f} us"


# --- the sections --------------------------------------------------------------------------


def print_machine(threads: int) -> None:
    info = machine_info(threads)
    print("== machine")
    print(f"cpu: {info['cpu']} ({os.cpu_count()} logical CPUs)")
    print(f"torch {info['torch']}; its CPU kernels use: {info['cpu_capability']}")
    print(
        f"threads: {info['threads']} (torch.set_num_threads); "
        f"quantized engine: {info['quantized_engine']}"
    )
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")


def int_mm_exact_shapes() -> list[str]:
    """The odd shapes that ``torch._int_mm`` multiplies here, exactly (on CUDA it wants
    more than 16 rows and sizes that are multiples of 8)."""
    generator = torch.Generator().manual_seed(0)
    accepted = []
    for rows, inner, columns in ((1, 3, 5), (17, 13, 7), (1, 784, 10)):
        left = torch.randint(-128, 128, (rows, inner), dtype=torch.int8, generator=generator)
        right = torch.randint(-128, 128, (inner, columns), dtype=torch.int8, generator=generator)
        try:
            product = torch._int_mm(left, right)
        except RuntimeError:
            continue
        if torch.equal(product.long(), left.long() @ right.long()):
            accepted.append(f"{rows}x{inner} @ {inner}x{columns}")
    return accepted


def print_gemm_table(
    shapes: list[tuple[int, int]], repeats: int, min_seconds: float
) -> dict[int, dict[str, float]]:
    """Median time of each GEMM; returns, per batch, the sum over the layers (us)."""
    print("\n== GEMM at SimpleNet's shapes: torch._int_mm (int8 -> int32) vs torch.mm (float32)")
    print("x [batch, in] times the weight [out, in] transposed (a view, as Int8Linear uses it)")
    accepted = int_mm_exact_shapes()
    print(f"_int_mm on this CPU takes any shape, exact: {', '.join(accepted) or 'none'}")
    print(f"{'batch':>5} {'in x out':>10} {'_int_mm':>11} {'mm fp32':>11} {'_int_mm / mm':>13}")
    generator = torch.Generator().manual_seed(0)
    meter = PressureMeter()
    totals: dict[int, dict[str, float]] = {}
    for batch in BATCH_SIZES:
        totals[batch] = {"int": 0.0, "float": 0.0}
        for inputs, outputs in shapes:
            x = torch.randint(-128, 128, (batch, inputs), dtype=torch.int8, generator=generator)
            weight = torch.randint(
                -128, 128, (outputs, inputs), dtype=torch.int8, generator=generator
            )
            times = interleaved_times(
                {
                    "int": partial(torch._int_mm, x, weight.t()),
                    "float": partial(torch.mm, x.float(), weight.float().t()),
                },
                repeats,
                min_seconds,
            )
            int_time, float_time = times["int"][1], times["float"][1]
            totals[batch]["int"] += int_time
            totals[batch]["float"] += float_time
            print(
                f"{batch:>5} {f'{inputs}x{outputs}':>10} {format_time(int_time):>11} "
                f"{format_time(float_time):>11} {int_time / float_time:>12.1f}x"
            )
    print(meter.note())
    return totals


def print_model_table(
    models: dict[str, nn.Module], repeats: int, min_seconds: float
) -> dict[int, dict[str, float]]:
    """Median time of one forward pass of each model; returns them (us) per batch."""
    print("\n== whole models, one forward pass: median [quartiles], and the ratio to FP32")
    generator = torch.Generator().manual_seed(0)
    meter = PressureMeter()
    medians: dict[int, dict[str, float]] = {}
    for batch in MODEL_BATCH_SIZES:
        pixels = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8, generator=generator)
        inputs = {True: pixels.unsqueeze(1), False: normalise(pixels)}
        times = interleaved_times(
            {
                name: partial(model, inputs[getattr(model, "takes_pixels", False)])
                for name, model in models.items()
            },
            repeats,
            min_seconds,
        )
        medians[batch] = {name: median for name, (_, median, _) in times.items()}
        for name, (q1, median, q3) in times.items():
            quartiles = f"[{format_time(q1)}, {format_time(q3)}]"
            print(
                f"batch {batch:>4}  {name:<21} {format_time(median):>10} {quartiles:<22} "
                f"{medians[batch]['fp32'] / median:6.2f}x FP32 throughput"
            )
    print(meter.note())
    return medians


def print_profile(name: str, model: nn.Module, batch: int, calls: int, rows: int) -> None:
    """The operators of ``calls`` forward passes by self CPU time, and the GEMMs' share."""
    pixels = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8)
    images = pixels.unsqueeze(1) if model.takes_pixels else normalise(pixels)
    model(images)  # warm-up, outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(calls):
            model(images)
    averages = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    gemm = sum(
        event.self_cpu_time_total
        for event in averages
        if event.key in ("aten::_int_mm", "aten::mm")
    )
    # Operators called from Python; aten::to, for one, calls _to_copy, empty_strided, copy_.
    top_level = sum(1 for event in profiler.events() if event.cpu_parent is None)
    print(f"\n== torch.profiler: {name} forward at batch {batch}, {calls} calls")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    print(
        f"per forward pass: {format_time(total / calls)} self CPU time (profiler overhead "
        f"included), {top_level / calls:.0f} operators called from Python; "
        f"GEMMs {gemm / total:.0%} of the time, the rest {1 - gemm / total:.0%}"
    )


def print_splits(models: dict[str, nn.Module], threads: int, repeats: int) -> None:
    """Input, GEMM and requantization time of the two ptqlib paths (ptqlib.fast.profiling)."""
    print("\n== where an INT8 forward pass spends its time (ptqlib.fast.profiling.time_split)")
    print(f"{'model':<21} {'batch':>5} {'total':>10} {'input':>8} {'GEMMs':>8} {'requant':>8}")
    for name in ("int8_ptqlib_teaching", "int8_ptqlib"):
        for batch in MODEL_BATCH_SIZES:
            split = time_split(models[name], batch, threads=threads, repeats=repeats)
            shares = [split.input_ms, split.gemm_ms, split.requantization_ms]
            print(
                f"{name:<21} {batch:>5} {format_time(1000 * split.total_ms):>10} "
                + " ".join(f"{share / split.total_ms:>8.0%}" for share in shares)
            )


def print_targets(models: dict[int, dict[str, float]], accumulator: str) -> None:
    print("\n== issue 11's targets, from this run's medians (fast path = int8_ptqlib)")
    print(f"the fast path accumulates with the {accumulator}")
    for batch in MODEL_BATCH_SIZES:
        row = models[batch]
        print(
            f"batch {batch}: fast path {row['fp32'] / row['int8_ptqlib']:.2f}x FP32 throughput, "
            f"torch.ao {row['fp32'] / row['int8_torch']:.2f}x, teaching path "
            f"{row['fp32'] / row['int8_ptqlib_teaching']:.2f}x"
        )
    print(
        "targets: with VNNI/AMX >= 3x at batch 1024, >= 1x at batch 1 and ahead of torch.ao at "
        "1024; without VNNI >= 0.8x at every batch size"
    )


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats (default 9)")
    parser.add_argument(
        "--min-ms", type=float, default=20.0, help="shortest timed repeat, ms (default 20)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick run that checks the script works (tiny repeats, no download)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.min_ms = 3, 0.1
    if args.threads < 1:
        parser.error(f"--threads: expected a positive number, got {args.threads}")
    if args.repeats < 3:
        parser.error(f"--repeats: expected at least 3 (for quartiles), got {args.repeats}")
    if args.min_ms <= 0:
        parser.error(f"--min-ms: expected a positive number, got {args.min_ms}")
    # Kineto, torch.profiler's backend, otherwise logs its stages (and, on a CUDA build
    # without a GPU, a harmless "gpuGetDeviceCount failed") to stderr.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    torch.set_num_threads(args.threads)
    min_seconds = args.min_ms / 1000

    data = load_mnist(verbose=False, download=not args.smoke)
    n_images = 100 if args.smoke else CALIBRATION_IMAGES
    models, _, settings = build_models(data, n_images, "histogram", progress=False)
    print_machine(args.threads)
    print(f"data: {n_images} calibration images from {data.source}")
    shapes = [
        (layer.in_features, layer.out_features)
        for layer in models["int8_ptqlib_teaching"].layers
        if isinstance(layer, Int8Linear)
    ]
    with torch.inference_mode():
        print_gemm_table(shapes, args.repeats, min_seconds)
        medians = print_model_table(models, args.repeats, min_seconds)
        print_splits(models, args.threads, args.repeats)
        for name in ("int8_ptqlib_teaching", "int8_ptqlib"):
            print_profile(name, models[name], batch=1, calls=2 if args.smoke else 200, rows=10)
            print_profile(name, models[name], batch=1024, calls=1 if args.smoke else 3, rows=8)
    print_targets(medians, settings["ptqlib_accumulator"])


if __name__ == "__main__":
    main()
