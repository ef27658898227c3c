"""The low-bit command line, run in-process: quantize, evaluate --json, layer-errors."""

import json

import pytest
import torch

from ptqlib.app.cli import main
from ptqlib.checkpoints import save_fp32
from ptqlib.training import load_or_train_baseline


@pytest.fixture(scope="module")
def setup(offline_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("low-bit-cli")
    empty = folder / "empty-data"
    empty.mkdir()
    model, meta = load_or_train_baseline(offline_data, progress=False)
    fp32 = save_fp32(model, folder / "fp32.pt", meta)
    return folder, fp32, empty


def run(capsys, *args):
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("rounding", ["gptq", "nearest"])
def test_quantize_w2_then_evaluate_and_layer_errors(setup, capsys, rounding):
    folder, fp32, data_dir = setup
    out = folder / f"w2_{rounding}.pt"
    code, stdout, stderr = run(
        capsys,
        "quantize",
        "--checkpoint",
        fp32,
        "--out",
        out,
        "--weight-bits",
        2,
        "--activation-bits",
        6,
        "--rounding",
        rounding,
        "--calib",
        300,
        "--data-dir",
        data_dir,
    )
    assert code == 0, stderr
    assert "weights fc1=2,fc2=2,fc3=2" in stdout and "activations 6 bits" in stdout
    payload = torch.load(out, weights_only=True)
    assert payload["meta"]["rounding"] == rounding
    code, stdout, stderr = run(
        capsys, "evaluate", "--checkpoint", out, "--data-dir", data_dir, "--json"
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["kind"] == "int8" and report["size_bytes"] == out.stat().st_size
    assert report["weight_bits"] == {"fc1": 2, "fc2": 2, "fc3": 2}
    assert report["activation_bits"] == 6
    assert 0.5 < report["accuracy"] <= 1.0
    code, stdout, stderr = run(
        capsys, "layer-errors", "--checkpoint", out, "--data-dir", data_dir, "--json"
    )
    assert code == 0, stderr
    layers = json.loads(stdout)["layers"]
    assert [layer["name"] for layer in layers] == ["fc1", "fc2", "fc3"]
    assert all(0 < layer["propagated"] < 40 and layer["weight_bits"] == 2 for layer in layers)
    code, stdout, _ = run(
        capsys, "layer-errors", "--checkpoint", out, "--fp32", fp32, "--data-dir", data_dir
    )
    assert code == 0 and "propagated" in stdout and stdout.count("\n") >= 5


def test_gptq_beats_nearest_at_two_bits_from_the_command_line(setup, capsys):
    folder, fp32, data_dir = setup
    accuracies = {}
    for rounding in ("gptq", "nearest"):
        out = folder / f"compare_{rounding}.pt"
        code, _, stderr = run(
            capsys,
            "quantize",
            "--checkpoint",
            fp32,
            "--out",
            out,
            "--weight-bits",
            2,
            "--rounding",
            rounding,
            "--observer",
            "minmax",
            "--data-dir",
            data_dir,
        )
        assert code == 0, stderr
        _, stdout, _ = run(
            capsys, "evaluate", "--checkpoint", out, "--data-dir", data_dir, "--json"
        )
        accuracies[rounding] = json.loads(stdout)["accuracy"]
    assert accuracies["gptq"] > accuracies["nearest"]


def test_layer_bits_and_fixes(setup, capsys):
    folder, fp32, data_dir = setup
    out = folder / "mixed.pt"
    code, stdout, stderr = run(
        capsys,
        "quantize",
        "--checkpoint",
        fp32,
        "--out",
        out,
        "--layer-bits",
        "fc1=2,fc3=8",
        "--weight-bits",
        4,
        "--bias-correction",
        "--weight-clipping",
        "mse",
        "--calib",
        200,
        "--data-dir",
        data_dir,
    )
    assert code == 0, stderr
    assert "weights fc1=2,fc2=4,fc3=8 (nearest, mse clipping, bias correction)" in stdout
    _, stdout, _ = run(capsys, "evaluate", "--checkpoint", out, "--data-dir", data_dir, "--json")
    assert json.loads(stdout)["weight_bits"] == {"fc1": 2, "fc2": 4, "fc3": 8}


def test_fp32_evaluate_reports_32_bits(setup, capsys):
    _, fp32, data_dir = setup
    code, stdout, _ = run(
        capsys, "evaluate", "--checkpoint", fp32, "--data-dir", data_dir, "--json"
    )
    report = json.loads(stdout)
    assert code == 0 and report["weight_bits"] == 32 and report["activation_bits"] == 32


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weight-bits", "1"], "weight_bits: expected a whole number of bits from 2 to 8, got 1"),
        (["--weight-bits", "9"], "from 2 to 8, got 9"),
        (["--activation-bits", "3"], "activation_bits: expected a whole number of bits from 4"),
        (["--layer-bits", "fc4=4"], "unknown layer(s) fc4"),
        (["--layer-bits", "fc1=4,fc1=2"], "layer 'fc1' is given twice"),
        (["--layer-bits", "fc1=10"], "from 2 to 8, got 10"),
        (["--layer-bits", "fc1"], "expected NAME=BITS"),
    ],
)
def test_bad_settings_give_one_line_and_exit_2(setup, capsys, extra, message):
    folder, fp32, data_dir = setup
    args = ["quantize", "--checkpoint", fp32, "--out", folder / "bad.pt", "--data-dir", data_dir]
    code, _, stderr = run(capsys, *args, *extra)
    assert code == 2
    assert message in stderr and stderr.count("\n") == 1
    assert not (folder / "bad.pt").exists()


