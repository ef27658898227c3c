"""Known-answer checkers for notebook 10: the requantization in C, and the arena size.

    from ptqlib.classroom.checkers.c_export import check_requantize_c, check_arena_bytes

- :func:`check_requantize_c`: your C function (a string, or a Python function returning
  it) ``int32_t requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t
  zero_point, int32_t lowest, int32_t highest)`` is compiled with the system C compiler and
  run against ptqlib's ``requantize`` on edge cases: exact ties, negative ties, the int32
  extremes, large shifts, both ends of the clamp;
- :func:`check_arena_bytes`: ``(sizes, element_bytes) -> bytes``, the largest pair of
  neighbouring activation buffers.
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ptqlib.classroom.checkers.core import (
    Case,
    WrongAnswer,
    as_integer,
    compare_integers,
)
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.deploy.c_budget import arena_bytes
from ptqlib.deploy.c_runtime import find_compiler
from ptqlib.integer_arithmetic import requantize

REFERENCE_REQUANTIZE_C = """\
int32_t requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t zero_point,
                   int32_t lowest, int32_t highest)
{
    const int64_t scaled = (int64_t)acc * (int64_t)multiplier;
    int64_t q = ((scaled + ((int64_t)1 << (shift - 1))) >> shift) + zero_point;
    if (q < lowest) q = lowest;
    if (q > highest) q = highest;
    return (int32_t)q;
}
"""

# Calls the student's function on arrays, so one ctypes call checks a whole case.
DRIVER_C = """
void run_cases(const int32_t *acc, int32_t count, int32_t multiplier, int32_t shift,
               int32_t zero_point, int32_t lowest, int32_t highest, int32_t *out)
{
    for (int32_t i = 0; i < count; i++)
        out[i] = requantize(acc[i], multiplier, shift, zero_point, lowest, highest);
}
"""


def compile_requantize(source: str) -> Callable[..., torch.Tensor]:
    """The C ``requantize`` in ``source`` as a Python function on an int32 tensor."""
    with tempfile.TemporaryDirectory(prefix="ptqlib-check-") as scratch:
        path = Path(scratch) / "requantize.c"
        path.write_text("#include <stdint.h>\n" + source + DRIVER_C)
        library = Path(scratch) / "requantize.so"
        command = [
            find_compiler(),
            "-std=c99",
            "-O2",
            "-shared",
            "-fPIC",
            "-o",
            str(library),
            str(path),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(
                "check_requantize_c: your C does not compile:\n" + result.stderr.strip()[:1500]
            )
        loaded = ctypes.CDLL(str(library))  # stays mapped after the file is removed
    run = loaded.run_cases
    run.argtypes = (ctypes.c_void_p, ctypes.c_int32, *[ctypes.c_int32] * 5, ctypes.c_void_p)

    def call(acc, multiplier, shift, zero_point, lowest, highest) -> torch.Tensor:
        acc = acc.to(torch.int32).contiguous()
        out = torch.empty_like(acc)
        run(
            acc.data_ptr(), len(acc), multiplier, shift, zero_point, lowest, highest, out.data_ptr()
        )
        return out.to(torch.int64)

    return call


def requantize_cases() -> list[Case]:
    big, small = 2**31 - 1, -(2**31)
    ties = torch.tensor([1, 3, 5, -1, -3, -5, 0, 2, -2])  # M = 0.5: odd values are ties
    extremes = torch.tensor([big, small, big - 1, small + 1, 0, 1, -1])
    generator = torch.Generator().manual_seed(0)
    random = torch.randint(-(2**24), 2**24, (50,), generator=generator)
    settings = [
        (
            "M = 0.5 (M0 = 2^30, n = 31): ties round upwards, also below zero",
            ties,
            2**30,
            31,
            0,
            -1000,
            1000,
            "add 2^(n-1) before shifting: (x + 2^(n-1)) >> n; -1.5 rounds to -1, not -2",
        ),
        (
            "int32 extremes: acc * M0 needs 62 bits",
            extremes,
            2**31 - 1,
            40,
            3,
            -(2**20),
            2**20,
            "multiply in int64: (int64_t)acc * multiplier; an int32 product overflows",
        ),
        (
            "a large shift (n = 62)",
            extremes,
            2**30 + 12345,
            62,
            0,
            -5,
            5,
            "shift an int64: (int64_t)1 << (shift - 1); 1 << 61 overflows an int",
        ),
        (
            "uint8 output with zero-point 77, clamped to 0..255",
            random,
            1518500250,
            38,
            77,
            0,
            255,
            "add the zero-point after rounding, then clamp to [lowest, highest]",
        ),
        (
            "a fused ReLU: lowest = zero-point",
            random,
            1518500250,
            37,
            20,
            20,
            255,
            "clamp below at lowest (= Z_y for a ReLU), above at highest",
        ),
    ]
    return [_requantize_case(*row) for row in settings]


def _requantize_case(
    name: str,
    acc: torch.Tensor,
    multiplier: int,
    shift: int,
    zero_point: int,
    lowest: int,
    highest: int,
    hint: str,
) -> Case:
    expected = requantize(acc, multiplier, shift, zero_point, lowest, highest)
    arguments = (
        ("acc", acc.to(torch.int32)),
        ("multiplier", multiplier),
        ("shift", shift),
        ("zero_point", zero_point),
        ("lowest", lowest),
        ("highest", highest),
    )
    return Case(name, arguments, expected, hint)


def draw_requantize_cases(generator: torch.Generator) -> list[Case]:
    """Random accumulators (the int32 extremes among them), multipliers, shifts, zero-points
    and clamps."""
    hint = (
        "(int64_t)acc * multiplier, add 2^(shift-1) as an int64, shift right, add the "
        "zero-point, clamp to [lowest, highest]"
    )
    cases = []
    for _ in range(3):
        acc = torch.randint(-(2**31), 2**31, (30,), generator=generator)
        acc[:2] = torch.tensor([2**31 - 1, -(2**31)])
        multiplier = int(torch.randint(2**30, 2**31, (), generator=generator))
        shift = int(torch.randint(32, 63, (), generator=generator))
        zero_point = int(torch.randint(-128, 128, (), generator=generator))
        lowest = int(torch.randint(-(2**20), 0, (), generator=generator))
        highest = int(torch.randint(1, 2**20, (), generator=generator))
        name = f"random accumulators, M0 = {multiplier}, n = {shift}"
        cases.append(
            _requantize_case(name, acc, multiplier, shift, zero_point, lowest, highest, hint)
        )
    return cases


def compiled_requantize(student_source: str | Callable[[], str]) -> Callable[..., torch.Tensor]:
    """The function the cases call: the student's C ``requantize`` (a string, or a function
    returning it; NotImplementedError from that function: not attempted), compiled."""
    if callable(student_source):
        student_source = student_source()
    if not isinstance(student_source, str):
        raise TypeError(
            f"check_requantize_c: expected C source as a string, got {student_source!r:.60}"
        )
    return compile_requantize(student_source)


def check_requantize_c(student_source: str | Callable[[], str]) -> None:
    """Compile your C ``requantize`` and compare it with ptqlib's on edge cases."""
    run_exercise(REQUANTIZE_C, student_source)


