"""Reading and writing checkpoint files, safely.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
``torch.load(..., weights_only=True)``: no pickled code runs when a file is opened.
Three kinds of file: ``"fp32"`` (a SimpleNet or SmallCNN state_dict, here), ``"int8"``
(the INT8 model, ``ptqlib.int8_checkpoint``) and ``"formats"`` (a model in a number format
such as MXFP4, ``ptqlib.formats.checkpoint``). Every file names its ``kind`` and a
``format_version``; an FP32 file of a SmallCNN also says ``"model": "cnn"``.
Writing is atomic: a temporary file in the same folder, then a rename, so an
interrupted save never leaves half a checkpoint behind.

Files use torch.save's plain (non-zip) format, ``_use_new_zipfile_serialization=False``.
The default zip format adds a header, a directory entry and alignment padding for every
tensor storage, about 1.5 KB on SimpleNet: over 1% of the INT8 model, which would blur
the FP32/INT8 size comparison. ``torch.load`` reads both formats, ``weights_only`` too.

**Corruption.** Neither format protects the numbers: the plain format has no checksum, and
torch's zip reader does not check the zip's CRC-32s, so a changed byte inside a tensor
loads without a word. So every file (format 2) carries ``"sha256"``, the SHA-256 digest of
everything else in it (``ptqlib.digests``: its metadata as canonical JSON, then its
tensors' bytes with their dtypes and shapes), and loading recomputes it: a mismatch is an
``InputError`` saying the file is corrupted. A file that ``torch.load`` cannot even read
is one too. Files of format 1 (written before digests) still load, with a one-line note
on stderr.
"""

from __future__ import annotations

import io
import os
import pickle
import secrets
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ptqlib.digests import content_digest
from ptqlib.errors import InputError
from ptqlib.models import SimpleNet, build_model, model_name

FORMAT_VERSION = 2
# Format 1: the same fields, without a digest (files written before ptqlib checked them).
UNCHECKED_FORMAT_VERSION = 1
DIGEST_KEY = "sha256"
# What torch.load raises for a truncated, mangled or foreign file, found by loading thousands
# of damaged checkpoints (bytes flipped, tails cut, blocks spliced in), plain and zip format:
# the unpickler's own errors (UnpicklingError, EOFError, and KeyError / IndexError for a
# broken memo or stack; struct.error for a number cut short), a bad string
# (UnicodeDecodeError, a ValueError), torch's checks
# (RuntimeError: "unexpected EOF", a zip without its directory; AssertionError: a storage
# key not found), tensors rebuilt from nonsense (TypeError, AttributeError) and the zip
# reader's OSError. Anything else keeps its traceback.
UNREADABLE_FILE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    struct.error,
    KeyError,
    IndexError,
    ValueError,
    RuntimeError,
    AssertionError,
    TypeError,
    AttributeError,
    OSError,
)
KINDS = ("fp32", "int8", "formats")
KIND_NAMES = {"fp32": "an FP32", "int8": "an INT8", "formats": "a number-format"}
# What an FP32 file without a "model" field holds: SimpleNet (see save_fp32).
DEFAULT_MODEL = "simplenet"
MODEL_DESCRIPTIONS = {
    "simplenet": "SimpleNet (784-128-64-10)",
    "cnn": "SmallCNN",
    "dwcnn": "DepthwiseCNN",
}


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path."""
    if payload.get("kind") not in KINDS:
        raise InputError(f"payload['kind']: expected one of {KINDS}, got {payload.get('kind')!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f"{path.name}.{secrets.token_hex(8)}.tmp"
    # Created with mode 0o666 like any new file, so the process's umask applies (the usual
    # mode, e.g. 0o644), and exclusively: never someone else's file of that name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    handle = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            write_payload(with_digest({**payload, "format_version": FORMAT_VERSION}), file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def with_digest(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` plus ``"sha256"``: the digest of everything else in it (``ptqlib.digests``)."""
    unsigned = {key: value for key, value in payload.items() if key != DIGEST_KEY}
    return {**unsigned, DIGEST_KEY: content_digest(unsigned)}


