"""``python -m ptqlib quantize --format``, in-process: a checkpoint that evaluate and
layer-errors read (saying how the arithmetic ran), and bad settings refused in one line
before any work."""

import json
import shutil

import pytest

from ptqlib.app.cli import EXIT_ERROR, main
from ptqlib.formats import FORMAT_NAMES
from ptqlib.formats.schemes import SCHEMES


def test_the_command_line_lists_exactly_the_implemented_formats():
    assert FORMAT_NAMES == tuple(SCHEMES)


@pytest.fixture(scope="module")
def format_files(quantized_checkpoints, tmp_path_factory):
    """The baseline in FP8 E4M3 (weights and activations) and in INT4 g128 (weights)."""
    folder = tmp_path_factory.mktemp("formats")
    data = str(quantized_checkpoints["data"])
    files = {}
    for name in ("fp8-e4m3", "int4-g128"):
        files[name] = folder / f"{name}.pt"
        arguments = [
            "quantize",
            "--format",
            name,
            "--checkpoint",
            str(quantized_checkpoints["fp32"]),
        ]
        arguments += ["--out", str(files[name]), "--calib", "50", "--data-dir", data]
        assert main(arguments) == 0
    return files, data


def test_evaluate_says_which_arithmetic_ran(format_files, capsys):
    files, data = format_files
    capsys.readouterr()
    for name, arithmetic in (("fp8-e4m3", "torch._scaled_mm"), ("int4-g128", "simulated")):
        assert (
            main(["evaluate", "--checkpoint", str(files[name]), "--data-dir", data, "--json"]) == 0
        )
        report = json.loads(capsys.readouterr().out)
        assert report["kind"] == "formats" and report["format"] == name
        assert arithmetic in report["arithmetic"]
        assert 0.8 < report["accuracy"] <= 1.0
        assert report["size_bytes"] == files[name].stat().st_size
    assert report["activation_bits"] == 32 and 4.1 < report["weight_bits"] < 4.2


def test_layer_errors_reads_a_format_checkpoint(format_files, capsys):
    files, data = format_files
    capsys.readouterr()
    assert main(["layer-errors", "--checkpoint", str(files["int4-g128"]), "--data-dir", data]) == 0
    printed = capsys.readouterr().out
    assert "int4-g128: SQNR of every layer against FP32" in printed and "simulated" in printed
    assert [line.split()[0] for line in printed.splitlines()[-3:]] == ["fc1", "fc2", "fc3"]


def test_an_unknown_format_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["quantize", "--format", "fp3", "--checkpoint", "x.pt", "--out", "y.pt"])
    assert stopped.value.code == EXIT_ERROR
    error = capsys.readouterr().err
    assert "invalid choice: 'fp3'" in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "mxfp4", "--per-tensor"], "--per-tensor set the INT8 quantization"),
        (["--format", "nvfp4", "--weight-bits", "4"], "--weight-bits set the INT8 quantization"),
    ],
)
def test_int8_options_are_refused_before_any_work(extra, message, tmp_path, capsys):
    out = tmp_path / "q.pt"
    assert main(["quantize", "--checkpoint", "nowhere.pt", "--out", str(out), *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not out.exists()


def test_a_format_checkpoint_is_not_an_fp32_one(format_files, tmp_path, capsys):
    files, data = format_files
    copy = shutil.copy(files["int4-g128"], tmp_path / "copy.pt")
    arguments = ["quantize", "--format", "mxfp4", "--checkpoint", str(copy), "--out"]
    assert main([*arguments, str(tmp_path / "q.pt"), "--data-dir", data]) == EXIT_ERROR
    assert "is a number-format checkpoint, but an FP32" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(copy), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "number format, which export does not write" in capsys.readouterr().err
