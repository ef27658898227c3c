"""Reading and writing checkpoint files, safely.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
``torch.load(..., weights_only=True)``: no pickled code runs when a file is opened.
Every file names its ``kind`` ("fp32" or "int8") and a ``format_version``.
Writing is atomic: a temporary file in the same folder, then a rename, so an
interrupted save never leaves half a checkpoint behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
KINDS = ("fp32", "int8")


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path."""
    if payload.get("kind") not in KINDS:
        raise ValueError(f"payload['kind']: expected one of {KINDS}, got {payload.get('kind')!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({**payload, "format_version": FORMAT_VERSION}, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, expected_kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``, checking that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # garbage input fails in many ways deep inside the unpickler
        # torch's own message suggests weights_only=False, which would run pickled code
        # from an untrusted file: name the problem instead.
        raise ValueError(
            f"{path} is not a readable ptqlib checkpoint: corrupt, truncated, or not a file "
            f"written by torch.save with plain tensors ({type(error).__name__})"
        ) from error
    if not isinstance(payload, dict) or payload.get("kind") not in KINDS:
        raise ValueError(
            f"{path} is not a ptqlib checkpoint (no 'kind' of {KINDS}); "
            "create one with 'python -m ptqlib train' or 'python -m ptqlib quantize'"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {payload.get('format_version')!r} is not the supported "
            f"format {FORMAT_VERSION}; re-create it with this version of ptqlib"
        )
    if expected_kind is not None and payload["kind"] != expected_kind:
        raise ValueError(
            f"{path} is an {payload['kind'].upper()} checkpoint, but an "
            f"{expected_kind.upper()} checkpoint is needed here"
        )
    return payload
