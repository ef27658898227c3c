"""The INT8 checkpoint format: an :class:`~ptqlib.int8_model.Int8Model` as a plain dict.

Per Linear: the int8 weight, the int32 bias, the float32 weight scales and the output
qparams as plain numbers; the model's input qparams and its ``requantization``
(``"fixed_point"`` or ``"float32"``; files written before the field existed load as fixed
point) once. The input qparams of a layer are the output qparams of the one before, and M0,
n are derived from the scales, so nothing is stored twice. A CNN (notebook 07) adds three
entry types: ``"conv2d"`` (like a Linear, with a 4-d weight, stride, padding and ``groups``,
1 or the channel count of a depthwise conv; files without it mean 1), ``"maxpool2d"``
(kernel and stride) and ``"global_avgpool2d"``. Like the FP32 checkpoint
(``ptqlib.checkpoints``) it loads with ``torch.load(weights_only=True)``, and every field is
checked on loading, each with its own message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptqlib.checkpoints import load_checkpoint, save_checkpoint
from ptqlib.errors import InputError
from ptqlib.int8_layers import (
    DTYPE_NAMES,
    Int8Conv2d,
    Int8GlobalAvgPool2d,
    Int8Linear,
    Int8MaxPool2d,
    Int8Step,
    int_pair,
)
from ptqlib.int8_model import Int8Model
from ptqlib.integer_arithmetic import Requantization, requantization_mode
from ptqlib.packing import PACKED_KEY, pack_entry, unpack_entry
from ptqlib.quantization import QParams


def _activation_entry(qparams: QParams) -> dict[str, Any]:
    """Per-tensor activation qparams as plain numbers (a float32 scale is exact as a float)."""
    return {
        "scale": float(qparams.scale),
        "zero_point": int(qparams.zero_point),
        "quant_min": qparams.quant_min,
        "quant_max": qparams.quant_max,
        "dtype": DTYPE_NAMES[qparams.dtype],
    }


def _views_of_one_storage(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same tensors, as views into one flat tensor.

    ``torch.save`` writes every storage as its own record, with its own header: views of
    one storage are written once, as one record. On SimpleNet this saves about 160 bytes.
    """
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    views, start = [], 0
    for tensor in tensors:
        views.append(flat[start : start + tensor.numel()].view(tensor.shape))
        start += tensor.numel()
    return views


def int8_state(model: Int8Model) -> dict[str, Any]:
    """Everything an :class:`Int8Model` is, as plain tensors and numbers.

    Per Linear or Conv2d: the int8 weight, the int32 bias, the float32 weight scales and the
    output qparams. The input qparams of a layer are the output qparams of the one before,
    and M0, n and the folded constants are recomputed on loading, so nothing is stored
    twice. The tensors of one kind share one storage (see :func:`_views_of_one_storage`).
    """
    weighted = model.integer_layers()
    weights = iter(_views_of_one_storage([layer.weight for layer in weighted]))
    biases = iter(_views_of_one_storage([layer.bias for layer in weighted]))
    scales = iter(_views_of_one_storage([layer.weight_scale for layer in weighted]))
    layers = []
    for layer in model.layers:
        if isinstance(layer, nn.Flatten):
            entry = {"type": "flatten", "start_dim": layer.start_dim, "end_dim": layer.end_dim}
        elif isinstance(layer, Int8MaxPool2d):
            entry = _maxpool_entry(layer)
        elif isinstance(layer, Int8GlobalAvgPool2d):
            entry = {"type": "global_avgpool2d"}
        elif isinstance(layer, Int8Step):
            entry = _weighted_entry(layer, next(weights), next(biases), next(scales))
        else:
            raise TypeError(f"model: cannot save a {type(layer).__name__} layer")
        layers.append(entry)
    state = {
        "input": _activation_entry(model.input_qparams),
        "requantization": model.requantization.value,
        "layers": layers,
    }
    return _packed(state)


def _weighted_entry(
    layer: Int8Step, weight: torch.Tensor, bias: torch.Tensor, weight_scale: torch.Tensor
) -> dict[str, Any]:
    """A Linear's entry; a conv's adds stride, padding and groups (its weight is 4-d)."""
    entry = {
        "type": "conv2d" if isinstance(layer, Int8Conv2d) else "linear",
        "name": layer.name,
        "relu": layer.relu,
        "weight": weight,
        "bias": bias,
        "weight_scale": weight_scale,
        "weight_range": list(layer.weight_range),
        "output": _activation_entry(layer.output_qparams),
    }
    if isinstance(layer, Int8Conv2d):
        entry.update(stride=list(layer.stride), padding=list(layer.padding), groups=layer.groups)
    return entry


