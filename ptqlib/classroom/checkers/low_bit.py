"""Known-answer checkers for the exercises of notebook 06 (when PTQ breaks): packing 2-bit
values, bias correction's shift, one GPTQ column, AdaRound's loss, a per-tensor B-bit scale.

Each checker calls the student's function on fixed cases and compares with ptqlib's answer
(``ptqlib.classroom.checkers`` does the running and the failure messages). A function that still
raises ``NotImplementedError`` is reported as "not attempted yet", not as a failure, so the
notebook runs top to bottom before the exercises are done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import (
    Case,
    WrongAnswer,
    _check_tensor,
    _first_difference,
    compare_integers,
    run_cases,
)
from ptqlib.lowbit.rounding import rectified_sigmoid
from ptqlib.lowbit.weights import weight_qparams
from ptqlib.packing import pack


def _compare_close(case: Case, got: Any) -> None:
    """Float results, right to 1e-5 relative (plus 1e-6 absolute, for the zeros)."""
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        got = torch.tensor(float(got), dtype=torch.float64)  # a plain number is fine too
    got = _check_tensor(got, case.expected, "float").to(torch.float64)
    expected = case.expected.to(torch.float64)
    close = (got - expected).abs() <= 1e-5 * expected.abs() + 1e-6
    if not bool(close.all()):
        raise WrongAnswer(_first_difference(got, expected, close))


def pack_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(6)
    random = torch.randint(0, 4, (24,), generator=generator)
    return [
        Case(
            "four values, one byte",
            (("values", torch.tensor([0, 1, 2, 3])),),
            pack(torch.tensor([0, 1, 2, 3]), 2, 0),
            "value i goes to bits 2i and 2i+1 of the byte: byte = sum_i u_i * 4**i",
        ),
        Case(
            "all threes",
            (("values", torch.full((8,), 3)),),
            pack(torch.full((8,), 3), 2, 0),
            "four 2-bit values of 3 fill a byte with ones: 255",
        ),
        Case(
            "a count that is not a multiple of 4",
            (("values", torch.tensor([1, 2, 3, 1, 2])),),
            pack(torch.tensor([1, 2, 3, 1, 2]), 2, 0),
            "pad the last byte with zeros: ceil(5 / 4) = 2 bytes",
        ),
        Case(
            "24 random values",
            (("values", random),),
            pack(random, 2, 0),
            "reshape to [-1, 4] after padding, then weight the columns by 1, 4, 16, 64",
        ),
    ]


def check_pack_two_bit(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(values) -> bytes``: values 0..3 (int64, 1-d), four per byte, the
    first value in the lowest two bits, the last byte padded with zeros; a uint8 tensor."""
    run_cases("check_pack_two_bit", student_fn, pack_cases(), compare_integers)


def _bias_shift(
    weight: torch.Tensor, quantized_weight: torch.Tensor, inputs: torch.Tensor
) -> torch.Tensor:
    """Bias correction's shift E[W~ x] - E[W x] = (W~ - W) E[x] over the rows of ``inputs``."""
    return (quantized_weight - weight) @ inputs.mean(dim=0)


def bias_shift_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(60)
    weight = torch.randn(4, 6, generator=generator)
    quantized = torch.round(weight * 2) / 2
    inputs = torch.rand(50, 6, generator=generator)
    identity = torch.eye(3)
    return [
        Case(
            "no rounding error, no shift",
            (("weight", identity), ("quantized_weight", identity), ("inputs", torch.ones(5, 3))),
            torch.zeros(3),
            "W~ = W gives a shift of exactly 0",
        ),
        Case(
            "one weight rounded up by 0.5, input always 2",
            (
                ("weight", torch.tensor([[1.0, 0.0]])),
                ("quantized_weight", torch.tensor([[1.5, 0.0]])),
                ("inputs", torch.tensor([[2.0, 7.0], [2.0, -7.0]])),
            ),
            torch.tensor([1.0]),
            "(1.5 - 1.0) * mean(x_0) = 0.5 * 2 = 1; the second input has weight error 0",
        ),
        Case(
            "a 4x6 layer rounded to halves",
            (("weight", weight), ("quantized_weight", quantized), ("inputs", inputs)),
            _bias_shift(weight, quantized, inputs),
            "average the output error over the rows (images), one number per output",
        ),
    ]


