"""Work per inference: instructions counted in QEMU, then cycle and energy *estimates*
(notebook 11).

**Instructions, measured.** With ``-icount shift=0`` QEMU advances its virtual clock by one
nanosecond per instruction executed, and SysTick counts that clock (25 MHz on mps2-an386:
one tick per 40 instructions). The firmware reads SysTick around each inference and times a
loop of a known number of instructions to check the ratio. QEMU does not model the
pipeline, wait states or caches: these are **instructions, not cycles**. SysTick is a 24-bit
down-counter: the difference of two readings is right for an inference of fewer than 2^24
ticks (671 million instructions here; SmallCNN takes 16 million), and a longer one would
be undercounted by a multiple of 2^24 ticks.

**Cycles, estimated.** Arm's Cortex-M4 Technical Reference Manual (r0p1, Table 3-1 and the
FPU's Table 7-1) gives each instruction's cycles with zero wait states: most take 1; a load
2 (1 when it follows another single load or store: they pipeline); LDRD 3; LDM 1 + N; a
taken branch 1 + P where P, the pipeline refill, is 1 to 3 (we take 2); VMLA/VFMA 3;
VLDR/VSTR 2. :func:`hot_loop` finds the innermost loop that does the multiply-accumulates
in the disassembly and :func:`loop_estimate` prices it. The whole inference is estimated as
its measured instructions times that loop's cycles per instruction. Real parts add flash
wait states (an STM32L4 at 80 MHz reads flash with 4, hidden by its ART accelerator for
code, not for streamed weights): an estimate, at best a lower bound.

**Energy, estimated.** A datasheet's run-mode current per MHz at a supply voltage is the
charge per cycle: energy per cycle = (µA/MHz) x V, e.g. 79 µA/MHz at 3.3 V = 261 pJ.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ptqlib.deploy.mcu import tools
from ptqlib.errors import InputError

BRANCH_REFILL = 2  # P in the TRM's "1 + P": 1 to 3 cycles
SINGLE_LOADS_STORES = {"ldr", "ldrb", "ldrh", "ldrsb", "ldrsh", "str", "strb", "strh"}
FIXED_CYCLES = {  # Cortex-M4 TRM r0p1, Tables 3-1 and 7-1 (zero wait states)
    "ldrd": 3, "strd": 3, "vldr": 2, "vstr": 2, "vmla": 3, "vmls": 3, "vnmla": 3,
    "vfma": 3, "vfms": 3, "vdiv": 14, "vsqrt": 14, "sdiv": 12, "udiv": 12,
}  # fmt: skip
MULTIPLE = {"ldm", "ldmia", "stm", "stmia", "stmdb", "push", "pop", "vldmia", "vstmia",
            "vldm", "vstm", "vpush", "vpop"}  # fmt: skip
# Multiply-accumulates done by one instruction.
MACS = {"smlad": 2, "smladx": 2, "smlabb": 1, "smlabt": 1, "smlatb": 1, "smlatt": 1,
        "mla": 1, "vmla": 1, "vfma": 1, "vmul": 1}  # fmt: skip
INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s+([a-z][\w.]*)\s*(.*)$")


def instructions_per_tick(report: dict[str, int]) -> float:
    """Instructions per SysTick tick, from the firmware's calibration loop."""
    if report["calibration_ticks"] <= 0:
        raise InputError("report: the calibration loop took no tick; was QEMU run with -icount?")
    return report["calibration_instructions"] / report["calibration_ticks"]


def instructions_per_inference(report: dict[str, int]) -> float:
    """The mean instructions of one inference (± one tick's worth)."""
    ticks = report["ticks_low"] + (report["ticks_high"] << 32)
    return ticks / report["images"] * instructions_per_tick(report)


@dataclass(frozen=True)
class Instruction:
    address: int
    mnemonic: str  # without width and condition suffixes: "ldr", "smlad", "vmul"
    text: str  # as objdump prints it

    @property
    def register_count(self) -> int:
        """The registers in a ``{...}`` list (LDM, PUSH, VLDM...)."""
        inside = self.text[self.text.find("{") + 1 : self.text.find("}")]
        count = 0
        for part in inside.split(","):
            bounds = re.findall(r"\d+", part)
            count += int(bounds[1]) - int(bounds[0]) + 1 if "-" in part else 1
        return count


def base_mnemonic(mnemonic: str) -> str:
    """``ldr.w`` -> ``ldr``, ``vmul.f32`` -> ``vmul``, ``bne.n`` -> ``bne``."""
    return mnemonic.split(".")[0]


