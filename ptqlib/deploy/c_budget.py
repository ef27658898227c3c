"""What an exported C model costs on a small device (notebook 10): flash, RAM, energy.

- **Flash** holds the constants: every ``static const`` array of the header (weights,
  biases, multipliers, shifts, the input table), counted in bytes by :func:`flash_bytes`.
- **RAM** holds the activations. Layer by layer, only a layer's input and its output are
  alive, so the smallest working memory (the *arena*, as TFLite Micro calls it) is the
  largest pair of neighbouring activation buffers: ``max_i (n_i + n_(i+1)) * bytes``
  (:func:`arena_bytes`). The C keeps them in locals of the forward function.
- **Energy** is estimated from operation and memory-access counts with the 45 nm figures of
  Horowitz (ISSCC 2014, "Computing's energy problem"): an estimate with its assumptions
  stated, not a measurement. :func:`rapl_joules` measures the CPU package where Linux
  exposes Intel/AMD RAPL counters (``/sys/class/powercap``); many VMs do not.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ptqlib.errors import InputError

C_TYPE_BYTES = {"int8_t": 1, "uint8_t": 1, "int32_t": 4, "float": 4}
# A constant array as the header declares it: "extern const int8_t name[n]" (or, in exports
# before the constants moved to the .c, "static const ...").
CONST_ARRAY = re.compile(r"(?:static|extern) const (int8_t|uint8_t|int32_t|float) \w+\[(\d+)\]")

# Two microcontroller classes as examples of budgets (real parts vary widely): a Cortex-M4
# class part with 256 KB flash and 64 KB RAM, a Cortex-M7 class part with 2 MB and 512 KB.
MICROCONTROLLERS = {
    "Cortex-M4 class (e.g. 256 KB flash, 64 KB RAM)": (256 * 1024, 64 * 1024),
    "Cortex-M7 class (e.g. 2 MB flash, 512 KB RAM)": (2 * 1024 * 1024, 512 * 1024),
}

# Horowitz, ISSCC 2014, 45 nm, picojoules per operation.
PJ_INT8_MULTIPLY, PJ_INT32_ADD = 0.2, 0.1
PJ_FP32_MULTIPLY, PJ_FP32_ADD = 3.7, 0.9
PJ_SRAM_64BIT_READ = 10.0  # an 8 KB SRAM; larger arrays cost more (1 MB: ~100 pJ)
PJ_DRAM_64BIT_READ = 1300.0  # 1.3-2.6 nJ: the low end
RAPL_ROOT = Path("/sys/class/powercap")


def flash_bytes(directory: str | os.PathLike) -> int:
    """Bytes of all constant arrays the exported header of ``directory`` declares."""
    headers = list(Path(directory).glob("*.h"))
    if len(headers) != 1:
        raise InputError(
            f"directory: expected one exported .h in {directory}, found {len(headers)}"
        )
    text = headers[0].read_text()
    return sum(C_TYPE_BYTES[ctype] * int(count) for ctype, count in CONST_ARRAY.findall(text))


def arena_bytes(sizes: list[int], element_bytes: int) -> int:
    """The largest pair of neighbouring activation buffers, in bytes: ``sizes`` are the
    feature counts from input to output (SimpleNet: 784, 128, 64, 10), ``element_bytes`` 1
    for uint8 activations, 4 for float32."""
    if len(sizes) < 2 or element_bytes < 1:
        raise InputError(f"sizes: expected at least an input and an output size, got {sizes}")
    return max(a + b for a, b in zip(sizes[:-1], sizes[1:], strict=True)) * element_bytes


@dataclass(frozen=True)
class EnergyEstimate:
    """Picojoules per inference (batch 1) for arithmetic and weight reads; see
    :func:`estimate_energy` for the assumptions."""

    kind: str
    multiply_accumulates: int
    arithmetic_pj: float
    sram_pj: float
    dram_pj: float

    @property
    def on_chip_pj(self) -> float:
        """Arithmetic plus weights read from on-chip SRAM (a microcontroller's case)."""
        return self.arithmetic_pj + self.sram_pj


def estimate_energy(sizes: list[int], kind: str) -> EnergyEstimate:
    """The energy of one inference of a chain of Linear layers with ``sizes`` features.

    Assumptions: every weight is read once (batch 1), in 64-bit words, from an 8 KB-class
    SRAM (10 pJ) or, for comparison, from DRAM (1.3 nJ, the low end); each multiply-
    accumulate is one multiply and one add (INT8: int8 multiply 0.2 pJ + int32 add 0.1 pJ;
    FP32: 3.7 + 0.9 pJ). Ignored: activations (a few hundred bytes), requantization (one
    per output), instruction fetch and control, leakage. 45 nm figures; newer processes
    are cheaper, the ratios roughly hold.
    """
    if kind not in ("int8", "fp32"):
        raise InputError(f"kind: expected 'int8' or 'fp32', got {kind!r}")
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    weight_bytes = macs * (1 if kind == "int8" else 4)
    words = weight_bytes / 8
    per_mac = PJ_INT8_MULTIPLY + PJ_INT32_ADD if kind == "int8" else PJ_FP32_MULTIPLY + PJ_FP32_ADD
    return EnergyEstimate(
        kind, macs, macs * per_mac, words * PJ_SRAM_64BIT_READ, words * PJ_DRAM_64BIT_READ
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
