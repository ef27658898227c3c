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
    ptqlib_integers,
)
from ptqlib.deploy.ort_quantizer import gemm_qparams, ort_quantize_static
from ptqlib.deploy.u8s8_saturation import (
    ort_u8s8_saturates,
    pair_saturating_products,
    saturation_counts,
    u8s8_integers,
)
from ptqlib.errors import InputError
from ptqlib.evaluation import agreement, predict
from ptqlib.int8_layers import Int8Linear, rebuilt
from ptqlib.int8_model import Int8Model, convert, with_requantization
from ptqlib.models import SimpleNet
from ptqlib.ort_arithmetic import (
    float32_multiplier,
    quantize_by_division,
    requantize_float32,
)
from ptqlib.quantization import RESTRICTED_WEIGHT_RANGE, QParams, quantize
from ptqlib.training import load_or_train_baseline


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
    layer = Int8Linear(
        weight=weight,
        bias=bias,
        weight_qparams=weight_qparams,
        input_qparams=act(0.02, 128),
        output_qparams=act(2000.0, 128),
        relu=False,
    )
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
        # uint8 weights q_w + 128 with zero-point 128: ptqlib's int8 integers, shifted.
        assert found["weight"].dtype == np.uint8 and found["bias"].dtype == np.int32
        assert np.all(found["weight_zero_point"] == 128)
        assert np.array_equal(found["weight_integers"], layer.weight.numpy())
        assert np.array_equal(found["bias"], layer.bias.numpy())
        expected_shape = (layer.out_features,) if per_channel else ()
        assert found["weight_scale"].shape == expected_shape
        assert found["weight_zero_point"].shape == expected_shape
        assert np.array_equal(found["weight_scale"], layer.weight_scale.reshape(expected_shape))
        assert float(found["output_scale"]) == float(layer.output_scale)
        assert found["input_scale"].shape == ()  # per tensor: a scalar, not a 1-element axis


def test_int8_weights_are_orts_u8s8_layout(baseline, calibration):
    model = convert(baseline, calibration.qparams)
    found = gemm_qparams(int8_to_onnx(model, weight_dtype="int8"))[0]
    assert found["weight"].dtype == np.int8 and np.all(found["weight_zero_point"] == 0)
    assert np.array_equal(found["weight"], model.layers[1].weight.numpy())
    with pytest.raises(InputError, match="weight_dtype.*'int4'"):
        int8_to_onnx(model, weight_dtype="int4")


@pytest.mark.parametrize("weight_dtype", ["uint8", "int8"])
def test_ort_runs_each_layer_as_one_integer_kernel(baseline, calibration, tmp_path, weight_dtype):
    exported = int8_to_onnx(convert(baseline, calibration.qparams), weight_dtype=weight_dtype)
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


def test_fixed_point_mode_is_within_one_step_of_ort(baseline, calibration, offline_data):
    model = convert(baseline, calibration.qparams)  # the default: fixed point
    runtime = OnnxModel(int8_to_onnx(model, expose_integers=True))
    for row in layer_parity(model, runtime, offline_data.test.images):
        assert row.within_one == 1.0 and row.max_difference <= 1 and row.identical > 0.999, row
    predictions = predict(model, offline_data.test)
    assert agreement(predict(runtime, offline_data.test), predictions) >= 0.999


def test_large_accumulators_separate_the_two_modes(stress_model):
    model, images = stress_model
    runtime = OnnxModel(int8_to_onnx(model, expose_integers=True))
    float32_rows = layer_parity(with_requantization(model, "float32"), runtime, images)
    assert all(row.identical == 1.0 for row in float32_rows)
    fixed_rows = layer_parity(model, runtime, images)
    assert all(row.within_one == 1.0 for row in fixed_rows)
    assert any(row.identical < 1.0 for row in fixed_rows)  # the modes really differ here


# --- int16 saturation in ORT's U8S8 kernels ------------------------------------------------------


def test_pair_saturating_products_clamp_each_pair_to_int16():
    activations = torch.tensor([[255, 255, 1, 2, 255], [255, 255, 255, 255, 7]])
    weight = torch.tensor([[127, 127, 3, 4, 5], [-128, -128, 1, 1, 1]], dtype=torch.int8)
    found = pair_saturating_products(activations, weight)
    # Row 0: pairs (255*127*2 -> 32767), (1*3 + 2*4), (255*5 + 0: K is odd, padded with 0).
    assert found["sums"].tolist() == [
        [32767 + 11 + 1275, -32768 + 3 + 255 * 1],
        [32767 + 255 * 7 + 7 * 5, -32768 + 510 + 7],
    ]
    assert found["saturated"] == 4 and found["pairs"] == 2 * 2 * 3
    with pytest.raises(InputError, match="0..255"):
        pair_saturating_products(activations + 1, weight)
    with pytest.raises(InputError, match="int8"):
        pair_saturating_products(activations, weight.to(torch.int16))


def test_seven_bit_weights_never_saturate():
    """ORT's reduce_range advice: with |q_w| <= 64 a pair is at most 2 * 255 * 64 < 2^15."""
    generator = torch.Generator().manual_seed(1)
    activations = torch.full((4, 64), 255)
    weight = torch.randint(-64, 64, (8, 64), generator=generator, dtype=torch.int8)
    weight[0] = -64
    found = pair_saturating_products(activations, weight)
    assert found["saturated"] == 0
    assert torch.equal(found["sums"], activations @ weight.long().t())


