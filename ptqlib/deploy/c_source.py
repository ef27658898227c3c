"""The C text of an exported model (notebook 10): arrays, layer functions, forward and main.

``ptqlib.deploy.c_export`` decides *what* goes into the C files (the folded integers, the
layer sizes); this module only writes it down as C99 that any C compiler builds. Every
layer of the INT8 model computes, for each output channel o::

    acc[o] = bias[o] + sum_k x[k] w[o][k]                    uint8 x int8, summed in int32
    y[o]   = clamp(((acc[o] M0[o] + 2^(n[o]-1)) >> n[o]) + Z_y, lo, hi)          int64

with the activations ``x`` as uint8 0..255 and ``bias[o] = q_b - Z_x sum_k w[o][k]`` (the
zero-point term folded in at export). The portable loops are plain C; the AVX-512 VNNI
path (``vpdpbusd``: 4 uint8 x int8 products summed into each of 16 int32 lanes) is used
only where the compiler defines ``__AVX512VNNI__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# How many numbers per line in the arrays: readable rows of about 100 characters.
NUMBERS_PER_LINE = {"int8_t": 20, "uint8_t": 20, "int32_t": 8, "float": 6}


def c_number(value: float | int, ctype: str) -> str:
    """One value as a C literal; floats with 9 significant digits (exact for float32)."""
    if ctype == "float":
        return f"{float(value):.9g}f"
    return str(int(value))


def c_array(ctype: str, name: str, values: Iterable[float | int], comment: str) -> str:
    """``static const <ctype> <name>[n] = {...};`` with a comment line above it."""
    values = [c_number(value, ctype) for value in values]
    per_line = NUMBERS_PER_LINE[ctype]
    rows = [
        "    " + ", ".join(values[start : start + per_line]) + ","
        for start in range(0, len(values), per_line)
    ]
    body = "\n".join(rows)
    return f"/* {comment} */\nstatic const {ctype} {name}[{len(values)}] = {{\n{body}\n}};\n"


def digest_line(digest: str, files: str) -> str:
    """The first line of every generated file: what its bytes must hash to."""
    return f"/* ptqlib C export; sha256 {digest} of {files} below their first lines */\n"


# --- INT8 --------------------------------------------------------------------------------------

REQUANTIZE_C = """\
/* q_y = clamp(round(acc * M0 * 2^-n) + Z_y, lowest, highest), integers only.
 * acc * M0 needs up to 62 bits, so the product is int64. Adding 2^(n-1) and shifting right by
 * n rounds to nearest with ties upwards: >> of a negative int64 is an arithmetic shift on
 * every compiler ptqlib knows (C99 leaves it to the implementation; gcc, clang and MSVC
 * shift arithmetically), exactly as ptqlib's requantize does in torch. */
static uint8_t requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t zero_point,
                          int32_t lowest, int32_t highest)
{
    const int64_t scaled = (int64_t)acc * (int64_t)multiplier;
    int64_t q = ((scaled + ((int64_t)1 << (shift - 1))) >> shift) + zero_point;
    if (q < lowest) q = lowest;    /* a fused ReLU is lowest = Z_y */
    if (q > highest) q = highest;
    return (uint8_t)q;
}
"""

PORTABLE_LAYER_C = """\
/* Portable: for each output, a dot product of the input with one row of weights (the "dot"
 * form), for each of the `count` images of the tile while that row is in the cache.
 * Compilers vectorize it (gcc with VNNI uses vpdpbusd on its own); the int32 sum cannot
 * overflow: the export checked 255 * sum|w| + |bias| < 2^31. */
