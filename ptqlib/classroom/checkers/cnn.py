"""Known-answer checkers for notebook 07's exercises (BatchNorm folding, zero-point padding).

As with ``ptqlib.classroom.checkers``: write your own function, hand it to the checker, and it
runs it on a few hand-picked cases whose answers come from ptqlib. It prints one ``PASS`` line, or
raises ``AssertionError`` naming the first case that fails, what was expected, what your
function returned and a hint about the usual mistake behind that case. A function that
still raises ``NotImplementedError`` (the exercise skeleton) is reported as not attempted
yet, without an error, so the notebook runs top to bottom before you solve anything.

- :func:`check_fold_batchnorm`: ``(weight, bias, running_mean, running_var, gamma, beta,
  eps) -> (folded_weight, folded_bias)``; ``bias`` may be None (no bias: b = 0).
- :func:`check_padded_accumulator`: ``(q_x, zero_point, q_w, padding) -> acc``: the int32
  accumulators ``sum (q_x - Z_x) q_w`` of a stride-1 convolution whose input is padded
  by ``padding`` pixels on every side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional

from ptqlib.batchnorm import fold_parameters
from ptqlib.classroom.checkers.core import Case, WrongAnswer, run_cases

# Folded weights are float32 products: a right answer agrees to float rounding.
FOLD_RELATIVE_TOLERANCE = 1e-5


def _run(
    checker: str, student_fn: Callable, cases: list[Case], compare: Callable[[Any, Any], str]
) -> None:
    """``checkers.core.run_cases`` with a ``compare(got, expected)`` that returns "" when right,
    else the problem."""

    def raise_problem(case: Case, got: Any) -> None:
        problem = compare(got, case.expected)
        if problem:
            raise WrongAnswer(problem)

    run_cases(checker, student_fn, cases, raise_problem)


# --- exercise 1: fold a BatchNorm --------------------------------------------------------------


def _fold_case(name: str, shape: tuple[int, ...], with_bias: bool, eps: float, hint: str) -> Case:
    generator = torch.Generator().manual_seed(len(name) + shape[0])
    channels = shape[0]
    weight = torch.randn(shape, generator=generator)
    bias = torch.randn(channels, generator=generator) if with_bias else None
    mean = torch.randn(channels, generator=generator)
    var = torch.rand(channels, generator=generator) * 2 + 1  # eps=1e-5 is then below tolerance
    gamma = torch.randn(channels, generator=generator)
    beta = torch.randn(channels, generator=generator)
    arguments = (weight, bias, mean, var, gamma, beta, eps)
    names = ("weight", "bias", "mean", "var", "gamma", "beta", "eps")
    return Case(name, tuple(zip(names, arguments, strict=True)), fold_parameters(*arguments), hint)


def fold_cases() -> list[Case]:
    return [
        _fold_case(
            "a Linear weight [3, 3] with a bias",
            (3, 3),
            True,
            1e-5,
            "scale every row (output channel c, axis 0) by k_c = gamma_c / sqrt(var_c + eps), "
            "not every column",
        ),
        _fold_case(
            "a conv weight [3, 2, 3, 3]: k_c multiplies the whole filter c",
            (3, 2, 3, 3),
            True,
            1e-5,
            "reshape k to [C, 1, 1, 1] so it broadcasts over each filter, not over the last axis",
        ),
        _fold_case(
            "no bias (None means b = 0): b' = -mu k + beta",
            (5, 1, 3, 3),
            False,
            1e-5,
            "treat a missing bias as zeros; the folded layer always has one",
        ),
        _fold_case(
            "a large eps, so forgetting it shows",
            (2, 4),
            True,
            0.5,
            "divide by sqrt(var + eps), not sqrt(var)",
        ),
    ]


def _compare_fold(got: Any, expected: tuple[torch.Tensor, torch.Tensor]) -> str:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a pair (folded_weight, folded_bias), got {type(got).__name__}"
    for label, value, right in zip(("weight", "bias"), got, expected, strict=True):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(right.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            return f"folded {label}: expected shape {tuple(right.shape)}, got {shape}"
        if not torch.allclose(
            value.double(), right.double(), rtol=FOLD_RELATIVE_TOLERANCE, atol=1e-5
        ):
            worst = (value.double() - right.double()).abs().max().item()
            return f"folded {label} is off by up to {worst:.4g}"
    return ""


def check_fold_batchnorm(student_fn: Callable) -> None:
    """Check ``student_fn(weight, bias, running_mean, running_var, gamma, beta, eps)
    -> (W', b')`` with ``W'_c = W_c gamma_c / sqrt(var_c + eps)`` and
    ``b'_c = (b_c - mu_c) gamma_c / sqrt(var_c + eps) + beta_c`` (c along axis 0)."""
    _run("check_fold_batchnorm", student_fn, fold_cases(), _compare_fold)


# --- exercise 2: pad with the zero-point ------------------------------------------------------


def _padded_accumulator(
    q_x: torch.Tensor, zero_point: int, q_w: torch.Tensor, padding: int
) -> torch.Tensor:
    """``sum (q_x - Z_x) q_w`` over each window, the input padded with the real 0 (whose
    integer is Z_x, so ``q_x - Z_x`` is 0 there); exact in float64, returned as int64."""
    centred = q_x.double() - zero_point
    return functional.conv2d(centred, q_w.double(), padding=padding).round().long()


def padding_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(7)
    cases = []
    for zero_point, padding, name in (
        (0, 1, "zero-point 0: padding with 0 happens to be right"),
        (37, 1, "zero-point 37, padding 1"),
        (200, 2, "zero-point 200, padding 2"),
    ):
        q_x = torch.randint(0, 256, (2, 3, 6, 5), dtype=torch.uint8, generator=generator)
        q_w = torch.randint(-127, 128, (4, 3, 3, 3), dtype=torch.int8, generator=generator)
        expected = _padded_accumulator(q_x, zero_point, q_w, padding)
        hint = (
            "pad with the zero-point Z_x (the integer of the real 0), not with 0: a padded "
            "pixel must give q_x - Z_x = 0, like the float conv's zero padding"
        )
        arguments = (("q_x", q_x), ("zero_point", zero_point), ("q_w", q_w), ("padding", padding))
        cases.append(Case(name, arguments, expected, hint))
    return cases


def _compare_accumulators(got: Any, expected: torch.Tensor) -> str:
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return f"expected a tensor of shape {tuple(expected.shape)}, got {shape}"
    if got.is_floating_point():
        return f"expected integers (int32 accumulators), got {got.dtype}"
    wrong = got.long() != expected
    if not bool(wrong.any()):
        return ""
    interior = wrong[..., 1:-1, 1:-1]
    where = "only along the border" if not bool(interior.any()) else "inside the image too"
    return f"{int(wrong.sum())} of {wrong.numel()} accumulators are wrong, {where}"


def check_padded_accumulator(student_fn: Callable) -> None:
    """Check ``student_fn(q_x, zero_point, q_w, padding) -> acc`` (stride 1): ``q_x`` uint8
    ``[N, C, H, W]``, ``q_w`` int8 ``[O, C, kh, kw]``; ``acc`` the integer sums
    ``sum (q_x - Z_x) q_w`` of every window of the input padded by ``padding`` pixels."""
    _run("check_padded_accumulator", student_fn, padding_cases(), _compare_accumulators)
