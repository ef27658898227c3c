"""The checkpoint of a model quantized to a number format (kind ``"formats"``).

A plain dict that loads with ``torch.load(weights_only=True)``, written atomically with its
SHA-256 digest like every ptqlib checkpoint (``ptqlib.checkpoints``, ``ptqlib.digests``)::

    kind             "formats"
    model            "simplenet" | "cnn" | "dwcnn" (a CNN with its BatchNorm folded)
    format           the scheme's name ("mxfp4", ...; ptqlib.formats.schemes)
    layers           per Linear/Conv2d: its weight in the format (below), "shape" [out, K]
    state_dict       everything else, in FP32 (biases)
    activation_amax  per layer, the calibrated input range, or None (weights only)
    meta             where it came from

A weight holds exactly what the format stores, its codes packed bit after bit
(``ptqlib.packing``: two E2M1 codes per byte, four E2M3 codes in three bytes), so the
file's size is the format's size plus the (small) dict around it:

    fp8        codes (uint8) and the FP32 scale
    mx         element codes (packed), E8M0 scale codes (uint8)
    nvfp4      E2M1 codes (packed), E4M3 block scale codes (uint8), the FP32 tensor scale
    groupwise  integers (packed), scales (float16)
    codebook   indices (packed), centroids (float32)

Loading rebuilds the quantized tensors (so a report can compare them with the FP32 weights)
and the simulated model of ``ptqlib.formats.simulation``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptqlib.batchnorm import fold_model, has_batchnorm
from ptqlib.checkpoints import load_checkpoint, save_checkpoint
from ptqlib.errors import InputError
from ptqlib.formats.codebook import CodebookTensor
from ptqlib.formats.fp8 import FP8Tensor
from ptqlib.formats.groupwise import GroupwiseTensor
from ptqlib.formats.microscaling import MXTensor
from ptqlib.formats.minifloat import E2M1, MINIFLOATS
from ptqlib.formats.nvfp4 import NVFP4Tensor
from ptqlib.formats.schemes import QuantizedTensor, get_scheme
from ptqlib.formats.simulation import quantize_weights, simulate, weighted_layers
from ptqlib.models import build_model
from ptqlib.packing import pack, unpack

KIND = "formats"


def _packed(codes: torch.Tensor, bits: int, lowest: int = 0) -> dict[str, Any]:
    return {"bits": bits, "lowest": lowest, "data": pack(codes, bits, lowest)}


def _unpacked(entry: Any, bits: int, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """The codes of :func:`_packed`, as int64 (``bits`` is what the format needs)."""
    _require(
        isinstance(entry, dict)
        and entry.get("bits") == bits
        and isinstance(entry.get("lowest"), int)
        and isinstance(entry.get("data"), torch.Tensor),
        f"{where}: the packed codes are damaged (expected {bits}-bit codes)",
    )
    lowest = entry["lowest"]
    # unpack returns int8, which wraps codes above 127 (an 8-bit E4M3 code): undo the wrap.
    wrapped = unpack(entry["data"], bits, lowest, shape).to(torch.int64)
    return (wrapped - lowest) % 256 + lowest


def weight_entry(quantized: QuantizedTensor) -> dict[str, Any]:
    """What the file holds for one quantized weight ``[out, K]``."""
    if isinstance(quantized, FP8Tensor):
        return {
            "type": "fp8",
            "shape": list(quantized.codes.shape),
            "element_format": quantized.element_format.name,
            "codes": quantized.codes,
            "scale": float(quantized.scale),
        }
    if isinstance(quantized, MXTensor):
        fmt = quantized.element_format
        return {
            "type": "mx",
            "shape": list(quantized.element_codes.shape),
            "element_format": fmt.name,
            "block_size": quantized.block_size,
            "elements": _packed(quantized.element_codes, fmt.bits),
            "scale_codes": quantized.scale_codes,
        }
    if isinstance(quantized, NVFP4Tensor):
        return {
            "type": "nvfp4",
            "shape": list(quantized.element_codes.shape),
            "block_size": quantized.block_size,
            "elements": _packed(quantized.element_codes, E2M1.bits),
            "block_scale_codes": quantized.block_scale_codes,
            "tensor_scale": float(quantized.tensor_scale),
        }
    if isinstance(quantized, GroupwiseTensor):
        return {
            "type": "groupwise",
            "shape": list(quantized.values.shape),
            "group_size": quantized.group_size,
            "values": _packed(quantized.values, quantized.bits, -(2 ** (quantized.bits - 1))),
            "scales": quantized.scales,
        }
    if isinstance(quantized, CodebookTensor):
        return {
            "type": "codebook",
            "shape": list(quantized.indices.shape),
            "indices": _packed(quantized.indices, quantized.index_bits),
            "centroids": quantized.centroids,
        }
    raise TypeError(f"quantized: cannot store a {type(quantized).__name__}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def _tensor(entry: dict, key: str, dtype: torch.dtype, where: str) -> torch.Tensor:
    value = entry.get(key)
    _require(
        isinstance(value, torch.Tensor) and value.dtype == dtype,
        f"{where}: {key} must be a {dtype} tensor",
    )
    return value


def _number(entry: dict, key: str, where: str) -> torch.Tensor:
    value = entry.get(key)
    _require(
        isinstance(value, float) and math.isfinite(value) and value > 0,
        f"{where}: {key} must be a positive number, got {value!r}",
    )
    return torch.tensor(value, dtype=torch.float32)


def _block_size(entry: dict, key: str, where: str) -> int:
    value = entry.get(key)
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{where}: {key} must be a whole number >= 1, got {value!r}",
    )
    return value


def _scales(entry: dict, key: str, dtype: torch.dtype, shape: tuple, size: int, where: str):
    """One scale per block of ``size`` along K: ``[out, ceil(K / size)]``."""
    scales = _tensor(entry, key, dtype, where)
    expected = (shape[0], math.ceil(shape[1] / size))
    _require(tuple(scales.shape) == expected, f"{where}: {key} must have shape {expected}")
    return scales


def tensor_from_entry(entry: Any, where: str) -> QuantizedTensor:
    """The quantized tensor of :func:`weight_entry`, every field checked."""
    _require(isinstance(entry, dict), f"{where}: expected a dict")
    shape = entry.get("shape")
    _require(
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(n, int) and n > 0 for n in shape),
        f"{where}: shape must be [out, K], got {shape!r}",
    )
    shape = tuple(shape)
    kind = entry.get("type")
    if kind in ("fp8", "mx"):
        fmt = MINIFLOATS.get(entry.get("element_format"))
        _require(
            fmt is not None and fmt.signed,
            f"{where}: unknown element format {entry.get('element_format')!r}",
        )
    if kind == "fp8":
        codes = _tensor(entry, "codes", torch.uint8, where)
        _require(tuple(codes.shape) == shape, f"{where}: codes must have shape {shape}")
        return FP8Tensor(codes, _number(entry, "scale", where), fmt)
    if kind == "mx":
        size = _block_size(entry, "block_size", where)
        codes = _unpacked(entry.get("elements"), fmt.bits, shape, where)
        scales = _scales(entry, "scale_codes", torch.uint8, shape, size, where)
        return MXTensor(codes, scales, fmt, size)
    if kind == "nvfp4":
        size = _block_size(entry, "block_size", where)
        codes = _unpacked(entry.get("elements"), E2M1.bits, shape, where)
        scales = _scales(entry, "block_scale_codes", torch.uint8, shape, size, where)
        return NVFP4Tensor(codes, scales, _number(entry, "tensor_scale", where), size)
    if kind == "groupwise":
        size = _block_size(entry, "group_size", where)
        values = entry.get("values")
        bits = values.get("bits") if isinstance(values, dict) else None
        _require(isinstance(bits, int) and 2 <= bits <= 8, f"{where}: bits must be 2..8")
        integers = _unpacked(values, bits, shape, where).to(torch.int8)
        scales = _scales(entry, "scales", torch.float16, shape, size, where)
        return GroupwiseTensor(integers, scales, size, bits)
    if kind == "codebook":
        centroids = _tensor(entry, "centroids", torch.float32, where)
        _require(2 <= centroids.numel() <= 256, f"{where}: a codebook holds 2..256 values")
        bits = max(1, math.ceil(math.log2(centroids.numel())))
        indices = _unpacked(entry.get("indices"), bits, shape, where)
        _require(int(indices.max()) < centroids.numel(), f"{where}: an index is out of range")
        return CodebookTensor(indices, centroids)
    raise InputError(f"{where}: unknown weight type {kind!r}")


@dataclass(frozen=True)
class FormatModel:
    """A loaded ``"formats"`` checkpoint: the simulated ``model`` and what it was made of."""

    model: nn.Sequential
    model_name: str
    scheme_name: str
    weights: dict[str, QuantizedTensor]
    activation_amax: dict[str, float] | None
    meta: dict


def architecture(name: str) -> nn.Sequential:
    """A fresh model of the named kind as it is quantized: with its BatchNorm folded."""
    model = build_model(name).eval()
    return fold_model(model) if has_batchnorm(model) else model


def format_payload(
    model: nn.Sequential,
    name: str,
    scheme_name: str,
    activation_amax: dict[str, float] | None = None,
    meta: dict | None = None,
    quantized: dict[str, QuantizedTensor] | None = None,
) -> dict[str, Any]:
    """The checkpoint of ``model`` (FP32, a ``name`` model: "simplenet", "cnn", ...; a CNN
    with its BatchNorm folded) in ``scheme_name``, its activations too if ``activation_amax``
    is given; ``quantized`` reuses weights already quantized (see the module docstring)."""
    expected = {key: value.shape for key, value in architecture(name).state_dict().items()}
    found = {key: value.shape for key, value in model.state_dict().items()}
    if found != expected:
        folded = " with its BatchNorm folded (ptqlib.batchnorm.fold_model)"
        raise InputError(
            f"model: does not have the layers of a {name}"
            + (folded if has_batchnorm(build_model(name)) else "")
        )
    scheme = get_scheme(scheme_name)
    quantized = quantize_weights(model, scheme) if quantized is None else quantized
    weight_keys = {f"{layer}.weight" for layer, _ in weighted_layers(model)}
    return {
        "kind": KIND,
        "model": name,
        "format": scheme.name,
        "layers": {layer: weight_entry(tensor) for layer, tensor in quantized.items()},
        "state_dict": {k: v for k, v in model.state_dict().items() if k not in weight_keys},
        "activation_amax": activation_amax,
        "meta": meta or {},
    }


def save_formats(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a :func:`format_payload` to ``path`` (atomically, with its digest)."""
    return save_checkpoint(payload, path)


