"""Saving the notebooks' figures where the README and the docs find them."""

from __future__ import annotations

import matplotlib.pyplot as plt

from ptqlib.paths import figures_dir


def save_figure(figure: plt.Figure, name: str) -> str:
    """Save ``figure`` as ``<figures dir>/<name>.png`` (name like ``01_digits``) and return
    ``figures/<name>.png``, the path the README and docs use. The folder is the repository's
    ``figures/`` unless ``PTQLIB_OUTPUT_DIR`` says otherwise (see ``ptqlib.paths``). PNG
    metadata carries no date, so re-runs change no bytes unless the picture changes."""
    directory = figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return f"figures/{name}.png"
