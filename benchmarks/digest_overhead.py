"""Benchmark: what the SHA-256 digest check costs, as a fraction of a whole load.

Writes SimpleNet's four kinds of file (FP32, INT8, packed 3-bit, the INT8 model exported to
ONNX; random weights: the sizes, not the values, set the cost) to a temporary folder, then
times, alternating, the loader a user calls (``load_fp32``, ``load_int8``,
``load_onnx_model``: read, check the digest, rebuild the model or the ONNX Runtime session)
and the digest check alone on the same contents. Prints the medians and their ratio, and
the ratio of the fastest runs (less disturbed when other work shares the cores).

Run: python benchmarks/digest_overhead.py [--repeats N] [--smoke]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ptqlib.calibration import calibrate
from ptqlib.checkpoints import check_digest, load_fp32, save_fp32
from ptqlib.deploy.onnx_export import DIGEST_KEY, int8_to_onnx, onnx_digest, save_onnx
from ptqlib.deploy.onnx_runtime import load_onnx, load_onnx_model, metadata
from ptqlib.int8_checkpoint import load_int8, save_int8
from ptqlib.int8_model import convert
from ptqlib.lowbit.weights import LowBitSettings, quantize_low_bit
from ptqlib.models import SimpleNet


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def write_files(folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    model = SimpleNet().eval()
    images = torch.rand(64, 1, 28, 28)
    int8_model = convert(model, calibrate(model, images, "minmax", progress=False))
    settings = LowBitSettings(weight_bits=3, layer_bits={"fc3": 8})
    lowbit = quantize_low_bit(model, images, settings, observer="minmax").int8_model
    return {
        "FP32 checkpoint": save_fp32(model, folder / "fp32.pt"),
        "INT8 checkpoint": save_int8(int8_model, folder / "int8.pt"),
        "W3 packed checkpoint": save_int8(lowbit, folder / "w3.pt"),
        "INT8 ONNX": save_onnx(int8_to_onnx(int8_model), folder / "int8.onnx"),
    }


def loader(label: str, path: Path) -> Callable[[], object]:
    """The load a user runs: read, check the digest, rebuild the model (or ORT session)."""
    if path.suffix == ".onnx":
        return lambda: load_onnx_model(path, threads=1)
    return lambda: load_fp32(path) if label.startswith("FP32") else load_int8(path)


def digest_check(path: Path) -> Callable[[], object]:
    """The check the loader runs, on contents already in memory."""
    if path.suffix == ".onnx":
        onnx_model = load_onnx(path)

        def check_onnx() -> None:
            assert onnx_digest(onnx_model) == metadata(onnx_model)[DIGEST_KEY]

        return check_onnx
    payload = torch.load(path, weights_only=True)
    return lambda: check_digest(payload, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=51, help="timed runs of each (default 51)")
    parser.add_argument("--smoke", action="store_true", help="3 runs of each: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 3
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive number, got {args.repeats}")
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} interleaved runs"
    )
    print("| file | bytes | whole load (ms) | digest check (ms) | check / load | fastest runs |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for label, path in write_files(Path(folder)).items():
            load, check = loader(label, path), digest_check(path)
            load(), check()  # warm-up
            loads, checks = [], []
            for _ in range(args.repeats):
                loads.append(seconds(load))
                checks.append(seconds(check))
            load_ms = statistics.median(loads) * 1e3
            check_ms = statistics.median(checks) * 1e3
            fastest = min(checks) / min(loads)
            print(
                f"| {label} | {path.stat().st_size:,} | {load_ms:.3f} | {check_ms:.3f} "
                f"| {check_ms / load_ms:.1%} | {fastest:.1%} |"
            )


if __name__ == "__main__":
    main()
