"""The model as one dependency-free C file pair (notebook 10): ``export_c(model, directory)``.

    python -m ptqlib export --checkpoint int8.pt --format c --out simplenet_c/

writes ``<prefix>.h`` (the constants as ``const`` arrays), ``<prefix>.c`` (the forward
pass), ``main.c`` (classify one digit from a file), ``BUILD`` (the one-line build command)
and ``model.json`` (what ``ptqlib.deploy.c_runtime`` needs to call it from Python).

**INT8: what is folded at export.** Every Int8Linear computes (``ptqlib.int8_layers``)::

    acc = sum_k (q_x,k - Z_x) q_w,k + q_b         q_y = clamp(round(M acc) + Z_y, lo, hi)

The C keeps every activation as uint8 ``u`` (0..255): a uint8 activation is its own ``u``,
one with negative integers (int8) travels as ``u = q + 128`` (its zero-point and clamp move
by 128 too). Then
``sum_k (u_k - Z_u) q_w,k = sum_k u_k q_w,k - Z_u sum_k q_w,k``: the second term is one
integer per output channel, folded into the bias, ``bias = q_b - Z_u sum_k q_w,k``. What is
left, ``sum_k u_k q_w,k``, is exactly what AVX-512 VNNI's ``vpdpbusd`` computes (uint8 x
int8 into int32). Its partial sums stay below ``255 sum_k |q_w,k| + |bias|``, checked
against 2^31 here.

**The input.** ptqlib's default INT8 checkpoint takes normalised float images
``x = (p / 255 - mean) / std`` and quantizes them in float32. The C file takes raw pixels
``p`` (0..255) instead, through a 256-entry table ``p -> q_x`` computed here by ptqlib's own
quantize_input: exact, and no float at run time. A model converted with
``pixel_input=True`` reads pixels directly (S_x = 1, Z_x = 0): no table.

**Integrity.** Each generated file starts with the SHA-256 of the header and the source
(below their first lines), also kept in ``model.json``; :func:`verify_directory` checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ptqlib.data import MNIST_MEAN, MNIST_STD, normalise
from ptqlib.deploy import c_source
from ptqlib.errors import InputError
from ptqlib.int8_gemm import carrier_offset
from ptqlib.int8_layers import Int8Linear
from ptqlib.int8_model import Int8Model
from ptqlib.integer_arithmetic import INT32_MAX
from ptqlib.models import INPUT_FEATURES

MANIFEST = "model.json"
FORMAT = "ptqlib-c"
SUPPORTED = "C export supports Linear/ReLU/Flatten models"
# Shared-library and program flags: -mprefer-vector-width=512 lets gcc use full AVX-512
# registers in the portable loops (it prefers 256 bits otherwise; measured 1.6-1.8x).
BUILD_FLAGS = ("-std=c99", "-O3", "-march=native")


@dataclass(frozen=True)
class Int8CLayer:
    """One fused Linear(+ReLU) as the C computes it, all integers, activations as uint8."""

    name: str
    weight: torch.Tensor  # int8 [out, in]
    bias: torch.Tensor  # int32 [out]: q_b - Z_u sum_k q_w,k
    multiplier: torch.Tensor  # int32 [out]: M0
    shift: torch.Tensor  # int8 [out]: n
    output_zero_point: int  # Z_y in the uint8 domain
    lowest: int  # the clamp (a fused ReLU: lowest = Z_y), uint8 domain
    highest: int

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


def uint8_shift(dtype: torch.dtype) -> int:
    """What turns an activation's integer q into the C's uint8 u = q + shift: 0 for uint8,
    128 for int8 (the carrier ``q - offset`` plus 128)."""
    return 128 - carrier_offset(dtype)


def int8_c_layers(model: Int8Model) -> list[Int8CLayer]:
    """The Int8Linear layers of ``model`` with their constants folded for the C (see the
    module docstring). Refuses anything else than Linear/ReLU/Flatten and the float32
    requantization (ONNX Runtime's, which the integer C does not implement).

    Each activation between two layers gets one shift u = q + shift, 0 or 128, chosen so that
    its integer range lands in 0..255 (128 only for a range reaching below 0, i.e. int8):
    producer and consumer use the same one, so the sums are unchanged. The model's input and
    output take the shift of their dtype, which the caller knows."""
    if not isinstance(model, Int8Model):
        raise InputError(f"model: expected an Int8Model, got {type(model).__name__}")
    linears = []
    for layer in model.layers:
        if isinstance(layer, nn.Flatten):
            continue  # a flat [N, 784] input is what the C reads
        if not isinstance(layer, Int8Linear):
            raise InputError(f"model: {SUPPORTED}; got a {type(layer).__name__}")
        requantization = getattr(layer, "requantization", "fixed_point")
        if requantization != "fixed_point":
            raise InputError(
                f"layer {layer.name!r}: requantization {requantization!r}; the C export "
                "implements only ptqlib's fixed point M0 2^-n (requantization='fixed_point')"
            )
        linears.append(layer)
    layers, input_shift = [], uint8_shift(model.input_qparams.dtype)
    for index, layer in enumerate(linears):
        if index == len(linears) - 1:
            output_shift = uint8_shift(model.output_qparams.dtype)
        else:
            output_shift = 128 if layer.output_range()[0] < 0 else 0
        layers.append(fold_layer(layer, input_shift, output_shift))
        input_shift = output_shift
    return layers


def fold_layer(layer: Int8Linear, input_shift: int = 0, output_shift: int = 0) -> Int8CLayer:
    """One layer's constants for the C, with its input and output as u = q + shift."""
    weight = layer.weight.to(torch.int64)
    input_zero_point = int(layer.input_zero_point) + input_shift
    bias = layer.bias.to(torch.int64) - input_zero_point * weight.sum(dim=1)
    # VNNI's partial sums (and the portable int32 sum) stay below this bound.
    largest = 255 * weight.abs().sum(dim=1) + bias.abs()
    if int(largest.max()) > INT32_MAX:
        raise InputError(
            f"layer {layer.name!r}: 255 * sum|w| + |bias| = {int(largest.max()):,} does not "
            "fit in int32; the C's int32 accumulator could overflow"
        )
    lowest, highest = layer.output_range()
    multiplier = torch.as_tensor(layer.multiplier).expand(layer.out_features)
    shift = torch.as_tensor(layer.shift).expand(layer.out_features)
    return Int8CLayer(
        name=layer.name,
        weight=layer.weight.to(torch.int8),
        bias=bias.to(torch.int32),
        multiplier=multiplier.to(torch.int32),
        shift=shift.to(torch.int8),
        output_zero_point=int(layer.output_zero_point) + output_shift,
        lowest=lowest + output_shift,
        highest=highest + output_shift,
    )


def input_lookup_table(model: Int8Model) -> torch.Tensor | None:
    """``table[p]``: the C's uint8 input u for pixel p (0..255), by ptqlib's own
    quantize_input of the normalised pixel; None for a model that reads pixels directly
    (input qparams S = 1, Z = 0 on uint8 0..255: the pixel is q_x)."""
    qparams = model.input_qparams
    if (
        qparams.dtype == torch.uint8
        and float(qparams.scale) == 1.0
        and int(qparams.zero_point) == 0
        and (qparams.quant_min, qparams.quant_max) == (0, 255)
    ):
        return None
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    carriers = model.quantize_input(normalise(pixels).reshape(256))
    return (carriers.to(torch.int16) + 128).to(torch.uint8)


# --- the files ---------------------------------------------------------------------------------


def int8_header(prefix: str, layers: list[Int8CLayer], lookup: torch.Tensor | None) -> str:
    upper = prefix.upper()
    parts = [
        f"/* {prefix}.h: the INT8 model's integers (generated by ptqlib). Per layer: int8\n"
        " * weights [out][in], int32 bias (q_b - Z_x sum_k w, scale S_x S_w), the fixed-point\n"
        " * multiplier M0 and shift n per output channel, the output zero point and clamp. */\n",
        f"#ifndef {upper}_H\n#define {upper}_H\n#include <stddef.h>\n#include <stdint.h>\n\n",
        f"#define {upper}_INPUTS {INPUT_FEATURES}\n#define {upper}_OUTPUTS "
        f"{layers[-1].out_features}\n\n",
    ]
    if lookup is not None:
        parts.append(c_source.c_array("uint8_t", "input_lut", lookup.tolist(), "pixel -> q_x"))
    in_features = INPUT_FEATURES
    for layer in layers:
        names = c_source.CLayerNames(layer.name)
        macro = names.upper
        parts.append(
            f"\n/* {layer.name}: {in_features} -> {layer.out_features} */\n"
            f"#define {macro}_IN {in_features}\n#define {macro}_OUT {layer.out_features}\n"
            f"#define {macro}_OUTPUT_ZERO_POINT {layer.output_zero_point}\n"
            f"#define {macro}_LOWEST {layer.lowest}\n#define {macro}_HIGHEST {layer.highest}\n"
        )
        for ctype, field, values in (
            ("int8_t", "weight", layer.weight.reshape(-1)),
            ("int32_t", "bias", layer.bias),
            ("int32_t", "multiplier", layer.multiplier),
            ("int8_t", "shift", layer.shift),
        ):
            comment = f"{layer.name} {field}"
            parts.append(
                c_source.c_array(ctype, f"{names.prefix}_{field}", values.tolist(), comment)
            )
        in_features = layer.out_features
    parts.append(
        f"\n/* input: batch x {INPUT_FEATURES} uint8 pixels; output: batch x "
        f"{layers[-1].out_features} uint8 logits */\n"
        f"void {prefix}_forward(const uint8_t *input, uint8_t *output, int32_t batch);\n"
        "\n#endif\n"
    )
    return "".join(parts)


def fp32_linears(model: nn.Module) -> list[tuple[nn.Linear, bool]]:
    """``(linear, relu)`` for every Linear of an FP32 Sequential of Linear/ReLU/Flatten."""
    modules = list(model.children()) if isinstance(model, nn.Sequential) else [model]
    steps: list[tuple[nn.Linear, bool]] = []
    for module in modules:
        if isinstance(module, nn.Linear):
            steps.append((module, False))
        elif isinstance(module, nn.ReLU) and steps and not steps[-1][1]:
            steps[-1] = (steps[-1][0], True)
        elif not isinstance(module, nn.Flatten):
            raise InputError(f"model: {SUPPORTED}; got a {type(module).__name__}")
    if not steps or steps[0][0].in_features != INPUT_FEATURES:
        raise InputError(f"model: {SUPPORTED} on {INPUT_FEATURES} inputs")
    return steps


def fp32_header(prefix: str, model: nn.Module, names: list[str]) -> str:
    upper = prefix.upper()
    steps = fp32_linears(model)
    parts = [
        f"/* {prefix}.h: the FP32 model's weights, transposed ([in][out], for the axpy loop),\n"
        " * and biases (generated by ptqlib). */\n",
        f"#ifndef {upper}_H\n#define {upper}_H\n#include <stddef.h>\n#include <stdint.h>\n\n",
        f"#define {upper}_INPUTS {INPUT_FEATURES}\n"
        f"#define {upper}_OUTPUTS {steps[-1][0].out_features}\n",
    ]
    for (linear, relu), name in zip(steps, names, strict=True):
        layer = c_source.CLayerNames(name)
        parts.append(
            f"\n/* {name}: {linear.in_features} -> {linear.out_features} */\n"
            f"#define {layer.upper}_IN {linear.in_features}\n"
            f"#define {layer.upper}_OUT {linear.out_features}\n"
            f"#define {layer.upper}_RELU {int(relu)}\n"
        )
        weight_t = linear.weight.detach().float().t().reshape(-1).tolist()
        bias = linear.bias.detach().float().tolist()
        parts.append(c_source.c_array("float", f"{layer.prefix}_weight_t", weight_t, name))
        parts.append(c_source.c_array("float", f"{layer.prefix}_bias", bias, f"{name} bias"))
    parts.append(
        f"\n/* input: batch x {INPUT_FEATURES} normalised floats; output: batch x "
        f"{steps[-1][0].out_features} float logits */\n"
        f"void {prefix}_forward(const float *input, float *output, int32_t batch);\n\n#endif\n"
    )
    return "".join(parts)


def build_command(prefix: str) -> str:
    return f"cc {' '.join(BUILD_FLAGS)} -o {prefix} main.c {prefix}.c"


def content_digest(header_body: str, source_body: str) -> str:
    """SHA-256 of the header and the source below their first lines (the digest lines)."""
    return hashlib.sha256((header_body + "\0" + source_body).encode()).hexdigest()


@dataclass(frozen=True)
class CExport:
    """What :func:`export_c` wrote: the directory, the file prefix, the build command."""

    directory: Path
    prefix: str
    kind: str
    build: str
    digest: str

    @property
    def header(self) -> Path:
        return self.directory / f"{self.prefix}.h"

    @property
    def source(self) -> Path:
        return self.directory / f"{self.prefix}.c"


def export_c(
    model: nn.Module, directory: str | os.PathLike, model_name: str = "simplenet"
) -> CExport:
    """Write ``model`` (an :class:`Int8Model`, or an FP32 SimpleNet) as C into ``directory``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"out: {directory} exists and is not a directory")
    kind = "int8" if isinstance(model, Int8Model) else "fp32"
    prefix = f"{model_name}_{kind}"
    manifest: dict = {"format": FORMAT, "version": 1, "kind": kind, "model": model_name}
    if kind == "int8":
        layers = int8_c_layers(model)
        names = [layer.name for layer in layers]
        lookup = input_lookup_table(model)
        header = int8_header(prefix, layers, lookup)
        sizes = [(layer.name, layer.out_features) for layer in layers]
        source = c_source.int8_source(prefix, header, INPUT_FEATURES, sizes[-1][1], sizes)
        output = model.output_qparams
        manifest.update(
            input="uint8 pixels",
            output_dtype="uint8" if output.dtype == torch.uint8 else "int8",
            output_scale=float(output.scale),
            output_zero_point=layers[-1].output_zero_point,
            weight_bits={name: 8 for name in names},
            activation_bits=8,
        )
    else:
        steps = fp32_linears(model)
        names = [name for name, child in model.named_children() if isinstance(child, nn.Linear)]
        header = fp32_header(prefix, model, names)
        sizes = [
            (name, linear.out_features) for name, (linear, _) in zip(names, steps, strict=True)
        ]
        source = c_source.fp32_source(prefix, INPUT_FEATURES, sizes[-1][1], sizes)
        manifest.update(input="normalised float32", weight_bits=32, activation_bits=32)
    digest = content_digest(header, source)
    files = f"{prefix}.h and {prefix}.c"
    build = build_command(prefix)
    outputs = sizes[-1][1]
    main = c_source.main_source(prefix, kind, INPUT_FEATURES, outputs, MNIST_MEAN, MNIST_STD)
    manifest.update(prefix=prefix, inputs=INPUT_FEATURES, outputs=outputs, digest=digest)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{prefix}.h").write_text(c_source.digest_line(digest, files) + header)
    (directory / f"{prefix}.c").write_text(c_source.digest_line(digest, files) + source)
    (directory / "main.c").write_text(main)
    (directory / "BUILD").write_text(build + "\n")
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return CExport(directory, prefix, kind, build, digest)


def verify_directory(directory: str | os.PathLike) -> dict:
    """The manifest of an exported directory, after checking that the header and source are
    the ones exported (their digest); an InputError naming what is wrong otherwise."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise InputError(
            f"{directory}: no {MANIFEST}; not a directory written by export --format c"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{directory / MANIFEST}: not valid JSON ({error})") from None
    keys = ("format", "kind", "prefix", "digest", "inputs", "outputs")
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not all(key in manifest for key in keys)
    ):
        raise InputError(f"{directory / MANIFEST}: not a ptqlib C export manifest")
    prefix = manifest["prefix"]
    bodies = []
    for suffix in (".h", ".c"):
        path = directory / f"{prefix}{suffix}"
        try:
            first, _, body = path.read_text().partition("\n")
        except (FileNotFoundError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: cannot read the exported C ({error})") from None
        if manifest["digest"] not in first:
            raise InputError(f"{path}: its digest line does not match {MANIFEST}")
        bodies.append(body)
    if content_digest(*bodies) != manifest["digest"]:
        raise InputError(
            f"{directory}: {prefix}.h/{prefix}.c changed since export (SHA-256 differs); "
            "export again"
        )
    return manifest
