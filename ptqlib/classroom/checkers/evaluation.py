"""Checkers for notebook 05 (evaluation): judging two models on the same digits.

The answers come from :func:`ptqlib.evaluation.mcnemar_p_value`; see
:mod:`ptqlib.classroom.checkers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.evaluation import mcnemar_p_value

P_VALUE_TOLERANCE = 1e-9


def mcnemar_cases() -> list[Case]:
    """(fixed, broken) counts; each case separates the right answer from a classic mistake."""
    table = [
        ("a real difference", 12, 2, "two-sided: double the binomial tail (one side gives half)"),
        ("the same split the other way round", 2, 12, "the answer is symmetric in the counts"),
        ("a balanced split", 5, 5, "p cannot exceed 1: cap 2 * tail at 1"),
        ("no changed digit at all", 0, 0, "no evidence either way: p = 1"),
        (
            "few changed digits",
            0,
            4,
            "use the exact binomial, not the normal approximation: with 4 digits it is far off",
        ),
    ]
    return [_mcnemar_case(*row) for row in table]


def _mcnemar_case(name: str, fixed: int, broken: int, hint: str) -> Case:
    return Case(name, (("fixed", fixed), ("broken", broken)), mcnemar_p_value(fixed, broken), hint)


def draw_mcnemar_cases(generator: torch.Generator) -> list[Case]:
    """Random counts: a lopsided split, a near-balanced one and a small one."""
    hint = (
        "two-sided exact binomial: p = min(1, 2 * P(X <= min(fixed, broken))), X ~ "
        "Binomial(fixed + broken, 1/2)"
    )
    cases = []
    for low, high in ((0, 60), (20, 40), (0, 8)):
        fixed, broken = (int(n) for n in torch.randint(low, high, (2,), generator=generator))
        cases.append(_mcnemar_case(f"{fixed} fixed, {broken} broken", fixed, broken, hint))
    return cases


def _compare_p_values(case: Case, got: Any) -> None:
    value = as_float(got, "p-value")
    if not abs(value - case.expected) <= P_VALUE_TOLERANCE:  # "not <=": NaN is wrong too
        raise WrongAnswer(f"p = {value:.6g}, expected {case.expected:.6g}")


def check_mcnemar_p_value(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(fixed, broken) -> p``: McNemar's exact two-sided p-value."""
    run_exercise(MCNEMAR_P_VALUE, student_fn)


MCNEMAR_P_VALUE = Exercise(
    id="mcnemar_p_value",
    notebook="05_evaluation",
    function="my_mcnemar_p_value",
    cases=mcnemar_cases,
    draw=draw_mcnemar_cases,
    compare=_compare_p_values,
    answers=("ptqlib.evaluation.mcnemar_p_value", "ptqlib.evaluation.paired_comparison"),
)
