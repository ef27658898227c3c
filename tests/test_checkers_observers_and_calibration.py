"""Tests for ptqlib.classroom.checkers.observers_and_calibration: right answers pass, the classic
mistakes fail with their hint, untouched skeletons are 'not attempted', and the helper of
the observer-choice activity merges calibrations into qparams that convert accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ptqlib.calibration import calibrate
from ptqlib.classroom.checkers import (
    changed_digits,
    check_moving_average_range,
    check_observer_choice,
    check_per_channel_scales,
    check_quantization_points,
    check_three_sigma_observer,
    evaluate_observer_choice,
)
from ptqlib.data import MNISTSplit
from ptqlib.evaluation import predict
from ptqlib.fusion import quantization_points
from ptqlib.int8_model import convert
from ptqlib.observers.base import Observer

# --- Student answers, right and wrong, written the way a student would ------------------


def good_moving_average(batches, constant):
    low, high = batches[0].min(), batches[0].max()
    for batch in batches[1:]:
        low = low + constant * (batch.min() - low)
        high = high + constant * (batch.max() - high)
    return low, high


def swapped_weights(batches, constant):
    low, high = batches[0].min(), batches[0].max()
    for batch in batches[1:]:
        low = constant * low + (1 - constant) * batch.min()
        high = constant * high + (1 - constant) * batch.max()
    return low, high


def starts_at_zero(batches, constant):
    low = high = torch.tensor(0.0)
    for batch in batches:
        low = low + constant * (batch.min() - low)
        high = high + constant * (batch.max() - high)
    return low, high


def good_scales(weight):
    return weight.abs().amax(dim=1) / 127.5


def good_points(model):
    points, previous = ["input"], None
    for name, module in model.named_children():
        if isinstance(module, nn.ReLU) and isinstance(previous, nn.Linear):
            points[-1] = name
        elif isinstance(module, (nn.Linear, nn.ReLU)):
            points.append(name)
        previous = module
    return points


def every_linear_and_relu(model):
    return ["input"] + [
        name for name, m in model.named_children() if isinstance(m, (nn.Linear, nn.ReLU))
    ]


class GoodThreeSigma(Observer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._reset_statistics()

    def _observe(self, x, batch_min, batch_max):
        values = x.double()
        self.count += values.numel()
        self.total += values.sum().item()
        self.squares += (values**2).sum().item()
        self.min_val = torch.min(self.min_val, batch_min)
        self.max_val = torch.max(self.max_val, batch_max)

    def _choose_range(self):
        mean = self.total / self.count
        std = max(self.squares / self.count - mean**2, 0.0) ** 0.5
        return (
            torch.clamp(self.min_val, min=mean - 3 * std),
            torch.clamp(self.max_val, max=mean + 3 * std),
        )

    def _reset_statistics(self):
        self.count, self.total, self.squares = 0, 0.0, 0.0
        self.min_val, self.max_val = torch.tensor(float("inf")), torch.tensor(float("-inf"))


class LastBatchOnly(GoodThreeSigma):
    def _observe(self, x, batch_min, batch_max):
        self._reset_statistics()
        super()._observe(x, batch_min, batch_max)


class NotIntersected(GoodThreeSigma):
    def _choose_range(self):
        mean = self.total / self.count
        std = max(self.squares / self.count - mean**2, 0.0) ** 0.5
        return torch.tensor(mean - 3 * std), torch.tensor(mean + 3 * std)


class Skeleton(Observer):
    def _observe(self, x, batch_min, batch_max):
        raise NotImplementedError

    def _choose_range(self):
        raise NotImplementedError

    def _reset_statistics(self):
        raise NotImplementedError


def not_attempted(*arguments):
    raise NotImplementedError


# --- The checkers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checker", "answer"),
    [
        (check_moving_average_range, good_moving_average),
        (check_per_channel_scales, good_scales),
        (check_quantization_points, good_points),
        (check_three_sigma_observer, GoodThreeSigma),
    ],
)
def test_right_answers_pass(checker, answer, capsys):
    checker(answer)
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("checker", "answer", "hint"),
    [
        (check_moving_average_range, swapped_weights, "swapping them"),
        (check_moving_average_range, starts_at_zero, "not 0"),
        (check_per_channel_scales, lambda w: w.abs().amax(dim=0) / 127.5, "one scale per row"),
        (check_per_channel_scales, lambda w: w.amax(dim=1) / 127.5, "largest |W_ij|"),
        (check_per_channel_scales, lambda w: w.abs().amax(dim=1) / 127, "not max / 127"),
        (check_quantization_points, every_linear_and_relu, "'fc1' and 'fc2' are not"),
        (check_quantization_points, lambda m: good_points(m)[1:], "missing ['input']"),
        (check_three_sigma_observer, LastBatchOnly, "over ALL batches"),
        (check_three_sigma_observer, NotIntersected, "intersect with the observed range"),
    ],
)
def test_classic_mistakes_fail_with_their_hint(checker, answer, hint):
    with pytest.raises(AssertionError) as failure:
        checker(answer)
    assert hint in str(failure.value)


@pytest.mark.parametrize(
    ("checker", "skeleton"),
    [
        (check_moving_average_range, not_attempted),
        (check_per_channel_scales, not_attempted),
        (check_quantization_points, not_attempted),
        (check_three_sigma_observer, Skeleton),
    ],
)
def test_untouched_skeletons_are_not_attempted(checker, skeleton, capsys):
    checker(skeleton)
    assert "NOT ATTEMPTED" in capsys.readouterr().out


def test_student_cannot_change_the_cases_in_place():
    def clobber(batches, constant):
        for batch in batches:
            batch.zero_()
        return good_moving_average(batches, constant)

    with pytest.raises(AssertionError):
        check_moving_average_range(clobber)
    check_moving_average_range(good_moving_average)  # the cases themselves are intact


def test_reference_points_match_ptqlib_on_simplenet():
    from ptqlib.models import SimpleNet

    model = SimpleNet()
    assert good_points(model) == quantization_points(model) == ["input", "relu1", "relu2", "fc3"]


# --- The activity helper -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """A small Linear-ReLU-Linear net, calibration images and a labelled test split."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 10)).eval()
    images = torch.randn(64, 1, 3, 4)
    test_images = torch.randn(40, 1, 3, 4)
    with torch.no_grad():
        labels = model(test_images).argmax(dim=1)
    return model, images, MNISTSplit(test_images, labels)


