"""One quantize workflow (``ptqlib.app.quantize``): one settings object, one metadata schema
for every model and bit width, and every check done before any work."""

import pytest
import torch

import ptqlib.app.quantize as quantize
from ptqlib.app.quantize import QuantizeSettings, quantize_checkpoint
from ptqlib.checkpoints import save_fp32
from ptqlib.data import MNIST_MEAN, MNIST_STD
from ptqlib.errors import InputError
from ptqlib.int8_checkpoint import load_int8
from ptqlib.int8_layers import Int8Step
from ptqlib.lowbit.weights import LowBitSettings
from ptqlib.models import SimpleNet, SmallCNN

SCHEMA = {
    "source_checkpoint",
    "source_path",
    "model",
    "observer",
    "calibration_images",
    "per_channel",
    "requantization",
    "equalized",
    "seed",
    "adaround_iterations",
    "pixel_input",
    "weight_bits",
    "activation_bits",
    "rounding",
    "clipping",
    "bias_correction",
    "seconds",
}


@pytest.fixture
def data_dir(tmp_path, write_idx_split):
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx_split(folder, "train", n=40)
    return folder


@pytest.fixture
def no_work(monkeypatch):
    """Make loading data or quantizing a failure: a check must refuse before either."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work was done before the settings were checked")

    for name in ("load_mnist", "int8_model_of", "save_int8"):
        monkeypatch.setattr(quantize, name, forbidden)


def test_quantize_checkpoint_end_to_end(tmp_path, data_dir):
    fp32_path = save_fp32(SimpleNet(), tmp_path / "fp32.pt")
    settings = QuantizeSettings(
        fp32_path,
        tmp_path / "out" / "int8.pt",
        observer="minmax",
        calib=20,
        data_dir=data_dir,
        bits=LowBitSettings(per_channel=False),
    )
    result = quantize_checkpoint(settings, progress=False)
    assert result.path.is_file() and result.int8_bytes == result.path.stat().st_size
    assert result.size_ratio > 3.5
    meta = result.meta
    assert set(meta) == SCHEMA
    assert meta["observer"] == "minmax" and meta["calibration_images"] == 20
    assert meta["model"] == "simplenet" and meta["source_path"] == str(fp32_path.resolve())
    assert meta["weight_bits"] == {"fc1": 8, "fc2": 8, "fc3": 8}
    assert meta["activation_bits"] == 8 and meta["per_channel"] is False
    assert meta["requantization"] == "fixed_point"
    loaded, loaded_meta = load_int8(result.path)
    assert loaded_meta == meta
    assert loaded(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_pixel_input_reads_raw_pixels_and_computes_the_normalised_models_classes(
    tmp_path, data_dir
):
    """With pixel_input the checkpoint takes uint8 pixels (S = 1, Z = 0) and is calibrated on
    the same digits: its integers differ from the normalised-input model's only where the
    input quantization differed, so nearly every prediction agrees."""
    torch.manual_seed(0)
    fp32_path = save_fp32(SimpleNet(), tmp_path / "fp32.pt")
    results = {
        pixel: quantize_checkpoint(
            QuantizeSettings(
                fp32_path, tmp_path / f"{pixel}.pt", "minmax", 20, data_dir=data_dir,
                pixel_input=pixel,
            ),
            progress=False,
        )
        for pixel in (False, True)
    }  # fmt: skip
    pixel_model = results[True].model
    assert pixel_model.takes_pixels and not results[False].model.takes_pixels
    assert results[True].meta["pixel_input"] is True
    pixels = torch.randint(0, 256, (64, 28, 28), generator=torch.Generator().manual_seed(1))
    normalised = ((pixels.float() / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
    from_pixels = pixel_model(pixels.float().unsqueeze(1)).argmax(dim=1)
    from_images = results[False].model(normalised).argmax(dim=1)
    assert (from_pixels == from_images).float().mean() > 0.9


def test_low_bit_and_cnn_checkpoints_share_the_schema(tmp_path, data_dir):
    mlp = save_fp32(SimpleNet(), tmp_path / "mlp.pt")
    cnn = save_fp32(SmallCNN(), tmp_path / "cnn.pt")
    low_bit = LowBitSettings(weight_bits=4, activation_bits=6, layer_bits={"fc3": 8})
    metas = {
        "low_bit": quantize_checkpoint(
            QuantizeSettings(
                mlp, tmp_path / "w4.pt", "minmax", 20, data_dir=data_dir, bits=low_bit
            ),
            progress=False,
        ).meta,
        "cnn": quantize_checkpoint(
            QuantizeSettings(cnn, tmp_path / "cnn8.pt", "minmax", 20, data_dir=data_dir),
            progress=False,
        ).meta,
    }
    assert all(set(meta) == SCHEMA for meta in metas.values())
    assert metas["low_bit"]["weight_bits"] == {"fc1": 4, "fc2": 4, "fc3": 8}
    assert metas["low_bit"]["activation_bits"] == 6
    assert metas["cnn"]["model"] == "cnn" and metas["cnn"]["source_path"] == str(cnn.resolve())
    assert metas["cnn"]["weight_bits"] == {"conv1": 8, "conv2": 8, "fc": 8}


@pytest.mark.parametrize(
    "model, kind, bits",
    [
        (SimpleNet, "simplenet", LowBitSettings()),
        (SimpleNet, "simplenet", LowBitSettings(weight_bits=4)),
        (SmallCNN, "cnn", LowBitSettings()),
    ],
)
def test_the_requantization_reaches_every_layer(tmp_path, data_dir, model, kind, bits):
    fp32_path = save_fp32(model(), tmp_path / "fp32.pt")
    settings = QuantizeSettings(
        fp32_path, tmp_path / "f.pt", "minmax", 20, data_dir=data_dir, requantization="float32",
        bits=bits,
    )  # fmt: skip
    result = quantize_checkpoint(settings, progress=False)
    assert result.meta["requantization"] == "float32" and result.meta["model"] == kind
    steps = [layer for layer in result.model.layers if isinstance(layer, Int8Step)]
    assert len(steps) == 3 and all(step.requantization == "float32" for step in steps)


@pytest.mark.parametrize(
    "model, changes, message",
    [
        (SimpleNet, {"observer": "nope"}, "unknown observer 'nope'"),
        (SimpleNet, {"observer": "per_channel_minmax"}, "unknown observer"),
        (SimpleNet, {"calib": 0}, "calib: expected a positive number"),
        (SimpleNet, {"calib": True}, "calib: expected a positive number"),
        (SimpleNet, {"requantization": "float16"}, "requantization: expected one of"),
        (SimpleNet, {"model": "cnn"}, "holds a SimpleNet (784-128-64-10), not the SmallCNN"),
        (SimpleNet, {"model": "resnet"}, "model: expected one of"),
        (SimpleNet, {"bits": LowBitSettings(layer_bits={"fc4": 4})}, "unknown layer(s) fc4"),
        (SmallCNN, {"bits": LowBitSettings(weight_bits=4)}, "holds a cnn: the low-bit options"),
        (SmallCNN, {"bits": LowBitSettings(rounding="gptq")}, "holds a cnn: the low-bit options"),
        (SmallCNN, {"pixel_input": True}, "holds a cnn: pixel input folds the normalisation"),
        (SimpleNet, {"pixel_input": 1}, "pixel_input: expected True or False"),
        (
            SimpleNet,
            {"pixel_input": True, "bits": LowBitSettings(weight_bits=4)},
            "pixel input is implemented for the 8-bit quantization",
        ),
    ],
)
def test_every_check_comes_before_any_work(tmp_path, no_work, model, changes, message):
    fp32_path = save_fp32(model(), tmp_path / "fp32.pt")
    settings = QuantizeSettings(fp32_path, tmp_path / "int8.pt", **changes)
    with pytest.raises(InputError) as error:
        quantize_checkpoint(settings, progress=False)
    assert message in str(error.value)


def test_an_output_directory_or_a_missing_checkpoint_is_refused_up_front(tmp_path, no_work):
    fp32_path = save_fp32(SimpleNet(), tmp_path / "fp32.pt")
    with pytest.raises(InputError, match="is a directory"):
        quantize_checkpoint(QuantizeSettings(fp32_path, tmp_path), progress=False)
    with pytest.raises(FileNotFoundError):
        quantize_checkpoint(QuantizeSettings(tmp_path / "gone.pt", tmp_path / "x.pt"))


def test_only_non_default_bit_options_take_the_low_bit_path():
    plain = QuantizeSettings("a.pt", "b.pt")
    assert not plain.low_bit
    assert not QuantizeSettings("a.pt", "b.pt", bits=LowBitSettings(per_channel=False)).low_bit
    for bits in (
        LowBitSettings(weight_bits=7),
        LowBitSettings(activation_bits=7),
        LowBitSettings(rounding="adaround"),
        LowBitSettings(clipping="mse"),
        LowBitSettings(bias_correction=True),
        LowBitSettings(layer_bits={"fc1": 8}),
    ):
        assert QuantizeSettings("a.pt", "b.pt", bits=bits).low_bit, bits
