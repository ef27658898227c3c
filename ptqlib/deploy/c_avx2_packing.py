"""The AVX2 file's data (notebook 10): weights packed the way its instructions read them,
and the constants of its exact vectorized requantization.

**Packed weights**, zero-padded to whole panels of 8 outputs (one 256-bit register of int32
or float lanes): INT8 ``[out/8][in/2][8][2]`` (one 16-byte load: 8 outputs x 2 inputs, for
``vpmovsxbw`` + ``vpmaddwd``), FP32 ``[out/8][in][8]`` (one ``vfmadd231ps`` per input).
Each layer's input rows are as wide as the previous layer's panels (its padded outputs);
:func:`constants_text` writes the packed arrays into the file and :func:`activation_plan`
lays out one image's activations in the arena.

**Requantization, vectorized and exact.** Per 8 outputs, ``vpmuldq`` forms the 64-bit
products ``acc M0`` of the even lanes and, after a 32-bit shift, of the odd ones. AVX2 has
no 64-bit *arithmetic* right shift (``vpsravq`` is AVX-512), only the logical ``vpsrlvq``,
so the value is made non-negative first:

    u = (acc M0 + 2^(n-1) + 2^62) >>logical n          q = clamp(u + (Z_y - 2^(62-n)), lo, hi)

**Why this is exact.** |acc| <= 2^31 and 0 <= M0 < 2^31, so |acc M0| < 2^62, and
``w = acc M0 + 2^(n-1) + 2^62`` lies in (0, 2^63 + 2^61): as an unsigned 64-bit number it is
w itself (the vector addition wraps modulo 2^64, and w < 2^64), so the logical shift gives
floor(w / 2^n). For 1 <= n <= 62, 2^62 = 2^(62-n) 2^n is a multiple of 2^n, so
floor(w / 2^n) = floor((acc M0 + 2^(n-1)) / 2^n) + 2^(62-n): the arithmetic shift of the
portable C, plus a constant that the offset takes away. The clamp runs on u < 2^63 with
signed 64-bit compares against ``lo - offset`` and ``hi - offset``, so ``u + offset`` lands
in [lo, hi] and its low 32 bits are the result.
"""

from __future__ import annotations

import torch

from ptqlib.deploy.c_files import c_array
from ptqlib.deploy.c_graph import CLayer
from ptqlib.deploy.c_memory import ArenaPlan, chain_buffers, plan_arena

PANEL = 8  # outputs per 256-bit register (int32 or float lanes)
HALF = 2**62


def panels(outputs: int) -> int:
    return -(-outputs // PANEL)


def padded_inputs(layer: CLayer, index: int, layers: list[CLayer], kind: str) -> int:
    """How many input values a row of the layer's input holds: the previous layer's panels
    (its padded outputs), or the image rounded up to pairs (INT8) for the first layer."""
    if index > 0:
        return panels(layers[index - 1].outputs) * PANEL
    return layer.inputs + layer.inputs % 2 if kind == "int8" else layer.inputs


def pack_weights(weight: torch.Tensor, width: int, kind: str) -> torch.Tensor:
    """``weight [out, in]`` zero-padded to ``[panels * 8, width]`` and packed: INT8
    ``[panels][width/2][8][2]``, FP32 ``[panels][width][8]`` (module docstring)."""
    out, inputs = weight.shape
    padded = torch.zeros(panels(out) * PANEL, width, dtype=weight.dtype)
    padded[:out, :inputs] = weight
    by_panel = padded.reshape(panels(out), PANEL, width)
    if kind == "int8":  # [p][o][k/2][2] -> [p][k/2][o][2]
        return by_panel.reshape(panels(out), PANEL, width // 2, 2).permute(0, 2, 1, 3)
    return by_panel.permute(0, 2, 1)  # [p][k][o]


def even_odd(values: torch.Tensor) -> torch.Tensor:
    """Per panel, the even lanes then the odd ones: the order of ``vpmuldq``'s results."""
    by_panel = values.reshape(-1, PANEL // 2, 2)
    return torch.cat([by_panel[:, :, 0], by_panel[:, :, 1]], dim=1)


def requantization_table(layer: CLayer) -> torch.Tensor:
    """``[panels][6][8]`` int64: M0, 2^(n-1) + 2^62, n, lo - offset, hi - offset and the
    offset Z_y - 2^(62-n), each as even lanes then odd lanes (padded outputs: M0 = 0)."""
    count = panels(layer.outputs) * PANEL
    multiplier = torch.zeros(count, dtype=torch.int64)
    shift = torch.ones(count, dtype=torch.int64)
    multiplier[: layer.outputs] = layer.multiplier.to(torch.int64)
    shift[: layer.outputs] = layer.shift.to(torch.int64)
    offset = layer.output_zero_point - torch.bitwise_left_shift(torch.ones_like(shift), 62 - shift)
    rows = [
        multiplier,
        torch.bitwise_left_shift(torch.ones_like(shift), shift - 1) + HALF,
        shift,
        layer.lowest - offset,
        layer.highest - offset,
        offset,
    ]
    return torch.stack([even_odd(row) for row in rows], dim=1)


def constants_text(prefix: str, kind: str, layers: list[CLayer], lookup) -> str:
    """The packed weights and the per-panel constants, ``static`` to this file."""
    parts = []
    if lookup is not None:
        rows = lookup.reshape(16, 16).repeat(1, 2)  # each row in both 128-bit lanes
        parts.append(c_array("uint8_t", "table", lookup.tolist(), "pixel -> u", "static "))
        parts.append(
            c_array("uint8_t", "table_rows", rows.reshape(-1).tolist(), "16 rows x 2", "static ")
        )
    for index, layer in enumerate(layers):
        name = f"{prefix}_{layer.name}"
        width = padded_inputs(layer, index, layers, kind)
        packed = pack_weights(layer.weight, width, kind).reshape(-1).tolist()
        count = panels(layer.outputs) * PANEL
        bias = torch.zeros(count, dtype=layer.bias.dtype)
        bias[: layer.outputs] = layer.bias
        ctype = "int8_t" if kind == "int8" else "float"
        layout = "[out/8][in/2][8][2]" if kind == "int8" else "[out/8][in][8]"
        parts.append(c_array(ctype, f"{name}_packed", packed, f"{layer.name} {layout}", "static "))
        bias_type = "int32_t" if kind == "int8" else "float"
        parts.append(c_array(bias_type, f"{name}_panel_bias", bias.tolist(), "bias", "static "))
        if kind == "int8":
            table = requantization_table(layer).reshape(-1).tolist()
            comment = "per panel: M0, rounding, n, low, high, offset (even, odd lanes)"
            parts.append(c_array("int64_t", f"{name}_requantization", table, comment, "static "))
    return "".join(parts)


def activation_plan(layers: list[CLayer], kind: str) -> tuple[list, ArenaPlan]:
    """The buffers of one image (INT8: the input widened to int16, then every layer's
    output but the last as int16 rows of whole panels; FP32: the outputs as float rows) and
    their liveness plan, each buffer 32-byte aligned."""
    int8 = kind == "int8"
    element_bytes = 2 if int8 else 4
    names, sizes = (["input_x"], [padded_inputs(layers[0], 0, layers, kind)]) if int8 else ([], [])
    for layer in layers[:-1]:
        names.append(f"out_{layer.name}")
        sizes.append(panels(layer.outputs) * PANEL)
    buffers = chain_buffers([size * element_bytes for size in sizes], names)
    return buffers, plan_arena(buffers, 32)