static void linear_layer(const uint8_t *restrict x, int32_t count,
                         const int8_t *restrict weight, const int32_t *bias,
                         const int32_t *multiplier, const int8_t *shift, int32_t zero_point,
                         int32_t lowest, int32_t highest, int32_t in, int32_t out,
                         uint8_t *restrict y)
{
    for (int32_t o = 0; o < out; o++) {
        const int8_t *row = weight + (size_t)o * in;
        for (int32_t t = 0; t < count; t++) {
            const uint8_t *xt = x + (size_t)t * in;
            int32_t acc = 0;
            for (int32_t k = 0; k < in; k++)
                acc += (int32_t)xt[k] * (int32_t)row[k];
            y[(size_t)t * out + o] = requantize(acc + bias[o], multiplier[o], shift[o],
                                                zero_point, lowest, highest);
        }
    }
}
"""

VNNI_LAYER_C = """\
/* AVX-512 VNNI: _mm512_dpbusd_epi32(acc, x, w) adds, in each of 16 int32 lanes, four products
 * of uint8 x (unsigned!) by int8 w: 64 inputs per instruction, masked loads for the last
 * chunk. Four output rows at a time share each load of x, and stay in the L1 cache while
 * every image of the tile passes. The accumulators are named variables, not an array: gcc
 * keeps them in registers (an array of __m512i was spilled to the stack, 1.7x slower). */
static __m512i dot64(__m512i acc, __m512i x, const int8_t *w, __mmask64 mask)
{
    return _mm512_dpbusd_epi32(acc, x, _mm512_maskz_loadu_epi8(mask, w));
}

