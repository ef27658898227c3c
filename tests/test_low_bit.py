"""B-bit weights and activations end to end, and the packed checkpoint format."""

import pytest
import torch

from ptqlib.checkpoints import save_checkpoint
from ptqlib.data import calibration_images
from ptqlib.fake_quant import simulate
from ptqlib.int8_checkpoint import int8_state, load_int8, save_int8
from ptqlib.lowbit.rounding import round_to_nearest
from ptqlib.lowbit.weights import (
    LowBitSettings,
    layer_inputs,
    parse_layer_bits,
    quantize_low_bit,
    quantize_weights,
    weight_qparams,
)
from ptqlib.packing import bits_for_range, pack, unpack
from ptqlib.quantization import fake_quantize, mse
from ptqlib.training import load_or_train_baseline

LAYERS = ["fc1", "fc2", "fc3"]


@pytest.fixture(scope="module")
def baseline(offline_data):
    model, _ = load_or_train_baseline(offline_data, progress=False)
    return model


@pytest.fixture(scope="module")
def images(offline_data):
    return calibration_images(offline_data.train, 300)


@pytest.mark.parametrize(
    "weight_bits, activation_bits",
    [(8, 8), (7, 8), (6, 6), (5, 8), (4, 4), (3, 8), (3, 5), (2, 8), (2, 4), (4, 7)],
)
def test_integer_engine_equals_the_simulation_at_every_bit_width(
    baseline, images, offline_data, weight_bits, activation_bits
):
    settings = LowBitSettings(weight_bits=weight_bits, activation_bits=activation_bits)
    quantized = quantize_low_bit(baseline, images, settings, observer="minmax")
    test_images = offline_data.test.images[:500]
    engine = quantized.int8_model.quantized_logits(test_images).long()
    simulated = simulate(quantized.grid_model, quantized.qparams).quantized_logits(test_images)
    assert int((engine - simulated).abs().max()) <= 1
    for layer in quantized.int8_model.layers:
        if hasattr(layer, "weight_range"):
            assert layer.weight_range == (-(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1)
            assert int(layer.weight.min()) >= layer.weight_range[0]
            assert int(layer.weight.max()) <= layer.weight_range[1]
            assert layer.output_qparams.quant_max == 2**activation_bits - 1


@pytest.mark.parametrize("rounding", ["nearest", "gptq", "adaround"])
def test_the_int8_model_holds_exactly_the_chosen_integers(baseline, images, rounding):
    settings = LowBitSettings(
        weight_bits=3,
        rounding=rounding,
        bias_correction=True,
        adaround_kwargs={"iterations": 20},
    )
    quantized = quantize_low_bit(baseline, images, settings, observer="minmax")
    linears = [layer for layer in quantized.int8_model.layers if hasattr(layer, "weight_range")]
    for name, layer in zip(LAYERS, linears, strict=True):
        assert torch.equal(layer.weight, quantized.weights.integers[name])


@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_round_trips_exactly(bits):
    generator = torch.Generator().manual_seed(bits)
    low = -(2 ** (bits - 1)) if bits > 1 else 0
    values = torch.randint(low, low + 2**bits, (37, 13), generator=generator).to(torch.int8)
    packed = pack(values, bits, low)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-37 * 13 * bits // 8)
    assert torch.equal(unpack(packed, bits, low, (37, 13)), values)


def test_packing_puts_the_bits_where_the_docstring_says():
    # 2-bit values 0, 1, 2, 3 (from quant_min 0): bits 00 10 01 11 read LSB first = 0b11100100.
    assert pack(torch.tensor([0, 1, 2, 3]), 2, 0).tolist() == [0b11100100]
    assert pack(torch.tensor([-8, 7]), 4, -8).tolist() == [0xF0]
    assert bits_for_range(-4, 3) == 3 and bits_for_range(-127, 127) == 8


def test_packing_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit in 2 bits"):
        pack(torch.tensor([0, 4]), 2, 0)
    with pytest.raises(ValueError, match="expected 1 uint8 bytes"):
        unpack(torch.zeros(2, dtype=torch.uint8), 2, 0, (2, 2))


@pytest.mark.parametrize("weight_bits", [2, 3, 4, 8])
def test_packed_checkpoints_load_with_weights_only_and_round_trip(
    baseline, images, tmp_path, weight_bits
):
    settings = LowBitSettings(weight_bits=weight_bits, layer_bits={"fc3": 8})
    model = quantize_low_bit(baseline, images, settings, observer="minmax").int8_model
    path = save_int8(model, tmp_path / "q.pt")
    payload = torch.load(path, weights_only=True)
    entries = [entry for entry in payload["layers"] if entry["type"] == "linear"]
    assert ("packed_weight" in entries[0]) == (weight_bits < 8)
    assert "weight" in entries[2]  # fc3 stays 8-bit
    loaded, _ = load_int8(path)
    for (name, mine), (other, theirs) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert name == other and torch.equal(mine, theirs)
    if weight_bits < 8:
        for entry, count in zip(entries[:2], (784 * 128, 128 * 64), strict=True):
            assert entry["packed_weight"]["data"].numel() == -(-count * weight_bits // 8)


def test_packing_shrinks_the_saved_file_in_proportion(baseline, images, tmp_path):
    sizes = {}
    for bits in (8, 4, 2):
        model = quantize_low_bit(baseline, images, LowBitSettings(weight_bits=bits)).int8_model
        sizes[bits] = save_int8(model, tmp_path / f"w{bits}.pt").stat().st_size
    weights = 784 * 128 + 128 * 64 + 64 * 10
    assert sizes[8] - sizes[4] == pytest.approx(weights / 2, abs=200)
    assert sizes[8] - sizes[2] == pytest.approx(weights * 3 / 4, abs=200)


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: entry["packed_weight"].update(bits=3),
        # A bool size was a TypeError from reshape.
        lambda entry: entry["packed_weight"].update(shape=[True, 784 * 128]),
        # Two weights: the packed one silently won.
        lambda entry: entry.update(weight=torch.zeros(128, 784, dtype=torch.int8)),
    ],
    ids=["bits", "bool-size", "packed-and-unpacked"],
)
def test_damaged_packed_weights_are_a_clear_error(baseline, images, tmp_path, damage):
    model = quantize_low_bit(baseline, images, LowBitSettings(weight_bits=2)).int8_model
    state = int8_state(model)
    damage(state["layers"][1])
    save_checkpoint({"kind": "int8", **state, "meta": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="packed weight is damaged"):
        load_int8(tmp_path / "bad.pt")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_nearest_rounding_of_a_gaussian_weight_uses_every_level(bits):
    # Not just the weight at exactly -c: with torch.ao's scale c / ((2^B - 1) / 2) only the
    # most negative weight of a channel reaches -2^(B-1), so B-bit weights use 2^B - 1 levels.
    weight = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    qparams = weight_qparams(weight, bits)
    q = round_to_nearest(weight, qparams).long()
    extremes = weight.abs().argmax(dim=1)
    others = torch.ones_like(q, dtype=torch.bool)
    others[torch.arange(64), extremes] = False
    used = set(q[others].unique().tolist())
    assert used == set(range(qparams.quant_min, qparams.quant_max + 1))
    assert (qparams.quant_min, qparams.quant_max) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [5, 8])
