"""The INT8 layer with the Cortex-M4's DSP instructions: two multiply-accumulates per
instruction (notebook 11).

The plain C layer does one ``acc += x[k] * w[k]`` per MAC: a byte load, a signed byte load,
a multiply-accumulate and the loop's compare and branch, about 5 instructions. The
Armv7E-M DSP extension (Cortex-M4, M7, M33...) has two instructions that do better:

- ``SMLAD acc, a, b``: ``acc += a.lo * b.lo + a.hi * b.hi``, two signed 16 x 16 products of
  the halves of two registers, in one instruction;
- ``SXTB16 d, w, ROR #8``: rotate ``w`` by 0, 8, 16 or 24 bits, then sign-extend its bytes 0
  and 2 into the two 16-bit halves of ``d``. Without the rotate it takes bytes 0 and 2 of a
  word of four int8 weights; with ``ROR #8`` bytes 1 and 3.

So one 32-bit load of four weights ``w0 w1 w2 w3``, two SXTB16 and two SMLAD do four MACs,
if the activations wait in registers as the matching int16 pairs ``(x0, x2)`` and
``(x1, x3)``. That is how CMSIS-NN arranges it (``arm_nn_mat_mult_kernel_s8_s16`` with
``read_and_pad_reordered``; ``arm_s8_to_s16_unordered_with_offset`` widens the activations):

- **activations**, once per layer: every group of four uint8 inputs becomes two 32-bit
  words ``x0 | x2 << 16`` and ``x1 | x3 << 16`` (:func:`input_pairs`). The C's activations
  are uint8 (0..255), which fit an int16 lane as they are;
- **weights**, once at export (:func:`pack_weights_for_smlad`): four output rows are
  interleaved, four weights of each row per word, so that one pointer walks all four rows
  (as CMSIS-NN's ``arm_fully_connected_q7_opt`` did with its "interleaved" weights):
  ``packed[block][group][row][j] = W[4 block + row][4 group + j]``, zero-padded to whole
  blocks and groups;
- **the inner loop**, per group of four inputs: one LDRD of the two input pairs (shared by
  the four rows), two LDRD of the four rows' words of weights, and per row two SXTB16 and
  two SMLAD, then the loop's SUBS and BNE: 16 MACs in 21 instructions, 1.3 per MAC, against
  5 for the plain loop.

As in the portable C, each row's sum starts at its bias and adds the products in some
order, so every partial sum lies between ``255 N + b`` and ``255 P + b`` (N, P: the sums of
the row's negative and positive weights), which the export checked are int32
(``ptqlib.deploy.c_graph.check_int32_sums``): no SMLAD overflows, the sums are the plain
loop's integers, and the requantization and the logits are unchanged, bit for bit.
"""

from __future__ import annotations

import torch

from ptqlib.deploy.c_files import activation_plan
from ptqlib.deploy.c_graph import CLayer
from ptqlib.errors import InputError

ROWS_PER_BLOCK = 4  # output rows that share every load of the input pairs
WEIGHTS_PER_WORD = 4  # int8 weights in one 32-bit load


