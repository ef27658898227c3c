"""Known-answer checkers for notebook 09's exercises (cross-layer equalization, finding the
layer that breaks).

As with the other checkers: write your own function, hand it to the checker, and it runs it
on a few hand-picked cases whose answers come from ptqlib. It prints one ``PASS`` line, or
raises ``AssertionError`` naming the first case that fails, what was expected, what your
function returned and a hint. A function that still raises ``NotImplementedError`` (the
exercise skeleton) is reported as not attempted yet, without an error.

- :func:`check_cle_scales`: ``(weight1, weight2, depthwise) -> scales``: the equalization
  scale ``s_i = sqrt(r1_i r2_i) / r2_i`` of every channel i between two convolutions, where
  ``r1_i`` is the range of output channel i of the first and ``r2_i`` of input channel i of
  the second (``depthwise``: the second is a depthwise conv, weight ``[C, 1, k, k]``).
- :func:`check_find_culprit`: ``(accuracy_alone, fp32_accuracy, tolerance) -> name or None``:
  from a layer-by-layer table (layer name -> accuracy with only that layer quantized), the
  layer that loses the most, or None when no layer loses more than ``tolerance``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, draw_uniform
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.equalization import equalization_scales

# Scales are ratios of float32 ranges: a right answer agrees to float rounding.
SCALE_RELATIVE_TOLERANCE = 1e-5

# --- exercise 1: the CLE scale of one pair --------------------------------------------------


def _scale_reference(weight1: torch.Tensor, weight2: torch.Tensor, depthwise: bool) -> torch.Tensor:
    first = weight1.abs().flatten(1).amax(dim=1)
    second = weight2.abs().flatten(1) if depthwise else weight2.abs().transpose(0, 1).flatten(1)
    return equalization_scales(first, second.amax(dim=1)).float()


def cle_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(9)
    cases = []
    for name, shape1, shape2, depthwise, hint in (
        (
            "a 3x3 conv (4 outputs) into a pointwise conv 4 -> 3",
            (4, 2, 3, 3),
            (3, 4, 1, 1),
            False,
            "r2_i is the largest |w| of INPUT channel i of the second conv: its axis 1, over "
            "all its output channels, not its axis 0",
        ),
        (
            "a pointwise conv (5 outputs) into a depthwise conv with 5 filters",
            (5, 3, 1, 1),
            (5, 1, 3, 3),
            True,
            "for a depthwise conv, input channel i is filter i (axis 0)",
        ),
        (
            "ranges far apart: one channel 1000x larger in the first layer",
            (3, 2, 3, 3),
            (3, 1, 3, 3),
            True,
            "s_i = sqrt(r1_i r2_i) / r2_i: the first layer is divided by s, the second multiplied",
        ),
    ):
        weight1 = torch.randn(shape1, generator=generator)
        weight2 = torch.randn(shape2, generator=generator)
        if name.startswith("ranges far apart"):
            weight1[1] *= 1000.0
        arguments = (("weight1", weight1), ("weight2", weight2), ("depthwise", depthwise))
        cases.append(Case(name, arguments, _scale_reference(weight1, weight2, depthwise), hint))
    return cases


def _compare_scales(case: Case, got: Any) -> None:
    expected = case.expected
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise WrongAnswer(
            f"expected a tensor of shape {tuple(expected.shape)} (one per channel), got {shape}"
        )
    if not torch.allclose(got.double(), expected.double(), rtol=SCALE_RELATIVE_TOLERANCE):
        raise WrongAnswer(f"expected scales {expected.tolist()}, got {got.tolist()}")


def draw_cle_cases(generator: torch.Generator) -> list[Case]:
    """Random pairs of convolutions, pointwise or depthwise second, ranges far apart."""
    hint = (
        "s_i = sqrt(r1_i r2_i) / r2_i with r1_i the largest |w| of output channel i of the "
        "first conv and r2_i of input channel i of the second"
    )
    cases = []
    for depthwise in (False, True, True):
        channels, inputs, outputs = (int(n) for n in torch.randint(2, 6, (3,), generator=generator))
        weight1 = torch.randn(channels, inputs, 3, 3, generator=generator)
        weight1 *= 10 ** draw_uniform(generator, -2, 2, (channels, 1, 1, 1)).float()
        shape2 = (channels, 1, 3, 3) if depthwise else (outputs, channels, 1, 1)
        weight2 = torch.randn(shape2, generator=generator)
        arguments = (("weight1", weight1), ("weight2", weight2), ("depthwise", depthwise))
        name = f"random convs, {channels} channels, {'depthwise' if depthwise else 'pointwise'}"
        cases.append(Case(name, arguments, _scale_reference(weight1, weight2, depthwise), hint))
    return cases


def check_cle_scales(student_fn: Callable) -> None:
    """Check ``student_fn(weight1, weight2, depthwise) -> scales`` (one per channel) against
    ``ptqlib.equalization.equalization_scales``."""
    run_exercise(CLE_SCALES, student_fn)


# --- exercise 2: find the layer -------------------------------------------------------------


def _culprit_reference(
    accuracy_alone: dict[str, float], fp32_accuracy: float, tolerance: float
) -> str | None:
    """The layer with the lowest accuracy alone, if it loses more than ``tolerance``."""
    worst = min(accuracy_alone, key=accuracy_alone.get)
    return worst if fp32_accuracy - accuracy_alone[worst] > tolerance else None


def culprit_cases() -> list[Case]:
    table = {"conv1": 0.962, "dw1": 0.958, "pw1": 0.961, "dw2": 0.10, "pw2": 0.960, "fc": 0.962}
    within = {name: 0.958 for name in table}
    two_bad = {**table, "dw1": 0.41}
    rows = [
        ("one layer at chance", table, "the culprit is the layer whose accuracy alone is lowest"),
        (
            "no layer loses more than the tolerance",
            within,
            "when every layer alone is within the tolerance of FP32, return None",
        ),
        ("two bad layers: the worse one first", two_bad, "pick the lowest accuracy, not the first"),
    ]
    return [_culprit_case(*row, fp32_accuracy=0.962, tolerance=0.01) for row in rows]


def _culprit_case(
    name: str, accuracies: dict[str, float], hint: str, fp32_accuracy: float, tolerance: float
) -> Case:
    arguments = (
        ("accuracy_alone", accuracies),
        ("fp32_accuracy", fp32_accuracy),
        ("tolerance", tolerance),
    )
    expected = _culprit_reference(accuracies, fp32_accuracy, tolerance)
    return Case(name, arguments, expected, hint)


def draw_culprit_cases(generator: torch.Generator) -> list[Case]:
    """Random layer tables: one bad layer, none beyond the tolerance, two bad layers."""
    hint = "the layer whose accuracy alone is lowest, if it loses more than the tolerance"
    cases = []
    for bad in (1, 0, 2):
        accuracies: dict[str, float] = {}
        while len(set(accuracies.values())) != len(accuracies) or not accuracies:  # no ties
            fp32_accuracy = round(float(draw_uniform(generator, 0.9, 0.99)), 4)
            tolerance = round(float(draw_uniform(generator, 0.005, 0.03)), 4)
            count = int(torch.randint(3, 8, (), generator=generator))
            losses = torch.randperm(999, generator=generator)[:count] / 1000 * tolerance
            accuracies = {
                f"layer{n}": round(fp32_accuracy - float(loss), 6) for n, loss in enumerate(losses)
            }
            for n in torch.randperm(count, generator=generator)[:bad].tolist():
                low = float(draw_uniform(generator, 0.1, fp32_accuracy - 2 * tolerance))
                accuracies[f"layer{n}"] = round(low, 4)
        name = f"{count} layers, {bad} of them bad"
        cases.append(_culprit_case(name, accuracies, hint, fp32_accuracy, tolerance))
    return cases


def _compare_names(case: Case, got: Any) -> None:
    if got != case.expected:
        raise WrongAnswer(f"expected {case.expected!r}, got {got!r}")


def check_find_culprit(student_fn: Callable) -> None:
    """Check ``student_fn(accuracy_alone, fp32_accuracy, tolerance) -> layer name or None``."""
    run_exercise(FIND_CULPRIT, student_fn)


CLE_SCALES = Exercise(
    id="cle_scales",
    notebook="09_when_8bit_ptq_breaks",
    function="my_cle_scales",
    cases=cle_cases,
    draw=draw_cle_cases,
    compare=_compare_scales,
    answers=(
        "ptqlib.equalization.equalization_scales",
        "ptqlib.equalization.cross_layer_equalization",
    ),
)
FIND_CULPRIT = Exercise(
    id="find_culprit",
    notebook="09_when_8bit_ptq_breaks",
    function="my_find_culprit",
    cases=culprit_cases,
    draw=draw_culprit_cases,
    compare=_compare_names,
    answers=("ptqlib.debugging.debug_model",),
)
