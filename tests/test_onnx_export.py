"""ONNX export and ONNX Runtime: the graph, the checker, and integer parity with ptqlib."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from ptqlib.calibration import calibrate
from ptqlib.data import calibration_images
from ptqlib.deploy.onnx_export import fp32_to_onnx, int8_to_onnx, save_onnx
from ptqlib.deploy.onnx_runtime import (
    OnnxModel,
    layer_parity,
    load_onnx,
    load_onnx_model,
    optimized_op_types,
    with_requantization,
)
from ptqlib.deploy.ort_quantizer import gemm_qparams, ort_quantize_static
from ptqlib.evaluation import agreement, predict
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import Int8Model, convert
from ptqlib.ort_arithmetic import (
    float32_multiplier,
    quantize_by_division,
    requantize_float32,
)
from ptqlib.quantization import RESTRICTED_WEIGHT_RANGE, QParams, quantize
from ptqlib.reference.pt2e import cpu_has_vnni
from ptqlib.training import load_or_train_baseline

# ORT's u8s8 kernels without VNNI add pairs of products in int16 (vpmaddubsw), which can
# saturate: its integers then differ from the exact sum, on purpose (ORT's documentation).
needs_vnni = pytest.mark.skipif(
    not cpu_has_vnni(), reason="ORT's int8 GEMM is exact only with VNNI (no int16 saturation)"
)


@pytest.fixture(scope="module")
def baseline(offline_data):
    model, _ = load_or_train_baseline(offline_data, progress=False)
    return model


@pytest.fixture(scope="module")
def calibration_set(offline_data):
    return calibration_images(offline_data.train, 500)


@pytest.fixture(scope="module")
def calibration(baseline, calibration_set):
    return calibrate(baseline, calibration_set, progress=False)


def act(scale: float, zero_point: int) -> QParams:
    return QParams(torch.tensor(scale), torch.tensor(zero_point), 0, 255, torch.uint8)


@pytest.fixture(scope="module")
def stress_model():
    """One 784 -> 64 layer with int32 biases up to 2^29: accumulators far beyond 2^24, where
    float32 and fixed-point requantization part ways (a real SimpleNet rarely gets there)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-128, 128, (64, 784), generator=generator, dtype=torch.int8)
    scales = 0.01 * (1 + torch.rand(64, generator=generator))
    weight_qparams = QParams(scales, torch.zeros(64, dtype=torch.int64), -128, 127, torch.int8, 0)
    bias = torch.randint(-(2**29), 2**29, (64,), generator=generator, dtype=torch.int32)
    layer = Int8Linear(weight, bias, weight_qparams, act(0.02, 128), act(2000.0, 128), False)
    images = torch.randn(2000, 1, 28, 28, generator=generator)
    return Int8Model(act(0.02, 128), [nn.Flatten(), layer]).eval(), images


# --- the graph ---------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
def test_export_holds_ptqlibs_integers_and_passes_the_checker(baseline, calibration, per_channel):
    model = convert(baseline, calibration.qparams, per_channel=per_channel)
    exported = int8_to_onnx(model)
    onnx.checker.check_model(exported, full_check=True)
    op_types = [node.op_type for node in exported.graph.node]
    assert op_types.count("Gemm") == 3 and op_types.count("Relu") == 2
    assert op_types.count("QuantizeLinear") == 4  # the input and three layer outputs
    batch = exported.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # any batch size
    linears = [layer for layer in model.layers if isinstance(layer, Int8Linear)]
    for layer, found in zip(linears, gemm_qparams(exported), strict=True):
        assert found["weight"].dtype == np.int8 and found["bias"].dtype == np.int32
        assert np.array_equal(found["weight"], layer.weight.numpy())
        assert np.array_equal(found["bias"], layer.bias.numpy())
        expected_shape = (layer.out_features,) if per_channel else ()
        assert found["weight_scale"].shape == expected_shape
        assert np.array_equal(found["weight_scale"], layer.weight_scale.reshape(expected_shape))
        assert float(found["output_scale"]) == float(layer.output_scale)
        assert found["input_scale"].shape == ()  # per tensor: a scalar, not a 1-element axis


def test_ort_runs_each_layer_as_one_integer_kernel(baseline, calibration, tmp_path):
    exported = int8_to_onnx(convert(baseline, calibration.qparams))
    op_types = optimized_op_types(exported, tmp_path)
    assert op_types.count("QGemm") == 3 and "Gemm" not in op_types and "Relu" not in op_types


