"""The model on a Cortex-M in QEMU (notebook 11): export --target and evaluate --target end to
end with every logit compared, the DSP kernel's packing and ragged sizes, CMSIS-NN's two
roundings (by hand and in the firmware), the linker's figures from a real map file and its
FP32 overflow, the instruction counts' calibration, and the one-line errors. Without
arm-none-eabi-gcc and qemu-system-arm these tests skip locally and fail in CI (CI=true)."""

import dataclasses
import json
import os
import shutil
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT, run_main
from ptqlib.app.cli import main
from ptqlib.calibration import calibrate
from ptqlib.data import MNISTSplit, calibration_images
from ptqlib.deploy.mcu import emulator, startup, tools
from ptqlib.deploy.mcu.cmsis_arithmetic import (
    arm_nn_requantize,
    cmsis_nn_model,
    rounding_differences,
    with_double_rounding,
)
from ptqlib.deploy.mcu.dsp_kernel import input_pairs, pack_weights_for_smlad
from ptqlib.deploy.mcu.emulator import LinkError, build_firmware, run_firmware
from ptqlib.deploy.mcu.firmware import export_firmware, verify_firmware
from ptqlib.deploy.mcu.memory import (
    map_entries,
    memory_use,
    overflow_bytes,
    section_contents,
    section_sizes,
)
from ptqlib.deploy.mcu.parity import check_firmware
from ptqlib.deploy.mcu.targets import PARTS, TARGETS, part_named
from ptqlib.deploy.mcu.work import disassemble, hot_loop, loop_estimate
from ptqlib.errors import InputError
from ptqlib.evaluation import accuracy
from ptqlib.int8_checkpoint import load_int8
from ptqlib.int8_layers import rebuilt
from ptqlib.int8_model import Int8Model, convert
from ptqlib.integer_arithmetic import requantize
from ptqlib.ptq import post_training_quantize

HAS_TOOLS = not tools.missing_tools()
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = pytest.mark.skipif(
    not HAS_TOOLS and not IN_CI,
    reason="no arm-none-eabi-gcc or qemu-system-arm (make mcu-tools); CI=true makes this fail",
)
M4 = TARGETS["cortex-m4"]


@pytest.fixture(scope="module")
def firmware(tmp_path_factory, quantized_checkpoints):
    """The INT8 checkpoint of ``python -m ptqlib quantize`` (normalised input: the C's pixel
    table) exported by ``export --format c --target cortex-m4`` (in-process; evaluate runs
    as a user runs it)."""
    directory = tmp_path_factory.mktemp("mcu") / "simplenet_m4"
    status = main([
        "export", "--checkpoint", str(quantized_checkpoints["int8"]), "--format", "c",
        "--target", "cortex-m4", "--out", str(directory),
    ])  # fmt: skip
    assert status == 0 and (directory / "stm32l412kb.ld").is_file()
    return directory


