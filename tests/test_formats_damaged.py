"""A "formats" checkpoint edited by hand (saved again with a valid digest, as an old
unchecked file could be) is refused in one sentence naming what is wrong, never loaded into
NaN weights, a traceback, or a label that the weights contradict."""

import math

import pytest
import torch

from ptqlib.app.model_files import load_model
from ptqlib.checkpoints import load_checkpoint, save_checkpoint
from ptqlib.errors import InputError
from ptqlib.formats.checkpoint import format_payload, load_formats, save_formats
from ptqlib.formats.simulation import activation_amax
from ptqlib.models import SimpleNet


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """SimpleNet (untrained) in several formats, activations calibrated where they apply."""
    folder = tmp_path_factory.mktemp("formats")
    torch.manual_seed(0)
    model = SimpleNet().eval()
    ranges = activation_amax(model, torch.randn(16, 1, 28, 28))
    paths = {}
    for name in ("fp8-e4m3", "fp8-e5m2", "mxfp8", "mxfp4", "nvfp4", "int4-g32", "kmeans-16"):
        with_ranges = ranges if name not in ("fp8-e5m2", "int4-g32", "kmeans-16") else None
        payload = format_payload(model, "simplenet", name, with_ranges, {"format": name})
        paths[name] = save_formats(payload, folder / f"{name}.pt")
    return paths


def damaged(files, tmp_path, name, change):
    payload = load_checkpoint(files[name])
    change(payload)
    return save_checkpoint(payload, tmp_path / "damaged.pt")


def set_code(key, index, code):
    def change(payload):
        payload["layers"]["fc1"][key][index] = code

    return change


def set_field(*path_and_value):
    *path, value = path_and_value

    def change(payload):
        target = payload
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value

    return change


DAMAGE = {
    "an E4M3 NaN code": ("fp8-e4m3", set_code("codes", (0, 0), 0x7F), "NaN or infinity"),
    "an E5M2 infinity code": ("fp8-e5m2", set_code("codes", (0, 0), 0x7C), "NaN or infinity"),
    "E8M0's NaN scale": ("mxfp4", set_code("scale_codes", (0, 0), 0xFF), "NaN or infinity"),
    "a negative NVFP4 block scale": (
        "nvfp4",
        set_code("block_scale_codes", (0, 0), 0xB8),
        "block scales must be positive",
    ),
    "an infinite group scale": ("int4-g32", set_code("scales", (0, 0), math.inf), "positive"),
    "a negative group scale": ("int4-g32", set_code("scales", (0, 0), -0.5), "positive"),
    "a NaN centroid": ("kmeans-16", set_code("centroids", 15, math.nan), "finite"),
    "MX layers under an FP8 name": (
        "mxfp8",
        set_field("format", "fp8-e4m3"),
        "not stored as fp8-e4m3",
    ),
    "group-wise layers under an MX name": (
        "int4-g32",
        set_field("format", "mxfp4"),
        "not stored as mxfp4",
    ),
    "MXFP4 with blocks of 16": (
        "mxfp4",
        lambda payload: payload["layers"]["fc1"].update(
            block_size=16, scale_codes=torch.full((128, 49), 127, dtype=torch.uint8)
        ),
        "not stored as mxfp4",
    ),
    "a changed packing offset": (
        "int4-g32",
        set_field("layers", "fc1", "values", "lowest", 0),
        "not stored as int4-g32",
    ),
    "a bias of another shape": (
        "mxfp4",
        set_field("state_dict", "fc1.bias", torch.zeros(5)),
        "fc1.bias",
    ),
    "a NaN bias": (
        "nvfp4",
        set_field("state_dict", "fc2.bias", lambda bias: torch.full_like(bias, math.nan)),
        "fc2.bias must be a finite",
    ),
    "an activation range that is not a number": (
        "mxfp4",
        set_field("activation_amax", "fc1", "big"),
        "activation_amax",
    ),
    "a negative activation range": (
        "fp8-e4m3",
        set_field("activation_amax", "fc2", -1.0),
        "activation_amax",
    ),
    "meta that is not a dict": ("mxfp4", set_field("meta", [1, 2]), "meta"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_naming_the_problem(damage, files, tmp_path):
    name, change, message = DAMAGE[damage]
    path = damaged(files, tmp_path, name, change)
    with pytest.raises(InputError, match=message) as refused:
        load_formats(path)
    assert str(path) in str(refused.value)  # names the file, on one line
    assert "\n" not in str(refused.value)


def test_evaluate_reports_what_the_weights_are_not_what_the_meta_says(files, tmp_path):
    lying = {"format": "nvfp4", "bits_per_weight": 1.0, "activations": False}
    path = damaged(files, tmp_path, "mxfp4", set_field("meta", lying))
    _, kind, meta = load_model(path)
    assert kind == "formats" and meta["format"] == "mxfp4" and meta["activations"]
    assert 4.25 <= meta["bits_per_weight"] < 4.26 and meta["activation_bits"] == 4
    _, _, meta = load_model(damaged(files, tmp_path, "int4-g32", set_field("meta", {})))
    assert meta["format"] == "int4-g32" and meta["activation_bits"] == 32


@pytest.mark.parametrize("key", ["format", "model"])
def test_a_name_that_is_not_a_string_is_refused(key, files, tmp_path):
    path = damaged(files, tmp_path, "mxfp4", set_field(key, ["mxfp4"]))
    with pytest.raises(InputError, match=f"unknown {key}"):
        load_formats(path)