def format_model_from_payload(payload: dict[str, Any], path: str | os.PathLike) -> FormatModel:
    """Rebuild the model of a loaded ``"formats"`` payload (``path`` names it in errors)."""
    try:
        scheme = get_scheme(payload.get("format"))
        model = architecture(payload.get("model"))
        layers = payload.get("layers")
        _require(isinstance(layers, dict), "layers: expected a dict")
        names = [name for name, _ in weighted_layers(model)]
        _require(sorted(layers) == sorted(names), f"layers: expected {names}, got {sorted(layers)}")
        weights = {name: tensor_from_entry(layers[name], f"layer {name!r}") for name in names}
        state = payload.get("state_dict")
        _require(isinstance(state, dict), "state_dict: expected a dict")
        missing, unexpected = model.load_state_dict(state, strict=False)
        _require(
            not unexpected and sorted(missing) == sorted(f"{name}.weight" for name in names),
            f"state_dict: does not fit the {payload.get('model')} (missing {missing}, "
            f"unexpected {unexpected})",
        )
        amax = payload.get("activation_amax")
        _require(
            amax is None or (isinstance(amax, dict) and sorted(amax) == sorted(names)),
            "activation_amax: expected None or one range per layer",
        )
        simulated = simulate(model, scheme, amax, quantized=weights)
    except InputError as error:
        raise InputError(f"{path} is not a valid formats checkpoint: {error}") from error
    meta = payload.get("meta", {})
    return FormatModel(simulated, payload["model"], scheme.name, weights, amax, meta)


def load_formats(path: str | os.PathLike) -> FormatModel:
    """Load a checkpoint written by :func:`save_formats`."""
    return format_model_from_payload(load_checkpoint(path, expected_kind=KIND), path)
