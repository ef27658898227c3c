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
        "int8_instructions": ", ".join(
            name for name, present in int8_instructions().items() if present
        )
        or "none",
    }


def environment_summary() -> str:
    """Python, torch, CPU threads and the quantized engine, one per line (the version cell)."""
    return "\n".join(
        [
            f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
            f"quantized engine: {torch.backends.quantized.engine}",
            int8_summary(),
        ]
    )


def int8_instructions() -> dict[str, bool]:
    """The CPU's int8 dot-product instructions, as torch detects them: AVX-512 VNNI and
    AVX-VNNI (``vpdpbusd``: four uint8 x int8 products summed into 32 bits), AMX-INT8 (tile
    matrix multiply). Without any of them, x86 int8 kernels fall back to AVX2's
    ``vpmaddubsw``, which sums pairs of products into 16 bits and can saturate."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {name: bool(capabilities.get(name, False)) for name in INT8_FLAGS}


INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_vnni() -> bool:
    """Whether the CPU has a VNNI int8 dot product (AVX-512 VNNI or AVX-VNNI), as torch
    detects it: four uint8 x int8 products summed into 32 bits, no int16 saturation, so x86
    int8 kernels (PT2E's, ONNX Runtime's) are exact with full 8-bit activations; without it
    they need 7-bit ones (``reduce_range``). The one VNNI predicate of ptqlib."""
    flags = int8_instructions()
    return flags["avx512_vnni"] or flags["avx_vnni"]


def int8_gemm_is_fast() -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32) has a fast kernel on this CPU.

    With AVX-512 VNNI (AMX machines have it too) PyTorch sends it to oneDNN's int8 GEMM,
    measured 9x faster than the float32 GEMM at batch 1024 on a Xeon. On an AVX2-only CPU
    it runs a plain C++ loop, measured 26x slower. Other CPUs (AVX-VNNI laptops, ARM) were
    not measured, so they are treated as slow: ``ptqlib.int8_gemm.int8_matmul``
    then computes the same int32 sums with an exact float GEMM instead. Both give the same
    integers; only speed differs.
    """
    # Narrower than cpu_has_vnni: AVX-VNNI alone was not measured (see above).
    return int8_instructions()["avx512_vnni"] and torch.backends.mkldnn.is_available()


def int8_summary() -> str:
    """One line for a notebook's version cell: the int8 instructions and the GEMM path."""
    flags = [name for name, present in int8_instructions().items() if present]
    path = "int8 GEMM (_int_mm)" if int8_gemm_is_fast() else "float32 GEMM (exact integers)"
    return (
        f"CPU {cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, "
        f"int8 dot-product instructions: {', '.join(flags) or 'none'}; "
        f"ptqlib's fast path accumulates with the {path}"
    )
