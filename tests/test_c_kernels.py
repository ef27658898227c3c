"""Every build of the exported C computes ptqlib's integers: the portable loops and the AVX2
kernels, on SimpleNet and on adversarial models (extreme multipliers, shifts 1 and 62,
zero-points at both ends, int8 activations, an all-zero weight row, widths that are not
multiples of the panel), on the test split and stress inputs, at batch sizes 1..1000 with
odd ones; clean under ASan and UBSan with the input and output against a guard page."""

import os
import shutil
import subprocess

import pytest
import torch

from conftest import run_guarded
from ptqlib.data import normalise
from ptqlib.deploy.c_export import BUILD_FLAGS, export_c
from ptqlib.deploy.c_graph import input_lookup_table, int8_graph
from ptqlib.deploy.c_runtime import find_compiler, load_c_model, native_targets
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import PIXEL_QPARAMS, Int8Model
from ptqlib.quantization import QParams

pytestmark = pytest.mark.skipif(
    not any(shutil.which(name) for name in ("cc", "gcc", "clang"))
    and os.environ.get("CI", "").lower() != "true",
    reason="no C compiler (install gcc); CI=true makes this fail",
)
BATCHES = (1, 2, 5, 6, 7, 23, 24, 25, 63, 1000)


def builds() -> list[str]:
    """The builds this machine can run: the portable loops, and AVX2 where the CPU has it."""
    return ["portable", "avx2"] if native_targets()["avx2"] else ["portable"]


def activation(scale, zero_point, dtype=torch.uint8) -> QParams:
    low, high = (0, 255) if dtype == torch.uint8 else (-128, 127)
    return QParams(torch.tensor(scale), torch.tensor(zero_point), low, high, dtype)


def linear(generator, sizes, qparams, relu, name) -> Int8Linear:
    """An Int8Linear with random int8 weights (rows of -128, of 127 and of 0 included) and
    its fixed-point multipliers overwritten with extremes: shifts 1..62, M0 at both ends."""
    out, inputs = sizes
    weight = torch.randint(-128, 128, (out, inputs), generator=generator, dtype=torch.int8)
    weight[0], weight[1], weight[2] = 0, -128, 127
    bias = torch.randint(-(2**20), 2**20, (out,), generator=generator, dtype=torch.int32)
    scales = torch.rand(out, generator=generator, dtype=torch.float64) * 0.01 + 1e-4
    weights = QParams(scales.float(), torch.zeros(out, dtype=torch.int64), -128, 127, torch.int8, 0)
    layer = Int8Linear(
        weight=weight,
        bias=bias,
        weight_qparams=weights,
        input_qparams=qparams[0],
        output_qparams=qparams[1],
        relu=relu,
        name=name,
    )
    shifts = torch.tensor([1, 2, 20, 31, 40, 55, 61, 62])[torch.arange(out) % 8]
    multipliers = torch.tensor([2**30, 2**31 - 1, 1518500250])[torch.arange(out) % 3]
    layer.shift.copy_(shifts)
    layer.multiplier.copy_(multipliers)
    return layer


def adversarial_model(seed: int, pixel_input: bool) -> Int8Model:
    """784 -> 37 (ReLU, zero-point 0) -> 5 (int8, zero-point 127) -> 10 (uint8, Z = 255);
    the input raw pixels, or normalised images quantized with Z = 255 (a lookup table)."""
    generator = torch.Generator().manual_seed(seed)
    first = PIXEL_QPARAMS if pixel_input else activation(0.0127, 255)
    hidden1, hidden2 = activation(0.9, 0), activation(0.37, 127, torch.int8)
    last = activation(1.3, 255)
    layers = [
        torch.nn.Flatten(),
        linear(generator, (37, 784), (first, hidden1), True, "fc.1"),
        linear(generator, (5, 37), (hidden1, hidden2), False, "fc-2"),
        linear(generator, (10, 5), (hidden2, last), False, "3"),
    ]
    return Int8Model(first, layers).eval()


def int64_reference(model: Int8Model, pixels: torch.Tensor) -> torch.Tensor:
    """What the C computes, in int64 from the exported layers: u through the table, then per
    layer acc = b + u W^T, q = clamp(((acc M0 + 2^(n-1)) >> n) + Z_y, lo, hi)."""
    table = input_lookup_table(model)
    u = pixels.to(torch.int64) if table is None else table[pixels.long()].to(torch.int64)
    for layer in int8_graph(model):
        acc = layer.bias.to(torch.int64) + u @ layer.weight.to(torch.int64).t()
        shift = layer.shift.to(torch.int64)
        scaled = acc * layer.multiplier.to(torch.int64)
        rounded = (scaled + torch.bitwise_left_shift(torch.ones_like(shift), shift - 1)) >> shift
        u = (rounded + layer.output_zero_point).clamp(layer.lowest, layer.highest)
    return u.to(torch.uint8)


def stress_pixels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (60, 784), dtype=torch.uint8, generator=generator)
    return torch.cat(
        [
            torch.zeros(2, 784, dtype=torch.uint8),
            torch.full((2, 784), 255, dtype=torch.uint8),
            noise,
        ]
    )


