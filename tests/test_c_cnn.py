"""The CNNs of notebooks 07 and 09 as C: integer 3x3 convolution with zero-point padding,
depthwise convolution, max-pool, global average pool; bit-exact with ptqlib, clean under
the sanitizers, through the CLI (export, evaluate, bench), and the activation memory of the
liveness plan checked against what gcc reports for the generated code (-fstack-usage)."""

import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from conftest import run_guarded
from ptqlib.app.cli import main
from ptqlib.data import calibration_images, normalise
from ptqlib.deploy.c_budget import stack_usage
from ptqlib.deploy.c_export import export_c, verify_directory
from ptqlib.deploy.c_files import activation_plan
from ptqlib.deploy.c_graph import fp32_graph, int8_graph
from ptqlib.deploy.c_memory import Buffer, plan_arena
from ptqlib.deploy.c_runtime import find_compiler, load_c_model
from ptqlib.int8_checkpoint import save_int8
from ptqlib.models import DepthwiseCNN, SmallCNN
from ptqlib.ptq import post_training_quantize

pytestmark = pytest.mark.skipif(
    not any(shutil.which(name) for name in ("cc", "gcc", "clang"))
    and os.environ.get("CI", "").lower() != "true",
    reason="no C compiler (install gcc); CI=true makes this fail",
)


def untrained(model_class, seed: int):
    """A CNN with random weights and random BatchNorm statistics (so folding does work),
    one channel's running variance near 0 as in notebook 09."""
    torch.manual_seed(seed)
    model = model_class().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.running_var[0] = 1e-9
            module.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def cnns(offline_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn-c")
    images = calibration_images(offline_data.train, 100)
    found = {}
    for name, model_class in (("cnn", SmallCNN), ("dwcnn", DepthwiseCNN)):
        fp32 = untrained(model_class, len(name))
        int8 = post_training_quantize(fp32, images, observer="minmax", progress=False).int8_model
        found[name] = {
            "fp32": fp32,
            "int8": int8,
            "int8_dir": export_c(int8, folder / f"{name}_int8", name).directory,
            "fp32_dir": export_c(fp32, folder / f"{name}_fp32", name).directory,
        }
    return found


@pytest.mark.parametrize("name", ["cnn", "dwcnn"])
def test_cnn_in_c_is_bit_exact(cnns, offline_data, name):
    """The test split and stress images, at batches 1, 7 and 1000."""
    model, directory = cnns[name]["int8"], cnns[name]["int8_dir"]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=generator)
    extremes = torch.stack([torch.zeros(28, 28), torch.full((28, 28), 255)]).to(torch.uint8)
    pixels = torch.cat([offline_data.test.pixels().reshape(-1, 28, 28), noise, extremes])
    expected = model.quantized_logits(normalise(pixels))
    c_model = load_c_model(directory)
    flat = pixels.reshape(len(pixels), -1)
    for batch in (1, 7, 1000):
        got = torch.cat(
            [c_model.quantized_logits(flat[i : i + batch]) for i in range(0, len(flat), batch)]
        )
        assert torch.equal(got, expected), batch
    fp32_model = load_c_model(cnns[name]["fp32_dir"])
    images = normalise(pixels[:50])
    expected = cnns[name]["fp32"](images).detach()  # untrained: logits in the hundreds
    assert torch.allclose(fp32_model(images), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["cnn", "dwcnn"])
def test_cnn_clean_under_sanitizers_against_a_guard_page(cnns, tmp_path, name):
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (9, 784), dtype=torch.uint8, generator=generator)
    expected = cnns[name]["int8"].quantized_logits(normalise(pixels.reshape(-1, 28, 28)))
    for got in run_guarded(
        cnns[name]["int8_dir"], f"{name}_int8.c", "int8", pixels, (1, 4), tmp_path
    ):
        assert torch.equal(got, expected)


@pytest.mark.skipif(
    shutil.which("clang") is None and os.environ.get("CI", "").lower() != "true",
    reason="no clang (apt-get install clang libclang-rt-14-dev); CI=true makes this fail",
)
def test_convolution_under_clangs_pointer_overflow_check(cnns, tmp_path):
    """clang's UBSan checks pointer arithmetic (C99 6.5.6p8: a pointer may not leave its
    array, even unread); the convolution once formed one for every tap in the padding."""
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (2, 784), dtype=torch.uint8, generator=generator)
    expected = cnns["cnn"]["int8"].quantized_logits(normalise(pixels.reshape(-1, 28, 28)))
    for got in run_guarded(
        cnns["cnn"]["int8_dir"], "cnn_int8.c", "int8", pixels, (2,), tmp_path, compiler="clang"
    ):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["cnn", "dwcnn"])
