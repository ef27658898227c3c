"""A sandbox for one handed-in notebook: bubblewrap (``bwrap``) where it works, and the
limits the operating system gives without it.

With bubblewrap (Debian's ``bubblewrap``, the sandbox Flatpak uses) the runner
(:mod:`ptqlib.classroom.runner`) and the kernel it starts see a file system made of:

- ``/usr`` (and ``/bin``, ``/lib``... as the host has them), this Python installation, the
  virtual environment and the ``ptqlib`` package, all read-only; not the repository's
  ``notebooks/`` (the solutions), ``tests/`` or anything else of it, not ``/home`` or
  ``/root`` beyond the Python installation, no other submission, no grade sheet;
- ``/grading/in`` read-only: the prepared notebook and the exercises' inputs (no answers);
- ``/grading/cache`` read-only: the grader's cached checkpoints (``artifacts/``), which the
  runner copies into the work folder;
- ``/grading/work``, ``/tmp`` and ``/dev/shm``: private, size-limited memory file systems,
  gone when the sandbox ends; everything else is read-only.

No network (a new network namespace with only loopback), a new PID namespace whose PID 1 is
the runner (when it ends, every process it or the notebook started is killed), a new user namespace
(the notebook runs as ``nobody`` with no capabilities and cannot make a namespace of its
own), a new session, and only the environment variables the grader sets. The runner gives
itself and the kernel rlimits (address space, file size, processes, no core files); when
this process may create a control group (root with cgroup v1, or a writable cgroup v2
subtree), the whole sandbox also gets a memory and a process cap. The grader kills the
sandbox after the notebook's time limit and reads at most ``report_bytes`` of its report.

Without bubblewrap the runner still runs in a fresh folder with a scrubbed environment, the
rlimits, the control group if there is one and the time limit, in a process group killed
afterwards; but it can read and write everything the grader can, use the network and see
other processes, and a process that leaves its process group survives unless a control
group caught it. :func:`isolation_problem` says so in one line.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import ptqlib
from ptqlib.classroom.runner import GRADING_DIR_ENV
from ptqlib.paths import OUTPUT_DIR_ENV, REPO_ROOT, artifacts_dir

GIB = 2**30
SANDBOX_GRADING = Path("/grading")
# Host paths every Python program needs, bound read-only (or linked, as the host has them).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/fonts", "/etc/localtime")
NOT_ISOLATED = (
    "WARNING: {reason}: the notebooks run WITHOUT a sandbox. Each can read and write every "
    "file you can (other submissions, the grade sheet, this repository, your home), use the "
    "network, read other processes' details in /proc and leave processes running. Install "
    "bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) to isolate them."
)


@dataclass(frozen=True)
class Limits:
    """What one notebook may use."""

    cell_timeout: int = 120  # seconds per cell
    notebook_timeout: int = 600  # seconds for the whole notebook
    memory_bytes: int = 4 * GIB  # all its processes together, when a control group exists
    processes: int = 256  # processes and threads
    file_bytes: int = GIB // 2  # one file
    work_bytes: int = GIB  # the work folder, with bubblewrap
    tmp_bytes: int = GIB // 2  # /tmp, with bubblewrap
    report_bytes: int = 8 * 2**20  # the runner's report (an honest one is a few kB)
    answer_bytes: int = 4 * 2**20  # one exercise's answers

    @property
    def address_space_bytes(self) -> int:
        # torch alone reserves about 3 GiB of address space it never touches.
        return self.memory_bytes + 4 * GIB


@dataclass(frozen=True)
class SandboxRun:
    report: bytes  # the runner's stdout, at most report_bytes of it
    problem: str | None  # why the run is incomplete, if it is
    errors: str  # the end of the runner's stderr


def isolation_problem() -> str | None:
    """None if bubblewrap runs here, else a loud line saying what is not isolated."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return NOT_ISOLATED.format(reason="bubblewrap (bwrap) is not installed")
    probe = [bwrap, *namespace_options(), "--ro-bind", "/", "/", "--proc", "/proc", "true"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return NOT_ISOLATED.format(reason=f"bubblewrap does not run: {error}")
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return NOT_ISOLATED.format(reason=f"bubblewrap does not run here ({reason})")
    return None


def namespace_options() -> list[str]:
    return [
        "--unshare-all",  # network, PID, IPC, UTS and cgroup namespaces
        "--unshare-user",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        # The runner is PID 1: no bubblewrap process inside holding the report's pipe for
        # the notebook to open through /proc/1/fd, and a PID 1 the kernel cannot kill.
        "--as-pid-1",
    ]


def readonly_binds() -> list[str]:
    """The host paths the sandbox sees, read-only, at the same place."""
    options: list[str] = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            options += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            options += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        options += ["--ro-bind-try", path, path]
    package = str(Path(ptqlib.__file__).resolve().parent)
    python_trees = dict.fromkeys([sys.base_prefix, sys.prefix, package])  # in order, no repeats
    for path in python_trees:
        if not path.startswith("/usr/"):
            options += ["--ro-bind", path, path]
    data = os.environ.get("PTQLIB_DATA_DIR") or str(REPO_ROOT / "data")
    options += ["--ro-bind-try", data, data]
    return options


def environment(grading: Path, work: Path) -> dict[str, str]:
    """The only variables the notebook sees: nothing of the grader's own (secrets,
    tokens), except the data folder and the thread count."""
    package_root = str(Path(ptqlib.__file__).resolve().parents[1])
    variables = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work),
        "USER": "student",
        "LANG": "C.UTF-8",
        "PYTHONPATH": package_root,
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        OUTPUT_DIR_ENV: str(work),
        GRADING_DIR_ENV: str(grading),
    }
    if os.environ.get("PTQLIB_DATA_DIR"):
        variables["PTQLIB_DATA_DIR"] = os.environ["PTQLIB_DATA_DIR"]
    return variables