def test_wider_weights_keep_torch_ao_symmetric_scale(bits):
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    qparams = weight_qparams(weight, bits)
    expected = weight.abs().amax(dim=1) / ((2**bits - 1) / 2)
    torch.testing.assert_close(qparams.scale, expected)


def test_full_grid_bits_chooses_the_scale_rule_at_every_width():
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    largest = weight.abs().amax(dim=1)
    torch.testing.assert_close(
        weight_qparams(weight, 2, full_grid_bits=0).scale, largest / 1.5
    )  # torch.ao's rule: ternary 2-bit weights
    torch.testing.assert_close(weight_qparams(weight, 6, full_grid_bits=8).scale, largest / 32)
    settings = LowBitSettings(weight_bits=2, full_grid_bits=0)
    assert settings.full_grid_bits == 0
    with pytest.raises(ValueError, match="full_grid_bits: expected a whole number from 0"):
        LowBitSettings(full_grid_bits=9)


def test_mse_clipping_never_has_a_larger_error_than_minmax(baseline):
    weight = baseline.fc1.weight.detach()
    for bits in (2, 3, 4):
        errors = {
            clipping: mse(
                weight, fake_quantize(weight, weight_qparams(weight, bits, True, clipping))
            )
            for clipping in ("minmax", "mse")
        }
        assert errors["mse"] <= errors["minmax"]
    assert errors["mse"] < 0.9 * errors["minmax"]