static void linear_layer(const uint8_t *restrict x, int32_t count,
                         const int8_t *restrict weight, const int32_t *bias,
                         const int32_t *multiplier, const int8_t *shift, int32_t zero_point,
                         int32_t lowest, int32_t highest, int32_t in, int32_t out,
                         uint8_t *restrict y)
{
    const __mmask64 all = ~(__mmask64)0;
    const __mmask64 tail = (in % 64) ? (all >> (64 - in % 64)) : all;
    const int32_t chunks = (in + 63) / 64;
    int32_t o = 0;
    for (; o + 4 <= out; o += 4) {
        const int8_t *w0 = weight + (size_t)o * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
        for (int32_t t = 0; t < count; t++) {
            const uint8_t *xt = x + (size_t)t * in;
            __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
            for (int32_t c = 0; c < chunks; c++) {
                const int32_t k = 64 * c;
                const __mmask64 mask = c + 1 < chunks ? all : tail;
                const __m512i xk = _mm512_maskz_loadu_epi8(mask, xt + k);
                acc0 = dot64(acc0, xk, w0 + k, mask);
                acc1 = dot64(acc1, xk, w1 + k, mask);
                acc2 = dot64(acc2, xk, w2 + k, mask);
                acc3 = dot64(acc3, xk, w3 + k, mask);
            }
            const int32_t sums[4] = {
                _mm512_reduce_add_epi32(acc0), _mm512_reduce_add_epi32(acc1),
                _mm512_reduce_add_epi32(acc2), _mm512_reduce_add_epi32(acc3)};
            uint8_t *yt = y + (size_t)t * out + o;
            for (int32_t r = 0; r < 4; r++)
                yt[r] = requantize(sums[r] + bias[o + r], multiplier[o + r], shift[o + r],
                                   zero_point, lowest, highest);
        }
    }
    for (; o < out; o++) {  /* the rows left over when out is not a multiple of 4 */
        const int8_t *row = weight + (size_t)o * in;
        for (int32_t t = 0; t < count; t++) {
            const uint8_t *xt = x + (size_t)t * in;
            __m512i acc = _mm512_setzero_si512();
            for (int32_t c = 0; c < chunks; c++) {
                const __mmask64 mask = c + 1 < chunks ? all : tail;
                acc = dot64(acc, _mm512_maskz_loadu_epi8(mask, xt + 64 * c), row + 64 * c, mask);
            }
            y[(size_t)t * out + o] = requantize(_mm512_reduce_add_epi32(acc) + bias[o],
                                                multiplier[o], shift[o], zero_point, lowest,
                                                highest);
        }
    }
}
"""


class CLayerNames:
    """The C names of one layer: ``fc1`` -> arrays ``fc1_weight``..., macros ``FC1_IN``..."""

    def __init__(self, name: str) -> None:
        self.prefix = "".join(char if char.isalnum() else "_" for char in name).lower()
        self.upper = self.prefix.upper()


def int8_layer_call(layer: CLayerNames, source: str, target: str) -> str:
    upper = layer.upper
    return (
        f"        linear_layer({source}, count, {layer.prefix}_weight, {layer.prefix}_bias,\n"
        f"                     {layer.prefix}_multiplier, {layer.prefix}_shift, "
        f"{upper}_OUTPUT_ZERO_POINT, {upper}_LOWEST,\n"
        f"                     {upper}_HIGHEST, {upper}_IN, {upper}_OUT, {target});\n"
    )


def forward_function(
    prefix: str,
    inputs: int,
    outputs: int,
    layers: list[tuple[str, int]],
    element: str,
    lookup: bool,
    call: Callable[[CLayerNames, str, str], str],
    tile: int,
) -> str:
    """``void <prefix>_forward(const <element> *input, <element> *output, int32_t batch)``:
    the images in tiles of TILE, every tile through every layer, the activations of a tile
    in local buffers. ``layers`` holds ``(name, out_features)`` in order; ``tile`` is the
    default TILE (measured best here: 16 images for INT8, 4 for FP32, whose tile of float
    outputs is 4 times larger)."""
    default_tile, tile = tile, f"{prefix.upper()}_TILE"
    lines = [
        f"/* Images per pass over the weights: every weight read from memory serves TILE images\n"
        f" * (on a microcontroller, 1: the buffers then hold one image). */\n"
        f"#ifndef {tile}\n#define {tile} {default_tile}\n#endif\n\n"
        f"void {prefix}_forward(const {element} *input, {element} *output, int32_t batch)\n{{\n",
        f"    for (int32_t first = 0; first < batch; first += {tile}) {{\n",
        f"        const int32_t count = batch - first < {tile} ? batch - first : {tile};\n",
        f"        const {element} *images = input + (size_t)first * {inputs};\n",
    ]
    source = "images"
    if lookup:
        lines.append(
            f"        uint8_t x[{tile} * {inputs}];  /* pixel -> q_x through the table */\n"
            f"        for (int32_t k = 0; k < count * {inputs}; k++) x[k] = input_lut[images[k]];\n"
        )
        source = "x"
    for index, (name, size) in enumerate(layers):
        names = CLayerNames(name)
        last = index == len(layers) - 1
        target = f"output + (size_t)first * {outputs}" if last else f"{names.prefix}_out"
        if not last:
            lines.append(f"        {element} {names.prefix}_out[{tile} * {size}];\n")
        lines.append(call(names, source, target))
        source = target
    lines.append("    }\n}\n")
    return "".join(lines)


def int8_source(prefix: str, header: str, inputs: int, outputs: int, layers: list[tuple]) -> str:
    """The INT8 ``<prefix>.c``: requantize, the layer (portable or VNNI), the forward.
    ``layers`` holds ``(name, out_features)`` in order."""
    forward = forward_function(
        prefix, inputs, outputs, layers, "uint8_t", "input_lut" in header, int8_layer_call, 16
    )
    return (
        f"/* {prefix}.c: the INT8 model, integer arithmetic only (generated by ptqlib).\n"
        " * Activations are uint8 0..255; one with negative integers (int8) travels as q + 128,\n"
        " * its zero point and clamp moved by 128 at export. Build: see BUILD. */\n"
        f'#include "{prefix}.h"\n\n{REQUANTIZE_C}\n'
        "#if defined(__AVX512VNNI__) && defined(__AVX512BW__)\n#include <immintrin.h>\n\n"
        f"{VNNI_LAYER_C}#else\n\n{PORTABLE_LAYER_C}#endif\n\n{forward}"
    )


# --- FP32 --------------------------------------------------------------------------------------

FLOAT_LAYER_C = """\
/* y = W x + b, then ReLU if asked, for the `count` images of the tile. The "axpy" form: for
 * each input k, add x[k] times row k of the transposed weights to all outputs; row k serves
 * every image of the tile while it is in the cache. The inner loop runs over independent
 * outputs, so gcc vectorizes it at -O3 (with FMA under -march=native). The "dot" form (one
 * sum over k per output) would stay scalar: vectorizing it reorders a float sum, which C
 * forbids without -ffast-math. So INT8 and FP32 are compared both vectorized, at equal
 * overhead. */