def check_bias_shift(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, quantized_weight, inputs) -> shift``: the mean over the
    rows of ``inputs`` [N, in] of ``x W~^T - x W^T``, one value per output (float)."""
    run_cases("check_bias_shift", student_fn, bias_shift_cases(), _compare_close)


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


def _gptq_arguments(seed: int, out_features: int, in_features: int, column: int) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator, dtype=torch.float64)
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
    for name, (seed, out_features, in_features, column), hint in [
        (
            "the first column of a 3x4 layer",
            (61, 3, 4, 0),
            "q = clamp(round(w_j / S)); err = (w_j - S q) / Hinv_jj; w_k -= err * Hinv_jk",
        ),
        (
            "a middle column: earlier columns stay as they are",
            (62, 4, 6, 2),
            "only the columns k > j move; columns before j and column j itself do not",
        ),
        (
            "the last column: nothing left to update",
            (63, 2, 5, 4),
            "after the last column there is no later column: the weight is returned unchanged",
        ),
    ]:
        arguments = _gptq_arguments(seed, out_features, in_features, column)
        expected = _gptq_column(*(value for _, value in arguments))
        cases.append(Case(name, arguments, expected, hint))
    return cases


def _compare_gptq_column(case: Case, got: Any) -> None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise WrongAnswer(f"your function should return a pair (q, weight), got {got!r}")
    compare_integers(Case(case.name, case.arguments, case.expected[0], case.hint), got[0])
    _compare_close(Case(case.name, case.arguments, case.expected[1], case.hint), got[1])


def check_gptq_column(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, hessian_inverse, column, scale, quant_min, quant_max) ->
    (q, updated_weight)``: quantize column ``column`` of ``weight`` [out, in] to nearest
    (one ``scale`` per output row), then move every later column to compensate its error."""
    run_cases("check_gptq_column", student_fn, gptq_column_cases(), _compare_gptq_column)


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
        names = ("weight", "v", "scale", "inputs", "regularisation", "beta")
        expected = _adaround_loss(*arguments).detach()
        cases.append(Case(name, tuple(zip(names, arguments, strict=True)), expected, hint))
    return cases


def check_adaround_loss(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, v, scale, inputs, regularisation, beta) -> loss``:
    AdaRound's reconstruction error plus its rounding regulariser, one number."""

    def compare(case: Case, got: Any) -> None:
        if isinstance(got, torch.Tensor):
            got = got.detach()
        _compare_close(case, got)

    run_cases("check_adaround_loss", student_fn, adaround_loss_cases(), compare)


# --- Per-tensor low-bit scale (exercise 5) ---------------------------------------------------


def per_tensor_scale_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(65)
    gaussian = torch.randn(8, 16, generator=generator)
    cases = []
    for name, weight, bits, hint in [
        (
            "2 bits, the largest |w| negative",
            torch.tensor([[0.5, -2.0], [1.0, 0.25]]),
            2,
            "S = max|w| / 2^(B-1): -max|w| lands exactly on -2^(B-1)",
        ),
        ("3 bits, a Gaussian layer", gaussian, 3, "one scale for the whole tensor: max over all"),
        ("4 bits, a Gaussian layer", gaussian * 0.1, 4, "at 4 bits divide by 2^3 = 8, not 7.5"),
    ]:
        expected = weight_qparams(weight, bits, per_channel=False).scale
        cases.append(Case(name, (("weight", weight), ("bits", bits)), expected, hint))
    return cases


def check_per_tensor_scale(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, bits) -> scale``: one B-bit weight scale (B <= 4) for the
    whole tensor, as section 1 of notebook 06 defines it."""
    run_cases("check_per_tensor_scale", student_fn, per_tensor_scale_cases(), _compare_close)
