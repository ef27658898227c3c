"""pytest settings for the whole run: where generated files go, and nbval's comparisons.

Generated files never land in the repository during tests: before anything runs,
``PTQLIB_OUTPUT_DIR`` points ptqlib's artifacts and figures at a temporary folder (see
``ptqlib.paths``); the notebook kernels that nbval starts inherit it. At the end, the run
fails if ``git status --porcelain`` (and the content of modified files) differs from what it
was at the start: on a fresh clone, ``make test`` leaves the tree exactly as it found it.

nbval compares the printed output of cells tagged ``nbval-check-output``. Text on
stderr (tqdm progress bars, library warnings) differs from machine to machine and run
to run, so it is never compared.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent
_state = {}


def tree_state() -> str | None:
    """``git status --porcelain`` plus a hash of the working tree's diff; None outside git."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True
        )
        diff = subprocess.run(["git", "diff"], cwd=REPO_ROOT, capture_output=True)
    except OSError:
        return None
    if status.returncode != 0:
        return None
    return status.stdout + hashlib.sha256(diff.stdout).hexdigest()


def pytest_configure(config):
    if "PTQLIB_OUTPUT_DIR" not in os.environ:
        _state["output_dir"] = tempfile.mkdtemp(prefix="ptqlib-test-output-")
        os.environ["PTQLIB_OUTPUT_DIR"] = _state["output_dir"]
    _state["tree"] = tree_state()


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


def pytest_sessionfinish(session, exitstatus):
    if "output_dir" in _state:
        shutil.rmtree(_state.pop("output_dir"), ignore_errors=True)
        del os.environ["PTQLIB_OUTPUT_DIR"]
    before, after = _state.get("tree"), tree_state()
    if before is not None and after != before:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            "FAILED: the tests changed files in the repository (git status before/after differs):\n"
            + after.rsplit("\n", 1)[0],
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