def test_export_and_evaluate_give_every_logit_of_ptqlib(firmware, quantized_checkpoints):
    """``evaluate --target``: both kernels reproduce every logit integer of the whole test
    split and of the stress images, and so ptqlib's accuracy."""
    result = run_main(
        "evaluate", "--checkpoint", str(firmware), "--target", "cortex-m4", "--json",
        "--data-dir", str(quantized_checkpoints["data"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    int8_model, _ = load_int8(quantized_checkpoints["int8"])
    assert report["part"] == "stm32l412kb" and set(report["kernels"]) == {"plain", "dsp"}
    for row in report["kernels"].values():
        assert row["fits"] and row["identical"] == row["total"] == (1000 + 66) * 10
        assert row["first_difference"] is None
        assert row["stack_bytes_used"] > 0 and row["flash_bytes"] < PARTS["stm32l412kb"].flash_bytes
    reference = accuracy(int8_model, load_offline_test(quantized_checkpoints))
    assert report["kernels"]["dsp"]["accuracy"] == pytest.approx(reference, abs=1e-6)
    plain, dsp = (report["kernels"][k]["instructions_per_inference"] for k in ("plain", "dsp"))
    assert dsp < plain / 2  # two MACs per SMLAD, against one per SMLABB


def load_offline_test(quantized_checkpoints) -> MNISTSplit:
    from ptqlib.data import load_mnist

    return load_mnist(quantized_checkpoints["data"], splits=("test",), verbose=False).test


def test_smlad_packing_computes_the_matrix_product():
    """The packed words and the input pairs, read as the DSP loop reads them (SXTB16 of bytes
    0/2 and 1/3, SMLAD of the halves), give W x for ragged sizes."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-128, 128, (7, 13), dtype=torch.int8, generator=generator)
    x = torch.randint(0, 256, (13,), dtype=torch.uint8, generator=generator)
    packed = pack_weights_for_smlad(weight)
    assert packed.shape == (2, 4, 4, 4)
    assert packed[1, 3, 2, 0] == weight[6, 12] and int(packed[1, 3, 3].abs().sum()) == 0
    pairs = input_pairs(x)
    assert pairs[0].tolist() == [int(x[0]) | int(x[2]) << 16, int(x[1]) | int(x[3]) << 16]
    sums = torch.zeros(8, dtype=torch.int64)
    for block in range(2):
        for group in range(4):
            low = pairs[group, 0] & 0xFFFF, pairs[group, 0] >> 16  # (x0, x2)
            high = pairs[group, 1] & 0xFFFF, pairs[group, 1] >> 16  # (x1, x3)
            for row in range(4):
                w = packed[block, group, row].to(torch.int64)  # bytes 0..3 of the word
                sums[4 * block + row] += w[0] * low[0] + w[2] * low[1]  # SXTB16, SMLAD
                sums[4 * block + row] += w[1] * high[0] + w[3] * high[1]  # ... ROR #8
    assert torch.equal(sums[:7], weight.to(torch.int64) @ x.to(torch.int64))


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_dsp_kernel_is_bit_exact_on_ragged_layers(tmp_path, offline_data, target):
    """784 -> 7 -> 5: rows and inputs that are not multiples of 4 (zero padding), every
    logit of 40 digits and 66 stress images identical in QEMU, on a Cortex-M4 and an M7."""
    torch.manual_seed(0)
    layers = {"flatten": nn.Flatten(), "fc1": nn.Linear(784, 7), "relu1": nn.ReLU()}
    model = nn.Sequential(OrderedDict({**layers, "fc2": nn.Linear(7, 5)}))
    images = calibration_images(offline_data.train, 200)
    int8_model = convert(model, calibrate(model, images, progress=False).qparams)
    core = TARGETS[target]
    export_firmware(
        int8_model, tmp_path / "ragged", core, part_named(None, core), model_name="tiny"
    )
    test = MNISTSplit(offline_data.test.images[:40], offline_data.test.labels[:40])
    for kernel, check in check_firmware(tmp_path / "ragged", test).items():
        assert check.test.all_identical and check.stress.all_identical, kernel


def tiny_int8_model(offline_data, hidden: int = 7):
    """A calibrated 784 -> hidden -> 5 Int8Model (a ragged width: zero padding in the DSP)."""
    torch.manual_seed(0)
    layers = {"flatten": nn.Flatten(), "fc1": nn.Linear(784, hidden), "relu1": nn.ReLU()}
    model = nn.Sequential(OrderedDict({**layers, "fc2": nn.Linear(hidden, 5)}))
    images = calibration_images(offline_data.train, 200)
    return convert(model, calibrate(model, images, progress=False).qparams)


def test_firmware_of_other_weights_has_another_digest(tmp_path):
    """The firmware's digest (the build cache's key) covers the model's C: two FP32 exports
    that differ only in a weight never share a cached ELF."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))
    first = export_firmware(model, tmp_path / "a", M4, part_named(None, M4))
    with torch.no_grad():
        model[1].weight[0, 0] += 1.0
    second = export_firmware(model, tmp_path / "b", M4, part_named(None, M4))
    assert first["digest"] != second["digest"]


def test_a_stack_overflow_faults_and_says_so(tmp_path, offline_data, monkeypatch):
    """With a stack too small for the firmware, the first push below RAM hits the MPU guard:
    QEMU exits at once with the fault handler's message (without the guard QEMU's board reads
    zeros below RAM and the firmware hangs)."""
    monkeypatch.setattr(startup, "stack_bytes_for", lambda arena_bytes: 256)
    monkeypatch.setattr(emulator, "RUN_TIMEOUT_SECONDS", 30)  # a hang fails in 30 s
    export_firmware(tiny_int8_model(offline_data), tmp_path / "fw", M4, part_named(None, M4))
    for kernel in ("plain", "dsp"):
        with pytest.raises(InputError, match="status 3 in QEMU: fault: stack overflow"):
            run_firmware(build_firmware(tmp_path / "fw", kernel), torch.zeros(2, 784).byte())


def test_a_refused_export_writes_nothing(tmp_path, offline_data):
    """A model the double rounding cannot take (a multiplier above 1: n < 31) is refused
    before any file is written, not after the model's C files."""
    model = tiny_int8_model(offline_data)
    fc2 = model.layers[-1]
    louder = dataclasses.replace(fc2.output_qparams, scale=fc2.output_scale * 2**-12)
    louder_fc2 = rebuilt(fc2, output_qparams=louder)
    model = Int8Model(model.input_qparams, [*model.layers[:-1], louder_fc2])
    with pytest.raises(InputError, match="shifts n = 2"):
        export_firmware(model, tmp_path / "fw", M4, part_named(None, M4), rounding="double")
    assert not (tmp_path / "fw").exists()


def test_a_hanging_emulator_is_stopped_in_one_line(firmware, monkeypatch):
    """QEMU that never returns is killed after RUN_TIMEOUT_SECONDS: an InputError, not a
    subprocess traceback."""
    build = build_firmware(firmware, "plain")
    monkeypatch.setattr(emulator, "qemu_command", lambda target, elf: ["sleep", "30"])
    monkeypatch.setattr(emulator, "RUN_TIMEOUT_SECONDS", 1)
    with pytest.raises(InputError, match="did not finish 3 images in 1 s"):
        run_firmware(build, torch.zeros(3, 784).byte())


def test_a_small_cnn_in_firmware_is_bit_exact(tmp_path, offline_data):
    """Convolution (zero-point padding, stride 2), depthwise, max-pool, global average pool:
    every logit of 20 digits and 10 stress images in QEMU; a CNN gets the portable C only,
    its activation arena on a stack sized for it."""
    torch.manual_seed(0)
    channels = 4
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, channels, 3, stride=2, padding=1, bias=False),
        bn1=nn.BatchNorm2d(channels), relu1=nn.ReLU(),
        dw1=nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        bn2=nn.BatchNorm2d(channels), relu2=nn.ReLU(), pool1=nn.MaxPool2d(2),
        pw1=nn.Conv2d(channels, 8, 1, bias=False), bn3=nn.BatchNorm2d(8), relu3=nn.ReLU(),
        pool2=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(8, 10),
    ))  # fmt: skip
    images = calibration_images(offline_data.train, 100)
    int8_model = post_training_quantize(model.eval(), images, progress=False).int8_model
    manifest = export_firmware(
        int8_model, tmp_path / "cnn", M4, part_named(None, M4), model_name="cnn"
    )
    assert list(manifest["kernels"]) == ["plain"] and not manifest["linear_only"]
    test = MNISTSplit(offline_data.test.images[:20], offline_data.test.labels[:20])
    check = check_firmware(tmp_path / "cnn", test, noise=8)["plain"]
    assert check.test.all_identical and check.stress.all_identical
    assert 14 * 14 * channels < check.stack_bytes_used < check.memory.stack


