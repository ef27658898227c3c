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
    run_cases,
)
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
    cases = []
    for name, acc, multiplier, shift, zero_point, lowest, highest, hint in settings:
        expected = requantize(acc, multiplier, shift, zero_point, lowest, highest)
        arguments = (
            ("acc", acc.to(torch.int32)),
            ("multiplier", multiplier),
            ("shift", shift),
            ("zero_point", zero_point),
            ("lowest", lowest),
            ("highest", highest),
        )
        cases.append(Case(name, arguments, expected, hint))
    return cases


def check_requantize_c(student_source: str | Callable[[], str]) -> None:
    """Compile your C ``requantize`` and compare it with ptqlib's on edge cases."""
    if callable(student_source):
        try:
            student_source = student_source()
        except NotImplementedError:
            print(
                "check_requantize_c: NOT ATTEMPTED yet (your function raises "
                "NotImplementedError): fill in the exercise cell above, run it, then this one"
            )
            return
    if not isinstance(student_source, str):
        raise TypeError(
            f"check_requantize_c: expected C source as a string, got {student_source!r:.60}"
        )
    run_cases(
        "check_requantize_c",
        compile_requantize(student_source),
        requantize_cases(),
        compare_integers,
    )


def compare_count(case: Case, got: Any) -> None:
    got = as_integer(got, "the arena size")
    if got != case.expected:
        raise WrongAnswer(f"expected {case.expected} bytes, got {got}")


def check_arena_bytes(student_fn: Callable[[list[int], int], int]) -> None:
    """Check ``student_fn(sizes, element_bytes) -> bytes``: the largest pair of neighbouring
    activation buffers, ``max_i (sizes[i] + sizes[i+1]) * element_bytes``."""
    cases = [
        Case(
            f"{sizes}, {element} byte(s) per value",
            (("sizes", sizes), ("element_bytes", element)),
            arena_bytes(sizes, element),
            hint,
        )
        for sizes, element, hint in (
            ([784, 128, 64, 10], 1, "only a layer's input and output are alive at once"),
            ([784, 128, 64, 10], 4, "multiply by the bytes per value (4 for float32)"),
            ([10, 500, 20], 1, "the largest pair need not include the input"),
            ([300, 8, 400, 16], 2, "take the largest sum of two neighbours, not the two largest"),
        )
    ]
    run_cases("check_arena_bytes", student_fn, cases, compare_count)
