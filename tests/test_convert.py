import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ptqlib.int8_gemm as int8_gemm
from ptqlib.app.model_files import load_model
from ptqlib.calibration import calibrate
from ptqlib.checkpoints import save_checkpoint, save_fp32
from ptqlib.classroom.checkers.int8_conversion import _fixed_point_multiplier_reference
from ptqlib.data import calibration_images
from ptqlib.fake_quant import simulate
from ptqlib.int8_checkpoint import int8_state, load_int8, save_int8
from ptqlib.int8_gemm import carrier_offset
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import convert
from ptqlib.integer_arithmetic import (
    fixed_point_multiplier,
    quantize_bias,
    requantize,
    rounding_right_shift,
)
from ptqlib.models import SimpleNet
from ptqlib.quantization import QParams, qparams_from_range, quantize
from ptqlib.training import load_or_train_baseline

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(offline_data):
    model, _ = load_or_train_baseline(offline_data, progress=False)
    return model


@pytest.fixture(scope="module")
def calibration(baseline, offline_data):
    """torch.ao's defaults for activations: the histogram observer, uint8 affine."""
    return calibrate(baseline, calibration_images(offline_data.train, 500), progress=False)


@pytest.fixture(scope="module")
def int8_model(baseline, calibration):
    return convert(baseline, calibration.qparams)


def activation_qparams(low: float, high: float, dtype: torch.dtype = torch.uint8) -> QParams:
    return qparams_from_range(low, high, dtype)


# --- the fixed-point multiplier and requantization ---------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e3, allow_nan=False, allow_infinity=False))
def test_fixed_point_multiplier_is_31_bits_and_accurate(real):
    multiplier, shift = fixed_point_multiplier(torch.tensor(real, dtype=torch.float64))
    multiplier, shift = int(multiplier), int(shift)
    assert 2**30 <= multiplier < 2**31
    assert abs(multiplier * 2.0**-shift - real) <= real * 2.0**-31
    if real < 1.0:  # the checkers' reference, which students are graded against, takes (0, 1)
        assert (multiplier, shift) == _fixed_point_multiplier_reference(real)


def test_fixed_point_multiplier_that_rounds_up_to_two_to_the_31():
    real = (2**31 - 0.25) / 2**31 * 2.0**-3  # f = 0.99999999988 rounds to 1.0
    multiplier, shift = fixed_point_multiplier(real)
    assert (int(multiplier), int(shift)) == (2**30, 33)


@pytest.mark.parametrize("bad", [0.0, -0.5, math.nan, math.inf])
def test_fixed_point_multiplier_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="real_multiplier"):
        fixed_point_multiplier(bad)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=2**30, max_value=2**31 - 1),
    st.integers(min_value=1, max_value=62),
)
def test_rounding_right_shift_rounds_to_nearest(value, multiplier, shift):
    product = value * multiplier  # exact: Python integers
    got = int(rounding_right_shift(torch.tensor([product]), shift))
    # nearest integer to product / 2^shift, ties upwards, computed with exact integers
    assert got == (2 * product + 2**shift) // 2 ** (shift + 1)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-(2**24), 2**24), min_size=1, max_size=20),
    st.floats(min_value=1e-6, max_value=0.9),
    st.integers(0, 255),
)
def test_requantize_matches_real_multiplication(accumulators, real, zero_point):
    multiplier, shift = fixed_point_multiplier(real)
    acc = torch.tensor(accumulators, dtype=torch.int32)
    got = requantize(acc, multiplier, shift, zero_point, 0, 255)
    expected = (torch.round(acc.double() * real) + zero_point).clamp(0, 255).long()
    # M0 * 2^-n differs from M by a relative 2^-31 at most: only near-ties may differ, by 1
    assert int((got - expected).abs().max()) <= 1


def test_quantize_bias_uses_scale_input_times_weight():
    bias = torch.tensor([0.5, -0.25, 0.0])
    got = quantize_bias(bias, torch.tensor(0.1), torch.tensor([0.01, 0.02, 0.05]))
    assert got.dtype == torch.int32
    assert got.tolist() == [500, -125, 0]