def test_ort_u8s8_integers_are_exact_with_vnni_and_the_saturating_sum_without(
    baseline, calibration, offline_data
):
    """ORT's U8S8 integers (int8 weights) on this CPU: the exact ones where it has VNNI or AMX
    (or is not x86), the pair-saturating sum of vpmaddubsw where it has not, bit for bit."""
    model = convert(baseline, calibration.qparams, requantization="float32")
    runtime = OnnxModel(int8_to_onnx(model, expose_integers=True, weight_dtype="int8"))
    images = offline_data.test.images[:300]
    saturating = ort_u8s8_saturates()
    expected = u8s8_integers if saturating else ptqlib_integers
    for row in layer_parity(model, runtime, images, integers=expected):
        assert row.identical == 1.0, row
    fc1 = saturation_counts(model, images)[0]
    assert fc1["layer"] == "fc1" and fc1["changed"] > 0  # the two really differ on MNIST
    if saturating:
        exact_rows = layer_parity(model, runtime, images)
        assert exact_rows[1].identical < 1.0  # fc1: ORT's U8S8 integers are not exact here


def test_u8s8_emulation_refuses_what_it_does_not_model(stress_model):
    model, images = stress_model
    layer = model.layers[1]
    signed = QParams(torch.tensor(0.02), torch.tensor(0), -128, 127, torch.int8)
    int8_input = Int8Model(signed, [nn.Flatten(), rebuilt(layer, input_qparams=signed)]).eval()
    with pytest.raises(InputError, match="uint8 activations"):
        u8s8_integers(int8_input, images[:2])
    with pytest.raises(TypeError, match="Int8Model"):
        u8s8_integers(layer, images[:2])
    assert u8s8_integers(model, images[:2])["linear_quantized"].shape == (2, 64)


@pytest.mark.parametrize("bits", [4, 6])
def test_narrow_activations_equal_ort_bit_for_bit(bits):
    """A4 and A6 (uint8 0..15, 0..63): QuantizeLinear saturates at 0..255 only, so the export
    clamps each activation with a Clip. Calibrated on half the range, so that many values
    fall outside it: without the Clip 26-58% of the integers agreed, up to 61 steps apart.
    No VNNI needed: 6-bit activations times int8 weights cannot saturate int16 pair sums."""
    torch.manual_seed(0)
    model = SimpleNet().eval()
    images = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 3 - 0.4
    narrow = {"quant_min": 0, "quant_max": 2**bits - 1}
    qparams = calibrate(
        model, images[:200] * 0.5, "minmax", activation_kwargs=narrow, progress=False
    ).qparams
    int8_model = convert(model, qparams, requantization="float32")
    exported = int8_to_onnx(int8_model, expose_integers=True)
    assert [node.op_type for node in exported.graph.node].count("Clip") == 4
    for row in layer_parity(int8_model, OnnxModel(exported), images[200:]):
        assert row.identical == 1.0 and row.max_difference == 0, row
    eight_bits = convert(model, calibrate(model, images[:200], "minmax", progress=False))
    assert "Clip" not in [node.op_type for node in int8_to_onnx(eight_bits).graph.node]


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
    are ORT's integers and the predictions are the same, on every CPU once ORT's U8S8 kernels
    are kept from saturating (session.x64quantprecision; a no-op with VNNI)."""
    theirs = ort_quantize_static(baseline, calibration_set)
    minmax = calibrate(baseline, calibration_set, activation_observer="minmax", progress=False)
    model = convert(
        baseline, minmax.qparams, requantization="float32", weight_range=RESTRICTED_WEIGHT_RANGE
    )
    for ours, found in zip(gemm_qparams(int8_to_onnx(model)), gemm_qparams(theirs), strict=True):
        assert np.array_equal(ours["weight_integers"], found["weight"])
        assert np.array_equal(ours["bias"], found["bias"])
        assert np.allclose(ours["output_scale"], found["output_scale"], rtol=1e-6)
    precise = OnnxModel(theirs, x64_quant_precision=True)
    assert precise.kind == "unknown"
    ours = predict(model, offline_data.test)
    assert agreement(predict(precise, offline_data.test), ours) >= 0.999
    if not ort_u8s8_saturates():  # without saturation the default session is exact too
        assert agreement(predict(OnnxModel(theirs), offline_data.test), ours) >= 0.999


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
    assert "W: uint8 [128x784], Z=128, per channel" in texts
    # Every line of text lies inside a box, at the size the notebook draws it.
    figure.set_size_inches(7.2, 10.5)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [patch.get_window_extent(renderer) for patch in axis.patches]
    for text in axis.texts:
        if not text.get_text():
            continue  # an arrow
        extent = text.get_window_extent(renderer)
        inside = [
            box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0
            and extent.y1 <= box.y1
            for box in boxes
        ]  # fmt: skip
        assert any(inside), text.get_text()
    plt.close(figure)


def test_a_model_that_does_not_take_an_mnist_image_is_refused():
    """The graph's input is ``[batch, 1, 28, 28]``: a model whose first Linear takes 16
    features failed inside onnx's shape inference (InferenceError, "Dimension mismatch")."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 3)).eval()
    inputs = torch.randn(20, 16)
    int8_model = convert(model, calibrate(model, inputs, "minmax", progress=False))
    with pytest.raises(InputError, match="layer '0' takes 16 features; the ONNX graph's input"):
        int8_to_onnx(int8_model)
