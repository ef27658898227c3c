"""One interleaved latency table: PyTorch, ptqlib's fast path, ONNX Runtime and the C files
(notebook 10 and ``benchmarks/bench_c.py``).

Every contender is a whole call from Python on the same digits, from the input it needs
(uint8 pixels for the INT8 models, normalised floats for FP32) to its logits (the C calls
into output buffers allocated once; the C INT8 logits stay integers, their argmax is the
class). The calls
take turns repeat by repeat (``ptqlib.evaluation.time_interleaved``), on one thread: the C
functions are single-threaded, so the others get the same single core.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ptqlib.data import normalise
from ptqlib.deploy.c_export import export_c
from ptqlib.deploy.c_runtime import CModel, load_c_model
from ptqlib.evaluation import Latency, time_interleaved
from ptqlib.int8_model import Int8Model

REFERENCE = "PyTorch FP32 eager"


def c_builds(fp32: nn.Module, int8_model: Int8Model, directory: str | os.PathLike) -> dict:
    """``{"fp32", "int8_portable", "int8_native"}``: the models exported into ``directory``
    and compiled (from the compile cache when built before)."""
    directory = Path(directory)
    fp32_dir = export_c(fp32, directory / "fp32").directory
    int8_dir = export_c(int8_model, directory / "int8").directory
    return {
        "fp32": load_c_model(fp32_dir),
        "int8_portable": load_c_model(int8_dir, "portable"),
        "int8_native": load_c_model(int8_dir, "native"),
    }


def contenders(
    fp32: nn.Module,
    fast_int8: nn.Module,
    builds: dict[str, CModel],
    ort_int8: nn.Module | None,
    pixels: torch.Tensor,
) -> dict[str, Callable[[], object]]:
    """The calls to time on ``pixels`` (uint8 ``[N, 28, 28]``), by the name in the table."""
    images = normalise(pixels)
    flat_pixels = pixels.reshape(len(pixels), -1).contiguous()
    flat_images = images.reshape(len(pixels), -1).contiguous()
    calls = {
        REFERENCE: lambda: fp32(images),
        "ptqlib fast path (uint8 pixels)": lambda: fast_int8(pixels.unsqueeze(1)),
    }
    if ort_int8 is not None:
        calls["ONNX Runtime INT8"] = lambda: ort_int8(pixels.unsqueeze(1))
    # The C calls write into output buffers allocated once, as an application would.
    float_logits = torch.empty(len(pixels), builds["fp32"].outputs)
    int8_logits = torch.empty(len(pixels), builds["int8_native"].outputs, dtype=torch.uint8)
    calls.update(
        {
            "C FP32 (axpy loops)": lambda: builds["fp32"].run(flat_images, float_logits),
            "C INT8, portable loops": lambda: builds["int8_portable"].run(flat_pixels, int8_logits),
            "C INT8, native build": lambda: builds["int8_native"].run(flat_pixels, int8_logits),
        }
    )
    return calls


def latency_table(
    fp32: nn.Module,
    fast_int8: nn.Module,
    builds: dict[str, CModel],
    ort_int8: nn.Module | None = None,
    batch_sizes: tuple[int, ...] = (1, 64, 1024),
    repeats: int = 7,
    min_seconds_per_repeat: float = 0.01,
    seed: int = 0,
) -> dict[int, dict[str, Latency]]:
    """``table[batch_size][name]``: median and quartiles over ``repeats`` interleaved rounds
    on one thread, on random digits (the time does not depend on the pixel values)."""
    generator = torch.Generator().manual_seed(seed)
    table = {}
    with torch.no_grad():
        for batch_size in batch_sizes:
            shape = (batch_size, 28, 28)
            pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
            calls = contenders(fp32, fast_int8, builds, ort_int8, pixels)
            samples = time_interleaved(calls, 1, repeats, min_seconds_per_repeat)
            table[batch_size] = {}
            for name, times in samples.items():
                q1, median, q3 = statistics.quantiles(times, n=4)
                table[batch_size][name] = Latency(batch_size, 1, median, q1, q3, repeats)
    return table


def format_time(milliseconds: float) -> str:
    return f"{milliseconds * 1000:.1f} µs" if milliseconds < 1 else f"{milliseconds:.2f} ms"


def latency_markdown(table: dict[int, dict[str, Latency]]) -> str:
    """The table as Markdown: PyTorch FP32's time, every other row as its speed-up."""
    sizes = list(table)
    lines = [
        "| | " + " | ".join(f"batch {size}" for size in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for name in table[sizes[0]]:
        cells = []
        for size in sizes:
            reference = table[size][REFERENCE].median_ms
            latency = table[size][name].median_ms
            cells.append(
                format_time(latency)
                if name == REFERENCE
                else f"{reference / latency:.2f}x ({format_time(latency)})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio(table: dict[int, dict[str, Latency]], faster: str, slower: str, batch: int) -> float:
    """How many times faster ``faster`` ran than ``slower`` at ``batch`` (median times)."""
    return table[batch][slower].median_ms / table[batch][faster].median_ms
