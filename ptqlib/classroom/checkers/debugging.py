"""Known-answer checkers for notebook 09's exercises (cross-layer equalization, what folding
does to one scale per tensor, and how long ago a channel died).

As with the other checkers: write your own function, hand it to the checker, and it runs it
on a few hand-picked cases whose answers come from ptqlib. It prints one ``PASS`` line, or
raises ``AssertionError`` naming the first case that fails, what was expected, what your
function returned and a hint. A function that still raises ``NotImplementedError`` (the
exercise skeleton) is reported as not attempted yet, without an error.

- :func:`check_cle_scales`: ``(weight1, weight2, depthwise) -> scales``: the equalization
  scale ``s_i = sqrt(r1_i r2_i) / r2_i`` of every channel i between two convolutions, where
  ``r1_i`` is the range of output channel i of the first and ``r2_i`` of input channel i of
  the second (``depthwise``: the second is a depthwise conv, weight ``[C, 1, k, k]``).
- :func:`check_zeroed_filters`: ``(weight, gamma, running_var, eps) -> int``: fold the
  BatchNorm into a depthwise ``weight`` (``W'_c = W_c gamma_c / sqrt(var_c + eps)``), take
  one symmetric int8 scale for the whole tensor, ``S = max |W'| / 127.5``, and count the
  filters whose every weight rounds to 0.
- :func:`check_steps_since_dead`: ``(variance, start_variance, momentum) -> steps``: a
  channel that outputs 0 on every batch has its running variance multiplied by
  ``1 - momentum`` at each training step (PyTorch's convention: ``momentum`` weighs the new
  batch); how many steps take ``start_variance`` down to ``variance``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float, as_integer, draw_uniform
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
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


def draw_cle_cases(generator: torch.Generator) -> list[Case]:
    """Random pairs of convolutions, pointwise or depthwise second, ranges far apart."""
    hint = (
        "s_i = sqrt(r1_i r2_i) / r2_i with r1_i the largest |w| of output channel i of the "
        "first conv and r2_i of input channel i of the second"
    )
    cases = []
    for depthwise in (False, True, True):
        channels, inputs, outputs = (int(n) for n in torch.randint(2, 6, (3,), generator=generator))
        weight1 = torch.randn(channels, inputs, 3, 3, generator=generator)
        weight1 *= 10 ** draw_uniform(generator, -2, 2, (channels, 1, 1, 1)).float()
        shape2 = (channels, 1, 3, 3) if depthwise else (outputs, channels, 1, 1)
        weight2 = torch.randn(shape2, generator=generator)
        arguments = (("weight1", weight1), ("weight2", weight2), ("depthwise", depthwise))
        name = f"random convs, {channels} channels, {'depthwise' if depthwise else 'pointwise'}"
        cases.append(Case(name, arguments, _scale_reference(weight1, weight2, depthwise), hint))
    return cases


def check_cle_scales(student_fn: Callable) -> None:
    """Check ``student_fn(weight1, weight2, depthwise) -> scales`` (one per channel) against
    ``ptqlib.equalization.equalization_scales``."""
    run_exercise(CLE_SCALES, student_fn)


# --- exercise 2: the filters one scale per tensor wipes out ---------------------------------

# A filter "rounds to zeros" when its largest |w'| is below half a step; drawn cases keep
# that ratio at least this far from 0.5, so float32 and float64 answers agree.
HALF_STEP_MARGIN = 1e-3


def _folded(weight, gamma, running_var, eps):
    factor = gamma.double() / torch.sqrt(running_var.double() + eps)
    return weight.double() * factor.reshape(-1, *([1] * (weight.dim() - 1)))


def _largest_over_step(weight, gamma, running_var, eps) -> torch.Tensor:
    """Each folded filter's largest |w'| in steps of the per-tensor int8 scale."""
    ranges = _folded(weight, gamma, running_var, eps).abs().flatten(1).amax(dim=1)
    return ranges / (float(ranges.max()) / 127.5)


def _zeroed_reference(weight, gamma, running_var, eps) -> int:
    return int((_largest_over_step(weight, gamma, running_var, eps) < 0.5).sum())


def _zeroed_case(name, weight, gamma, running_var, eps, hint) -> Case:
    arguments = (
        ("weight", weight),
        ("gamma", gamma),
        ("running_var", running_var),
        ("eps", eps),
    )
    return Case(name, arguments, _zeroed_reference(weight, gamma, running_var, eps), hint)


def _well_away_from_half(weight, gamma, running_var, eps) -> bool:
    ratios = _largest_over_step(weight, gamma, running_var, eps)
    return bool(((ratios - 0.5).abs() > HALF_STEP_MARGIN).all())


def zeroed_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(9)
    weight = torch.randn(8, 1, 3, 3, generator=generator)
    gamma = 0.5 + torch.rand(8, generator=generator)
    variance = 0.5 + 4 * torch.rand(8, generator=generator)
    dead = variance.clone()
    dead[3] = 1e-20  # the channel after a dead ReLU: its running variance decayed to ~0
    flipped = gamma.clone()
    flipped[3] = -flipped[3]
    one_sign = weight.clone()
    one_sign[3] = one_sign[3].abs()  # then every w' of the dead channel is negative
    return [
        _zeroed_case(
            "ordinary BatchNorm statistics: no filter is lost",
            weight,
            gamma,
            variance,
            1e-5,
            "fold first (W'_c = W_c gamma_c / sqrt(var_c + eps)), then S = max |W'| / 127.5 "
            "over the whole tensor; a filter is lost when all its |w'| / S round to 0",
        ),
        _zeroed_case(
            "one running variance near 0 (PyTorch's eps 1e-5)",
            weight,
            gamma,
            dead,
            1e-5,
            "the filter with variance ~0 is multiplied by gamma / sqrt(eps): it sets S alone",
        ),
        _zeroed_case(
            "the same statistics with Keras's eps 1e-3",
            weight,
            gamma,
            dead,
            1e-3,
            "use the eps you are given: a larger eps caps the fold factor lower",
        ),
        _zeroed_case(
            "a negative gamma on the dead channel",
            one_sign,
            flipped,
            dead,
            1e-5,
            "the scale covers the largest MAGNITUDE: use |w'|, a negative gamma counts too",
        ),
    ]


def draw_zeroed_cases(generator: torch.Generator) -> list[Case]:
    """Random depthwise weights and statistics, none, one or two variances near 0."""
    hint = "fold, take S = max |W'| / 127.5 over the tensor, count filters with all |w'| < S/2"
    cases: list[Case] = []
    for dead_channels in (0, 1, 2):
        while True:
            channels = int(torch.randint(4, 17, (), generator=generator))
            weight = torch.randn(channels, 1, 3, 3, generator=generator)
            gamma = float(draw_uniform(generator, 0.3, 2.0)) * torch.ones(channels)
            gamma *= 0.5 + torch.rand(channels, generator=generator)
            variance = (0.1 + 10 * torch.rand(channels, generator=generator)).float()
            exponents = draw_uniform(generator, -25, -8, (dead_channels,))
            for index, exponent in zip(range(dead_channels), exponents.tolist(), strict=True):
                variance[index] = 10.0**exponent
            eps = (1e-5, 1e-3)[int(torch.randint(0, 2, (), generator=generator))]
            if _well_away_from_half(weight, gamma, variance, eps):
                break
        name = f"{channels} filters, {dead_channels} variance(s) near 0, eps {eps:g}"
        cases.append(_zeroed_case(name, weight, gamma, variance, eps, hint))
    return cases


def _compare_count(case: Case, got: Any) -> None:
    count = as_integer(got, "the number of filters")
    if count != case.expected:
        raise WrongAnswer(f"expected {case.expected} filters, got {count}")


def check_zeroed_filters(student_fn: Callable) -> None:
    """Check ``student_fn(weight, gamma, running_var, eps) -> int``: how many filters of the
    folded depthwise ``weight`` round to all zeros with one int8 scale per tensor."""
    run_exercise(ZEROED_FILTERS, student_fn)


# --- exercise 3: when did the channel die? ----------------------------------------------------

STEPS_RELATIVE_TOLERANCE = 1e-6


def _steps_reference(variance: float, start_variance: float, momentum: float) -> float:
    return math.log(variance / start_variance) / math.log(1.0 - momentum)


def _steps_case(name, variance, start_variance, momentum, hint) -> Case:
    arguments = (
        ("variance", variance),
        ("start_variance", start_variance),
        ("momentum", momentum),
    )
    return Case(name, arguments, _steps_reference(variance, start_variance, momentum), hint)


def steps_cases() -> list[Case]:
    update = (
        "each step running_var <- (1 - momentum) running_var + momentum * 0 for a channel "
        "that is always 0: after n steps it is (1 - momentum)^n start_variance"
    )
    return [
        _steps_case("PyTorch's momentum 0.1, one step", 0.9, 1.0, 0.1, update),
        _steps_case(
            "PyTorch's momentum 0.1, a variance of 1e-20",
            1e-20,
            1.0,
            0.1,
            "solve (1 - momentum)^n = variance / start_variance for n with logarithms",
        ),
        _steps_case(
            "Keras's momentum 0.99 is 0.01 here (the weight of the new batch)",
            1e-2,
            4.0,
            0.01,
            "momentum is the weight of the NEW batch (PyTorch's convention): the old value "
            "keeps 1 - momentum",
        ),
    ]


def draw_steps_cases(generator: torch.Generator) -> list[Case]:
    """Random variances far below their start, with PyTorch's and Keras's momenta."""
    hint = "n = log(variance / start_variance) / log(1 - momentum)"
    cases = []
    for momentum in (0.1, 0.01, 0.05):
        variance = float(10 ** draw_uniform(generator, -25, -1))
        start = float(draw_uniform(generator, 0.1, 10.0))
        name = f"variance {variance:.3g} from {start:.3g}, momentum {momentum}"
        cases.append(_steps_case(name, variance, start, momentum, hint))
    return cases


def _compare_steps(case: Case, got: Any) -> None:
    steps = as_float(got, "the number of steps")
    if not math.isclose(steps, case.expected, rel_tol=STEPS_RELATIVE_TOLERANCE):
        raise WrongAnswer(f"expected {case.expected:.6g} steps, got {steps!r}")


def check_steps_since_dead(student_fn: Callable) -> None:
    """Check ``student_fn(variance, start_variance, momentum) -> steps`` (a float)."""
    run_exercise(STEPS_SINCE_DEAD, student_fn)


CLE_SCALES = Exercise(
    id="cle_scales",
    notebook="09_when_8bit_ptq_breaks",
    function="my_cle_scales",
    cases=cle_cases,
    draw=draw_cle_cases,
    compare=_compare_scales,
    answers=(
        "ptqlib.equalization.equalization_scales",
        "ptqlib.equalization.cross_layer_equalization",
    ),
)
ZEROED_FILTERS = Exercise(
    id="zeroed_filters",
    notebook="09_when_8bit_ptq_breaks",
    function="my_zeroed_filters",
    cases=zeroed_cases,
    draw=draw_zeroed_cases,
    compare=_compare_count,
    answers=("ptqlib.batchnorm.fold_parameters",),
)
STEPS_SINCE_DEAD = Exercise(
    id="steps_since_dead",
    notebook="09_when_8bit_ptq_breaks",
    function="my_steps_since_dead",
    cases=steps_cases,
    draw=draw_steps_cases,
    compare=_compare_steps,
)
