"""Checkers for notebook 04's exercises 2 and 3: the terms of an integer accumulator.

The functions a student writes, with their arguments in this order:

- :func:`check_affine_accumulator`: ``(products, input_sums, q_w, input_zero_point,
  weight_zero_point) -> acc``. With affine weights (a zero-point ``Z_w``) the accumulator is

      sum_k (q_x,k - Z_x)(q_w,k - Z_w)
        = sum_k q_x,k q_w,k - Z_w sum_k q_x,k - Z_x sum_k q_w,k + K Z_x Z_w,

  and the student gets only the first sum (``products = q_x @ q_w.T``, ``[N, out]``) and the
  row sums of the input (``input_sums``, ``[N]``), not the input itself: the answer has to
  come from the expansion. ``K`` is the number of inputs, ``q_w.shape[1]``.
- :func:`check_folded_constant`: ``(bias, correction, multiplier, shift, output_zero_point)
  -> constant``, the int64 constant ``C`` per output row with which a layer's requantization
  is one multiply-add and one shift: for every GEMM result ``g``,

      ((g + correction + bias) M0 + 2^(n-1)) >> n  +  Z_y  ==  (g M0 + C) >> n,
      C = (bias + correction) M0 + 2^(n-1) + Z_y 2^n,

  because adding a multiple of ``2^n`` before an arithmetic shift adds exactly that multiple
  of 1 after it. ptqlib's fast path folds its constants this way (notebook 05).

The references are written out here in plain integer arithmetic; when an answer is wrong and
equals a classic mistake, the message names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, named_mistake
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.classroom.checkers.int8_conversion import _fixed_point_multiplier_reference

# --- exercise 2: the accumulator with affine weights -------------------------------------------


def _affine_reference(
    products: torch.Tensor,
    input_sums: torch.Tensor,
    q_w: torch.Tensor,
    input_zero_point: int,
    weight_zero_point: int,
) -> torch.Tensor:
    """``sum_k (q_x - Z_x)(q_w - Z_w)`` from the raw products and the input's row sums."""
    depth = q_w.shape[1]
    weight_sums = q_w.to(torch.int64).sum(dim=1)
    return (
        products.to(torch.int64)
        - weight_zero_point * input_sums.to(torch.int64)[:, None]
        - input_zero_point * weight_sums[None, :]
        + depth * input_zero_point * weight_zero_point
    )


HINT_AFFINE = (
    "expand sum_k (q_x,k - Z_x)(q_w,k - Z_w) = products - Z_w * input_sums[:, None] "
    "- Z_x * (row sums of q_w)[None, :] + K * Z_x * Z_w, with K = q_w.shape[1]"
)


def _affine_case(
    name: str, generator: torch.Generator, shape: tuple[int, int, int], zero_x: int, zero_w: int
) -> Case:
    batch, depth, outputs = shape
    q_x = torch.randint(0, 256, (batch, depth), generator=generator)
    q_w = torch.randint(0, 256, (outputs, depth), generator=generator).to(torch.uint8)
    if zero_w == 0:  # symmetric weights live in int8
        q_w = (q_w.to(torch.int16) - 128).to(torch.int8)
    products = (q_x @ q_w.to(torch.int64).T).to(torch.int32)
    input_sums = q_x.sum(dim=1).to(torch.int32)
    arguments = (
        ("products", products),
        ("input_sums", input_sums),
        ("q_w", q_w),
        ("input_zero_point", zero_x),
        ("weight_zero_point", zero_w),
    )
    expected = _affine_reference(products, input_sums, q_w, zero_x, zero_w)
    # The reference must be the direct definition: check it on the real input.
    direct = (q_x - zero_x) @ (q_w.to(torch.int64) - zero_w).T
    assert torch.equal(expected, direct)
    return Case(name, arguments, expected, HINT_AFFINE)


def affine_accumulator_cases() -> list[Case]:
    """uint8 inputs; affine uint8 weights, and symmetric int8 weights (Z_w = 0)."""
    table = [  # name, seed, (N, K, out), Z_x, Z_w
        ("affine weights, Z_w = 131, and an affine input, Z_x = 33", 1, (3, 6, 4), 33, 131),
        ("symmetric weights (Z_w = 0): the input term vanishes", 2, (4, 9, 3), 33, 0),
        ("Z_x = 0 with affine weights: only the input term is left", 3, (2, 5, 5), 0, 118),
        ("784 inputs: the constant K * Z_x * Z_w is large", 4, (2, 784, 3), 200, 250),
    ]
    return [
        _affine_case(name, torch.Generator().manual_seed(seed), shape, zero_x, zero_w)
        for name, seed, shape, zero_x, zero_w in table
    ]


