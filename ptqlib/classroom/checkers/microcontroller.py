"""Known-answer checkers for notebook 11: weights packed for SMLAD, the map file, energy.

    from ptqlib.classroom.checkers.microcontroller import (
        check_pack_for_smlad, check_map_constants, check_energy_per_inference)

- :func:`check_pack_for_smlad`: ``(weight) -> packed``, an int8 ``[out, in]`` matrix as
  ``[blocks, groups, 4 rows, 4 weights]`` with ``packed[b, g, r, j] = weight[4b + r, 4g + j]``,
  zero-padded (``ptqlib.deploy.mcu.dsp_kernel.pack_weights_for_smlad``);
- :func:`check_map_constants`: ``(map_text) -> {array: bytes}``, the bytes of every array in
  the ``.rodata`` output section of a GNU ld map file (``ptqlib.deploy.mcu.memory``);
- :func:`check_energy_per_inference`: ``(cycles, microamps_per_mhz, volts) -> µJ``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float, compare_integers
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.deploy.mcu.dsp_kernel import pack_weights_for_smlad
from ptqlib.deploy.mcu.memory import section_contents
from ptqlib.deploy.mcu.work import PowerFigure, energy_microjoules


def _pack_case(weight: torch.Tensor, hint: str) -> Case:
    rows, columns = weight.shape
    return Case(
        f"a {rows} x {columns} int8 weight",
        (("weight", weight),),
        pack_weights_for_smlad(weight),
        hint,
    )


def pack_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    shapes_and_hints = (
        (4, 8, "packed[0, g, r, j] = weight[r, 4g + j]: the four rows' words of one group "
               "come one after the other"),
        (8, 4, "blocks of four rows: packed[b, 0, r, j] = weight[4b + r, j]"),
        (7, 13, "pad the rows to a multiple of 4 and the inputs to a multiple of 4 with zeros"),
        (1, 1, "one row and one input still fill a whole block and group (zeros elsewhere)"),
    )  # fmt: skip
    return [
        _pack_case(
            torch.randint(-128, 128, (rows, columns), dtype=torch.int8, generator=generator), hint
        )
        for rows, columns, hint in shapes_and_hints
    ]


def draw_pack_cases(generator: torch.Generator) -> list[Case]:
    """Random int8 weights of random shapes, ragged in both dimensions."""
    cases = []
    for _ in range(3):
        rows, columns = torch.randint(1, 20, (2,), generator=generator).tolist()
        weight = torch.randint(-128, 128, (rows, columns), dtype=torch.int8, generator=generator)
        cases.append(
            _pack_case(weight, "packed[b, g, r, j] = weight[4b + r, 4g + j], zeros past the edges")
        )
    return cases


def check_pack_for_smlad(student_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Check ``student_fn(weight) -> packed`` against ptqlib's packing for SMLAD."""
    run_exercise(PACK_FOR_SMLAD, student_fn)


# Two excerpts of the map file of a real SimpleNet firmware (object files renamed): input
# sections whose names wrap to the next line, fill between them, and the same kind of
# sections under .text and .bss, which are not constants.
MAP_PLAIN = """\
Linker script and memory map

.text           0x00000000      0x4dc
 *(.vectors)
 .vectors       0x00000000       0x40 startup.o
 *(.text*)
 .text.startup.main
                0x00000040      0x13c firmware.o
                0x00000040                main
 .text.simplenet_int8_forward
                0x00000274      0x268 simplenet_int8.o
                0x00000274                simplenet_int8_forward

.rodata         0x000004dc    0x1b378
 *(.rodata*)
 .rodata.main.str1.4
                0x000004dc       0x57 firmware.o
 *fill*         0x00000533        0x1
 .rodata.simplenet_int8_fc3_requantization
                0x0000057c       0x14 simplenet_int8.o
 .rodata.simplenet_int8_fc3_shift
                0x000005b8        0xa simplenet_int8.o
                0x000005b8                simplenet_int8_fc3_shift
 *fill*         0x000005c2        0x2
 .rodata.simplenet_int8_fc3_bias
                0x000005ec       0x28 simplenet_int8.o
                0x000005ec                simplenet_int8_fc3_bias
 .rodata.simplenet_int8_fc3_weight
                0x00000614      0x280 simplenet_int8.o
                0x00000614                simplenet_int8_fc3_weight
 .rodata.simplenet_int8_fc2_weight
                0x00000ad4     0x2000 simplenet_int8.o
                0x00000ad4                simplenet_int8_fc2_weight
 .rodata.simplenet_int8_fc1_weight
                0x00002f74    0x18800 simplenet_int8.o
                0x00002f74                simplenet_int8_fc1_weight
                0x0001b854                        . = ALIGN (0x4)

.bss            0x20000c24      0x31c load address 0x0001b878
 *(.bss*)
 .bss.output.0  0x20000c24        0xa firmware.o
 .bss.input.1   0x20000c30      0x310 firmware.o
"""

