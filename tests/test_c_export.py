"""The model as C (notebook 10): export, the files and their digest, the names, the overflow
condition, the CLI, and the errors (no compiler, corrupt directory, bad options). Parity of
every build with ptqlib is in test_c_kernels.py. Without a C compiler these tests skip
locally and fail in CI (CI=true)."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
from torch import nn

from ptqlib.app.cli import EXIT_ERROR, main
from ptqlib.deploy.c_export import export_c, verify_directory
from ptqlib.deploy.c_graph import check_int32_sums
from ptqlib.deploy.c_runtime import find_compiler, load_c_model, native_targets
from ptqlib.errors import InputError
from ptqlib.int8_checkpoint import load_int8
from ptqlib.int8_layers import Int8MaxPool2d
from ptqlib.int8_model import Int8Model, with_requantization
from ptqlib.integer_arithmetic import INT32_MAX, INT32_MIN

HAS_COMPILER = any(shutil.which(name) for name in ("cc", "gcc", "clang"))
IN_CI = os.environ.get("CI", "").lower() == "true"
# Locally a missing compiler skips; in CI (gcc installed by .ci/run) it must be there.
pytestmark = pytest.mark.skipif(
    not HAS_COMPILER and not IN_CI, reason="no C compiler (install gcc); CI=true makes this fail"
)


@pytest.fixture(scope="module")
def cli(tmp_path_factory, quantized_checkpoints):
    """The CLI's checkpoints (normalised-input INT8 and FP32) exported by export --format c
    (in-process, as the other CLI tests run the command line)."""
    folder = tmp_path_factory.mktemp("c-export")
    paths = dict(quantized_checkpoints)
    for kind in ("int8", "fp32"):
        paths[f"{kind}_c"] = folder / f"{kind}_c"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            arguments = ["--checkpoint", str(paths[kind]), "--format", "c"]
            assert main(["export", *arguments, "--out", str(paths[f"{kind}_c"])]) == 0
        first_build = (paths[f"{kind}_c"] / "BUILD").read_text().splitlines()[1]
        assert first_build in out.getvalue() and first_build.startswith("cc ")
    return paths


def evaluate(checkpoint, data_dir, capsys, *extra) -> tuple[int, str, str]:
    """``python -m ptqlib evaluate`` in-process: exit status, stdout, stderr."""
    capsys.readouterr()
    status = main(
        ["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(data_dir), *extra]
    )
    out, err = capsys.readouterr()
    return status, out, err


def assert_error_line(result: tuple[int, str, str], message: str) -> None:
    status, _, err = result
    assert status == EXIT_ERROR and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def compile_program(directory, sources, output, *flags):
    """Compile ``sources`` (names in ``directory``) into ``output``; the CompletedProcess."""
    command = [find_compiler(), "-std=c99", *flags, "-o", str(output)]
    command += [str(directory / source) for source in sources]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_lookup_table_checkpoint_is_bit_exact_through_the_cli(cli, offline_data):
    """The CLI's INT8 checkpoint reads normalised floats: its C takes pixels through a
    256-entry table and returns ptqlib's integers on the whole test split."""
    model, _ = load_int8(cli["int8"])
    c_model = load_c_model(cli["int8_c"], "portable")
    pixels = offline_data.test.pixels().reshape(len(offline_data.test), -1)
    assert torch.equal(
        c_model.quantized_logits(pixels), model.quantized_logits(offline_data.test.images)
    )
    manifest = json.loads((cli["int8_c"] / "model.json").read_text())
    assert manifest["prefix"] == "simplenet_int8" and manifest["model"] == "simplenet"
    assert manifest["weight_bits"] == {"fc1": 8, "fc2": 8, "fc3": 8}


