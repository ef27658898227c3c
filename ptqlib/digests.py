"""A fingerprint of a checkpoint's contents, so a damaged file is refused, not used.

A file that travels by e-mail, USB stick or upload can lose its tail or get a few bytes
changed. ``torch.load`` notices some of that (a broken pickle), but a changed byte in a
tensor's data loads without a word: a silently corrupted INT8 model looks exactly like a
quantization bug. So every file ptqlib writes carries a SHA-256 digest of what it holds,
and every loader recomputes it and refuses a mismatch.

What the digest covers, in a fixed order:

1. the structure and metadata as canonical JSON (:func:`canonical`): every dict (string
   keys only) sorted by key, every value tagged with its type (so ``1``, ``1.0``, ``True``
   and ``"1"`` differ, and a tuple is not a list), floats written exactly (``float.hex``),
   and every tensor replaced by its dtype and shape;
2. then the bytes of every tensor, in the order the JSON lists them (the little-endian bytes
   of its elements, row-major).

The dtype and the shape are in the JSON, so reading the same bytes as another dtype or
another shape changes the digest too. The bytes are the tensor's own elements, not its
storage: two files holding the same numbers have the same digest whatever views they share.

SHA-256 runs at about 1.7 GB/s on a core with SHA instructions (x86 SHA-NI, ARMv8 SHA2),
so the check costs a fraction of a millisecond for SimpleNet's files;
``benchmarks/digest_overhead.py`` measures it against a whole load.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ptqlib.errors import InputError

ALGORITHM = "sha256"
# Tensor dtypes numpy has no type for (their bytes are hashed through a uint8 view).
NUMPY_UNSUPPORTED = {
    torch.bfloat16,
    torch.complex32,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.uint16,
    torch.uint32,
    torch.uint64,
}


def canonical(value: Any, tensors: list[torch.Tensor]) -> Any:
    """``value`` as JSON-ready lists ``[type, content]``, each tensor appended to ``tensors``
    and written as ``["tensor", dtype, shape, index]`` (its bytes are hashed separately).

    Types are matched exactly, not by ``isinstance``: a subclass of str, int or float (numpy's
    float64, torch's version string) would be pickled as its own class, which a
    ``weights_only`` load refuses, so saving it would write a file that cannot be read."""
    kind = type(value)
    if value is None:
        return ["none"]
    if kind is bool:  # before int: True is an int in Python
        return ["bool", value]
    if kind is int:
        return ["int", value]
    if kind is float:
        return ["float", value.hex()]  # exact, and defined for inf and nan
    if kind is str:
        return ["str", value]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind in (list, tuple):
        items = [canonical(item, tensors) for item in value]
        return ["list" if kind is list else "tuple", items]
    if kind in (dict, OrderedDict):  # a state_dict is an OrderedDict: sorted by key
        if not all(type(key) is str for key in value):
            raise InputError("payload: a checkpoint's dicts have strings as keys")
        return ["dict", [[key, canonical(value[key], tensors)] for key in sorted(value)]]
    if kind in (torch.Tensor, torch.nn.Parameter) and value.layout == torch.strided:
        tensors.append(value)
        return ["tensor", str(value.dtype), list(value.shape), len(tensors) - 1]
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    raise InputError(
        f"payload: a checkpoint holds dicts, lists, tuples, strings, numbers, None and dense "
        f"tensors (of exactly these types), not a {name}"
    )


def _element_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's elements, row-major, as an array hashlib reads as bytes (no copy for a
    contiguous CPU tensor: the common case, and the cheap one, one call instead of five)."""
    tensor = tensor.detach().cpu()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    if tensor.dtype in NUMPY_UNSUPPORTED:  # the same bytes, seen as unsigned bytes
        return tensor.reshape(-1).view(torch.uint8).numpy()
    return tensor.numpy()


def content_digest(payload: Any) -> str:
    """SHA-256 (64 hex digits) of ``payload``'s canonical JSON, then its tensors' bytes."""
    tensors: list[torch.Tensor] = []
    structure = canonical(payload, tensors)
    hasher = hashlib.sha256()
    hasher.update(json.dumps(structure, separators=(",", ":")).encode())
    for tensor in tensors:
        hasher.update(_element_bytes(tensor))
    return hasher.hexdigest()


def bytes_digest(data: bytes) -> str:
    """SHA-256 (64 hex digits) of raw bytes (e.g. a serialized ONNX model)."""
    return hashlib.sha256(data).hexdigest()
