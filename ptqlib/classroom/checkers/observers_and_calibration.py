"""Checkers for notebook 03 (observers and calibration); its activity, one observer per
quantization point, is :mod:`ptqlib.classroom.checkers.observer_choice`.

The checkers (see :mod:`ptqlib.classroom.checkers` for how a checker reports):

- :func:`check_moving_average_range`: ``(batches, averaging_constant) -> (low, high)``, the
  range a moving-average min/max observer ends with;
- :func:`check_per_channel_scales`: ``(weight) -> scales``, one symmetric int8 scale per
  output neuron of a Linear weight ``[out, in]``;
- :func:`check_quantization_points`: ``(model) -> names``, the tensors a fused INT8
  model stores as integers;
- :func:`check_three_sigma_observer`: ``(ObserverClass)``, an observer that clips at
  mean +- 3 standard deviations of everything it saw.

The answers come from ptqlib itself (its observers, :func:`ptqlib.calibration.
quantization_points`) or, for the three-sigma observer, from float64 arithmetic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ptqlib.classroom.checkers.core import (
    Case,
    WrongAnswer,
    as_float,
    as_pair,
    describe,
    draw_uniform,
)
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.errors import InputError
from ptqlib.fusion import quantization_points
from ptqlib.observers import MovingAverageMinMaxObserver, PerChannelMinMaxObserver

# Ranges and scales are float32 in ptqlib; a student's float64 arithmetic may differ in
# the last bits. One part in 100,000 is far below any real mistake.
RELATIVE_TOLERANCE = 1e-5


def _close(got: float, expected: float, what: str, tolerance: float = RELATIVE_TOLERANCE) -> None:
    if not abs(got - expected) <= tolerance * max(1.0, abs(expected)):  # NaN is wrong too
        raise WrongAnswer(f"{what}: expected {describe(expected)}, got {describe(got)}")


def _compare_range(case: Case, got: Any) -> None:
    """A pair (low, high) of numbers, each within the tolerance of the expected pair."""
    low, high = as_pair(got, "low, high")
    for value, expected, what in zip((low, high), case.expected, ("low", "high"), strict=True):
        _close(as_float(value, what), expected, what)


# --- Exercise: the moving-average range by hand ----------------------------------------


def _moving_average_reference(
    batches: list[torch.Tensor], averaging_constant: float
) -> tuple[float, float]:
    """The range of ptqlib's MovingAverageMinMaxObserver after ``batches``: the first batch
    sets m = min(x_1); each later batch moves it by c (min(x_b) - m); the same for the max."""
    observer = MovingAverageMinMaxObserver(averaging_constant=averaging_constant)
    for batch in batches:
        observer(batch)
    return float(observer.min_val), float(observer.max_val)


def moving_average_cases() -> list[Case]:
    """Batches and an averaging constant c; the expected (low, high)."""
    table = [
        (
            "one batch: its own min and max",
            [[0.5, -1.5, 2.0]],
            0.1,
            "the first batch sets the range: m = min(x_1), not 0 and not c * min(x_1)",
        ),
        (
            "positive data: the first batch sets the range, not 0",
            [[2.0, 5.0], [3.0, 9.0], [1.0, 4.0]],
            0.5,
            "start from the first batch's min and max; starting from m = 0 pulls the range "
            "towards 0",
        ),
        (
            "small c: later batches move the range only a little",
            [[0.0, 1.0], [-2.0, 3.0], [-1.0, 6.0], [0.5, 0.75]],
            0.1,
            "m <- m + c (min(x_b) - m): the new batch gets weight c, the old value 1 - c; "
            "swapping them (m <- c m + (1 - c) min(x_b)) follows the last batch instead",
        ),
        (
            "c = 1 follows the last batch",
            [[-3.0, 3.0], [-0.5, 0.25]],
            1.0,
            "with c = 1 the update m + 1 * (min(x_b) - m) is min(x_b)",
        ),
    ]
    return [_moving_average_case(*row) for row in table]


def _moving_average_case(name: str, values: list, constant: float, hint: str) -> Case:
    batches = [torch.as_tensor(batch, dtype=torch.float32) for batch in values]
    expected = _moving_average_reference(batches, constant)
    return Case(name, (("batches", batches), ("averaging_constant", constant)), expected, hint)


def draw_moving_average_cases(generator: torch.Generator) -> list[Case]:
    """Two to five random batches of random sizes and a random averaging constant."""
    hint = (
        "the first batch sets the range; each later batch moves it: m <- m + c (min(x_b) - m), "
        "the same for the max"
    )
    cases = []
    for _ in range(3):
        count = int(torch.randint(2, 6, (), generator=generator))
        batches = [
            torch.randn(int(torch.randint(2, 9, (), generator=generator)), generator=generator) * 3
            + float(draw_uniform(generator, -2, 2))
            for _ in range(count)
        ]
        constant = round(float(draw_uniform(generator, 0.01, 1.0)), 3)
        name = f"{count} random batches, c = {constant}"
        cases.append(_moving_average_case(name, batches, constant, hint))
    return cases


def check_moving_average_range(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(batches, averaging_constant) -> (low, high)``."""
    run_exercise(MOVING_AVERAGE_RANGE, student_fn)