def test_every_file_is_in_the_digest(simplenet_c, tmp_path):
    """Changing any byte of any file (main.c, BUILD, the header, the source, model.json) is
    refused; an "outputs": 1 that would size the output buffer wrongly never reaches C."""
    manifest = verify_directory(simplenet_c["int8_dir"])
    assert set(manifest["files"]) == {
        "BUILD", "main.c", "model.json", "simplenet_int8.c", "simplenet_int8.h",
        "simplenet_int8_avx2.c",
    }  # fmt: skip
    for name in manifest["files"]:
        broken = tmp_path / name
        shutil.copytree(simplenet_c["int8_dir"], broken)
        path = broken / name
        text = path.read_text()
        if name == "model.json":
            changed = text.replace('"outputs": 10', '"outputs": 1')
        else:  # one character of the last line (the first carries the digest)
            changed = text[:-3] + ("x" if text[-3] != "x" else "y") + text[-2:]
        assert changed != text
        path.write_text(changed)
        with pytest.raises(InputError, match="changed since export|digest line"):
            load_c_model(broken)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"outputs": 1}, "outputs = 1, but the header defines"),
        # Before: compiled a file outside the export (not covered by the digest).
        ({"builds": {"portable": "../other/simplenet_int8.c"}}, "must name files of the export"),
        ({"output_zero_point": "z"}, "output_zero_point 'z' must be 0..255"),
        ({"output_dtype": "int4"}, "output_dtype 'int4' must be uint8 or int8"),
        ({"output_scale": -1.0}, "output_scale -1.0 must be a positive number"),
        ({"tile": 0}, "tile 0 must be a whole number >= 1"),
    ],
    ids=["outputs", "build-outside", "zero-point", "dtype", "scale", "tile"],
)
def test_manifest_is_checked_against_the_header(simplenet_c, tmp_path, edit, message):
    """A manifest rewritten with a consistent digest still has to agree with the header's
    #defines on the sizes Python passes to the C, compile only the export's own files, and
    hold an output dtype, zero-point and scale of their type and range (a string
    zero-point was a TypeError at the first dequantization)."""
    from ptqlib.deploy.c_export import export_digest

    broken = tmp_path / "broken"
    shutil.copytree(simplenet_c["int8_dir"], broken)
    manifest = json.loads((broken / "model.json").read_text())
    old = manifest["digest"]
    manifest.update(edit)
    bodies = {}
    for name in manifest["files"]:
        if name != "model.json":
            text = (broken / name).read_text()
            bodies[name] = text.partition("\n")[2] if name.endswith((".c", ".h")) else text
    manifest["digest"] = export_digest(bodies, manifest)
    for name in bodies:
        if name.endswith((".c", ".h")):
            path = broken / name
            path.write_text(path.read_text().replace(old, manifest["digest"], 1))
    (broken / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=message):
        verify_directory(broken)


def test_headers_of_two_exports_go_into_one_program(simplenet_c, tmp_path):
    """Every name carries the prefix: the INT8 and FP32 models link into one program (once
    'conflicting types for fc1_bias'); the weights are defined once, in the .c, so main.c
    alone carries none of them, even at -O0."""
    program = tmp_path / "both.c"
    program.write_text(
        '#include "simplenet_int8.h"\n#include "simplenet_fp32.h"\n'
        "int main(void) {\n    uint8_t pixels[784] = {0}, q[10];\n"
        "    float x[784] = {0}, y[10];\n    simplenet_int8_forward(pixels, q, 1);\n"
        "    simplenet_fp32_forward(x, y, 1);\n"
        "    return SIMPLENET_INT8_OUTPUTS == SIMPLENET_FP32_OUTPUTS ? 0 : 1;\n}\n"
    )
    for kind in ("int8", "fp32"):
        for name in (f"simplenet_{kind}.h", f"simplenet_{kind}.c"):
            shutil.copy(simplenet_c[f"{kind}_dir"] / name, tmp_path / name)
    sources = ["both.c", "simplenet_int8.c", "simplenet_fp32.c"]
    result = compile_program(tmp_path, sources, tmp_path / "both", "-O0", "-Wall", "-Werror")
    assert result.returncode == 0, result.stderr
    assert subprocess.run([str(tmp_path / "both")], timeout=60).returncode == 0
    main_object = tmp_path / "main.o"
    directory = simplenet_c["int8_dir"]
    subprocess.run(
        [find_compiler(), "-std=c99", "-O0", "-c", "-I", str(directory), "-o", str(main_object),
         str(directory / "main.c")], check=True, timeout=120,
    )  # fmt: skip
    assert main_object.stat().st_size < 20_000  # the weights alone are 101 KB
    assert (
        "extern const int8_t simplenet_int8_fc1_weight[100352];"
        in (directory / "simplenet_int8.h").read_text()
    )


