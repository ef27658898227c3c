"""The portable C of an exported model (notebook 10): the layer loops any C compiler builds.

``ptqlib.deploy.c_graph`` decides *what* the C computes (the layers, their shapes and folded
constants); this module writes it down as plain C99 loops, with no intrinsics and nothing
specific to one CPU, so that the same file builds for a server, a phone or a Cortex-M. Every
weighted layer of the INT8 model computes, for each output channel o::

    acc[o] = b[o] + sum_k u[k] w[o][k]                        uint8 x int8, summed in int32
    y[o]   = clamp(((acc[o] M0[o] + 2^(n[o]-1)) >> n[o]) + Z_y, lo, hi)               int64

with the activations ``u`` as uint8 0..255 and the zero-point term folded into ``b`` at
export. Activations are channels last (``[H][W][C]``). The forward function runs the images
in tiles of ``<PREFIX>_TILE``; the activations of a tile live in one local array, the arena,
at the offsets of a liveness plan (``ptqlib.deploy.c_memory``).
"""

from __future__ import annotations

from ptqlib.deploy.c_graph import CLayer

# --- INT8 kernels ----------------------------------------------------------------------------

REQUANTIZE_C = """\
/* q_y = clamp(round(acc * M0 * 2^-n) + Z_y, lowest, highest), integers only.
 * acc * M0 needs up to 62 bits: the product is int64. Adding 2^(n-1) and
 * shifting right by n rounds to nearest, ties upwards, as ptqlib does, if >>
 * of a negative int64 is an arithmetic shift: C99 (6.5.7p5) leaves that to
 * the compiler; gcc documents it, clang and MSVC do the same. */
static uint8_t requantize(int32_t acc, int32_t multiplier, int32_t shift,
                          int32_t zero_point, int32_t lowest, int32_t highest)
{
    const int64_t scaled = (int64_t)acc * (int64_t)multiplier;
    int64_t q = ((scaled + ((int64_t)1 << (shift - 1))) >> shift) + zero_point;
    if (q < lowest) q = lowest;    /* a fused ReLU is lowest = Z_y */
    if (q > highest) q = highest;
    return (uint8_t)q;
}

/* After the int32 sum: per output channel M0 and n, then Z_y and the clamp. */
struct requantization {
    const int32_t *multiplier;
    const int8_t *shift;
    int32_t zero_point, lowest, highest;
};

/* requantize() of output channel o with the constants of r. */
static uint8_t output(const struct requantization *r, int32_t o, int32_t acc)
{
    return requantize(acc, r->multiplier[o], r->shift[o], r->zero_point,
                      r->lowest, r->highest);
}
"""

MAXPOOL_C = """\
/* Max-pooling (no padding). On the integers too: dequantization increases, so
 * the largest integer of a window is the integer of the largest real value,
 * and the output keeps the input's qparams. */
static void maxpool_layer(const ELEMENT *restrict x, int32_t count,
                          const struct window *s, ELEMENT *restrict y)
{
    const int32_t channels = s->channels;
    const size_t line = (size_t)s->width * channels;  /* one row of the image */
    const size_t in_size = s->height * line;
    const size_t out_size = (size_t)s->out_height * s->out_width * channels;
    for (int32_t t = 0; t < count; t++) {
        const ELEMENT *image = x + t * in_size;
        ELEMENT *pixel = y + t * out_size;
        for (int32_t oy = 0; oy < s->out_height; oy++)
            for (int32_t ox = 0; ox < s->out_width; ox++, pixel += channels) {
                const ELEMENT *corner = image + oy * s->stride_h * line +
                                        (size_t)ox * s->stride_w * channels;
                for (int32_t c = 0; c < channels; c++) {
                    ELEMENT best = corner[c];
                    for (int32_t ky = 0; ky < s->kernel_h; ky++) {
                        const ELEMENT *row = corner + ky * line;
                        for (int32_t kx = 0; kx < s->kernel_w; kx++) {
                            const ELEMENT v = row[kx * channels + c];
                            best = v > best ? v : best;
                        }
                    }
                    pixel[c] = best;
                }
            }
    }
}
"""

