"""What machine this is: the CPU, its vector instructions, torch's threads and engine.

Speed, kernels and even some torch.ao results depend on the CPU (notebooks 04 and 05), so
every timing and every parity claim is printed next to what this module detects.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, str | int]:
    """What a latency number was measured on: CPU, its vector instructions, threads, torch."""
    return {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "torch": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
    }


def environment_summary() -> str:
    """Python, torch, CPU threads and the quantized engine, one per line (the version cell)."""
    return "\n".join(
        [
            f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
            f"quantized engine: {torch.backends.quantized.engine}",
        ]
    )
