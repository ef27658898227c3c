"""Known-answer checkers for notebook 10: CMSIS-NN's double rounding, and the bytes alive
at once in a layer graph.

    from ptqlib.classroom.checkers.c_export import check_double_rounding, check_live_bytes

- :func:`check_double_rounding`: ``(acc, multiplier, shift) -> int64 tensor``, the
  requantization of Arm's CMSIS-NN (``arm_nn_requantize`` built without
  ``CMSIS_NN_USE_SINGLE_ROUNDING``) for ptqlib's M0 and a right shift n >= 31: a rounding
  doubling high multiply, ``(acc M0 + 2^30) >> 31``, then a rounding division by
  ``2^(n - 31)`` with ties away from zero;
- :func:`check_live_bytes`: ``(buffers) -> bytes``, the most bytes alive at one step of a
  graph's activation buffers (:class:`~ptqlib.deploy.c_memory.Buffer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_integer, compare_integers
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.deploy.c_memory import Buffer, live_bytes


def _double_rounding(acc: torch.Tensor, multiplier: int, shift: int) -> torch.Tensor:
    """The expected answers: arm_nn_doubling_high_mult_no_sat, then
    arm_nn_divide_by_power_of_two (CMSIS-NN's arm_nnsupportfunctions.h)."""
    high = (acc.to(torch.int64) * multiplier + 2**30) >> 31
    exponent = shift - 31
    mask = 2**exponent - 1
    result = high >> exponent
    threshold = (mask >> 1) + (result < 0).to(torch.int64)
    return result + ((high & mask) > threshold).to(torch.int64)


def double_rounding_cases() -> list[Case]:
    # M0 = 2^30 and n = 33 multiply by 1/8: the first rounding keeps acc / 2, the second
    # divides by 4, so acc = 4 (mod 8) is an exact tie.
    ties = torch.tensor([4, 12, 20, -4, -12, -20, 0, 8, -8])
    generator = torch.Generator().manual_seed(0)
    random = torch.randint(-(2**24), 2**24, (200,), generator=generator)
    settings = [
        (
            "ties of the final division, positive and negative",
            ties, 2**30, 33,
            "the division rounds ties away from zero: -1.5 becomes -2, not -1",
        ),
        (
            "the first rounding makes a tie the second then rounds again",
            torch.tensor([3, 5, -3, -5, 7, -7]), 2**30 + 1, 32,
            "round twice: first (acc M0 + 2^30) >> 31, then divide that by 2^(n - 31)",
        ),
        (
            "random accumulators, a multiplier like a real layer's",
            random, 1518500250, 38,
            "compute acc * M0 in int64 (it needs 62 bits), then the two rounding steps",
        ),
        (
            "n = 31: the division is by 1",
            random, 1518500250, 31,
            "with n = 31 only the doubling high multiply rounds",
        ),
    ]  # fmt: skip
    return [
        Case(
            name,
            (("acc", acc), ("multiplier", multiplier), ("shift", shift)),
            _double_rounding(acc, multiplier, shift),
            hint,
        )
        for name, acc, multiplier, shift, hint in settings
    ]


def draw_double_rounding_cases(generator: torch.Generator) -> list[Case]:
    """Random accumulators (the int32 extremes among them), multipliers and shifts."""
    hint = "(acc * M0 + 2^30) >> 31, then divide by 2^(n - 31), ties away from zero"
    cases = []
    for _ in range(3):
        acc = torch.randint(-(2**31), 2**31, (40,), generator=generator)
        acc[:2] = torch.tensor([2**31 - 1, -(2**31)])
        multiplier = int(torch.randint(2**30, 2**31, (), generator=generator))
        shift = int(torch.randint(31, 63, (), generator=generator))
        name = f"random accumulators, M0 = {multiplier}, n = {shift}"
        arguments = (("acc", acc), ("multiplier", multiplier), ("shift", shift))
        cases.append(Case(name, arguments, _double_rounding(acc, multiplier, shift), hint))
    return cases


def check_double_rounding(student_fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """Check ``student_fn(acc, multiplier, shift)``: CMSIS-NN's two roundings (module
    docstring) for int64 accumulators, ptqlib's M0 and a right shift of at least 31."""
    run_exercise(DOUBLE_ROUNDING, student_fn)


def compare_count(case: Case, got: Any) -> None:
    got = as_integer(got, "the number of bytes")
    if got != case.expected:
        raise WrongAnswer(f"expected {case.expected} bytes, got {got}")


def build_buffers(buffers: list[list]) -> tuple[list[Buffer]]:
    """The buffers a case describes as ``[name, size, first, last]`` rows."""
    return ([Buffer(*row) for row in buffers],)


def _live_case(what: str, rows: list[list], hint: str) -> Case:
    listing = ", ".join(
        f"{name} {size} B, steps {first}-{last}" for name, size, first, last in rows
    )
    expected = live_bytes(build_buffers(rows)[0])
    return Case(f"{what}: {listing}", (("buffers", rows),), expected, hint)


def live_bytes_cases() -> list[Case]:
    skip = [["x", 300, 0, 3], ["y", 200, 1, 2], ["z", 200, 2, 3], ["sum", 300, 3, 4]]
    return [
        _live_case("a chain", [["fc1", 128, 0, 1], ["fc2", 64, 1, 2], ["fc3", 10, 2, 3]],
                   "at each step, add the sizes of the buffers alive then"),
        _live_case("a chain", [["a", 10, 0, 1], ["b", 500, 1, 2], ["c", 20, 2, 3]],
                   "the largest sum need not include the first buffer"),
        _live_case("a skip connection (x is read by steps 1 and 3)", skip,
                   "x stays alive until the step that adds it back"),
        _live_case("a chain", [["a", 300, 0, 1], ["b", 8, 1, 2], ["c", 400, 2, 3]],
                   "take the largest sum at one step, not the two largest buffers"),
    ]  # fmt: skip


def draw_live_bytes_cases(generator: torch.Generator) -> list[Case]:
    """Random chains of 3 to 7 buffers, with and without a skip connection over them."""
    hint = "max over the steps of the sizes of the buffers alive at that step"
    cases = []
    for skip in (False, True, True):
        count = int(torch.randint(3, 8, (), generator=generator))
        sizes = torch.randint(1, 4000, (count + 1,), generator=generator).tolist()
        rows = [[f"b{i}", sizes[i], i, i + 1] for i in range(count)]
        if skip:
            first = int(torch.randint(0, count - 1, (), generator=generator))
            rows.append(["skip", sizes[count], first, count])
        cases.append(_live_case("a chain" + (" with a skip" if skip else ""), rows, hint))
    return cases


def check_live_bytes(student_fn: Callable[[list[Buffer]], int]) -> None:
    """Check ``student_fn(buffers) -> bytes``: the most bytes alive at one step, where a
    buffer is alive from the step that writes it (``first``) to the last that reads it."""
    run_exercise(LIVE_BYTES, student_fn)


DOUBLE_ROUNDING = Exercise(
    id="double_rounding",
    notebook="10_to_the_metal",
    function="double_rounding",
    cases=double_rounding_cases,
    draw=draw_double_rounding_cases,
    compare=compare_integers,
    answers=("ptqlib.classroom.checkers.c_export._double_rounding",),
)
LIVE_BYTES = Exercise(
    id="live_bytes",
    notebook="10_to_the_metal",
    function="live_bytes",
    cases=live_bytes_cases,
    draw=draw_live_bytes_cases,
    compare=compare_count,
    answers=("ptqlib.deploy.c_memory.live_bytes",),
    build=build_buffers,
)