def test_one_observer_everywhere_equals_plain_calibration(tiny):
    model, images, test = tiny
    choice = dict.fromkeys(quantization_points(model), "minmax")
    result = evaluate_observer_choice(model, images, choice, test)
    plain = calibrate(model, images, activation_observer="minmax", progress=False)
    assert list(result.qparams) == list(plain.qparams)
    for key, qparams in plain.qparams.items():
        assert torch.equal(result.qparams[key].scale, qparams.scale)
        assert torch.equal(result.qparams[key].zero_point, qparams.zero_point)
    expected = predict(convert(model, plain.qparams), test)
    assert torch.equal(result.predictions, expected)
    assert result.accuracy == float((expected == test.labels).float().mean())


def test_mixed_choice_takes_each_point_from_its_observer(tiny):
    model, images, test = tiny
    calibrations = {}
    choice = {"input": "entropy", "2": "minmax", "3": "percentile"}
    result = evaluate_observer_choice(model, images, choice, test, calibrations)
    assert sorted(calibrations) == ["entropy", "minmax", "percentile"]
    for point, name in choice.items():
        assert result.qparams[point] is calibrations[name].qparams[point]
    assert "INT8 accuracy" in result.report()


@pytest.mark.parametrize(
    ("choice", "error", "words"),
    [
        ({"input": "minmax", "2": "minmax"}, ValueError, "one observer for each"),
        ({"input": "minmax", "1": "minmax", "2": "minmax", "3": "minmax"}, ValueError, "got keys"),
        ({"input": "minmax", "2": "per_channel_minmax", "3": "minmax"}, ValueError, "not one of"),
        ({"input": "minmax", "2": "median", "3": "minmax"}, ValueError, "'median'"),
        (["minmax"], TypeError, "choice"),
    ],
)
def test_bad_choices_are_named(tiny, choice, error, words):
    model, images, test = tiny
    with pytest.raises(error, match=None) as failure:
        evaluate_observer_choice(model, images, choice, test)
    assert words in str(failure.value)


def test_changed_digits_counts_both_directions():
    labels = torch.tensor([0, 1, 2, 3, 4])
    reference = torch.tensor([0, 1, 9, 3, 9])
    predictions = torch.tensor([0, 7, 2, 3, 8])
    assert changed_digits(predictions, reference, labels) == (
        "3 digits changed (1 now right, 1 now wrong)"
    )


def test_check_observer_choice_reports_evidence_or_not_attempted(tiny, capsys):
    model, images, test = tiny
    assert check_observer_choice(not_attempted, model, images, test) is None
    assert "NOT ATTEMPTED" in capsys.readouterr().out
    choice = {"input": "minmax", "2": "mse", "3": "minmax"}
    result = check_observer_choice(lambda: choice, model, images, test)
    printed = capsys.readouterr().out
    assert result.choice == choice
    assert "INT8 accuracy" in printed and "against min/max everywhere" in printed
    assert "100.0%" in printed  # min/max keeps the whole observed range of the input


# --- Notebook 03 follows the exercise convention ----------------------------------------

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_observers_and_calibration.ipynb"


def _cells():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return [(cell["metadata"].get("tags", []), "".join(cell["source"])) for cell in cells]


def test_every_exercise_is_skeleton_checker_solution():
    cells = _cells()
    exercises = [index for index, (tags, _) in enumerate(cells) if "exercise" in tags]
    assert len(exercises) == 5
    for index in exercises:
        skeleton, checker = cells[index][1], cells[index + 1]
        assert "# YOUR CODE HERE" in skeleton and "raise NotImplementedError" in skeleton
        assert "checker" in checker[0] and "nbval-ignore-output" in checker[0]
        assert "check_" in checker[1]
        solution = next(cell for cell in cells[index + 2 :] if cell[0] and "solution" in cell[0])
        assert "hide-cell" in solution[0]


def test_untouched_notebook_skeletons_report_not_attempted(capsys):
    # The skeleton and checker cells of the exercises that need no model, run as they are.
    namespace = {"torch": torch, "Observer": Observer}
    namespace.update(
        {
            name: globals()[name]
            for name in (
                "check_moving_average_range",
                "check_per_channel_scales",
                "check_quantization_points",
                "check_three_sigma_observer",
            )
        }
    )
    cells = _cells()
    ran = 0
    for index, (tags, source) in enumerate(cells):
        if "exercise" in tags and "check_observer_choice" not in cells[index + 1][1]:
            exec(source, namespace)  # noqa: S102 - the notebook's own cells
            exec(cells[index + 1][1], namespace)  # noqa: S102
            ran += 1
    printed = capsys.readouterr().out
    assert ran == 4 and printed.count("NOT ATTEMPTED") == 4
