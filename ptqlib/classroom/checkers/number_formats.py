"""Known-answer checkers for the exercises of notebook 12 (number formats): decoding an FP8
E4M3 byte by hand, choosing an MX block's E8M0 scale, one step of k-means.

As with the other checkers: each runs the student's function on fixed cases and compares
with ``ptqlib.formats``; a function that still raises ``NotImplementedError`` is reported as
not attempted yet, without an error.

- :func:`check_decode_e4m3`: ``(byte) -> float``: the value of one E4M3 bit pattern
  (an int 0..255), NaN for the NaN patterns;
- :func:`check_mx_scale_code`: ``(block, emax) -> int``: the E8M0 code of an MX block's
  shared scale (OCP MX v1.0 section 6.3) for elements whose largest normal has exponent
  ``emax`` (E2M1: 2, E4M3: 8);
- :func:`check_kmeans_step`: ``(values, centroids) -> new_centroids``: assign every value to
  its nearest centroid and move each centroid to the mean of its values (one that gets none
  stays).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float, as_integer, run_cases
from ptqlib.formats.codebook import nearest_centroid
from ptqlib.formats.microscaling import shared_exponent
from ptqlib.formats.minifloat import E2M1, E4M3, decode

# --- exercise 1: one E4M3 byte by hand ------------------------------------------------------


def decode_cases() -> list[Case]:
    cases = []
    for byte, name, hint in (
        (0x38, "0 0111 000: exponent 7 = the bias", "value = 2^(e - 7) * (1 + m / 8) for e >= 1"),
        (0x4B, "0 1001 011", "1.375 * 2^(9 - 7): the mantissa 011 is 3/8"),
        (0xC4, "a negative number: 1 1000 100", "the top bit is the sign"),
        (0x7E, "the largest: 0 1111 110", "E4M3 has no infinity: exponent 1111 is a normal binade"),
        (0x05, "a subnormal: 0 0000 101", "exponent 0: value = 2^(1 - 7) * (m / 8), no leading 1"),
        (0x80, "negative zero", "-0.0: the sign bit alone"),
        (0x7F, "0 1111 111", "the one NaN pattern (with either sign): return float('nan')"),
    ):
        expected = float(decode(torch.tensor([byte]), E4M3))
        cases.append(Case(name, (("byte", byte),), expected, hint))
    return cases


def _compare_decoded(case: Case, got: Any) -> None:
    value = as_float(got, "the decoded value")
    if math.isnan(case.expected):
        if not math.isnan(value):
            raise WrongAnswer(f"expected NaN, got {value!r}")
    elif value != case.expected or math.copysign(1, value) != math.copysign(1, case.expected):
        raise WrongAnswer(f"expected {case.expected!r}, got {value!r}")


def check_decode_e4m3(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(byte) -> float`` against ``ptqlib.formats.minifloat.decode``."""
    run_cases("check_decode_e4m3", student_fn, decode_cases(), _compare_decoded)


# --- exercise 2: an MX block's scale --------------------------------------------------------


def _scale_code(block: torch.Tensor, emax: int) -> int:
    return int(shared_exponent(block.abs().max(), emax)) + 127


def scale_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(12)
    random_block = torch.randn(32, generator=generator) * 0.05
    cases = []
    for name, block, emax, hint in (
        (
            "32 weights, E2M1 elements",
            random_block,
            E2M1.max_exponent,
            "X = 2^(floor(log2(max |v|)) - emax); its E8M0 code is the exponent + 127",
        ),
        (
            "amax 3.5 with E2M1: the block maximum saturates",
            torch.linspace(-3.5, 3.5, 32),
            E2M1.max_exponent,
            "floor, not round: 3.5 is in the binade [2, 4), so X = 2^(1 - 2)",
        ),
        (
            "amax exactly 4.0, E4M3 elements",
            torch.linspace(-4.0, 1.0, 32),
            E4M3.max_exponent,
            "log2(4) = 2 exactly, so X = 2^(2 - 8)",
        ),
        (
            "an all-zero block",
            torch.zeros(32),
            E2M1.max_exponent,
            "log2(0) is -inf: the exponent is clamped to E8M0's smallest, -127 (code 0)",
        ),
    ):
        arguments = (("block", block), ("emax", emax))
        cases.append(Case(name, arguments, _scale_code(block, emax), hint))
    return cases


def _compare_code(case: Case, got: Any) -> None:
    code = as_integer(got, "the E8M0 code")
    if code != case.expected:
        raise WrongAnswer(
            f"expected code {case.expected} (X = 2^{case.expected - 127}), got {code}"
        )


def check_mx_scale_code(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(block, emax) -> int`` (the E8M0 code of the block's scale)."""
    run_cases("check_mx_scale_code", student_fn, scale_cases(), _compare_code)


# --- exercise 3: one k-means step -----------------------------------------------------------


def _kmeans_step(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    assignment = nearest_centroid(values.double(), centroids.double())
    counts = torch.bincount(assignment, minlength=len(centroids))
    sums = torch.bincount(assignment, weights=values.double(), minlength=len(centroids))
    return torch.where(counts > 0, sums / counts.clamp(min=1), centroids.double()).float()


def kmeans_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(3)
    weights = torch.randn(200, generator=generator) * 0.1
    cases = []
    for name, values, centroids, hint in (
        (
            "two clear clusters",
            torch.tensor([0.0, 0.1, 0.2, 1.0, 1.1, 1.2]),
            torch.tensor([0.3, 0.9]),
            "each centroid becomes the mean of the values nearest to it",
        ),
        (
            "a centroid that gets no value stays",
            torch.tensor([0.0, 0.1, 0.2]),
            torch.tensor([0.1, 5.0]),
            "guard the division: a centroid with no values keeps its place",
        ),
        (
            "200 weights, 4 centroids evenly spaced from min to max",
            weights,
            torch.linspace(float(weights.min()), float(weights.max()), 4),
            "nearest by absolute distance |v - c|",
        ),
    ):
        arguments = (("values", values), ("centroids", centroids))
        cases.append(Case(name, arguments, _kmeans_step(values, centroids), hint))
    return cases


def _compare_centroids(case: Case, got: Any) -> None:
    expected = case.expected
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        raise WrongAnswer(f"expected a tensor of {len(expected)} centroids, got {got!r:.80}")
    if not torch.allclose(got.double(), expected.double(), rtol=1e-5, atol=1e-7):
        raise WrongAnswer(f"expected {expected.tolist()}, got {got.tolist()}")


def check_kmeans_step(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(values, centroids) -> new_centroids`` (one Lloyd iteration)."""
    run_cases("check_kmeans_step", student_fn, kmeans_cases(), _compare_centroids)
