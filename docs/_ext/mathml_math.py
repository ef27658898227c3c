"""A Sphinx math renderer that turns LaTeX into MathML while the site is built.

Sphinx's default renderer leaves the LaTeX in the page and loads MathJax from a CDN to
typeset it in the browser; offline, that fails and the formulas stay raw. MathML is the
web standard for math: Chromium, Firefox and Safari render it natively, so the page needs
no script and no network. The conversion is docutils' own ``latex2mathml`` (docutils is
already a Sphinx dependency), which covers the LaTeX these notebooks use: fractions,
sub/superscripts, ``\\operatorname``, ``\\lfloor``/``\\rceil``, ``cases``, aligned rows.

A formula it cannot convert is shown as its LaTeX source and reported as a build warning
that names the page, so the author can fix it.
"""

from __future__ import annotations

import html
import re

from docutils import nodes
from docutils.utils.math import MathError
from docutils.utils.math.latex2mathml import tex2mathml
from sphinx.application import Sphinx
from sphinx.locale import _
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number
from sphinx.writers.html5 import HTML5Translator

logger = logging.getLogger(__name__)

# myst's "amsmath" extension keeps the \begin{align} ... \end{align} around a block;
# latex2mathml lays out the rows itself, so only the body is converted.
_ENVIRONMENT = re.compile(
    r"^\s*\\begin\{(equation|align|alignat|gather|multline|flalign)\*?\}(?:\{\d+\})?"
    r"(?P<body>.*)\\end\{\1\*?\}\s*$",
    re.DOTALL,
)
# Equation tags and labels are LaTeX bookkeeping with no MathML counterpart.
_BOOKKEEPING = re.compile(r"\\(?:tag|label|nonumber|notag)\b(?:\{[^}]*\})?")
# Common LaTeX that latex2mathml does not know, rewritten to an equivalent it does know.
# \big( and friends only size a delimiter: MathML sizes delimiters itself.
_ALIASES = [
    (re.compile(r"\\dots(?![a-zA-Z])"), r"\\ldots"),
    (re.compile(r"\\textbf(?![a-zA-Z])"), r"\\mathbf"),
    (re.compile(r"\\textit(?![a-zA-Z])"), r"\\mathit"),
    (re.compile(r"\\iff(?![a-zA-Z])"), r"\\Leftrightarrow"),
    (re.compile(r"\\stackrel(?![a-zA-Z])"), r"\\overset"),
    (re.compile(r"\\[bB]igg?[lrm]?(?![a-zA-Z])"), ""),
]


def latex_to_mathml(latex: str, display: bool) -> str:
    """The ``<math>`` element for ``latex``; raises docutils' MathError if unsupported."""
    # alttext: the LaTeX source as written, for assistive tools and for copy-and-paste.
    alttext = html.escape(" ".join(latex.split()), quote=True)
    match = _ENVIRONMENT.match(latex)
    if match:
        latex = match.group("body")
    latex = _BOOKKEEPING.sub("", latex)
    for pattern, replacement in _ALIASES:
        latex = pattern.sub(replacement, latex)
    if display:
        # Sphinx's convention: blank lines separate equations in one block.
        latex = r" \\ ".join(part for part in latex.split("\n\n") if part.strip())
    mathml = tex2mathml(latex.strip(), as_block=display)
    return mathml.replace("<math ", f'<math alttext="{alttext}" ', 1)


def _render(translator: HTML5Translator, node: nodes.Element, display: bool) -> str:
    latex = node.astext()
    try:
        return latex_to_mathml(latex, display)
    except MathError as error:
        logger.warning(
            "cannot convert this LaTeX to MathML (%s): %s", error, latex, location=node
        )
        return f'<code class="math-fallback">{translator.encode(latex)}</code>'


def visit_inline_math(translator: HTML5Translator, node: nodes.math) -> None:
    translator.body.append(translator.starttag(node, "span", "", CLASS="math notranslate"))
    translator.body.append(_render(translator, node, display=False) + "</span>")
    raise nodes.SkipNode


def visit_block_math(translator: HTML5Translator, node: nodes.math_block) -> None:
    translator.body.append(translator.starttag(node, "div", CLASS="math notranslate"))
    if node["number"]:
        number = get_node_equation_number(translator, node)
        translator.body.append(f'<span class="eqno">({number})')
        translator.add_permalink_ref(node, _("Link to this equation"))
        translator.body.append("</span>")
    translator.body.append(_render(translator, node, display=True) + "</div>\n")
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict:
    app.add_html_math_renderer(
        "mathml", (visit_inline_math, None), (visit_block_math, None)
    )
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
