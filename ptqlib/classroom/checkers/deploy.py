"""Known-answer checkers for notebook 08: compute the way ONNX Runtime does.

Same use as :mod:`ptqlib.classroom.checkers` (one ``PASS`` line, or an ``AssertionError`` naming the
first failing case, its inputs, the expected answer and a hint)::

    from ptqlib.classroom.checkers.deploy import check_quantize_linear, check_requantize_float32

- :func:`check_quantize_linear`: ``(x, scale, zero_point, quant_min, quant_max) -> q``,
  ONNX's QuantizeLinear: ``x / scale`` in float32 (a division, not a product with 1/scale),
  rounded half to even;
- :func:`check_requantize_float32`: ``(acc, input_scale, weight_scale, output_scale,
  zero_point, quant_min, quant_max) -> q``, ORT's requantization with a float32 multiplier;
- :func:`check_qdq_reading`: ``(onnx_model) -> {tensor: (integer type, scale name)}``, for
  every ``DequantizeLinear`` of a QDQ graph: which integer tensor it reads, of which type,
  multiplied by which scale.

Unlike the checkers of notebooks 02-04, these cases sit *on* the values where the usual
shortcuts differ (ties, float64 instead of float32, 1/S instead of /S): being within one
step is not enough here, the integers must be ORT's exactly. A function that still raises
``NotImplementedError`` (the notebook's skeleton) is reported as not attempted, not failed
(``ptqlib.classroom.checkers.core.run_cases``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ptqlib.classroom.checkers.core import Case, WrongAnswer, compare_integers, draw_uniform
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.ort_arithmetic import (
    float32_multiplier,
    quantize_by_division,
    requantize_float32,
)
from ptqlib.quantization import QParams


def _uint8(scale: float, zero_point: int) -> QParams:
    return QParams(torch.tensor(scale), torch.tensor(zero_point), 0, 255, torch.uint8)


def _near_halfway(scale: torch.Tensor, count: int = 400) -> torch.Tensor:
    """float32 values at and next to the half-way points (k + 1/2) scale."""
    halfway = (torch.arange(count, dtype=torch.float32) - count / 2 + 0.5) * scale
    return torch.cat(
        [halfway, torch.nextafter(halfway, halfway + 1), torch.nextafter(halfway, halfway - 1)]
    )


def _quantize_linear_case(scale: float, zero_point: int) -> Case:
    qparams = _uint8(scale, zero_point)
    values = _near_halfway(qparams.scale)
    by_product = torch.round(values * (1.0 / qparams.scale)) + zero_point
    by_division = quantize_by_division(values, qparams)
    differ = by_product.clamp(0, 255).to(torch.uint8) != by_division
    chosen = torch.cat([values[differ][:6], values[:3], torch.tensor([1e6, -1e6])])
    return Case(
        f"scale {scale}: values where x / S and x * (1 / S) round differently",
        (
            ("x", chosen),
            ("scale", float(qparams.scale)),
            ("zero_point", zero_point),
            ("quant_min", 0),
            ("quant_max", 255),
        ),
        quantize_by_division(chosen, qparams),
        "divide x by the scale in float32 (x * (1 / scale) rounds differently on rare "
        "values), round half to even (torch.round), add the zero-point, clamp",
    )


def quantize_linear_cases() -> list[Case]:
    """Values where ``x / S`` and ``x * (1 / S)`` round to different integers, and ties."""
    return [_quantize_linear_case(*row) for row in ((0.0127, 33), (0.1, 128), (0.0731, 0))]


def draw_quantize_linear_cases(generator: torch.Generator) -> list[Case]:
    """The same kinds of values for random scales and zero-points."""
    return [
        _quantize_linear_case(
            round(float(draw_uniform(generator, 0.005, 0.2)), 5),
            int(torch.randint(0, 256, (), generator=generator)),
        )
        for _ in range(3)
    ]


# At most this many accumulators are searched for those where a shortcut differs from ORT.
SEARCHED_ACCUMULATORS = 2**22


def _shortcuts(scales: list[torch.Tensor]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The usual near misses of ORT's float32 requantization, each ``acc -> round(...)``:
    other orders of the three float32 scales, a float64 multiplier rounded to float32, and
    dequantizing first (``acc S_x S_w``, then divided by ``S_y``)."""
    input_scale, weight_scale, output_scale = scales
    product = input_scale * weight_scale
    multipliers = {
        "M = S_x S_w (1 / S_y)": product * (1 / output_scale),
        "M = S_x (S_w / S_y)": input_scale * (weight_scale / output_scale),
        "M in float64, then float32": torch.tensor(
            float(input_scale) * float(weight_scale) / float(output_scale), dtype=torch.float32
        ),
    }
    shortcuts = {
        name: (lambda acc, m=multiplier: torch.round(acc.float() * m))
        for name, multiplier in multipliers.items()
    }
    shortcuts["acc S_x S_w, then / S_y"] = lambda acc: torch.round(
        (acc.float() * product) / output_scale
    )
    return shortcuts


