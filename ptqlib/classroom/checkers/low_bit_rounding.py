"""Known-answer checkers for notebook 06's rounding exercises: one column of GPTQ
(exercise 3) and AdaRound's loss (exercise 4).

Each checker calls the student's function on fixed cases and compares with ptqlib's answer
(``ptqlib.classroom.checkers.core`` does the running and the failure messages); the other
notebook-06 checkers are in :mod:`ptqlib.classroom.checkers.low_bit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import (
    Case,
    WrongAnswer,
    compare_close,
    compare_integers,
    draw_uniform,
)
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.lowbit.rounding import rectified_sigmoid

# --- GPTQ: one column (exercise 3) -----------------------------------------------------------


def _gptq_column(
    weight: torch.Tensor,
    hessian_inverse: torch.Tensor,
    column: int,
    scale: torch.Tensor,
    quant_min: int,
    quant_max: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ (Optimal Brain Quantization) step. ``tests/test_checkers_low_bit.py``
    checks that applying it column after column, removing each done column from the inverse
    Hessian, gives exactly the integers of ``ptqlib.lowbit.rounding.gptq``."""
    w = weight[:, column]
    q = torch.round(w / scale).clamp(quant_min, quant_max)
    error = (w - scale * q) / hessian_inverse[column, column]
    updated = weight.clone()
    later = slice(column + 1, None)
    updated[:, later] -= error[:, None] * hessian_inverse[column, later][None, :]
    return q.to(torch.int64), updated


def _gptq_arguments(
    seed: int, out_features: int, in_features: int, column: int, at_the_top: bool = False
) -> tuple:
    """A random layer, its damped inverse Hessian and 2-bit scales. ``at_the_top``: the
    first row's largest |w| is positive and in ``column``, so w / S = 2 there, one above the
    grid's top level: only a clamp brings it back."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator, dtype=torch.float64)
    if at_the_top:
        weight[0, column] = 1.5 * weight[0].abs().max()
    inputs = torch.rand(40, in_features, generator=generator, dtype=torch.float64)
    hessian = 2 * inputs.T @ inputs / len(inputs) + 0.01 * torch.eye(in_features)
    scale = weight.abs().amax(dim=1) / 2  # 2-bit grid: S = max|w| / 2^(B-1)
    return (
        ("weight", weight),
        ("hessian_inverse", torch.linalg.inv(hessian)),
        ("column", column),
        ("scale", scale),
        ("quant_min", -2),
        ("quant_max", 1),
    )


def gptq_column_cases() -> list[Case]:
    cases = []
    for name, (seed, out_features, in_features, column, *extra), hint in [
        (
            "the first column of a 3x4 layer",
            (61, 3, 4, 0),
            "q = clamp(round(w_j / S)); err = (w_j - S q) / Hinv_jj; w_k -= err * Hinv_jk",
        ),
        (
            "a middle column: earlier columns stay as they are",
            (62, 4, 6, 2),
            "only the columns k > j move; the columns before j do not (column j may keep w_j "
            "or hold S q)",
        ),
        (
            "the last column: nothing left to update",
            (63, 2, 5, 4),
            "after the last column there is no later column: the weight is returned unchanged",
        ),
        (
            "a weight at +max|w| of its row: w / S = 2, above the grid",
            (64, 3, 5, 1, True),
            "round(w / S) can land outside quant_min..quant_max: clamp it to the grid",
        ),
    ]:
        arguments = _gptq_arguments(seed, out_features, in_features, column, *extra)
        expected = _gptq_column(*(value for _, value in arguments))
        cases.append(Case(name, arguments, expected, hint))
    return cases


def draw_gptq_column_cases(generator: torch.Generator) -> list[Case]:
    """Random layers and columns (the first, a middle one, the last)."""
    hint = "q = clamp(round(w_j / S)); err = (w_j - S q) / Hinv_jj; w_k -= err * Hinv_jk, k > j"
    cases = []
    for where in ("first", "middle", "last"):
        seed = int(torch.randint(2**31, (), generator=generator))
        out_features, in_features = (int(n) for n in torch.randint(2, 7, (2,), generator=generator))
        column = {"first": 0, "middle": in_features // 2, "last": in_features - 1}[where]
        # The middle column holds a weight above the grid: a clamp is needed.
        at_the_top = where == "middle"
        arguments = _gptq_arguments(seed, out_features, in_features, column, at_the_top)
        expected = _gptq_column(*(value for _, value in arguments))
        name = f"the {where} column of a random {out_features}x{in_features} layer"
        cases.append(Case(name, arguments, expected, hint))
    return cases


def _compare_gptq_column(case: Case, got: Any) -> None:
    """q exactly; the later columns to float precision. Column j itself may stay w_j or
    become S q: GPTQ's own code subtracts the update from columns j, j+1, ..., which leaves
    S q in column j (err / [H^-1]_jj times [H^-1]_jj is the whole error)."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise WrongAnswer(f"your function should return a pair (q, weight), got {got!r}")
    expected_q, expected_weight = case.expected
    compare_integers(Case(case.name, case.arguments, expected_q, case.hint), got[0])
    arguments = dict(case.arguments)
    column, scale = arguments["column"], arguments["scale"]
    if isinstance(got[1], torch.Tensor) and got[1].shape == expected_weight.shape:
        on_the_grid = (scale * expected_q).to(torch.float64)
        if torch.allclose(got[1][:, column].to(torch.float64), on_the_grid, rtol=1e-5, atol=1e-6):
            expected_weight = expected_weight.clone()
            expected_weight[:, column] = on_the_grid.to(expected_weight.dtype)
    compare_close(Case(case.name, case.arguments, expected_weight, case.hint), got[1])