def compare_count(case: Case, got: Any) -> None:
    got = as_integer(got, "the arena size")
    if got != case.expected:
        raise WrongAnswer(f"expected {case.expected} bytes, got {got}")


def _arena_case(sizes: list[int], element: int, hint: str) -> Case:
    name = f"{sizes}, {element} byte(s) per value"
    return Case(
        name, (("sizes", sizes), ("element_bytes", element)), arena_bytes(sizes, element), hint
    )


def arena_cases() -> list[Case]:
    return [
        _arena_case(*row)
        for row in (
            ([784, 128, 64, 10], 1, "only a layer's input and output are alive at once"),
            ([784, 128, 64, 10], 4, "multiply by the bytes per value (4 for float32)"),
            ([10, 500, 20], 1, "the largest pair need not include the input"),
            ([300, 8, 400, 16], 2, "take the largest sum of two neighbours, not the two largest"),
        )
    ]


def draw_arena_cases(generator: torch.Generator) -> list[Case]:
    """Random buffer sizes, 2 to 8 of them, 1, 2 or 4 bytes per value."""
    hint = "max_i (sizes[i] + sizes[i+1]) * element_bytes"
    cases = []
    for element in (1, 2, 4):
        count = int(torch.randint(2, 9, (), generator=generator))
        sizes = [int(n) for n in torch.randint(1, 2000, (count,), generator=generator)]
        cases.append(_arena_case(sizes, element, hint))
    return cases


def check_arena_bytes(student_fn: Callable[[list[int], int], int]) -> None:
    """Check ``student_fn(sizes, element_bytes) -> bytes``: the largest pair of neighbouring
    activation buffers, ``max_i (sizes[i] + sizes[i+1]) * element_bytes``."""
    run_exercise(ARENA_BYTES, student_fn)


REQUANTIZE_C = Exercise(
    id="requantize_c",
    notebook="10_to_the_metal",
    function="requantize_c",
    cases=requantize_cases,
    draw=draw_requantize_cases,
    compare=compare_integers,
    answers=("ptqlib.deploy.c_export.export_c",),
    prepare=compiled_requantize,
)
ARENA_BYTES = Exercise(
    id="arena_bytes",
    notebook="10_to_the_metal",
    function="arena",
    cases=arena_cases,
    draw=draw_arena_cases,
    compare=compare_count,
    answers=("ptqlib.deploy.c_budget.arena_bytes",),
)