def _where_shortcuts_differ(
    scales: list[torch.Tensor], multiplier: torch.Tensor, zero_point: int, per_shortcut: int = 2
) -> torch.Tensor:
    """Accumulators whose output lands in 0..255 and where a shortcut of :func:`_shortcuts`
    gives another integer than ORT's arithmetic (``per_shortcut`` of each, where any)."""
    low = int((-zero_point - 1) / float(multiplier)) - 1
    high = int((256 - zero_point) / float(multiplier)) + 1
    step = max(1, -(-(high - low) // SEARCHED_ACCUMULATORS))
    candidates = torch.arange(low, high, step, dtype=torch.int32)
    ort = requantize_float32(candidates, multiplier, zero_point, 0, 255)
    found = []
    for shortcut in _shortcuts(scales).values():
        result = (shortcut(candidates).to(torch.int64) + zero_point).clamp(0, 255)
        found.append(candidates[result != ort][:per_shortcut])
    return torch.cat(found)


def _requantize_float32_case(
    input_scale: float, weight_scale: float, output_scale: float, zero_point: int
) -> Case:
    scales = [
        torch.tensor(s, dtype=torch.float32) for s in (input_scale, weight_scale, output_scale)
    ]
    multiplier = float32_multiplier(*scales)
    accumulators = torch.arange(-(2**20), 2**20, 7, dtype=torch.int32)
    exact = torch.round(
        accumulators.double() * (scales[0].double() * scales[1].double() / scales[2].double())
    )
    ort = torch.round(accumulators.float() * multiplier).double()
    differ = accumulators[exact != ort][:6]
    chosen = torch.cat(
        [
            differ,
            _where_shortcuts_differ(scales, multiplier, zero_point),
            torch.tensor([1, 3, -3, 5, 2**31 - 1, -(2**31)], dtype=torch.int32),
        ]
    )
    arguments = (
        ("acc", chosen),
        ("input_scale", float(scales[0])),
        ("weight_scale", float(scales[1])),
        ("output_scale", float(scales[2])),
        ("zero_point", zero_point),
        ("quant_min", 0),
        ("quant_max", 255),
    )
    return Case(
        f"M = {float(multiplier):.6g}: float32 vs float64 and ties",
        arguments,
        requantize_float32(chosen, multiplier, zero_point, 0, 255),
        "M = float32(float32(S_x * S_w) / S_y); then float32(acc) * M in float32, "
        "round half to even, add Z_y, clamp. float64, 1/S_y, another order of the scales "
        "or dequantizing first gives other integers here",
    )


def requantize_float32_cases() -> list[Case]:
    """Accumulators where float32 and float64 multipliers round differently, where other
    orders of the scales do (:func:`_shortcuts`), and ties."""
    return [
        _requantize_float32_case(*row)
        for row in (
            (0.0127, 0.00097, 0.0655, 0),
            (0.0655, 0.0012, 0.1254, 103),
            (0.5, 1.0, 1.0, 128),  # M = 0.5: odd accumulators are exact ties
            # Scales whose M differs by a bit in every other order: 1/S_y, S_x (S_w / S_y),
            # float64 then float32 (see _shortcuts); the case includes where that shows.
            (0.0952, 0.00058, 0.1056, 0),
        )
    ]


def draw_requantize_float32_cases(generator: torch.Generator) -> list[Case]:
    """The same kinds of accumulators for random scales and zero-points."""
    return [
        _requantize_float32_case(
            round(float(draw_uniform(generator, 0.005, 0.1)), 5),
            round(float(draw_uniform(generator, 0.0005, 0.005)), 6),
            round(float(draw_uniform(generator, 0.02, 0.2)), 5),
            int(torch.randint(0, 256, (), generator=generator)),
        )
        for _ in range(3)
    ]


def check_quantize_linear(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(x, scale, zero_point, quant_min, quant_max) -> q``: ONNX's
    QuantizeLinear, ``clamp(round_half_even(float32(x / scale)) + zero_point)``."""
    run_exercise(QUANTIZE_LINEAR, student_fn)


def check_requantize_float32(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(acc, input_scale, weight_scale, output_scale, zero_point, quant_min,
    quant_max) -> q``: ORT's requantization (see ``ptqlib.ort_arithmetic``)."""
    run_exercise(REQUANTIZE_FLOAT32, student_fn)


# --- Reading a QDQ graph (exercise 3) ---------------------------------------------------------


def _qdq_roles(onnx_model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """For every DequantizeLinear: the tensor it dequantizes -> (the integer type, named by its
    zero-point initializer, and the name of the scale that multiplies it).
    ``tests/test_checkers_deploy.py`` checks this on ptqlib's own export of SimpleNet."""
    initializers = {tensor.name: tensor for tensor in onnx_model.graph.initializer}
    roles = {}
    for node in onnx_model.graph.node:
        if node.op_type == "DequantizeLinear":
            quantized, scale, zero_point = node.input
            element_type = initializers[zero_point].data_type
            roles[quantized] = (helper.tensor_dtype_to_np_dtype(element_type).name, scale)
    return roles


def qdq_graph(
    activation_type: int, per_channel: bool, seed: int, prefix: str = ""
) -> onnx.ModelProto:
    """x -> Q -> DQ -> Gemm(DQ(int8 W), DQ(int32 b)) -> Q -> DQ: one quantized linear layer,
    every tensor name starting with ``prefix``."""
    rng = np.random.default_rng(seed)
    np_type = helper.tensor_dtype_to_np_dtype(activation_type)
    channels = 3 if per_channel else 1
    shape = [channels] if per_channel else []
    weight_scale = rng.uniform(0.01, 0.02, size=channels).astype(np.float32).reshape(shape)
    x_scale = np.array(0.05, dtype=np.float32)

    def named(name: str) -> str:
        return prefix + name

    initializers = [
        numpy_helper.from_array(array, named(name))
        for name, array in (
            ("x_scale", x_scale),
            ("x_zero_point", np.array(0 if per_channel else 7, dtype=np_type)),
            ("w_int8", rng.integers(-127, 128, (3, 4)).astype(np.int8)),
            ("w_scale", weight_scale),
            ("w_zero_point", np.zeros(shape, dtype=np.int8)),
            ("b_int32", rng.integers(-999, 999, 3).astype(np.int32)),
            ("b_scale", (x_scale * weight_scale).astype(np.float32)),
            ("b_zero_point", np.zeros(shape, dtype=np.int32)),
            ("y_scale", np.array(0.2, dtype=np.float32)),
            ("y_zero_point", np.array(3, dtype=np_type)),
        )
    ]
    axis = {"axis": 0} if per_channel else {}
    nodes = [
        helper.make_node(kind, [named(n) for n in inputs], [named(n) for n in outputs], **options)
        for kind, inputs, outputs, options in (
            ("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_q"], {}),
            ("DequantizeLinear", ["x_q", "x_scale", "x_zero_point"], ["x_dq"], {}),
            ("DequantizeLinear", ["w_int8", "w_scale", "w_zero_point"], ["w"], axis),
            ("DequantizeLinear", ["b_int32", "b_scale", "b_zero_point"], ["b"], axis),
            ("Gemm", ["x_dq", "w", "b"], ["y"], {"transB": 1}),
            ("QuantizeLinear", ["y", "y_scale", "y_zero_point"], ["y_q"], {}),
            ("DequantizeLinear", ["y_q", "y_scale", "y_zero_point"], ["y_dq"], {}),
        )
    ]
    graph = helper.make_graph(
        nodes,
        "one_quantized_linear",
        [helper.make_tensor_value_info(named("x"), TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(named("y_dq"), TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def build_qdq_model(description: list) -> tuple[onnx.ModelProto]:
    """The graph a case describes: ``[activation_type, per_channel, seed, prefix]``."""
    return (qdq_graph(*description),)


def _qdq_case(
    name: str, activation_type: int, per_channel: bool, seed: int, prefix: str, hint: str
) -> Case:
    arguments = (("onnx_model", [activation_type, per_channel, seed, prefix]),)
    expected = _qdq_roles(qdq_graph(activation_type, per_channel, seed, prefix))
    return Case(name, arguments, expected, hint)


def qdq_reading_cases() -> list[Case]:
    return [
        _qdq_case(
            "uint8 activations, one weight scale (ptqlib's and PyTorch's choice)",
            TensorProto.UINT8,
            False,
            0,
            "",
            "the integer type of a DequantizeLinear's input is its zero-point's type; the "
            "scale is its second input",
        ),
        _qdq_case(
            "int8 activations, a weight scale per output channel (ORT's S8S8)",
            TensorProto.INT8,
            True,
            1,
            "",
            "activations can be int8 too: read the zero-point's type, do not assume uint8",
        ),
    ]


def draw_qdq_reading_cases(generator: torch.Generator) -> list[Case]:
    """Graphs of both activation types with random tensor names."""
    hint = "for each DequantizeLinear: its first input -> (its zero-point's type, its scale)"
    cases = []
    for activation_type in (TensorProto.UINT8, TensorProto.INT8):
        per_channel = bool(torch.rand((), generator=generator) < 0.5)
        seed = int(torch.randint(2**31, (), generator=generator))
        prefix = f"layer{int(torch.randint(1000, (), generator=generator))}_"
        name = f"a graph whose names start with {prefix!r}"
        cases.append(_qdq_case(name, activation_type, per_channel, seed, prefix, hint))
    return cases


def _compare_roles(case: Case, got: Any) -> None:
    if not isinstance(got, dict):
        raise WrongAnswer(f"your function should return a dict, got {type(got).__name__}")
    got = {key: tuple(value) if isinstance(value, list) else value for key, value in got.items()}
    if set(got) != set(case.expected):
        raise WrongAnswer(
            f"the keys should be the dequantized tensors {sorted(case.expected)}, got {sorted(got)}"
        )
    for tensor, expected in case.expected.items():
        if got[tensor] != expected:
            raise WrongAnswer(f"{tensor!r}: expected {expected}, got {got[tensor]}")


def check_qdq_reading(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(onnx_model) -> dict``: for every DequantizeLinear node, the name of
    the integer tensor it reads -> (its integer type as numpy names it: "uint8", "int8",
    "int32", and the name of the scale that multiplies it)."""
    run_exercise(QDQ_READING, student_fn)


QUANTIZE_LINEAR = Exercise(
    id="quantize_linear",
    notebook="08_deploy",
    function="quantize_linear",
    cases=quantize_linear_cases,
    draw=draw_quantize_linear_cases,
    compare=compare_integers,
    answers=("ptqlib.ort_arithmetic.quantize_by_division",),
)
REQUANTIZE_FLOAT32 = Exercise(
    id="requantize_float32",
    notebook="08_deploy",
    function="requantize_float32",
    cases=requantize_float32_cases,
    draw=draw_requantize_float32_cases,
    compare=compare_integers,
    answers=(
        "ptqlib.ort_arithmetic.requantize_float32",
        "ptqlib.ort_arithmetic.float32_multiplier",
    ),
)
QDQ_READING = Exercise(
    id="qdq_reading",
    notebook="08_deploy",
    function="qdq_roles",
    cases=qdq_reading_cases,
    draw=draw_qdq_reading_cases,
    compare=_compare_roles,
    build=build_qdq_model,
)