def test_cmsis_double_rounding_by_hand():
    """M0 = 2^30, n = 33 (M = 1/8, CMSIS-NN shift -2): 19/8 = 2.375 rounds to 2 once, but to
    2.5 (doubling high multiply: 10) and then away from zero to 3 twice; -20/8 = -2.5 rounds
    up to -2 once, away from zero to -3 twice; 20/8 and -19/8 agree."""
    acc = torch.tensor([19, -20, 20, -19, 0, 7])
    single = arm_nn_requantize(acc, 2**30, -2, "single")
    double = arm_nn_requantize(acc, 2**30, -2, "double")
    assert single.tolist() == [2, -2, 3, -2, 0, 1]
    assert double.tolist() == [3, -3, 3, -2, 0, 1]
    generator = torch.Generator().manual_seed(0)
    random = torch.randint(-(2**24), 2**24, (2000,), generator=generator)
    ptqlib = requantize(random, 1518500250, 38, 0, -(2**31), 2**31 - 1)
    assert torch.equal(arm_nn_requantize(random, 1518500250, 31 - 38, "single"), ptqlib)
    with pytest.raises(InputError, match="rounding"):
        arm_nn_requantize(acc, 2**30, -2, "triple")


def test_cmsis_conventions_in_the_firmware(tmp_path, quantized_checkpoints, offline_data):
    """int8 activations, weights on -127..127 and CMSIS-NN's two roundings: the DSP firmware
    computes the double-rounding model's integers exactly, the plain one ptqlib's."""
    baseline = quantized_checkpoints["baseline"]
    calibration = calibrate(baseline, calibration_images(offline_data.train, 200), progress=False)
    single = cmsis_nn_model(baseline, calibration)
    assert all(layer.weight_range == (-127, 127) for layer in single.integer_layers())
    assert single.output_qparams.dtype == torch.int8
    export_firmware(single, tmp_path / "cmsis", M4, part_named(None, M4), rounding="double")
    assert verify_firmware(tmp_path / "cmsis")["rounding"] == "double"
    test = MNISTSplit(offline_data.test.images[:100], offline_data.test.labels[:100])
    check = check_firmware(tmp_path / "cmsis", test, ["dsp"])["dsp"]
    assert check.test.all_identical and check.stress.all_identical
    counts = rounding_differences(single, with_double_rounding(single), offline_data.test.images)
    assert counts["activations_total"] == 1000 * (128 + 64 + 10)
    assert 0 < counts["activations"] < counts["activations_total"] / 100


