"""Known-answer checkers for the exercises of notebook 06 (when PTQ breaks): packing 2-bit
values, the mean of a rectified Gaussian (data-free bias correction), one GPTQ column,
AdaRound's loss, the full grid's step gain.

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
    draw_uniform,
)
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.lowbit.rounding import rectified_sigmoid
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


def _pack_case(name: str, values: list | torch.Tensor, hint: str) -> Case:
    values = torch.as_tensor(values, dtype=torch.int64)
    return Case(name, (("values", values),), pack(values, 2, 0), hint)


def pack_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(6)
    random = torch.randint(0, 4, (24,), generator=generator)
    return [
        _pack_case(
            "four values, one byte",
            [0, 1, 2, 3],
            "value i goes to bits 2i and 2i+1 of the byte: byte = sum_i u_i * 4**i",
        ),
        _pack_case("all threes", [3] * 8, "four 2-bit values of 3 fill a byte with ones: 255"),
        _pack_case(
            "a count that is not a multiple of 4",
            [1, 2, 3, 1, 2],
            "pad the last byte with zeros: ceil(5 / 4) = 2 bytes",
        ),
        _pack_case(
            "24 random values",
            random,
            "reshape to [-1, 4] after padding, then weight the columns by 1, 4, 16, 64",
        ),
    ]


def draw_pack_cases(generator: torch.Generator) -> list[Case]:
    """Random values 0..3 of random lengths, some not a multiple of 4."""
    hint = "four values per byte, the first in the lowest two bits; pad the last byte with zeros"
    cases = []
    for _ in range(3):
        count = int(torch.randint(1, 40, (), generator=generator))
        values = torch.randint(0, 4, (count,), generator=generator)
        cases.append(_pack_case(f"{count} random values", values, hint))
    return cases


def _compare_bytes(case: Case, got: Any) -> None:
    """The packed values as bytes: a uint8 tensor (an int64 one holds eight bytes per value,
    which is what packing avoids), equal to ``case.expected``."""
    if isinstance(got, torch.Tensor) and got.dtype != torch.uint8:
        raise WrongAnswer(
            f"expected bytes, a torch.uint8 tensor, got dtype {got.dtype}: every element of "
            "that type takes more than one byte (convert with .to(torch.uint8))"
        )
    compare_integers(case, got)


def check_pack_two_bit(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(values) -> bytes``: values 0..3 (int64, 1-d), four per byte, the
    first value in the lowest two bits, the last byte padded with zeros; a uint8 tensor."""
    run_exercise(PACK_TWO_BIT, student_fn)


# --- Data-free bias correction: E[ReLU(z)] (exercise 2) -------------------------------------


