import json

import pytest

from ptqlib.pipeline import MODEL_NAMES, run_pipeline
from tests.test_cli import run_cli


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


def test_cli_pipeline_rejects_a_bad_observer(tmp_path):
    result = run_cli("pipeline", "--observer", "nonsense", "--out", str(tmp_path))
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert not (tmp_path / "results.json").exists()


def test_cli_help_lists_the_options():
    text = run_cli("pipeline", "--help").stdout
    assert all(flag in text for flag in ("--data-dir", "--calib", "--observer", "--out"))
    assert "--batch-sizes" in run_cli("bench", "--help").stdout
