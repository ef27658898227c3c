"""The model as dependency-free C (notebook 10): ``export_c(model, directory)``.

    python -m ptqlib export --checkpoint int8.pt --format c --out simplenet_c/

writes, for a model named ``simplenet`` (every C name starts with ``<model>_<kind>``):

- ``simplenet_int8.h``: the interface and the constants declared (``ptqlib.deploy.c_files``);
- ``simplenet_int8.c``: the constants defined once and the portable loops: any C compiler;
- ``simplenet_int8_avx2.c`` (models of Linear layers): the same forward pass with the weights
  packed for x86 AVX2 and FMA (``ptqlib.deploy.c_avx2``);
- ``main.c`` (classify one digit from a file), ``BUILD`` (one build command per source) and
  ``model.json`` (what ``ptqlib.deploy.c_runtime`` needs to call it from Python).

What the C computes, and how the INT8 constants are folded for it, is in
``ptqlib.deploy.c_graph``.

**Integrity.** One SHA-256 digest covers every file: the C files below their first line
(which carries the digest), ``BUILD``, and ``model.json`` without its ``digest`` field
(``ptqlib.digests.content_digest`` of their texts). :func:`verify_directory` recomputes it
and checks the manifest's sizes against the header's ``#define``\\ s, so a changed file, or a
``model.json`` that would size the output buffer wrongly, is refused before any C runs.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ptqlib.data import MNIST_MEAN, MNIST_STD
from ptqlib.deploy import c_avx2, c_avx2_packing
from ptqlib.deploy.c_files import (
    activation_plan,
    digest_line,
    header_text,
    main_text,
    source_text,
)
from ptqlib.deploy.c_graph import (
    c_prefix,
    check_unique_names,
    fp32_graph,
    input_lookup_table,
    int8_graph,
)
from ptqlib.digests import content_digest
from ptqlib.errors import InputError
from ptqlib.int8_layers import Int8Step
from ptqlib.int8_model import Int8Model
from ptqlib.models import MODELS
from ptqlib.packing import bits_for_range

MANIFEST = "model.json"
FORMAT = "ptqlib-c"
VERSION = 2
# One set of flags for every build, INT8 and FP32 alike. gcc turns floating-point
# contraction (a + b * c as one fused multiply-add) off under ISO C (-std=c99);
# -ffp-contract=fast turns it back on, so the FP32 loops use FMA where the CPU has it.
BUILD_FLAGS = ("-std=c99", "-O3", "-march=native", "-ffp-contract=fast")
# Default images per tile: measured best for SimpleNet (INT8's tile of uint8 activations is
# 4 times smaller than FP32's); 1 for the CNNs, whose activations are large and whose weights
# are few.
DEFAULT_TILE = {("int8", "mlp"): 16, ("fp32", "mlp"): 4, ("int8", "cnn"): 1, ("fp32", "cnn"): 1}


@dataclass(frozen=True)
class CExport:
    """What :func:`export_c` wrote: the directory, the file prefix, the build commands."""

    directory: Path
    prefix: str
    kind: str
    builds: dict[str, str]
    digest: str

    @property
    def build(self) -> str:
        """The command that builds the program from the portable source."""
        return build_command(self.prefix, self.builds["portable"], self.prefix)

    @property
    def header(self) -> Path:
        return self.directory / f"{self.prefix}.h"

    @property
    def source(self) -> Path:
        return self.directory / self.builds["portable"]


def build_command(prefix: str, source: str, program: str) -> str:
    return f"cc {' '.join(BUILD_FLAGS)} -o {program} main.c {source}"


def build_file(prefix: str, builds: dict[str, str]) -> str:
    lines = ["# The program, from the portable source (any C compiler):"]
    lines.append(build_command(prefix, builds["portable"], prefix))
    if "avx2" in builds:
        lines.append("# The same program with the x86 AVX2 + FMA kernels (gcc or clang, x86):")
        lines.append(build_command(prefix, builds["avx2"], f"{prefix}_avx2"))
    return "\n".join(lines) + "\n"


def default_model_name(model: nn.Module) -> str:
    """ptqlib's name of an FP32 model's class ("simplenet", "cnn", "dwcnn"), else "model"."""
    return next((name for name, cls in MODELS.items() if type(model) is cls), "model")


def bits_of(model: Int8Model) -> tuple[dict[str, int], int]:
    """The weight bits of every layer and the widest activation, from their integer ranges."""
    steps = [layer for layer in model.layers if isinstance(layer, Int8Step)]
    weights = {layer.name: bits_for_range(*layer.weight_range) for layer in steps}
    ranges = [(model.input_qparams.quant_min, model.input_qparams.quant_max)]
    ranges += [(layer.output_qparams.quant_min, layer.output_qparams.quant_max) for layer in steps]
    return weights, max(bits_for_range(*bounds) for bounds in ranges)


def export_digest(bodies: dict[str, str], manifest: dict) -> str:
    """The digest of an export: every file's text (C files below their digest line) and the
    manifest without its ``digest`` field."""
    manifest = {key: value for key, value in manifest.items() if key != "digest"}
    return content_digest({"files": bodies, "manifest": manifest})


def export_c(
    model: nn.Module, directory: str | os.PathLike, model_name: str | None = None
) -> CExport:
    """Write ``model`` (an :class:`Int8Model`, or an FP32 Sequential: SimpleNet, SmallCNN,
    DepthwiseCNN) as C into ``directory``; ``model_name`` starts every C name (default:
    the FP32 model's name in ``ptqlib.models.MODELS``, else "model")."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"out: {directory} exists and is not a directory")
    kind = "int8" if isinstance(model, Int8Model) else "fp32"
    prefix = c_prefix(model_name or default_model_name(model), kind)
    layers = int8_graph(model) if kind == "int8" else fp32_graph(model)
    check_unique_names(layers)
    lookup = input_lookup_table(model) if kind == "int8" else None
    linear_only = all(layer.kind == "linear" for layer in layers)
    tile = DEFAULT_TILE[kind, "mlp" if linear_only else "cnn"]
    inputs, outputs = layers[0].inputs, layers[-1].outputs
    bodies = {
        f"{prefix}.h": header_text(prefix, kind, layers, lookup, tile),
        f"{prefix}.c": source_text(prefix, kind, layers, lookup),
        "main.c": main_text(prefix, kind, inputs, outputs, MNIST_MEAN, MNIST_STD),
    }
    builds = {"portable": f"{prefix}.c"}
    arena = {"portable": activation_plan(layers, kind, lookup is not None)[1].size}
    if linear_only:
        builds["avx2"] = f"{prefix}_avx2.c"
        bodies[builds["avx2"]] = c_avx2.source_text(prefix, kind, layers, lookup)
        arena["avx2"] = c_avx2_packing.activation_plan(layers, kind)[1].size
    bodies["BUILD"] = build_file(prefix, builds)
    manifest: dict = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model": model_name or default_model_name(model),
        "prefix": prefix,
        "inputs": inputs,
        "outputs": outputs,
        "tile": tile,
        "builds": builds,
        "arena_bytes_per_image": arena,
        "files": sorted([*bodies, MANIFEST]),
        "layers": [f"{layer.kind} {layer.name}" for layer in layers],
    }
    if kind == "int8":
        output = model.output_qparams
        weight_bits, activation_bits = bits_of(model)
        manifest.update(
            input="uint8 pixels",
            output_dtype="uint8" if output.dtype == torch.uint8 else "int8",
            output_scale=float(output.scale),
            output_zero_point=layers[-1].output_zero_point,
            weight_bits=weight_bits,
            activation_bits=activation_bits,
        )
    else:
        manifest.update(input="normalised float32", weight_bits=32, activation_bits=32)
    digest = export_digest(bodies, manifest)
    manifest["digest"] = digest
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        text = digest_line(digest) + body if name.endswith((".c", ".h")) else body
        (directory / name).write_text(text)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return CExport(directory, prefix, kind, builds, digest)