def draw_affine_accumulator_cases(generator: torch.Generator) -> list[Case]:
    """Random shapes and zero-points, affine and symmetric weights."""
    cases = []
    for symmetric in (False, False, True):
        shape = tuple(int(n) for n in torch.randint(2, 40, (3,), generator=generator))
        zero_x = int(torch.randint(0, 256, (), generator=generator))
        zero_w = 0 if symmetric else int(torch.randint(1, 256, (), generator=generator))
        name = f"random {list(shape)} (N, K, out), Z_x = {zero_x}, Z_w = {zero_w}"
        cases.append(_affine_case(name, generator, shape, zero_x, zero_w))
    return cases


def _affine_mistakes(arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
    values = dict(arguments)
    products = values["products"].to(torch.int64)
    input_sums = values["input_sums"].to(torch.int64)[:, None]
    weight_sums = values["q_w"].to(torch.int64).sum(dim=1)[None, :]
    zero_x, zero_w = values["input_zero_point"], values["weight_zero_point"]
    depth = values["q_w"].shape[1]
    return {
        "leave out the constant K * Z_x * Z_w": (
            products - zero_w * input_sums - zero_x * weight_sums
        ),
        "forget the input term -Z_w * sum_k q_x,k": (
            products - zero_x * weight_sums + depth * zero_x * zero_w
        ),
        "forget the weight term -Z_x * sum_k q_w,k": (
            products - zero_w * input_sums + depth * zero_x * zero_w
        ),
        "swap the zero-points (each sum is multiplied by the other tensor's zero-point)": (
            products - zero_x * input_sums - zero_w * weight_sums + depth * zero_x * zero_w
        ),
        "sum the weights over the wrong axis (over outputs, not over the K inputs)": (
            products
            - zero_w * input_sums
            - zero_x * values["q_w"].to(torch.int64).sum()
            + depth * zero_x * zero_w
        ),
    }


def _compare_affine(case: Case, got: Any) -> None:
    named_mistake(case, got, _affine_mistakes(case.arguments), None, "")


def check_affine_accumulator(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(products, input_sums, q_w, input_zero_point, weight_zero_point)
    -> acc``.

    ``products`` int32 ``[N, out]`` (``q_x @ q_w.T``), ``input_sums`` int32 ``[N]``
    (``q_x.sum(dim=1)``), ``q_w`` the weights ``[out, K]`` (uint8, or int8 when Z_w = 0),
    the two zero-points ints. ``acc`` must be the integer tensor ``[N, out]`` equal to
    ``(q_x - Z_x) @ (q_w - Z_w).T`` (any integer dtype; the values fit in int32).
    """
    run_exercise(AFFINE_ACCUMULATOR, student_fn)


# --- exercise 3: one constant per output row --------------------------------------------------


def _folded_reference(
    bias: torch.Tensor,
    correction: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    output_zero_point: int,
) -> torch.Tensor:
    """``C = (bias + correction) M0 + 2^(n-1) + Z_y 2^n`` per output row, int64."""
    shift = shift.to(torch.int64)
    return (
        (bias.to(torch.int64) + correction.to(torch.int64)) * multiplier.to(torch.int64)
        + (1 << (shift - 1))
        + (output_zero_point << shift)
    )


HINT_FOLDED = (
    "((g + correction + bias) M0 + 2^(n-1)) >> n + Z_y = (g M0 + C) >> n with C = "
    "(bias + correction) * M0 + 2**(n-1) + Z_y * 2**n, per row, in int64 (it needs ~60 bits)"
)


def _folded_case(name: str, generator: torch.Generator, outputs: int, zero_y: int) -> Case:
    bias = torch.randint(-30000, 30000, (outputs,), generator=generator).to(torch.int32)
    correction = torch.randint(-400000, 400000, (outputs,), generator=generator).to(torch.int32)
    reals = 10 ** (-4 + 2 * torch.rand(outputs, generator=generator, dtype=torch.float64))
    pairs = [_fixed_point_multiplier_reference(float(real)) for real in reals]
    multiplier = torch.tensor([m0 for m0, _ in pairs], dtype=torch.int64)
    shift = torch.tensor([n for _, n in pairs], dtype=torch.int64)
    arguments = (
        ("bias", bias),
        ("correction", correction),
        ("multiplier", multiplier),
        ("shift", shift),
        ("output_zero_point", zero_y),
    )
    expected = _folded_reference(bias, correction, multiplier, shift, zero_y)
    # The reference must fold the layer's requantization: check it on GEMM results.
    gemm = torch.randint(-(2**24), 2**24, (64, outputs), generator=generator)
    unfolded = ((gemm + correction + bias) * multiplier + (1 << (shift - 1))) >> shift
    assert torch.equal(unfolded + zero_y, (gemm * multiplier + expected) >> shift)
    return Case(name, arguments, expected, HINT_FOLDED)


def folded_constant_cases() -> list[Case]:
    """Biases, corrections and multipliers of a few output rows, with several Z_y."""
    table = [  # name, seed, outputs, Z_y
        ("a uint8 output with Z_y = 128", 1, 4, 128),
        ("Z_y = 0: the rounding half still belongs in C", 2, 3, 0),
        ("a negative Z_y = -20 (an int8 output)", 3, 5, -20),
    ]
    return [
        _folded_case(name, torch.Generator().manual_seed(seed), outputs, zero_y)
        for name, seed, outputs, zero_y in table
    ]


def draw_folded_constant_cases(generator: torch.Generator) -> list[Case]:
    """Random rows, multipliers and output zero-points."""
    cases = []
    for low, high in ((0, 256), (-128, 128), (-128, 128)):
        outputs = int(torch.randint(2, 12, (), generator=generator))
        zero_y = int(torch.randint(low, high, (), generator=generator))
        name = f"{outputs} random rows, Z_y = {zero_y}"
        cases.append(_folded_case(name, generator, outputs, zero_y))
    return cases


def _folded_mistakes(arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
    values = dict(arguments)
    shift = values["shift"].to(torch.int64)
    summed = values["bias"].to(torch.int64) + values["correction"].to(torch.int64)
    product = summed * values["multiplier"].to(torch.int64)
    half, zero_y = 1 << (shift - 1), values["output_zero_point"]
    return {
        "leave out the rounding half 2**(n-1)": product + (zero_y << shift),
        "add Z_y without shifting it left by n (it is added after the shift)": (
            product + half + zero_y
        ),
        "leave out Z_y": product + half,
        "leave out the correction": values["bias"].to(torch.int64) * values["multiplier"]
        + half
        + (zero_y << shift),
        "compute in int32, which wraps around: C needs about 60 bits": (
            product + half + (zero_y << shift)
        ).to(torch.int32),
    }


def _compare_folded(case: Case, got: Any) -> None:
    named_mistake(
        case,
        got,
        _folded_mistakes(case.arguments),
        torch.int64,
        "C needs about 60 bits: return torch.int64",
    )


def check_folded_constant(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(bias, correction, multiplier, shift, output_zero_point) ->
    constant``.

    ``bias`` and ``correction`` int32 ``[out]``, ``multiplier`` and ``shift`` the int64
    ``(M0, n)`` per output row, ``output_zero_point`` Z_y an int. ``constant`` must be the
    torch.int64 ``[out]`` with ``(g * M0 + C) >> n`` equal to the requantized
    ``g + correction + bias`` plus Z_y for every GEMM result ``g``.
    """
    run_exercise(FOLDED_CONSTANT, student_fn)


AFFINE_ACCUMULATOR = Exercise(
    id="affine_accumulator",
    notebook="04_int8_conversion",
    function="my_affine_accumulator",
    cases=affine_accumulator_cases,
    draw=draw_affine_accumulator_cases,
    compare=_compare_affine,
    answers=("ptqlib.integer_arithmetic.zero_point_correction",),
)
FOLDED_CONSTANT = Exercise(
    id="folded_constant",
    notebook="04_int8_conversion",
    function="my_folded_constant",
    cases=folded_constant_cases,
    draw=draw_folded_constant_cases,
    compare=_compare_folded,
    answers=("ptqlib.fast.folding.fold",),
)
