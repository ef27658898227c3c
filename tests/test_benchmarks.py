"""Every benchmark script runs, in its smoke mode (tiny repeats and data), and prints its
table: the README's tables come from code that is tested. Its numbers are not checked."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Every script, each with a smoke test below.
SCRIPTS = ("bench_c", "bench_calibration", "bench_low_bit", "digest_overhead", "profile_int8")


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
    assert scripts == set(SCRIPTS)


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


@pytest.mark.slow
def test_bench_c_prints_its_table(no_mnist, capsys):
    if shutil.which("cc") is None and os.environ.get("CI", "").lower() != "true":
        pytest.skip("no C compiler (CI installs gcc, and there this test runs)")
    benchmark("bench_c").main(["--smoke"])
    out = capsys.readouterr().out
    assert "C int8 portable: integers equal to ptqlib's on the whole test split: True" in out
    assert "False" not in out
    assert "| int8 portable |" in out and "batch   64: INT8/FP32 portable" in out
    assert "| C int8 portable |" in out and "torch wrapper |" in out
    assert (
        "SimpleNet: 109,184 multiply-accumulates per image (the AVX2 kernels compute 109,568" in out
    )


def test_digest_overhead_prints_its_table(capsys):
    benchmark("digest_overhead").main(["--smoke"])
    out = capsys.readouterr().out
    assert "| file | bytes | whole load (ms) | digest check (ms) |" in out
    for kind in ("FP32 checkpoint", "INT8 checkpoint", "W3 packed checkpoint", "INT8 ONNX"):
        assert any(line.startswith(f"| {kind} |") for line in out.splitlines()), kind


def test_smoke_mode_is_documented(capsys):
    for name in SCRIPTS:
        with pytest.raises(SystemExit):
            benchmark(name).main(["--help"])
        assert "--smoke" in capsys.readouterr().out, name
