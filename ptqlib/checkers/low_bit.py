"""Known-answer checkers for the exercises of notebook 06 (when PTQ breaks).

Each checker calls the student's function on fixed cases and compares with ptqlib's answer
(``ptqlib.checkers`` does the running and the failure messages). A function that still
raises ``NotImplementedError`` is reported as "not attempted yet", not as a failure, so the
notebook runs top to bottom before the exercises are done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.checkers.core import (
    Case,
    WrongAnswer,
    _check_tensor,
    _first_difference,
    compare_integers,
    run_cases,
)
from ptqlib.lowbit.packing import pack


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


def bias_shift_reference(
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
            bias_shift_reference(weight, quantized, inputs),
            "average the output error over the rows (images), one number per output",
        ),
    ]


def check_bias_shift(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, quantized_weight, inputs) -> shift``: the mean over the
    rows of ``inputs`` [N, in] of ``x W~^T - x W^T``, one value per output (float)."""
    run_cases("check_bias_shift", student_fn, bias_shift_cases(), _compare_close)
