"""Packed storage: B-bit weights take B bits each in the checkpoint, not 8.

In memory a B-bit weight lives in an int8 (the integer engine multiplies int8 by int8). On
disk that wastes ``8 - B`` bits per weight, so a checkpoint packs them: every integer
``q`` in ``quant_min .. quant_max`` is first shifted to the unsigned ``u = q - quant_min``
(0 .. 2^B - 1), and the B bits of every ``u`` are written one after the other into a stream
of bytes, least significant bit first::

    bit k of the stream = bit (k mod B) of u_(k div B);   byte j = bits 8j .. 8j + 7

So two 4-bit values share a byte, four 2-bit values share a byte, and eight 3-bit values
share three bytes (a value may straddle two bytes). The 784 x 128 weights of SimpleNet's
first layer take 100,352 bytes at 8 bits, 50,176 at 4, 37,632 at 3 and 25,088 at 2.

Why a bit stream rather than "one 3-bit value per 4-bit nibble": a file is storage, read
once, and the stream is the smallest (3 bits cost 3 bits, not 4). Inference kernels that
compute on packed weights prefer layouts aligned to nibbles or bytes (GPTQ's 3-bit CUDA
kernel, llama.cpp's Q3/Q4 blocks) so that one shift and mask gets a value; here the
weights are unpacked once, at load, into int8.

Unpacking reverses every step, so the round trip is exact. 8-bit weights (and any layer
whose range needs all 8 bits) are stored as they are, so INT8 checkpoints written before
packing existed load unchanged. The packed bytes are covered by the checkpoint's SHA-256
digest like any tensor (``ptqlib.digests``): one flipped bit in the stream would otherwise
change up to two weights silently.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ptqlib.errors import InputError

PACKED_KEY = "packed_weight"


def bits_for_range(quant_min: int, quant_max: int) -> int:
    """The bits an integer in ``quant_min..quant_max`` needs: ceil(log2(number of values))."""
    if not isinstance(quant_min, int) or not isinstance(quant_max, int) or quant_min >= quant_max:
        raise InputError(
            f"quant_min/quant_max: expected a range of integers, got {quant_min}..{quant_max}"
        )
    return max(1, math.ceil(math.log2(quant_max - quant_min + 1)))


def pack(values: torch.Tensor, bits: int, quant_min: int) -> torch.Tensor:
    """The integers ``values`` (any shape, each in ``quant_min .. quant_min + 2^bits - 1``)
    as a uint8 bit stream of ``ceil(numel * bits / 8)`` bytes (see the module docstring)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise InputError(f"bits: expected a whole number from 1 to 8, got {bits!r}")
    unsigned = values.to(torch.int64).flatten() - quant_min
    if unsigned.numel() and (int(unsigned.min()) < 0 or int(unsigned.max()) >= 2**bits):
        raise InputError(
            f"values: {int(values.min())}..{int(values.max())} do not fit in {bits} bits "
            f"from {quant_min}"
        )
    positions = torch.arange(bits, dtype=torch.int64)
    stream = ((unsigned[:, None] >> positions) & 1).flatten()
    padding = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(padding)]).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.int64)).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, quant_min: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The int8 tensor of ``shape`` that :func:`pack` turned into ``packed``."""
    count = math.prod(shape)
    if (
        packed.dtype != torch.uint8
        or packed.dim() != 1
        or packed.numel() != math.ceil(count * bits / 8)
    ):
        raise InputError(
            f"packed: expected {math.ceil(count * bits / 8)} uint8 bytes for {count} "
            f"{bits}-bit values, got {packed.dtype} {tuple(packed.shape)}"
        )
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1).flatten()[: count * bits]
    unsigned = (stream.reshape(count, bits) << torch.arange(bits)).sum(dim=1)
    return (unsigned + quant_min).to(torch.int8).reshape(shape)


def pack_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's layer entry with its int8 ``weight`` replaced by the packed bits, if
    its ``weight_range`` needs fewer than 8 bits; otherwise the entry unchanged."""
    quant_min, quant_max = entry["weight_range"]
    bits = bits_for_range(quant_min, quant_max)
    if bits >= 8:
        return entry
    packed = dict(entry)
    weight = packed.pop("weight")
    packed[PACKED_KEY] = {
        "bits": bits,
        "shape": list(weight.shape),
        "data": pack(weight, bits, quant_min),
    }
    return packed


def unpack_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`pack_entry`: an entry with an int8 ``weight`` again. Checks the
    packed fields, so a bad entry is a clear ValueError. (A file damaged on disk is refused
    before this, by its digest: ``ptqlib.checkpoints``; these checks catch what a digest
    cannot, a file from before digests or a payload built by hand.)"""
    if PACKED_KEY not in entry:
        return entry
    found = entry[PACKED_KEY]
    where = f"layer {entry.get('name')!r}"
    weight_range = entry.get("weight_range")
    if not (
        isinstance(found, dict)
        and isinstance(found.get("data"), torch.Tensor)
        and isinstance(found.get("shape"), list)
        and len(found["shape"]) == 2
        and all(type(size) is int and size > 0 for size in found["shape"])
        and "weight" not in entry  # one weight: packed or not, never both
        and isinstance(weight_range, list)
        and len(weight_range) == 2
        and all(isinstance(v, int) for v in weight_range)
        and found.get("bits") == bits_for_range(*weight_range)
    ):
        raise InputError(f"{where}: the packed weight is damaged (bits, shape or range)")
    unpacked = dict(entry)
    del unpacked[PACKED_KEY]
    unpacked["weight"] = unpack(
        found["data"], found["bits"], weight_range[0], tuple(found["shape"])
    )
    if int(unpacked["weight"].max()) > weight_range[1]:
        raise InputError(
            f"{where}: a packed weight lies outside {weight_range[0]}..{weight_range[1]}"
        )
    return unpacked