def test_bias_correction_removes_the_mean_output_shift(baseline, images):
    settings = LowBitSettings(weight_bits=2, bias_correction=True)
    corrected = quantize_weights(baseline, images, settings).model
    plain = quantize_weights(baseline, images, LowBitSettings(weight_bits=2)).model
    for name in LAYERS:
        expected = layer_inputs(baseline, name, images) @ baseline.get_submodule(name).weight.T
        expected = expected + baseline.get_submodule(name).bias
        shifts = {}
        for label, model in (("corrected", corrected), ("plain", plain)):
            got = model.get_submodule(name)(layer_inputs(model, name, images))
            shifts[label] = (got - expected).mean(0).abs().max().item()
        assert shifts["corrected"] < 1e-4
    assert shifts["plain"] > 100 * shifts["corrected"]


def test_quantize_weights_leaves_the_model_alone_and_is_deterministic(baseline, images):
    before = {name: value.clone() for name, value in baseline.state_dict().items()}
    settings = LowBitSettings(
        weight_bits=2, rounding="adaround", adaround_kwargs={"iterations": 10}
    )
    first = quantize_weights(baseline, images, settings)
    second = quantize_weights(baseline, images, settings)
    for name, value in baseline.state_dict().items():
        assert torch.equal(value, before[name])
    for name in LAYERS:
        assert torch.equal(first.integers[name], second.integers[name])


def test_parse_layer_bits():
    assert parse_layer_bits("fc1=8, fc2=4,fc3=2", LAYERS) == {"fc1": 8, "fc2": 4, "fc3": 2}
    for text, message in [
        ("fc9=4", "unknown layer 'fc9'"),
        ("fc1=4,fc1=8", "given twice"),
        ("fc1=9", "from 2 to 8, got 9"),
        ("fc1", "NAME=BITS"),
        ("fc1=four", "NAME=BITS"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_layer_bits(text, LAYERS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weight_bits": 1}, "weight_bits: expected a whole number of bits from 2 to 8, got 1"),
        ({"weight_bits": 9}, "weight_bits"),
        ({"activation_bits": 3}, "activation_bits: expected a whole number of bits from 4 to 8"),
        ({"rounding": "up"}, "rounding"),
        ({"clipping": "max"}, "clipping"),
        ({"layer_bits": {"fc1": 12}}, "layer_bits"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LowBitSettings(**kwargs)


def test_data_hungry_methods_need_calibration_images(baseline):
    with pytest.raises(ValueError, match="'adaround' needs calibration images"):
        quantize_weights(baseline, None, LowBitSettings(weight_bits=2, rounding="adaround"))
    with pytest.raises(ValueError, match="unknown layer"):
        quantize_weights(baseline, None, LowBitSettings(layer_bits={"fc7": 4}))


def test_per_tensor_low_bit_weights_run_on_the_engine(baseline, images, offline_data):
    settings = LowBitSettings(weight_bits=3, activation_bits=6, per_channel=False)
    quantized = quantize_low_bit(baseline, images, settings, observer="minmax")
    test_images = offline_data.test.images[:300]
    engine = quantized.int8_model.quantized_logits(test_images).long()
    simulation = simulate(quantized.grid_model, quantized.qparams, per_channel=False)
    assert int((engine - simulation.quantized_logits(test_images)).abs().max()) <= 1
    assert all(
        layer.weight_scale.dim() == 0
        for layer in quantized.int8_model.layers
        if hasattr(layer, "weight_scale")
    )
