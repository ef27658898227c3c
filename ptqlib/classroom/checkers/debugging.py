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

from ptqlib.classroom.checkers.core import Case, WrongAnswer, run_cases
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


def check_cle_scales(student_fn: Callable) -> None:
    """Check ``student_fn(weight1, weight2, depthwise) -> scales`` (one per channel) against
    ``ptqlib.equalization.equalization_scales``."""
    run_cases("check_cle_scales", student_fn, cle_cases(), _compare_scales)


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
    cases = []
    for name, accuracies, hint in (
        ("one layer at chance", table, "the culprit is the layer whose accuracy alone is lowest"),
        (
            "no layer loses more than the tolerance",
            within,
            "when every layer alone is within the tolerance of FP32, return None",
        ),
        ("two bad layers: the worse one first", two_bad, "pick the lowest accuracy, not the first"),
    ):
        arguments = (("accuracy_alone", accuracies), ("fp32_accuracy", 0.962), ("tolerance", 0.01))
        expected = _culprit_reference(accuracies, 0.962, 0.01)
        cases.append(Case(name, arguments, expected, hint))
    return cases


def _compare_names(case: Case, got: Any) -> None:
    if got != case.expected:
        raise WrongAnswer(f"expected {case.expected!r}, got {got!r}")


def check_find_culprit(student_fn: Callable) -> None:
    """Check ``student_fn(accuracy_alone, fp32_accuracy, tolerance) -> layer name or None``."""
    run_cases("check_find_culprit", student_fn, culprit_cases(), _compare_names)
