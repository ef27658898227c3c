"""Checkers for notebook 03 (observers and calibration), and the helper of its activity.

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

:func:`evaluate_observer_choice` is the helper of the "pick an observer for each layer"
activity: ``calibrate`` takes one activation observer for the whole model, so it
calibrates once per observer named in the choice and merges the qparams key by key (the
merged dict is what ``convert`` takes), then measures the INT8 model's accuracy;
:func:`check_observer_choice` runs it on a student's choice and prints the evidence (there
is no single right answer: the notebook grades the justification with a rubric).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ptqlib.calibration import Calibration, calibrate
from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float, as_pair, describe, run_cases
from ptqlib.data import MNISTSplit
from ptqlib.errors import InputError
from ptqlib.evaluation import predict
from ptqlib.fusion import quantization_points
from ptqlib.int8_model import convert
from ptqlib.observers import OBSERVERS, MovingAverageMinMaxObserver, PerChannelMinMaxObserver
from ptqlib.quantization import QParams

# Ranges and scales are float32 in ptqlib; a student's float64 arithmetic may differ in
# the last bits. One part in 100,000 is far below any real mistake.
RELATIVE_TOLERANCE = 1e-5


def _close(got: float, expected: float, what: str, tolerance: float = RELATIVE_TOLERANCE) -> None:
    if abs(got - expected) > tolerance * max(1.0, abs(expected)):
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
    cases = []
    for name, values, constant, hint in table:
        batches = [torch.tensor(batch) for batch in values]
        expected = _moving_average_reference(batches, constant)
        arguments = (("batches", batches), ("averaging_constant", constant))
        cases.append(Case(name, arguments, expected, hint))
    return cases


def check_moving_average_range(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(batches, averaging_constant) -> (low, high)``."""

    def call(batches: list[torch.Tensor], constant: float) -> Any:
        # Fresh copies of every batch: run_cases only copies top-level tensors.
        return student_fn([batch.clone() for batch in batches], constant)

    run_cases("check_moving_average_range", call, moving_average_cases(), _compare_range)


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
    cases = []
    for name, rows, hint in table:
        weight = torch.tensor(rows)
        cases.append(Case(name, (("weight", weight),), _per_channel_scales_reference(weight), hint))
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
    wrong = (got - expected).abs() > RELATIVE_TOLERANCE * expected.abs()
    if bool(wrong.any()):
        row = int(torch.nonzero(wrong)[0])
        raise WrongAnswer(
            f"scale of row {row}: expected {describe(expected[row].item())}, "
            f"got {describe(got[row].item())}"
        )


