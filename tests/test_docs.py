"""The static HTML site: build it from a clean state, then check the HTML it wrote.

The site is built once per test session, with the same command as ``make docs`` but into
a temporary directory, so these tests also run on a fresh clone (CI) and never touch
``docs/_build``. The checks: the build prints no warning; every notebook has a page,
linked from the home page in order; every local link and image resolves (anchors too);
every image has alt text or a caption; math is MathML (nothing loads from the network);
solutions are folded away.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import NOTEBOOKS, REPO_ROOT, Site

pytestmark = pytest.mark.browser
# Attributes that point at another file, by tag.
LINK_ATTRIBUTES = {"a": "href", "link": "href", "img": "src", "script": "src", "source": "src"}
IMAGE_FILE = re.compile(r"\.(png|jpe?g|gif|svg|webp)$", re.IGNORECASE)


@dataclass
class Page:
    """What the checks need from one HTML page."""

    links: list[tuple[str, str]] = field(default_factory=list)  # (tag, url)
    ids: set[str] = field(default_factory=set)
    images: list[dict[str, str | None]] = field(default_factory=list)
    figures_with_caption: set[int] = field(default_factory=set)
    details: list[dict[str, str | None]] = field(default_factory=list)
    text: str = ""


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self.figure_stack: list[int] = []
        self.figures_seen = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("id", "name"):
            if attributes.get(name):
                self.page.ids.add(attributes[name])
        url = attributes.get(LINK_ATTRIBUTES.get(tag, ""))
        if url is not None:
            self.page.links.append((tag, url))
        if tag == "figure":
            self.figures_seen += 1
            self.figure_stack.append(self.figures_seen)
        elif tag == "figcaption" and self.figure_stack:
            self.page.figures_with_caption.add(self.figure_stack[-1])
        elif tag == "img":
            figure = self.figure_stack[-1] if self.figure_stack else None
            self.page.images.append({**attributes, "figure": figure})
        elif tag == "details":
            self.page.details.append(attributes)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self.figure_stack:
            self.figure_stack.pop()

    def handle_data(self, data: str) -> None:
        self.page.text += data


def parse(path: Path) -> Page:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.page


@pytest.fixture(scope="session")
def pages(site: Site) -> dict[Path, Page]:
    """Every page of the site; _static/ holds only the theme's files (some are templates)."""
    return {
        path: parse(path)
        for path in sorted(site.html_dir.rglob("*.html"))
        if "_static" not in path.relative_to(site.html_dir).parts
    }


def notebook_cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def test_the_build_prints_no_warnings(site: Site):
    assert site.warnings.strip() == "", f"sphinx-build warned:\n{site.warnings}"


def test_every_notebook_has_a_page_linked_from_the_home_page_in_order(site: Site, pages):
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file: the site would have no lessons"
    home = site.html_dir / "docs" / "index.html"
    linked = [url for tag, url in pages[home].links if tag == "a"]
    positions = []
    for notebook in NOTEBOOKS:
        page = site.html_dir / "notebooks" / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.name}"
        url = f"../notebooks/{notebook.stem}.html"
        assert url in linked, f"the home page does not link to {notebook.name}"
        positions.append(linked.index(url))
    assert positions == sorted(positions), "the home page lists the notebooks out of order"


def test_the_site_root_leads_to_the_home_page(site: Site, pages):
    assert ("a", "docs/index.html") in pages[site.html_dir / "index.html"].links