static void linear_layer(const float *restrict x, int32_t count,
                         const float *restrict weight_t, const float *bias, int relu,
                         int32_t in, int32_t out, float *restrict y)
{
    for (int32_t t = 0; t < count; t++)
        for (int32_t o = 0; o < out; o++) y[(size_t)t * out + o] = bias[o];
    for (int32_t k = 0; k < in; k++) {
        const float *row = weight_t + (size_t)k * out;
        for (int32_t t = 0; t < count; t++) {
            const float xk = x[(size_t)t * in + k];
            float *yt = y + (size_t)t * out;
            for (int32_t o = 0; o < out; o++) yt[o] += xk * row[o];
        }
    }
    if (relu)
        for (int32_t o = 0; o < count * out; o++) y[o] = y[o] > 0.0f ? y[o] : 0.0f;
}
"""


def float_layer_call(layer: CLayerNames, source: str, target: str) -> str:
    upper = layer.upper
    return (
        f"        linear_layer({source}, count, {layer.prefix}_weight_t, {layer.prefix}_bias, "
        f"{upper}_RELU,\n                     {upper}_IN, {upper}_OUT, {target});\n"
    )


def fp32_source(prefix: str, inputs: int, outputs: int, layers: list[tuple]) -> str:
    """The FP32 ``<prefix>.c``: the float layer and the forward on normalised images."""
    forward = forward_function(
        prefix, inputs, outputs, layers, "float", False, float_layer_call, 4
    )
    return (
        f"/* {prefix}.c: the FP32 model in float32 (generated by ptqlib), on normalised images\n"
        " * x = (pixel / 255 - mean) / std. Build: see BUILD. */\n"
        f'#include "{prefix}.h"\n\n{FLOAT_LAYER_C}\n{forward}'
    )


# --- main.c ------------------------------------------------------------------------------------


def main_source(prefix: str, kind: str, inputs: int, outputs: int, mean: float, std: float) -> str:
    """A tiny program: read one digit (``inputs`` raw bytes, row by row) from a file, print
    the predicted class and the logits."""
    upper = prefix.upper()
    if kind == "int8":
        prepare = f"    uint8_t logits[{outputs}];\n    {prefix}_forward(pixels, logits, 1);\n"
        show = '        printf(" %d", logits[c]);\n'
    else:
        prepare = (
            f"    float image[{inputs}], logits[{outputs}];\n"
            f"    for (int k = 0; k < {inputs}; k++)\n"
            f"        image[k] = (pixels[k] / 255.0f - {mean}f) / {std}f;\n"
            f"    {prefix}_forward(image, logits, 1);\n"
        )
        show = '        printf(" %.3f", logits[c]);\n'
    return (
        f"/* main.c: classify one digit with {prefix} (generated by ptqlib).\n"
        f" * Usage: ./{prefix} DIGIT.raw   where DIGIT.raw holds {inputs} bytes (28x28 pixels,\n"
        " * 0 = black, 255 = white, row by row). */\n"
        f'#include <stdio.h>\n#include "{prefix}.h"\n\n'
        "int main(int argc, char **argv)\n{\n"
        "    if (argc != 2) {\n"
        f'        fprintf(stderr, "usage: %s DIGIT.raw ({inputs} bytes)\\n", argv[0]);\n'
        "        return 2;\n    }\n"
        '    FILE *file = fopen(argv[1], "rb");\n'
        "    if (!file) {\n        perror(argv[1]);\n        return 2;\n    }\n"
        f"    uint8_t pixels[{inputs}];\n"
        f"    const size_t got = fread(pixels, 1, {inputs}, file);\n"
        "    const int extra = fgetc(file) != EOF;\n    fclose(file);\n"
        f"    if (got != {inputs} || extra) {{\n"
        f'        fprintf(stderr, "%s: expected exactly {inputs} bytes\\n", argv[1]);\n'
        "        return 2;\n    }\n"
        f"{prepare}"
        "    int best = 0;\n"
        f"    for (int c = 1; c < {upper}_OUTPUTS; c++)\n"
        "        if (logits[c] > logits[best]) best = c;\n"
        '    printf("digit %d; logits:", best);\n'
        f"    for (int c = 0; c < {upper}_OUTPUTS; c++)\n{show}"
        '    printf("\\n");\n    return 0;\n}\n'
    )
