"""A real browser opens the built site: headless Chromium, driven over the DevTools protocol.

The site is served from 127.0.0.1 by Python's own HTTP server. Chromium loads the home
page and the first notebook's page; for each it takes a screenshot, and the test checks
that the browser logged no console error, no uncaught exception and no failed request,
that nothing was requested from another host (the site must work offline), that the
expected heading is shown, that every image decoded, and that math is laid out as MathML.
On every notebook page, in a window 1280 pixels wide, no cell's code or printed output may
need sideways scrolling (solutions unfolded): the failure names the page, the first block
that does and its widest line.

Chromium is driven through ``--remote-debugging-pipe``: the DevTools protocol as
NUL-terminated JSON messages on file descriptors 3 (commands) and 4 (replies and events),
so the test needs nothing beyond the standard library. It needs Debian's ``chromium``
package; without it the test is skipped locally, but fails in CI (``CI=true``).
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

from conftest import NOTEBOOKS, REPO_ROOT, DevToolsPipe

pytestmark = pytest.mark.browser


def visit(browser: DevToolsPipe, url: str, screenshot: Path) -> dict:
    """Load ``url`` in a fresh tab; return what the page shows and what went wrong."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session)
    browser.events.clear()
    browser.send("Page.navigate", session, url=url)
    browser.wait_for_event("Page.loadEventFired", session)
    # The theme's scripts run after "load"; give late errors a moment to arrive.
    time.sleep(1.0)
    facts = browser.send("Runtime.evaluate", session, expression=PAGE_FACTS_JS, returnByValue=True)[
        "result"
    ]["value"]
    png = base64.b64decode(browser.send("Page.captureScreenshot", session, format="png")["data"])
    screenshot.write_bytes(png)
    facts["screenshot_bytes"] = len(png)
    facts["problems"] = problems_in(
        [event for event in browser.events if event.get("sessionId") == session], url
    )
    browser.send("Target.closeTarget", targetId=target)
    return facts


# Runs inside the page: the heading, and whether images and math were really rendered.
PAGE_FACTS_JS = """
(() => {
  const h1 = document.querySelector("article h1");  // not the print-only copy above it
  const heading = h1 ? h1.cloneNode(true) : null;
  if (heading) heading.querySelectorAll(".headerlink").forEach((a) => a.remove());
  const images = Array.from(document.querySelectorAll("article img"));
  const maths = Array.from(document.querySelectorAll("article math"));
  const hidden = Array.from(document.querySelectorAll("article details.hide"));
  return {
    title: document.title,
    heading: heading ? heading.textContent.trim() : null,
    images: images.length,
    broken_images: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.src),
    maths: maths.length,
    unrendered_maths: maths.filter((m) => m.getBoundingClientRect().width === 0).length,
    folded: hidden.length,
    unfolded: hidden.filter((d) => d.open).length,
    navigation_links: document.querySelectorAll("nav.bd-docs-nav a").length,
  };
})()
"""


