"""Tests for ptqlib.classroom.checkers.fp32_baseline (notebook 01): parameter count, INT8 size and
the hardest digits. A correct implementation passes; each classic mistake fails, naming
the case and the hint that explains it; the untouched skeleton is reported, not raised."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ptqlib.classroom.checkers import (
    check_hardest_digits,
    check_int8_bytes,
    check_linear_parameters,
)
from ptqlib.classroom.checkers.fp32_baseline import int8_bytes_cases
from ptqlib.models import SimpleNet, count_parameters


def good_linear_parameters(in_features, out_features):
    return in_features * out_features + out_features


def good_int8_bytes(model):
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return sum(m.weight.numel() + 4 * m.bias.numel() for m in linears)


def good_hardest_digits(matrix):
    accuracy = matrix.diagonal() / matrix.sum(dim=1)
    return torch.nonzero(accuracy == accuracy.min()).flatten().tolist()


@pytest.mark.parametrize(
    ("checker", "student_fn"),
    [
        (check_linear_parameters, good_linear_parameters),
        (check_int8_bytes, good_int8_bytes),
        (check_hardest_digits, good_hardest_digits),
    ],
)
def test_a_correct_implementation_passes(checker, student_fn, capsys):
    checker(student_fn)
    assert capsys.readouterr().out.startswith(f"{checker.__name__}: PASS (")


@pytest.mark.parametrize(
    "checker", [check_linear_parameters, check_int8_bytes, check_hardest_digits]
)
def test_the_untouched_skeleton_is_not_attempted_and_does_not_raise(checker, capsys):
    def skeleton(*arguments):
        # YOUR CODE HERE
        raise NotImplementedError

    checker(skeleton)
    assert "NOT ATTEMPTED" in capsys.readouterr().out


def failure(checker, student_fn) -> str:
    with pytest.raises(AssertionError) as caught:
        checker(student_fn)
    return str(caught.value)


def test_simplenet_layers_sum_to_count_parameters():
    total = sum(good_linear_parameters(a, b) for a, b in ((784, 128), (128, 64), (64, 10)))
    assert total == count_parameters(SimpleNet())


def test_forgetting_the_bias_fails_with_its_hint():
    message = failure(check_linear_parameters, lambda inputs, outputs: inputs * outputs)
    assert "case 1 of" in message and "PLUS one bias per output" in message


def test_one_bias_per_input_fails_with_its_hint():
    message = failure(check_linear_parameters, lambda inputs, outputs: inputs * outputs + inputs)
    assert "one bias per" in message


def test_a_float_answer_is_refused():
    assert "int(...)" in failure(check_linear_parameters, lambda a, b: float(a * b + b))


def test_int8_bytes_of_simplenet_is_known():
    assert int8_bytes_cases()[0].expected == 109_184 + 4 * 202


def test_int8_bytes_cases_leave_the_random_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    int8_bytes_cases()
    assert torch.equal(torch.rand(3), expected)


def test_biases_in_one_byte_fail_with_its_hint():
    def everything_one_byte(model):
        return sum(p.numel() for p in model.parameters())

    message = failure(check_int8_bytes, everything_one_byte)
    assert "case 1 of" in message and "biases stay 4-byte int32" in message


def test_counting_simplenets_named_layers_only_fails_on_another_model():
    def named_layers(model):
        layers = (model.fc1, model.fc2, model.fc3)
        return sum(m.weight.numel() + 4 * m.bias.numel() for m in layers)

    message = failure(check_int8_bytes, named_layers)
    assert "count EVERY Linear layer" in message


def test_argmin_on_a_tie_fails_with_its_hint():
    def argmin(matrix):
        return [int((matrix.diagonal() / matrix.sum(dim=1)).argmin())]

    message = failure(check_hardest_digits, argmin)
    assert "tie" in message and "argmin silently returns only the first" in message


def test_raw_counts_instead_of_accuracies_fail_with_its_hint():
    def counts(matrix):
        diagonal = matrix.diagonal()
        return torch.nonzero(diagonal == diagonal.min()).flatten().tolist()

    message = failure(check_hardest_digits, counts)
    assert "different sizes" in message and "not counts" in message


def test_column_sums_fail_with_its_hint():
    def precision(matrix):
        value = matrix.diagonal() / matrix.sum(dim=0)
        return torch.nonzero(value == value.min()).flatten().tolist()

    message = failure(check_hardest_digits, precision)
    assert "column full of wrong predictions" in message and "ROW sum" in message


def test_a_single_int_instead_of_a_list_is_refused():
    message = failure(check_hardest_digits, lambda matrix: 1)
    assert "return a list of digits" in message


def test_a_tensor_answer_in_any_order_passes(capsys):
    def reversed_tensor(matrix):
        accuracy = matrix.diagonal() / matrix.sum(dim=1)
        return torch.nonzero(accuracy == accuracy.min()).flatten().flip(0)

    check_hardest_digits(reversed_tensor)
    assert "PASS" in capsys.readouterr().out
