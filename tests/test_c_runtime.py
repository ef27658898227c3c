"""Calling the C from Python: the light call (the CPython extension, ctypes without it, the
bound call), the peak measurements, the instruction counts and the latency tables (only that
they run and hold every row: speed is measured in benchmarks/bench_c.py, not asserted)."""

import gc
import os
import shutil

import pytest
import torch

from ptqlib.deploy.c_call import extension_call
from ptqlib.deploy.c_latency import (
    REFERENCE,
    c_builds,
    c_latency_table,
    contenders,
    kernel_table,
    latency_markdown,
)
from ptqlib.deploy.c_peaks import (
    INSTRUCTIONS,
    instruction_counts,
    measure_peaks,
    peaks_library,
)
from ptqlib.deploy.c_runtime import CModel, load_c_model, native_targets
from ptqlib.errors import InputError
from ptqlib.evaluation import time_interleaved

pytestmark = pytest.mark.skipif(
    not any(shutil.which(name) for name in ("cc", "gcc", "clang"))
    and os.environ.get("CI", "").lower() != "true",
    reason="no C compiler (install gcc); CI=true makes this fail",
)


@pytest.mark.parametrize("use_extension", [True, False])
def test_bound_call_and_run_give_the_same_logits(simplenet_c, use_extension):
    """Through the extension or through ctypes, bound or checked: the same integers; the
    bound call holds its tensors (their memory survives the caller's references)."""
    if use_extension and extension_call() is None:
        pytest.skip("no Python.h here: the extension cannot be built")
    c_model = CModel(simplenet_c["int8_dir"], "portable", use_extension=use_extension)
    assert (c_model._call is not None) is use_extension
    pixels = torch.randint(0, 256, (3, 784), dtype=torch.uint8)
    expected = simplenet_c["int8"].quantized_logits(pixels)
    assert torch.equal(c_model.run(pixels), expected)
    inputs, out = pixels.clone(), torch.zeros(3, 10, dtype=torch.uint8)
    call = c_model.bind(inputs, out)
    del inputs
    gc.collect()
    call()
    assert torch.equal(out, expected)
    with pytest.raises(InputError, match="expected a contiguous tensor"):
        c_model.bind(pixels.t().contiguous().t())


def test_the_extension_refuses_null_pointers():
    call = extension_call()
    if call is None:
        pytest.skip("no Python.h here")
    with pytest.raises(ValueError, match="null pointer"):
        call(0, 0, 0, 1)
    with pytest.raises(TypeError, match="call"):
        call(1, 2)


def test_peaks_and_instruction_counts(simplenet_c):
    """Where the compiler targets AVX2 + FMA: a positive rate for every instruction; the
    counts of a build find the instructions of its kernel."""
    peaks = measure_peaks(iterations=100_000, repeats=1)
    if native_targets()["avx2"]:
        assert set(peaks) == set(INSTRUCTIONS)
        assert all(peak.macs_per_second > 1e8 for peak in peaks.values())
        counts = instruction_counts(load_c_model(simplenet_c["fp32_dir"], "avx2").library_path)
        assert counts["vfmadd231ps"] > 0 and counts["vmulps"] == 0
        # every peak starts from zeroed registers and ends with clean upper halves
        peaks_counts = instruction_counts(peaks_library()._name)
        assert peaks_counts["vpxor"] >= 14 * len(INSTRUCTIONS)
        assert peaks_counts["vzeroupper"] >= len(INSTRUCTIONS)
    else:
        assert peaks == {}


def test_latency_tables_time_every_row(simplenet_c, tmp_path):
    builds = c_builds(simplenet_c["fp32"], simplenet_c["int8"], tmp_path)
    assert set(builds) >= {"fp32 portable", "int8 portable"}
    rows = contenders(simplenet_c["fp32"], None, builds)
    table = c_latency_table(rows, (1, 3), 3, 0.0001)
    assert list(table) == [1, 3] and set(table[3]) == set(rows) and REFERENCE in rows
    assert all(latency.median_ms > 0 for row in table.values() for latency in row.values())
    assert latency_markdown(table).count("\n") == len(rows) + 1
    kernels = kernel_table(builds, (1, 2), 3, 0.0001)
    assert set(kernels[2]) == set(builds) and all(v > 0 for v in kernels[1].values())


def test_thread_clock_needs_one_thread():
    with pytest.raises(InputError, match="'thread' with threads=1"):
        time_interleaved({"f": lambda: None}, threads=2, clock="thread")
    samples = time_interleaved({"f": lambda: sum(range(100))}, 1, 3, 0.0001, clock="thread")
    assert len(samples["f"]) == 3
