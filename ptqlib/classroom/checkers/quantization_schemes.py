"""Checkers for notebook 02's schemes: symmetric qparams, per-channel qparams and SQNR.

Each checker runs a student's function on hand-picked cases whose answers come from
:mod:`ptqlib.quantization` (bit-exact with PyTorch), and every list of cases holds the
classic mistake for that exercise, with a hint that names it:

- :func:`check_symmetric_qparams`: dividing by 255 (the affine denominator) instead of
  127.5, ignoring one sign of the range, ignoring a restricted range such as -127..127;
- :func:`check_per_channel_qparams`: reducing over the wrong axis (a square weight makes
  that mistake return the right shape), ``amax`` instead of the largest magnitude (a row
  of only negative weights), reducing over only one of several other axes;
- :func:`check_sqnr_db`: 20 log10 of a power ratio, errors summed before squaring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float, as_pair, run_cases
from ptqlib.classroom.checkers.quantization_math import compare_qparams
from ptqlib.quantization import fake_quantize, min_max, qparams_from_range, sqnr_db

# A wrong answer is off by at least one part in 254; float round-off is far below this.
SCALE_RELATIVE_TOLERANCE = 1e-5
# A decibel value right to a thousandth of a dB; the classic mistakes are off by a factor 2.
SQNR_TOLERANCE_DB = 1e-3

HINT_SYMMETRIC_DENOMINATOR = (
    "divide the largest magnitude by half the number of steps, (quant_max - quant_min) / 2 "
    "(127.5 for -128..127), not by quant_max - quant_min (255): that is the affine formula "
    "and gives half the right scale"
)
HINT_BOTH_SIGNS = (
    "the symmetric range is [-m, m] with m = max(|min_val|, |max_val|): the range includes 0 "
    "and both signs, so all-negative data still needs a positive scale"
)
HINT_EPS = "the scale must stay positive: PyTorch uses max(scale, torch.finfo(torch.float32).eps)"


def symmetric_qparams_cases() -> list[Case]:
    """Ranges and signed integer ranges; answers from qparams_from_range(symmetric=True)."""
    table = [
        ("a range around 0, int8 -128..127", -0.8, 2.55, -128, 127, HINT_SYMMETRIC_DENOMINATOR),
        ("all positive (after a ReLU), int8", 0.5, 6.0, -128, 127, HINT_SYMMETRIC_DENOMINATOR),
        ("all negative, int8", -4.0, -1.0, -128, 127, HINT_BOTH_SIGNS),
        (
            "the restricted range -127..127 (TFLite and TensorRT weights)",
            -1.27,
            0.6,
            -127,
            127,
            "use the quant_min and quant_max you are given: -127..127 has 254 steps, "
            "so S = m / 127 (not 127.5)",
        ),
        (
            "a 4-bit signed range -8..7",
            -0.3,
            0.9,
            -8,
            7,
            "(quant_max - quant_min) / 2 with the range you are given: 7.5 for -8..7",
        ),
        ("an all-zero tensor (min_val = max_val = 0)", 0.0, 0.0, -128, 127, HINT_EPS),
    ]
    cases = []
    for name, min_val, max_val, quant_min, quant_max, hint in table:
        answer = qparams_from_range(
            min_val, max_val, torch.int8, symmetric=True, quant_min=quant_min, quant_max=quant_max
        )
        arguments = (
            ("min_val", min_val),
            ("max_val", max_val),
            ("quant_min", quant_min),
            ("quant_max", quant_max),
        )
        cases.append(Case(name, arguments, (answer.scale.item(), 0), hint))
    return cases


def check_symmetric_qparams(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(min_val, max_val, quant_min, quant_max) -> (scale, zero_point)``.

    Symmetric quantization onto a signed range quant_min..quant_max (which contains 0):
    S = max(|min_val|, |max_val|) / ((quant_max - quant_min) / 2), at least float32 eps,
    and Z = 0. For the full int8 range -128..127 that is PyTorch's S = m / 127.5; for the
    restricted range -127..127 (TFLite, TensorRT) it is S = m / 127. The scale is compared
    to a relative tolerance of 1e-5, the zero-point exactly.
    """
    run_cases("check_symmetric_qparams", student_fn, symmetric_qparams_cases(), compare_qparams)