INT8_KERNELS = {
    "linear": """\
/* A Linear, the "dot" form: for each output o, the dot product of row o of the
 * weights with each of the `count` images of the tile, while the row is in the
 * cache. The sum starts at the bias: no partial sum leaves int32 (the export
 * checked it). */
static void linear_layer(const uint8_t *restrict x, int32_t count,
                         const int8_t *restrict weight, const int32_t *bias,
                         const struct requantization *r, int32_t in,
                         int32_t out, uint8_t *restrict y)
{
    for (int32_t o = 0; o < out; o++) {
        const int8_t *row = weight + (size_t)o * in;
        for (int32_t t = 0; t < count; t++) {
            const uint8_t *xt = x + (size_t)t * in;
            int32_t acc = bias[o];
            for (int32_t k = 0; k < in; k++)
                acc += (int32_t)xt[k] * (int32_t)row[k];
            y[(size_t)t * out + o] = output(r, o, acc);
        }
    }
}
""",
    "conv": """\
/* A convolution, channels last: filter o is [kernel_h][kernel_w][channels]. A
 * tap outside the image reads `pad`, the input's zero point (the integer of
 * real 0), as ptqlib pads, so the folded bias (q_b - Z_x sum w) holds at the
 * border. */
static void conv_layer(const uint8_t *restrict x, int32_t count,
                       const struct window *s, const int8_t *restrict weight,
                       const int32_t *bias, int32_t out, int32_t pad,
                       const struct requantization *r, uint8_t *restrict y)
{
    const int32_t channels = s->channels;
    const size_t in_size = (size_t)s->height * s->width * channels;
    const size_t out_size = (size_t)s->out_height * s->out_width * out;
    const int32_t taps = s->kernel_h * s->kernel_w * channels;
    for (int32_t t = 0; t < count; t++) {
        const uint8_t *image = x + t * in_size;
        uint8_t *pixel = y + t * out_size;
        for (int32_t oy = 0; oy < s->out_height; oy++) {
            for (int32_t ox = 0; ox < s->out_width; ox++, pixel += out) {
                for (int32_t o = 0; o < out; o++) {
                    const int8_t *w = weight + (size_t)o * taps;
                    int32_t acc = bias[o];
                    for (int32_t ky = 0; ky < s->kernel_h; ky++) {
                        const int32_t iy = oy * s->stride_h + ky - s->pad_h;
                        for (int32_t kx = 0; kx < s->kernel_w; kx++) {
                            const int32_t ix = ox * s->stride_w + kx - s->pad_w;
                            const int inside = iy >= 0 && iy < s->height &&
                                               ix >= 0 && ix < s->width;
                            /* C99 6.5.6p8: no pointer outside the image */
                            const size_t at = inside ?
                                ((size_t)iy * s->width + ix) * channels : 0;
                            const uint8_t *in = image + at;
                            for (int32_t c = 0; c < channels; c++, w++) {
                                const int32_t u = inside ? in[c] : pad;
                                acc += u * (int32_t)*w;
                            }
                        }
                    }
                    pixel[o] = output(r, o, acc);
                }
            }
        }
    }
}
""",
    "depthwise": """\
/* A depthwise convolution: channel c of the output filters channel c of the
 * input alone (filter c is [kernel_h][kernel_w]); a tap outside the image
 * reads `pad`, as in conv_layer. */
static void depthwise_layer(const uint8_t *restrict x, int32_t count,
                            const struct window *s,
                            const int8_t *restrict weight, const int32_t *bias,
                            int32_t pad, const struct requantization *r,
                            uint8_t *restrict y)
{
    const int32_t channels = s->channels, taps = s->kernel_h * s->kernel_w;
    const size_t in_size = (size_t)s->height * s->width * channels;
    const size_t out_size = (size_t)s->out_height * s->out_width * channels;
    for (int32_t t = 0; t < count; t++) {
        const uint8_t *image = x + t * in_size;
        uint8_t *pixel = y + t * out_size;
        for (int32_t oy = 0; oy < s->out_height; oy++) {
            for (int32_t ox = 0; ox < s->out_width; ox++, pixel += channels) {
                for (int32_t c = 0; c < channels; c++) {
                    const int8_t *w = weight + (size_t)c * taps;
                    int32_t acc = bias[c];
                    for (int32_t ky = 0; ky < s->kernel_h; ky++) {
                        const int32_t iy = oy * s->stride_h + ky - s->pad_h;
                        for (int32_t kx = 0; kx < s->kernel_w; kx++, w++) {
                            const int32_t ix = ox * s->stride_w + kx - s->pad_w;
                            const int inside = iy >= 0 && iy < s->height &&
                                               ix >= 0 && ix < s->width;
                            const size_t at =
                                ((size_t)iy * s->width + ix) * channels + c;
                            const int32_t u = inside ? image[at] : pad;
                            acc += u * (int32_t)*w;
                        }
                    }
                    pixel[c] = output(r, c, acc);
                }
            }
        }
    }
}
""",
    "maxpool": MAXPOOL_C.replace("ELEMENT", "uint8_t"),
    "avgpool": """\
/* The global average pool on the integers: round(sum / n), to nearest, ties
 * upwards: floor((2 sum + n) / (2 n)), as ptqlib's rounded_mean (the values
 * are non-negative here, so C's / is the floor). */
static void avgpool_layer(const uint8_t *restrict x, int32_t count,
                          const struct window *s, uint8_t *restrict y)
{
    const int32_t channels = s->channels, n = s->height * s->width;
    for (int32_t t = 0; t < count; t++)
        for (int32_t c = 0; c < channels; c++) {
            const uint8_t *value = x + (size_t)t * n * channels + c;
            int32_t sum = 0;
            for (int32_t p = 0; p < n; p++) sum += value[(size_t)p * channels];
            y[(size_t)t * channels + c] = (uint8_t)((2 * sum + n) / (2 * n));
        }
}
""",
}

