"""Every benchmark script runs, in its smoke mode (tiny repeats and data), and prints its
table: the README's tables come from code that is tested. Its numbers are not checked."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_mnist(tmp_path, monkeypatch):
    """An empty data directory: the scripts read the offline sample."""
    monkeypatch.setenv("PTQLIB_DATA_DIR", str(tmp_path))


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")}
    assert scripts == {"bench_calibration", "bench_low_bit", "profile_int8"}


@pytest.mark.slow
def test_bench_calibration_prints_its_table(no_mnist, capsys):
    benchmark("bench_calibration").main(["--smoke"])
    out = capsys.readouterr().out
    assert "ptqlib range" in out and "torch.ao range" in out
    assert "data: 100 calibration images from the offline sample" in out
    assert "repeats: 1 per side" in out and "ratio torch.ao / ptqlib:" in out


@pytest.mark.slow
def test_bench_low_bit_prints_its_table(no_mnist, capsys):
    benchmark("bench_low_bit").main(["--smoke", "--markdown", "--threads", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| W2A8 |")]
    methods = [row.split("|")[2].strip() for row in rows]
    assert methods == list(benchmark("bench_low_bit").METHODS)
    assert "| bits | method | accuracy |" in out


@pytest.mark.slow
def test_profile_int8_prints_its_tables(no_mnist, capsys):
    benchmark("profile_int8").main(["--smoke", "--threads", "1"])
    out = capsys.readouterr().out
    for heading in (
        "== GEMM at SimpleNet's shapes",
        "== whole models, one forward pass",
        "== where an INT8 forward pass spends its time",
        "== torch.profiler: int8_ptqlib forward at batch 1024",
        "== issue 11's targets",
    ):
        assert heading in out, heading
    assert "data: 100 calibration images from the offline sample" in out


def test_smoke_mode_is_documented(capsys):
    for name in ("bench_calibration", "bench_low_bit", "profile_int8"):
        with pytest.raises(SystemExit):
            benchmark(name).main(["--help"])
        assert "--smoke" in capsys.readouterr().out, name