def problems_in(events: list[dict], url: str) -> list[str]:
    """Console errors, exceptions, failed or off-site requests among the page's events."""
    origin = re.match(r"https?://[^/]+", url).group(0)
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
            problems.append("console error: " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            problems.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            problems.append(f"log error: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"failed request: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            requested = params["request"]["url"]
            if not requested.startswith((origin + "/", "data:", "about:", "blob:")):
                problems.append(f"off-site request: {requested}")
    return problems


def first_heading(notebook: Path) -> str:
    """The text of the notebook's first "# " heading, without Markdown emphasis or code marks."""
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return re.sub(r"[*`]", "", line[2:]).strip()
    raise AssertionError(f"{notebook.name} has no '# ' title")


def home_title() -> str:
    first_line = (REPO_ROOT / "docs" / "index.md").read_text(encoding="utf-8").splitlines()[0]
    return first_line.removeprefix("# ").strip()


def test_home_page_in_chromium(browser, site_url, tmp_path):
    facts = visit(browser, f"{site_url}/docs/index.html", tmp_path / "home.png")
    assert not facts["problems"], "\n".join(facts["problems"])
    assert facts["heading"] == home_title()
    assert facts["navigation_links"] >= len(NOTEBOOKS) + 1  # notebooks + glossary in the nav
    assert facts["screenshot_bytes"] > 20_000, "the screenshot looks blank"


def test_first_notebook_page_in_chromium(browser, site_url, tmp_path):
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"
    notebook = NOTEBOOKS[0]
    facts = visit(browser, f"{site_url}/notebooks/{notebook.stem}.html", tmp_path / "page.png")
    assert not facts["problems"], "\n".join(facts["problems"])
    assert facts["heading"] == first_heading(notebook)
    assert facts["broken_images"] == []
    assert facts["unrendered_maths"] == 0
    assert facts["unfolded"] == 0, "a solution cell is shown unfolded"
    assert facts["screenshot_bytes"] > 20_000, "the screenshot looks blank"


def test_glossary_math_is_laid_out(browser, site_url, tmp_path):
    facts = visit(browser, f"{site_url}/docs/glossary.html", tmp_path / "glossary.png")
    assert not facts["problems"], "\n".join(facts["problems"])
    assert facts["heading"] == "Glossary"
    assert facts["maths"] >= 20 and facts["unrendered_maths"] == 0


# Runs inside a notebook page: unfold the hidden solutions, then list every code or output
# block of a cell whose content is wider than its box (it scrolls sideways), with its cell's
# number and its widest line.
WIDE_BLOCKS_JS = """
(() => {
  document.querySelectorAll("article details").forEach((d) => { d.open = true; });
  const cells = Array.from(document.querySelectorAll("article div.cell"));
  const wide = [];
  cells.forEach((cell, number) => {
    for (const part of cell.querySelectorAll(".cell_input, .cell_output")) {
      for (const box of [part, ...part.querySelectorAll("*")]) {
        if (!["auto", "scroll"].includes(getComputedStyle(box).overflowX)) continue;
        if (box.scrollWidth <= box.clientWidth + 1) continue;
        const lines = (box.innerText || "").split("\\n");
        const widest = lines.reduce((a, b) => (b.length > a.length ? b : a), "");
        const input = cell.querySelector(".cell_input");
        wide.push({
          cell: number,
          starts: input ? input.innerText.split("\\n")[0] : "",
          kind: part.classList.contains("cell_input") ? "code" : "output",
          content: box.scrollWidth,
          box: box.clientWidth,
          widest: widest,
        });
      }
    }
  });
  return {cells: cells.length, wide: wide};
})()
"""


def wide_blocks(browser: DevToolsPipe, url: str) -> dict:
    """Load ``url`` in a fresh tab (1280 x 900, the browser's window) and run WIDE_BLOCKS_JS."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    browser.send("Page.enable", session)
    browser.events.clear()
    browser.send("Page.navigate", session, url=url)
    browser.wait_for_event("Page.loadEventFired", session)
    time.sleep(0.5)  # the theme's scripts and fonts settle after "load"
    result = browser.send(
        "Runtime.evaluate", session, expression=WIDE_BLOCKS_JS, returnByValue=True
    )["result"]["value"]
    browser.send("Target.closeTarget", targetId=target)
    return result


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_no_cell_scrolls_sideways_at_1280_pixels(browser, site_url, notebook):
    page = f"notebooks/{notebook.stem}.html"
    found = wide_blocks(browser, f"{site_url}/{page}")
    assert found["cells"] > 0, f"{page}: no notebook cell found (did the theme change?)"
    if found["wide"]:
        first = found["wide"][0]
        pytest.fail(
            f"{page}: {len(found['wide'])} code or output block(s) need sideways scrolling in "
            f"a 1280-pixel-wide window. The first: the {first['kind']} of code cell "
            f"{first['cell']} of the page (counting from 0; its code starts "
            f"{first['starts']!r}), {first['content']} pixels of content in a "
            f"{first['box']}-pixel box; its widest line has {len(first['widest'])} characters: "
            f"{first['widest']!r}"
        )
