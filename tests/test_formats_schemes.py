"""Group-wise integers, the k-means codebook, the scheme table, the simulated model, the
_scaled_mm model and the "formats" checkpoint, on tiny tensors and untrained models."""

import pytest
import torch
from torch import nn

from ptqlib.batchnorm import fold_model
from ptqlib.checkpoints import load_checkpoint, save_checkpoint
from ptqlib.errors import InputError
from ptqlib.formats.blocks import join_blocks, split_into_blocks
from ptqlib.formats.checkpoint import format_payload, load_formats, save_formats
from ptqlib.formats.codebook import kmeans_codebook, nearest_centroid
from ptqlib.formats.groupwise import quantize_groupwise
from ptqlib.formats.scaled_mm import scaled_mm_model
from ptqlib.formats.schemes import SCHEMES, get_scheme
from ptqlib.formats.simulation import (
    FormatLayer,
    activation_amax,
    quantize_weights,
    simulate,
    weight_sqnr,
)
from ptqlib.models import SimpleNet, SmallCNN


def untrained(model_class, seed=0):
    torch.manual_seed(seed)
    return model_class().eval()


def test_blocks_pad_with_zeros_and_join_back():
    x = torch.arange(1.0, 11.0).reshape(1, 10)
    blocks = split_into_blocks(x, 4)
    assert blocks.shape == (1, 3, 4) and blocks[0, 2].tolist() == [9, 10, 0, 0]
    assert torch.equal(join_blocks(blocks, 10), x)
    assert split_into_blocks(x, 32).shape == (1, 1, 10)  # one partial block, unpadded


def test_groupwise_rounds_with_the_stored_fp16_scale():
    x = torch.tensor([[0.7, -0.35, 0.1, 0.0, 1.0, 2.0, -3.0, 0.3]])
    quantized = quantize_groupwise(x, group_size=4)
    scales = (torch.tensor([0.7, 3.0]) / 7).half()
    assert torch.equal(quantized.scales, scales[None])
    expected = torch.round(x.reshape(2, 4) / scales.float()[:, None]).clamp(-7, 7).reshape(1, 8)
    assert torch.equal(quantized.values.float(), expected)
    assert quantized.values.dtype == torch.int8 and int(quantized.values.abs().max()) == 7
    assert torch.equal(quantize_groupwise(torch.zeros(2, 8), 4).dequantize(), torch.zeros(2, 8))


def test_bits_per_value_are_computed_from_the_element_and_scale_formats():
    nominal = {name: scheme.nominal_bits_per_value for name, scheme in SCHEMES.items()}
    assert nominal["mxfp8"] == 8.25 and nominal["mxfp6"] == 6.25 and nominal["mxfp4"] == 4.25
    assert nominal["nvfp4"] == 4.5 and nominal["int4-g32"] == 4.5
    assert nominal["int4-g128"] == 4.125 and nominal["fp8-e4m3"] == 8
    x = torch.randn(4, 256)
    assert SCHEMES["mxfp4"].quantize(x).storage_bits == 4 * 256 * 4 + 4 * 8 * 8
    assert SCHEMES["nvfp4"].quantize(x).storage_bits == 4 * 256 * 4 + 4 * 16 * 8 + 32
    assert SCHEMES["int4-g128"].quantize(x).storage_bits == 4 * 256 * 4 + 4 * 2 * 16
    assert SCHEMES["kmeans-16"].quantize(x).storage_bits == 4 * 256 * 4 + 16 * 32


def test_unknown_format_is_refused_with_the_known_names():
    with pytest.raises(InputError, match="unknown format 'fp3'.*mxfp4"):
        get_scheme("fp3")


def test_kmeans_finds_well_separated_clusters_and_is_deterministic():
    x = torch.tensor([0.0, 0.1, -0.1, 5.0, 5.2, 4.8, 10.0, 9.9])
    codebook = kmeans_codebook(x, entries=3)
    assert torch.allclose(codebook.centroids, torch.tensor([0.0, 5.0, 9.95]))
    assert codebook.indices.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    again = kmeans_codebook(x, entries=3)
    assert torch.equal(again.centroids, codebook.centroids)
    assert codebook.index_bits == 2
    # A value exactly halfway between two centroids goes to the lower one.
    assert nearest_centroid(torch.tensor([0.5]), torch.tensor([0.0, 1.0])).tolist() == [0]


