"""The checkers of notebook 10: a correct answer passes, each usual mistake fails."""

import pytest
import torch

from ptqlib.classroom.checkers.c_export import (
    _double_rounding,
    check_double_rounding,
    check_live_bytes,
)
from ptqlib.deploy.c_memory import Buffer, live_bytes, plan_arena
from ptqlib.integer_arithmetic import requantize


def test_double_rounding_checker(capsys):
    check_double_rounding(_double_rounding)
    assert "PASS" in capsys.readouterr().out

    def single(acc, multiplier, shift):  # ptqlib's one rounding: differs on some cases
        return requantize(acc, multiplier, shift, 0, -(2**40), 2**40)

    def ties_upwards(acc, multiplier, shift):  # the second rounding with ties upwards
        high = (acc * multiplier + 2**30) >> 31
        return (high + 2 ** (shift - 32)) >> (shift - 31) if shift > 31 else high

    for wrong in (single, ties_upwards):
        with pytest.raises(AssertionError, match="check_double_rounding: case"):
            check_double_rounding(wrong)


def test_double_rounding_is_cmsis_nns_on_its_own_examples():
    """arm_nn_divide_by_power_of_two rounds 6/4 to 2 and -6/4 to -2 (ties away from zero);
    the doubling high multiply of 2^30 by acc is acc / 2 rounded half up."""
    acc = torch.tensor([6, -6, 5, -5])
    # M0 = 2^31 - 1 is ~1: high = round(acc (1 - 2^-31)) = acc; then / 2^(33 - 31).
    assert _double_rounding(acc, 2**31 - 1, 33).tolist() == [2, -2, 1, -1]
    assert _double_rounding(torch.tensor([3, -3]), 2**30, 31).tolist() == [2, -1]


def test_live_bytes_checker(capsys):
    check_live_bytes(live_bytes)
    assert "PASS" in capsys.readouterr().out

    def neighbours(buffers):  # the chain rule: wrong with a skip connection
        return max(a.size + b.size for a, b in zip(buffers[:-1], buffers[1:], strict=True))

    def two_largest(buffers):
        return sum(sorted(b.size for b in buffers)[-2:])

    for wrong in (neighbours, two_largest):
        with pytest.raises(AssertionError, match="check_live_bytes: case"):
            check_live_bytes(wrong)


def test_plan_reaches_the_live_bytes_on_a_chain():
    chain = [Buffer(f"b{i}", size, i, i + 1) for i, size in enumerate([784, 128, 64])]
    assert plan_arena(chain).size == live_bytes(chain) == 912