def read_manifest(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise InputError(
            f"{directory}: no {MANIFEST}; not a directory written by export --format c"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{directory / MANIFEST}: not valid JSON ({error})") from None
    keys = ("format", "kind", "prefix", "digest", "inputs", "outputs", "files", "builds")
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("version") != VERSION
        or not all(key in manifest for key in keys)
        or not isinstance(manifest["files"], list)
        or not all(isinstance(name, str) and "/" not in name for name in manifest["files"])
    ):
        raise InputError(
            f"{directory / MANIFEST}: not a ptqlib C export manifest (version {VERSION}); "
            "export again"
        )
    check_manifest_fields(directory, manifest)
    return manifest


def check_manifest_fields(directory: Path, manifest: dict) -> None:
    """The fields Python acts on, each of its type and range: the sources it compiles (files
    of the export, so covered by the digest), the kind, the tile and the output's dtype,
    zero-point and scale (which turn the C's bytes into ptqlib's integers and logits)."""
    builds, files = manifest["builds"], manifest["files"]
    problems = []
    if not (isinstance(builds, dict) and builds and all(v in files for v in builds.values())):
        problems.append(f"builds {builds!r} must name files of the export ({', '.join(files)})")
    if manifest["kind"] not in ("int8", "fp32"):
        problems.append(f"kind {manifest['kind']!r} must be 'int8' or 'fp32'")
    if type(manifest.get("tile")) is not int or manifest["tile"] < 1:
        problems.append(f"tile {manifest.get('tile')!r} must be a whole number >= 1")
    if manifest["kind"] == "int8":
        scale = manifest.get("output_scale")
        if manifest.get("output_dtype") not in ("uint8", "int8"):
            problems.append(f"output_dtype {manifest.get('output_dtype')!r} must be uint8 or int8")
        if type(manifest.get("output_zero_point")) is not int or not (
            0 <= manifest["output_zero_point"] <= 255
        ):
            problems.append(
                f"output_zero_point {manifest.get('output_zero_point')!r} must be 0..255 "
                "(the C's uint8 domain)"
            )
        if not isinstance(scale, float) or not 0 < scale < float("inf"):
            problems.append(f"output_scale {scale!r} must be a positive number")
    if problems:
        raise InputError(f"{directory / MANIFEST}: {'; '.join(problems)}; export again")


def verify_directory(directory: str | os.PathLike) -> dict:
    """The manifest of an exported directory, after checking every file against the digest
    and the manifest's sizes against the header; an InputError naming what is wrong."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    bodies = {}
    for name in manifest["files"]:
        if name == MANIFEST:
            continue
        path = directory / name
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: cannot read the exported file ({error})") from None
        if name.endswith((".c", ".h")):
            first, _, text = text.partition("\n")
            if str(manifest["digest"]) not in first:
                raise InputError(f"{path}: its digest line does not match {MANIFEST}")
        bodies[name] = text
    if export_digest(bodies, manifest) != manifest["digest"]:
        raise InputError(
            f"{directory}: its files changed since export (SHA-256 differs); export again"
        )
    check_header_sizes(directory, manifest, bodies.get(f"{manifest['prefix']}.h", ""))
    return manifest


def check_header_sizes(directory: Path, manifest: dict, header: str) -> None:
    """The manifest's ``inputs`` and ``outputs`` (which size the buffers Python passes)
    must be the header's ``<PREFIX>_INPUTS`` and ``<PREFIX>_OUTPUTS``."""
    upper = str(manifest["prefix"]).upper()
    for key in ("inputs", "outputs"):
        found = re.search(rf"^#define {re.escape(upper)}_{key.upper()} (\d+)$", header, re.M)
        if found is None or int(found.group(1)) != manifest[key]:
            raise InputError(
                f"{directory / MANIFEST}: {key} = {manifest[key]!r}, but the header defines "
                f"{found.group(0) if found else 'none'}"
            )
