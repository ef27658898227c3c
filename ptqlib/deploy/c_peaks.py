"""What one core of this CPU can do at most, and what a build really contains (notebook 10).

**Peaks.** :func:`measure_peaks` times long runs of one instruction on 12 independent
registers (inline assembly, so the compiler can neither drop nor reorder them), in thread CPU
time: the throughput of that instruction on one core, the ceiling of any kernel made of it.
On x86 with AVX2 and FMA it measures the instructions of ``ptqlib.deploy.c_avx2``'s kernels:

- ``vpmaddwd`` + ``vpaddd``: the exact INT8 step, 16 multiply-accumulates per pair;
- ``vpmaddwd`` alone: what the INT8 step would reach if its additions were free;
- ``vpmaddubsw``: 32 products of uint8 x int8 added by pairs into int16 (it saturates, so it
  is not exact for 8-bit activations; shown for what an AVX2 CPU could do with 7 bits);
- ``vfmadd231ps``: the FP32 step, 8 multiply-accumulates.

The ratio of the INT8 and FP32 multiply-accumulate rates is the compute limit of INT8 over
FP32 on this core. Elsewhere (no AVX2, or not x86) nothing is measured.

**Instruction counts.** :func:`instruction_counts` disassembles a compiled library
(``objdump -d``) and counts its mnemonics: which instructions the compiler really chose.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from ptqlib.errors import InputError

REGISTERS = 12  # independent accumulators: more than latency x throughput of any of them

PEAKS_C = """\
#define _POSIX_C_SOURCE 199309L
#include <time.h>

static double thread_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

#define TWELVE(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)
#define CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", \\
                 "xmm9", "xmm10", "xmm11", "xmm12"
#define MADDWD(i) "vpmaddwd %%ymm14, %%ymm15, %%ymm" #i "\\n\\t"
#define MADDWD_ADD(i) "vpmaddwd %%ymm14, %%ymm15, %%ymm12\\n\\t" \\
                      "vpaddd %%ymm12, %%ymm" #i ", %%ymm" #i "\\n\\t"
#define MADDUBSW(i) "vpmaddubsw %%ymm14, %%ymm15, %%ymm" #i "\\n\\t"
#define FMA(i) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" #i "\\n\\t"

#define ZERO(i) "vpxor %%xmm" #i ", %%xmm" #i ", %%xmm" #i "\\n\\t"

/* Seconds of this thread's CPU time for `iterations` x 12 of one instruction. The
 * registers start at 0: bits left over by other code can be subnormal floats, on which an
 * FMA takes a slow microcode assist on some CPUs. vzeroupper at the end: upper halves left
 * dirty slow the SSE code that runs next on some CPUs. */
#define PEAK(name, body)                                                        \\
    double peak_##name(long iterations)                                         \\
    {                                                                           \\
        const double start = thread_seconds();                                  \\
        __asm__ volatile(TWELVE(ZERO) ZERO(14) ZERO(15)                         \\
                         ::: CLOBBERS, "xmm14", "xmm15");                       \\
        for (long i = 0; i < iterations; i++)                                   \\
            __asm__ volatile(TWELVE(body) ::: CLOBBERS);                        \\
        __asm__ volatile("vzeroupper" ::: CLOBBERS, "xmm14", "xmm15");          \\
        return thread_seconds() - start;                                        \\
    }

PEAK(maddwd_add, MADDWD_ADD)
PEAK(maddwd, MADDWD)
PEAK(maddubsw, MADDUBSW)
PEAK(fma, FMA)

/* Seconds of this thread's CPU time for `calls` calls of a model's forward function: the C
 * alone, without any call from Python. */
typedef void (*forward_function)(const void *input, void *output, int batch);

double time_calls(forward_function forward, const void *input, void *output, int batch,
                  long calls)
{
    const double start = thread_seconds();
    for (long i = 0; i < calls; i++) forward(input, output, batch);
    return thread_seconds() - start;
}
"""

# name: (what it is, multiply-accumulates per instruction (pair), exact for 8-bit INT8?)
INSTRUCTIONS = {
    "maddwd_add": ("vpmaddwd + vpaddd ymm (INT8 step)", 16, True),
    "maddwd": ("vpmaddwd ymm alone", 16, True),
    "maddubsw": ("vpmaddubsw ymm (saturates)", 32, False),
    "fma": ("vfmadd231ps ymm (FP32 step)", 8, True),
}


@dataclass(frozen=True)
class Peak:
    """The measured throughput of one instruction on one core."""

    name: str
    instruction: str
    macs_per_instruction: int
    exact: bool
    instructions_per_second: float

    @property
    def macs_per_second(self) -> float:
        return self.macs_per_instruction * self.instructions_per_second


def measure_peaks(iterations: int = 4_000_000, repeats: int = 5) -> dict[str, Peak]:
    """The peak of each instruction of INSTRUCTIONS on one core (the best of ``repeats``
    runs: a peak is what the core reaches when nothing else runs on it), or an empty dict
    where the compiler does not target AVX2 + FMA on x86."""
    from ptqlib.deploy.c_runtime import native_targets

    if platform.machine().lower() not in ("x86_64", "amd64") or not native_targets()["avx2"]:
        return {}
    library = peaks_library()
    peaks = {}
    for name, (instruction, macs, exact) in INSTRUCTIONS.items():
        function = getattr(library, f"peak_{name}")
        function.argtypes, function.restype = (ctypes.c_long,), ctypes.c_double
        seconds = min(function(iterations) for _ in range(repeats))
        rate = iterations * REGISTERS / max(seconds, 1e-9)
        peaks[name] = Peak(name, instruction, macs, exact, rate)
    return peaks


@functools.lru_cache(maxsize=1)
def peaks_library() -> ctypes.CDLL:
    from ptqlib.deploy.c_runtime import compile_text

    library = ctypes.CDLL(str(compile_text(PEAKS_C, "peaks", ("-O1",))))
    library.time_calls.argtypes = (
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
    )  # fmt: skip
    library.time_calls.restype = ctypes.c_double
    return library


def seconds_per_call(model, pixels: torch.Tensor, calls: int) -> float:
    """Thread CPU seconds per call of ``model``'s C forward (a ``CModel``) on ``pixels``
    (uint8 ``[N, 28, 28]``), timed in C: the kernel without any Python around it."""
    inputs = model.inputs_of(pixels)
    out = torch.empty(len(pixels), model.outputs, dtype=model.input_dtype)
    seconds = peaks_library().time_calls(
        model.function_address, inputs.data_ptr(), out.data_ptr(), len(pixels), calls
    )
    return seconds / calls


def instruction_counts(library: str | Path) -> collections.Counter:
    """How often each mnemonic occurs in the disassembly of ``library`` (``objdump -d``)."""
    if shutil.which("objdump") is None:
        raise InputError("objdump not found (install binutils) to count instructions")
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(library)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    counts: collections.Counter = collections.Counter()
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip().endswith(":") and parts[1].strip():
            counts[parts[1].split()[0]] += 1
    return counts