def bwrap_options(host: Path, limits: Limits) -> list[str]:
    """bubblewrap's options for the runner's sandbox; the grading folder is /grading."""
    grading = SANDBOX_GRADING
    # The private /tmp first: a repository or virtual environment under /tmp is then bound
    # on top of it (mounted after, it would hide them: "execvp .../python: No such file").
    command = [*namespace_options(), "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    command += readonly_binds()
    command += ["--proc", "/proc", "--dev", "/dev"]
    # bubblewrap's /dev is a tmpfs of half the RAM: /dev/shm gets the same cap as /tmp.
    command += ["--size", str(limits.tmp_bytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    command += ["--ro-bind", str(host / "in"), str(grading / "in")]
    command += ["--ro-bind-try", str(artifacts_dir()), str(grading / "cache")]
    command += ["--size", str(limits.work_bytes), "--tmpfs", str(grading / "work")]
    command += ["--remount-ro", "/"]  # the root's own tmpfs: no unbounded writes there
    command += ["--chdir", str(grading / "work"), "--clearenv"]
    for name, value in environment(grading, grading / "work").items():
        command += ["--setenv", name, value]
    return command


def runner_command(grading: Path) -> list[str]:
    """The runner, run as a file (``-P``: without its folder on sys.path): ``-m`` would
    import the ptqlib package first, and with it torch, which the runner does not need."""
    return [sys.executable, "-P", str(Path(__file__).with_name("runner.py")), str(grading)]


def prepare(host: Path, notebook: dict, inputs: str, limits: Limits, sandboxed: bool) -> None:
    """Write the runner's input files into ``host/in``."""
    (host / "in").mkdir()
    (host / "work").mkdir()
    cache = SANDBOX_GRADING / "cache" if sandboxed else artifacts_dir()
    settings = {
        "cache": str(cache),
        "cell_timeout": limits.cell_timeout,
        "notebook_timeout": limits.notebook_timeout,
        "answer_bytes": limits.answer_bytes,
        "limits": {
            "address_space_bytes": limits.address_space_bytes,
            "file_bytes": limits.file_bytes,
            "processes": limits.processes,
        },
    }
    (host / "in" / "notebook.json").write_text(json.dumps({**notebook, **settings}), "utf-8")
    (host / "in" / "inputs.json").write_text(inputs, "utf-8")


def run_notebook(
    host: Path, notebook: dict, inputs: str, limits: Limits, sandboxed: bool
) -> SandboxRun:
    """Run the prepared ``notebook`` (its cells and what each collects) with ``inputs`` in a
    sandbox whose files live in the empty folder ``host``."""
    prepare(host, notebook, inputs, limits, sandboxed)
    with open(host / "bwrap-arguments", "wb+") as arguments:
        if sandboxed:
            # bubblewrap reads its arguments from a file: as its command line they would be
            # in /proc/1/cmdline inside the sandbox, host paths and all.
            options = bwrap_options(host, limits)
            arguments.write(b"".join(option.encode() + b"\0" for option in options))
            arguments.seek(0)
            bwrap = [shutil.which("bwrap") or "bwrap", "--args", str(arguments.fileno())]
            command, variables, cwd = [*bwrap, *runner_command(SANDBOX_GRADING)], None, None
        else:
            command, variables = runner_command(host), environment(host, host / "work")
            cwd = host / "work"
        group = ControlGroup.create(limits)
        if group is not None:
            command = group.entry_command(command)
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=variables if variables is not None else {"PATH": "/usr/bin:/bin"},
            cwd=cwd,
            pass_fds=(arguments.fileno(),) if sandboxed else (),
            start_new_session=True,  # its own process group, killed below
        )
    report, errors = Capture(process.stdout, limits.report_bytes), Capture(process.stderr, 4096)
    problem = None
    try:
        # The runner stops the notebook at its own time limit; this is the backstop.
        process.wait(timeout=limits.notebook_timeout + 60)
    except subprocess.TimeoutExpired:
        problem = f"the notebook ran longer than {limits.notebook_timeout} s"
    finally:
        kill_everything(process, group, None if sandboxed else host)
    report.join()
    errors.join()
    if problem is None and report.overflowed:
        problem = f"its report was larger than {limits.report_bytes} bytes"
    elif problem is None and process.returncode != 0:
        problem = f"the grading runner stopped with exit status {process.returncode}"
    return SandboxRun(report.data(), problem, errors.data().decode("utf-8", "replace"))


def kill_everything(
    process: subprocess.Popen, group: ControlGroup | None, host: Path | None
) -> None:
    """SIGKILL the runner's process group (with bubblewrap, its PID namespace dies with it),
    every process in its control group, then remove the group; without bubblewrap also every
    process whose environment names this grading folder (the kernel has a session of its
    own, and a daemon may have left its group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    if group is not None:
        group.kill_and_remove()
    if host is not None:
        marker = f"{GRADING_DIR_ENV}={host}\0".encode()
        for _ in range(20):  # until no such process is left (a dying parent may fork)
            if not _kill_processes_with(marker):
                break


def _kill_processes_with(marker: bytes) -> int:
    """SIGKILL every process whose initial environment contains ``marker``; how many."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (OSError, ValueError):  # gone, or not ours
            continue
    return killed


class Capture:
    """Read a pipe in a thread, keeping at most ``limit`` bytes (the rest is read and
    dropped, so the writer never blocks on a full pipe)."""

    def __init__(self, pipe, limit: int) -> None:
        self._chunks: list[bytes] = []
        self._kept = 0
        self.limit = limit
        self.overflowed = False
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        with pipe:
            for chunk in iter(lambda: pipe.read(65536), b""):
                room = self.limit - self._kept
                if len(chunk) > room:
                    self.overflowed = True
                chunk = chunk[:room]
                self._chunks.append(chunk)
                self._kept += len(chunk)

    def join(self) -> None:
        self._thread.join()

    def data(self) -> bytes:
        return b"".join(self._chunks)


@dataclass
class ControlGroup:
    """A control group for one sandbox: cgroup v1 (pids and memory hierarchies) or v2, if
    this process may create one (root, or a delegated subtree); None otherwise."""

    folders: list[Path]

    @classmethod
    def create(cls, limits: Limits) -> ControlGroup | None:
        # A name of its own: a group left by the previous notebook of this thread (not yet
        # empty when it was to be removed) must not leave the next one without limits.
        name = f"ptqlib-grade-{os.getpid()}-{secrets.token_hex(8)}"
        own = _own_cgroups()
        if "" in own:  # cgroup v2
            base = Path("/sys/fs/cgroup") / own[""].lstrip("/")
            settings = {"pids.max": limits.processes, "memory.max": limits.memory_bytes}
            return cls._make([(base / name, settings)])
        if "pids" in own and "memory" in own:  # cgroup v1
            pids = Path("/sys/fs/cgroup/pids") / own["pids"].lstrip("/") / name
            memory = Path("/sys/fs/cgroup/memory") / own["memory"].lstrip("/") / name
            return cls._make(
                [
                    (pids, {"pids.max": limits.processes}),
                    (memory, {"memory.limit_in_bytes": limits.memory_bytes}),
                ]
            )
        return None

    @classmethod
    def _make(cls, specification: list[tuple[Path, dict[str, int]]]) -> ControlGroup | None:
        group = cls([])
        try:
            for folder, settings in specification:
                _remove_stale_groups(folder.parent)
                folder.mkdir()
                group.folders.append(folder)
                for setting, value in settings.items():
                    (folder / setting).write_text(str(value))
        except OSError:
            group.kill_and_remove()
            return None
        return group

    def entry_command(self, command: list[str]) -> list[str]:
        """``command`` run by a shell that first moves itself into the group: everything it
        starts is in the group from its first instruction."""
        join = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 97; shift; done; '
        script = join + 'shift; exec "$@"'
        procs = [str(folder / "cgroup.procs") for folder in self.folders]
        return ["/bin/sh", "-c", script, "sh", *procs, "--", *command]

    def kill_and_remove(self) -> None:
        for folder in self.folders:
            for _ in range(50):  # processes may still be forking: kill until empty
                try:
                    pids = (folder / "cgroup.procs").read_text().split()
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError, ValueError):
                        pass
            for attempt in range(40):  # the killed processes leave it as they are reaped
                try:
                    folder.rmdir()
                    break
                except OSError:
                    threading.Event().wait(min(0.05 * 2**attempt, 1.0))


def _remove_stale_groups(parent: Path) -> None:
    """Remove the empty groups of graders that are gone (``ptqlib-grade-<their pid>-...``):
    one that could not be removed at the time, or left by a grader that was killed."""
    for folder in parent.glob("ptqlib-grade-*"):
        owner = folder.name.split("-")[2]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                folder.rmdir()
            except OSError:  # still busy, or not empty: next time
                pass


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per controller ("" for cgroup v2), where the hierarchy is
    mounted writable at /sys/fs/cgroup."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").is_file():
            if os.access(Path("/sys/fs/cgroup") / path.lstrip("/"), os.W_OK):
                found[""] = path
        for controller in controllers.split(","):
            if controller in ("pids", "memory"):
                folder = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
                if os.access(folder, os.W_OK):
                    found[controller] = path
    return found
