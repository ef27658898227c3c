"""The PTQ debugging procedure (ptqlib.debugging) and notebook 09's command line: a
DepthwiseCNN trained with the "hot" recipe collapses under per-tensor INT8, the procedure
names the depthwise layer whose BatchNorm folding did it, and the repairs hold.

The outcome is asserted qualitatively (below 50%, within a point), not as exact numbers."""

import contextlib
import copy
import io
import json
import shutil

import pytest
import torch
from torch import nn

from ptqlib.app.cli import EXIT_ERROR, main
from ptqlib.batchnorm import fold_model
from ptqlib.checkpoints import load_fp32, save_fp32
from ptqlib.debugging import (
    DebugReport,
    calibrated_activation_qparams,
    dead_channels,
    debug_model,
    format_report,
    partially_quantized,
    weighted_layers,
)
from ptqlib.errors import InputError
from ptqlib.int8_model import convert
from ptqlib.models import DepthwiseCNN
from ptqlib.plan import is_depthwise
from ptqlib.pretrained import pretrained_path
from ptqlib.quantization import fake_quantize, min_max, qparams_from_range
from ptqlib.training import DEPTHWISE_EPOCHS

SEED = 2  # notebook 09's pinned seed


def random_folded(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = DepthwiseCNN().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    return fold_model(model)


def test_partially_quantized_with_nothing_quantized_is_the_float_model():
    folded = random_folded()
    images = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    qparams = calibrated_activation_qparams(folded, images)
    assert list(qparams)[:3] == ["input", "relu1", "dw1_relu"]
    assert torch.equal(partially_quantized(folded, qparams)(images), folded(images))
    # every point quantized: the INT8 model's own logits
    everything = partially_quantized(folded, qparams, weighted_layers(folded), list(qparams))
    int8_model = convert(folded, qparams, per_channel=False)
    assert torch.equal(
        everything.quantized_logits(images), int8_model.quantized_logits(images).long()
    )


@pytest.mark.parametrize("per_channel", [False, True])
def test_partially_quantized_puts_a_layers_weights_on_the_int8_grid(per_channel):
    """Quantizing dw1's weights alone is the float model with dw1's weight fake-quantized
    (int8 symmetric, from its min/max), everything else float."""
    folded = random_folded()
    images = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    qparams = calibrated_activation_qparams(folded, images)
    simulated = partially_quantized(folded, qparams, weights=["dw1"], per_channel=per_channel)
    by_hand = copy.deepcopy(folded)
    axis = 0 if per_channel else None
    weight = by_hand.dw1.weight.detach()
    grid = qparams_from_range(*min_max(weight, axis=axis), torch.int8, True, axis=axis)
    with torch.no_grad():
        by_hand.dw1.weight.copy_(fake_quantize(weight, grid))
        expected = by_hand(images)
    assert torch.equal(simulated(images), expected)
    assert not torch.equal(simulated(images), folded(images))
    with pytest.raises(InputError, match="relu1"):
        partially_quantized(folded, qparams, weights=["relu1"])
    with pytest.raises(InputError, match="nowhere"):
        partially_quantized(folded, qparams, activations=["nowhere"])


def test_dead_channels_are_never_positive():
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.copy_(torch.tensor([0.0, -100.0, 0.0]))
    images = torch.rand(4, 1, 5, 5)
    assert dead_channels(model, images) == {"1": [1]}


@pytest.fixture(scope="module")
def hot_checkpoint(tmp_path_factory, offline_data_dir):
    """Notebook 09's hot DepthwiseCNN as ptqlib ships it (``ptqlib.pretrained``: what
    ``train --model dwcnn --recipe hot`` trained, see the test below), so the collapse and
    the repairs below are the same on every CPU; copied to a temporary folder, where the
    commands write their outputs beside it."""
    path = tmp_path_factory.mktemp("dwcnn-cli") / "dwcnn_hot_fp32.pt"
    shutil.copyfile(pretrained_path("dwcnn_hot"), path)
    return path, offline_data_dir


def test_train_dwcnn_hot_is_the_cached_training(monkeypatch, offline_data_dir, tmp_path):
    """``train --model dwcnn --recipe hot`` trains with notebook 09's epochs and seed and
    records the recipe: the recipe of the shipped model the fixture above loads. (Training
    it here again would take a minute; the call is recorded instead, one epoch of it real.)"""
    import ptqlib.training

    calls = []

    def one_epoch(data, **settings):
        calls.append(settings)
        return real_train(data, **{**settings, "epochs": 1})

    real_train = ptqlib.training.train
    monkeypatch.setattr(ptqlib.training, "train", one_epoch)
    path = tmp_path / "hot.pt"
    arguments = ["train", "--model", "dwcnn", "--recipe", "hot", "--out", str(path)]
    assert main([*arguments, "--data-dir", str(offline_data_dir)]) == 0
    assert calls == [{"epochs": DEPTHWISE_EPOCHS, "seed": SEED, "model": "dwcnn", "recipe": "hot"}]
    model, meta = load_fp32(path, expected_model="dwcnn")
    assert isinstance(model, DepthwiseCNN) and meta["recipe"] == "hot" and meta["seed"] == SEED


@pytest.fixture(scope="module")
def culprit_run(hot_checkpoint) -> tuple[DebugReport, dict]:
    """``find-culprit --json`` on the hot checkpoint, in-process, once: the report its call of
    ``debug_model`` returned (recorded on the way) and the JSON it printed. The procedure takes
    tens of seconds, so the library's report and the command's output come from one run."""
    import ptqlib.debugging

    path, data_dir = hot_checkpoint
    reports = []

    def recorded(*args, **kwargs):
        reports.append(debug_model(*args, **kwargs))
        return reports[-1]

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(ptqlib.debugging, "debug_model", recorded)
        arguments = ["find-culprit", "--checkpoint", str(path), "--data-dir", str(data_dir)]
        assert main([*arguments, "--json"]) == 0
    (report,) = reports
    return report, json.loads(printed.getvalue())


@pytest.fixture(scope="module")
def report(culprit_run, hot_checkpoint) -> DebugReport:
    """The debugging procedure on the hot DepthwiseCNN with the command's defaults (minmax,
    500 class-balanced calibration images, the 1,000 test digits)."""
    assert load_fp32(hot_checkpoint[0], expected_model="dwcnn")[1]["recipe"] == "hot"
    return culprit_run[0]


def test_the_report_names_a_depthwise_layer_with_a_dead_channel(report, hot_checkpoint):
    model, _ = load_fp32(hot_checkpoint[0])
    full, weights_only, activations_only = report.steps
    assert full.accuracy < 0.5 and weights_only.accuracy < 0.5
    assert report.fp32_accuracy - activations_only.accuracy < 0.01  # A8 alone is fine
    assert is_depthwise(model.get_submodule(report.culprit))
    culprit = next(facts for facts in report.layers if facts.layer == report.culprit)
    assert culprit.accuracy_alone < 0.5 and culprit.range_spread > 1000
    # every layer that breaks the model alone is a depthwise one with a tiny BN variance
    broken = [facts.layer for facts in report.layers if facts.accuracy_alone < 0.5]
    tiny = {facts.layer for facts in report.batchnorms if facts.tiny_variance_channels}
    assert broken and all(is_depthwise(model.get_submodule(name)) for name in broken)
    assert set(broken) <= tiny
    assert all(facts.accuracy_alone > 0.9 for facts in report.layers if facts.layer not in tiny)
    assert report.dead_channels  # the hot rate killed ReLU channels
    fixes = {trial.name: trial for trial in report.fixes}
    assert report.fp32_accuracy - fixes["per-channel weights"].accuracy < 0.01
    table = format_report(report)
    assert f"Culprit: {report.culprit}" in table and "per-channel weights" in table
    assert json.loads(json.dumps(report.to_dict()))["culprit"] == report.culprit


def evaluate(capsys, path, data_dir) -> float:
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(path), "--data-dir", str(data_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["accuracy"]


def test_quantize_per_tensor_collapses_and_per_channel_or_cle_repairs(hot_checkpoint, capsys):
    path, data_dir = hot_checkpoint
    fp32 = evaluate(capsys, path, data_dir)
    accuracies = {}
    for name, options in (
        ("per-tensor", ["--per-tensor"]),
        ("per-channel", []),
        ("per-tensor after CLE", ["--per-tensor", "--equalize"]),
    ):
        out = path.parent / f"{name}.pt"
        arguments = ["quantize", "--checkpoint", str(path), "--out", str(out), "--model", "dwcnn"]
        assert main([*arguments, *options, "--data-dir", str(data_dir)]) == 0
        accuracies[name] = evaluate(capsys, out, data_dir)
    assert accuracies["per-tensor"] < 0.5
    assert fp32 - accuracies["per-channel"] < 0.01
    assert fp32 - accuracies["per-tensor after CLE"] < 0.01  # for this seed (not for all)


def test_debug_command_json_names_the_layer(hot_checkpoint, culprit_run):
    report, found = culprit_run
    assert found == {
        "checkpoint": str(hot_checkpoint[0]),
        **json.loads(json.dumps(report.to_dict())),
    }
    assert found["culprit"] == report.culprit and report.culprit
    assert [trial["name"] for trial in found["steps"]][0] == "W8A8 per-tensor"


def test_equalize_refuses_simplenet_in_one_line(tmp_path, capsys):
    from ptqlib.models import SimpleNet

    path = save_fp32(SimpleNet(), tmp_path / "mlp.pt")
    arguments = ["quantize", "--checkpoint", str(path), "--out", str(tmp_path / "q.pt")]
    assert main([*arguments, "--equalize"]) == EXIT_ERROR
    assert "equalize" in capsys.readouterr().err
