"""Files that detect their own corruption (issue 22).

Every kind of file ptqlib writes (FP32, INT8 and packed low-bit checkpoints, the exported
ONNX model) is damaged in three ways, seeded: bytes changed at random positions, the file
cut short, a block copied in from elsewhere in the file or from another file. Every load
must either give exactly the original contents or refuse with an InputError (the CLI's one
line and exit 2): no silent change, no traceback. A single byte changed inside a tensor's
data, which torch.load alone accepts, is refused too. The mutants are loaded by the library;
a few damaged files go through ``python -m ptqlib evaluate`` (in-process, ``main([...])``).
"""

import random
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import run_main
from ptqlib.app.model_files import load_model
from ptqlib.calibration import calibrate
from ptqlib.checkpoints import (
    DIGEST_KEY,
    UNCHECKED_FORMAT_VERSION,
    load_checkpoint,
    load_fp32,
    save_fp32,
    write_payload,
)
from ptqlib.deploy.onnx_export import int8_to_onnx, save_onnx
from ptqlib.deploy.onnx_runtime import load_onnx, load_onnx_model
from ptqlib.digests import content_digest
from ptqlib.errors import InputError
from ptqlib.int8_checkpoint import load_int8, save_int8
from ptqlib.int8_model import convert
from ptqlib.integer_arithmetic import Requantization
from ptqlib.lowbit.weights import LowBitSettings, quantize_low_bit
from ptqlib.models import SimpleNet