def test_linker_figures_from_a_real_map_file(firmware):
    """size -A and the map file agree: the constants are the weights, biases and tables;
    the DSP firmware's packed fc1 is 128 x 784 bytes, the pixel table 256;
    RAM = .data + .bss + .stack."""
    build = build_firmware(firmware, "dsp")
    sizes = section_sizes(build.elf)
    use = memory_use(sizes)
    map_text = build.map_file.read_text()
    rodata = section_contents(map_text, ".rodata")
    assert rodata["simplenet_int8_fc1_packed"] == 128 * 784
    assert rodata["simplenet_int8_input_table"] == 256
    assert sum(rodata.values()) <= sizes[".rodata"] < sum(rodata.values()) + 64  # + alignment
    assert section_contents(map_text, ".bss")["input_pairs"] == 784 // 2 * 4
    assert use.ram == sizes[".data"] + sizes[".bss"] + sizes[".stack"] and use.flash < 128 * 1024
    assert {entry.output_section for entry in map_entries(map_text)} >= {".text", ".rodata"}


def test_fp32_does_not_fit_the_small_part(tmp_path, quantized_checkpoints):
    """The FP32 SimpleNet overflows the 128 KB part; the linker says by how much."""
    baseline = quantized_checkpoints["baseline"]
    export_firmware(baseline, tmp_path / "fp32", M4, part_named(None, M4))
    with pytest.raises(LinkError, match="overflowed by") as caught:
        build_firmware(tmp_path / "fp32")
    weights = sum(p.numel() for p in baseline.parameters()) * 4
    assert weights - 128 * 1024 < overflow_bytes(caught.value.lines) < weights


