"""The command line on notebook 07's SmallCNN, in-process (``main([...])``): train, quantize,
evaluate, and the one-line errors for bad input."""

import json

import pytest
import torch

from ptqlib.app.cli import EXIT_ERROR, main
from ptqlib.app.model_files import load_model
from ptqlib.app.pipeline import MODEL_NAMES, run_pipeline
from ptqlib.checkpoints import load_checkpoint, load_fp32, save_checkpoint, save_fp32
from ptqlib.int8_checkpoint import load_int8
from ptqlib.int8_layers import Int8Conv2d, Int8MaxPool2d
from ptqlib.models import SimpleNet, SmallCNN


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn-cli")
    empty = folder / "empty-data"
    empty.mkdir()
    path = folder / "cnn_fp32.pt"
    arguments = ["train", "--model", "cnn", "--epochs", "1", "--data-dir", str(empty)]
    assert main([*arguments, "--out", str(path)]) == 0
    return path, empty


@pytest.fixture(scope="module")
def int8_checkpoint(cnn_checkpoint):
    path, data_dir = cnn_checkpoint
    out = path.parent / "cnn_int8.pt"
    arguments = ["quantize", "--checkpoint", str(path), "--out", str(out), "--calib", "200"]
    assert main([*arguments, "--observer", "minmax", "--data-dir", str(data_dir)]) == 0
    return out


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    return error


def test_train_cnn_records_the_model(cnn_checkpoint, capsys):
    path, _ = cnn_checkpoint
    assert load_checkpoint(path)["model"] == "cnn"
    model, meta = load_fp32(path)
    assert isinstance(model, SmallCNN) and meta["epochs"] == 1


def test_simplenet_checkpoint_has_no_model_field_and_still_loads(tmp_path):
    path = save_fp32(SimpleNet(), tmp_path / "mlp.pt")
    assert "model" not in load_checkpoint(path)  # absent means SimpleNet
    assert isinstance(load_fp32(path)[0], SimpleNet)


