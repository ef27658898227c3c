"""Tests for notebook 04's checkers: the int32 bias, the zero-point correction, a whole
integer layer and the fixed-point multiplier that rounds up to 2**31. Right answers pass
(written as a student would, and by the library), each classic mistake fails and is named."""

from __future__ import annotations

import math

import pytest
import torch

from ptqlib.classroom import checkers
from ptqlib.classroom.checkers import (
    check_fixed_point_multiplier,
    check_int32_bias,
    check_integer_layer,
    check_zero_point_correction,
    integer_layer,
    integer_layer_parts,
)
from ptqlib.int8_layers import Int8Linear
from ptqlib.integer_arithmetic import fixed_point_multiplier, quantize_bias
from ptqlib.quantization import QParams, qparams_from_range, quantize

# --- Correct implementations, written the way a student would ----------------------------


def good_bias(bias, input_scale, weight_scale, output_scale):
    return torch.round(bias / (input_scale * weight_scale)).to(torch.int32)


def good_correction(weight, input_zero_point):
    return (-input_zero_point * weight.int().sum(dim=1)).to(torch.int32)


def good_layer(q_x, q_w, q_b, input_zero_point, multiplier, shift, output_zero_point, relu):
    acc = (q_x.int() - input_zero_point) @ q_w.int().T + q_b
    rounded = (acc.long() * multiplier + (1 << (shift - 1))) >> shift
    lowest = output_zero_point if relu else -128
    return (rounded + output_zero_point).clamp(lowest, 127).to(torch.int8)


def good_fixed_point(multiplier, bits):
    fraction, exponent = math.frexp(multiplier)
    m0 = round(fraction * 2**bits)
    if m0 == 2**bits:
        return 2 ** (bits - 1), bits - 1 - exponent
    return m0, bits - exponent


@pytest.mark.parametrize(
    ("checker", "student_fn"),
    [
        (check_int32_bias, good_bias),
        (check_zero_point_correction, good_correction),
        (check_integer_layer, good_layer),
        (check_fixed_point_multiplier, good_fixed_point),
    ],
)
def test_a_correct_implementation_passes(checker, student_fn, capsys):
    checker(student_fn)
    assert capsys.readouterr().out.startswith(f"{checker.__name__}: PASS (")


def test_other_correct_variants_pass(capsys):
    """Float64 requantization and float32 bias arithmetic pass too: no case is near a tie."""

    def layer_in_float(q_x, q_w, q_b, input_zero_point, multiplier, shift, output_zero_point, relu):
        acc = ((q_x.double() - input_zero_point) @ q_w.double().T + q_b.double()).long()
        real = multiplier.double() * 2.0 ** (-shift.double())
        rounded = torch.round(acc.double() * real).long()
        lowest = output_zero_point if relu else -128
        return (rounded + output_zero_point).clamp(lowest, 127).to(torch.int8)

    def bias_in_float32(bias, input_scale, weight_scale, output_scale):
        scale = torch.tensor(input_scale, dtype=torch.float32) * weight_scale
        return torch.round(bias / scale).to(torch.int32)

    check_integer_layer(layer_in_float)
    check_int32_bias(bias_in_float32)
    assert capsys.readouterr().out.count("PASS") == 2


# --- The known answers equal the library's ------------------------------------------------


def test_the_library_passes_every_checker(capsys):
    def library_bias(bias, input_scale, weight_scale, output_scale):
        return quantize_bias(bias, torch.tensor(input_scale), weight_scale)

    def library_fixed_point(multiplier, bits):
        if bits != 31:  # ptqlib's multipliers have 31 bits
            return good_fixed_point(multiplier, bits)
        m0, shift = fixed_point_multiplier(multiplier)
        return int(m0), int(shift)

    check_int32_bias(library_bias)
    check_fixed_point_multiplier(library_fixed_point)
    assert capsys.readouterr().out.count("PASS") == 2


def int8_qparams(low: float, high: float) -> QParams:
    return qparams_from_range(torch.tensor(low), torch.tensor(high), torch.int8)


