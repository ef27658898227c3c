"""The forward pass written for x86 AVX2 + FMA (notebook 10): ``<prefix>_avx2.c``.

The portable file computes one output at a time (a dot product over the row's weights);
a vector register then holds inputs of one output, and every output ends with a horizontal
sum. Here a register holds **8 outputs** instead, and the weights are stored the way the
instructions read them (*packed*, zero-padded to whole panels):

- **INT8**, ``[out/8][in/2][8][2]`` int8: one 16-byte load holds the weights of 8 outputs
  for 2 inputs; ``vpmovsxbw`` widens them to int16 and ``vpmaddwd`` multiplies them by the
  two inputs (int16, broadcast to every lane) and adds each output's two products into an
  int32 lane: 16 multiply-accumulates per instruction, exact (|255 x 128 x 2| < 2^31).
  AVX2 has no exact 8-bit instruction: ``vpmaddubsw`` (uint8 x int8, 32 products) adds pairs
  into int16 and saturates (2 x 255 x 127 > 32767); ``vpdpbusd`` is AVX-512 VNNI.
- **FP32**, ``[out/8][in][8]`` float: one ``vfmadd231ps`` adds one input (broadcast) times
  the weights of 8 outputs: 8 multiply-accumulates per instruction, no sum reordered.

**Register blocking.** A block of 6 images x 2 panels keeps 12 accumulators in registers
(AVX2 has 16), so each weight load serves 6 images and each input broadcast 2 panels. One
image (batch 1, and what is left of a tile) takes up to 8 panels at a time; a layer with
fewer panels splits its inputs (K) over several accumulators per panel, so that 8 chains are
in flight (an FMA waits 4 cycles for its accumulator). The multiply-add and its accumulation
are one inline-assembly statement: gcc 12 otherwise schedules all products first and runs
out of registers (it spilled the accumulators to the stack, 1.5x slower).

**Requantization** runs on 8 outputs at once with a logical 64-bit shift, exact; the
constants it reads and why it is exact are in :mod:`ptqlib.deploy.c_avx2_packing`, with the
packed weights.
"""

from __future__ import annotations

from ptqlib.deploy.c_avx2_packing import (
    PANEL,
    activation_plan,
    constants_text,
    padded_inputs,
    panels,
)
from ptqlib.deploy.c_files import forward_opening
from ptqlib.deploy.c_graph import CLayer
from ptqlib.deploy.c_source import c_call
from ptqlib.errors import InputError

IMAGES = 6  # images per block (12 accumulators with 2 panels)
BLOCKS = ((IMAGES, 2), (IMAGES, 1), (1, 8), (1, 4), (1, 2), (1, 1))
ACCUMULATORS = 8  # the one-image blocks split K until this many chains are in flight
TILE = 24  # images per pass over the weights: a multiple of the block


# --- the C text --------------------------------------------------------------------------------