# --- Exercise: per-channel symmetric weight scales --------------------------------------


def _per_channel_scales_reference(weight: torch.Tensor) -> torch.Tensor:
    """One scale per output neuron (row i of ``weight [out, in]``), int8 symmetric:
    S_i = 2 max_j |W_ij| / 255 = max_j |W_ij| / 127.5 (torch.ao's symmetric convention)."""
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.int8, symmetric=True)
    observer(weight)
    return observer.qparams().scale


def per_channel_scale_cases() -> list[Case]:
    """Small weights [out, in] and their per-row scales."""
    table = [
        (
            "divide by 127.5, as torch does",
            [[1.275, 0.5], [0.5, 2.55]],
            "S = (max - min) / (q_max - q_min) with min = -max is 2 max / 255 = max / 127.5, "
            "not max / 127",
        ),
        (
            "rows with different magnitudes",
            [[0.5, -0.25, 0.1], [2.0, 1.0, -1.5]],
            "one scale per row (output neuron): reduce over the inputs, dim=1",
        ),
        (
            "the largest magnitude is negative",
            [[-3.0, 1.0, 0.5, 0.2], [0.4, -0.1, 0.3, 0.2], [1.0, -2.5, 0.0, 2.0]],
            "use the largest |W_ij|, not the largest W_ij: a symmetric range must cover "
            "the most negative weight too",
        ),
        (
            "more outputs than inputs",
            [[0.1, 0.2], [0.3, -0.4], [-0.5, 0.6], [0.7, 0.8], [-0.9, 1.0]],
            "the result has one scale per output row, shape [out]; amax over dim=0 gives one "
            "per input column instead",
        ),
    ]
    return [_per_channel_scale_case(*row) for row in table]


def _per_channel_scale_case(name: str, rows: list | torch.Tensor, hint: str) -> Case:
    weight = torch.as_tensor(rows, dtype=torch.float32)
    return Case(name, (("weight", weight),), _per_channel_scales_reference(weight), hint)


def draw_per_channel_scale_cases(generator: torch.Generator) -> list[Case]:
    """Random weights [out, in], rows of different magnitudes."""
    hint = "one scale per output row: max_j |W_ij| / 127.5, reducing over the inputs (dim=1)"
    cases = []
    for _ in range(3):
        out_features, in_features = (int(n) for n in torch.randint(2, 9, (2,), generator=generator))
        magnitudes = 10 ** draw_uniform(generator, -2, 1, (out_features, 1))
        weight = (torch.randn(out_features, in_features, generator=generator) * magnitudes).float()
        name = f"a random weight [{out_features}, {in_features}]"
        cases.append(_per_channel_scale_case(name, weight, hint))
    return cases


def _compare_scales(case: Case, got: Any) -> None:
    if not isinstance(got, torch.Tensor):
        raise WrongAnswer(f"your function should return a torch.Tensor, got {type(got).__name__}")
    expected = case.expected.to(torch.float64)
    if tuple(got.shape) != tuple(expected.shape):
        raise WrongAnswer(
            f"the shape is {tuple(got.shape)}, expected {tuple(expected.shape)}: one scale "
            "per output neuron"
        )
    got = got.detach().to(torch.float64)
    wrong = ~((got - expected).abs() <= RELATIVE_TOLERANCE * expected.abs())  # NaN is wrong
    if bool(wrong.any()):
        row = int(torch.nonzero(wrong)[0])
        raise WrongAnswer(
            f"scale of row {row}: expected {describe(expected[row].item())}, "
            f"got {describe(got[row].item())}"
        )