@pytest.mark.parametrize("relu", [False, True])
def test_the_layer_reference_equals_int8_linear(relu):
    """The checker's layer (int8 in, int8 out) computes exactly what Int8Linear computes."""
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(12, 40, generator=generator) * 0.2
    bias = torch.randn(12, generator=generator) * 0.5
    weight_qparams = qparams_from_range(
        weight.min(dim=1).values, weight.max(dim=1).values, torch.int8, symmetric=True, axis=0
    )
    input_qparams, output_qparams = int8_qparams(-1.0, 3.0), int8_qparams(-2.5, 4.0)
    q_w = quantize(weight, weight_qparams)
    q_b = quantize_bias(bias, input_qparams.scale, weight_qparams.scale)
    layer = Int8Linear(
        weight=q_w,
        bias=q_b,
        weight_qparams=weight_qparams,
        input_qparams=input_qparams,
        output_qparams=output_qparams,
        relu=relu,
    )
    q_x = torch.randint(-128, 128, (64, 40), generator=generator, dtype=torch.int8)
    expected = layer(q_x)
    got = integer_layer._integer_layer_reference(
        q_x,
        q_w,
        q_b,
        int(input_qparams.zero_point),
        layer.multiplier,
        layer.shift,
        int(output_qparams.zero_point),
        relu,
    )
    assert torch.equal(got.to(torch.int8), expected)
    assert int(output_qparams.zero_point) != 0 and len(set(got.flatten().tolist())) > 50
    # The correction a carrier-free int8 input needs is the library's too.
    reference = integer_layer_parts._zero_point_correction_reference
    assert torch.equal(
        reference(q_w, int(input_qparams.zero_point)).int(), layer.carrier_correction()
    )


def test_layer_and_bias_cases_are_far_from_rounding_ties():
    cases = checkers.integer_layer_cases()
    # The outputs reach both ends of int8 somewhere, and the ReLU's lower bound matters.
    assert max(int(case.expected.max()) for case in cases) == 127
    assert min(int(case.expected.min()) for case in cases) == -128
    for case in cases:
        args = dict(case.arguments)
        acc = (args["q_x"].long() - args["input_zero_point"]) @ args["q_w"].long().T
        acc = acc + args["q_b"].long()
        remainder = (acc * args["multiplier"]) % (1 << args["shift"])
        distance = (remainder.double() / 2.0 ** args["shift"].double() - 0.5).abs()
        assert float(distance.min()) > 1e-3, case.name
        if args["relu"]:
            assert int(case.expected.min()) == args["output_zero_point"], case.name
    for case in checkers.int32_bias_cases():
        args = dict(case.arguments)
        steps = args["bias"].double() / (args["input_scale"] * args["weight_scale"].double())
        assert float(((steps.abs() % 1.0) - 0.5).abs().min()) > 0.04, case.name


def test_fixed_point_round_up_cases_really_round_up():
    rounding_up = [c for c in checkers.fixed_point_cases() if "rounds up" in c.name]
    assert len(rounding_up) == 3
    for case in rounding_up:
        multiplier, bits = dict(case.arguments)["multiplier"], dict(case.arguments)["bits"]
        fraction, _ = math.frexp(multiplier)
        assert round(fraction * 2**bits) == 2**bits
        assert case.expected[0] == 2 ** (bits - 1)


# --- Classic mistakes fail, and the message names the mistake ------------------------------


def failure_message(checker, student_fn) -> str:
    with pytest.raises(AssertionError) as caught:
        checker(student_fn)
    return str(caught.value)


@pytest.mark.parametrize(
    ("wrong_bias", "named"),
    [
        (lambda b, sx, sw, sy: torch.round(b / sw).to(torch.int32), "divide by S_w alone"),
        (lambda b, sx, sw, sy: torch.round(b / sy).to(torch.int32), "use the output scale S_y"),
        (
            lambda b, sx, sw, sy: torch.round(b / (sx * sw)).clamp(-128, 127).to(torch.int32),
            "clamp the bias to int8",
        ),
        (
            lambda b, sx, sw, sy: torch.round(b / (sx * sw)).long().to(torch.int8),
            "cast the bias to int8, which wraps around",
        ),
        (lambda b, sx, sw, sy: (b / (sx * sw)).to(torch.int32), "truncate"),
    ],
)
def test_bias_mistakes_are_named(wrong_bias, named):
    message = failure_message(check_int32_bias, wrong_bias)
    assert "check_int32_bias: case" in message
    assert f"your answer is exactly what you get if you {named}" in message