def _relu_mean(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """E[ReLU(z)] for z ~ N(beta, gamma^2): sigma phi(beta/sigma) + beta Phi(beta/sigma),
    sigma = |gamma| (DFQ, Nagel et al. 2019, appendix C; the white paper's section 3.3).
    ``tests/test_checkers_low_bit.py`` compares it with a sampled mean."""
    beta, sigma = beta.to(torch.float64), gamma.to(torch.float64).abs()
    t = beta / sigma
    density = torch.exp(-0.5 * t**2) / (2 * torch.pi) ** 0.5
    return sigma * density + beta * torch.special.ndtr(t)


def _relu_mean_case(name: str, beta: list[float] | torch.Tensor, gamma, hint: str) -> Case:
    beta = torch.as_tensor(beta, dtype=torch.float32)
    gamma = torch.as_tensor(gamma, dtype=torch.float32)
    return Case(name, (("beta", beta), ("gamma", gamma)), _relu_mean(beta, gamma), hint)


def relu_mean_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(60)
    return [
        _relu_mean_case(
            "beta = 0, gamma = 1",
            [0.0],
            [1.0],
            "half the mass is cut to 0; the other half has mean sigma * sqrt(2/pi): "
            "E = sigma * phi(0) = 0.3989",
        ),
        _relu_mean_case(
            "a channel far below zero and one far above",
            [-8.0, 8.0],
            [1.0, 1.0],
            "beta far below 0: almost every z is cut, E ~ 0; far above: the ReLU does nothing, "
            "E ~ beta",
        ),
        _relu_mean_case(
            "a negative gamma",
            [0.5, -0.3],
            [-2.0, 0.7],
            "BatchNorm's gamma may be negative: the standard deviation of z is |gamma|",
        ),
        _relu_mean_case(
            "16 channels",
            torch.randn(16, generator=generator),
            torch.rand(16, generator=generator) * 2 + 0.1,
            "E[ReLU(z)] = sigma phi(beta / sigma) + beta Phi(beta / sigma): neither beta nor "
            "ReLU(beta)",
        ),
    ]


def draw_relu_mean_cases(generator: torch.Generator) -> list[Case]:
    """Random channels: means from -3 to 3, standard deviations from 0.1 to 3, either sign."""
    hint = "E[ReLU(z)] = sigma phi(beta / sigma) + beta Phi(beta / sigma), sigma = |gamma|"
    cases = []
    for _ in range(3):
        channels = int(torch.randint(1, 20, (), generator=generator))
        beta = draw_uniform(generator, -3.0, 3.0, (channels,))
        sign = torch.where(torch.rand(channels, generator=generator) < 0.2, -1.0, 1.0)
        gamma = sign * draw_uniform(generator, 0.1, 3.0, (channels,))
        cases.append(_relu_mean_case(f"{channels} random channels", beta, gamma, hint))
    return cases


def check_relu_mean(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(beta, gamma) -> mean``: E[ReLU(z)] for z ~ N(beta, gamma^2), one
    value per channel (float): the expected input of a layer after BatchNorm + ReLU."""
    run_exercise(RELU_MEAN, student_fn)


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
    _compare_close(Case(case.name, case.arguments, expected_weight, case.hint), got[1])


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
    _compare_close(case, got.detach() if isinstance(got, torch.Tensor) else got)


def check_adaround_loss(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, v, scale, inputs, regularisation, beta) -> loss``:
    AdaRound's reconstruction error plus its rounding regulariser, one number."""
    run_exercise(ADAROUND_LOSS, student_fn)


# --- The full grid's step gain (exercise 5) -------------------------------------------------


def _step_gain_db(bits: int) -> torch.Tensor:
    """-20 log10(1 - 2^-B): the SQNR the full-grid scale c / 2^(B-1) gains over torch.ao's
    c / ((2^B - 1) / 2) by its finer step alone. ``tests/test_checkers_low_bit.py`` derives
    it from the two scales of ``ptqlib.lowbit.weights.weight_qparams``."""
    return -20 * torch.log10(torch.tensor(1 - 2.0**-bits, dtype=torch.float64))


def step_gain_cases() -> list[Case]:
    hints = {
        2: "the scales differ by (2^B - 1)/2 / 2^(B-1) = 3/4 at 2 bits; the noise power scales "
        "with S^2, so the gain is 20 log10 of the step ratio (not 10 log10)",
        4: "at 4 bits the step ratio is 15/16: a gain of about half a dB",
        8: "at 8 bits the ratio is 255/256: a few hundredths of a dB, positive",
    }
    return [
        Case(f"{bits} bits", (("bits", bits),), _step_gain_db(bits), hint)
        for bits, hint in hints.items()
    ]


def draw_step_gain_cases(generator: torch.Generator) -> list[Case]:
    """Widths drawn from 2 to 8."""
    hint = "gain = 20 log10(S_torch.ao / S_full) = -20 log10((2^B - 1) / 2^B)"
    widths = torch.randint(2, 9, (3,), generator=generator).tolist()
    return [Case(f"{bits} bits", (("bits", bits),), _step_gain_db(bits), hint) for bits in widths]


def check_step_gain_db(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(bits) -> dB``: the weight-SQNR gain the full grid's finer step
    predicts over torch.ao's scale for B-bit weights (a positive float)."""
    run_exercise(STEP_GAIN_DB, student_fn)


PACK_TWO_BIT = Exercise(
    id="pack_two_bit",
    notebook="06_when_ptq_breaks",
    function="pack_two_bit",
    cases=pack_cases,
    draw=draw_pack_cases,
    compare=_compare_bytes,
    answers=("ptqlib.packing.pack", "ptqlib.packing.pack_entry"),
)
RELU_MEAN = Exercise(
    id="relu_mean",
    notebook="06_when_ptq_breaks",
    function="relu_mean",
    cases=relu_mean_cases,
    draw=draw_relu_mean_cases,
    compare=_compare_close,
)
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
STEP_GAIN_DB = Exercise(
    id="step_gain_db",
    notebook="06_when_ptq_breaks",
    function="step_gain_db",
    cases=step_gain_cases,
    draw=draw_step_gain_cases,
    compare=_compare_close,
)