def per_channel_qparams_cases() -> list[Case]:
    """Weight tensors and a channel axis; answers from qparams_from_range(axis=...)."""
    # In every case before the all-negative row, each slice's largest magnitude is positive,
    # so forgetting the absolute value fails first on the case whose hint names it.
    generator = torch.Generator().manual_seed(2)
    signs = torch.tensor([1.0, -0.5, 1.0, -0.5, 1.0])
    rows_differ = torch.rand(3, 5, generator=generator) * signs
    rows_differ[:, 0] = 1.0
    rows_differ = rows_differ * torch.tensor([[0.1], [1.0], [3.0]])
    square = torch.rand(4, 4, generator=generator) * torch.tensor([[0.2], [0.5], [1.0], [2.0]])
    negative_row = torch.tensor([[0.3, -0.2, 0.1], [-0.9, -0.4, -0.7], [0.0, 0.0, 0.0]])
    conv_like = torch.rand(2, 3, 4, generator=generator) * torch.tensor([[[0.5]], [[4.0]]])
    hint_axis = (
        "one scale per slice along `axis`: reduce over every OTHER axis (for a 2-d weight "
        "and axis 0, w.abs().amax(dim=1)); reducing over `axis` itself gives one scale per "
        "column instead of per row"
    )
    table = [
        ("a 3x5 weight, one scale per row (axis 0)", rows_differ, 0, hint_axis),
        ("a square 4x4 weight, axis 0 (the wrong axis has the right shape)", square, 0, hint_axis),
        ("the same square weight, axis 1 (one scale per column)", square, 1, hint_axis),
        (
            "a row of only negative weights and a row of zeros",
            negative_row,
            0,
            "the range of each row includes 0: take the largest MAGNITUDE, w.abs().amax(...), "
            "not w.amax(...) (negative for an all-negative row); an all-zero row still needs "
            "a scale of at least torch.finfo(torch.float32).eps",
        ),
        (
            "a 3-d weight (2 output channels x 3 x 4), axis 0",
            conv_like,
            0,
            "reduce over all the other axes at once, e.g. w.transpose(0, axis).reshape(n, -1) "
            "then .abs().amax(dim=1): reducing over just one of them leaves a 2-d result",
        ),
    ]
    cases = []
    for name, weight, axis, hint in table:
        answer = qparams_from_range(
            *min_max(weight, axis=axis), torch.int8, symmetric=True, axis=axis
        )
        expected = (answer.scale, answer.zero_point)
        cases.append(Case(name, (("weight", weight), ("axis", axis)), expected, hint))
    return cases


def _as_channel_tensor(value: Any, what: str, channels: int) -> torch.Tensor:
    """``value`` as a 1-d tensor with one entry per channel, else a clear error."""
    if not isinstance(value, torch.Tensor):
        kind = type(value).__name__
        raise WrongAnswer(f"{what} should be a torch.Tensor with one entry per channel, got {kind}")
    if value.dim() != 1 or value.numel() != channels:
        raise WrongAnswer(
            f"{what} has shape {tuple(value.shape)}, expected ({channels},): one entry per "
            "channel along `axis`"
        )
    return value


def _compare_per_channel(case: Case, got: Any) -> None:
    scales, zero_points = as_pair(got, "scales, zero_points")
    expected_scales, expected_zero_points = case.expected
    channels = expected_scales.numel()
    scales = _as_channel_tensor(scales, "scales", channels).to(torch.float64)
    zero_points = _as_channel_tensor(zero_points, "zero_points", channels)
    if zero_points.is_floating_point() and not bool((zero_points == zero_points.round()).all()):
        raise WrongAnswer(f"zero_points should be integers, got {zero_points.tolist()}")
    expected = expected_scales.to(torch.float64)
    close = torch.isclose(scales, expected, rtol=SCALE_RELATIVE_TOLERANCE, atol=0.0)
    if not bool(close.all()):
        channel = int(torch.nonzero(~close)[0])
        raise WrongAnswer(
            f"the scale of channel {channel} is {scales[channel].item():.7g}, expected "
            f"{expected[channel].item():.7g}"
        )
    if not torch.equal(zero_points.to(torch.int64), expected_zero_points):
        raise WrongAnswer(f"zero_points are {zero_points.tolist()}, expected all 0")


