"""Where ptqlib reads and writes files: the repository, its artifacts and its figures.

``artifacts/`` (gitignored) holds checkpoints, ``figures/`` the PNGs the notebooks save for
the README and the docs. Setting the environment variable ``PTQLIB_OUTPUT_DIR`` sends
both somewhere else (``$PTQLIB_OUTPUT_DIR/artifacts`` and ``$PTQLIB_OUTPUT_DIR/figures``):
the test configuration does this, so that re-executing the notebooks under test never
changes a tracked file. The functions read the variable at each call.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR_ENV = "PTQLIB_OUTPUT_DIR"


def output_root() -> Path:
    """``$PTQLIB_OUTPUT_DIR`` if set, else the repository root."""
    override = os.environ.get(OUTPUT_DIR_ENV)
    return Path(override) if override else REPO_ROOT


def artifacts_dir() -> Path:
    """Checkpoints and other generated files (created on first use by whoever writes)."""
    return output_root() / "artifacts"


def figures_dir() -> Path:
    """The notebooks' PNG figures."""
    return output_root() / "figures"