def resolve(page: Path, url: str) -> tuple[Path, str] | None:
    """The local file and #anchor a URL in ``page`` points to; None for external URLs."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return None
    if not parts.path:  # "#anchor" on the same page
        return page, parts.fragment
    target = (page.parent / unquote(parts.path)).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, parts.fragment


def test_no_broken_local_links_images_or_anchors(site: Site, pages):
    problems = []
    for page_path, page in pages.items():
        where = page_path.relative_to(site.html_dir)
        for tag, url in page.links:
            resolved = resolve(page_path, url)
            if resolved is None:
                continue
            target, anchor = resolved
            if not target.is_file():
                problems.append(f"{where}: <{tag}> {url} -> missing file")
            elif anchor and target.suffix == ".html" and anchor not in pages[target].ids:
                problems.append(f"{where}: <{tag}> {url} -> no element with id {anchor!r}")
    assert not problems, "\n".join(problems)


def test_nothing_is_loaded_from_the_network(pages, site: Site):
    """Scripts, styles and images are local: the site works offline (no MathJax CDN)."""
    remote = [
        f"{path.relative_to(site.html_dir)}: <{tag}> {url}"
        for path, page in pages.items()
        for tag, url in page.links
        if tag != "a" and (urlsplit(url).netloc or urlsplit(url).scheme in ("http", "https"))
    ]
    assert not remote, "\n".join(remote)


def test_every_image_has_alt_text_or_a_caption(pages, site: Site):
    problems = []
    for path, page in pages.items():
        for image in page.images:
            alt = (image.get("alt") or "").strip()
            meaningful = alt and alt != image.get("src") and not IMAGE_FILE.search(alt)
            if not meaningful and image["figure"] not in page.figures_with_caption:
                where = path.relative_to(site.html_dir)
                problems.append(f"{where}: {image.get('src')} (alt={alt!r})")
    assert not problems, "images without alt text or caption:\n" + "\n".join(problems)


def test_notebook_figures_are_embedded_as_images(site: Site, pages):
    for notebook in NOTEBOOKS:
        outputs = [
            output
            for cell in notebook_cells(notebook)
            if cell["cell_type"] == "code"
            for output in cell.get("outputs", [])
            if "image/png" in output.get("data", {})
        ]
        page = pages[site.html_dir / "notebooks" / f"{notebook.stem}.html"]
        shown = [image for image in page.images if "_images/" in (image.get("src") or "")]
        assert len(shown) == len(outputs), f"{notebook.name}: {len(outputs)} PNG outputs"


def test_math_is_mathml_and_no_page_loads_mathjax(site: Site, pages):
    glossary = (site.html_dir / "docs" / "glossary.html").read_text(encoding="utf-8")
    assert glossary.count("<math ") >= 20
    for path, page in pages.items():
        assert "math-fallback" not in path.read_text(encoding="utf-8"), f"{path.name}: raw LaTeX"
        scripts = [url for tag, url in page.links if tag == "script"]
        assert not [url for url in scripts if "mathjax" in url.lower()], f"{path.name}: MathJax"


def test_solution_cells_are_folded_away(site: Site, pages):
    for notebook in NOTEBOOKS:
        hidden = [
            cell for cell in notebook_cells(notebook)
            if "hide-cell" in cell.get("metadata", {}).get("tags", [])
        ]  # fmt: skip
        page = pages[site.html_dir / "notebooks" / f"{notebook.stem}.html"]
        folded = [d for d in page.details if "hide" in (d.get("class") or "").split()]
        assert len(folded) == len(hidden), f"{notebook.name}: {len(hidden)} hide-cell cells"
        assert all("open" not in d for d in folded), f"{notebook.name}: a solution is unfolded"


def test_the_glossary_defines_the_series_terms(site: Site):
    def normalise(name: str) -> str:
        return name.lower().replace(" ", "-").replace("_", "-")

    anchors = {normalise(anchor) for anchor in parse(site.html_dir / "docs" / "glossary.html").ids}
    for term in [
        "scale", "zero-point", "observer", "calibration", "per-channel", "fake quantization",
        "requantization", "affine quantization", "symmetric quantization", "quant_min",
        "reduce_range", "SQNR", "INT8", "FP32", "LSB",
    ]:  # fmt: skip
        assert normalise(f"term-{term}") in anchors, f"the glossary has no entry for {term!r}"


def load_extension(name: str):
    """A module of docs/_ext, loaded by path (Sphinx extensions there are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "docs" / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("latex", "display", "expected"),
    [
        (r"S = \frac{a}{b}", False, "<mfrac>"),
        (r"\begin{align} a &= b \\ c &= d \end{align}", True, '<mtable class="ams-align"'),
        (r"0 \dots 255", False, "<mi>…</mi>"),
        (r"\bigl( x \bigr)", False, "<mi>x</mi>"),
    ],
)
def test_latex_becomes_mathml(latex, display, expected):
    mathml = load_extension("mathml_math").latex_to_mathml(latex, display)
    assert mathml.startswith("<math alttext=") and expected in mathml


def test_unsupported_latex_raises_so_the_build_can_warn():
    from docutils.utils.math import MathError

    with pytest.raises(MathError):
        load_extension("mathml_math").latex_to_mathml(r"\unknowncommand{x}", False)


def test_notebook_pages_show_no_intermediate_progress_bar_states(site: Site, pages):
    for notebook in NOTEBOOKS:
        page = pages[site.html_dir / "notebooks" / f"{notebook.stem}.html"]
        if "100%|" in page.text:
            assert not re.search(r"^\s*0%\|", page.text, re.MULTILINE), notebook.name