INT8_STEP = """\
/* acc += the 16 products of x (2 int16 inputs, broadcast) and w (8 outputs x 2 inputs),
 * summed by pairs into 8 int32 lanes: vpmaddwd, then vpaddd, kept together. */
static inline __m256i multiply_add(__m256i acc, __m256i x, __m256i w)
{
    __m256i products;
    __asm__("vpmaddwd %[w], %[x], %[p]\\n\\tvpaddd %[p], %[acc], %[acc]"
            : [acc] "+x"(acc), [p] "=&x"(products)
            : [w] "x"(w), [x] "x"(x));
    return acc;
}

static inline __m256i load_weights(const int8_t *w)  /* 16 int8 -> 16 int16 */
{
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w));
}

/* The same with the weights read from memory inside the statement (one image: each weight
 * serves once, and a register less is used per panel). */
static inline __m256i multiply_add_from(__m256i acc, __m256i x, const int8_t *w)
{
    __m256i products;
    __asm__("vpmovsxbw %[w], %[p]\\n\\tvpmaddwd %[p], %[x], %[p]\\n\\tvpaddd %[p], %[acc], %[acc]"
            : [acc] "+x"(acc), [p] "=&x"(products)
            : [w] "m"(*(const __m128i *)w), [x] "x"(x));
    return acc;
}

static inline __m256i broadcast_pair(const int16_t *x)  /* x[0], x[1] in every lane */
{
    int32_t pair;
    memcpy(&pair, x, sizeof pair);
    return _mm256_set1_epi32(pair);
}

/* The requantization of 8 sums (docstring of ptqlib.deploy.c_avx2_packing): exact with a
 * logical 64-bit shift. c holds this panel's constants, 4 int64 (even lanes) then 4 (odd)
 * of each: M0, 2^(n-1) + 2^62, n, lo - offset, hi - offset, offset. */
static inline __m256i clamp64(__m256i u, const int64_t *low, const int64_t *high)
{
    const __m256i lo = _mm256_loadu_si256((const __m256i *)low);
    const __m256i hi = _mm256_loadu_si256((const __m256i *)high);
    u = _mm256_blendv_epi8(u, lo, _mm256_cmpgt_epi64(lo, u));
    return _mm256_blendv_epi8(u, hi, _mm256_cmpgt_epi64(u, hi));
}

static inline __m256i requantize8(__m256i acc, const int64_t *c)
{
#define C64(row, half) _mm256_loadu_si256((const __m256i *)(c + 8 * (row) + 4 * (half)))
    __m256i even = _mm256_mul_epi32(acc, C64(0, 0));
    __m256i odd = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), C64(0, 1));
    even = _mm256_srlv_epi64(_mm256_add_epi64(even, C64(1, 0)), C64(2, 0));
    odd = _mm256_srlv_epi64(_mm256_add_epi64(odd, C64(1, 1)), C64(2, 1));
    even = _mm256_add_epi64(clamp64(even, c + 24, c + 32), C64(5, 0));
    odd = _mm256_add_epi64(clamp64(odd, c + 28, c + 36), C64(5, 1));
#undef C64
    return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* 8 requantized values (0..255, int32 lanes) as int16 for the next layer, or as the first
 * `valid` uint8 logits of the caller's output. */
static inline void store_int16(int16_t *y, __m256i q)
{
    _mm_storeu_si128((__m128i *)y,
                     _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)));
}

static inline void store_uint8(uint8_t *y, __m256i q, int32_t valid)
{
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q),
                                          _mm256_extracti128_si256(q, 1));
    uint8_t bytes[16];
    _mm_storeu_si128((__m128i *)bytes, _mm_packus_epi16(words, words));
    memcpy(y, bytes, (size_t)(valid < 8 ? valid : 8));
}
"""

FLOAT_STEP = """\
/* acc += x (one input, broadcast) times w (the weights of 8 outputs): one vfmadd231ps. */
static inline __m256 multiply_add(__m256 acc, __m256 x, __m256 w)
{
    __asm__("vfmadd231ps %[w], %[x], %[acc]" : [acc] "+x"(acc) : [w] "x"(w), [x] "x"(x));
    return acc;
}

/* The same with the weights read from memory by the instruction (one image). */
static inline __m256 multiply_add_from(__m256 acc, __m256 x, const float *w)
{
    __asm__("vfmadd231ps %[w], %[x], %[acc]"
            : [acc] "+x"(acc)
            : [w] "m"(*(const __m256 *)w), [x] "x"(x));
    return acc;
}

/* 8 outputs: the bias added, the ReLU if asked, stored (the first `valid` of them). */
static inline void store_float(float *y, __m256 acc, const float *bias, int relu, int32_t valid)
{
    acc = _mm256_add_ps(acc, _mm256_loadu_ps(bias));
    if (relu) acc = _mm256_max_ps(acc, _mm256_setzero_ps());
    if (valid >= 8) {
        _mm256_storeu_ps(y, acc);
    } else {
        float lanes[8];
        _mm256_storeu_ps(lanes, acc);
        memcpy(y, lanes, sizeof(float) * (size_t)valid);
    }
}
"""