def blocks_and_groups(out_features: int, in_features: int) -> tuple[int, int]:
    """How many blocks of 4 rows and groups of 4 inputs a weight ``[out, in]`` packs into."""
    return -(-out_features // ROWS_PER_BLOCK), -(-in_features // WEIGHTS_PER_WORD)


def pack_weights_for_smlad(weight: torch.Tensor) -> torch.Tensor:
    """int8 ``weight [out, in]`` as ``[blocks, groups, 4 rows, 4 weights]``:
    ``packed[b, g, r, j] = weight[4b + r, 4g + j]``, zero where the row or input is past the
    end. Reading it in memory order gives, per group, one word of four weights per row."""
    if weight.dim() != 2 or weight.dtype != torch.int8:
        raise InputError(f"weight: expected an int8 matrix [out, in], got {weight.dtype} "
                         f"{tuple(weight.shape)}")  # fmt: skip
    out_features, in_features = weight.shape
    blocks, groups = blocks_and_groups(out_features, in_features)
    padded = torch.zeros(blocks * ROWS_PER_BLOCK, groups * WEIGHTS_PER_WORD, dtype=torch.int8)
    padded[:out_features, :in_features] = weight
    by_block = padded.reshape(blocks, ROWS_PER_BLOCK, groups, WEIGHTS_PER_WORD)
    return by_block.permute(0, 2, 1, 3).contiguous()


def input_pairs(x: torch.Tensor) -> torch.Tensor:
    """uint8 activations ``[in]`` as the int32 words the DSP loop loads: per group of four,
    ``x0 | x2 << 16`` then ``x1 | x3 << 16`` (zero-padded to a whole group). The C does
    this once per layer; here it documents and tests the order."""
    groups = -(-len(x) // WEIGHTS_PER_WORD)
    padded = torch.zeros(groups * WEIGHTS_PER_WORD, dtype=torch.int64)
    padded[: len(x)] = x.to(torch.int64)
    quads = padded.reshape(groups, WEIGHTS_PER_WORD)
    return torch.stack((quads[:, 0] | quads[:, 2] << 16, quads[:, 1] | quads[:, 3] << 16), 1)


PACK4_C = """\
/* Four int8 weights in one little-endian 32-bit word, the first in the lowest byte. */
#define PACK4(w0, w1, w2, w3)                                                   \\
    ((uint32_t)(uint8_t)(w0) | (uint32_t)(uint8_t)(w1) << 8 |                   \\
     (uint32_t)(uint8_t)(w2) << 16 | (uint32_t)(uint8_t)(w3) << 24)
"""

DSP_LAYER_C = """\
/* The layer's input as int16 pairs, widened once: (x0 | x2 << 16), (x1 | x3 << 16) per group
 * of four, zero-padded to a whole group. */
static uint32_t input_pairs[MAX_INPUT_GROUPS * 2];

static void widen_input(const uint8_t *x, int32_t in)
{
    int32_t g = 0;
    for (; 4 * g + 4 <= in; g++, x += 4) {
        input_pairs[2 * g] = x[0] | (uint32_t)x[2] << 16;
        input_pairs[2 * g + 1] = x[1] | (uint32_t)x[3] << 16;
    }
    if (4 * g < in) { /* the last, partial group */
        uint32_t v[4] = {0, 0, 0, 0};
        for (int32_t j = 0; 4 * g + j < in; j++) v[j] = x[j];
        input_pairs[2 * g] = v[0] | v[2] << 16;
        input_pairs[2 * g + 1] = v[1] | v[3] << 16;
    }
}

/* ROW(w, acc): four multiply-accumulates of one row, acc += w0 x0 + w1 x1 + w2 x2 + w3 x3,
 * from the word w = (w0 w1 w2 w3) and the input pairs x02 = (x0, x2), x13 = (x1, x3):
 * SXTB16 sign-extends bytes 0 and 2 of w into two int16 halves, (w0, w2); with ROR #8 it
 * takes bytes 1 and 3, (w1, w3); SMLAD adds both products of the halves to acc. */
#define ROW(w, acc)                                      \\
    "sxtb16 %[half], %[" w "]\\n\\t"                       \\
    "smlad  %[" acc "], %[half], %[x02], %[" acc "]\\n\\t"  \\
    "sxtb16 %[half], %[" w "], ror #8\\n\\t"               \\
    "smlad  %[" acc "], %[half], %[x13], %[" acc "]\\n\\t"

/* Adds to sums[0..3] (the biases of four output rows) the rows' products over all `groups`
 * (>= 1) groups of four inputs. Per group: one LDRD of the two input pairs (shared by the
 * four rows), two LDRD of four words of weights (one word per row, interleaved at export),
 * then ROW four times: 16 multiply-accumulates in 21 instructions. Assembly, because gcc 12
 * spends 3 more on this loop (it reloads a pointer and does not fold the increments into
 * the loads). */
static const uint32_t *dot_four_rows(const uint32_t *weights, int32_t groups, int32_t sums[4])
{
    const uint32_t *pairs = input_pairs;
    int32_t acc0 = sums[0], acc1 = sums[1], acc2 = sums[2], acc3 = sums[3];
    uint32_t x02, x13, w0, w1, half;
    __asm__ volatile(
        "1:\\n\\t"
        "ldrd   %[x02], %[x13], [%[pairs]], #8\\n\\t"  /* input pairs */
        "ldrd   %[w0], %[w1], [%[weights]], #8\\n\\t"  /* rows 0 and 1 */
        ROW("w0", "acc0") ROW("w1", "acc1")
        "ldrd   %[w0], %[w1], [%[weights]], #8\\n\\t"  /* rows 2 and 3 */
        ROW("w0", "acc2") ROW("w1", "acc3")
        "subs   %[groups], %[groups], #1\\n\\t"
        "bne    1b"
        : [acc0] "+r"(acc0), [acc1] "+r"(acc1), [acc2] "+r"(acc2), [acc3] "+r"(acc3),
          [pairs] "+r"(pairs), [weights] "+r"(weights), [groups] "+r"(groups),
          [x02] "=&r"(x02), [x13] "=&r"(x13), [w0] "=&r"(w0), [w1] "=&r"(w1), [half] "=&r"(half)
        :
        : "cc", "memory");
    sums[0] = acc0;
    sums[1] = acc1;
    sums[2] = acc2;
    sums[3] = acc3;
    return weights;
}

/* y = requantize(W x + bias) for one image, four output rows at a time. `packed` holds the
 * weights interleaved at export: per block of four rows and group of four inputs, one word
 * per row. Each sum starts at its bias, as in the portable C: no partial sum leaves int32. */
static void linear_layer_dsp(const uint8_t *x, const uint32_t *packed, const int32_t *bias,
                             const int32_t *multiplier, const int8_t *shift, int32_t zero_point,
                             int32_t lowest, int32_t highest, int32_t in, int32_t out,
                             uint8_t *y)
{
    const int32_t groups = (in + 3) / 4;
    widen_input(x, in);
    for (int32_t o = 0; o < out; o += 4) {
        const int32_t rows = out - o < 4 ? out - o : 4; /* the last block may be padded */
        int32_t sums[4] = {0, 0, 0, 0};
        for (int32_t r = 0; r < rows; r++) sums[r] = bias[o + r];
        packed = dot_four_rows(packed, groups, sums);
        for (int32_t r = 0; r < rows; r++)
            y[o + r] = requantize(sums[r], multiplier[o + r], shift[o + r], zero_point, lowest,
                                  highest);
    }
}
"""


def packed_array(name: str, layer: CLayer) -> str:
    """The packed weights of ``layer`` as ``static const uint32_t name[]``, one line per
    group: the four words (four rows) that one pass of the inner loop reads."""
    packed = pack_weights_for_smlad(layer.weight)
    blocks, groups = packed.shape[:2]
    rows = packed.reshape(blocks * groups, ROWS_PER_BLOCK, WEIGHTS_PER_WORD).tolist()
    lines = [
        "    " + ", ".join(f"PACK4({', '.join(map(str, word))})" for word in line) + ","
        for line in rows
    ]
    return (
        f"/* {layer.name}: {blocks} blocks of 4 rows x {groups} groups of 4 inputs "
        f"({layer.outputs} x {layer.inputs}, zero-padded) */\n"
        f"static const uint32_t {name}[{blocks * groups * ROWS_PER_BLOCK}] = {{\n"
        + "\n".join(lines)
        + "\n};\n"
    )


def forward_text(prefix: str, layers: list[CLayer], lookup: bool) -> str:
    """``<prefix>_dsp_forward``: one image at a time (a microcontroller's batch), the
    activations in one arena at the offsets of the export's liveness plan."""
    buffers, plan = activation_plan(layers, "int8", lookup)
    lines = [
        "/* One image at a time; its activations in one arena, at the offsets of the same\n"
        f" * liveness plan as {prefix}.c. */\n"
        f"void {prefix}_dsp_forward(const uint8_t *input, uint8_t *output, int32_t batch)\n{{\n"
        f"    uint8_t arena[{max(plan.size, 1)}];\n"
    ]
    for buffer in buffers:
        lines.append(f"    uint8_t *const {buffer.name} = arena + {plan.offsets[buffer.name]};\n")
    lines.append("    for (int32_t t = 0; t < batch; t++) {\n")
    lines.append(f"        const uint8_t *image = input + (size_t)t * {layers[0].inputs};\n")
    source = "image"
    if lookup:
        lines.append(
            f"        for (int32_t k = 0; k < {layers[0].inputs}; k++)  /* pixel -> u */\n"
            f"            input_u[k] = {prefix}_input_table[image[k]];\n"
        )
        source = "input_u"
    for index, layer in enumerate(layers):
        last = index == len(layers) - 1
        target = f"output + (size_t)t * {layer.outputs}" if last else f"out_{layer.name}"
        name = f"{prefix}_{layer.name}"
        lines.append(
            f"        linear_layer_dsp({source}, {name}_packed, {name}_bias, {name}_multiplier,\n"
            f"                         {name}_shift, {layer.output_zero_point}, {layer.lowest}, "
            f"{layer.highest}, {layer.inputs}, {layer.outputs},\n"
            f"                         {target});\n"
        )
        source = target
    lines.append("    }\n}\n")
    return "".join(lines)


def dsp_source(
    prefix: str, layers: list[CLayer], lookup: bool, requantize_c: str, note: str
) -> str:
    """``<prefix>_dsp.c``: the DSP layer, the packed weights and ``<prefix>_dsp_forward``,
    with the biases, multipliers and input table that ``<prefix>.c`` defines (declared in
    ``<prefix>.h``). ``requantize_c`` defines ``requantize`` (ptqlib's single rounding or
    CMSIS-NN's two). A model of Linear layers only."""
    if any(layer.kind != "linear" for layer in layers):
        kinds = sorted({layer.kind for layer in layers} - {"linear"})
        raise InputError(f"model: the DSP kernel implements Linear layers; this one has {kinds}")
    max_groups = max(-(-layer.inputs // WEIGHTS_PER_WORD) for layer in layers)
    arrays = "\n".join(packed_array(f"{prefix}_{layer.name}_packed", layer) for layer in layers)
    return (
        f"/* {prefix}_dsp.c: the INT8 model with the Cortex-M DSP instructions SXTB16 and "
        "SMLAD\n * (generated by ptqlib; Armv7E-M: Cortex-M4, M7, M33). Same integers as "
        f"{prefix}.c, whose\n * biases, multipliers and table it uses; the weights are "
        f"repacked here.\n * Requantization: {note}. */\n"
        f'#include <stddef.h>\n#include <arm_acle.h>\n#include "{prefix}.h"\n\n'
        "#if !defined(__ARM_FEATURE_DSP)\n"
        "#error this file needs the Armv7E-M DSP instructions (-mcpu=cortex-m4 or cortex-m7)\n"
        "#endif\n\n"
        f"#define MAX_INPUT_GROUPS {max_groups}\n\n{requantize_c}\n{DSP_LAYER_C}\n{PACK4_C}\n"
        f"{arrays}\n{forward_text(prefix, layers, lookup)}"
    )