def test_a_sequential_without_names_exports_valid_c(simplenet_c, tmp_path):
    """nn.Sequential's children are named 0, 1, 2...: prefixed, they are valid C names."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 12), nn.ReLU(), nn.Linear(12, 10))
    exported = export_c(model, tmp_path / "seq")
    assert exported.prefix == "model_fp32"
    c_model = load_c_model(exported.directory, "portable")
    images = torch.rand(5, 784)
    assert torch.allclose(c_model(images), model(images).detach(), atol=1e-5)
    assert "model_fp32_1_weight_t" in exported.header.read_text()
    with pytest.raises(InputError, match="does not start a C identifier"):
        export_c(model, tmp_path / "bad", "1st")


def test_first_layer_must_take_a_digit(tmp_path):
    for model in (
        nn.Sequential(nn.Linear(100, 10)),
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)),
    ):
        with pytest.raises(InputError, match="takes 100 features|expects 3 channels"):
            export_c(model, tmp_path / "wrong")


def test_tile_below_one_is_a_compile_error(simplenet_c, tmp_path):
    result = compile_program(
        simplenet_c["int8_dir"], ["simplenet_int8.c"], tmp_path / "x.o", "-c",
        "-DSIMPLENET_INT8_TILE=0",
    )  # fmt: skip
    assert result.returncode != 0 and "SIMPLENET_INT8_TILE must be at least 1" in result.stderr


def test_run_refuses_an_output_it_would_not_write_into(simplenet_c):
    c_model = load_c_model(simplenet_c["int8_dir"], "portable")
    pixels = torch.zeros(4, 784, dtype=torch.uint8)
    strided = torch.zeros(10, 4, dtype=torch.uint8).t()
    with pytest.raises(InputError, match="not contiguous"):
        c_model.run(pixels, strided)
    with pytest.raises(InputError, match="expected torch.uint8 images of 784 values"):
        c_model.run(torch.zeros(4, 783, dtype=torch.uint8))


def test_manifest_records_the_real_bits(offline_data, tmp_path):
    """A W3A4 model is recorded as 3-bit weights and 4-bit activations, not 8/8."""
    from ptqlib.data import calibration_images
    from ptqlib.lowbit.weights import LowBitSettings, quantize_low_bit
    from ptqlib.training import load_or_train_baseline

    fp32, _ = load_or_train_baseline(offline_data, progress=False)
    images = calibration_images(offline_data.train, 100)
    low = quantize_low_bit(fp32, images, LowBitSettings(weight_bits=3, activation_bits=4))
    manifest = verify_directory(export_c(low.int8_model, tmp_path / "w3a4").directory)
    assert manifest["weight_bits"] == {"fc1": 3, "fc2": 3, "fc3": 3}
    assert manifest["activation_bits"] == 4


def test_overflow_condition_is_exact():
    """Per row: |b| <= INT32_MAX, 255 P + b <= INT32_MAX, 255 N + b >= INT32_MIN. The old
    bound 255 sum|w| + |b| refused rows whose sums always fit."""
    weight = torch.tensor([[127] * 50 + [-128] * 50])
    positive, negative = 127 * 50, -128 * 50
    fits = torch.tensor([INT32_MAX - 255 * positive])
    assert 255 * (positive - negative) + int(fits.abs()) > INT32_MAX  # the old bound refuses
    check_int32_sums("row", weight, fits)
    for bias, match in (
        (fits + 1, "outside int32"),
        (torch.tensor([INT32_MIN - 255 * negative - 1]), "outside int32"),
        (torch.tensor([INT32_MAX + 1]), "outside int32"),
    ):
        with pytest.raises(InputError, match=match):
            check_int32_sums("row", weight, bias)
    check_int32_sums("row", weight, torch.tensor([INT32_MIN - 255 * negative]))


def test_no_float_in_the_integer_path(cli, simplenet_c):
    """The preprocessed portable INT8 C (comments gone, header included) has no float type;
    the same grep finds them in the FP32 C, so it can fail."""
    pattern = re.compile(r"\b(float|double)\b")
    for directory in (cli["int8_c"], simplenet_c["int8_dir"]):
        text = exported_lines(preprocess(directory / "simplenet_int8.c"), directory)
        assert "simplenet_int8_forward" in text and "simplenet_int8_fc1_weight" in text
        assert not pattern.search(text)
    fp32_dir = simplenet_c["fp32_dir"]
    assert pattern.search(exported_lines(preprocess(fp32_dir / "simplenet_fp32.c"), fp32_dir))


def preprocess(source):
    command = [find_compiler(), "-E", "-I", str(source.parent), str(source)]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def exported_lines(preprocessed: str, directory) -> str:
    """The lines of the preprocessor's output that come from the exported files (its line
    markers ``# N "file"`` say where each line comes from), not from system headers."""
    kept, ours = [], False
    for line in preprocessed.splitlines():
        marker = re.match(r'# \d+ "([^"]*)"', line)
        if marker:
            ours = marker.group(1).startswith(str(directory))
        elif ours:
            kept.append(line)
    return "\n".join(kept)


def test_fp32_build_contracts_to_fma(simplenet_c):
    """BUILD's -ffp-contract=fast gives the FP32 loops fused multiply-adds where the CPU
    has FMA (ISO C mode alone turns contraction off in gcc)."""
    if not native_targets()["avx2"]:
        pytest.skip("-march=native has no FMA here")
    library = load_c_model(simplenet_c["fp32_dir"], "portable").library_path
    listing = subprocess.run(
        ["objdump", "-d", str(library)], capture_output=True, text=True, check=True
    ).stdout
    assert "vfmadd" in listing