def test_quantize_bias_that_overflows_int32_is_an_error():
    with pytest.raises(ValueError, match="int32"):
        quantize_bias(torch.tensor([1e3]), torch.tensor(1e-4), torch.tensor(1e-4))


# --- one layer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("input_dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("output_dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_linear_equals_the_textbook_formula(input_dtype, output_dtype, relu, per_channel):
    """The folded constants (uint8 carried as int8, bias + rounding + zero-point in one
    int64) give exactly acc = sum (q_x - Z_x) q_w + q_b, then requantize()."""
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(40, 12)
    nn.init.normal_(linear.weight, generator=generator)
    nn.init.normal_(linear.bias, generator=generator)
    x = torch.randn(64, 40, generator=generator)
    input_qparams = activation_qparams(float(x.min()), float(x.max()), input_dtype)
    output_qparams = activation_qparams(-8.0, 8.0, output_dtype)
    weight = linear.weight.detach()
    axis = 0 if per_channel else None
    low, high = weight.aminmax(dim=1) if per_channel else weight.aminmax()
    weight_qparams = qparams_from_range(low, high, torch.int8, symmetric=True, axis=axis)

    weight_q = quantize(weight, weight_qparams)
    bias_q = quantize_bias(linear.bias.detach(), input_qparams.scale, weight_qparams.scale)
    layer = Int8Linear(weight_q, bias_q, weight_qparams, input_qparams, output_qparams, relu)

    x_q = quantize(x, input_qparams)
    carriers = (x_q.to(torch.int16) - carrier_offset(input_dtype)).to(torch.int8)
    got = layer(carriers).long() + carrier_offset(output_dtype)

    accumulator = (x_q.long() - input_qparams.zero_point) @ weight_q.long().T + bias_q.long()
    multiplier, shift = fixed_point_multiplier(
        input_qparams.scale.double() * weight_qparams.scale.double() / output_qparams.scale.double()
    )
    zero_point = int(output_qparams.zero_point)
    low_clamp = zero_point if relu else output_qparams.quant_min
    expected = requantize(accumulator, multiplier, shift, zero_point, low_clamp, 255)
    expected = expected.clamp(output_qparams.quant_min, output_qparams.quant_max)
    assert torch.equal(got, expected)
    if relu:
        assert int(got.min()) >= zero_point  # nothing below real 0


def test_input_quantization_equals_ptqlib_quantize(int8_model):
    images = torch.randn(50, 1, 28, 28) * 3  # also values outside the calibrated range
    offset = carrier_offset(int8_model.input_qparams.dtype)
    expected = quantize(images, int8_model.input_qparams).long() - offset
    assert torch.equal(int8_model.quantize_input(images).long(), expected)


# --- the whole network -------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
def test_integer_model_equals_float_simulation_within_one_lsb(
    baseline, calibration, offline_data, per_channel
):
    model = convert(baseline, calibration.qparams, per_channel=per_channel)
    images = offline_data.test.images
    got = model.quantized_logits(images).long()
    expected = simulate(baseline, calibration.qparams, per_channel).quantized_logits(images)
    assert got.shape == expected.shape == (len(images), 10)
    assert int((got - expected).abs().max()) <= 1
    # and the dequantized logits are within one step of the logits' scale
    step = float(model.output_qparams.scale)
    assert (
        float(
            (model(images) - simulate(baseline, calibration.qparams, per_channel)(images))
            .abs()
            .max()
        )
        <= step * 1.0001
    )


def test_per_tensor_weights_have_one_scale(baseline, calibration):
    model = convert(baseline, calibration.qparams, per_channel=False)
    for layer in model.layers:
        if isinstance(layer, Int8Linear):
            assert layer.weight_scale.dim() == 0 and layer.weight_qparams.axis is None


def test_int8_accuracy_is_close_to_fp32(baseline, int8_model, offline_data):
    from ptqlib.evaluation import accuracy

    assert (
        abs(accuracy(int8_model, offline_data.test) - accuracy(baseline, offline_data.test)) < 0.02
    )