# --- FP32 kernels ----------------------------------------------------------------------------

FLOAT_KERNELS = {
    "linear": """\
/* y = W x + b, then ReLU if asked, for the `count` images of the tile. The
 * "axpy" form: for each input k, add x[k] times row k of the transposed
 * weights to all outputs; row k serves every image of the tile while it is in
 * the cache. The inner loop runs over independent outputs, so compilers
 * vectorize it without reordering a sum (the "dot" form would need
 * -ffast-math). Contracting y + x * w into one fused multiply-add needs
 * -ffp-contract=fast: gcc turns contraction off under ISO C (-std=c99), so
 * BUILD adds it. */
static void linear_layer(const float *restrict x, int32_t count,
                         const float *restrict weight_t, const float *bias,
                         int relu, int32_t in, int32_t out, float *restrict y)
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
        for (int32_t o = 0; o < count * out; o++)
            y[o] = y[o] > 0.0f ? y[o] : 0.0f;
}
""",
    "conv": """\
/* A convolution, channels last, the weights as [kernel_h][kernel_w][channels]
 * [out]: each input value is added, times its weights, to every output of the
 * pixel (the axpy form again). Taps outside the image are skipped (padding
 * holds 0.0). */
static void conv_layer(const float *restrict x, int32_t count,
                       const struct window *s, const float *restrict weight_t,
                       const float *bias, int relu, int32_t out,
                       float *restrict y)
{
    const int32_t channels = s->channels;
    const size_t in_size = (size_t)s->height * s->width * channels;
    const size_t out_size = (size_t)s->out_height * s->out_width * out;
    for (int32_t t = 0; t < count; t++) {
        const float *image = x + t * in_size;
        float *pixel = y + t * out_size;
        for (int32_t oy = 0; oy < s->out_height; oy++) {
            for (int32_t ox = 0; ox < s->out_width; ox++, pixel += out) {
                for (int32_t o = 0; o < out; o++) pixel[o] = bias[o];
                for (int32_t ky = 0; ky < s->kernel_h; ky++) {
                    const int32_t iy = oy * s->stride_h + ky - s->pad_h;
                    for (int32_t kx = 0; kx < s->kernel_w; kx++) {
                        const int32_t ix = ox * s->stride_w + kx - s->pad_w;
                        const int outside = iy < 0 || iy >= s->height ||
                                            ix < 0 || ix >= s->width;
                        if (outside) continue;
                        const float *in =
                            image + ((size_t)iy * s->width + ix) * channels;
                        const float *w = weight_t +
                            (size_t)(ky * s->kernel_w + kx) * channels * out;
                        for (int32_t c = 0; c < channels; c++, w += out)
                            for (int32_t o = 0; o < out; o++)
                                pixel[o] += in[c] * w[o];
                    }
                }
                if (relu)
                    for (int32_t o = 0; o < out; o++)
                        pixel[o] = pixel[o] > 0.0f ? pixel[o] : 0.0f;
            }
        }
    }
}
""",
    "depthwise": """\
/* A depthwise convolution: channel c of the output filters channel c of the
 * input alone, the weights as [kernel_h][kernel_w][channels]; taps outside the
 * image are skipped. */
static void depthwise_layer(const float *restrict x, int32_t count,
                            const struct window *s,
                            const float *restrict weight_t, const float *bias,
                            int relu, float *restrict y)
{
    const int32_t channels = s->channels;
    const size_t in_size = (size_t)s->height * s->width * channels;
    const size_t out_size = (size_t)s->out_height * s->out_width * channels;
    for (int32_t t = 0; t < count; t++) {
        const float *image = x + t * in_size;
        float *pixel = y + t * out_size;
        for (int32_t oy = 0; oy < s->out_height; oy++) {
            for (int32_t ox = 0; ox < s->out_width; ox++, pixel += channels) {
                for (int32_t c = 0; c < channels; c++) pixel[c] = bias[c];
                for (int32_t ky = 0; ky < s->kernel_h; ky++) {
                    const int32_t iy = oy * s->stride_h + ky - s->pad_h;
                    for (int32_t kx = 0; kx < s->kernel_w; kx++) {
                        const int32_t ix = ox * s->stride_w + kx - s->pad_w;
                        const int outside = iy < 0 || iy >= s->height ||
                                            ix < 0 || ix >= s->width;
                        if (outside) continue;
                        const float *in =
                            image + ((size_t)iy * s->width + ix) * channels;
                        const float *w = weight_t +
                            (size_t)(ky * s->kernel_w + kx) * channels;
                        for (int32_t c = 0; c < channels; c++)
                            pixel[c] += in[c] * w[c];
                    }
                }
                if (relu)
                    for (int32_t c = 0; c < channels; c++)
                        pixel[c] = pixel[c] > 0.0f ? pixel[c] : 0.0f;
            }
        }
    }
}
""",
    "maxpool": MAXPOOL_C.replace("ELEMENT", "float"),
    "avgpool": """\
static void avgpool_layer(const float *restrict x, int32_t count,
                          const struct window *s, float *restrict y)
{
    const int32_t channels = s->channels, n = s->height * s->width;
    for (int32_t t = 0; t < count; t++)
        for (int32_t c = 0; c < channels; c++) {
            const float *value = x + (size_t)t * n * channels + c;
            float sum = 0.0f;
            for (int32_t p = 0; p < n; p++) sum += value[(size_t)p * channels];
            y[(size_t)t * channels + c] = sum / (float)n;
        }
}
""",
}

