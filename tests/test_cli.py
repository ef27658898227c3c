"""The command line: help and usage errors in-process (``main([...])``), and the real
``python -m ptqlib`` entry point as a user runs it, in a subprocess."""

import json
import subprocess
import sys

import pytest

from conftest import run_cli, run_main
from ptqlib.app.cli import EXIT_ERROR, main
from ptqlib.checkpoints import load_fp32
from ptqlib.models import SimpleNet


def test_train_saves_a_checkpoint_from_the_offline_sample(tmp_path, offline_data_dir):
    path = tmp_path / "fp32.pt"
    data_dir = str(offline_data_dir)
    result = run_main("train", "--epochs", "1", "--data-dir", data_dir, "--out", str(path))
    assert result.returncode == 0, result.stderr
    assert "offline sample" in result.stdout and "saved" in result.stdout
    model, meta = load_fp32(path)
    assert isinstance(model, SimpleNet) and meta["epochs"] == 1 and meta["n_train"] == 4000


def test_evaluate_json(quantized_checkpoints):
    path, data_dir = quantized_checkpoints["fp32"], quantized_checkpoints["data"]
    result = run_main("evaluate", "--checkpoint", str(path), "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds exactly one JSON object
    assert report["kind"] == "fp32" and report["n_test"] == 1000
    assert 0.8 < report["accuracy"] <= 1.0
    assert report["size_bytes"] == path.stat().st_size


def test_quantize_then_evaluate_int8(quantized_checkpoints, tmp_path):
    path, data_dir = quantized_checkpoints["fp32"], quantized_checkpoints["data"]
    out = tmp_path / "int8.pt"
    result = run_main(
        "quantize",
        "--checkpoint",
        str(path),
        "--out",
        str(out),
        "--calib",
        "200",
        "--observer",
        "minmax",
        "--data-dir",
        str(data_dir),
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "smaller than FP32" in result.stdout
    result = run_main("evaluate", "--checkpoint", str(out), "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "int8" and report["size_bytes"] == out.stat().st_size
    assert report["size_bytes"] * 3.5 < path.stat().st_size
    assert 0.8 < report["accuracy"] <= 1.0
    text = run_main("evaluate", "--checkpoint", str(out), "--data-dir", str(data_dir)).stdout
    assert "loaded an INT8 checkpoint" in text
    result = run_main("quantize", "--checkpoint", str(out), "--out", str(tmp_path / "again.pt"))
    assert result.returncode == 2 and "is an INT8 checkpoint, but an FP32" in result.stderr


def test_python_m_ptqlib_evaluates_a_checkpoint(quantized_checkpoints):
    """The real entry point, in a new process as a user runs it: exit 0, one JSON object on
    stdout, nothing on stderr (no warning at import, no download attempt)."""
    path, data_dir = quantized_checkpoints["int8"], quantized_checkpoints["data"]
    result = run_cli("evaluate", "--checkpoint", str(path), "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "int8"
    assert "Traceback" not in result.stderr


def run_in_process(args, capsys) -> tuple[int, str, str]:
    """``main(args)``'s exit status, stdout and stderr; argparse's own exits included."""
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_help_documents_every_option(capsys):
    for command, options in {
        "train": ["--epochs", "--seed", "--data-dir", "--out"],
        "evaluate": ["--checkpoint", "--data-dir", "--json"],
        "quantize": ["--checkpoint", "--out", "--observer", "--calib", "--per-tensor"],
        "pipeline": ["--data-dir", "--observer", "--calib", "--threads", "--out"],
        "bench": ["--data-dir", "--observer", "--calib", "--threads", "--batch-sizes"],
    }.items():
        status, text, _ = run_in_process([command, "--help"], capsys)
        assert status == 0
        assert all(option in text for option in options), command


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data-dir", "/no/such/dir"], "does not exist"),
        (["train", "--epochs", "zero"], "expected a whole number"),
        (["evaluate", "--checkpoint", "/no/such/file.pt"], "does not exist"),
        (["evaluate"], "--checkpoint"),
        (["frobnicate"], "invalid choice"),
        (["quantize", "--checkpoint", "x.pt", "--out", "y.pt", "--observer", "magic"], "invalid"),
        (["quantize", "--checkpoint", "x.pt", "--out", "y.pt", "--calib", "-3"], "positive"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, message, capsys):
    status, _, err = run_in_process(args, capsys)
    assert status == EXIT_ERROR
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only bad input becomes a one-line error: a TypeError inside ptqlib is a bug."""

    def broken(*args, **kwargs):
        raise TypeError("a bug in ptqlib")

    monkeypatch.setattr("ptqlib.app.quantize.quantize_checkpoint", broken)
    with pytest.raises(TypeError, match="a bug in ptqlib"):
        main(["quantize", "--checkpoint", "x.pt", "--out", "y.pt"])


def test_not_a_checkpoint(tmp_path):
    """Through the real entry point: one line on stderr, exit 2, no traceback."""
    (tmp_path / "notes.pt").write_text("hello")
    result = run_cli("evaluate", "--checkpoint", str(tmp_path / "notes.pt"))
    assert result.returncode == 2
    assert "not a readable ptqlib checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_the_catalog_names_what_the_library_implements():
    """The command line lists the catalog's names (without importing torch); every one of them
    is implemented, and nothing else is."""
    from ptqlib import catalog
    from ptqlib.models import MODELS
    from ptqlib.observers import OBSERVERS
    from ptqlib.training import RECIPES

    assert tuple(MODELS) == catalog.MODEL_NAMES
    assert tuple(OBSERVERS) == catalog.OBSERVER_NAMES
    assert {model: tuple(recipes) for model, recipes in RECIPES.items()} == catalog.RECIPE_NAMES


def test_the_parser_imports_no_torch():
    """--help answers at once: building the parser imports neither torch nor the library."""
    code = "import sys, ptqlib.app.cli as c; c.build_parser(); print('torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "False"
