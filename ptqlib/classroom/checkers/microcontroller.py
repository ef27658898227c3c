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

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float, compare_integers, run_cases
from ptqlib.deploy.mcu.dsp_kernel import pack_weights_for_smlad
from ptqlib.deploy.mcu.memory import section_contents
from ptqlib.deploy.mcu.work import PowerFigure, energy_microjoules


def pack_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    cases = []
    for out_features, in_features, hint in (
        (4, 8, "packed[0, g, r, j] = weight[r, 4g + j]: the four rows' words of one group "
               "come one after the other"),
        (8, 4, "blocks of four rows: packed[b, 0, r, j] = weight[4b + r, j]"),
        (7, 13, "pad the rows to a multiple of 4 and the inputs to a multiple of 4 with zeros"),
        (1, 1, "one row and one input still fill a whole block and group (zeros elsewhere)"),
    ):  # fmt: skip
        weight = torch.randint(
            -128, 128, (out_features, in_features), dtype=torch.int8, generator=generator
        )
        cases.append(
            Case(
                f"a {out_features} x {in_features} int8 weight",
                (("weight", weight),),
                pack_weights_for_smlad(weight),
                hint,
            )
        )
    return cases


def check_pack_for_smlad(student_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Check ``student_fn(weight) -> packed`` against ptqlib's packing for SMLAD."""
    run_cases("check_pack_for_smlad", student_fn, pack_cases(), compare_integers)


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


def check_map_constants(student_fn: Callable[[str], dict[str, int]]) -> None:
    """Check ``student_fn(map_text) -> {array: bytes}`` for the ``.rodata`` section."""
    cases = [
        Case(
            "the map of the portable-C firmware",
            (("map_text", MAP_PLAIN),),
            section_contents(MAP_PLAIN, ".rodata"),
            "take only the input sections under .rodata; a name too long for its column "
            "continues on the next line (address, then size in hex: int(size, 16)); skip *fill*",
        ),
        Case(
            "the map of the DSP firmware",
            (("map_text", MAP_DSP),),
            section_contents(MAP_DSP, ".rodata"),
            "the array's name is what follows '.rodata.' in the input section's name",
        ),
    ]
    run_cases("check_map_constants", student_fn, cases, compare_sizes)


def compare_microjoules(case: Case, got: Any) -> None:
    got = as_float(got, "the energy in µJ")
    if abs(got - case.expected) > 1e-9 * max(1.0, abs(case.expected)):
        raise WrongAnswer(f"expected {case.expected:.6g} µJ, got {got:.6g}")


def check_energy_per_inference(student_fn: Callable[[float, float, float], float]) -> None:
    """Check ``student_fn(cycles, microamps_per_mhz, volts) -> µJ``."""
    cases = [
        Case(
            f"{cycles:,} cycles at {current} µA/MHz and {volts} V",
            (("cycles", cycles), ("microamps_per_mhz", current), ("volts", volts)),
            energy_microjoules(cycles, PowerFigure("a part", current, volts, "")),
            hint,
        )
        for cycles, current, volts, hint in (
            (1_000_000, 1.0, 1.0, "1 µA per MHz is 1 µA for a million cycles per second: "
                                  "1e-6 A x 1e-6 s per cycle = 1 pC per cycle"),
            (250_000, 79.0, 3.3, "energy = charge x voltage: cycles x (µA/MHz) x V picojoules"),
            (81, 28.0, 1.8, "the answer is in microjoules: 1 µJ = 1e6 pJ"),
        )
    ]  # fmt: skip
    run_cases("check_energy_per_inference", student_fn, cases, compare_microjoules)
