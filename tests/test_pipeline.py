import json

import pytest
import torch

from ptqlib.app.cli import EXIT_ERROR, main
from ptqlib.app.pipeline import MODEL_NAMES, build_models, run_pipeline
from ptqlib.evaluation import predict
from ptqlib.hardware import int8_gemm_is_fast


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    (folder / "no-data").mkdir()
    results = run_pipeline(
        data_dir=folder / "no-data",
        calib=200,
        observer="minmax",
        out_dir=folder / "out",
        threads=1,
        batch_sizes=(1, 4),
        progress=False,
    )
    return results, folder / "out"


def test_writes_both_files_with_every_model(pipeline_run):
    results, out = pipeline_run
    assert json.loads((out / "results.json").read_text()) == results
    markdown = (out / "results.md").read_text()
    for name in MODEL_NAMES:
        row = results[name]
        assert 0.8 < row["accuracy"] <= 1.0, name
        assert set(row["latency"]) == {"1", "4"}
        assert row["latency"]["4"]["median_ms"] > 0
        assert f"| {name} |" in markdown
    assert "offline sample" in markdown and results["setup"]["machine"]["threads"] == 1


def test_int8_models_are_smaller_and_agree_with_fp32(pipeline_run):
    results, _ = pipeline_run
    fp32 = results["fp32"]["size_bytes"]
    assert fp32 / results["int8_ptqlib"]["size_bytes"] > 3.85
    assert fp32 / results["int8_torch"]["size_bytes"] > 3.5
    assert results["int8_ptqlib"]["agreement_with_fp32"] > 0.97
    assert results["int8_torch"]["agreement_with_fp32"] > 0.97
    assert results["setup"]["torch_observer"] == "minmax"


@pytest.mark.parametrize("model", ["simplenet", "cnn"])
def test_the_fast_path_gives_the_teaching_paths_predictions(offline_data, model):
    models, _, settings = build_models(offline_data, 200, "minmax", progress=False, model=model)
    fast, teaching = models["int8_ptqlib"], models["int8_ptqlib_teaching"]
    images = offline_data.test
    assert torch.equal(predict(fast, images), predict(teaching, images))  # digit by digit
    assert settings["ptqlib_accumulator"] == fast.accumulator
    expected_gemm = "int8 GEMM (_int_mm)" if int8_gemm_is_fast() else "GEMM (exact)"
    assert expected_gemm in settings["ptqlib_accumulator"]


def test_cli_pipeline_rejects_a_bad_observer(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "--observer", "nonsense", "--out", str(tmp_path)])
    assert exit_.value.code == EXIT_ERROR and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_cli_bench_json(tmp_path, capsys):
    (tmp_path / "no-data").mkdir()
    args = ["bench", "--data-dir", str(tmp_path / "no-data"), "--calib", "100", "--threads", "1"]
    assert main([*args, "--observer", "minmax", "--batch-sizes", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["latency"]) == set(MODEL_NAMES)
    assert report["machine"]["cpu_capability"] and report["settings"]["ptqlib_accumulator"]
