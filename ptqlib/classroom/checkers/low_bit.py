"""Known-answer checkers for the exercises of notebook 06 (when PTQ breaks): packing 2-bit
values, the mean of a rectified Gaussian (data-free bias correction), the full grid's step
gain; the rounding exercises (one GPTQ column, AdaRound's loss) are in
:mod:`ptqlib.classroom.checkers.low_bit_rounding`.

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
    compare_close,
    compare_integers,
    draw_uniform,
)
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.packing import pack


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
    compare=compare_close,
)
STEP_GAIN_DB = Exercise(
    id="step_gain_db",
    notebook="06_when_ptq_breaks",
    function="step_gain_db",
    cases=step_gain_cases,
    draw=draw_step_gain_cases,
    compare=compare_close,
)
