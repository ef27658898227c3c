"""The McNemar checker of notebook 05: right answers pass, each classic mistake fails."""

import math

import pytest

from ptqlib.checkers import check_mcnemar_p_value
from ptqlib.evaluation import PairedComparison, mcnemar_p_value, paired_comparison


def exact(fixed, broken):
    n = fixed + broken
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(fixed, broken) + 1)) / 2**n)


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


def test_a_right_answer_passes(capsys):
    check_mcnemar_p_value(exact)
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", [one_sided, uncapped, normal_approximation])
def test_classic_mistakes_fail_with_a_hint(mistake):
    with pytest.raises(AssertionError, match="Hint|hint"):
        check_mcnemar_p_value(mistake)


def test_paired_comparison_counts_fixed_and_broken():
    import torch

    labels = torch.tensor([0, 1, 2, 3, 4])
    reference = torch.tensor([0, 1, 9, 9, 4])  # right on 0, 1, 4
    candidate = torch.tensor([0, 9, 2, 9, 4])  # fixed digit 2, broke digit 1
    assert paired_comparison(reference, candidate, labels) == PairedComparison(5, 1, 1)
    assert mcnemar_p_value(1, 1) == 1.0
    with pytest.raises(ValueError, match="broken"):
        mcnemar_p_value(3, -1)