def test_bias_in_int64_has_the_right_values_but_the_wrong_dtype():
    message = failure_message(
        check_int32_bias, lambda b, sx, sw, sy: torch.round(b / (sx * sw)).to(torch.int64)
    )
    assert "the values are right but the dtype is torch.int64" in message


@pytest.mark.parametrize(
    ("wrong_correction", "named"),
    [
        (lambda w, z: (z * w.int().sum(dim=1)).int(), "use the wrong sign"),
        (lambda w, z: w.int().sum(dim=1), "forget the zero-point factor"),
        (lambda w, z: torch.zeros(w.shape[0], dtype=torch.int32), "forget the correction"),
        (
            lambda w, z: -z * w.sum(dim=1, dtype=torch.int8).int(),
            "sum in int8, which wraps around",
        ),
    ],
)
def test_zero_point_mistakes_are_named(wrong_correction, named):
    message = failure_message(check_zero_point_correction, wrong_correction)
    assert f"your answer is exactly what you get if you {named}" in message


def test_summing_the_correction_over_the_wrong_axis_fails_on_its_shape():
    message = failure_message(
        check_zero_point_correction, lambda w, z: (-z * w.int().sum(dim=0)).int()
    )
    assert "the shape is (6,), expected (4,)" in message
    assert "sum over dim=1" in message


def layer_with(lowest=None, add_zero_y=True, use_zero_x=True, round_half=True):
    """A wrong layer: the classic mistakes, one at a time."""

    def layer(q_x, q_w, q_b, input_zero_point, multiplier, shift, output_zero_point, relu):
        acc = (q_x.long() - (input_zero_point if use_zero_x else 0)) @ q_w.long().T + q_b
        half = (1 << (shift - 1)) if round_half else 0
        rounded = (acc * multiplier + half) >> shift
        low = output_zero_point if relu else -128
        if relu and lowest is not None:
            low = lowest
        return (rounded + (output_zero_point if add_zero_y else 0)).clamp(low, 127).to(torch.int8)

    return layer


@pytest.mark.parametrize(
    ("wrong_layer", "case", "named"),
    [
        (layer_with(add_zero_y=False), 1, "forget to add Z_y after rounding"),
        (layer_with(lowest=0), 2, "clamp the ReLU at 0 instead of Z_y"),
        (layer_with(lowest=0, add_zero_y=False), 1, "forget to add Z_y after rounding"),
        (layer_with(use_zero_x=False), 1, "forget the input zero-point"),
        (layer_with(round_half=False), 1, "shift without adding 2**(n-1) first"),
    ],
)
def test_layer_mistakes_are_named(wrong_layer, case, named):
    message = failure_message(check_integer_layer, wrong_layer)
    assert f"case {case} of 3 failed" in message
    assert f"your answer is exactly what you get if you {named}" in message


def test_a_layer_without_the_relu_clamp_is_named():
    def no_relu(q_x, q_w, q_b, input_zero_point, multiplier, shift, output_zero_point, relu):
        return layer_with()(
            q_x, q_w, q_b, input_zero_point, multiplier, shift, output_zero_point, False
        )

    message = failure_message(check_integer_layer, no_relu)
    assert "case 2 of 3 failed: fused ReLU with a negative Z_y" in message
    assert "leave out the ReLU's lower clamp at Z_y" in message


def test_a_layer_returning_int32_has_the_wrong_dtype():
    def int32_layer(*arguments):
        return good_layer(*arguments).to(torch.int32)

    assert "dtype is torch.int32" in failure_message(check_integer_layer, int32_layer)


def test_m0_rounding_up_to_2_to_the_31_is_named():
    def without_renormalising(multiplier, bits):
        fraction, exponent = math.frexp(multiplier)
        return round(fraction * 2**bits), bits - exponent

    message = failure_message(check_fixed_point_multiplier, without_renormalising)
    assert "case 9 of 11 failed: m0 rounds up to 2**31" in message
    assert "needs 32 bits" in message
    assert "m0 = 2**(bits-1) and a shift one smaller" in message


@pytest.mark.parametrize(
    "checker", [check_int32_bias, check_zero_point_correction, check_integer_layer]
)
def test_an_untouched_skeleton_is_not_attempted(checker, capsys):
    def skeleton(*arguments):
        # YOUR CODE HERE
        raise NotImplementedError

    checker(skeleton)
    assert "NOT ATTEMPTED" in capsys.readouterr().out