KINDS = ("fp32", "int8", "lowbit", "onnx")
MUTATIONS = ("flip", "truncate", "splice")
MUTANTS_PER_KIND = 20


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One file of each kind, from a random-weight SimpleNet calibrated on random images."""
    folder = tmp_path_factory.mktemp("originals")
    torch.manual_seed(0)
    model = SimpleNet().eval()
    images = torch.rand(64, 1, 28, 28)
    int8_model = convert(model, calibrate(model, images, "minmax", progress=False))
    settings = LowBitSettings(weight_bits=3, layer_bits={"fc3": 8})
    lowbit = quantize_low_bit(model, images, settings, observer="minmax").int8_model
    return {
        "fp32": save_fp32(model, folder / "fp32.pt", {"seed": 0, "note": "random weights"}),
        "int8": save_int8(int8_model, folder / "int8.pt", {"observer": "minmax"}),
        "lowbit": save_int8(lowbit, folder / "lowbit.pt", {"weight_bits": 3}),
        "onnx": save_onnx(int8_to_onnx(int8_model), folder / "int8.onnx"),
    }


def assert_same(found, expected, where="payload"):
    """Equal values of equal types, tensors equal in dtype, shape and every element."""
    assert type(found) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert found.dtype == expected.dtype and found.shape == expected.shape, where
        assert torch.equal(found, expected), where
    elif isinstance(expected, dict):
        assert list(found) == list(expected), where
        for key in expected:
            assert_same(found[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(found) == len(expected), where
        for index, (a, b) in enumerate(zip(found, expected, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert found == expected, where


def contents(kind: str, path: Path):
    """Everything a loader gives for the file (raises InputError for a refused file)."""
    if kind == "onnx":
        onnx_model = load_onnx(path)
        load_onnx_model(path)  # and ONNX Runtime takes it
        return onnx_model.SerializeToString()
    payload = load_checkpoint(path)
    model, _, _ = load_model(path)  # as `python -m ptqlib evaluate` loads it
    return payload, model.state_dict()


def mutate(data: bytes, mutation: str, rng: random.Random, other: bytes) -> bytes:
    """``data`` damaged by ``mutation``; ``other`` is another file to splice from."""
    damaged = bytearray(data)
    if mutation == "flip":  # 1 to 8 bytes changed anywhere
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
    elif mutation == "truncate":
        del damaged[rng.randrange(len(damaged)) :]
    else:  # a block of 16 B..4 KB from elsewhere in this file or from the other one
        source = other if rng.random() < 0.5 else data
        size = rng.randint(16, 4096)
        start = rng.randrange(len(source) - size)
        target = rng.randrange(len(damaged) - size)
        damaged[target : target + size] = source[start : start + size]
    return bytes(damaged)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_damaged_files_load_unchanged_or_are_refused(files, tmp_path, capsys, kind, mutation):
    original = contents(kind, files[kind])
    data = files[kind].read_bytes()
    other = files["int8" if kind == "fp32" else "fp32"].read_bytes()
    rng = random.Random(f"{kind}-{mutation}")
    refused = 0
    for index in range(MUTANTS_PER_KIND):
        path = tmp_path / f"mutant{index}{files[kind].suffix}"
        path.write_bytes(mutate(data, mutation, rng, other))
        try:
            found = contents(kind, path)
        except InputError as error:  # anything else fails the test with its traceback
            message = str(error)
            assert str(path) in message and "\n" not in message
            assert "corrupt" in message or "not a" in message, message
            refused += 1
            continue
        # A load that succeeds gives exactly the original (a byte of the pickle's
        # bookkeeping can change without changing anything it holds).
        assert_same(found, original, f"mutant {index}")
    assert refused >= MUTANTS_PER_KIND // 2, "hardly any damage was noticed: a broken test?"
    assert "unchecked" not in capsys.readouterr().err  # no damaged file passes as an old one
    print(f"{kind} {mutation}: {refused} of {MUTANTS_PER_KIND} refused, the rest identical")


def tensor_data_offset(data: bytes, kind: str, path: Path) -> int:
    """Where the bytes of the file's largest weight (fc1's) start in the file: torch's plain
    format, its zip format and ONNX's raw_data all store a tensor's bytes as they are."""
    if kind == "onnx":
        initializer = {t.name: t for t in onnx.load(path).graph.initializer}
        raw = initializer["fc1_weight_quantized"].raw_data
    else:
        payload = torch.load(path, weights_only=True)
        if kind == "fp32":
            tensor = payload["state_dict"]["fc1.weight"]
        else:
            fc1 = next(entry for entry in payload["layers"] if entry.get("name") == "fc1")
            tensor = fc1["packed_weight"]["data"] if kind == "lowbit" else fc1["weight"]
        raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    offset = data.find(raw)
    assert offset > 0 and data.find(raw, offset + 1) == -1
    return offset


@pytest.mark.parametrize("kind", KINDS)
def test_one_byte_changed_in_a_tensor_is_refused(files, tmp_path, kind):
    data = bytearray(files[kind].read_bytes())
    data[tensor_data_offset(bytes(data), kind, files[kind]) + 1234] ^= 0x01
    path = tmp_path / files[kind].name
    path.write_bytes(data)
    if kind != "onnx":
        # torch.load alone accepts the file: the plain format has no checksum.
        assert isinstance(torch.load(path, weights_only=True), dict)
    with pytest.raises(InputError, match=r"is corrupted: its contents do not match the SHA-256"):
        contents(kind, path)


def test_torch_zip_format_crc_is_not_checked_but_the_digest_is(files, tmp_path):
    """torch.save's zip format stores tensors uncompressed with a CRC-32 each, but torch.load
    does not check them: a changed byte loads silently. ptqlib's digest travels inside the
    payload, so a checkpoint re-saved in the zip format is checked all the same."""
    original = torch.load(files["int8"], weights_only=True)
    path = tmp_path / "zip.pt"
    torch.save(original, path)  # the default, zip format
    assert load_int8(path)[1] == {"observer": "minmax"}
    data = bytearray(path.read_bytes())
    assert data[:2] == b"PK"
    data[tensor_data_offset(bytes(data), "int8", path) + 1234] ^= 0x01
    path.write_bytes(data)
    loaded = torch.load(path, weights_only=True)
    weight = next(entry for entry in loaded["layers"] if entry.get("name") == "fc1")["weight"]
    expected = next(entry for entry in original["layers"] if entry.get("name") == "fc1")
    assert not torch.equal(weight, expected["weight"])  # torch took the changed byte
    with pytest.raises(InputError, match="is corrupted"):
        load_int8(path)


def old_format_copy(path: Path, folder: Path) -> Path:
    """The checkpoint as ptqlib wrote it before digests: format 1, no "sha256"."""
    payload = torch.load(path, weights_only=True)
    del payload[DIGEST_KEY]
    payload["format_version"] = UNCHECKED_FORMAT_VERSION
    old = folder / f"old_{path.name}"
    with old.open("wb") as file:
        write_payload(payload, file)
    return old


@pytest.mark.parametrize("kind", ["fp32", "int8", "lowbit"])
def test_checkpoints_without_a_digest_load_with_a_one_line_note(files, tmp_path, capsys, kind):
    old = old_format_copy(files[kind], tmp_path)
    expected = load_checkpoint(files[kind])
    capsys.readouterr()
    found = load_checkpoint(old)
    assert_same({**found, "format_version": 2}, expected)
    (note,) = capsys.readouterr().err.splitlines()
    assert note.startswith(f"note: {old} was written before") and "unchecked" in note
    model = load_fp32(old)[0] if kind == "fp32" else load_int8(old)[0]
    assert model.state_dict().keys() == contents(kind, files[kind])[1].keys()


def test_a_current_checkpoint_without_its_digest_is_corrupted(files, tmp_path):
    """Format 2 always carries the digest: one without it (its key damaged) is refused."""
    payload = torch.load(files["int8"], weights_only=True)
    payload["sha257"] = payload.pop(DIGEST_KEY)
    path = tmp_path / "no_digest.pt"
    with path.open("wb") as file:
        write_payload(payload, file)
    with pytest.raises(InputError, match="is corrupted"):
        load_int8(path)


def test_onnx_exported_before_digests_loads_with_a_note(files, tmp_path, capsys):
    onnx_model = load_onnx(files["onnx"])
    kept = [entry for entry in onnx_model.metadata_props if entry.key != "ptqlib.sha256"]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(onnx_model, old)
    capsys.readouterr()
    assert load_onnx_model(old).kind == "int8"
    (note,) = capsys.readouterr().err.splitlines()
    assert note.startswith(f"note: {old} was exported before") and "unchecked" in note


def test_save_onnx_leaves_the_model_it_is_given_unchanged(files, tmp_path):
    onnx_model = load_onnx(files["onnx"])
    before = onnx_model.SerializeToString()
    again = save_onnx(onnx_model, tmp_path / "again.onnx")
    assert onnx_model.SerializeToString() == before
    assert again.read_bytes() == files["onnx"].read_bytes()


@pytest.mark.parametrize(
    "kind, damage", [("fp32", "splice"), ("int8", "flip"), ("lowbit", "truncate"), ("onnx", "flip")]
)
def test_the_cli_refuses_damaged_files_in_one_line(files, tmp_path, kind, damage):
    data = files[kind].read_bytes()
    damaged = bytearray(data)
    start = tensor_data_offset(data, kind, files[kind])
    if damage == "flip":  # one byte of fc1's weights
        damaged[start + 99] ^= 0x80
    elif damage == "truncate":
        del damaged[len(data) // 3 :]
    else:  # fc1's first weights written over with bytes from the start of the file
        damaged[start : start + 512] = data[:512]
    path = tmp_path / f"{damage}{files[kind].suffix}"
    path.write_bytes(damaged)
    result = run_main("evaluate", "--checkpoint", str(path))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(path) in line and "corrupt" in line and "Traceback" not in result.stderr


def test_the_cli_evaluates_an_old_checkpoint_with_one_note(files, tmp_path, offline_data_dir):
    old = old_format_copy(files["int8"], tmp_path)
    data_dir = str(offline_data_dir)
    result = run_main("evaluate", "--checkpoint", str(old), "--data-dir", data_dir, "--json")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "unchecked" in line]
    assert len(notes) == 1 and notes[0].startswith("note: "), result.stderr


def test_the_digest_tells_apart_what_a_reader_would():
    weights = torch.arange(-6, 6, dtype=torch.int8).reshape(3, 4)
    digest = content_digest({"w": weights, "scale": 0.5, "bits": 8})
    same_bytes_reread = [
        {"w": weights.view(torch.uint8), "scale": 0.5, "bits": 8},  # another dtype
        {"w": weights.reshape(4, 3), "scale": 0.5, "bits": 8},  # another shape
        {"w": weights, "scale": 0.5, "bits": 8.0},  # a float, not an int
        {"w": weights, "scale": 0.5, "bits": True},
        {"w": weights, "scale": 0.5, "bits": "8"},
        {"w": weights, "scale": 0.5 + 2**-40, "bits": 8},  # floats compared exactly
    ]
    for payload in same_bytes_reread:
        assert content_digest(payload) != digest, payload
    assert content_digest({"x": [1, 2]}) != content_digest({"x": (1, 2)})
    # Same contents, another layout: key order, a view into a larger storage, a copy.
    storage = torch.cat([torch.zeros(5, dtype=torch.int8), weights.reshape(-1)])
    view = storage[5:].view(3, 4)
    assert content_digest({"bits": 8, "scale": 0.5, "w": view}) == digest
    assert content_digest({"w": weights.t().contiguous().t(), "scale": 0.5, "bits": 8}) == digest
    with pytest.raises(InputError, match="not a set"):
        content_digest({"x": {1, 2}})


@pytest.mark.parametrize(
    "value", [torch.__version__, np.float64(0.5), np.int64(3), Requantization.FLOAT32]
)
def test_a_value_a_safe_load_would_refuse_is_refused_when_saving(tmp_path, value):
    """A subclass of str, int or float is pickled as its own class, which torch.load with
    weights_only=True refuses: saving it would write a file nobody can read. It is refused
    before anything is written."""
    path = tmp_path / "model.pt"
    with pytest.raises(InputError, match="of exactly these types"):
        save_fp32(SimpleNet(), path, {"note": value})
    assert not path.exists() and list(tmp_path.iterdir()) == []
    save_fp32(SimpleNet(), path, {"note": str(value) if isinstance(value, str) else 1.0})
    assert load_fp32(path)[1]["note"] in (str(value), 1.0)