def check_per_channel_scales(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight) -> scales``: int8 symmetric, one scale per output row."""
    run_exercise(PER_CHANNEL_SCALES, student_fn)


# --- Exercise: which tensors are quantization points after fusion -----------------------


def build_sequential(layers: list[list]) -> tuple[nn.Sequential]:
    """The nn.Sequential a case describes: ``[name, "linear", in, out]``, ``[name, "relu"]``
    or ``[name, "flatten"]`` for each child, in order (fork_rng: only the layout matters)."""
    kinds = {"linear": nn.Linear, "relu": nn.ReLU, "flatten": nn.Flatten}
    with torch.random.fork_rng():
        children = [(name, kinds[kind](*sizes)) for name, kind, *sizes in layers]
    return (nn.Sequential(OrderedDict(children)),)


def _quantization_point_case(name: str, layers: list[list], hint: str) -> Case:
    expected = quantization_points(*build_sequential(layers))
    return Case(name, (("model", layers),), expected, hint)


def quantization_point_cases() -> list[Case]:
    """Small Sequential models and the tensors their fused INT8 version stores."""
    table = [
        (
            "SimpleNet's shape: Linear+ReLU, Linear+ReLU, Linear",
            [
                ["flatten", "flatten"],
                ["fc1", "linear", 4, 3],
                ["relu1", "relu"],
                ["fc2", "linear", 3, 3],
                ["relu2", "relu"],
                ["fc3", "linear", 3, 2],
            ],
            "a Linear followed directly by a ReLU is fused with it: the Linear's own output "
            "is never stored, so 'fc1' and 'fc2' are not quantization points (the ReLU's are)",
        ),
        (
            "a Linear without a ReLU after it",
            [["a", "linear", 4, 4], ["b", "linear", 4, 4], ["act", "relu"]],
            "every Linear not followed by a ReLU is a step of its own, and its output is "
            "stored: here 'a' stays, 'b' fuses with 'act'",
        ),
        (
            "the model's input is always a quantization point",
            [["fc", "linear", 4, 2], ["relu", "relu"]],
            "start the list with 'input': the first layer reads the quantized input",
        ),
        (
            "a Flatten is not quantized on its own; a ReLU first is",
            [["relu0", "relu"], ["flat", "flatten"], ["fc", "linear", 4, 2]],
            "only Linear and ReLU outputs are stored (a Flatten just reshapes the same "
            "integers); a ReLU with no Linear before it runs alone, so its output is stored",
        ),
    ]
    return [_quantization_point_case(*row) for row in table]


def draw_quantization_point_cases(generator: torch.Generator) -> list[Case]:
    """Random stacks of Linear, ReLU and Flatten layers with random names."""
    hint = (
        "'input', then the output of every step: a Linear and the ReLU right after it are one "
        "step named by the ReLU; a Linear or a ReLU alone is a step; a Flatten is none"
    )
    kinds = ("linear", "linear", "relu", "flatten")
    cases = []
    for _ in range(3):
        layers: list[list] = []
        for number in range(int(torch.randint(3, 8, (), generator=generator))):
            kind = kinds[int(torch.randint(len(kinds), (), generator=generator))]
            name = f"{kind[:2]}{number}_{int(torch.randint(100, (), generator=generator))}"
            layers.append([name, kind, 4, 4] if kind == "linear" else [name, kind])
        names = ", ".join(f"{name}={kind}" for name, kind, *_ in layers)
        cases.append(_quantization_point_case(f"a random model: {names}", layers, hint))
    return cases


def _compare_names(case: Case, got: Any) -> None:
    if not isinstance(got, (list, tuple)) or not all(isinstance(name, str) for name in got):
        raise WrongAnswer(f"your function should return a list of module names, got {got!r}")
    if list(got) != case.expected:
        missing = [name for name in case.expected if name not in got]
        extra = [name for name in got if name not in case.expected]
        detail = f"missing {missing}, " if missing else ""
        detail += f"not quantization points: {extra}" if extra else "wrong order"
        raise WrongAnswer(f"expected {case.expected}, got {list(got)} ({detail.rstrip(', ')})")


def check_quantization_points(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(model) -> ["input", ...]``, in run order, for an nn.Sequential."""
    run_exercise(QUANTIZATION_POINTS, student_fn)


# --- Exercise: an observer of your own, mean +- 3 standard deviations -------------------


def _three_sigma_reference(batches: list[torch.Tensor]) -> tuple[float, float]:
    """[max(r_min, mu - 3 sigma), min(r_max, mu + 3 sigma)] over all values of all batches,
    with sigma the population standard deviation, in float64."""
    values = torch.cat([batch.reshape(-1) for batch in batches]).double()
    mean, std = float(values.mean()), float(values.std(correction=0))
    return max(float(values.min()), mean - 3 * std), min(float(values.max()), mean + 3 * std)


HINT_THREE_SIGMA = (
    "accumulate count, sum x and sum x^2 over ALL batches; range = [mean - 3 std, mean + 3 std] "
    "(population std), intersected with the observed [min, max]"
)