def block_function(kind: str, images: int, panel_count: int) -> str:
    """``block_<images>x<panels>``: the sums of ``images`` rows of x with ``panel_count``
    panels of packed weights, in named accumulators (split over K for one image), written to
    ``sums[image][panel * 8 + lane]`` (int32 or float)."""
    int8 = kind == "int8"
    vector, zero = (
        ("__m256i", "_mm256_setzero_si256()") if int8 else ("__m256", "_mm256_setzero_ps()")
    )
    scalar, element, step = ("int32_t", "int16_t", 2) if int8 else ("float", "float", 1)
    split = max(1, ACCUMULATORS // panel_count) if images == 1 else 1
    names = [
        [[f"a{i}_{p}_{s}" for s in range(split)] for p in range(panel_count)] for i in range(images)
    ]
    flat = [name for image in names for panel in image for name in panel]
    lines = [
        f"/* {images} image(s) x {panel_count} panel(s) of 8 outputs"
        + (f", K split in {split}" if split > 1 else "")
        + f": {len(flat)} accumulators. */\n"
        f"static void block_{images}x{panel_count}(const {element} *x, size_t x_stride, "
        f"const {'int8_t' if int8 else 'float'} *w,\n"
        f"    size_t panel_size, size_t steps, {scalar} *sums)\n{{\n",
        "".join(f"    {vector} {name} = {zero};\n" for name in flat),
        "    size_t k = 0;\n",
    ]

    def step_lines(s: int, indent: str, k: str) -> list[str]:
        out, width = [], 16 if int8 else PANEL
        weights = [f"w + {p} * panel_size + {width} * ({k})" for p in range(panel_count)]
        if images > 1:  # each weight serves several images: load it once into a register
            for p in range(panel_count):
                load = "load_weights" if int8 else "_mm256_loadu_ps"
                out.append(f"{indent}const {vector} w{p} = {load}({weights[p]});\n")
        for i in range(images):
            source = f"x + {i} * x_stride + {step} * ({k})"
            load = f"broadcast_pair({source})" if int8 else f"_mm256_broadcast_ss({source})"
            out.append(f"{indent}{{\n{indent}    const {vector} xi = {load};\n")
            for p in range(panel_count):
                name = names[i][p][s]
                call = f"multiply_add({name}, xi, w{p})" if images > 1 else (
                    f"multiply_add_from({name}, xi, {weights[p]})"
                )  # fmt: skip
                out.append(f"{indent}    {name} = {call};\n")
            out.append(f"{indent}}}\n")
        return out

    # The main loop ends at a multiple of split: with `k + split <= steps` gcc assumed k
    # could wrap around and warned that the tail loop "invokes undefined behavior".
    if split > 1:
        lines.append(f"    const size_t whole = steps - steps % {split};\n")
        lines.append(f"    for (; k < whole; k += {split}) {{\n")
    else:
        lines.append("    for (; k < steps; k++) {\n")
    for s in range(split):
        lines.append("        {\n")
        lines += step_lines(s, "            ", f"k + {s}")
        lines.append("        }\n")
    lines.append("    }\n")
    if split > 1:
        lines.append("    for (; k < steps; k++) {\n")
        lines += step_lines(0, "        ", "k")
        lines.append("    }\n")
    add = "_mm256_add_epi32" if int8 else "_mm256_add_ps"
    store = "_mm256_storeu_si256((__m256i *)" if int8 else "_mm256_storeu_ps("
    for i in range(images):
        for p in range(panel_count):
            first, *others = names[i][p]
            for other in others:  # the K split: add the partial sums up
                lines.append(f"    {first} = {add}({first}, {other});\n")
            lines.append(f"    {store}(sums + {i * panel_count * PANEL + p * PANEL}), {first});\n")
    lines.append("}\n")
    return "".join(lines)


FINISH_INT8 = """\
/* The sums of a block -> bias added, requantized, stored: as int16 rows of the next layer's
 * input (y16), or as the caller's uint8 logits (y8, `out` per image). */
static void finish(const int32_t *sums, int32_t images, int32_t panel_count,
                   const int32_t *bias, const int64_t *requantization, int32_t first_output,
                   int16_t *y16, uint8_t *y8, size_t y_stride, int32_t out)
{
    for (int32_t i = 0; i < images; i++)
        for (int32_t p = 0; p < panel_count; p++) {
            const int32_t *sum = sums + 8 * (i * panel_count + p), *b = bias + 8 * p;
            const __m256i acc = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)sum),
                                                 _mm256_loadu_si256((const __m256i *)b));
            const __m256i q = requantize8(acc, requantization + 48 * p);
            const size_t at = (size_t)i * y_stride + (size_t)first_output + 8 * (size_t)p;
            if (y16)
                store_int16(y16 + at, q);
            else
                store_uint8(y8 + at, q, out - first_output - 8 * p);
        }
}
"""

FINISH_FLOAT = """\
/* The sums of a block -> bias, ReLU, stored as rows of y (`valid` outputs per row at most). */
static void finish(const float *sums, int32_t images, int32_t panel_count, const float *bias,
                   int relu, int32_t first_output, float *y, size_t y_stride, int32_t out)
{
    for (int32_t i = 0; i < images; i++)
        for (int32_t p = 0; p < panel_count; p++)
            store_float(y + (size_t)i * y_stride + (size_t)first_output + 8 * (size_t)p,
                        _mm256_loadu_ps(sums + 8 * (i * panel_count + p)), bias + 8 * p, relu,
                        out - first_output - 8 * p);
}
"""

TABLE_C = """\
/* pixel -> u through the 256-entry table, 32 pixels at a time, widened to int16. vpshufb
 * looks up 16 bytes within each 128-bit lane, so the table is cut into 16 rows of 16 entries
 * by the pixel's high nibble: each row looks up the low nibble, and its result is kept where
 * the high nibble is that row's. */
static void widen_input(const uint8_t *pixels, int32_t count, int16_t *x, size_t x_stride)
{
    const __m256i nibble = _mm256_set1_epi8(15);
    for (int32_t t = 0; t < count; t++, pixels += INPUTS, x += x_stride) {
        int32_t k = 0;
        for (; k + 32 <= INPUTS; k += 32) {
            const __m256i p = _mm256_loadu_si256((const __m256i *)(pixels + k));
            const __m256i low = _mm256_and_si256(p, nibble);
            const __m256i high = _mm256_and_si256(_mm256_srli_epi16(p, 4), nibble);
            __m256i u = _mm256_setzero_si256();
            for (int32_t r = 0; r < 16; r++) {
                const __m256i row = _mm256_loadu_si256((const __m256i *)(TABLE_ROWS + 32 * r));
                const __m256i hit = _mm256_cmpeq_epi8(high, _mm256_set1_epi8((char)r));
                u = _mm256_or_si256(u, _mm256_and_si256(_mm256_shuffle_epi8(row, low), hit));
            }
            _mm256_storeu_si256((__m256i *)(x + k),
                                _mm256_cvtepu8_epi16(_mm256_castsi256_si128(u)));
            _mm256_storeu_si256((__m256i *)(x + k + 16),
                                _mm256_cvtepu8_epi16(_mm256_extracti128_si256(u, 1)));
        }
        for (; k < INPUTS; k++) x[k] = TABLE[pixels[k]];
        for (; k < (int32_t)x_stride; k++) x[k] = 0;  /* an odd input count: pad the pair */
    }
}
"""

WIDEN_C = """\
/* The uint8 pixels are the inputs u: widened to int16, 16 at a time. */
static void widen_input(const uint8_t *pixels, int32_t count, int16_t *x, size_t x_stride)
{
    for (int32_t t = 0; t < count; t++, pixels += INPUTS, x += x_stride) {
        int32_t k = 0;
        for (; k + 16 <= INPUTS; k += 16) {
            const __m128i p = _mm_loadu_si128((const __m128i *)(pixels + k));
            _mm256_storeu_si256((__m256i *)(x + k), _mm256_cvtepu8_epi16(p));
        }
        for (; k < INPUTS; k++) x[k] = pixels[k];
        for (; k < (int32_t)x_stride; k++) x[k] = 0;  /* an odd input count: pad the pair */
    }
}
"""


def panel_groups(panel_count: int, images: int) -> list[int]:
    """How a layer's panels are taken by the blocks of ``images`` images (BLOCKS)."""
    sizes = [size for block_images, size in BLOCKS if block_images == images]
    groups, left = [], panel_count
    for size in sizes:
        while left >= size:
            groups.append(size)
            left -= size
    return groups


def layer_function(prefix: str, kind: str, layer: CLayer, width: int, last: bool) -> str:
    """``<prefix>_<name>``: one layer on ``count`` rows of x (``width`` apart), blocks of 6
    images then one image at a time, each block's panels in the groups of BLOCKS. The last
    layer writes the caller's rows of ``out`` values; the others rows of whole panels."""
    int8 = kind == "int8"
    name, count = f"{prefix}_{layer.name}", panels(layer.outputs)
    element = "int16_t" if int8 else "float"
    out_type = ("uint8_t" if int8 else "float") if last else element
    steps = width // 2 if int8 else width
    panel_size = steps * 16 if int8 else steps * PANEL
    y_stride = layer.outputs if last else count * PANEL
    rows = f"y + (size_t)t * {y_stride}"
    if int8:
        target = ["NULL", rows] if last else [rows, "NULL"]
        constants = [f"{name}_panel_bias + 8 * p", f"{name}_requantization + 48 * p"]
    else:
        target, constants = [rows], [f"{name}_panel_bias + 8 * p", str(int(layer.relu))]
    lines = [
        f"static void {name}(const {element} *x, int32_t count, {out_type} *y)\n{{\n",
        f"    {'int32_t' if int8 else 'float'} sums[{IMAGES * 2 * PANEL}];\n",
        "    int32_t t = 0;\n",
    ]
    for images, loop in ((IMAGES, f"for (; t + {IMAGES} <= count; t += {IMAGES})"),
                         (1, "for (; t < count; t++)")):  # fmt: skip
        lines.append(f"    {loop} {{\n        int32_t p = 0;\n")
        for size in panel_groups(count, images):
            block = [f"x + (size_t)t * {width}", str(width)]
            block += [f"{name}_packed + (size_t)p * {panel_size}", str(panel_size)]
            lines.append(c_call(f"block_{images}x{size}", [*block, str(steps), "sums"]))
            finish = ["sums", str(images), str(size), *constants, "8 * p", *target]
            finish += [str(y_stride), str(y_stride if last else count * PANEL)]
            lines.append(c_call("finish", finish) + f"        p += {size};\n")
        lines.append("    }\n")
    lines.append("}\n")
    return "".join(lines)


def forward_text(prefix: str, kind: str, layers: list[CLayer], lookup) -> str:
    """The forward function: a tile of images at a time, the activations in one arena."""
    upper, int8 = prefix.upper(), kind == "int8"
    element, element_bytes = ("int16_t", 2) if int8 else ("float", 4)
    io = "uint8_t" if int8 else "float"
    tile = f"{upper}_AVX2_TILE"
    buffers, plan = activation_plan(layers, kind)
    lines = [
        "/* Images per pass over the weights: a multiple of the 6-image block. */\n"
        f"#ifndef {tile}\n#define {tile} {TILE}\n#endif\n"
        f'#if {tile} < 1\n#error "{tile} must be at least 1"\n#endif\n\n',
        *forward_opening(prefix, io, (element, element_bytes), tile, buffers, plan),
    ]
    inputs, outputs = layers[0].inputs, layers[-1].outputs
    source = f"input + (size_t)first * {inputs}"
    if int8:
        width = buffers[0].size // element_bytes
        lines.append(f"        widen_input({source}, count, input_x, {width});\n")
        source = "input_x"
    for index, layer in enumerate(layers):
        last = index == len(layers) - 1
        target = f"output + (size_t)first * {outputs}" if last else f"out_{layer.name}"
        lines.append(f"        {prefix}_{layer.name}({source}, count, {target});\n")
        source = target
    lines.append("    }\n}\n")
    return "".join(lines)


def source_text(prefix: str, kind: str, layers: list[CLayer], lookup) -> str:
    """``<prefix>_avx2.c``: the same forward function as ``<prefix>.c``, for x86 AVX2 +
    FMA (module docstring); only models of Linear layers."""
    if any(layer.kind != "linear" for layer in layers):
        raise InputError("the AVX2 kernels are written for models of Linear layers only")
    int8 = kind == "int8"
    blocks = sorted(
        {
            (images, size)
            for layer in layers
            for images in (IMAGES, 1)
            for size in panel_groups(panels(layer.outputs), images)
        },
        key=BLOCKS.index,
    )
    widths = [padded_inputs(layer, i, layers, kind) for i, layer in enumerate(layers)]
    functions = [
        layer_function(prefix, kind, layer, width, index == len(layers) - 1)
        for index, (layer, width) in enumerate(zip(layers, widths, strict=True))
    ]
    if int8:
        widen = (TABLE_C if lookup is not None else WIDEN_C).replace(
            "INPUTS", str(layers[0].inputs)
        )
        widen = widen.replace("TABLE_ROWS", "table_rows").replace("TABLE", "table")
    return (
        f"/* {prefix}_avx2.c: the {kind.upper()} model for x86 CPUs with AVX2 and FMA (generated\n"
        " * by ptqlib): weights packed in panels of 8 outputs, register-blocked kernels, the\n"
        " * requantization vectorized and exact. It computes what the portable\n"
        f" * {prefix}.c computes, bit for bit{'' if int8 else ' up to float rounding'}. "
        "gcc or clang (inline assembly). */\n"
        "#if !defined(__AVX2__) || !defined(__FMA__)\n"
        '#error "this file needs AVX2 and FMA: -march=x86-64-v3, or -march=native on such a CPU"\n'
        "#endif\n"
        "#include <immintrin.h>\n#include <stddef.h>\n#include <string.h>\n"
        f'#include "{prefix}.h"\n\n'
        + constants_text(prefix, kind, layers, lookup)
        + "\n"
        + (INT8_STEP if int8 else FLOAT_STEP)
        + "\n"
        + "\n".join(block_function(kind, images, size) for images, size in blocks)
        + "\n"
        + (FINISH_INT8 + "\n" + widen if int8 else FINISH_FLOAT)
        + "\n"
        + "\n".join(functions)
        + "\n"
        + forward_text(prefix, kind, layers, lookup)
    )