@pytest.mark.parametrize(
    "extra, message",
    [(["--rounding", "up"], "invalid choice"), (["--weight-bits", "two"], "invalid int value")],
)
def test_unparsable_settings_give_one_line_and_exit_2(setup, capsys, extra, message):
    folder, fp32, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "--checkpoint", str(fp32), "--out", str(folder / "bad.pt"), *extra])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in stderr and stderr.count("\n") == 1


def test_layer_errors_without_an_fp32_checkpoint_is_one_line(setup, capsys, tmp_path):
    folder, fp32, data_dir = setup
    out = tmp_path / "q.pt"
    code, _, stderr = run(
        capsys,
        "quantize",
        "--checkpoint",
        fp32,
        "--out",
        out,
        "--weight-bits",
        4,
        "--calib",
        100,
        "--data-dir",
        data_dir,
    )
    assert code == 0, stderr
    payload = torch.load(out, weights_only=True)
    payload["meta"]["source_path"] = str(tmp_path / "gone.pt")
    from ptqlib.checkpoints import save_checkpoint

    save_checkpoint(payload, out)
    code, _, stderr = run(capsys, "layer-errors", "--checkpoint", out, "--data-dir", data_dir)
    assert code == 2 and "give --fp32" in stderr and stderr.count("\n") == 1


def test_layer_errors_an_8_bit_checkpoint_without_fp32(setup, capsys, tmp_path):
    """The default 8-bit quantize records its FP32 file too: layer-errors needs no --fp32."""
    _, fp32, data_dir = setup
    out = tmp_path / "int8.pt"
    arguments = ["--calib", 100, "--observer", "minmax", "--data-dir", data_dir]
    code, stdout, stderr = run(capsys, "quantize", "--checkpoint", fp32, "--out", out, *arguments)
    assert code == 0, stderr
    assert "weights fc1=8,fc2=8,fc3=8 (nearest, minmax clipping), activations 8 bits" in stdout
    code, stdout, stderr = run(
        capsys, "layer-errors", "--checkpoint", out, "--data-dir", data_dir, "--json"
    )
    assert code == 0, stderr
    layers = json.loads(stdout)["layers"]
    assert [layer["name"] for layer in layers] == ["fc1", "fc2", "fc3"]
    assert all(layer["weight_bits"] == 8 and layer["propagated"] > 20 for layer in layers)


def test_adaround_from_the_command_line_is_reproducible(setup, capsys):
    folder, fp32, data_dir = setup
    weights = []
    for run_number in range(2):
        out = folder / f"adaround_{run_number}.pt"
        options = "--weight-bits 3 --rounding adaround --seed 5 --adaround-iterations 40"
        code, stdout, stderr = run(
            capsys, "quantize", "--checkpoint", fp32, "--out", out, *options.split(),
            "--calib", 100, "--data-dir", data_dir
        )  # fmt: skip
        assert code == 0, stderr
        assert "(adaround, minmax clipping)" in stdout
        payload = torch.load(out, weights_only=True)
        weights.append([layer["packed_weight"]["data"] for layer in payload["layers"][1:]])
    for first, second in zip(*weights, strict=True):
        assert torch.equal(first, second)


@pytest.mark.parametrize(
    "command, options",
    [
        (
            "quantize",
            ["--weight-bits", "--activation-bits", "--rounding", "--bias-correction",
             "--weight-clipping", "--layer-bits", "--seed", "--adaround-iterations"],
        ),
        ("layer-errors", ["--checkpoint", "--fp32", "--data-dir", "--json"]),
    ],
)  # fmt: skip
def test_help_documents_the_low_bit_options(capsys, command, options):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(option in text for option in options)
