"""A per-user cache of compiled C models, safe on a shared machine.

Loading a shared library runs its code, so a cache that another user can write into lets
them run code as you: a world-writable ``/tmp`` directory with predictable file names is
exactly that. This cache is therefore

- **yours alone**: ``$PTQLIB_C_CACHE`` if set, else ``$XDG_CACHE_HOME/ptqlib/c`` (by default
  ``~/.cache/ptqlib/c``), created with mode 0700; an existing directory that is a symbolic
  link, belongs to another user, or that group or others may read or write is refused (an
  InputError), and so is one whose parent others may write into (unless sticky, as /tmp);
- **checked before every load**: each library ``<name>.so`` has a record ``<name>.json``
  written when it was built, holding the SHA-256 of the exported source it was compiled from
  and of the library's own bytes. :func:`verified_library` loads nothing unless the library
  is a regular file of yours that nobody else can write, its bytes hash to the record, and
  the record names the source digest it is asked for. Anything else is treated as absent and
  rebuilt over.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from ptqlib.errors import InputError

CACHE_ENVIRONMENT = "PTQLIB_C_CACHE"
PRIVATE_MODE = 0o700


def cache_root() -> Path:
    """Where the cache lives (module docstring); not created here."""
    if os.environ.get(CACHE_ENVIRONMENT):
        return Path(os.environ[CACHE_ENVIRONMENT])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ptqlib" / "c"


def check_private(directory: Path) -> None:
    """Refuse ``directory`` unless it is a real directory of this user, mode 0700 or
    stricter, in a parent that others cannot write into (or a sticky one)."""
    info = os.lstat(directory)
    problem = None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symbolic link or a file)"
    elif info.st_uid != os.getuid():
        problem = f"belongs to user id {info.st_uid}, not to you ({os.getuid()})"
    elif info.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(info.st_mode):o}: others may use it (need 700)"
    else:
        parent = os.stat(directory.parent)
        if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
            problem = f"is inside {directory.parent}, which others may write into"
    if problem:
        raise InputError(
            f"C compile cache {directory} {problem}: a library there could be replaced by "
            f"another user. Remove it, or set {CACHE_ENVIRONMENT} to a private directory"
        )


def cache_directory() -> Path:
    """The cache directory, created private if absent, checked private (module docstring)."""
    directory = cache_root()
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=PRIVATE_MODE)
    except FileExistsError:
        pass
    check_private(directory)
    return directory


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_path(library: Path) -> Path:
    return library.with_suffix(".json")


def verified_library(library: Path, source_digest: str) -> bool:
    """Whether ``library`` may be loaded: a regular file of this user that only they can
    write, whose bytes hash to its record, built from the source with ``source_digest``."""
    try:
        info = os.lstat(library)
        record = json.loads(record_path(library).read_text())
    except (OSError, ValueError):
        return False
    if (
        not stat.S_ISREG(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & 0o022
        or not isinstance(record, dict)
        or record.get("source_digest") != source_digest
    ):
        return False
    return record.get("library_sha256") == file_sha256(library)


def store_library(built: Path, library: Path, source_digest: str, recipe: dict) -> None:
    """Move the freshly ``built`` library to ``library`` with its record (record first, then
    the library, each by an atomic rename: a reader sees either the old pair or a library
    whose hash its record states)."""
    record = {
        "source_digest": source_digest,
        "library_sha256": file_sha256(built),
        **recipe,
    }
    partial_record = built.with_suffix(".json")
    partial_record.write_text(json.dumps(record, indent=2) + "\n")
    os.chmod(built, 0o700)
    os.replace(partial_record, record_path(library))
    os.replace(built, library)