MAP_DSP = """\
Linker script and memory map

.text           0x00000000      0x5f0
 .text.linear_layer_dsp.constprop.0
                0x00000304      0x1f8 simplenet_int8_dsp.o

.rodata         0x000005f0    0x1b3bc
 *(.rodata*)
 .rodata.simplenet_int8_fc3_packed
                0x00000a2c      0x300 simplenet_int8_dsp.o
 .rodata.simplenet_int8_fc2_packed
                0x00000d2c     0x2000 simplenet_int8_dsp.o
 .rodata.simplenet_int8_fc1_packed
                0x00002d2c    0x18800 simplenet_int8_dsp.o
 .rodata.simplenet_int8_fc1_bias
                0x0001b52c      0x200 simplenet_int8.o
                0x0001b52c                simplenet_int8_fc1_bias

.bss            0x20000c24      0x940
 .bss.input_pairs
                0x20000c24      0x620 simplenet_int8_dsp.o
"""


def compare_sizes(case: Case, got: Any) -> None:
    if not isinstance(got, dict):
        raise WrongAnswer(f"your function should return a dict {{array: bytes}}, got {got!r:.60}")
    # Everything after ".rodata." is a name too: ".rodata.main.str1.4" (the strings of main)
    # may be called "main.str1.4" or, as ptqlib's map reader does, "main".
    named: dict[str, Any] = {}
    for name, size in got.items():
        key = name if name in case.expected or not isinstance(name, str) else name.split(".")[0]
        named[key] = named[key] + size if key in named else size
    got = named
    missing = sorted(set(case.expected) - set(got))
    extra = sorted(set(got) - set(case.expected))
    if missing or extra:
        raise WrongAnswer(f"missing arrays {missing}, unexpected {extra}")
    for name, size in case.expected.items():
        if got[name] != size:
            raise WrongAnswer(f"{name}: expected {size} bytes, got {got[name]!r}")


MAP_HINTS = (
    "take only the input sections under .rodata; a name too long for its column continues "
    "on the next line (address, then size in hex: int(size, 16)); skip *fill*",
    "the array's name is what follows '.rodata.' in the input section's name",
)


def _map_case(what: str, map_text: str, hint: str) -> Case:
    return Case(what, (("map_text", map_text),), section_contents(map_text, ".rodata"), hint)


def map_cases() -> list[Case]:
    return [
        _map_case("the map of the portable-C firmware", MAP_PLAIN, MAP_HINTS[0]),
        _map_case("the map of the DSP firmware", MAP_DSP, MAP_HINTS[1]),
    ]


def _redrawn(map_text: str, prefix: str, generator: torch.Generator) -> str:
    """The map with the model's name replaced and every input section given a random size
    (right-aligned in the same columns)."""

    def new_size(match: re.Match) -> str:
        size = hex(int(torch.randint(1, 2**17, (), generator=generator)))
        return match.group(1) + size.rjust(len(match.group(2))) + match.group(3)

    map_text = map_text.replace("simplenet_int8", prefix)
    return re.sub(r"(\s0x[0-9a-f]{8})(\s+0x[0-9a-f]+)( \S+\.o\n)", new_size, map_text)