def test_the_simulated_model_holds_the_dequantized_weights():
    model = untrained(SimpleNet)
    scheme = SCHEMES["mxfp4"]
    quantized = quantize_weights(model, scheme)
    simulated = simulate(model, scheme, quantized=quantized)
    assert isinstance(simulated.fc1, FormatLayer)
    assert torch.equal(simulated.fc2.layer.weight, quantized["fc2"].dequantize())
    assert torch.equal(model.fc2.bias, simulated.fc2.layer.bias)
    assert 15 < weight_sqnr(model, quantized)["fc1"] < 25  # 4-bit elements: about 20 dB
    with pytest.raises(InputError, match="weight format"):
        simulate(model, SCHEMES["int4-g128"], activation_amax={"fc1": 1.0})


def test_activations_are_rounded_per_block_of_channels():
    model = fold_model(untrained(SmallCNN))
    images = torch.randn(4, 1, 28, 28)
    ranges = activation_amax(model, images)
    assert set(ranges) == {"conv1", "conv2", "fc"}
    assert ranges["conv1"] == float(images.abs().max())
    scheme = SCHEMES["mxfp8"]
    simulated = simulate(model, scheme, ranges)
    seen = {}
    simulated.conv2.layer.register_forward_pre_hook(lambda m, inputs: seen.update(x=inputs[0]))
    simulated(images)
    x = seen["x"]
    assert torch.equal(x, scheme.fake_quantize(x.movedim(1, -1)).movedim(-1, 1))


def test_the_scaled_mm_model_computes_what_the_simulation_does():
    model = untrained(SimpleNet)
    images = torch.randn(64, 1, 28, 28)
    ranges = activation_amax(model, images)
    simulated = simulate(model, SCHEMES["fp8-e4m3"], ranges)
    real = scaled_mm_model(model, ranges)
    with torch.no_grad():
        expected, got = simulated(images), real(images)
    # The same FP8 codes and scales; only the order of the FP32 sums may differ.
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    with pytest.raises(InputError, match="Conv2d"):
        scaled_mm_model(fold_model(untrained(SmallCNN)), {})


@pytest.mark.parametrize("name", list(SCHEMES))
def test_a_formats_checkpoint_reloads_to_the_same_model(name, tmp_path):
    model = fold_model(untrained(SmallCNN))
    scheme = SCHEMES[name]
    images = torch.randn(8, 1, 28, 28)
    ranges = activation_amax(model, images) if scheme.for_activations else None
    path = save_formats(format_payload(model, "cnn", name, ranges), tmp_path / "q.pt")
    loaded = load_formats(path)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), simulate(model, scheme, ranges)(images))
    assert loaded.scheme_name == name and loaded.activation_amax == ranges


def test_a_damaged_formats_checkpoint_is_refused_in_one_sentence(tmp_path):
    model = untrained(SimpleNet)
    payload = format_payload(model, "simplenet", "nvfp4")
    path = save_formats(payload, tmp_path / "q.pt")
    damaged = load_checkpoint(path)
    damaged["layers"]["fc2"]["block_scale_codes"] = damaged["layers"]["fc2"]["block_scale_codes"][
        :, :3
    ]
    save_checkpoint(damaged, tmp_path / "damaged.pt")
    with pytest.raises(InputError, match="layer 'fc2': block_scale_codes must have shape"):
        load_formats(tmp_path / "damaged.pt")
    with pytest.raises(InputError, match="BatchNorm folded"):
        format_payload(untrained(SmallCNN), "cnn", "mxfp4")
    with pytest.raises(InputError, match="does not have the layers of a simplenet"):
        format_payload(nn.Sequential(nn.Linear(2, 2)), "simplenet", "mxfp4")
