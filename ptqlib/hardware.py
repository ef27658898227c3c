"""What machine this is: the CPU, its vector instructions, torch's threads and engine.

Speed, kernels and even some torch.ao results depend on the CPU (notebooks 04 and 05), so
every timing and every parity claim is printed next to what this module detects.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
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
    """Python, torch, CPU threads, the quantized engine and the CPU's int8 instructions, in
    lines that fit a notebook's output column (the version cell)."""
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


def cpu_has_vnni(avx512_only: bool = False) -> bool:
    """Whether the CPU has a VNNI int8 dot product (AVX-512 VNNI or AVX-VNNI; with
    ``avx512_only``, AVX-512 VNNI), as torch detects it: four uint8 x int8 products summed
    into 32 bits, no int16 saturation, so x86 int8 kernels (PT2E's, ONNX Runtime's) are exact
    with full 8-bit activations; without it they need 7-bit ones (``reduce_range``). The one
    VNNI predicate of ptqlib."""
    flags = int8_instructions()
    return flags["avx512_vnni"] or (flags["avx_vnni"] and not avx512_only)


def int8_gemm_is_fast() -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32) has a fast kernel on this CPU.

    With AVX-512 VNNI (AMX machines have it too) PyTorch sends it to oneDNN's int8 GEMM,
    measured 9x faster than the float32 GEMM at batch 1024 on a Xeon. On an AVX2-only CPU
    it runs a plain C++ loop, measured 26x slower. Other CPUs (AVX-VNNI laptops, ARM) were
    not measured, so they are treated as slow: ``ptqlib.int8_gemm.int8_matmul``
    then computes the same int32 sums with an exact float GEMM instead. Both give the same
    integers; only speed differs.
    """
    # AVX-VNNI alone was not measured (see above): AVX-512 VNNI only.
    fast = cpu_has_vnni(avx512_only=True) and torch.backends.mkldnn.is_available()
    return fast and onednn_keeps_vnni()


# oneDNN's ISA names (its ONEDNN_MAX_CPU_ISA variable) that still include an int8 dot product
# without int16 saturation: VNNI, and the later ISAs that contain it.
VNNI_ISA_WORDS = ("VNNI", "AMX", "BF16", "FP16", "AVX10")


def onednn_keeps_vnni(environ: dict[str, str] | None = None) -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below VNNI (e.g. ``AVX2``). PyTorch still
    sends ``_int_mm`` to oneDNN because the CPU has VNNI, and oneDNN's capped int8 kernel then
    returns wrong integers (pytorch/pytorch#136746): the exact float GEMM is used instead."""
    cap = (os.environ if environ is None else environ).get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in ("", "ALL", "DEFAULT"):
        return True
    return any(word in cap for word in VNNI_ISA_WORDS)


def int8_summary() -> str:
    """Three lines for a notebook's version cell: the CPU, its int8 instructions and the GEMM
    ptqlib's fast path uses on it."""
    flags = [name for name, present in int8_instructions().items() if present]
    path = "int8 GEMM (_int_mm)" if int8_gemm_is_fast() else "float32 GEMM (exact integers)"
    return (
        f"CPU {cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}\n"
        f"int8 dot-product instructions: {', '.join(flags) or 'none'}\n"
        f"ptqlib's fast path accumulates with the {path}"
    )


def _busy_cpu_seconds() -> float | None:
    """CPU time all processes have spent busy since boot (Linux ``/proc/stat``), else None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    ticks = [int(value) for value in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def cores_busy_elsewhere(seconds: float = 0.5) -> float | None:
    """How many cores *other* processes kept busy, on average, while this process slept for
    ``seconds``: the machine's busy CPU time minus this process's own, over the wall time.
    Unlike the load average (which counts this process's threads too, and lags by a
    minute), it says whether someone else shares the cores right now: near 0 on an idle
    machine. None where ``/proc/stat`` is missing (not Linux)."""
    busy_before, own_before = _busy_cpu_seconds(), os.times()
    start = time.perf_counter()
    time.sleep(seconds)
    busy_after, own_after = _busy_cpu_seconds(), os.times()
    if busy_before is None or busy_after is None:
        return None
    own = (own_after.user - own_before.user) + (own_after.system - own_before.system)
    elsewhere = (busy_after - busy_before) - own
    return max(0.0, elsewhere / (time.perf_counter() - start))