@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_liveness_plan_is_the_ram_of_the_generated_code(cnns, tmp_path, name, kind):
    """At TILE=1 (a microcontroller's build), gcc's -fstack-usage of the forward function is
    the planned arena plus a few hundred bytes (the loop counters and saved registers of the
    layer loops gcc inlines into it), every layer function left keeps a few scalars on the
    stack, and no activation lives in static memory (.data and .bss empty)."""
    directory = cnns[name][f"{kind}_dir"]
    prefix = verify_directory(directory)["prefix"]
    model = cnns[name][kind]
    layers = int8_graph(model) if kind == "int8" else fp32_graph(model)
    _, plan = activation_plan(layers, kind, lookup=kind == "int8")
    frames = stack_usage(directory / f"{prefix}.c", ("-O2", f"-D{prefix.upper()}_TILE=1"))
    forward = frames.pop(f"{prefix}_forward")
    assert plan.size <= forward <= plan.size + 512, (forward, plan.size)
    assert all(size <= 128 for size in frames.values()), frames
    objects = tmp_path / f"{prefix}.o"
    subprocess.run(
        [find_compiler(), "-std=c99", "-O2", "-c", "-I", str(directory), "-o", str(objects),
         str(directory / f"{prefix}.c")], check=True, timeout=300,
    )  # fmt: skip
    sizes = subprocess.run(["size", "-A", str(objects)], capture_output=True, text=True).stdout
    static = {
        section: int(size)
        for section, size, _ in re.findall(r"^(\.\w+)\s+(\d+)\s+(\d+)", sizes, re.M)
    }
    assert static.get(".data", 0) == 0 and static.get(".bss", 0) == 0


def test_plan_shares_memory_only_between_buffers_never_alive_together():
    """A chain reuses memory; a skip connection keeps its buffer alive and costs its size."""
    chain = [Buffer("a", 100, 0, 1), Buffer("b", 50, 1, 2), Buffer("c", 100, 2, 3)]
    assert plan_arena(chain).size == 150
    skip = [*chain, Buffer("skip", 80, 0, 3)]
    plan = plan_arena(skip)
    assert plan.size == 230
    for first in skip:
        for second in skip:
            if first is not second and first.overlaps_in_time(second):
                start, end = plan.offsets[first.name], plan.offsets[first.name] + first.size
                other = plan.offsets[second.name]
                assert end <= other or other + second.size <= start


def test_cnn_through_the_cli(cnns, offline_data, tmp_path, capsys, monkeypatch):
    """export --format c and evaluate DIR accept a CNN (same accuracy as its checkpoint);
    bench --runtime c adds the C rows for --model dwcnn."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    checkpoint = save_int8(cnns["dwcnn"]["int8"], tmp_path / "dwcnn.pt", {"model": "dwcnn"})
    out = tmp_path / "dwcnn_c"
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--format", "c", "--out", str(out)]) == 0
    )
    reports = []
    for source in (checkpoint, out):
        capsys.readouterr()
        assert (
            main(["evaluate", "--checkpoint", str(source), "--data-dir", str(empty), "--json"]) == 0
        )
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["accuracy"] == reports[1]["accuracy"] and reports[1]["runtime"] == "c"

    def small_models(data, calib, observer, progress=True, model="simplenet"):
        fp32, int8 = cnns[model]["fp32"], cnns[model]["int8"]
        settings = {"model": model, "ptqlib_accumulator": "test"}
        return {"fp32": fp32, "int8_ptqlib_teaching": int8}, {}, settings

    monkeypatch.setattr("ptqlib.app.pipeline.build_models", small_models)
    arguments = ["bench", "--model", "dwcnn", "--runtime", "c", "--batch-sizes", "1"]
    assert main([*arguments, "--threads", "1", "--data-dir", str(empty)]) == 0
    rows = [
        line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if "|" in line
    ]
    assert "c_int8_portable" in rows and "c_fp32_portable" in rows