def disassemble(elf: str | Path) -> list[Instruction]:
    """Every instruction of ``elf``'s code, in address order."""
    tools.require_tools(tools.OBJDUMP)
    result = subprocess.run(
        [tools.OBJDUMP, "-d", "--no-show-raw-insn", str(elf)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    instructions = []
    for line in result.stdout.splitlines():
        match = INSTRUCTION.match(line)
        if match and match.group(2) != ".word":
            text = f"{match.group(2)} {match.group(3)}".strip()
            instructions.append(
                Instruction(int(match.group(1), 16), base_mnemonic(match.group(2)), text)
            )
    return instructions


def is_branch(instruction: Instruction) -> bool:
    return instruction.mnemonic in ("b", "bne", "beq", "bgt", "bge", "blt", "ble", "bhi", "bcc",
                                    "bcs", "bls", "bmi", "bpl")  # fmt: skip


def branch_target(instruction: Instruction) -> int:
    return int(instruction.text.split()[1], 16)


def macs_of(instructions: list[Instruction]) -> int:
    return sum(MACS.get(instruction.mnemonic, 0) for instruction in instructions)


def hot_loop(instructions: list[Instruction]) -> list[Instruction]:
    """The innermost loop (a backward branch with no other backward branch inside) that does
    the most multiply-accumulates per pass: a kernel's inner loop."""
    loops = []
    for index, branch in enumerate(instructions):
        if is_branch(branch) and branch_target(branch) < branch.address:
            body = [i for i in instructions[: index + 1] if i.address >= branch_target(branch)]
            inner = [i for i in body[:-1] if is_branch(i) and branch_target(i) < i.address]
            if not inner and macs_of(body):
                loops.append(body)
    if not loops:
        raise InputError("no loop with multiply-accumulate instructions in this firmware")
    return max(loops, key=macs_of)


def instruction_cycles(instruction: Instruction, previous: Instruction | None) -> int:
    """Cycles of one instruction by the Cortex-M4 TRM, in a loop (its branch taken)."""
    name = instruction.mnemonic
    if name in SINGLE_LOADS_STORES:
        pipelined = previous is not None and previous.mnemonic in SINGLE_LOADS_STORES
        return 1 if pipelined else 2
    if name in MULTIPLE:
        return 1 + instruction.register_count
    if is_branch(instruction):
        return 1 + BRANCH_REFILL
    return FIXED_CYCLES.get(name, 1)


@dataclass(frozen=True)
class LoopEstimate:
    """One pass of a hot loop: instructions, estimated cycles, multiply-accumulates."""

    instructions: list[Instruction]
    cycles: int
    macs: int

    @property
    def instructions_per_mac(self) -> float:
        return len(self.instructions) / self.macs

    @property
    def cycles_per_mac(self) -> float:
        return self.cycles / self.macs

    @property
    def cycles_per_instruction(self) -> float:
        return self.cycles / len(self.instructions)


def loop_estimate(loop: list[Instruction]) -> LoopEstimate:
    """Price one pass of ``loop`` with the TRM's cycle counts."""
    cycles = sum(
        instruction_cycles(instruction, loop[index - 1] if index else loop[-1])
        for index, instruction in enumerate(loop)
    )
    return LoopEstimate(loop, cycles, macs_of(loop))


@dataclass(frozen=True)
class PowerFigure:
    """A datasheet's run-mode current per MHz at a supply voltage."""

    part: str
    microamps_per_mhz: float
    volts: float
    source: str

    @property
    def picojoules_per_cycle(self) -> float:
        """(µA/MHz) x V: the charge per cycle times the voltage, in pJ."""
        return self.microamps_per_mhz * self.volts


POWER_FIGURES = {
    "ldo": PowerFigure(
        "STM32L412", 79.0, 3.3,
        "ST DS12469 Rev 7, features: 79 µA/MHz run mode (internal LDO), taken at a 3.3 V supply",
    ),
    "smps": PowerFigure(
        "STM32L412", 28.0, 3.3,
        "ST DS12469 Rev 7, features: 28 µA/MHz run mode at 3.3 V with an external SMPS",
    ),
}  # fmt: skip


def energy_microjoules(cycles: float, figure: PowerFigure) -> float:
    """The energy of ``cycles`` processor cycles on ``figure``'s part, in µJ (an estimate:
    the datasheet's figure is for its own benchmark code, not ours)."""
    return cycles * figure.picojoules_per_cycle * 1e-6
