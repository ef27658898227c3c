"""Plain data: what crosses between the grader and a student's kernel, and nothing else.

An exercise's inputs go into the kernel and the student's answers come back as JSON text
built from a few kinds of values only: ``None``, ``bool``, ``int``, ``float``, ``str``, lists,
tuples, dicts, and dense CPU tensors of a numeric dtype (their raw bytes, base64). The
grader reads an answer with :func:`decode`, which builds exactly those Python and torch
types (never a subclass, never an object with a ``__eq__`` of its own) and refuses anything
else, a tensor whose bytes do not match its shape, or more than :data:`MAX_ELEMENTS` values.

Why not ``torch.save`` and ``torch.load(weights_only=True)``: that loader still calls
``bytearray(n)`` for any ``n`` a file asks for, and rebuilds a tensor of 10**9 elements from
a 1.5 kB file (stride 0); either takes the grader's memory. Here the largest thing a file of
N bytes can make is about N bytes.

:func:`encode` runs in the kernel (and in the notebook's own checker): it also turns what an
honest answer may hold into plain values: a numpy number into a Python number, an array or
a tensor subclass such as ``nn.Parameter`` into a plain tensor, ``torch.Size`` into a tuple.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import torch

# The dtypes a tensor may have, by name (an answer of another dtype is refused).
DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    )
}
# Every answer of the series holds well under a million numbers.
MAX_ELEMENTS = 2_000_000
MAX_DEPTH = 32
MAX_INTEGER_BITS = 256


class NotPlainData(ValueError):
    """A value that is not plain data, or text that does not decode to plain data."""


def encode(value: Any) -> str:
    """``value`` as JSON text of plain data; NotPlainData naming what is not plain."""
    budget = [MAX_ELEMENTS]
    return json.dumps(_encode(value, 0, budget), allow_nan=True)


def decode(text: str | bytes) -> Any:
    """The plain value of JSON text made by :func:`encode`; NotPlainData if it is not one."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise NotPlainData(f"not JSON: {str(error)[:200]}") from None
    return _decode(data, 0, [MAX_ELEMENTS])


def _spend(budget: list[int], count: int) -> None:
    budget[0] -= count
    if budget[0] < 0:
        raise NotPlainData(f"more than {MAX_ELEMENTS:,} values")


def _encode(value: Any, depth: int, budget: list[int]) -> Any:
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested more than {MAX_DEPTH} levels deep")
    _spend(budget, 1)
    if type(value) is int and value.bit_length() > MAX_INTEGER_BITS:
        raise NotPlainData(f"an integer of more than {MAX_INTEGER_BITS} bits")
    if type(value) is str:
        _spend(budget, len(value) // 8)  # a character is far less than a number
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, torch.Tensor):
        return _encode_tensor(value, budget)
    if isinstance(value, bool):  # a numpy bool_ is not a bool: see the numpy branch below
        return bool(value)
    if isinstance(value, str):  # a str subclass: keep the text only
        return _encode(str(value), depth, budget)
    if isinstance(value, (int, float)):  # an int or float subclass: keep the number only
        return _encode(int(value) if isinstance(value, int) else float(value), depth, budget)
    if type(value).__module__ == "numpy":  # numpy scalars and arrays, without importing numpy
        if hasattr(value, "shape") and value.shape != ():
            return _encode_tensor(torch.as_tensor(value), budget)
        return _encode(value.item(), depth, budget)
    if isinstance(value, (tuple, list)):  # torch.Size and named tuples are tuples too
        items = [_encode(item, depth + 1, budget) for item in value]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, dict):
        pairs = [
            [_encode(key, depth + 1, budget), _encode(item, depth + 1, budget)]
            for key, item in value.items()
        ]
        return {"dict": pairs}
    raise NotPlainData(f"a {type(value).__name__}")


def _encode_tensor(tensor: torch.Tensor, budget: list[int]) -> dict[str, Any]:
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise NotPlainData(f"a {tensor.layout} tensor (expected a dense tensor)")
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise NotPlainData(f"a tensor of dtype {tensor.dtype}")
    _spend(budget, tensor.numel())
    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    data = base64.b64encode(flat.numpy().tobytes()).decode("ascii")
    return {"tensor": name, "shape": list(tensor.shape), "data": data}


def _decode(data: Any, depth: int, budget: list[int]) -> Any:
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested more than {MAX_DEPTH} levels deep")
    _spend(budget, 1 + (len(data) // 8 if type(data) is str else 0))
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [_decode(item, depth + 1, budget) for item in data]
    if type(data) is not dict or len(data) not in (1, 3):
        raise NotPlainData(f"unexpected JSON {type(data).__name__}")
    if set(data) == {"tuple"} and type(data["tuple"]) is list:
        return tuple(_decode(item, depth + 1, budget) for item in data["tuple"])
    if set(data) == {"dict"} and type(data["dict"]) is list:
        pairs = [_decode(pair, depth + 1, budget) for pair in data["dict"]]
        if not all(type(pair) is list and len(pair) == 2 for pair in pairs):
            raise NotPlainData("a dict that is not a list of [key, value] pairs")
        try:
            return {key: item for key, item in pairs}
        except TypeError:  # a list as a key
            raise NotPlainData("a dict key that cannot be a key") from None
    if set(data) == {"float"} and data["float"] in ("nan", "inf", "-inf"):
        return float(data["float"])
    if set(data) == {"tensor", "shape", "data"}:
        return _decode_tensor(data, budget)
    raise NotPlainData(f"unexpected JSON object with keys {sorted(data)[:5]}")


def _decode_tensor(data: dict[str, Any], budget: list[int]) -> torch.Tensor:
    dtype = DTYPES.get(data["tensor"]) if type(data["tensor"]) is str else None
    shape = data["shape"]
    if dtype is None:
        raise NotPlainData(f"a tensor of dtype {str(data['tensor'])[:40]!r}")
    if type(shape) is not list or not all(type(n) is int and 0 <= n for n in shape):
        raise NotPlainData("a tensor whose shape is not a list of sizes")
    numel = math.prod(shape)
    _spend(budget, numel)
    if type(data["data"]) is not str:
        raise NotPlainData("a tensor whose data is not text")
    try:
        raw = base64.b64decode(data["data"], validate=True)
    except (binascii.Error, ValueError):
        raise NotPlainData("a tensor whose data is not base64") from None
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) != numel * itemsize:
        raise NotPlainData(f"a tensor of shape {shape} with {len(raw)} bytes of data")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