def check_digest(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a payload whose ``"sha256"`` is missing or does not match its contents: the
    file is corrupted (an InputError naming it)."""
    expected = payload.get(DIGEST_KEY)
    unsigned = {key: value for key, value in payload.items() if key != DIGEST_KEY}
    try:
        found = content_digest(unsigned)
    except InputError:  # a value ptqlib never writes: the file was changed
        found = None
    if not isinstance(expected, str) or found != expected:
        raise InputError(
            f"{path} is corrupted: its contents do not match the SHA-256 digest it was saved "
            "with (damaged in transfer or on disk?); get a fresh copy or re-create it"
        )


def write_payload(payload: object, file: BinaryIO) -> None:
    """``torch.save`` in the plain format every ptqlib checkpoint uses (see the module doc)."""
    torch.save(payload, file, _use_new_zipfile_serialization=False)


def saved_size_bytes(payload: object) -> int:
    """Bytes a checkpoint of ``payload`` (e.g. a state_dict) takes on disk."""
    buffer = io.BytesIO()
    write_payload(payload, buffer)
    return buffer.getbuffer().nbytes


def load_checkpoint(path: str | os.PathLike, expected_kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``, checking that it is one of ours and
    that its contents match its digest (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} is not a file (a directory or a device?)")
    with path.open("rb") as file:  # a file we cannot open is an OSError of its own
        try:
            payload = torch.load(file, map_location="cpu", weights_only=True)
        except UNREADABLE_FILE_ERRORS as error:
            # torch's own message suggests weights_only=False, which would run pickled code
            # from an untrusted file: name the problem instead.
            raise InputError(
                f"{path} is not a readable ptqlib checkpoint: corrupt, truncated, or not a "
                f"ptqlib checkpoint at all ({type(error).__name__})"
            ) from error
    # A file of the current format must carry its digest: one without (its key damaged) is
    # corrupted too. Only files of format 1, from before digests, load unchecked.
    if isinstance(payload, dict) and (
        DIGEST_KEY in payload or payload.get("format_version") == FORMAT_VERSION
    ):
        check_digest(payload, path)
    if not isinstance(payload, dict) or payload.get("kind") not in KINDS:
        raise InputError(
            f"{path} is not a ptqlib checkpoint (no 'kind' of {KINDS}); "
            "create one with 'python -m ptqlib train' or 'python -m ptqlib quantize'"
        )
    if payload.get("format_version") not in (FORMAT_VERSION, UNCHECKED_FORMAT_VERSION):
        raise InputError(
            f"{path}: checkpoint format {payload.get('format_version')!r} is not the supported "
            f"format {FORMAT_VERSION}; re-create it with this version of ptqlib"
        )
    if DIGEST_KEY not in payload:
        print(
            f"note: {path} was written before ptqlib checkpoints carried a SHA-256 digest, so "
            "it loads unchecked; save it again to add one",
            file=sys.stderr,
        )
    if not isinstance(payload.get("meta", {}), dict):
        raise InputError(
            f"{path}: its metadata ('meta') is a {type(payload['meta']).__name__}, not a dict; "
            "the file was not written by ptqlib or was edited"
        )
    if expected_kind is not None and payload["kind"] != expected_kind:
        raise InputError(
            f"{path} is {KIND_NAMES[payload['kind']]} checkpoint, but "
            f"{KIND_NAMES[expected_kind]} checkpoint is needed here"
        )
    # What the caller saved (and the format_version); the digest has done its work.
    return {key: value for key, value in payload.items() if key != DIGEST_KEY}


def save_fp32(model: SimpleNet, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save an FP32 checkpoint (its state_dict and ``meta``) atomically. The field
    ``"model"`` names the network ("cnn"; see ``ptqlib.models.MODELS``). A SimpleNet file
    has no such field: absent means SimpleNet, so older SimpleNet files still load."""
    payload = {"kind": "fp32", "state_dict": model.state_dict(), "meta": meta or {}}
    name = model_name(model)
    if name != DEFAULT_MODEL:
        payload["model"] = name
    return save_checkpoint(payload, path)


def load_fp32(path: str | os.PathLike, expected_model: str | None = None) -> tuple[SimpleNet, dict]:
    """Load an FP32 checkpoint into a new model of the kind it records (``"model"``; absent
    means SimpleNet); return the model (in eval mode) and meta. With ``expected_model``
    ("simplenet" or "cnn") a checkpoint of another model is a ValueError."""
    return fp32_from_payload(load_checkpoint(path, expected_kind="fp32"), path, expected_model)


def fp32_from_payload(
    payload: dict[str, Any], path: str | os.PathLike, expected_model: str | None = None
) -> tuple[SimpleNet, dict]:
    """:func:`load_fp32` for a payload already loaded (and checked) by :func:`load_checkpoint`
    from ``path`` (named in errors): a caller that has it need not read the file twice."""
    name = payload.get("model", DEFAULT_MODEL)
    if not isinstance(name, str) or name not in MODEL_DESCRIPTIONS:
        raise InputError(
            f"{path}: unknown model {name!r}; expected one of {sorted(MODEL_DESCRIPTIONS)}"
        )
    if expected_model is not None and name != expected_model:
        raise InputError(
            f"{path} holds a {MODEL_DESCRIPTIONS[name]}, not the "
            f"{MODEL_DESCRIPTIONS.get(expected_model, repr(expected_model))} asked for"
        )
    model = build_model(name)
    state = payload.get("state_dict")
    expected = model.state_dict()
    if isinstance(state, dict):
        for key, value in state.items():
            if key in expected and getattr(value, "dtype", None) != expected[key].dtype:
                raise InputError(
                    f"{path} does not hold a {MODEL_DESCRIPTIONS[name]}: state_dict[{key!r}] "
                    f"is {getattr(value, 'dtype', type(value).__name__)}, expected "
                    f"{expected[key].dtype} (the file was edited?)"
                )
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as error:
        # torch's message lists the missing and unexpected keys on lines of their own.
        reason = " ".join(line.strip() for line in str(error).splitlines()[1:])
        raise InputError(
            f"{path} does not hold a {MODEL_DESCRIPTIONS[name]}: "
            f"{reason or str(error).splitlines()[0]}"
        ) from error
    return model.eval(), payload.get("meta", {})
