"""The activity of notebook 03: pick an observer for each quantization point.

:func:`evaluate_observer_choice` is its helper: ``calibrate`` takes one activation observer
for the whole model, so it calibrates once per observer named in the choice and merges the
qparams key by key (the merged dict is what ``convert`` takes), then measures the INT8
model's accuracy. :func:`check_observer_choice` runs it on a student's choice and prints the
evidence: there is no single right answer (the notebook grades the justification with a
rubric), so the grader records the choice as answered (:data:`OBSERVER_CHOICE`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ptqlib.calibration import Calibration, calibrate
from ptqlib.classroom.checkers.exercise import OpenQuestion
from ptqlib.data import MNISTSplit
from ptqlib.errors import InputError
from ptqlib.evaluation import predict
from ptqlib.fusion import quantization_points
from ptqlib.int8_model import convert
from ptqlib.observers import OBSERVERS
from ptqlib.quantization import QParams

OBSERVER_CHOICE = OpenQuestion(
    id="observer_choice", notebook="03_observers_and_calibration", function="choose_observers"
)


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
        print("check_observer_choice: NOT ATTEMPTED yet")
        print("    (your function raises NotImplementedError): fill in the exercise cell above,")
        print("    run it, then run this cell again")
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