def test_evaluate_cnn_json(cnn_checkpoint, capsys):
    path, data_dir = cnn_checkpoint
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(path), "--data-dir", str(data_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "fp32" and report["n_test"] == 1000
    assert 0.8 < report["accuracy"] <= 1.0


def test_quantize_then_evaluate_int8_cnn(cnn_checkpoint, int8_checkpoint, capsys):
    fp32_path, data_dir = cnn_checkpoint
    capsys.readouterr()
    main(["evaluate", "--checkpoint", str(fp32_path), "--data-dir", str(data_dir), "--json"])
    fp32_report = json.loads(capsys.readouterr().out)
    arguments = ["evaluate", "--checkpoint", str(int8_checkpoint), "--data-dir", str(data_dir)]
    assert main([*arguments, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "int8"
    assert abs(report["accuracy"] - fp32_report["accuracy"]) < 0.02
    assert fp32_report["size_bytes"] / report["size_bytes"] > 3


def test_int8_cnn_checkpoint_round_trip(int8_checkpoint, offline_data):
    model, meta = load_int8(int8_checkpoint)
    assert meta["model"] == "cnn"
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "Int8Conv2d",
        "Int8MaxPool2d",
        "Int8Conv2d",
        "Int8MaxPool2d",
        "Flatten",
        "Int8Linear",
    ]
    again, kind, _ = load_model(int8_checkpoint)
    images = offline_data.test.images[:64]
    assert kind == "int8"
    assert torch.equal(again.quantized_logits(images), model.quantized_logits(images))
    conv = model.layers[0]
    assert isinstance(conv, Int8Conv2d) and conv.padding == (1, 1) and conv.stride == (1, 1)
    assert isinstance(model.layers[1], Int8MaxPool2d) and model.layers[1].kernel_size == (2, 2)


def test_evaluate_json_on_an_int8_cnn_lists_the_conv_layers(int8_checkpoint, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(int8_checkpoint), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["weight_bits"] == {"conv1": 8, "conv2": 8, "fc": 8}
    assert report["activation_bits"] == 8
    assert load_int8(int8_checkpoint)[1]["weight_bits"] == report["weight_bits"]


@pytest.mark.parametrize(
    "options",
    [
        ["--weight-bits", "4"],
        ["--activation-bits", "6"],
        ["--rounding", "gptq"],
        ["--bias-correction"],
        ["--weight-clipping", "mse"],
        ["--layer-bits", "fc=4"],
    ],
)
def test_low_bit_options_on_a_cnn_fail_before_any_work(
    cnn_checkpoint, tmp_path, capsys, monkeypatch, options
):
    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded before the settings were checked")

    monkeypatch.setattr("ptqlib.app.quantize.load_mnist", forbidden)
    path, data_dir = cnn_checkpoint
    out = tmp_path / "low-bit-cnn.pt"
    arguments = ["quantize", "--checkpoint", str(path), "--out", str(out), *options]
    assert main([*arguments, "--model", "cnn", "--data-dir", str(data_dir)]) == EXIT_ERROR
    error = one_line_error(capsys)
    assert "holds a cnn: the low-bit options" in error and "simplenet only" in error
    assert not out.exists()


def test_diagnose_on_an_int8_cnn_is_one_line(int8_checkpoint, capsys):
    capsys.readouterr()
    assert main(["layer-errors", "--checkpoint", str(int8_checkpoint)]) == EXIT_ERROR
    assert "the per-layer diagnosis is implemented for simplenet only" in one_line_error(capsys)


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_export_of_a_cnn_is_one_line(cnn_checkpoint, int8_checkpoint, tmp_path, capsys, which):
    checkpoint = cnn_checkpoint[0] if which == "fp32" else int8_checkpoint
    out = tmp_path / "cnn.onnx"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == EXIT_ERROR
    assert "cannot export a" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("runtime", ["onnxruntime", "pt2e"])
def test_bench_runtimes_on_a_cnn_are_refused_before_any_work(capsys, monkeypatch, runtime):
    def forbidden(*args, **kwargs):
        raise AssertionError("models were built before the runtimes were checked")

    monkeypatch.setattr("ptqlib.app.pipeline.build_models", forbidden)
    assert main(["bench", "--model", "cnn", "--runtime", runtime]) == EXIT_ERROR
    error = one_line_error(capsys)
    assert f"--runtime {runtime}: implemented for --model simplenet only" in error


def test_cnn_checkpoint_quantized_as_simplenet_is_one_line(cnn_checkpoint, tmp_path, capsys):
    path, data_dir = cnn_checkpoint
    arguments = ["quantize", "--checkpoint", str(path), "--out", str(tmp_path / "x.pt")]
    assert main([*arguments, "--model", "simplenet", "--data-dir", str(data_dir)]) == EXIT_ERROR
    error = one_line_error(capsys)
    assert "holds a SmallCNN, not the SimpleNet" in error
    assert not (tmp_path / "x.pt").exists()


def test_cnn_weights_without_the_model_field_are_not_a_simplenet(tmp_path, capsys):
    path = tmp_path / "unlabelled.pt"
    save_checkpoint({"kind": "fp32", "state_dict": SmallCNN().state_dict(), "meta": {}}, path)
    assert main(["evaluate", "--checkpoint", str(path)]) == EXIT_ERROR
    assert "does not hold a SimpleNet" in one_line_error(capsys)


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint at all")
    assert main(["quantize", "--checkpoint", str(path), "--out", str(tmp_path / "y.pt")]) == 2
    assert "not a readable ptqlib checkpoint" in one_line_error(capsys)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda layer: layer.update(weight=layer["weight"][0]), "4-d int8"),
        (lambda layer: layer.update(stride=[1]), "stride must be a pair"),
        (lambda layer: layer.update(bias=layer["bias"][:3]), "bias must be an int32"),
    ],
)
def test_broken_int8_conv_entry_is_one_line(int8_checkpoint, tmp_path, capsys, change, message):
    payload = torch.load(int8_checkpoint, weights_only=True)
    change(payload["layers"][0])
    path = tmp_path / "broken.pt"
    save_checkpoint(payload, path)
    assert main(["evaluate", "--checkpoint", str(path)]) == EXIT_ERROR
    assert message in one_line_error(capsys)


def test_pipeline_on_the_cnn_gives_the_three_way_table(tmp_path):
    (tmp_path / "no-data").mkdir()
    results = run_pipeline(
        data_dir=tmp_path / "no-data",
        calib=200,
        observer="minmax",
        out_dir=tmp_path / "out",
        threads=1,
        batch_sizes=(1, 4),
        progress=False,
        model="cnn",
    )
    assert results["setup"]["model"] == "cnn"
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert markdown.startswith("Model: cnn")
    for name in MODEL_NAMES:
        assert 0.9 < results[name]["accuracy"] <= 1.0, name
        assert f"| {name} |" in markdown
    assert results["fp32"]["size_bytes"] / results["int8_ptqlib"]["size_bytes"] > 3.5
    assert results["int8_ptqlib"]["agreement_with_fp32"] > 0.98
