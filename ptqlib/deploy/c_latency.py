"""SimpleNet and the CNNs as C against PyTorch, ptqlib's fast path and ONNX Runtime, timed
in one interleaved run (notebook 10 and ``benchmarks/bench_c.py``).

Every contender starts from the input it needs (uint8 pixels for the INT8 models,
normalised floats for FP32) and ends with its logits; the C builds are called as an
application calls them, bound to buffers allocated once (``CModel.latency_call``; "run()"
is the same C through ``CModel.run``, which checks its tensors on every call). The calls take
turns repeat by repeat on one thread (``ptqlib.evaluation.latency_table``), in this thread's
CPU time: the C is single-threaded, so every contender gets the same single core, and time
spent waiting for a core that another process holds is not counted.
"""

from __future__ import annotations

import functools
import os
import statistics
from pathlib import Path

import torch
from torch import nn

from ptqlib.deploy.c_export import export_c
from ptqlib.deploy.c_peaks import seconds_per_call
from ptqlib.deploy.c_runtime import CModel, load_c_model, native_targets
from ptqlib.evaluation import Latency, latency_table
from ptqlib.int8_model import Int8Model

REFERENCE = "PyTorch FP32 eager"


def c_builds(
    fp32: nn.Module, int8_model: Int8Model, directory: str | os.PathLike, name: str = "simplenet"
) -> dict[str, CModel]:
    """``{"<kind> <build>": CModel}``: both models exported into ``directory`` and compiled
    (from the compile cache when built before), every build the export has and this CPU
    runs: "portable", and "avx2" where the CPU has AVX2 and FMA."""
    directory = Path(directory)
    builds = {}
    for kind, model in (("fp32", fp32), ("int8", int8_model)):
        exported = export_c(model, directory / kind, name)
        for variant in ("portable", "avx2"):
            if variant == "portable" or (variant in exported.builds and native_targets()["avx2"]):
                builds[f"{kind} {variant}"] = load_c_model(exported.directory, variant)
    return builds


class CheckedCall:
    """A C build timed through ``CModel.run`` (its checks on every call): the whole call a
    Python caller makes without binding."""

    def __init__(self, model: CModel) -> None:
        self.model = model

    def eval(self) -> CheckedCall:
        return self

    def latency_call(self, pixels: torch.Tensor):
        inputs = self.model.inputs_of(pixels)
        out = torch.empty(len(pixels), self.model.outputs, dtype=self.model.input_dtype)
        return functools.partial(self.model.run, inputs, out)


def contenders(
    fp32: nn.Module,
    fast_int8: nn.Module | None,
    builds: dict[str, CModel],
    ort_int8: nn.Module | None = None,
) -> dict[str, object]:
    """The rows of the table, by name: PyTorch, the fast path, ONNX Runtime if given, every
    C build, and the fastest INT8 build once more through ``run()``."""
    rows: dict[str, object] = {REFERENCE: fp32}
    if fast_int8 is not None:
        rows["ptqlib fast path"] = fast_int8
    if ort_int8 is not None:
        rows["ONNX Runtime INT8"] = ort_int8
    rows.update({f"C {name}": model for name, model in builds.items()})
    best = "int8 avx2" if "int8 avx2" in builds else "int8 portable"
    rows[f"C {best}, run()"] = CheckedCall(builds[best])
    return rows


def c_latency_table(
    rows: dict[str, object],
    batch_sizes: tuple[int, ...] = (1, 64, 1024),
    repeats: int = 7,
    min_seconds_per_repeat: float = 0.01,
) -> dict[int, dict[str, Latency]]:
    """``table[batch_size][name]``: one thread, thread CPU time, interleaved (module
    docstring); on random digits (the time does not depend on the pixel values)."""
    return latency_table(rows, batch_sizes, 1, repeats, min_seconds_per_repeat, clock="thread")


def format_time(milliseconds: float) -> str:
    return f"{milliseconds * 1000:.1f} µs" if milliseconds < 1 else f"{milliseconds:.2f} ms"


def latency_markdown(table: dict[int, dict[str, Latency]]) -> str:
    """The table as Markdown: the time per call at each batch size, and the speed-up over
    PyTorch FP32 eager in parentheses."""
    sizes = list(table)
    lines = [
        "| | " + " | ".join(f"batch {size}" for size in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for name in table[sizes[0]]:
        cells = []
        for size in sizes:
            latency = table[size][name].median_ms
            speedup = table[size][REFERENCE].median_ms / latency
            cells.append(format_time(latency) + ("" if name == REFERENCE else f" ({speedup:.1f}x)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio(table: dict[int, dict[str, Latency]], faster: str, slower: str, batch: int) -> float:
    """How many times faster ``faster`` ran than ``slower`` at ``batch`` (median times)."""
    return table[batch][slower].median_ms / table[batch][faster].median_ms


def kernel_table(
    builds: dict[str, CModel],
    batch_sizes: tuple[int, ...] = (1, 64, 1024),
    rounds: int = 7,
    seconds_per_round: float = 0.01,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """``table[batch_size][build]``: nanoseconds per image of the C alone (timed in C, in
    thread CPU time, ``ptqlib.deploy.c_peaks.seconds_per_call``), the median of ``rounds``
    interleaved rounds."""
    generator = torch.Generator().manual_seed(seed)
    table = {}
    for batch in batch_sizes:
        pixels = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8, generator=generator)
        calls = {
            name: max(1, int(seconds_per_round / max(seconds_per_call(model, pixels, 3), 1e-8)))
            for name, model in builds.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in builds}
        for _ in range(rounds):
            for name, model in builds.items():
                samples[name].append(seconds_per_call(model, pixels, calls[name]) / batch)
        table[batch] = {name: statistics.median(times) * 1e9 for name, times in samples.items()}
    return table
