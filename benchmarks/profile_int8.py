"""Profile ptqlib's integer-only INT8 engine: where its time goes, and why.

Builds the cached FP32 SimpleNet, calibrates it on 1,000 training images (histogram
observer, 7-bit activations as torch's x86 engine uses them, ``reduce_range=True``),
converts it with ptqlib (integer-only: ``torch._int_mm`` plus int64 requantization) and
with torch.ao (eager mode, the x86 quantized engine), then prints

1. the machine: CPU model, the instruction set torch's kernels use, threads, versions;
2. a GEMM micro-benchmark at SimpleNet's three shapes: ``torch._int_mm`` (int8 x int8
   summed in int32) against ``torch.mm`` (float32), at batch 1, 64 and 1024;
3. the latency of the whole FP32, ptqlib INT8 and torch.ao INT8 models at batch 1 and 1024;
4. ``torch.profiler`` tables of ptqlib's INT8 forward at batch 1 and 1024: the operators
   sorted by self CPU time, and the share of the int8 GEMM.

Timing: the candidates of one table take turns, repeat by repeat; each repeat times enough
back-to-back calls to last ``--min-ms``; the table shows the median over ``--repeats``
and the quartiles. On a machine shared with other jobs, a busy moment slows a
multi-threaded kernel by whole scheduler time slices (its threads wait for each other),
so the script prints the Linux CPU pressure (PSI) measured during each table: if it is
high, run again.

Run: python benchmarks/profile_int8.py [--threads 2] [--repeats 9]
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

from ptqlib.calibration import calibrate
from ptqlib.data import calibration_images, load_mnist
from ptqlib.evaluation import time_interleaved
from ptqlib.hardware import machine_info
from ptqlib.int8_model import Int8Linear, Int8Model, convert
from ptqlib.reference import torch_eager_ptq
from ptqlib.training import load_or_train_baseline

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
        images = torch.randn(batch, 1, 28, 28, generator=generator)
        times = interleaved_times(
            {name: partial(model, images) for name, model in models.items()},
            repeats,
            min_seconds,
        )
        medians[batch] = {name: median for name, (_, median, _) in times.items()}
        for name, (q1, median, q3) in times.items():
            quartiles = f"[{format_time(q1)}, {format_time(q3)}]"
            print(
                f"batch {batch:>4}  {name:<14} {format_time(median):>10} {quartiles:<22} "
                f"{median / medians[batch]['fp32']:6.2f}x FP32"
            )
    print(meter.note())
    return medians


def print_profile(model: Int8Model, batch: int, calls: int, rows: int) -> None:
    """The operators of ``calls`` forward passes by self CPU time, and the GEMM's share."""
    images = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model(images)  # warm-up, outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(calls):
            model(images)
    averages = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    gemm = sum(event.self_cpu_time_total for event in averages if event.key == "aten::_int_mm")
    # Operators called from Python; aten::to, for one, calls _to_copy, empty_strided, copy_.
    top_level = sum(1 for event in profiler.events() if event.cpu_parent is None)
    print(f"\n== torch.profiler: ptqlib INT8 forward at batch {batch}, {calls} calls")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    print(
        f"per forward pass: {format_time(total / calls)} self CPU time (profiler overhead "
        f"included), {top_level / calls:.0f} operators called from Python; "
        f"aten::_int_mm {gemm / total:.0%} of the time, the rest {1 - gemm / total:.0%}"
    )


def print_targets(gemms: dict[int, dict[str, float]], models: dict[int, dict[str, float]]) -> None:
    print("\n== the issue's targets, from this run's medians")
    big, one = models[1024], models[1]
    print(
        f"batch 1024: ptqlib throughput {big['fp32'] / big['ptqlib int8']:.2f}x FP32 "
        f"(target >= 2x), torch.ao {big['fp32'] / big['torch.ao int8']:.2f}x FP32; "
        f"ptqlib takes {big['ptqlib int8'] / big['torch.ao int8']:.1f}x torch.ao's time "
        "(target <= 1x)"
    )
    print(
        f"batch 1: ptqlib takes {one['ptqlib int8'] / one['fp32']:.2f}x FP32's time "
        f"(target <= 1.5x), torch.ao {one['torch.ao int8'] / one['fp32']:.2f}x"
    )
    for batch, label in ((1024, "batch 1024"), (1, "batch 1")):
        print(
            f"{label}: ptqlib's three _int_mm calls alone take "
            f"{gemms[batch]['int'] / models[batch]['fp32']:.2f}x the whole FP32 forward pass"
        )


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats (default 9)")
    parser.add_argument(
        "--min-ms", type=float, default=20.0, help="shortest timed repeat, ms (default 20)"
    )
    args = parser.parse_args()
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

    data = load_mnist(verbose=False)
    fp32_model, _ = load_or_train_baseline(data, progress=False)
    images = calibration_images(data.train, CALIBRATION_IMAGES)
    calibration = calibrate(
        fp32_model, images, "histogram", activation_kwargs={"reduce_range": True}, progress=False
    )
    ptqlib_model = convert(fp32_model, calibration.qparams)
    torch_model = torch_eager_ptq(fp32_model, images, reduce_range=True)

    print_machine(args.threads)
    print(f"data: {len(images)} calibration images from {data.source}")
    shapes = [
        (layer.in_features, layer.out_features)
        for layer in ptqlib_model.layers
        if isinstance(layer, Int8Linear)
    ]
    models = {"fp32": fp32_model, "ptqlib int8": ptqlib_model, "torch.ao int8": torch_model}
    with torch.inference_mode():
        gemms = print_gemm_table(shapes, args.repeats, min_seconds)
        medians = print_model_table(models, args.repeats, min_seconds)
        print_profile(ptqlib_model, batch=1, calls=200, rows=12)
        print_profile(ptqlib_model, batch=1024, calls=3, rows=8)
    print_targets(gemms, medians)


if __name__ == "__main__":
    main()