def test_evaluate_directory_gives_ptqlib_accuracy(cli, capsys):
    reports = {}
    for which in ("int8", "int8_c", "fp32", "fp32_c"):
        status, out, err = evaluate(cli[which], cli["data"], capsys, "--json")
        assert status == 0, err
        reports[which] = json.loads(out)
    assert reports["int8_c"]["accuracy"] == reports["int8"]["accuracy"]
    assert reports["int8_c"]["runtime"] == "c" and reports["int8_c"]["kind"] == "int8"
    assert reports["int8_c"]["n_test"] == 1000 and reports["int8_c"]["size_bytes"] > 100_000
    assert abs(reports["fp32_c"]["accuracy"] - reports["fp32"]["accuracy"]) <= 0.001
    assert set(reports["int8_c"]) == set(reports["int8"])  # the same JSON fields


def test_main_program_classifies_a_digit(simplenet_c, offline_data, tmp_path):
    """Build main.c with the BUILD line and classify one digit from a 784-byte file."""
    directory = tmp_path / "program"
    shutil.copytree(simplenet_c["int8_dir"], directory)
    build = (directory / "BUILD").read_text().splitlines()[1].split()
    subprocess.run([find_compiler(), *build[1:]], cwd=directory, check=True, timeout=120)
    digit = offline_data.test.pixels()[7].reshape(784)
    (tmp_path / "digit.raw").write_bytes(digit.numpy().tobytes())
    result = subprocess.run(
        [str(directory / "simplenet_int8"), str(tmp_path / "digit.raw")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    expected = int(simplenet_c["int8"].quantized_logits(digit.reshape(1, 784)).argmax())
    assert result.returncode == 0 and result.stdout.startswith(f"digit {expected};")
    (tmp_path / "short.raw").write_bytes(b"\0" * 10)
    result = subprocess.run(
        [str(directory / "simplenet_int8"), str(tmp_path / "short.raw")], capture_output=True
    )
    assert result.returncode == 2


def test_missing_compiler_is_one_line(cli, monkeypatch, tmp_path, capsys):
    empty = tmp_path / "no-compilers-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(InputError, match=r"no C compiler found \(install gcc\)"):
        find_compiler()
    result = evaluate(cli["int8_c"], cli["data"], capsys)
    assert_error_line(result, "no C compiler found (install gcc)")


def test_corrupt_directory_is_one_line(cli, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(cli["int8_c"], broken)
    source = broken / "simplenet_int8.c"
    text = source.read_text()
    start = text.index("simplenet_int8_fc1_weight[")
    number = re.compile(r"-?\d+").search(text, text.index("{", start))
    changed = str(int(number.group()) // 2 + 1)
    source.write_text(text[: number.start()] + changed + text[number.end() :])
    assert_error_line(evaluate(broken, cli["data"], capsys), "changed since export")
    (broken / "model.json").write_text("{not json")
    assert_error_line(evaluate(broken, cli["data"], capsys), "not valid JSON")
    (broken / "model.json").unlink()
    assert_error_line(evaluate(broken, cli["data"], capsys), "no model.json")


def test_refuses_what_the_c_does_not_implement(simplenet_c, tmp_path):
    int8_model = simplenet_c["int8"]
    with pytest.raises(InputError, match="fixed point"):
        export_c(with_requantization(int8_model, "float32"), tmp_path / "ort")
    pooled = Int8Model(int8_model.input_qparams, [Int8MaxPool2d(2), *int8_model.layers])
    with pytest.raises(InputError, match="takes 784 features, gets 196"):
        export_c(pooled, tmp_path / "pool")
    with pytest.raises(InputError, match="C export supports Linear, Conv2d"):
        export_c(nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Sigmoid()), tmp_path / "s")


@pytest.mark.slow
def test_bench_adds_c_rows(cli, capsys):
    """bench --runtime c adds every C build this CPU runs, timed as the C call itself."""
    arguments = ["--runtime", "c", "--batch-sizes", "1", "--calib", "100"]
    arguments += ["--observer", "minmax", "--threads", "1", "--data-dir", str(cli["data"])]
    capsys.readouterr()
    assert main(["bench", *arguments]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert {"c_fp32_portable", "c_int8_portable"} <= set(names)
    assert ("c_int8_avx2" in names) is native_targets()["avx2"]


def test_generated_c_fits_80_columns(simplenet_c):
    """The portable files read like hand-written C (80 columns; the digest line and the rows
    of numbers aside); the AVX2 file stays within 100."""
    for directory in (simplenet_c["int8_dir"], simplenet_c["fp32_dir"]):
        for path in directory.iterdir():
            if path.suffix not in (".c", ".h"):
                continue
            limit = 100 if path.stem.endswith("avx2") else 80
            lines = path.read_text().splitlines()[1:]
            wide = [line for line in lines if len(line) > limit and not line[4:5].isdigit()]
            wide = [line for line in wide if not line.startswith("    -")]
            assert not wide, (path.name, wide[:3])
