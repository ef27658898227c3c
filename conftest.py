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
    if hasattr(config, "workerinput"):
        one_thread_per_worker()


def one_thread_per_worker() -> None:
    """In an xdist worker, torch and every notebook kernel the worker starts run on one
    thread: two workers share two cores, and two threads each slow both down many times
    over (measured: 5 epochs of SimpleNet in two processes at once took 32 s each on two
    threads, 1.8 s on one), because each thread waits for the other at every kernel. A
    model trained here may therefore differ in its last bits from the committed outputs,
    trained on OMP_NUM_THREADS=2: the cells whose output nbval compares print nothing
    that depends on them, as they must across CPUs too."""
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"  # the notebook kernels inherit it
    torch.set_num_threads(1)


# --- make test runs two pytest-xdist workers (-n 2 --dist loadfile) ---------------------------
# A file's tests, and a notebook's cells, run in one worker: module fixtures run once and a
# notebook's cells share their kernel. These files share a worker, because they share work or
# would see each other's: the Sphinx build (the session fixture ``site``); the hot
# DepthwiseCNN, trained once by test_debugging and found in the cache by notebook 09; the
# grader and the sandbox, which both list the control groups and processes a grading leaves.
SHARED_WORKER = {
    "tests/test_docs.py": "site",
    "tests/test_browser.py": "site",
    "tests/test_debugging.py": "depthwise",
    "notebooks/09_when_8bit_ptq_breaks.ipynb": "depthwise",
    "tests/test_grade.py": "grading",
    "tests/test_sandbox.py": "grading",
}
# The groups that take longest start first, so that no worker is left with a long one at the
# end (the order only changes the time; ``pytest --durations`` shows what takes long).
LONGEST_FIRST = [
    "grading",
    "depthwise",
    "tests/test_parity_matrix.py",
    "tests/test_onnx_cli.py",
    "tests/test_mcu.py",
    "tests/test_jupyterlab.py",
    "notebooks/05_evaluation.ipynb",
    "notebooks/07_convolutions_and_batchnorm.ipynb",
    "notebooks/08_deploy.ipynb",
    "site",
]


def worker_group(path: str) -> str:
    """The unit of work of a file (its path from the repository root) under --dist loadfile."""
    return SHARED_WORKER.get(path, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with the files of SHARED_WORKER in one unit of work each, in the order
    the workers collected them (see pytest_collection_modifyitems)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedWorkerScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid.split("::", 1)[0])

    config.option.loadscopereorder = False  # keep LONGEST_FIRST's order, not the test counts
    return SharedWorkerScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # only xdist's workers collect for the schedule
        return
    rank = {group: index for index, group in enumerate(LONGEST_FIRST)}

    def order(item) -> int:
        path = Path(item.path).resolve().relative_to(REPO_ROOT).as_posix()
        return rank.get(worker_group(path), len(rank))

    items.sort(key=order)  # stable: a file's tests keep their order


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
