"""What an exported C model costs on a small device (notebook 10): flash, RAM, energy.

- **Flash** holds the constants: every array the header declares (weights, biases,
  multipliers, shifts, the input table), counted in bytes by :func:`flash_bytes`; the code
  adds a few kilobytes, depending on the compiler and the CPU.
- **RAM** holds the activations: the arena of the liveness plan (``ptqlib.deploy.c_memory``)
  that the forward function allocates, plus the caller's input and output. :func:`stack_usage`
  asks gcc what the generated code really takes (``-fstack-usage``, per function).
- **Energy** is estimated from operation and memory-access counts with the 45 nm figures of
  Horowitz (ISSCC 2014, "Computing's energy problem"): an estimate with its assumptions
  stated, not a measurement. :func:`rapl_joules` measures the CPU package where Linux
  exposes Intel/AMD RAPL counters (``/sys/class/powercap``); many VMs do not.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ptqlib.errors import InputError

C_TYPE_BYTES = {"int8_t": 1, "uint8_t": 1, "int32_t": 4, "float": 4}
DECLARED_ARRAY = re.compile(r"^extern const (int8_t|uint8_t|int32_t|float) \w+\[(\d+)\];", re.M)

# Two microcontroller classes as examples of budgets (real parts vary widely): a Cortex-M4
# class part with 256 KB flash and 64 KB RAM, a Cortex-M7 class part with 2 MB and 512 KB.
MICROCONTROLLERS = {
    "Cortex-M4 class (256 KB flash, 64 KB RAM)": (256 * 1024, 64 * 1024),
    "Cortex-M7 class (2 MB flash, 512 KB RAM)": (2 * 1024 * 1024, 512 * 1024),
}

# Horowitz, ISSCC 2014, 45 nm, picojoules per operation.
PJ_INT8_MULTIPLY, PJ_INT32_ADD = 0.2, 0.1
PJ_FP32_MULTIPLY, PJ_FP32_ADD = 3.7, 0.9
# A 64-bit read from an SRAM of at most this many bytes (the larger the array, the longer
# its wires): 8 KB ~10 pJ, 32 KB ~20 pJ, 1 MB ~100 pJ.
PJ_SRAM_64BIT_READ = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))
PJ_DRAM_64BIT_READ = 1300.0  # 1.3-2.6 nJ: the low end
RAPL_ROOT = Path("/sys/class/powercap")


def flash_bytes(directory: str | os.PathLike) -> int:
    """Bytes of all constant arrays that the exported header of ``directory`` declares."""
    headers = list(Path(directory).glob("*.h"))
    if len(headers) != 1:
        raise InputError(
            f"directory: expected one exported .h in {directory}, found {len(headers)}"
        )
    text = headers[0].read_text()
    return sum(C_TYPE_BYTES[ctype] * int(count) for ctype, count in DECLARED_ARRAY.findall(text))


def stack_usage(source: str | os.PathLike, flags: tuple[str, ...] = ("-O2",)) -> dict[str, int]:
    """``{function: bytes}``: the stack frame of every function of the C file ``source``,
    as gcc reports it (``-fstack-usage``) when compiling with ``flags``."""
    from ptqlib.deploy.c_runtime import find_compiler

    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="ptqlib-stack-") as scratch:
        objects = Path(scratch) / "model.o"
        command = [find_compiler(), "-std=c99", *flags, "-fstack-usage", "-c"]
        command += ["-I", str(source.parent), "-o", str(objects), str(source)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise InputError(f"{source}: the C compiler failed: {result.stderr[:300]}")
        report = objects.with_suffix(".su").read_text()
    return {name: int(size) for name, size in re.findall(r":(\w+)\t(\d+)\t", report)}


def sram_read_pj(array_bytes: int) -> float | None:
    """Picojoules per 64-bit read from the smallest SRAM class holding ``array_bytes``
    (None beyond 1 MB: the weights would not stay on chip)."""
    return next((pj for size, pj in PJ_SRAM_64BIT_READ if array_bytes <= size), None)


@dataclass(frozen=True)
class EnergyEstimate:
    """Picojoules per inference (batch 1) for arithmetic and weight reads; see
    :func:`estimate_energy` for the assumptions."""

    kind: str
    multiply_accumulates: int
    weight_bytes: int
    arithmetic_pj: float
    sram_pj: float | None
    dram_pj: float

    @property
    def on_chip_pj(self) -> float | None:
        """Arithmetic plus the weights read from on-chip SRAM (None if they do not fit)."""
        return None if self.sram_pj is None else self.arithmetic_pj + self.sram_pj


def estimate_energy(multiply_accumulates: int, weight_bytes: int, kind: str) -> EnergyEstimate:
    """The energy of one inference with ``multiply_accumulates`` and ``weight_bytes``.

    Assumptions: every weight is read once (batch 1), in 64-bit words, from an SRAM just
    large enough to hold them all (Horowitz: 10 pJ for 8 KB, 20 pJ for 32 KB, 100 pJ for
    1 MB) or, for comparison, from DRAM (1.3 nJ, the low end); each multiply-accumulate is
    one multiply and one add (INT8: int8 multiply 0.2 pJ + int32 add 0.1 pJ; FP32: 3.7 + 0.9
    pJ). Ignored: activations, requantization, instruction fetch and control, leakage. On a
    microcontroller the weights are read from flash, whose energy per read depends on the
    part and is not in Horowitz's table. 45 nm figures; newer processes are cheaper, the
    ratios roughly hold.
    """
    if kind not in ("int8", "fp32"):
        raise InputError(f"kind: expected 'int8' or 'fp32', got {kind!r}")
    words = weight_bytes / 8
    per_mac = PJ_INT8_MULTIPLY + PJ_INT32_ADD if kind == "int8" else PJ_FP32_MULTIPLY + PJ_FP32_ADD
    sram = sram_read_pj(weight_bytes)
    return EnergyEstimate(
        kind,
        multiply_accumulates,
        weight_bytes,
        multiply_accumulates * per_mac,
        None if sram is None else words * sram,
        words * PJ_DRAM_64BIT_READ,
    )


def rapl_counter() -> Path | None:
    """The package energy counter (microjoules) if Linux exposes RAPL here, else None."""
    for path in sorted(RAPL_ROOT.glob("*rapl:0/energy_uj")):
        if os.access(path, os.R_OK):
            return path
    return None


def rapl_joules(function: Callable[[], object], calls: int) -> float | None:
    """Joules per call of ``function`` measured by the RAPL package counter (the whole
    package: other processes count too), or None where there is no readable counter."""
    counter = rapl_counter()
    if counter is None:
        return None
    start, started = int(counter.read_text()), time.perf_counter()
    for _ in range(calls):
        function()
    used = int(counter.read_text()) - start
    if used < 0 or time.perf_counter() - started <= 0:  # the counter wrapped: no answer
        return None
    return used * 1e-6 / calls