def check_per_channel_scales(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(weight) -> scales``: int8 symmetric, one scale per output row."""
    run_cases("check_per_channel_scales", student_fn, per_channel_scale_cases(), _compare_scales)


# --- Exercise: which tensors are quantization points after fusion -----------------------


def _sequential(*modules: tuple[str, nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(modules))


def quantization_point_cases() -> list[Case]:
    """Small Sequential models and the tensors their fused INT8 version stores."""
    table = [
        (
            "SimpleNet's shape: Linear+ReLU, Linear+ReLU, Linear",
            _sequential(
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(4, 3)),
                ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(3, 3)),
                ("relu2", nn.ReLU()),
                ("fc3", nn.Linear(3, 2)),
            ),
            "a Linear followed directly by a ReLU is fused with it: the Linear's own output "
            "is never stored, so 'fc1' and 'fc2' are not quantization points (the ReLU's are)",
        ),
        (
            "a Linear without a ReLU after it",
            _sequential(("a", nn.Linear(4, 4)), ("b", nn.Linear(4, 4)), ("act", nn.ReLU())),
            "every Linear not followed by a ReLU is a step of its own, and its output is "
            "stored: here 'a' stays, 'b' fuses with 'act'",
        ),
        (
            "the model's input is always a quantization point",
            _sequential(("fc", nn.Linear(4, 2)), ("relu", nn.ReLU())),
            "start the list with 'input': the first layer reads the quantized input",
        ),
        (
            "a Flatten is not quantized on its own; a ReLU first is",
            _sequential(("relu0", nn.ReLU()), ("flat", nn.Flatten()), ("fc", nn.Linear(4, 2))),
            "only Linear and ReLU outputs are stored (a Flatten just reshapes the same "
            "integers); a ReLU with no Linear before it runs alone, so its output is stored",
        ),
    ]
    return [
        Case(name, (("model", model),), quantization_points(model), hint)
        for name, model, hint in table
    ]


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
    run_cases("check_quantization_points", student_fn, quantization_point_cases(), _compare_names)


# --- Exercise: an observer of your own, mean +- 3 standard deviations -------------------


def _three_sigma_reference(batches: list[torch.Tensor]) -> tuple[float, float]:
    """[max(r_min, mu - 3 sigma), min(r_max, mu + 3 sigma)] over all values of all batches,
    with sigma the population standard deviation, in float64."""
    values = torch.cat([batch.reshape(-1) for batch in batches]).double()
    mean, std = float(values.mean()), float(values.std(correction=0))
    return max(float(values.min()), mean - 3 * std), min(float(values.max()), mean + 3 * std)


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
    return [
        Case(name, (("batches", batches),), _three_sigma_reference(batches), hint)
        for name, batches, hint in table
    ]


def check_three_sigma_observer(observer_class: type) -> None:
    """Check an Observer subclass: ``observer_class(dtype=torch.int8, symmetric=True)``,
    called on every batch, must return each batch unchanged and end with the range
    ``clipping_range()`` of :func:`_three_sigma_reference`."""
    if not isinstance(observer_class, type):
        raise TypeError(f"check_three_sigma_observer: expected your class, got {observer_class!r}")

    def observed_range(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        observer = observer_class(dtype=torch.int8, symmetric=True)
        for batch in batches:
            batch = batch.clone()
            if observer(batch) is not batch:
                raise InputError("observer(x) must return x itself, unchanged")
        return observer.clipping_range()

    run_cases("check_three_sigma_observer", observed_range, three_sigma_cases(), _compare_range)


# --- The activity: an observer for each quantization point ------------------------------


@dataclass
class ObserverChoiceResult:
    """What a per-point observer choice gives: the merged qparams, every chosen range, and
    the INT8 model's accuracy and predictions on the test split."""

    choice: dict[str, str]
    qparams: dict[str, QParams]
    ranges: dict[str, tuple[float, float]]
    accuracy: float
    predictions: torch.Tensor

    def report(self) -> str:
        lines = [f"{'point':7s} {'observer':22s} {'chosen range':>20s}"]
        for point, name in self.choice.items():
            low, high = self.ranges[point]
            lines.append(f"{point:7s} {name:22s} [{low:8.3f}, {high:8.3f}]")
        lines.append(f"INT8 accuracy on the test split: {self.accuracy:.2%}")
        return "\n".join(lines)


def _check_choice(model: nn.Module, choice: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(choice, Mapping):
        raise TypeError(f"choice: expected a dict {{point: observer name}}, got {choice!r}")
    points = quantization_points(model)
    if sorted(choice) != sorted(points):
        raise InputError(
            f"choice: expected one observer for each quantization point {points}, "
            f"got keys {list(choice)}"
        )
    for point, name in choice.items():
        if name not in OBSERVERS or name.startswith("per_channel"):
            allowed = [each for each in OBSERVERS if not each.startswith("per_channel")]
            raise InputError(f"choice[{point!r}]: {name!r} is not one of {allowed}")
    return {point: choice[point] for point in points}  # in run order


def evaluate_observer_choice(
    model: nn.Module,
    images: torch.Tensor,
    choice: Mapping[str, str],
    test: MNISTSplit,
    calibrations: dict[str, Calibration] | None = None,
) -> ObserverChoiceResult:
    """Calibrate ``model`` on ``images`` with ``choice[point]`` as the activation observer
    of each quantization point, convert it to INT8 and measure its accuracy on ``test``.

    ``calibrate`` uses one activation observer for all points, so this calibrates once per
    distinct observer in ``choice`` (reusing any in ``calibrations``, a dict observer name
    -> Calibration of the same model and images, which it fills) and takes each point's
    qparams from its observer's calibration. Weights keep the default per-channel min/max
    (the same in every calibration). The merged dict is a valid ``convert`` input.
    """
    choice = _check_choice(model, choice)
    if not isinstance(test, MNISTSplit):
        raise TypeError(
            f"test: expected an MNISTSplit such as data.test, got {type(test).__name__}"
        )
    calibrations = {} if calibrations is None else calibrations
    for name in dict.fromkeys(choice.values()):
        if name not in calibrations:
            calibrations[name] = calibrate(model, images, activation_observer=name, progress=False)
    first = calibrations[next(iter(choice.values()))]
    qparams = dict(first.qparams)  # the weights' qparams; every activation is replaced below
    ranges = {}
    for point, name in choice.items():
        qparams[point] = calibrations[name].qparams[point]
        low, high = calibrations[name].observers[point].clipping_range()
        ranges[point] = (float(low), float(high))
    predictions = predict(convert(model, qparams), test)
    accuracy = float((predictions == test.labels).float().mean())
    return ObserverChoiceResult(dict(choice), qparams, ranges, accuracy, predictions)


def changed_digits(predictions: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> str:
    """The paired comparison of two models on the same digits: how many predictions differ,
    how many of those the first model gets right and the reference wrong, and vice versa."""
    differ = predictions != reference
    fixed = int((differ & (predictions == labels)).sum())
    broken = int((differ & (reference == labels)).sum())
    changed = int(differ.sum())
    digits = "digit" if changed == 1 else "digits"
    return f"{changed} {digits} changed ({fixed} now right, {broken} now wrong)"


def check_observer_choice(
    choose_fn: Callable[[], Mapping[str, str]],
    model: nn.Module,
    images: torch.Tensor,
    test: MNISTSplit,
    calibrations: dict[str, Calibration] | None = None,
) -> ObserverChoiceResult | None:
    """Evaluate the activity's answer: ``choose_fn() -> {point: observer name}``.

    There is no single right answer, so this does not print PASS: it prints the evidence a
    justification should use (each chosen range as a share of the observed range, the INT8
    accuracy, and the digits that change against min/max everywhere, a paired count) and
    returns the :class:`ObserverChoiceResult`. An untouched skeleton (NotImplementedError)
    is reported as not attempted.
    """
    try:
        choice = choose_fn()
    except NotImplementedError:
        print(
            "check_observer_choice: NOT ATTEMPTED yet (your function raises "
            "NotImplementedError): fill in the exercise cell above, run it, then this cell"
        )
        return None
    calibrations = {} if calibrations is None else calibrations
    result = evaluate_observer_choice(model, images, choice, test, calibrations)
    baseline_choice = dict.fromkeys(result.choice, "minmax")
    baseline = evaluate_observer_choice(model, images, baseline_choice, test, calibrations)
    print(f"{'point':7s} {'observer':22s} {'chosen range':>20s} {'share of observed':>18s}")
    for point, name in result.choice.items():
        low, high = result.ranges[point]
        observer = calibrations[name].observers[point]
        observed = float(observer.max_val) - float(observer.min_val)
        share = (high - low) / observed if observed > 0 else 1.0
        print(f"{point:7s} {name:22s} [{low:8.3f}, {high:8.3f}] {share:18.1%}")
    print(f"INT8 accuracy: {result.accuracy:.2%} (min/max everywhere: {baseline.accuracy:.2%})")
    print(
        "against min/max everywhere: "
        + changed_digits(result.predictions, baseline.predictions, test.labels)
    )
    return result