WINDOW_C = """\
/* The geometry of a window layer (convolution or pool), channels last. */
struct window {
    int32_t height, width, channels;       /* the input of one image */
    int32_t out_height, out_width;
    int32_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
};
"""


def c_call(function: str, arguments: list[str], indent: str = "        ") -> str:
    """``function(arguments);`` as C lines of at most 80 characters, the arguments packed
    greedily and aligned after the parenthesis."""
    lines, line = [], f"{indent}{function}("
    align = " " * len(line)
    for index, argument in enumerate(arguments):
        piece = argument + (");" if index == len(arguments) - 1 else ",")
        if len(line) + len(piece) > 80 and line != align and not line.endswith("("):
            lines.append(line.rstrip())
            line = align
        line += piece + " "
    lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def window_literal(layer: CLayer) -> str:
    """The ``struct window`` initializer of a window layer."""
    height, width, channels = layer.input_shape
    out_height, out_width, _ = layer.output_shape
    values = [height, width, channels, out_height, out_width, *layer.kernel, *layer.stride]
    values += list(layer.padding)
    return "{" + ", ".join(str(value) for value in values) + "}"


def int8_call(prefix: str, layer: CLayer, source: str, target: str) -> str:
    """The statement of the forward function that runs ``layer`` on ``source``."""
    name = f"{prefix}_{layer.name}"
    if layer.kind in ("maxpool", "avgpool"):
        return c_call(f"{layer.kind}_layer", [source, "count", f"&{name}_window", target])
    weights = [f"{name}_weight", f"{name}_bias"]
    requantization = f"&{name}_requantization"
    if layer.kind == "linear":
        sizes = [str(layer.inputs), str(layer.outputs)]
        return c_call("linear_layer", [source, "count", *weights, requantization, *sizes, target])
    out = [str(layer.output_shape[2])] if layer.kind == "conv" else []
    arguments = [source, "count", f"&{name}_window", *weights, *out]
    arguments += [str(layer.input_zero_point), requantization, target]
    return c_call(f"{layer.kind}_layer", arguments)


