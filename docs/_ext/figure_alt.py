"""Give every figure that a notebook cell outputs the alt text of its caption.

The notebooks caption a figure in the markdown cell right after the code cell that
draws it: ``*Figure: what the plot shows.*``. In the HTML that caption is a paragraph
after the cell, and the image itself would only get its file name as alt text, which
tells a screen-reader user nothing. This extension copies the caption's text (without
the "Figure:" prefix) into the image's ``alt``.

An image that already has alt text (for instance from the cell metadata
``mystnb: {image: {alt: ...}}``) keeps it. An image with neither keeps the file name,
and ``tests/test_docs.py`` reports it.
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.application import Sphinx

CAPTION_PREFIX = re.compile(r"^\s*(Figure|Fig\.)\s*\d*\s*[:.]\s*", re.IGNORECASE)


def _is_cell(node: nodes.Node) -> bool:
    """A myst-nb code cell: a container with the class "cell"."""
    return isinstance(node, nodes.container) and "cell" in node.get("classes", [])


def caption_after(image: nodes.image) -> str | None:
    """The text of the "Figure: ..." paragraph right after the cell holding ``image``."""
    cell = image.parent
    while cell is not None and not _is_cell(cell):
        cell = cell.parent
    if cell is None or cell.parent is None:
        return None
    siblings = cell.parent.children
    position = siblings.index(cell)
    if position + 1 >= len(siblings):
        return None
    following = siblings[position + 1]
    if not isinstance(following, nodes.paragraph):
        return None
    text = " ".join(following.astext().split())
    if not CAPTION_PREFIX.match(text):
        return None
    return CAPTION_PREFIX.sub("", text, count=1)


def add_alt_text(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    # Notebook outputs become image nodes only in myst-nb's post-transforms, which run
    # before this event: so every output figure is an image node by now.
    for image in doctree.findall(nodes.image):
        if image.get("alt"):
            continue
        caption = caption_after(image)
        if caption:
            image["alt"] = caption


def setup(app: Sphinx) -> dict:
    app.connect("doctree-resolved", add_alt_text)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