def test_batch_sizes_and_logits(baseline, calibration, offline_data):
    model = convert(baseline, calibration.qparams, requantization="float32")
    runtime = OnnxModel(int8_to_onnx(model))
    for batch_size in (1, 7, 64):
        images = offline_data.test.images[:batch_size]
        assert torch.equal(runtime(images), model(images))


def test_fp32_export_matches_pytorch(baseline, offline_data):
    runtime = OnnxModel(fp32_to_onnx(baseline))
    assert runtime.kind == "fp32"
    images = offline_data.test.images[:256]
    with torch.no_grad():
        assert torch.allclose(runtime(images), baseline(images), atol=1e-4)


# --- ORT's arithmetic --------------------------------------------------------------------------


def test_requantize_float32_rounds_half_to_even_then_adds_the_zero_point():
    accumulator = torch.tensor([[5, 7, -5, 1000, -1000]], dtype=torch.int32)
    result = requantize_float32(accumulator, torch.tensor(0.5), 10, 0, 255)
    assert result.tolist() == [[12, 14, 8, 255, 0]]  # 2.5 -> 2, 3.5 -> 4, -2.5 -> -2
    with pytest.raises(TypeError, match="accumulator"):
        requantize_float32(accumulator.float(), torch.tensor(0.5), 0, 0, 255)


def test_float32_multiplier_is_a_float32_product_then_division():
    input_scale, weight_scale, output_scale = 0.0127, torch.tensor([0.001, 0.0031]), 0.071
    expected = (np.float32(input_scale) * weight_scale.numpy()) / np.float32(output_scale)
    found = float32_multiplier(torch.tensor(input_scale), weight_scale, torch.tensor(output_scale))
    assert found.dtype == torch.float32 and np.array_equal(found.numpy(), expected)
    with pytest.raises(ValueError, match="output_scale"):
        float32_multiplier(torch.tensor(1.0), weight_scale, torch.tensor(0.0))


