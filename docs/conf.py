"""Sphinx configuration for the static HTML site of the tutorial series.

Build it with ``make docs`` (the command it runs is below), then open
``docs/_build/html/index.html``::

    sphinx-build -b html -c docs . docs/_build/html

The *source* directory is the repository root and this directory (``docs/``) only holds
the configuration, so the pages come straight from ``docs/*.md`` and
``notebooks/*.ipynb``: nothing is copied by hand and the notebooks keep their relative
links (``../figures/...``). Everything else at the top level is excluded below.

The notebooks are rendered with their saved outputs and never executed here
(``nb_execution_mode = "off"``): ``make run`` executes them, ``make docs`` only renders.
The site works offline: math is converted to MathML at build time (``_ext/mathml_math.py``),
which browsers render natively, so no MathJax is fetched from a CDN.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent
# Local Sphinx extensions live in docs/_ext (the usual Sphinx layout).
sys.path.insert(0, str(DOCS_DIR / "_ext"))

project = "Post-training quantization in PyTorch"
author = "The ptqlib authors"
copyright = "the ptqlib authors"

extensions = [
    "myst_nb",  # Markdown (MyST) pages and Jupyter notebooks
    "mathml_math",  # LaTeX -> MathML at build time: math renders offline
    "figure_alt",  # notebook figures get their "*Figure: ...*" caption as alt text
]

# The home page is docs/index.md; the notebooks are /notebooks/NN_name.ipynb.
root_doc = "docs/index"

# Only docs/ and notebooks/ hold pages: skip every other top-level entry (.venv, data,
# ptqlib, the README, ...) so Sphinx neither reads nor walks them.
_PAGE_DIRS = {"docs", "notebooks"}
exclude_patterns = sorted(
    entry.name for entry in REPO_ROOT.iterdir() if entry.name not in _PAGE_DIRS
) + ["docs/_build", "docs/_ext", "docs/_static", "docs/_extra", "**/.ipynb_checkpoints"]

# --- MyST (Markdown) ---------------------------------------------------------------
myst_enable_extensions = [
    "dollarmath",  # $inline$ and $$display$$ math, as in Jupyter
    "amsmath",  # \begin{align} ... \end{align} blocks, as in Jupyter
    "colon_fence",
]
myst_heading_anchors = 3  # [text](#some-heading) links inside a page

# --- Notebooks (myst-nb) -----------------------------------------------------------
nb_execution_mode = "off"  # render the saved outputs; `make run` is what executes
nb_merge_streams = True  # one block per stream (`make run` keeps a tqdm bar's final state)
nb_ipywidgets_js = {}  # no widget JavaScript from a CDN: the notebooks use plain-text tqdm

# --- HTML --------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "Post-training quantization in PyTorch"
html_math_renderer = "mathml"
html_static_path = ["_static"]
html_css_files = ["mathml.css", "notebook.css"]
# _extra/index.html sends docs/_build/html/index.html on to the home page.
html_extra_path = ["_extra"]
html_favicon = "_static/favicon.svg"  # also spares the browser a request for /favicon.ico
# The theme's colour mode before a reader picks one (without it, the theme logs an error).
html_context = {"default_mode": "auto"}
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": True,  # download the .ipynb / .md source of a page
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "use_issues_button": False,
    "use_edit_page_button": False,
}
