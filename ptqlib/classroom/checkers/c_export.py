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

from ptqlib.classroom.checkers.core import (
    Case,
    WrongAnswer,
    as_integer,
    compare_integers,
    run_cases,
)
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


def check_double_rounding(student_fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """Check ``student_fn(acc, multiplier, shift)``: CMSIS-NN's two roundings (module
    docstring) for int64 accumulators, ptqlib's M0 and a right shift of at least 31."""
    run_cases("check_double_rounding", student_fn, double_rounding_cases(), compare_integers)


def compare_count(case: Case, got: Any) -> None:
    got = as_integer(got, "the number of bytes")
    if got != case.expected:
        raise WrongAnswer(f"expected {case.expected} bytes, got {got}")


def check_live_bytes(student_fn: Callable[[list[Buffer]], int]) -> None:
    """Check ``student_fn(buffers) -> bytes``: the most bytes alive at one step, where a
    buffer is alive from the step that writes it (``first``) to the last that reads it."""
    chain = [Buffer("fc1", 128, 0, 1), Buffer("fc2", 64, 1, 2), Buffer("fc3", 10, 2, 3)]
    middle = [Buffer("a", 10, 0, 1), Buffer("b", 500, 1, 2), Buffer("c", 20, 2, 3)]
    skip = [
        Buffer("x", 300, 0, 3),  # read by step 1 and, through the skip, by step 3
        Buffer("y", 200, 1, 2),
        Buffer("z", 200, 2, 3),
        Buffer("sum", 300, 3, 4),
    ]
    pairs = [Buffer("a", 300, 0, 1), Buffer("b", 8, 1, 2), Buffer("c", 400, 2, 3)]
    cases = [
        Case(
            f"{what}: {', '.join(f'{b.name} {b.size} B, steps {b.first}-{b.last}' for b in graph)}",
            (("buffers", graph),),
            live_bytes(graph),
            hint,
        )
        for what, graph, hint in (
            ("a chain", chain, "at each step, add the sizes of the buffers alive then"),
            ("a chain", middle, "the largest sum need not include the first buffer"),
            ("a skip connection", skip, "x stays alive until the step that adds it back"),
            ("a chain", pairs, "take the largest sum at one step, not the two largest buffers"),
        )
    ]
    run_cases("check_live_bytes", student_fn, cases, compare_count)