def test_quantize_by_division_is_onnx_quantize_linear():
    """ORT's QuantizeLinear divides; torch multiplies by 1/S: the two differ on rare values,
    and quantize_by_division is the one that agrees with ORT."""
    qparams = act(0.0127, 33)
    # Values next to the half-way points (k + 1/2) S, where the two roundings can part.
    halfway = (torch.arange(-40, 230, dtype=torch.float32) + 0.5) * qparams.scale
    values = torch.cat(
        [halfway, torch.nextafter(halfway, halfway + 1), torch.nextafter(halfway, halfway - 1)]
    )
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"])],
        "quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [None])],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [0.0127]),
            helper.make_tensor("zero_point", TensorProto.UINT8, [], [33]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = onnxruntime.InferenceSession(model.SerializeToString())
    (ort_result,) = session.run(None, {"x": values.numpy()})
    ort_result = torch.from_numpy(ort_result)
    assert torch.equal(quantize_by_division(values, qparams), ort_result)
    assert not torch.equal(quantize(values, qparams), ort_result)


# --- parity, layer by layer --------------------------------------------------------------------


@needs_vnni
@pytest.mark.parametrize(
    "per_channel, weight_range",
    [(True, None), (False, None), (True, RESTRICTED_WEIGHT_RANGE)],
)
def test_float32_mode_equals_ort_bit_for_bit_on_the_test_split(
    baseline, calibration, offline_data, per_channel, weight_range
):
    model = convert(
        baseline,
        calibration.qparams,
        per_channel,
        requantization="float32",
        weight_range=weight_range,
    )
    runtime = OnnxModel(int8_to_onnx(model, expose_integers=True))
    rows = layer_parity(model, runtime, offline_data.test.images)
    assert [row.name for row in rows] == [
        "input_quantized",
        "fc1_quantized",
        "fc2_quantized",
        "fc3_quantized",
    ]
    assert rows[1].values == len(offline_data.test) * 128
    for row in rows:
        assert row.identical == 1.0 and row.max_difference == 0, row


@needs_vnni
def test_fixed_point_mode_is_within_one_step_of_ort(baseline, calibration, offline_data):
    model = convert(baseline, calibration.qparams)  # the default: fixed point
    runtime = OnnxModel(int8_to_onnx(model, expose_integers=True))
    for row in layer_parity(model, runtime, offline_data.test.images):
        assert row.within_one == 1.0 and row.max_difference <= 1 and row.identical > 0.999, row
    predictions = predict(model, offline_data.test)
    assert agreement(predict(runtime, offline_data.test), predictions) >= 0.999


@needs_vnni
def test_large_accumulators_separate_the_two_modes(stress_model):
    model, images = stress_model
    runtime = OnnxModel(int8_to_onnx(model, expose_integers=True))
    float32_rows = layer_parity(with_requantization(model, "float32"), runtime, images)
    assert all(row.identical == 1.0 for row in float32_rows)
    fixed_rows = layer_parity(model, runtime, images)
    assert all(row.within_one == 1.0 for row in fixed_rows)
    assert any(row.identical < 1.0 for row in fixed_rows)  # the modes really differ here


def test_layer_parity_needs_the_exposed_integers(baseline, calibration, offline_data):
    model = convert(baseline, calibration.qparams)
    with pytest.raises(ValueError, match="expose_integers"):
        layer_parity(model, OnnxModel(int8_to_onnx(model)), offline_data.test.images[:10])


# --- the conversion options --------------------------------------------------------------------


def test_restricted_weights_and_mode_switch(baseline, calibration, offline_data):
    model = convert(baseline, calibration.qparams, weight_range=RESTRICTED_WEIGHT_RANGE)
    layer = model.layers[1]
    assert layer.weight_range == (-127, 127) and int(layer.weight.min()) >= -127
    largest = baseline.fc1.weight.detach().abs().amax(dim=1)
    assert torch.allclose(layer.weight_scale, largest / 127, rtol=1e-6)
    switched = with_requantization(model, "float32")
    assert switched.requantization == "float32" and switched.layers[1].requantization == "float32"
    assert torch.equal(switched.layers[1].weight, layer.weight)
    assert agreement(predict(switched, offline_data.test), predict(model, offline_data.test)) > 0.99
    with pytest.raises(ValueError, match="requantization"):
        convert(baseline, calibration.qparams, requantization="float16")
    with pytest.raises(ValueError, match="weight_range"):
        convert(baseline, calibration.qparams, weight_range=(0, 255))


def test_ptqlib_reproduces_ort_quantize_static(baseline, calibration_set, offline_data):
    """With ORT's settings (min/max, the -127..127 weight grid), ptqlib's weights and biases
    are ORT's integers and the predictions are the same."""
    theirs = ort_quantize_static(baseline, calibration_set)
    minmax = calibrate(baseline, calibration_set, activation_observer="minmax", progress=False)
    model = convert(
        baseline, minmax.qparams, requantization="float32", weight_range=RESTRICTED_WEIGHT_RANGE
    )
    for ours, found in zip(gemm_qparams(int8_to_onnx(model)), gemm_qparams(theirs), strict=True):
        assert np.array_equal(ours["weight"], found["weight"])
        assert np.array_equal(ours["bias"], found["bias"])
        assert np.allclose(ours["output_scale"], found["output_scale"], rtol=1e-6)
    runtime = OnnxModel(theirs)
    assert runtime.kind == "unknown"
    ours = predict(model, offline_data.test)
    assert agreement(predict(runtime, offline_data.test), ours) >= 0.999


# --- loading files -----------------------------------------------------------------------------


def test_save_and_load_round_trip(baseline, calibration, tmp_path):
    path = save_onnx(int8_to_onnx(convert(baseline, calibration.qparams)), tmp_path / "m.onnx")
    assert load_onnx_model(path).kind == "int8"
    with pytest.raises(ValueError, match="directory"):
        save_onnx(int8_to_onnx(convert(baseline, calibration.qparams)), tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01garbage\xff" * 50, "not a valid ONNX file"),
        (b"hello, I am a text file\n", "not a valid ONNX file"),
        (b"", "not a valid ONNX file"),
    ],
)
def test_bad_onnx_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_onnx(path)


def test_foreign_onnx_models_are_refused(baseline, calibration_set, tmp_path):
    path = tmp_path / "foreign.onnx"
    onnx.save(ort_quantize_static(baseline, calibration_set), path)
    with pytest.raises(ValueError, match="not written by"):
        load_onnx(path)
    with pytest.raises(FileNotFoundError):
        load_onnx(tmp_path / "missing.onnx")


def test_graph_figure_draws_one_box_per_node(baseline, calibration):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ptqlib.deploy.onnx_figure import draw_onnx_graph

    exported = int8_to_onnx(convert(baseline, calibration.qparams))
    figure, axis = plt.subplots()
    draw_onnx_graph(exported, axis)
    assert len(axis.patches) == len(exported.graph.node) + 2  # and the input and the output
    texts = [text.get_text() for text in axis.texts]
    assert texts.count("QGemm") == 0 and texts.count("Gemm") == 3
    assert "W: int8 [128x784], per channel" in texts
    plt.close(figure)
