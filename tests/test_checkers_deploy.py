"""The notebook-08 checkers accept ORT's arithmetic and reject the usual near misses."""

import re

import pytest
import torch

from ptqlib.checkers.deploy import (
    check_quantize_linear,
    check_requantize_float32,
    quantize_linear_cases,
    requantize_float32_cases,
)

CASES = {
    check_quantize_linear: quantize_linear_cases,
    check_requantize_float32: requantize_float32_cases,
}


def float32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def quantize_dividing(x, scale, zero_point, quant_min, quant_max):
    return (torch.round(x / float32(scale)) + zero_point).clamp(quant_min, quant_max).long()


def quantize_multiplying(x, scale, zero_point, quant_min, quant_max):
    return (torch.round(x * (1 / float32(scale))) + zero_point).clamp(quant_min, quant_max).long()


def requantize_in_float32(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = float32(input_scale) * float32(weight_scale) / float32(output_scale)
    return (torch.round(acc.float() * multiplier).long() + zero_point).clamp(lo, hi)


def requantize_in_float64(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = input_scale * weight_scale / output_scale
    return (torch.round(acc.double() * multiplier).long() + zero_point).clamp(lo, hi)


def requantize_rounding_half_up(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = float32(input_scale) * float32(weight_scale) / float32(output_scale)
    return (torch.floor(acc.float() * multiplier + 0.5).long() + zero_point).clamp(lo, hi)


def test_ort_arithmetic_passes(capsys):
    check_quantize_linear(quantize_dividing)
    check_requantize_float32(requantize_in_float32)
    assert capsys.readouterr().out.count("PASS") == 2


@pytest.mark.parametrize(
    "checker, near_miss",
    [
        (check_quantize_linear, quantize_multiplying),
        (check_requantize_float32, requantize_in_float64),
        (check_requantize_float32, requantize_rounding_half_up),
    ],
)
def test_near_misses_fail_with_a_hint(checker, near_miss):
    with pytest.raises(AssertionError) as failure:
        checker(near_miss)
    message = str(failure.value)
    number = re.search(r"case (\d+) of \d+ failed", message)
    hint = re.search(r"^  hint: +(.+)$", message, re.MULTILINE)
    assert number and hint, message
    cases = CASES[checker]()
    assert hint.group(1) == cases[int(number.group(1)) - 1].hint != ""


def test_the_skeleton_is_reported_not_attempted(capsys):
    def skeleton(*arguments):
        raise NotImplementedError

    check_quantize_linear(skeleton)
    check_requantize_float32(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == 2


def test_a_crashing_attempt_fails():
    def crashing(*arguments):
        raise ZeroDivisionError("oops")

    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        check_quantize_linear(crashing)