def _packed(state: dict[str, Any]) -> dict[str, Any]:
    """The state with every sub-8-bit weight packed into bytes (``ptqlib.packing``); the
    int8 weights left and the packed bytes then share one storage each again (a view keeps
    its whole storage alive in the file, packed layers included). All 8-bit: unchanged."""
    layers = [pack_entry(e) if e["type"] == "linear" else e for e in state["layers"]]
    if not any(PACKED_KEY in entry for entry in layers):
        return state
    unpacked = [entry for entry in layers if "weight" in entry]
    packed = [entry[PACKED_KEY] for entry in layers if PACKED_KEY in entry]
    for holders, field in ((unpacked, "weight"), (packed, "data")):
        if holders:
            shared = _views_of_one_storage([holder[field].clone() for holder in holders])
            for holder, view in zip(holders, shared, strict=True):
                holder[field] = view
    return {**state, "layers": layers}


def save_int8(model: Int8Model, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save an :class:`Int8Model` atomically; it loads with ``torch.load(weights_only=True)``."""
    if not isinstance(model, Int8Model):
        raise TypeError(f"model: expected an Int8Model (from convert), got {type(model).__name__}")
    return save_checkpoint({"kind": "int8", **int8_state(model), "meta": meta or {}}, path)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def _activation_from_entry(entry: Any, where: str) -> QParams:
    _require(isinstance(entry, dict), f"{where}: expected a dict of qparams")
    dtype = {name: dtype for dtype, name in DTYPE_NAMES.items()}.get(entry.get("dtype"))
    _require(dtype is not None, f"{where}: dtype {entry.get('dtype')!r} is not uint8 or int8")
    scale, zero_point = entry.get("scale"), entry.get("zero_point")
    quant_min, quant_max = entry.get("quant_min"), entry.get("quant_max")
    _require(
        isinstance(scale, float) and scale > 0 and scale < float("inf"),
        f"{where}: scale {scale!r} is not a positive number",
    )
    info = torch.iinfo(dtype)
    _require(
        all(type(v) is int for v in (zero_point, quant_min, quant_max))
        and info.min <= quant_min <= zero_point <= quant_max <= info.max
        and quant_min < quant_max,
        f"{where}: zero-point {zero_point!r} and range {quant_min!r}..{quant_max!r} "
        f"do not fit {dtype}",
    )
    return QParams(
        torch.tensor(scale, dtype=torch.float32),
        torch.tensor(zero_point, dtype=torch.int64),
        quant_min,
        quant_max,
        dtype,
    )


def _weighted_fields(entry: dict, weight: torch.Tensor, where: str) -> dict[str, Any]:
    """The fields a Linear and a Conv2d share, each checked: bias, weight scales and range,
    ReLU and output qparams, for a weight with ``weight.shape[0]`` output channels."""
    out_channels = weight.shape[0]
    bias, weight_scale = entry.get("bias"), entry.get("weight_scale")
    _require(
        isinstance(bias, torch.Tensor)
        and bias.dtype == torch.int32
        and tuple(bias.shape) == (out_channels,),
        f"{where}: bias must be an int32 tensor of shape ({out_channels},)",
    )
    _require(
        isinstance(weight_scale, torch.Tensor)
        and weight_scale.dtype == torch.float32
        and tuple(weight_scale.shape) in ((), (out_channels,))
        and bool(torch.isfinite(weight_scale).all())
        and bool((weight_scale > 0).all()),
        f"{where}: weight_scale must hold 1 or {out_channels} positive float32 values",
    )
    weight_range = entry.get("weight_range")
    _require(
        isinstance(weight_range, list)
        and len(weight_range) == 2
        and all(isinstance(v, int) for v in weight_range)
        and -128 <= weight_range[0] < 0 < weight_range[1] <= 127,
        f"{where}: weight_range must be [quant_min, quant_max] of int8 around 0",
    )
    low, high = weight_range
    _require(
        weight.numel() > 0 and low <= int(weight.min()) and int(weight.max()) <= high,
        f"{where}: weight must hold integers within its weight_range {low}..{high} (found "
        + (f"{int(weight.min())}..{int(weight.max())})" if weight.numel() else "no weights)"),
    )
    _require(isinstance(entry.get("relu"), bool), f"{where}: relu must be True or False")
    weight_qparams = QParams(
        weight_scale,
        torch.zeros(weight_scale.shape, dtype=torch.int64),
        weight_range[0],
        weight_range[1],
        torch.int8,
        axis=0 if weight_scale.dim() == 1 else None,
    )
    return {
        "bias": bias,
        "weight_qparams": weight_qparams,
        "output_qparams": _activation_from_entry(entry.get("output"), f"{where} output"),
        "relu": entry["relu"],
    }


def _name_of(entry: dict, index: int) -> tuple[str, str]:
    name = entry.get("name")
    _require(isinstance(name, str), f"layers[{index}]: name must be a string, got {name!r}")
    return name, f"layer {name!r}"


def _linear_from_entry(
    entry: dict, index: int, input_qparams: QParams, in_features: int | None, mode: Requantization
) -> Int8Linear:
    name, where = _name_of(entry, index)
    weight = entry.get("weight")
    _require(
        isinstance(weight, torch.Tensor) and weight.dtype == torch.int8 and weight.dim() == 2,
        f"{where}: weight must be a 2-d int8 tensor",
    )
    _require(
        in_features is None or weight.shape[1] == in_features,
        f"{where}: takes {weight.shape[1]} inputs, but the layer before gives {in_features}",
    )
    fields = _weighted_fields(entry, weight, where)
    return Int8Linear(
        weight=weight, input_qparams=input_qparams, name=name, requantization=mode, **fields
    )


# --- convolutional layers (notebook 07) ----------------------------------------------------------


def _maxpool_entry(layer: Int8MaxPool2d) -> dict[str, Any]:
    return {
        "type": "maxpool2d",
        "kernel_size": list(layer.kernel_size),
        "stride": list(layer.stride),
    }


def _maxpool_from_entry(entry: dict, where: str) -> Int8MaxPool2d:
    return Int8MaxPool2d(
        int_pair(entry.get("kernel_size"), f"{where}: kernel_size", 1),
        int_pair(entry.get("stride"), f"{where}: stride", 1),
    )


def _conv_from_entry(
    entry: dict, index: int, input_qparams: QParams, in_channels: int | None, mode: Requantization
) -> Int8Conv2d:
    """Rebuild an Int8Conv2d, checking every field (groups: 1, or C for a depthwise conv)."""
    name, where = _name_of(entry, index)
    weight = entry.get("weight")
    _require(
        isinstance(weight, torch.Tensor) and weight.dtype == torch.int8 and weight.dim() == 4,
        f"{where}: weight must be a 4-d int8 tensor [out, in / groups, kh, kw]",
    )
    groups = entry.get("groups", 1)
    _require(
        isinstance(groups, int)
        and (groups == 1 or (groups == weight.shape[0] and weight.shape[1] == 1)),
        f"{where}: groups {groups!r} must be 1 or, for a depthwise conv of weight "
        f"[C, 1, kh, kw], C (weight {tuple(weight.shape)})",
    )
    channels = weight.shape[1] * groups
    _require(
        in_channels is None or channels == in_channels,
        f"{where}: takes {channels} channels, but the layer before gives {in_channels}",
    )
    return Int8Conv2d(
        weight=weight,
        input_qparams=input_qparams,
        stride=int_pair(entry.get("stride"), f"{where}: stride", 1),
        padding=int_pair(entry.get("padding"), f"{where}: padding", 0),
        name=name,
        requantization=mode,
        groups=groups,
        **_weighted_fields(entry, weight, where),
    )


def _flatten_from_entry(entry: dict, where: str) -> nn.Flatten:
    start_dim, end_dim = entry.get("start_dim"), entry.get("end_dim")
    # Dims of [N, C, H, W] after the batch (start_dim 0 would flatten the images together).
    _require(
        type(start_dim) is int
        and type(end_dim) is int
        and 1 <= start_dim <= 3
        and -4 <= end_dim <= 3
        and start_dim <= end_dim % 4,
        f"{where}: start_dim and end_dim must be dims 1..3 of [N, C, H, W] (as nn.Flatten() "
        f"has them: 1, -1), got {start_dim!r}, {end_dim!r}",
    )
    return nn.Flatten(start_dim, end_dim)


def int8_model_from_state(state: dict[str, Any]) -> Int8Model:
    """Rebuild an :class:`Int8Model` from :func:`int8_state`, checking every field."""
    input_qparams = _activation_from_entry(state.get("input"), "input")
    mode = requantization_mode(state.get("requantization", Requantization.FIXED_POINT.value))
    entries = state.get("layers")
    _require(isinstance(entries, list) and entries, "layers: expected a non-empty list")
    layers: list[nn.Module] = []
    current, in_features, channels = input_qparams, None, None
    for index, entry in enumerate(entries):
        _require(isinstance(entry, dict), f"layers[{index}]: expected a dict")
        kind = entry.get("type")
        if kind == "flatten":
            layers.append(_flatten_from_entry(entry, f"layers[{index}]"))
        elif kind == "linear":
            layer = _linear_from_entry(unpack_entry(entry), index, current, in_features, mode)
            layers.append(layer)
            current, in_features = layer.output_qparams, layer.out_features
        elif kind == "conv2d":
            layer = _conv_from_entry(entry, index, current, channels, mode)
            layers.append(layer)
            current, channels = layer.output_qparams, layer.out_channels
        elif kind == "maxpool2d":
            layers.append(_maxpool_from_entry(entry, f"layers[{index}]"))
        elif kind == "global_avgpool2d":
            layers.append(Int8GlobalAvgPool2d())
        else:
            raise InputError(f"layers[{index}]: unknown layer type {kind!r}")
    return Int8Model(input_qparams, layers, mode).eval()


def int8_from_payload(payload: dict[str, Any], path: str | os.PathLike) -> Int8Model:
    """The model of a loaded payload; a bad field is named with the file it came from.
    Only InputError (a field found invalid) is caught: anything else is a bug."""
    try:
        return int8_model_from_state(payload)
    except InputError as error:
        raise InputError(f"{path} is not a valid INT8 checkpoint: {error}") from error


def load_int8(path: str | os.PathLike) -> tuple[Int8Model, dict]:
    """Load an INT8 checkpoint written by :func:`save_int8`: the model (in eval mode) and meta."""
    payload = load_checkpoint(path, expected_kind="int8")
    return int8_from_payload(payload, path), payload.get("meta", {})