@pytest.fixture(scope="module")
def models(simplenet_c, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("kernels")
    found = {"simplenet": (simplenet_c["int8"], simplenet_c["int8_dir"])}
    for name, pixel_input in (("adversarial pixels", True), ("adversarial table", False)):
        model = adversarial_model(len(name), pixel_input)
        found[name] = (model, export_c(model, folder / name.replace(" ", "_"), "edge").directory)
    return found


@pytest.mark.parametrize("which", ["simplenet", "adversarial pixels", "adversarial table"])
def test_every_build_is_bit_exact(models, offline_data, which):
    """The logits' integers of every build equal ptqlib's teaching path and an int64
    reference, on the test split at every batch size of BATCHES and on stress inputs."""
    model, directory = models[which]
    pixels = torch.cat([offline_data.test.pixels().reshape(-1, 784), stress_pixels()])
    images = normalise(pixels.reshape(-1, 28, 28))
    expected = model.quantized_logits(pixels if model.takes_pixels else images)
    reference = int64_reference(model, pixels)
    if model.output_qparams.dtype == torch.uint8:
        assert torch.equal(reference, expected)
    for variant in builds():
        c_model = load_c_model(directory, variant)
        for batch in BATCHES:
            got = torch.cat(
                [
                    c_model.quantized_logits(pixels[i : i + batch])
                    for i in range(0, len(pixels), batch)
                ]
            )
            assert torch.equal(got, expected), (variant, batch)


def test_fp32_builds_match_pytorch(simplenet_c, offline_data):
    images = offline_data.test.images.reshape(len(offline_data.test), -1)
    expected = simplenet_c["fp32"](images).detach()
    for variant in builds():
        c_model = load_c_model(simplenet_c["fp32_dir"], variant)
        for batch in (1, 7, 1000):
            got = torch.cat([c_model(images[i : i + batch]) for i in range(0, 1000, batch)])
            assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (variant, batch)


@pytest.mark.parametrize("which", ["adversarial table", "fp32"])
def test_clean_under_sanitizers_against_a_guard_page(models, tmp_path, which):
    """ASan + UBSan (any report fatal), the input and the output of every call ending at a
    PROT_NONE page: no byte read or written outside them, no signed overflow, no shift out of
    range, in every build, at batch sizes that leave every kind of remainder."""
    batches = (1, 5, 6, 7, 24, 25, 64)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (70, 784), dtype=torch.uint8, generator=generator)
    if which == "fp32":  # a small MLP with widths that leave remainders everywhere
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(784, 37), torch.nn.ReLU(), torch.nn.Linear(37, 10)
        )
        directory, kind = export_c(model, tmp_path / "small", "simplenet").directory, "fp32"
        images = normalise(pixels.reshape(-1, 28, 28)).reshape(70, 784)
        expected = model(images).detach()
    else:
        model, directory = models[which]
        kind, images = "int8", pixels
        expected = model.quantized_logits(normalise(pixels.reshape(-1, 28, 28)))
    for variant in builds():
        source = "simplenet_fp32" if kind == "fp32" else "edge_int8"
        source += "_avx2.c" if variant == "avx2" else ".c"
        for got in run_guarded(directory, source, kind, images, batches, tmp_path):
            if kind == "int8":
                assert torch.equal(got, expected), variant
            else:
                assert torch.allclose(got, expected, atol=1e-4), variant


def test_avx2_build_holds_the_instructions_it_is_written_with(models, simplenet_c):
    if "avx2" not in builds():
        pytest.skip("this CPU has no AVX2 + FMA")
    for directory, wanted in (
        (models["simplenet"][1], ("vpmaddwd", "vpmovsxbw", "vpsrlvq", "vpmuldq")),
        (simplenet_c["fp32_dir"], ("vfmadd231ps",)),
    ):
        library = load_c_model(directory, "avx2").library_path
        listing = subprocess.run(
            ["objdump", "-d", str(library)], capture_output=True, text=True, check=True
        ).stdout
        assert all(instruction in listing for instruction in wanted)


def test_every_source_compiles_without_a_warning(models, tmp_path):
    """The sources a reader builds with the flags of BUILD give no warning, even under
    -Wall -Wextra -Wpedantic (a remainder loop after `k + split <= steps` once made gcc warn
    that an iteration "invokes undefined behavior")."""
    torch.manual_seed(0)
    fp32 = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 37), torch.nn.ReLU(), torch.nn.Linear(37, 10)
    )
    exports = [
        export_c(fp32, tmp_path / "fp32", "edge"),
        export_c(models["adversarial pixels"][0], tmp_path / "int8", "edge"),
    ]
    for exported in exports:
        for source in exported.builds.values():
            command = [find_compiler(), *BUILD_FLAGS, "-Wall", "-Wextra", "-Wpedantic", "-c"]
            command += ["-o", os.devnull, "-I", str(exported.directory)]
            result = subprocess.run(
                [*command, str(exported.directory / source)], capture_output=True, text=True
            )
            assert result.returncode == 0 and not result.stderr, (source, result.stderr[-2000:])
