"""Known-answer checkers for notebook 07's exercises (folding a BatchNorm into the layer
*after* it, and the error that padding with 0 instead of the zero-point makes).

As with ``ptqlib.classroom.checkers``: write your own function, hand it to the checker, and it
runs it on a few hand-picked cases. It prints one ``PASS`` line, or raises ``AssertionError``
naming the first case that fails, what was expected, what your function returned and a hint
about the usual mistake behind that case. A function that still raises
``NotImplementedError`` (the exercise skeleton) is reported as not attempted yet, without an
error, so the notebook runs top to bottom before you solve anything.

- :func:`check_fold_into_next`: ``(weight, bias, running_mean, running_var, gamma, beta,
  eps) -> (folded_weight, folded_bias)``: a BatchNorm over the *inputs* of a Linear
  ``[out, in]`` folded into it (``bias`` may be None: b = 0).
- :func:`check_border_error`: ``(q_w, zero_point, height, width, padding) -> error``: for a
  stride-1 convolution of an ``height x width`` input, the integer difference
  ``acc(padded with 0) - acc(padded with Z_x)`` at every output pixel and channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional

from ptqlib.classroom.checkers.core import Case, WrongAnswer, draw_uniform
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise

# Folded weights are float32 products: a right answer agrees to float rounding.
FOLD_RELATIVE_TOLERANCE = 1e-5


def _raising(compare: Callable[[Any, Any], str]) -> Callable[[Case, Any], None]:
    """A comparison for :class:`Exercise` from a ``compare(got, expected)`` that returns ""
    when right, else the problem."""

    def raise_problem(case: Case, got: Any) -> None:
        problem = compare(got, case.expected)
        if problem:
            raise WrongAnswer(problem)

    return raise_problem


# --- exercise 1: fold a BatchNorm into the next layer ----------------------------------------


def _fold_into_next(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(x)_i = k_i x_i + (beta_i - mu_i k_i), k = gamma / sqrt(var + eps), then
    y = W BN(x) + b = (W diag(k)) x + (b + W (beta - mu k)). In float64, returned float32.
    ``tests/test_checkers_cnn.py`` checks it against ``Linear(BatchNorm1d(x))``."""
    k = gamma.double() / torch.sqrt(var.double() + eps)
    shift = beta.double() - mean.double() * k
    bias = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.double()
    folded_weight = weight.double() * k[None, :]
    folded_bias = bias + weight.double() @ shift
    return folded_weight.float(), folded_bias.float()


FOLD_NAMES = ("weight", "bias", "running_mean", "running_var", "gamma", "beta", "eps")


def _fold_case(
    name: str,
    shape: tuple[int, int],
    with_bias: bool,
    eps: float,
    hint: str,
    generator: torch.Generator | None = None,
) -> Case:
    if generator is None:
        generator = torch.Generator().manual_seed(len(name) + shape[0])
    out_features, in_features = shape
    weight = torch.randn(shape, generator=generator)
    bias = torch.randn(out_features, generator=generator) if with_bias else None
    mean = torch.randn(in_features, generator=generator)
    var = torch.rand(in_features, generator=generator) * 2 + 1
    gamma = torch.randn(in_features, generator=generator)
    beta = torch.randn(in_features, generator=generator)
    arguments = (weight, bias, mean, var, gamma, beta, eps)
    expected = _fold_into_next(*arguments)
    return Case(name, tuple(zip(FOLD_NAMES, arguments, strict=True)), expected, hint)


def fold_cases() -> list[Case]:
    return [
        _fold_case(
            "a Linear [2, 4] after a BatchNorm over its 4 inputs",
            (2, 4),
            True,
            1e-5,
            "the BatchNorm scales the *inputs*: multiply the columns of W (axis 1) by "
            "k_i = gamma_i / sqrt(var_i + eps), not the rows",
        ),
        _fold_case(
            "no bias (None means b = 0)",
            (3, 3),
            False,
            1e-5,
            "the BatchNorm's shift beta - mu k passes through W: b' = b + W (beta - mu k), "
            "with b = 0 here",
        ),
        _fold_case(
            "a wide layer [5, 7] with a bias",
            (5, 7),
            True,
            1e-5,
            "b' = b + W (beta - mu k): the shift is a vector over the inputs, mixed by W",
        ),
        _fold_case(
            "a large eps, so forgetting it shows",
            (2, 3),
            True,
            0.5,
            "divide by sqrt(var + eps), not sqrt(var)",
        ),
    ]


def draw_fold_cases(generator: torch.Generator) -> list[Case]:
    """Random Linear layers after random BatchNorms, with and without a bias, random eps."""
    hint = "W' = W diag(k) and b' = b + W (beta - mu k), k = gamma / sqrt(var + eps)"
    cases = []
    for with_bias in (True, True, False):
        shape = tuple(int(n) for n in torch.randint(1, 7, (2,), generator=generator))
        eps = float(10 ** draw_uniform(generator, -5, 0))
        name = f"a random Linear {list(shape)}" + (" with a bias" if with_bias else ", no bias")
        cases.append(_fold_case(name, shape, with_bias, eps, hint, generator))
    return cases


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


