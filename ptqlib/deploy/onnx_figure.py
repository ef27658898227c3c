"""A Netron-like picture of an ONNX graph, drawn with matplotlib from the graph's nodes.

The data path (the nodes that carry the images to the logits) runs down the middle, one box
per node; the nodes that only read constants (the weights' and biases' DequantizeLinear)
sit to the right of the node they feed. Every box names the operator and what it holds:
a scale and zero-point, the dtype and shape of an initializer, an attribute.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import onnx
from matplotlib.patches import FancyBboxPatch
from onnx import numpy_helper

COLOURS = {
    "QuantizeLinear": "#f4c7a1",
    "DequantizeLinear": "#c9dcf0",
    "Gemm": "#b9e0b0",
    "QGemm": "#b9e0b0",
    "Relu": "#f6e39a",
    "Flatten": "#dddddd",
}
ROW_HEIGHT, BOX_WIDTH, BOX_HEIGHT = 1.0, 2.9, 0.72
# The constants' boxes are wider: their line ("W: uint8 [128x784], Z=128, per channel")
# is the longest, and must stay inside its box.
SIDE_BOX_WIDTH, SIDE_X = 4.0, 4.05


def _describe(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> str:
    """One or two lines under the operator's name: its constants and attributes."""
    details = []
    if node.op_type == "QuantizeLinear" and node.input[1] in constants:
        scale, zero_point = constants[node.input[1]], constants[node.input[2]]
        details.append(f"S={float(scale):.4g}, Z={int(zero_point)} ({zero_point.dtype})")
    elif node.op_type == "DequantizeLinear" and node.input[0] in constants:
        stored = constants[node.input[0]]
        shape = "x".join(str(size) for size in stored.shape)
        role = "W" if stored.ndim == 2 else "b"
        scales = "per channel" if constants[node.input[1]].size > 1 else "per tensor"
        zero_points = np.unique(constants[node.input[2]]) if len(node.input) > 2 else [0]
        offset = f", Z={int(zero_points[0])}" if len(zero_points) == 1 and zero_points[0] else ""
        return f"{role}: {stored.dtype} [{shape}]{offset}, {scales}"
    for attribute in node.attribute:
        details.append(f"{attribute.name}={onnx.helper.get_attribute_value(attribute)}")
    return ", ".join(details)


def _box(
    axis: plt.Axes, x: float, y: float, title: str, detail: str, colour: str,
    width: float = BOX_WIDTH,
) -> None:  # fmt: skip
    axis.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - BOX_HEIGHT / 2),
            width,
            BOX_HEIGHT,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=colour,
            edgecolor="#555555",
        )
    )
    axis.text(
        x, y + (0.12 if detail else 0), title, ha="center", va="center", fontsize=8.5, weight="bold"
    )
    if detail:
        axis.text(x, y - 0.16, detail, ha="center", va="center", fontsize=6.3)


def _arrow(axis: plt.Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    axis.annotate(
        "", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "#444444", "lw": 0.9}
    )


def draw_onnx_graph(onnx_model: onnx.ModelProto, axis: plt.Axes) -> None:
    """Draw ``onnx_model``'s graph on ``axis`` (see the module docstring)."""
    graph = onnx_model.graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    # A node is on the side if all its inputs are constants (a weight's or bias's DQ).
    side = [node for node in graph.node if all(name in constants for name in node.input)]
    main = [node for node in graph.node if node not in side]
    position: dict[str, tuple[float, float]] = {graph.input[0].name: (0.0, 0.0)}
    _box(axis, 0.0, 0.0, graph.input[0].name, "float32 [batch, 1, 28, 28]", "white")
    for row, node in enumerate(main, start=1):
        y = -row * ROW_HEIGHT
        _box(
            axis,
            0.0,
            y,
            node.op_type,
            _describe(node, constants),
            COLOURS.get(node.op_type, "#eeeeee"),
        )
        for name in node.input:
            if name in position and position[name][0] == 0.0:
                _arrow(axis, (0.0, position[name][1] - BOX_HEIGHT / 2), (0.0, y + BOX_HEIGHT / 2))
        position.update({output: (0.0, y) for output in node.output})
        feeding = [n for n in side if any(output in node.input for output in n.output)]
        for index, feeder in enumerate(feeding):
            side_y = y + (0.45 - 0.9 * index) * ROW_HEIGHT if len(feeding) > 1 else y
            _box(
                axis,
                SIDE_X,
                side_y,
                feeder.op_type,
                _describe(feeder, constants),
                COLOURS.get(feeder.op_type, "#eeeeee"),
                SIDE_BOX_WIDTH,
            )
            _arrow(axis, (SIDE_X - SIDE_BOX_WIDTH / 2, side_y), (BOX_WIDTH / 2, y))
    bottom = -(len(main) + 1) * ROW_HEIGHT
    output = graph.output[0].name
    _box(axis, 0.0, bottom, output, "float32 [batch, 10]", "white")
    _arrow(axis, (0.0, bottom + ROW_HEIGHT - BOX_HEIGHT / 2), (0.0, bottom + BOX_HEIGHT / 2))
    axis.set_xlim(-BOX_WIDTH / 2 - 0.2, SIDE_X + SIDE_BOX_WIDTH / 2 + 0.2)
    axis.set_ylim(bottom - 0.6, 0.6)
    axis.set_aspect("equal")
    axis.axis("off")