def _three_sigma_case(name: str, batches: list[torch.Tensor], hint: str) -> Case:
    return Case(name, (("batches", batches),), _three_sigma_reference(batches), hint)


def three_sigma_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(3)
    heavy = torch.randn(4000, generator=generator) ** 3  # a few values far out
    shifted = [torch.randn(500, generator=generator) + shift for shift in (-4.0, 0.0, 6.0)]
    table = [
        (
            "one batch with outliers: clip at mean +- 3 sigma",
            [heavy],
            "range = [mean - 3 std, mean + 3 std], std the population standard deviation "
            "sqrt(E[x^2] - mean^2)",
        ),
        (
            "mean +- 3 sigma beyond the observed values",
            [torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0, 1.0])],
            "intersect with the observed range: never choose a range wider than min/max",
        ),
        (
            "several batches with different means",
            shifted,
            "accumulate count, sum x and sum x^2 over ALL batches; the last batch alone, or "
            "an average of per-batch standard deviations, misses the spread between batches",
        ),
    ]
    return [_three_sigma_case(*row) for row in table]


def draw_three_sigma_cases(generator: torch.Generator) -> list[Case]:
    """Heavy-tailed batches with random means and sizes, and a short one."""
    cases = []
    for count in (1, 3):
        batches = [
            torch.randn(int(torch.randint(200, 800, (), generator=generator)), generator=generator)
            ** 3
            + float(draw_uniform(generator, -4, 4))
            for _ in range(count)
        ]
        cases.append(_three_sigma_case(f"{count} random batch(es)", batches, HINT_THREE_SIGMA))
    short = [
        torch.randint(
            0, 2, (int(torch.randint(2, 6, (), generator=generator)),), generator=generator
        ).float()
    ]
    cases.append(
        _three_sigma_case(
            "a few values of 0 and 1", short + [torch.tensor([0.0, 1.0])], HINT_THREE_SIGMA
        )
    )
    return cases


def observed_range_of(observer_class: type) -> Callable[[list[torch.Tensor]], Any]:
    """The function the three-sigma cases call: feed ``observer_class(dtype=torch.int8,
    symmetric=True)`` every batch, then return its ``clipping_range()``."""
    if not isinstance(observer_class, type):
        raise TypeError(f"check_three_sigma_observer: expected your class, got {observer_class!r}")

    def observed_range(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        observer = observer_class(dtype=torch.int8, symmetric=True)
        for batch in batches:
            if observer(batch) is not batch:
                raise InputError("observer(x) must return x itself, unchanged")
        return observer.clipping_range()

    return observed_range


def check_three_sigma_observer(observer_class: type) -> None:
    """Check an Observer subclass: ``observer_class(dtype=torch.int8, symmetric=True)``,
    called on every batch, must return each batch unchanged and end with the range
    ``clipping_range()`` of :func:`_three_sigma_reference`."""
    run_exercise(THREE_SIGMA_OBSERVER, observer_class)


MOVING_AVERAGE_RANGE = Exercise(
    id="moving_average_range",
    notebook="03_observers_and_calibration",
    function="moving_average_range",
    cases=moving_average_cases,
    draw=draw_moving_average_cases,
    compare=_compare_range,
    answers=("ptqlib.observers.MovingAverageMinMaxObserver",),
)
PER_CHANNEL_SCALES = Exercise(
    id="per_channel_scales",
    notebook=None,  # no notebook asks for it: a checker to practise with
    function="per_channel_scales",
    cases=per_channel_scale_cases,
    draw=draw_per_channel_scale_cases,
    compare=_compare_scales,
    answers=(
        "ptqlib.observers.PerChannelMinMaxObserver",
        "ptqlib.quantization.qparams_from_range",
        "ptqlib.calibration.calibrate",
    ),
)
QUANTIZATION_POINTS = Exercise(
    id="quantization_points",
    notebook="03_observers_and_calibration",
    function="my_quantization_points",
    cases=quantization_point_cases,
    draw=draw_quantization_point_cases,
    compare=_compare_names,
    answers=("ptqlib.fusion.quantization_points", "ptqlib.fusion.fusion_groups"),
    build=build_sequential,
)
THREE_SIGMA_OBSERVER = Exercise(
    id="three_sigma_observer",
    notebook="03_observers_and_calibration",
    function="ThreeSigmaObserver",
    cases=three_sigma_cases,
    draw=draw_three_sigma_cases,
    compare=_compare_range,
    prepare=observed_range_of,
)
