"""Any ptqlib checkpoint, FP32 or INT8, loaded by reading what the file says it holds.

The commands that take ``--checkpoint`` (``evaluate``, ``export``) accept either kind; the
file's ``kind`` field (``ptqlib.checkpoints``) decides which loader reads it.
"""

from __future__ import annotations

import os

from torch import nn

from ptqlib.checkpoints import fp32_from_payload, load_checkpoint
from ptqlib.int8_checkpoint import int8_from_payload


def load_model(path: str | os.PathLike) -> tuple[nn.Module, str, dict]:
    """Load an FP32, INT8 or number-format checkpoint: ``(model, kind, meta)``, kind "fp32",
    "int8" or "formats" (whose meta also says how its arithmetic runs: ``"arithmetic"``)."""
    payload = load_checkpoint(path)
    if payload["kind"] == "formats":
        from ptqlib.formats.checkpoint import format_model_from_payload
        from ptqlib.formats.command import runnable_model

        loaded = format_model_from_payload(payload, path)
        model, arithmetic = runnable_model(loaded)
        return model, "formats", {**loaded.meta, "arithmetic": arithmetic}
    if payload["kind"] == "int8":
        return int8_from_payload(payload, path), "int8", payload.get("meta", {})
    model, meta = fp32_from_payload(payload, path)
    return model, "fp32", meta