def draw_map_cases(generator: torch.Generator) -> list[Case]:
    """Both maps with another model name and random sizes."""
    prefix = f"model{int(torch.randint(0, 1000, (), generator=generator))}_int8"
    return [
        _map_case(
            "a portable-C firmware's map", _redrawn(MAP_PLAIN, prefix, generator), MAP_HINTS[0]
        ),
        _map_case("a DSP firmware's map", _redrawn(MAP_DSP, prefix, generator), MAP_HINTS[1]),
    ]


def check_map_constants(student_fn: Callable[[str], dict[str, int]]) -> None:
    """Check ``student_fn(map_text) -> {array: bytes}`` for the ``.rodata`` section."""
    run_exercise(MAP_CONSTANTS, student_fn)


def compare_microjoules(case: Case, got: Any) -> None:
    got = as_float(got, "the energy in µJ")
    if not abs(got - case.expected) <= 1e-9 * max(1.0, abs(case.expected)):  # NaN fails
        raise WrongAnswer(f"expected {case.expected:.6g} µJ, got {got:.6g}")


def _energy_case(cycles: int, current: float, volts: float, hint: str) -> Case:
    return Case(
        f"{cycles:,} cycles at {current} µA/MHz and {volts} V",
        (("cycles", cycles), ("microamps_per_mhz", current), ("volts", volts)),
        energy_microjoules(cycles, PowerFigure("a part", current, volts, "")),
        hint,
    )


def energy_cases() -> list[Case]:
    return [
        _energy_case(1_000_000, 1.0, 1.0, "1 µA per MHz is 1 µA for a million cycles per "
                     "second: 1e-6 A x 1e-6 s per cycle = 1 pC per cycle"),
        _energy_case(250_000, 79.0, 3.3, "energy = charge x voltage: cycles x (µA/MHz) x V "
                     "picojoules"),
        _energy_case(81, 28.0, 1.8, "the answer is in microjoules: 1 µJ = 1e6 pJ"),
    ]  # fmt: skip


def draw_energy_cases(generator: torch.Generator) -> list[Case]:
    """Random cycle counts, currents (1-300 µA/MHz) and supplies (1.2-3.6 V)."""
    cases = []
    for _ in range(3):
        cycles = int(torch.randint(1, 50_000_000, (), generator=generator))
        current = round(float(torch.empty(()).uniform_(1, 300, generator=generator)), 1)
        volts = round(float(torch.empty(()).uniform_(1.2, 3.6, generator=generator)), 2)
        cases.append(_energy_case(cycles, current, volts, "cycles x (µA/MHz) x V pJ, in µJ"))
    return cases


def check_energy_per_inference(student_fn: Callable[[float, float, float], float]) -> None:
    """Check ``student_fn(cycles, microamps_per_mhz, volts) -> µJ``."""
    run_exercise(ENERGY_PER_INFERENCE, student_fn)


NOTEBOOK = "11_on_a_microcontroller"
PACK_FOR_SMLAD = Exercise(
    id="pack_for_smlad",
    notebook=NOTEBOOK,
    function="pack",
    cases=pack_cases,
    draw=draw_pack_cases,
    compare=compare_integers,
    answers=("ptqlib.deploy.mcu.dsp_kernel.pack_weights_for_smlad",),
)
MAP_CONSTANTS = Exercise(
    id="map_constants",
    notebook=NOTEBOOK,
    function="constants",
    cases=map_cases,
    draw=draw_map_cases,
    compare=compare_sizes,
    answers=("ptqlib.deploy.mcu.memory.section_contents", "ptqlib.deploy.mcu.memory.map_entries"),
)
ENERGY_PER_INFERENCE = Exercise(
    id="energy_per_inference",
    notebook=NOTEBOOK,
    function="energy",
    cases=energy_cases,
    draw=draw_energy_cases,
    compare=compare_microjoules,
    answers=("ptqlib.deploy.mcu.work.energy_microjoules",),
)