def float_call(prefix: str, layer: CLayer, source: str, target: str) -> str:
    name = f"{prefix}_{layer.name}"
    if layer.kind in ("maxpool", "avgpool"):
        return c_call(f"{layer.kind}_layer", [source, "count", f"&{name}_window", target])
    weights = [f"{name}_weight_t", f"{name}_bias", str(int(layer.relu))]
    if layer.kind == "linear":
        sizes = [str(layer.inputs), str(layer.outputs)]
        return c_call("linear_layer", [source, "count", *weights, *sizes, target])
    out = [str(layer.output_shape[2])] if layer.kind == "conv" else []
    return c_call(
        f"{layer.kind}_layer", [source, "count", f"&{name}_window", *weights, *out, target]
    )


def layer_objects(prefix: str, layers: list[CLayer], kind: str) -> str:
    """The per-layer ``struct window`` and ``struct requantization`` objects of the .c."""
    lines = []
    for layer in layers:
        name = f"{prefix}_{layer.name}"
        if layer.kind != "linear":
            lines.append(
                f"static const struct window {name}_window =\n    {window_literal(layer)};\n"
            )
        if kind == "int8" and layer.weighted:
            lines.append(
                f"static const struct requantization {name}_requantization = {{\n"
                f"    {name}_multiplier,\n    {name}_shift,\n"
                f"    {layer.output_zero_point}, {layer.lowest}, {layer.highest}}};\n"
            )
    return "".join(lines)


def kernels_text(layers: list[CLayer], kind: str) -> str:
    """The kernels ``layers`` need, in a fixed order, after the shared definitions."""
    kernels = INT8_KERNELS if kind == "int8" else FLOAT_KERNELS
    used = {layer.kind for layer in layers}
    shared = (REQUANTIZE_C if kind == "int8" else "") + (WINDOW_C if used - {"linear"} else "")
    return shared + "".join(f"\n{text}" for name, text in kernels.items() if name in used)