class RecordOps(TorchDispatchMode):
    """Records every aten operation and the dtypes of the tensors it reads and writes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        tensors = [a for a in (*args, result) if isinstance(a, torch.Tensor)]
        self.calls.append((str(func.overloadpacket.__name__), {t.dtype for t in tensors}))
        return result


def test_forward_between_quantize_and_dequantize_is_integer_only(
    int8_model, offline_data, monkeypatch
):
    # With the int8 GEMM (the float GEMM, chosen on CPUs without a fast int8 kernel,
    # computes the same integers in float; tests/test_parity_matrix.py).
    monkeypatch.setattr(int8_gemm, "default_uses_int8_gemm", lambda: True)
    carriers = int8_model.quantize_input(offline_data.test.images[:8])
    with RecordOps() as recorder:
        x = carriers
        for layer in int8_model.layers:
            x = layer(x)
    names = [name for name, _ in recorder.calls]
    assert names.count("_int_mm") == 3  # one int8 x int8 -> int32 product per Linear
    for name, dtypes in recorder.calls:
        assert not any(dtype.is_floating_point for dtype in dtypes), (name, dtypes)


# --- saving and loading ------------------------------------------------------------------------


def test_save_and_load_round_trip(int8_model, offline_data, tmp_path):
    path = save_int8(int8_model, tmp_path / "int8.pt", {"observer": "histogram"})
    loaded, meta = load_int8(path)
    images = offline_data.test.images
    assert torch.equal(loaded.quantized_logits(images), int8_model.quantized_logits(images))
    for ours, theirs in zip(
        int8_model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert ours[0] == theirs[0] and torch.equal(ours[1], theirs[1])
    assert meta == {"observer": "histogram"}
    model, kind, _ = load_model(path)
    assert kind == "int8" and isinstance(model, type(int8_model))


def test_saved_state_is_plain_tensors_and_a_quarter_of_fp32(baseline, int8_model, tmp_path):
    path = save_int8(int8_model, tmp_path / "int8.pt")
    fp32_path = save_fp32(baseline, tmp_path / "fp32.pt")
    payload = torch.load(path, weights_only=True)
    tensors = [
        value
        for layer in payload["layers"]
        for value in layer.values()
        if isinstance(value, torch.Tensor)
    ]
    assert {tensor.dtype for tensor in tensors} == {torch.int8, torch.int32, torch.float32}
    # float32 only for the weight scales: int8 weights, int32 biases
    for layer in payload["layers"][1:]:
        assert layer["weight"].dtype == torch.int8 and layer["bias"].dtype == torch.int32
    ratio = fp32_path.stat().st_size / path.stat().st_size
    assert 3.8 < ratio < 4.0


def test_load_model_reads_fp32_too(baseline, tmp_path):
    path = save_fp32(baseline, tmp_path / "fp32.pt")
    model, kind, _ = load_model(path)
    assert kind == "fp32" and isinstance(model, SimpleNet)


def test_state_names_every_linear(int8_model):
    state = int8_state(int8_model)
    assert [layer.get("name") for layer in state["layers"]] == [None, "fc1", "fc2", "fc3"]
    assert [layer.get("relu") for layer in state["layers"][1:]] == [True, True, False]


# --- bad input ---------------------------------------------------------------------------------


def test_uncalibrated_model_is_a_clear_error(baseline, calibration):
    with pytest.raises(ValueError, match="uncalibrated"):
        convert(baseline, {})
    partial = {k: v for k, v in calibration.qparams.items() if k != "relu2"}
    with pytest.raises(ValueError, match="'relu2'"):
        convert(baseline, partial)


def test_unsupported_layer_is_named(calibration):
    model = nn.Sequential()
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc1", nn.Linear(784, 10))
    model.add_module("drop", nn.Dropout(0.5))
    with pytest.raises(ValueError, match=r"'drop' is a Dropout"):
        convert(model, calibration.qparams)


def test_non_sequential_model_is_a_clear_error(calibration):
    with pytest.raises(TypeError, match="nn.Sequential"):
        convert(nn.Linear(784, 10), calibration.qparams)


def test_relu_without_linear_is_a_clear_error(calibration):
    model = nn.Sequential()
    model.add_module("relu1", nn.ReLU())
    model.add_module("fc1", nn.Linear(784, 10))
    with pytest.raises(ValueError, match="does not follow a Linear"):
        convert(model, calibration.qparams)


def test_nan_weights_are_a_clear_error(baseline, calibration):
    broken = SimpleNet()
    broken.load_state_dict(baseline.state_dict())
    with torch.no_grad():
        broken.fc2.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match="fc2.weight.*NaN"):
        convert(broken, calibration.qparams)


def test_asymmetric_weight_qparams_are_refused(baseline, calibration):
    weight = baseline.fc1.weight.detach()
    low, high = weight.aminmax(dim=1)
    asymmetric = qparams_from_range(low, high, torch.int8, symmetric=False, axis=0)
    qparams = {**calibration.qparams, "fc1.weight": asymmetric}
    with pytest.raises(ValueError, match="symmetric"):
        convert(baseline, qparams)


def test_wrong_input_shape_is_a_clear_error(int8_model):
    with pytest.raises(ValueError, match=r"expected input \[N, 784\]"):
        int8_model(torch.zeros(2, 1, 20, 20))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04 truncated zip"])
def test_corrupt_int8_checkpoint(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a readable"):
        load_int8(path)


def test_truncated_int8_checkpoint(int8_model, tmp_path):
    path = save_int8(int8_model, tmp_path / "int8.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="is not a readable"):
        load_int8(path)


def test_fp32_checkpoint_is_not_an_int8_one(baseline, tmp_path):
    path = save_fp32(baseline, tmp_path / "fp32.pt")
    with pytest.raises(ValueError, match=r"(?i)fp32.*int8"):
        load_int8(path)


def mismatched(state: dict, change) -> dict:
    layers = [dict(layer) for layer in state["layers"]]
    change(layers)
    return {"kind": "int8", **state, "layers": layers}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda layers: layers[2].update(weight=layers[2]["weight"][:, :100]), "layer 'fc2'"),
        (lambda layers: layers[1].update(bias=layers[1]["bias"].float()), "int32"),
        (lambda layers: layers[3].update(weight_scale=-layers[3]["weight_scale"]), "positive"),
        (lambda layers: layers[3]["output"].update(dtype="int4"), "dtype"),
        (lambda layers: layers.pop(2), "layer 'fc3'"),
        (lambda layers: layers[1].update(type="conv"), "unknown layer type"),
    ],
)
def test_mismatched_int8_checkpoint(int8_model, tmp_path, change, message):
    state = int8_state(int8_model)
    state["layers"] = [
        {**layer, "output": dict(layer["output"])} if "output" in layer else layer
        for layer in state["layers"]
    ]
    path = save_checkpoint(mismatched(state, change), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message):
        load_int8(path)


# --- an INT8 layer computes from its stored state, always ---------------------------------------


@pytest.fixture(scope="module")
def two_int8_models(baseline, offline_data):
    """The same FP32 model converted twice, with different activation observers."""
    images = calibration_images(offline_data.train, 300)
    models = []
    for observer in ("minmax", "percentile"):
        qparams = calibrate(baseline, images, activation_observer=observer, progress=False).qparams
        models.append(convert(baseline, qparams))
    return models


def test_load_state_dict_carries_every_constant(two_int8_models, offline_data):
    a, b = two_int8_models
    images = offline_data.test.images[:200]
    assert not torch.equal(a.quantized_logits(images), b.quantized_logits(images))
    copy_of_a = copy.deepcopy(a)
    copy_of_a.load_state_dict(b.state_dict())
    assert torch.equal(copy_of_a.quantized_logits(images), b.quantized_logits(images))
    assert torch.equal(copy_of_a(images), b(images))


def test_to_and_deepcopy_keep_the_integers(int8_model, offline_data):
    images = offline_data.test.images[:200]
    expected = int8_model.quantized_logits(images)
    assert torch.equal(copy.deepcopy(int8_model).quantized_logits(images), expected)
    moved = copy.deepcopy(int8_model).to("cpu").to(torch.float64)  # buffers keep integer dtypes
    assert torch.equal(moved.quantized_logits(images), expected)
