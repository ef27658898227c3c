"""The deployment commands, in-process (``main([...])``): quantize -> export -> evaluate in ONNX
Runtime. ``tests/test_cli.py`` runs the real ``python -m ptqlib`` in a new process."""

import json

import onnx
import pytest

from conftest import assert_one_line_error, run_main
from ptqlib.app.pipeline import MODEL_NAMES
from ptqlib.data import calibration_images, load_mnist
from ptqlib.deploy.onnx_runtime import load_onnx_model
from ptqlib.deploy.ort_quantizer import ort_quantize_static
from ptqlib.evaluation import agreement, predict
from ptqlib.int8_checkpoint import load_int8
from ptqlib.int8_model import with_requantization
from ptqlib.training import load_or_train_baseline


@pytest.fixture(scope="module")
def files(tmp_path_factory, quantized_checkpoints):
    """An FP32 checkpoint, its INT8 checkpoint (quantize) and both exported (export)."""
    folder = tmp_path_factory.mktemp("deploy")
    paths = dict(quantized_checkpoints)
    for kind in ("int8", "fp32"):
        paths[f"{kind}_onnx"] = folder / f"{kind}.onnx"
        result = run_main(
            "export", "--checkpoint", str(paths[kind]), "--out", str(paths[f"{kind}_onnx"])
        )
        assert result.returncode == 0, result.stderr
        assert "the ONNX checker passed" in result.stdout
    return paths


def evaluate_json(path, data_dir):
    result = run_main("evaluate", "--checkpoint", str(path), "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_quantize_export_evaluate_in_onnx_runtime(files):
    report = evaluate_json(files["int8_onnx"], files["data"])
    assert report["runtime"] == "onnxruntime" and report["kind"] == "int8"
    assert report["size_bytes"] == files["int8_onnx"].stat().st_size
    assert report["n_test"] == 1000 and 0.8 < report["accuracy"] <= 1.0
    onnx.checker.check_model(onnx.load(files["int8_onnx"]), full_check=True)

    test = load_mnist(files["data"], splits=("test",), verbose=False).test
    runtime = load_onnx_model(files["int8_onnx"])
    ort_predictions = predict(runtime, test)
    assert report["accuracy"] == round(float((ort_predictions == test.labels).float().mean()), 6)
    int8_model, _ = load_int8(files["int8"])
    assert agreement(ort_predictions, predict(int8_model, test)) >= 0.999
    ort_matching = with_requantization(int8_model, "float32")
    assert agreement(ort_predictions, predict(ort_matching, test)) == 1.0


def test_fp32_export_evaluates_like_the_checkpoint(files):
    onnx_report = evaluate_json(files["fp32_onnx"], files["data"])
    torch_report = evaluate_json(files["fp32"], files["data"])
    assert onnx_report["kind"] == "fp32" and onnx_report["runtime"] == "onnxruntime"
    assert torch_report["runtime"] == "pytorch"
    assert abs(onnx_report["accuracy"] - torch_report["accuracy"]) <= 0.001


def test_bad_onnx_files_give_one_line_and_exit_2(files, tmp_path, offline_data):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(files["int8_onnx"].read_bytes()[:-3000])  # truncated
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    foreign = tmp_path / "foreign.onnx"
    baseline, _ = load_or_train_baseline(offline_data, progress=False)
    onnx.save(ort_quantize_static(baseline, calibration_images(offline_data.train, 100)), foreign)
    for path, message in [
        (corrupt, "not a valid ONNX file"),
        (text, "not a valid ONNX file"),
        (foreign, "not written by `python -m ptqlib export`"),
        (tmp_path / "missing.onnx", "does not exist"),
    ]:
        assert_one_line_error(run_main("evaluate", "--checkpoint", str(path)), message)


def test_export_errors(files, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "model.onnx"
    result = run_main("export", "--checkpoint", str(files["int8"]), "--out", str(out))
    assert_one_line_error(result, "No such file or directory")
    assert str(out.parent) in result.stderr and not out.parent.exists()
    result = run_main("export", "--checkpoint", str(files["int8"]), "--out", str(tmp_path))
    assert_one_line_error(result, "is a directory")
    result = run_main("export", "--checkpoint", str(files["int8_onnx"]), "--out", "x.onnx")
    assert_one_line_error(result, "not a readable ptqlib checkpoint")
    assert "--checkpoint" in run_main("export", "--help").stdout


@pytest.mark.slow
def test_bench_adds_onnx_runtime_and_pt2e_rows(files):
    result = run_main(
        "bench",
        "--runtime",
        "onnxruntime",
        "pt2e",
        "--batch-sizes",
        "1",
        "--calib",
        "100",
        "--observer",
        "minmax",
        "--data-dir",
        str(files["data"]),
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == [*MODEL_NAMES, "ort_fp32", "ort_int8", "int8_pt2e"]
