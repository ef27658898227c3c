"""The Cortex-M cores ptqlib builds for, the QEMU boards that emulate them, and the memory
budgets of real parts (notebook 11).

A **target** is a core: the compiler flags that select its instructions and floating-point
unit, and the QEMU machine that runs them (Arm's MPS2 FPGA boards: ``mps2-an386`` is a
Cortex-M4 with FPU, ``mps2-an500`` a Cortex-M7). QEMU gives both boards 4 MB of flash-like
memory at 0x00000000 and 4 MB of RAM at 0x20000000, more than any small part has.

A **part** is a real chip with that core: its flash and RAM sizes become the linker
script's ``MEMORY`` regions, so the linker (not a formula) says whether a model fits. The
sizes are the datasheets', cited in :data:`PARTS`. Flash sits at 0x00000000 in our memory
map, where the MPS2 boards have it; on an STM32 it is at 0x08000000 (aliased at 0), which
changes no size.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptqlib.errors import InputError

KB = 1024


@dataclass(frozen=True)
class Target:
    """A Cortex-M core as the compiler and QEMU see it."""

    name: str
    compiler_flags: tuple[str, ...]
    qemu_machine: str
    description: str


TARGETS = {
    "cortex-m4": Target(
        "cortex-m4",
        ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
        "mps2-an386",
        "Arm Cortex-M4 with single-precision FPU and DSP instructions (QEMU mps2-an386)",
    ),
    "cortex-m7": Target(
        "cortex-m7",
        ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
        "mps2-an500",
        "Arm Cortex-M7 with double-precision FPU and DSP instructions (QEMU mps2-an500)",
    ),
}


@dataclass(frozen=True)
class Part:
    """A microcontroller: its core, memory, clock, and where those numbers come from."""

    name: str
    target: str
    flash_bytes: int
    ram_bytes: int
    clock_mhz: int
    source: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.flash_bytes // KB} KB flash, {self.ram_bytes // KB} KB RAM)"


PARTS = {
    "stm32l412kb": Part(
        "stm32l412kb", "cortex-m4", 128 * KB, 40 * KB, 80,
        "ST DS12469 Rev 7 (STM32L412xx datasheet), features: 128 KB flash, 40 KB SRAM, "
        "Cortex-M4 with FPU up to 80 MHz",
    ),
    "stm32l431kc": Part(
        "stm32l431kc", "cortex-m4", 256 * KB, 64 * KB, 80,
        "ST DS11453 Rev 3 (STM32L431xx datasheet), features: up to 256 KB flash, 64 KB "
        "SRAM, Cortex-M4 with FPU up to 80 MHz",
    ),
    "nrf52840": Part(
        "nrf52840", "cortex-m4", 1024 * KB, 256 * KB, 64,
        "Nordic nRF52840 Product Specification: 1 MB flash, 256 KB RAM, Cortex-M4 with "
        "FPU at 64 MHz",
    ),
    "stm32f767zi": Part(
        "stm32f767zi", "cortex-m7", 2048 * KB, 512 * KB, 216,
        "ST RM0410 (STM32F76xxx/77xxx reference manual), section 2.1: 2 MB flash; "
        "DTCM 128 KB + SRAM1 368 KB + SRAM2 16 KB = 512 KB RAM; Cortex-M7 up to 216 MHz",
    ),
}  # fmt: skip

DEFAULT_PARTS = {"cortex-m4": "stm32l412kb", "cortex-m7": "stm32f767zi"}


def target_named(name: str) -> Target:
    if name not in TARGETS:
        raise InputError(f"target: expected one of {', '.join(TARGETS)}, got {name!r}")
    return TARGETS[name]


def part_named(name: str | None, target: Target) -> Part:
    """The part ``name`` (default: the target's smallest listed part), which must have the
    target's core."""
    name = name or DEFAULT_PARTS[target.name]
    if name not in PARTS:
        raise InputError(f"part: expected one of {', '.join(PARTS)}, got {name!r}")
    part = PARTS[name]
    if part.target != target.name:
        raise InputError(
            f"part: {name} is a {part.target} part, not a {target.name} one; the "
            f"{target.name} parts are "
            + ", ".join(p.name for p in PARTS.values() if p.target == target.name)
        )
    return part
