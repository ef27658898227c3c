"""Saving figures where the README and the docs find them, and the notebooks' version cell."""

from __future__ import annotations

import platform

import matplotlib.pyplot as plt
import torch

from ptqlib.data import REPO_ROOT

FIGURES_DIR = REPO_ROOT / "figures"


def save_figure(figure: plt.Figure, name: str) -> str:
    """Save ``figure`` as ``figures/<name>.png`` (name like ``01_digits``); return the
    repository-relative path. PNG metadata carries no date, so re-runs change no bytes
    unless the picture changes."""
    FIGURES_DIR.mkdir(exist_ok=True)
    path = FIGURES_DIR / f"{name}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return str(path.relative_to(REPO_ROOT))


def environment_summary() -> str:
    """Python, torch, CPU threads and the quantized engine, one per line."""
    return "\n".join(
        [
            f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
            f"quantized engine: {torch.backends.quantized.engine}",
        ]
    )
