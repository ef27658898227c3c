"""ptqlib.classroom.sandbox and runner: what a notebook can see and do while it is graded.

Small notebooks that import nothing heavy run in real kernels, in bubblewrap (which
``.ci/run`` installs) and without it. A cell reports what it found by raising: the runner
records each cell's error line, and nothing else leaves the sandbox."""

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from ptqlib.classroom import sandbox
from ptqlib.classroom.sandbox import Limits, isolation_problem, run_notebook

SECRET = "instructor-secret-4f1c"
MARKER = "ptqlib-sandbox-test-daemon-9b27"
# .ci/run installs bubblewrap; with CI=true a missing one fails these tests instead.
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None and os.environ.get("CI") != "true", reason="bubblewrap missing"
)

REPORT = """
import json, os
def attempt(action):
    try:
        action()
        return "ok"
    except BaseException as error:
        return type(error).__name__
def report(**facts):
    raise RuntimeError(json.dumps(facts, separators=(",", ":")))
"""
DAEMON = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{MARKER}"],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


def run(tmp_path, sources, limits=None, sandboxed=True):
    cells = [
        {"index": index, "source": source, "collects": []} for index, source in enumerate(sources)
    ]
    host = tmp_path / "grading"
    host.mkdir(parents=True)
    outcome = run_notebook(host, {"cells": cells}, "{}", limits or Limits(), sandboxed)
    assert outcome.problem is None, outcome.errors
    return json.loads(outcome.report)


def facts(report, index) -> dict:
    name, _, text = report["cells"][str(index)].partition(": ")
    assert name == "RuntimeError", report["cells"][str(index)]
    return json.loads(text)


def survivors() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if MARKER.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found


def left_groups() -> list[Path]:
    """Control groups this process made for a sandbox and did not remove."""
    parents = [
        Path("/sys/fs/cgroup", *([] if name == "" else [name])) / path.lstrip("/")
        for name, path in sandbox._own_cgroups().items()
    ]
    return [group for parent in parents for group in parent.glob(f"ptqlib-grade-{os.getpid()}-*")]


@pytest.fixture
def grader_environment(tmp_path, monkeypatch):
    """A secret in the grader's environment, a cache holding one checkpoint, a classmate."""
    monkeypatch.setenv("INSTRUCTOR_SECRET", SECRET)
    monkeypatch.setenv("PTQLIB_OUTPUT_DIR", str(tmp_path / "output"))
    (tmp_path / "output" / "artifacts").mkdir(parents=True)
    (tmp_path / "output" / "artifacts" / "baseline.pt").write_text("cached")
    (tmp_path / "class" / "alice").mkdir(parents=True)
    (tmp_path / "class" / "alice" / "02.ipynb").write_text("{}")
    return tmp_path


