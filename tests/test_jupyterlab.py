"""JupyterLab, used as the series is used: the project's server, a notebook, cells run in it.

The test starts ``jupyter lab`` from the project's environment, as ``make lab`` does, but
headless, on a free port of 127.0.0.1, with a random token, on a copy of notebook 01 in a
temporary folder, and with every Jupyter/IPython settings and state folder pointed there
too, so nothing is written into the repository or the home folder. Headless Chromium opens
the notebook; the test runs its first code cells through JupyterLab's own commands (the same
ones Shift+Enter triggers), adds one cell that reports where ``ptqlib`` comes from, and
reads the outputs from the page: the kernel must be this checkout's environment. The server
is stopped afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import NOTEBOOKS, REPO_ROOT, DevToolsPipe

pytestmark = pytest.mark.browser

STARTUP_SECONDS = 120
CELL_SECONDS = 180
JUPYTER = Path(sys.executable).parent / "jupyter"
PROBE = "import sys, ptqlib\nprint('ptqlib from', ptqlib.__file__)\nprint('python', sys.executable)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {STARTUP_SECONDS} s")


@pytest.fixture
def lab_server(tmp_path):
    """A running JupyterLab on a copy of notebook 01; yields (base URL, token)."""
    if not JUPYTER.exists():
        pytest.fail(f"{JUPYTER} is missing: run the tests from the project's environment")
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOKS[0], root)
    state = tmp_path / "jupyter-state"
    environment = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "lab-workspaces"),
        "IPYTHONDIR": str(state / "ipython"),
    }
    port, token = free_port(), secrets.token_hex(16)
    command = [
        str(JUPYTER), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--allow-root",
        "--LabApp.extension_manager=readonly",
    ]  # fmt: skip
    log = (tmp_path / "jupyter.log").open("w")
    server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/api/status?token={token}", server)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def evaluate(browser: DevToolsPipe, session: str, expression: str):
    """Run JavaScript in the page (awaiting a promise) and return its JSON-able value."""
    reply = browser.send(
        "Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True
    )
    if "exceptionDetails" in reply:
        raise RuntimeError(f"JavaScript failed: {reply['exceptionDetails']}")
    return reply["result"].get("value")


def wait_until(browser, session, expression: str, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = evaluate(browser, session, expression)
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {seconds} s")


# The open notebook's cells: type, and the text of their outputs.
CELLS_JS = """
(() => {
  const panel = window.jupyterapp.shell.currentWidget;
  return panel.content.widgets.map((cell) => ({
    type: cell.model.type,
    outputs: cell.node.querySelector(".jp-OutputArea")
      ? cell.node.querySelector(".jp-OutputArea").innerText : "",
  }));
})()
"""


def run_cells_js(count: int) -> str:
    """Select the first cell, then run ``count`` cells with JupyterLab's Shift+Enter command,
    then insert the probe cell below and run it."""
    return f"""
(async () => {{
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  await panel.sessionContext.ready;
  panel.content.activeCellIndex = 0;
  for (let i = 0; i < {count}; i++) {{
    await app.commands.execute("notebook:run-cell-and-select-next");
  }}
  await app.commands.execute("notebook:insert-cell-above");
  panel.content.activeCell.model.sharedModel.setSource({json.dumps(PROBE)});
  await app.commands.execute("notebook:run-cell");
  return panel.content.activeCellIndex;
}})()
"""


def test_notebook_runs_in_jupyterlab_on_the_projects_kernel(browser, lab_server, tmp_path):
    base, token = lab_server
    notebook = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    code_indices = [i for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"]
    first_two = code_indices[:2]  # the imports and the version cell
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        browser.send("Runtime.enable", session)
        browser.send(
            "Page.navigate", session, url=f"{base}/lab/tree/{NOTEBOOKS[0].name}?token={token}"
        )
        wait_until(
            browser,
            session,
            "!!(window.jupyterapp && window.jupyterapp.shell.currentWidget"
            " && window.jupyterapp.shell.currentWidget.content"
            " && window.jupyterapp.shell.currentWidget.content.widgets.length)",
            STARTUP_SECONDS,
            "the notebook did not open",
        )
        probe_index = evaluate(browser, session, run_cells_js(first_two[-1] + 1))
        cells = wait_until(
            browser,
            session,
            f"(() => {{ const c = {CELLS_JS.strip()}; "
            f"return c[{probe_index}].outputs.includes('python') ? c : null; }})()",
            CELL_SECONDS,
            "the probe cell printed nothing",
        )
        png = browser.send("Page.captureScreenshot", session, format="png")["data"]
        (tmp_path / "jupyterlab.png").write_bytes(base64.b64decode(png))
    finally:
        browser.send("Target.closeTarget", targetId=target)

    version_output = cells[first_two[1]]["outputs"]
    assert "torch" in version_output and "python" in version_output, version_output
    probe = cells[probe_index]["outputs"]
    assert f"ptqlib from {REPO_ROOT / 'ptqlib' / '__init__.py'}" in probe, probe
    assert f"python {sys.executable}" in probe, probe
