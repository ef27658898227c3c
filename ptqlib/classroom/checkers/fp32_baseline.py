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

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_integer
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.models import SimpleNet

# Storage of one value: INT8 weights take 1 byte, biases stay int32 (4 bytes).
WEIGHT_BYTES_INT8 = 1
BIAS_BYTES_INT32 = 4


HINT_BIAS = "a Linear layer has in * out weights PLUS one bias per output: in * out + out"


def _linear_case(name: str, inputs: int, outputs: int, hint: str) -> Case:
    arguments = (("in_features", inputs), ("out_features", outputs))
    return Case(name, arguments, inputs * outputs + outputs, hint)


def linear_parameter_cases() -> list[Case]:
    """(in_features, out_features) of a Linear layer; answer in * out + out."""
    table = [
        ("SimpleNet's fc1 (784 -> 128)", 784, 128, HINT_BIAS),
        ("more inputs than outputs (64 -> 10)", 64, 10, "one bias per OUTPUT, not per input"),
        ("more outputs than inputs (3 -> 7)", 3, 7, "one bias per OUTPUT, not per input"),
        ("one input, one output", 1, 1, HINT_BIAS),
    ]
    return [_linear_case(*row) for row in table]


def draw_linear_parameter_cases(generator: torch.Generator) -> list[Case]:
    """Layers of random sizes, as many with more inputs as with more outputs."""
    cases = []
    for number in range(4):
        inputs, outputs = (int(n) for n in torch.randint(1, 2000, (2,), generator=generator))
        if (inputs > outputs) != (number % 2 == 0):
            inputs, outputs = outputs, inputs
        cases.append(_linear_case(f"a layer {inputs} -> {outputs}", inputs, outputs, HINT_BIAS))
    return cases


def _compare_integer(case: Case, got: Any) -> None:
    value = as_integer(got, "your answer")
    if value != case.expected:
        raise WrongAnswer(f"{value:,}, expected {case.expected:,}")


def check_linear_parameters(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(in_features, out_features) -> int``, the parameters of a Linear
    layer: in_features * out_features weights plus out_features biases."""
    run_exercise(LINEAR_PARAMETERS, student_fn)


def _int8_bytes(model: nn.Module) -> int:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    weights = sum(layer.weight.numel() for layer in linears)
    biases = sum(layer.bias.numel() for layer in linears if layer.bias is not None)
    return weights * WEIGHT_BYTES_INT8 + biases * BIAS_BYTES_INT32


HINT_INT32_BIAS = (
    "weights become 1-byte int8, but biases stay 4-byte int32 (they are added to the int32 "
    "accumulator): weights * 1 + biases * 4"
)


def build_model(layers: str | list[list]) -> tuple[nn.Module]:
    """The model a case describes: "SimpleNet", or a list of layers, ``["linear", in, out]``
    or ``["relu"]``, made into an nn.Sequential. fork_rng: only the shapes matter, and the
    caller's random stream stays untouched."""
    with torch.random.fork_rng():
        if layers == "SimpleNet":
            return (SimpleNet(),)
        modules = [nn.Linear(*sizes) if kind == "linear" else nn.ReLU() for kind, *sizes in layers]
        return (nn.Sequential(*modules),)


def _int8_bytes_case(name: str, layers: str | list[list], hint: str) -> Case:
    return Case(name, (("model", layers),), _int8_bytes(*build_model(layers)), hint)


def int8_bytes_cases() -> list[Case]:
    """Small models of Linear layers; answer 1 byte per weight, 4 bytes per bias."""
    three_layers = [["linear", 5, 3], ["relu"], ["linear", 3, 2], ["linear", 2, 4]]
    return [
        _int8_bytes_case("SimpleNet (784-128-64-10)", "SimpleNet", HINT_INT32_BIAS),
        _int8_bytes_case(
            "three Linear layers with a ReLU between two of them",
            three_layers,
            "count EVERY Linear layer (model.modules() finds them wherever they sit), "
            "and only the Linear layers: a ReLU has no parameters",
        ),
        _int8_bytes_case("a single Linear layer 10 -> 1", [["linear", 10, 1]], HINT_INT32_BIAS),
    ]


def draw_int8_bytes_cases(generator: torch.Generator) -> list[Case]:
    """Stacks of one to four Linear layers of random sizes, a ReLU after some of them."""
    cases = []
    for _ in range(3):
        count = int(torch.randint(1, 5, (), generator=generator))
        sizes = [int(n) for n in torch.randint(1, 40, (count + 1,), generator=generator)]
        layers: list[list] = []
        for inputs, outputs in zip(sizes[:-1], sizes[1:], strict=True):
            layers.append(["linear", inputs, outputs])
            if bool(torch.rand((), generator=generator) < 0.5):
                layers.append(["relu"])
        cases.append(_int8_bytes_case(f"Linear layers {sizes}", layers, HINT_INT32_BIAS))
    return cases


def check_int8_bytes(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(model) -> int``: the bytes of a model's Linear layers once every
    weight is stored as int8 (1 byte) and every bias as int32 (4 bytes)."""
    run_exercise(INT8_BYTES, student_fn)


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


def draw_hardest_digit_cases(generator: torch.Generator) -> list[Case]:
    """Random confusion matrices of 3 to 10 digits; in the second, two digits tie."""
    hint = (
        "accuracy of digit d = matrix[d, d] / matrix[d].sum(): return EVERY digit whose "
        "accuracy equals the lowest"
    )
    cases = []
    for number in range(3):
        digits = int(torch.randint(3, 11, (), generator=generator))
        matrix = torch.randint(0, 6, (digits, digits), generator=generator)
        matrix += torch.diag(torch.randint(5, 40, (digits,), generator=generator))
        if number == 1:  # a tie: a second digit with the same row as the hardest one
            hardest = _hardest(matrix)[0]
            other = hardest + 1 + int(torch.randint(0, digits - 1, (), generator=generator))
            other %= digits
            row = matrix[hardest].clone()
            row[[hardest, other]] = row[[other, hardest]]  # its correct count on the diagonal
            matrix[other] = row
        name = f"{digits} digits" + (", a tie" if number == 1 else "")
        cases.append(Case(name, (("matrix", matrix),), _hardest(matrix), hint))
    return cases


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
    run_exercise(HARDEST_DIGITS, student_fn)


LINEAR_PARAMETERS = Exercise(
    id="linear_parameters",
    notebook="01_fp32_baseline",
    function="linear_parameters",
    cases=linear_parameter_cases,
    draw=draw_linear_parameter_cases,
    compare=_compare_integer,
    answers=("ptqlib.models.count_parameters",),
)
INT8_BYTES = Exercise(
    id="int8_bytes",
    notebook="01_fp32_baseline",
    function="int8_bytes",
    cases=int8_bytes_cases,
    draw=draw_int8_bytes_cases,
    compare=_compare_integer,
    answers=("ptqlib.checkpoints.saved_size_bytes",),
    build=build_model,
)
HARDEST_DIGITS = Exercise(
    id="hardest_digits",
    notebook="01_fp32_baseline",
    function="hardest_digits",
    cases=hardest_digit_cases,
    draw=draw_hardest_digit_cases,
    compare=_compare_digits,
    answers=("ptqlib.evaluation.per_class_accuracy",),
)