def check_gptq_column(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, hessian_inverse, column, scale, quant_min, quant_max) ->
    (q, updated_weight)``: quantize column ``column`` of ``weight`` [out, in] to nearest
    (one ``scale`` per output row), then move every later column to compensate its error."""
    run_exercise(GPTQ_COLUMN, student_fn)


# --- AdaRound: the loss (exercise 4) ---------------------------------------------------------


def _adaround_loss(
    weight: torch.Tensor,
    v: torch.Tensor,
    scale: torch.Tensor,
    inputs: torch.Tensor,
    regularisation: float,
    beta: float,
) -> torch.Tensor:
    """AdaRound's loss as ``ptqlib.lowbit.rounding.adaround`` computes it (without the
    clamp to the integer range); ``tests/test_checkers_low_bit.py`` compares the two."""
    h = rectified_sigmoid(v)
    soft = scale[:, None] * (torch.floor(weight / scale[:, None]) + h)
    reconstruction = ((inputs @ (soft - weight).T) ** 2).sum(dim=1).mean()
    return reconstruction + regularisation * (1 - (2 * h - 1).abs().pow(beta)).sum()


ADAROUND_NAMES = ("weight", "v", "scale", "inputs", "regularisation", "beta")


def adaround_loss_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(64)
    weight = torch.randn(3, 5, generator=generator)
    scale = weight.abs().amax(dim=1) / 2
    inputs = torch.rand(16, 5, generator=generator)
    v = torch.randn(3, 5, generator=generator)
    cases = []
    for name, arguments, hint in [
        (
            "no regularisation: the reconstruction error alone",
            (weight, v, scale, inputs, 0.0, 2.0),
            "W~ = S (floor(W / S) + h(V)), h the rectified sigmoid; mean over rows of "
            "||x W~^T - x W^T||^2",
        ),
        (
            "with the rounding regulariser, beta = 2",
            (weight, v, scale, inputs, 0.1, 2.0),
            "add lambda * sum(1 - |2h - 1|^beta) over every weight",
        ),
        (
            "beta = 20 (early in the annealing)",
            (weight, 3 * v, scale, inputs, 0.5, 20.0),
            "h = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1) with zeta = 1.1, gamma = -0.1",
        ),
    ]:
        expected = _adaround_loss(*arguments).detach()
        cases.append(Case(name, tuple(zip(ADAROUND_NAMES, arguments, strict=True)), expected, hint))
    return cases


def draw_adaround_loss_cases(generator: torch.Generator) -> list[Case]:
    """Random layers, rounding variables, inputs, regularisation weights and betas."""
    hint = (
        "W~ = S (floor(W / S) + h(V)); mean over rows of ||x W~^T - x W^T||^2 plus "
        "lambda * sum(1 - |2h - 1|^beta)"
    )
    cases = []
    for _ in range(3):
        out_features, in_features = (int(n) for n in torch.randint(2, 7, (2,), generator=generator))
        weight = torch.randn(out_features, in_features, generator=generator)
        scale = weight.abs().amax(dim=1) / 2
        inputs = torch.rand(
            int(torch.randint(4, 20, (), generator=generator)), in_features, generator=generator
        )
        v = torch.randn(out_features, in_features, generator=generator) * 2
        regularisation = round(float(draw_uniform(generator, 0.0, 0.5)), 3)
        beta = round(float(draw_uniform(generator, 2.0, 20.0)), 2)
        arguments = (weight, v, scale, inputs, regularisation, beta)
        expected = _adaround_loss(*arguments).detach()
        name = f"a random {out_features}x{in_features} layer, lambda {regularisation}, beta {beta}"
        cases.append(Case(name, tuple(zip(ADAROUND_NAMES, arguments, strict=True)), expected, hint))
    return cases


def _compare_loss(case: Case, got: Any) -> None:
    compare_close(case, got.detach() if isinstance(got, torch.Tensor) else got)


def check_adaround_loss(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, v, scale, inputs, regularisation, beta) -> loss``:
    AdaRound's reconstruction error plus its rounding regulariser, one number."""
    run_exercise(ADAROUND_LOSS, student_fn)


GPTQ_COLUMN = Exercise(
    id="gptq_column",
    notebook="06_when_ptq_breaks",
    function="gptq_column",
    cases=gptq_column_cases,
    draw=draw_gptq_column_cases,
    compare=_compare_gptq_column,
    answers=("ptqlib.lowbit.rounding.gptq",),
)
ADAROUND_LOSS = Exercise(
    id="adaround_loss",
    notebook="06_when_ptq_breaks",
    function="adaround_loss",
    cases=adaround_loss_cases,
    draw=draw_adaround_loss_cases,
    compare=_compare_loss,
    answers=("ptqlib.lowbit.rounding.adaround", "ptqlib.lowbit.rounding.reconstruction_error"),
)
