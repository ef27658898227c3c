"""The McNemar checker of notebook 05: right answers pass, each classic mistake fails."""

import math
import re

import pytest

from ptqlib.classroom.checkers import check_mcnemar_p_value
from ptqlib.classroom.checkers.evaluation import mcnemar_cases
from ptqlib.evaluation import PairedComparison, mcnemar_p_value, paired_comparison


def one_sided(fixed, broken):
    n = fixed + broken
    return sum(math.comb(n, k) for k in range(min(fixed, broken) + 1)) / 2**n if n else 1.0


def uncapped(fixed, broken):
    n = fixed + broken
    return 2 * sum(math.comb(n, k) for k in range(min(fixed, broken) + 1)) / 2**n


def normal_approximation(fixed, broken):
    if fixed + broken == 0:
        return 1.0
    statistic = (fixed - broken) ** 2 / (fixed + broken)
    return math.erfc(math.sqrt(statistic / 2))


# The right answers, worked out by hand: p = min(1, 2 * sum_{k <= min} C(n, k) / 2^n).
# (12, 2): n = 14, C(14,0) + C(14,1) + C(14,2) = 1 + 14 + 91 = 106, p = 212 / 16384.
# (5, 5): n = 10, the tail 638 / 1024 is above 1/2, so 2 * tail is capped at 1.
# (0, 4): n = 4, the tail is 1/16, p = 1/8.
FROZEN_P_VALUES = {
    (12, 2): 212 / 16384,
    (2, 12): 212 / 16384,
    (5, 5): 1.0,
    (0, 0): 1.0,
    (0, 4): 0.125,
}


def frozen(fixed, broken):
    return FROZEN_P_VALUES[(fixed, broken)]


def test_the_cases_hold_the_worked_out_answers():
    answers = {}
    for case in mcnemar_cases():
        arguments = dict(case.arguments)
        answers[(arguments["fixed"], arguments["broken"])] = case.expected
    assert set(answers) == set(FROZEN_P_VALUES)
    for counts, expected in FROZEN_P_VALUES.items():
        assert math.isclose(answers[counts], expected, rel_tol=1e-12), counts


def test_a_right_answer_passes(capsys):
    check_mcnemar_p_value(frozen)
    assert "check_mcnemar_p_value: PASS (5 cases)" in capsys.readouterr().out


def failure_and_hint(message: str) -> tuple[int, str]:
    """The number of the failing case and the hint a checker's failure message gives."""
    number = re.search(r"case (\d+) of \d+ failed", message)
    hint = re.search(r"^  hint: +(.+)$", message, re.MULTILINE)
    assert number and hint, f"no case number or hint line in:\n{message}"
    return int(number.group(1)), hint.group(1)


@pytest.mark.parametrize(
    "mistake, failing_case",
    [(one_sided, 1), (uncapped, 3), (normal_approximation, 1)],
)
def test_classic_mistakes_fail_with_a_hint(mistake, failing_case):
    with pytest.raises(AssertionError) as failure:
        check_mcnemar_p_value(mistake)
    number, hint = failure_and_hint(str(failure.value))
    assert number == failing_case
    assert hint and hint == mcnemar_cases()[number - 1].hint


def test_paired_comparison_counts_fixed_and_broken():
    import torch

    labels = torch.tensor([0, 1, 2, 3, 4])
    reference = torch.tensor([0, 1, 9, 9, 4])  # right on 0, 1, 4
    candidate = torch.tensor([0, 9, 2, 9, 4])  # fixed digit 2, broke digit 1
    assert paired_comparison(reference, candidate, labels) == PairedComparison(5, 1, 1)
    assert mcnemar_p_value(1, 1) == 1.0
    with pytest.raises(ValueError, match="broken"):
        mcnemar_p_value(3, -1)