def test_evaluate_fails_a_firmware_that_does_not_link(tmp_path, quantized_checkpoints, capsys):
    """evaluate --target on FP32 firmware for the 128 KB part: the linker's message in one
    line, and exit status 1 (nothing was checked), not 0. The command printed by export
    quotes a directory with a space."""
    out = tmp_path / "fp32 firmware"
    data = ["--data-dir", str(quantized_checkpoints["data"])]
    export = ["export", "--checkpoint", str(quantized_checkpoints["fp32"]), "--format", "c"]
    assert main([*export, "--target", "cortex-m4", "--out", str(out)]) == 0
    assert f"--checkpoint '{out}' --target" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(out), "--target", "cortex-m4", *data]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "overflowed by" in line][0].startswith("plain: does not")


def test_instruction_counts_are_calibrated_and_the_loops_are_what_the_docs_say(firmware):
    """The calibration loop of 1,000,000 instructions reads as a whole number of ticks; the
    DSP inner loop is 21 instructions for 16 MACs, the plain one 5 for 1."""
    digits = MNISTSplit(torch.zeros(5, 1, 28, 28), torch.zeros(5, dtype=torch.int64))
    check = check_firmware(firmware, digits, ["dsp"])["dsp"]
    assert check.instructions > 0
    dsp = loop_estimate(hot_loop(disassemble(check.build.elf)))
    assert (len(dsp.instructions), dsp.macs) == (21, 16)
    assert [i.mnemonic for i in dsp.instructions].count("sxtb16") == 8
    plain = loop_estimate(hot_loop(disassemble(build_firmware(firmware, "plain").elf)))
    assert plain.macs == 1 and len(plain.instructions) <= 6


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"rounding": "double"}, "manifest changed since export"),  # would blame the firmware
        ({"part": "nrf52840"}, "manifest changed since export"),
        ({"kernels": {}}, "manifest changed since export"),  # would check nothing, exit 0
        ({"part": None}, "field part missing or of the wrong type"),  # was a KeyError
        ({"files": 5}, "field files missing or of the wrong type"),  # was a TypeError
        ({"version": 1}, "written by another ptqlib"),
    ],
)
def test_an_edited_manifest_is_refused_in_one_line(firmware, tmp_path, edit, message):
    edited = tmp_path / "edited"
    shutil.copytree(firmware, edited)
    manifest = json.loads((edited / "firmware.json").read_text())
    manifest.update(edit)
    (edited / "firmware.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=message):
        verify_firmware(edited)


def test_missing_tools_and_changed_files_are_one_line(
    firmware, quantized_checkpoints, tmp_path, monkeypatch, capsys
):
    data = ["--data-dir", str(quantized_checkpoints["data"])]
    broken = tmp_path / "broken"
    shutil.copytree(firmware, broken)
    (broken / "startup.c").write_text((broken / "startup.c").read_text() + "\n")
    assert main(["evaluate", "--checkpoint", str(broken), "--target", "cortex-m4", *data]) == 2
    assert "changed since export" in capsys.readouterr().err
    empty = tmp_path / "no-tools-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(InputError, match="arm-none-eabi-gcc, arm-none-eabi-size, arm-none-"):
        tools.require_tools()
    assert main(["evaluate", "--checkpoint", str(firmware), "--target", "cortex-m4", *data]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "make mcu-tools" in error and "Traceback" not in error


def test_make_mcu_tools_says_how_without_apt(tmp_path):
    """With neither the tools nor apt-get on PATH, ``make mcu-tools`` says what to install."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    for tool in ("sh", "echo", "id", "test", "["):
        found = shutil.which(tool)
        if found:
            (bin_folder / tool).symlink_to(found)
    result = subprocess.run(
        [make, "-s", "-f", str(REPO_ROOT / "Makefile"), "mcu-tools"],
        cwd=tmp_path, env={"PATH": str(bin_folder)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "arm-none-eabi-gcc" in result.stderr
    assert "qemu-system-arm" in result.stderr and Path(make).exists()
