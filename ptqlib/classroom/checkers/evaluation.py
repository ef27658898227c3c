"""Checkers for notebook 05 (evaluation): judging two models on the same digits.

The answers come from :func:`ptqlib.evaluation.mcnemar_p_value`; see
:mod:`ptqlib.classroom.checkers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float, run_cases
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
    return [
        Case(name, (("fixed", fixed), ("broken", broken)), mcnemar_p_value(fixed, broken), hint)
        for name, fixed, broken, hint in table
    ]


def _compare_p_values(case: Case, got: Any) -> None:
    value = as_float(got, "p-value")
    if abs(value - case.expected) > P_VALUE_TOLERANCE:
        raise WrongAnswer(f"p = {value:.6g}, expected {case.expected:.6g}")


def check_mcnemar_p_value(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(fixed, broken) -> p``: McNemar's exact two-sided p-value."""
    run_cases("check_mcnemar_p_value", student_fn, mcnemar_cases(), _compare_p_values)
