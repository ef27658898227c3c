"""Any ptqlib checkpoint, FP32 or INT8, loaded by reading what the file says it holds.

The commands that take ``--checkpoint`` (``evaluate``, ``export``) accept either kind; the
file's ``kind`` field (``ptqlib.checkpoints``) decides which loader reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ptqlib.checkpoints import fp32_from_payload, load_checkpoint
from ptqlib.errors import InputError
from ptqlib.int8_checkpoint import int8_from_payload


def check_out_path(out: str | os.PathLike, checkpoint: str | os.PathLike, written: str) -> None:
    """Refuse, before any work, an ``--out`` that names the ``--checkpoint`` a command reads
    (the same file by any path: writing ``written`` there would destroy the model it was
    made from) or lies below a file (no folder can be made there)."""
    out = Path(out)
    if out.resolve() == Path(checkpoint).resolve():
        raise InputError(
            f"out: {out} is the checkpoint being read (--checkpoint); writing {written} there "
            "would overwrite it: give another file name"
        )
    blocking = next((parent for parent in out.parents if parent.is_file()), None)
    if blocking is not None:
        raise InputError(f"out: {out} lies below {blocking}, which is a file; expected a folder")


def load_model(path: str | os.PathLike) -> tuple[nn.Module, str, dict]:
    """Load an FP32, INT8 or number-format checkpoint: ``(model, kind, meta)``, kind "fp32",
    "int8" or "formats" (whose meta also says how its arithmetic runs, ``"arithmetic"``, and
    what its tensors hold: ``ptqlib.formats.command.what_it_holds``)."""
    payload = load_checkpoint(path)
    if payload["kind"] == "formats":
        from ptqlib.formats.checkpoint import format_model_from_payload
        from ptqlib.formats.command import runnable_model, what_it_holds

        loaded = format_model_from_payload(payload, path)
        model, arithmetic = runnable_model(loaded)
        return model, "formats", {**loaded.meta, **what_it_holds(loaded), "arithmetic": arithmetic}
    if payload["kind"] == "int8":
        return int8_from_payload(payload, path), "int8", payload.get("meta", {})
    model, meta = fp32_from_payload(payload, path)
    return model, "fp32", meta