def check_fold_into_next(student_fn: Callable) -> None:
    """Check ``student_fn(weight, bias, running_mean, running_var, gamma, beta, eps)
    -> (W', b')`` for a BatchNorm over the inputs of a Linear ``weight [out, in]``:
    ``W' = W diag(k)``, ``b' = b + W (beta - mu k)``, ``k = gamma / sqrt(var + eps)``."""
    run_exercise(FOLD_INTO_NEXT, student_fn)


# --- exercise 2: the error of padding with 0 ----------------------------------------------------


def _border_error(
    q_w: torch.Tensor, zero_point: int, height: int, width: int, padding: int
) -> torch.Tensor:
    """acc(padded with 0) - acc(padded with Z_x) = sum over the taps that fall on padding of
    (0 - Z_x) q_w: a convolution of the padding's indicator with the filters, times -Z_x.
    The image itself cancels. Exact in float64, returned as int64 ``[O, OH, OW]``."""
    channels = q_w.shape[1]
    indicator = functional.pad(
        torch.zeros(1, channels, height, width, dtype=torch.float64), (padding,) * 4, value=1.0
    )
    taps = functional.conv2d(indicator, q_w.double())[0]
    return (-zero_point * taps).round().long()


HINT_BORDER = (
    "a padded pixel holds 0 instead of Z_x, so each tap of the filter that falls on padding "
    "adds (0 - Z_x) q_w; the interior of the image is the same both ways and cancels"
)


def _border_case(
    name: str, generator: torch.Generator, shape: tuple[int, ...], zero_point: int, hint: str
) -> Case:
    out_channels, channels, kernel_h, kernel_w, height, width, padding = shape
    q_w = torch.randint(
        -127, 128, (out_channels, channels, kernel_h, kernel_w), dtype=torch.int8,
        generator=generator,
    )  # fmt: skip
    expected = _border_error(q_w, zero_point, height, width, padding)
    arguments = (
        ("q_w", q_w),
        ("zero_point", zero_point),
        ("height", height),
        ("width", width),
        ("padding", padding),
    )
    return Case(name, arguments, expected, hint)


def border_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(7)
    return [
        _border_case(
            "zero-point 0: padding with 0 is right, no error",
            generator,
            (2, 1, 3, 3, 5, 5, 1),
            0,
            "with Z_x = 0 the two paddings are the same: the error is 0 everywhere",
        ),
        _border_case(
            "one 3x3 filter, zero-point 33, padding 1",
            generator,
            (1, 1, 3, 3, 5, 6, 1),
            33,
            "the corner output sees 5 padded taps, an edge output 3, the interior none: "
            "error = -Z_x * (sum of the taps on padding)",
        ),
        _border_case(
            "4 filters over 3 channels, zero-point 200, padding 2",
            generator,
            (4, 3, 3, 3, 6, 5, 2),
            200,
            "sum the padded taps over the input channels too; the output is [O, H + 2p - kh + 1, "
            "W + 2p - kw + 1]",
        ),
    ]


def draw_border_cases(generator: torch.Generator) -> list[Case]:
    """Random filters (1x1 to 5x5), sizes, zero-points and paddings."""
    cases = []
    for _ in range(2):
        kernel = int(torch.randint(1, 6, (), generator=generator))
        padding = int(torch.randint(0, kernel // 2 + 1, (), generator=generator))
        height, width = (
            int(n) for n in torch.randint(kernel, kernel + 5, (2,), generator=generator)
        )
        out_channels, channels = (int(n) for n in torch.randint(1, 4, (2,), generator=generator))
        zero_point = int(torch.randint(1, 256, (), generator=generator))
        shape = (out_channels, channels, kernel, kernel, height, width, padding)
        name = f"{kernel}x{kernel} filters, zero-point {zero_point}, padding {padding}"
        cases.append(_border_case(name, generator, shape, zero_point, HINT_BORDER))
    return cases


def _compare_integers_exactly(got: Any, expected: torch.Tensor) -> str:
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return f"expected a tensor of shape {tuple(expected.shape)}, got {shape}"
    if got.is_floating_point():
        return f"expected integers (accumulator differences), got {got.dtype}"
    wrong = got.long() != expected
    if not bool(wrong.any()):
        return ""
    return f"{int(wrong.sum())} of {wrong.numel()} values are wrong"


def check_border_error(student_fn: Callable) -> None:
    """Check ``student_fn(q_w, zero_point, height, width, padding) -> error`` (stride 1):
    ``q_w`` int8 ``[O, C, kh, kw]``; ``error`` the integers ``acc(padded with 0) -
    acc(padded with Z_x)`` of every output, ``[O, H + 2p - kh + 1, W + 2p - kw + 1]``."""
    run_exercise(BORDER_ERROR, student_fn)


FOLD_INTO_NEXT = Exercise(
    id="fold_into_next",
    notebook="07_convolutions_and_batchnorm",
    function="fold_into_next",
    cases=fold_cases,
    draw=draw_fold_cases,
    compare=_raising(_compare_fold),
    answers=("ptqlib.batchnorm.fold_parameters",),
)
BORDER_ERROR = Exercise(
    id="border_error",
    notebook="07_convolutions_and_batchnorm",
    function="border_error",
    cases=border_cases,
    draw=draw_border_cases,
    compare=_raising(_compare_integers_exactly),
    answers=("ptqlib.int8_layers.Int8Conv2d",),
)