@needs_bwrap
def test_a_notebook_in_bubblewrap_sees_and_keeps_nothing_of_the_graders(grader_environment):
    assert isolation_problem() is None
    classmate = grader_environment / "class" / "alice" / "02.ipynb"
    package = Path(sandbox.__file__).parent
    limits = Limits(processes=64, memory_bytes=2**29, tmp_bytes=2**25)
    report = run(
        grader_environment,
        [
            REPORT,
            f"""report(uid=os.getuid(), secret=any("{SECRET}" in v for v in os.environ.values()),
       pytest=[name for name in os.environ if name.startswith("PYTEST")],
       root=attempt(lambda: open("/evil", "w")),
       package=attempt(lambda: open("{package}/x", "w")))""",
            f"""report(notebooks=os.path.exists("{REPO_ROOT / "notebooks"}"),
       tests=os.path.exists("{REPO_ROOT / "tests"}"),
       classmate=os.path.exists("{classmate}"), home=os.path.exists("/root/.ssh"),
       cache=attempt(lambda: open("/grading/cache/baseline.pt", "w")),
       copy=open("artifacts/baseline.pt").read(),
       own_copy=attempt(lambda: open("artifacts/baseline.pt", "w").write("changed")))""",
            """import socket, glob
cmdlines = [open(path, "rb").read() for path in glob.glob("/proc/[0-9]*/cmdline")]
runner = os.getppid()  # the runner: undumpable, so its fds, memory and environment are closed
report(runner=runner, runner_fd=attempt(lambda: os.stat(f"/proc/{runner}/fd/1")),
       runner_environ=attempt(lambda: open(f"/proc/{runner}/environ").read()),
       inputs=attempt(lambda: open("/grading/in/inputs.json", "w")),
       network=attempt(lambda: socket.create_connection(("8.8.8.8", 53), timeout=3)),
       interfaces=[name for _, name in socket.if_nameindex()], processes=len(cmdlines),
       grader=any(b"pytest" in line for line in cmdlines))""",
            """import time
children = []
for _ in range(400):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
report(forks=len(children))""",
            """report(memory=attempt(lambda: bytearray(5 * 2**30)),
       tmp=attempt(lambda: open("/tmp/big", "wb").write(b"x" * 2**26)),
       shm=attempt(lambda: open("/dev/shm/big", "wb").write(b"x" * 2**26)),
       dev=attempt(lambda: open("/dev/big", "wb")),
       null=attempt(lambda: open("/dev/null", "w")))""",
            DAEMON,
        ],
        limits,
    )
    assert facts(report, 1) == {
        "uid": 65534,
        "secret": False,
        "pytest": [],
        "root": "OSError",
        "package": "OSError",
    }
    assert facts(report, 2) == {
        "notebooks": False,
        "tests": False,
        "classmate": False,
        "home": False,
        "cache": "OSError",
        "copy": "cached",
        "own_copy": "ok",
    }
    seen = facts(report, 3)
    assert seen["runner"] == 1  # no bubblewrap process inside that holds the report's pipe
    assert seen["runner_fd"] == seen["runner_environ"] == "PermissionError"
    assert seen["inputs"] == "OSError"
    assert seen["network"] == "OSError" and seen["interfaces"] == ["lo"]
    assert seen["grader"] is False and seen["processes"] < 10
    group = sandbox.ControlGroup.create(limits)  # can this process make one?
    if group is not None:
        group.kill_and_remove()
    if group is not None or os.getuid() != 0:  # root without a control group: no cap
        assert facts(report, 4)["forks"] < limits.processes
    assert facts(report, 5) == {
        "memory": "MemoryError",
        "tmp": "OSError",
        "shm": "OSError",
        "dev": "OSError",
        "null": "ok",
    }
    assert survivors() == []
    assert left_groups() == []
    assert (grader_environment / "output" / "artifacts" / "baseline.pt").read_text() == "cached"
    assert classmate.read_text() == "{}"


def test_without_bubblewrap_the_environment_is_scrubbed_and_no_process_survives(
    grader_environment, monkeypatch
):
    report = run(
        grader_environment,
        [REPORT, DAEMON, 'report(secret=os.environ.get("INSTRUCTOR_SECRET"))'],
        sandboxed=False,
    )
    assert facts(report, 2) == {"secret": None}
    assert survivors() == []
    monkeypatch.setattr(shutil, "which", lambda name: None)
    warning = isolation_problem()
    assert warning.startswith("WARNING: bubblewrap (bwrap) is not installed")
    assert "WITHOUT a sandbox" in warning and "other submissions" in warning


@needs_bwrap
def test_a_cell_and_a_whole_notebook_have_time_limits(tmp_path):
    cell = run(
        tmp_path / "cell", ["x = 1", "import time\ntime.sleep(60)", "y = 2"], Limits(cell_timeout=3)
    )
    assert (cell["stopped"], cell["stopped_at"], cell["ran"]) == ("timed out", 1, [0])
    whole = run(
        tmp_path / "notebook",
        ["import time\ntime.sleep(2)", "time.sleep(2)", "time.sleep(2)"],
        Limits(cell_timeout=30, notebook_timeout=3),
        sandboxed=False,
    )
    assert (whole["stopped"], whole["stopped_at"]) == ("notebook timed out", 1)


def test_a_dead_kernel_stops_the_notebook(tmp_path):
    report = run(tmp_path, ["x = 1", "import os\nos._exit(3)", "y = 2"], sandboxed=False)
    assert (report["stopped"], report["stopped_at"], report["ran"]) == ("kernel died", 1, [0])


def test_groups_left_by_a_grader_that_is_gone_are_removed():
    limits = Limits()
    group = sandbox.ControlGroup.create(limits)
    if group is None:
        pytest.skip("this process may not create a control group")
    dead = max(int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()) + 1
    while Path(f"/proc/{dead}").exists():
        dead += 1
    stale = [folder.parent / f"ptqlib-grade-{dead}-1-2" for folder in group.folders]
    for folder in stale:
        folder.mkdir()
    group.kill_and_remove()
    sandbox.ControlGroup.create(limits).kill_and_remove()
    assert not any(folder.exists() for folder in stale)
    assert left_groups() == []


def test_a_group_that_could_not_be_removed_leaves_the_next_notebook_its_limits():
    limits = Limits()
    first = sandbox.ControlGroup.create(limits)
    if first is None:
        pytest.skip("this process may not create a control group")
    try:
        second = sandbox.ControlGroup.create(limits)  # the same thread, the first still there
        assert second is not None
        second.kill_and_remove()
    finally:
        first.kill_and_remove()
    assert left_groups() == []
