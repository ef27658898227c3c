"""The notebook-08 checkers accept ORT's arithmetic and reject the usual near misses."""

import re

import numpy as np
import onnx
import pytest
import torch

from ptqlib.classroom.checkers.deploy import (
    _qdq_roles,
    check_qdq_reading,
    check_quantize_linear,
    check_requantize_float32,
    quantize_linear_cases,
    requantize_float32_cases,
)

CASES = {
    check_quantize_linear: quantize_linear_cases,
    check_requantize_float32: requantize_float32_cases,
}


def float32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def quantize_dividing(x, scale, zero_point, quant_min, quant_max):
    return (torch.round(x / float32(scale)) + zero_point).clamp(quant_min, quant_max).long()


def quantize_multiplying(x, scale, zero_point, quant_min, quant_max):
    return (torch.round(x * (1 / float32(scale))) + zero_point).clamp(quant_min, quant_max).long()


def requantize_in_float32(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = float32(input_scale) * float32(weight_scale) / float32(output_scale)
    return (torch.round(acc.float() * multiplier).long() + zero_point).clamp(lo, hi)


def requantize_in_float64(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = input_scale * weight_scale / output_scale
    return (torch.round(acc.double() * multiplier).long() + zero_point).clamp(lo, hi)


def requantize_rounding_half_up(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = float32(input_scale) * float32(weight_scale) / float32(output_scale)
    return (torch.floor(acc.float() * multiplier + 0.5).long() + zero_point).clamp(lo, hi)


def requantize_with_reciprocal(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = float32(input_scale) * float32(weight_scale) * (1 / float32(output_scale))
    return (torch.round(acc.float() * multiplier).long() + zero_point).clamp(lo, hi)


def requantize_other_order(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = float32(input_scale) * (float32(weight_scale) / float32(output_scale))
    return (torch.round(acc.float() * multiplier).long() + zero_point).clamp(lo, hi)


def requantize_float64_multiplier(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    multiplier = float32(input_scale * weight_scale / output_scale)
    return (torch.round(acc.float() * multiplier).long() + zero_point).clamp(lo, hi)


def requantize_dequantizing_first(acc, input_scale, weight_scale, output_scale, zero_point, lo, hi):
    real = acc.float() * (float32(input_scale) * float32(weight_scale))
    return (torch.round(real / float32(output_scale)).long() + zero_point).clamp(lo, hi)


def test_ort_arithmetic_passes(capsys):
    check_quantize_linear(quantize_dividing)
    check_requantize_float32(requantize_in_float32)
    assert capsys.readouterr().out.count("PASS") == 2


@pytest.mark.parametrize(
    "checker, near_miss",
    [
        (check_quantize_linear, quantize_multiplying),
        (check_requantize_float32, requantize_in_float64),
        (check_requantize_float32, requantize_rounding_half_up),
        # Each computes M (or the product) in another order than ORT: one bit of M, and an
        # integer now and then (these passed when the cases held only float64 near misses).
        (check_requantize_float32, requantize_with_reciprocal),
        (check_requantize_float32, requantize_other_order),
        (check_requantize_float32, requantize_float64_multiplier),
        (check_requantize_float32, requantize_dequantizing_first),
    ],
)
def test_near_misses_fail_with_a_hint(checker, near_miss):
    with pytest.raises(AssertionError) as failure:
        checker(near_miss)
    message = str(failure.value)
    number = re.search(r"case (\d+) of \d+ failed", message)
    hint = re.search(r"^  hint: +(.+)$", message, re.MULTILINE)
    assert number and hint, message
    cases = CASES[checker]()
    assert hint.group(1) == cases[int(number.group(1)) - 1].hint != ""


def test_the_skeleton_is_reported_not_attempted(capsys):
    def skeleton(*arguments):
        raise NotImplementedError

    check_quantize_linear(skeleton)
    check_requantize_float32(skeleton)
    assert capsys.readouterr().out.count("NOT ATTEMPTED") == 2


def test_a_crashing_attempt_fails():
    def crashing(*arguments):
        raise ZeroDivisionError("oops")

    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        check_quantize_linear(crashing)


def read_qdq(onnx_model):
    zero_points = {t.name: t for t in onnx_model.graph.initializer}
    names = {2: "uint8", 3: "int8", 6: "int32"}  # TensorProto.UINT8, INT8, INT32
    return {
        node.input[0]: (names[zero_points[node.input[2]].data_type], node.input[1])
        for node in onnx_model.graph.node
        if node.op_type == "DequantizeLinear"
    }


def test_qdq_reading_accepts_a_reader_and_rejects_assuming_uint8(capsys):
    check_qdq_reading(read_qdq)
    assert "PASS" in capsys.readouterr().out

    def always_uint8_activations(onnx_model):
        found = read_qdq(onnx_model)
        activations = {"x_q", "y_q"}
        return {k: ("uint8" if k in activations else v[0], v[1]) for k, v in found.items()}

    with pytest.raises(AssertionError, match="case 2 of 2 failed"):
        check_qdq_reading(always_uint8_activations)


def test_qdq_roles_on_ptqlibs_export_of_simplenet():
    from ptqlib.calibration import calibrate
    from ptqlib.deploy.onnx_export import int8_to_onnx
    from ptqlib.int8_model import convert
    from ptqlib.models import SimpleNet

    model = SimpleNet().eval()
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    onnx_model = int8_to_onnx(convert(model, calibrate(model, images, progress=False).qparams))
    roles = _qdq_roles(onnx_model)
    assert roles["fc1_weight_quantized"] == ("uint8", "fc1_weight_scale")  # zero-point 128
    assert roles["fc1_bias_quantized"] == ("int32", "fc1_bias_scale")
    assert roles["input_quantized"][0] == "uint8"
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    # The int32 bias is multiplied by S_x * S_w: the scale of the accumulator.
    expected = constants[roles["input_quantized"][1]] * constants["fc1_weight_scale"]
    assert np.allclose(constants["fc1_bias_scale"], expected, rtol=1e-6)