def check_per_channel_qparams(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight, axis) -> (scales, zero_points)``, symmetric int8 per channel.

    One scale for every slice ``weight.select(axis, c)``: S_c = max|slice| / 127.5 (PyTorch's
    symmetric int8 grid -128..127), at least float32 eps, and Z_c = 0. Both results are 1-d
    tensors with ``weight.shape[axis]`` entries; scales are compared to a relative
    tolerance of 1e-5, zero-points exactly.
    """
    run_cases(
        "check_per_channel_qparams", student_fn, per_channel_qparams_cases(), _compare_per_channel
    )


def sqnr_cases() -> list[Case]:
    """A reference tensor and an approximation; answers from ptqlib.quantization.sqnr_db."""
    reference = torch.tensor([0.9, -1.7, 0.25, 2.4, -0.6, 1.1])
    # The errors of the first case sum to zero: summing before squaring divides by zero.
    cancelling_noise = torch.tensor([0.05, -0.05, 0.04, -0.04, 0.03, -0.03])
    noise = torch.tensor([0.02, 0.01, -0.03, 0.015, -0.02, 0.025])
    weight = reference.reshape(2, 3) * 0.1
    four_bits = qparams_from_range(
        -0.24, 0.24, torch.int8, symmetric=True, quant_min=-8, quant_max=7
    )
    hint_formula = "SQNR = 10 * log10(sum r^2 / sum (r - r_hat)^2), over all elements"
    table = [
        (
            "errors of both signs (they sum to zero)",
            reference,
            reference + cancelling_noise,
            "square each error before summing: positive and negative errors must not cancel",
        ),
        ("a tensor and a slightly noisy copy", reference, reference + noise, hint_formula),
        (
            "a 2-d weight and its 4-bit fake quantization",
            weight,
            fake_quantize(weight, four_bits),
            hint_formula + " (a 2-d tensor too: sum over every element)",
        ),
    ]
    cases = []
    for name, original, approximation, hint in table:
        arguments = (("reference", original), ("approximation", approximation))
        cases.append(Case(name, arguments, sqnr_db(original, approximation), hint))
    return cases


def _compare_sqnr(case: Case, got: Any) -> None:
    value = as_float(got, "the SQNR")
    expected = case.expected
    if math.isfinite(value) and abs(value - expected) <= SQNR_TOLERANCE_DB:
        return
    if math.isfinite(value) and abs(value - 2 * expected) <= SQNR_TOLERANCE_DB:
        raise WrongAnswer(
            f"SQNR is {value:.4f} dB, twice the right {expected:.4f} dB: a ratio of sums of "
            "squares is a POWER ratio, in decibels 10 * log10(...); 20 * log10 is for "
            "amplitude ratios"
        )
    if math.isfinite(value) and abs(value - expected / 2) <= SQNR_TOLERANCE_DB:
        raise WrongAnswer(
            f"SQNR is {value:.4f} dB, half the right {expected:.4f} dB: a ratio of norms "
            "(amplitudes) needs 20 * log10(...), or square both sums and use 10 * log10"
        )
    raise WrongAnswer(f"SQNR is {value:.4f} dB, expected {expected:.4f} dB")


def check_sqnr_db(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(reference, approximation) -> float``, the SQNR in decibels.

    SQNR = 10 log10(sum r^2 / sum (r - r_hat)^2) over all elements, compared to 0.001 dB.
    """
    run_cases("check_sqnr_db", student_fn, sqnr_cases(), _compare_sqnr)
