"""Checkers for notebook 01 (the FP32 baseline): parameter count, INT8 size, hardest digits.

Each checker runs a student's function on hand-picked cases whose answers are computed
here from first principles, and every list of cases holds the classic mistake, with a
hint that names it:

- :func:`check_linear_parameters`: forgetting the bias, or one bias per input;
- :func:`check_int8_bytes`: storing the biases in one byte too (they stay 4-byte int32),
  or counting only some of the layers;
- :func:`check_hardest_digits`: ``argmin`` silently picking one digit of a tie, column
  sums (precision) instead of row sums (recall), raw counts instead of accuracies.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_integer, run_cases
from ptqlib.models import SimpleNet

# Storage of one value: INT8 weights take 1 byte, biases stay int32 (4 bytes).
WEIGHT_BYTES_INT8 = 1
BIAS_BYTES_INT32 = 4


def linear_parameter_cases() -> list[Case]:
    """(in_features, out_features) of a Linear layer; answer in * out + out."""
    hint_bias = "a Linear layer has in * out weights PLUS one bias per output: in * out + out"
    table = [
        ("SimpleNet's fc1 (784 -> 128)", 784, 128, hint_bias),
        ("more inputs than outputs (64 -> 10)", 64, 10, "one bias per OUTPUT, not per input"),
        ("more outputs than inputs (3 -> 7)", 3, 7, "one bias per OUTPUT, not per input"),
        ("one input, one output", 1, 1, hint_bias),
    ]
    cases = []
    for name, inputs, outputs, hint in table:
        arguments = (("in_features", inputs), ("out_features", outputs))
        cases.append(Case(name, arguments, inputs * outputs + outputs, hint))
    return cases


def _compare_integer(case: Case, got: Any) -> None:
    value = as_integer(got, "your answer")
    if value != case.expected:
        raise WrongAnswer(f"{value:,}, expected {case.expected:,}")


def check_linear_parameters(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(in_features, out_features) -> int``, the parameters of a Linear
    layer: in_features * out_features weights plus out_features biases."""
    run_cases("check_linear_parameters", student_fn, linear_parameter_cases(), _compare_integer)


def _int8_bytes(model: nn.Module) -> int:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    weights = sum(layer.weight.numel() for layer in linears)
    biases = sum(layer.bias.numel() for layer in linears if layer.bias is not None)
    return weights * WEIGHT_BYTES_INT8 + biases * BIAS_BYTES_INT32


def int8_bytes_cases() -> list[Case]:
    """Small models of Linear layers; answer 1 byte per weight, 4 bytes per bias."""
    hint_bias = (
        "weights become 1-byte int8, but biases stay 4-byte int32 (they are added to the "
        "int32 accumulator): weights * 1 + biases * 4"
    )
    # Only the shapes matter; fork_rng keeps the caller's random stream untouched.
    with torch.random.fork_rng():
        table = [
            ("SimpleNet (784-128-64-10)", SimpleNet(), hint_bias),
            (
                "three Linear layers with a ReLU between two of them",
                nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2), nn.Linear(2, 4)),
                "count EVERY Linear layer (model.modules() finds them wherever they sit), "
                "and only the Linear layers: a ReLU has no parameters",
            ),
            ("a single Linear layer 10 -> 1", nn.Linear(10, 1), hint_bias),
        ]
    return [
        Case(name, (("model", model),), _int8_bytes(model), hint) for name, model, hint in table
    ]


def check_int8_bytes(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(model) -> int``: the bytes of a model's Linear layers once every
    weight is stored as int8 (1 byte) and every bias as int32 (4 bytes)."""
    run_cases("check_int8_bytes", student_fn, int8_bytes_cases(), _compare_integer)


def _hardest(matrix: torch.Tensor) -> list[int]:
    """Every true digit (row) whose accuracy diag / row sum is the lowest, exactly."""
    accuracies = [
        Fraction(int(matrix[row, row]), max(int(matrix[row].sum()), 1))
        for row in range(matrix.shape[0])
    ]
    lowest = min(accuracies)
    return [row for row, value in enumerate(accuracies) if value == lowest]


def hardest_digit_cases() -> list[Case]:
    """Confusion matrices (row = true digit, column = prediction); answer: all the rows
    tied for the lowest accuracy, in increasing order."""
    # Symmetric matrices (rows = columns) except the last, so that each classic mistake
    # fails on the case whose hint names it.
    single = torch.tensor([[9, 1, 0], [1, 7, 2], [0, 2, 8]])
    tie = torch.tensor([[8, 0, 2], [0, 10, 0], [2, 0, 8]])
    # Row 0 has the fewest correct (6, but 6 of 6: 100%); rows 1 and 2 have 9 of 12 (75%).
    sizes_differ = torch.tensor([[6, 0, 0], [0, 9, 3], [0, 3, 9]])
    # Column 1 collects many wrong predictions: per column (precision) it looks worst.
    columns_mislead = torch.tensor([[7, 3, 0], [0, 10, 0], [0, 4, 6]])
    table = [
        (
            "one clear hardest digit",
            single,
            "accuracy of digit d = matrix[d, d] / matrix[d].sum() (row d holds the images "
            "whose TRUE label is d); return a list of digits",
        ),
        (
            "two digits tie for the lowest accuracy",
            tie,
            "argmin silently returns only the first of a tie: return EVERY digit whose "
            "accuracy equals the minimum, e.g. torch.nonzero(acc == acc.min())",
        ),
        (
            "classes of different sizes",
            sizes_differ,
            "compare accuracies (fractions), not counts of correct digits: divide each "
            "diagonal entry by its row sum",
        ),
        (
            "a column full of wrong predictions",
            columns_mislead,
            "rows are the true digits: divide by the ROW sum (recall); the column sum gives "
            "the precision of a prediction instead",
        ),
    ]
    return [Case(name, (("matrix", m),), _hardest(m), hint) for name, m, hint in table]


def _compare_digits(case: Case, got: Any) -> None:
    if isinstance(got, torch.Tensor):
        got = got.flatten().tolist()
    if not isinstance(got, (list, tuple)):
        raise WrongAnswer(
            f"return a list of digits (all those tied for the lowest accuracy), got {got!r}"
        )
    digits = sorted(as_integer(digit, "each digit") for digit in got)
    if digits != case.expected:
        raise WrongAnswer(f"digits {digits}, expected {case.expected}")


def check_hardest_digits(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(matrix) -> list[int]``: from a confusion matrix (row = true
    digit, column = predicted digit), every digit tied for the lowest per-class accuracy
    ``matrix[d, d] / matrix[d].sum()``. Order does not matter; ties must all be there."""
    run_cases("check_hardest_digits", student_fn, hardest_digit_cases(), _compare_digits)
