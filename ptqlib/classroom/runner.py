"""Run one prepared notebook in a fresh kernel, inside the grading sandbox, and report how
each cell ran and the answers its checker cells collected.

    python -P ptqlib/classroom/runner.py GRADING_DIR

(Run as a file: it imports nothing of ptqlib, so it starts without torch.)

``GRADING_DIR/in/notebook.json`` (written by the grader) holds the code cells to run, in
order, the exercises each checker cell collects, and the limits. The runner first limits
itself (its kernel inherits the limits: address space, file size, processes, no core
files), makes itself undumpable (so the kernel, running as the same user, can neither
trace it nor open its file descriptors through ``/proc``), copies the cached checkpoints
into the work folder, then runs the cells one by one with ``jupyter_client``.

It reads only the shell channel's ``execute_reply`` (did the cell finish, did it raise what)
and never subscribes to the kernel's output: whatever a notebook prints is dropped by the
kernel's publisher, so 300 MB of output cost nothing here. Right after a checker cell it
reads the answers file that cell wrote; a later cell that rewrites the file changes nothing.
On stdout, at the end, one JSON object::

    {"cells": {"3": "ZeroDivisionError: division by zero", ...},  # the cells that raised
     "ran": [0, 1, 3, ...], "stopped": null | "timed out" | "notebook timed out" | "kernel died",
     "stopped_at": null | index, "answers": {"qparams": "<the collector's JSON>", ...}}

Everything in the sandbox, this runner included, is the student's: the grader reads this
report as untrusted data.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GRADING_DIR_ENV = "PTQLIB_GRADING_DIR"
TIMED_OUT = "timed out"  # a cell ran past the cell time limit
NOTEBOOK_TIMED_OUT = "notebook timed out"  # the notebook ran past its time limit
KERNEL_DIED = "kernel died"
KERNEL_STARTUP_S = 120
ERROR_CHARS = 300
PR_SET_DUMPABLE = 4


def answers_path(exercise_id: str) -> Path:
    """Where the collector in the kernel writes an exercise's answers."""
    return Path(os.environ[GRADING_DIR_ENV]) / "work" / "answers" / f"{exercise_id}.json"


def protect_from_the_kernel() -> None:
    """PR_SET_DUMPABLE 0: processes of the same user (the kernel) cannot ptrace this one or
    open its /proc entries (file descriptors, memory, environment)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


def apply_limits(limits: dict[str, int]) -> None:
    """Hard and soft rlimits for this process and everything it starts."""
    for name, value in (
        ("RLIMIT_AS", limits["address_space_bytes"]),
        ("RLIMIT_FSIZE", limits["file_bytes"]),
        ("RLIMIT_NPROC", limits["processes"]),
        ("RLIMIT_CORE", 0),
    ):
        kind = getattr(resource, name, None)
        if kind is not None:
            try:
                resource.setrlimit(kind, (value, value))
            except (ValueError, OSError):  # above the current hard limit: keep that one
                pass


def copy_cache(cache: Path, work: Path) -> None:
    """A private copy of the grader's cached checkpoints in ``work/artifacts``: no notebook
    can change the cache another reads. Best effort: a full disk leaves the rest uncopied."""
    if cache.is_dir():
        shutil.copytree(cache, work / "artifacts", dirs_exist_ok=True, symlinks=False)


def error_text(content: dict[str, Any]) -> str:
    """``Name: first line of the message`` from an execute_reply's content (any types)."""
    name = str(content.get("ename", "Error"))[:100]
    message = str(content.get("evalue", "")).strip()
    first = message.splitlines()[0][:ERROR_CHARS] if message else ""
    return f"{name}: {first}" if first else name


def reap_orphans() -> None:
    """Collect every child that has exited. In the sandbox the runner is PID 1, so every
    process the notebook orphans becomes its child; unreaped, they would stay zombies (and
    count against the process limit) until the sandbox ends."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children left
            return
        if pid == 0:  # children, none of them exited
            return


def wait_for_reply(client: Any, manager: Any, msg_id: str, deadline: float) -> dict | str:
    """The content of the execute_reply to ``msg_id``, or TIMED_OUT / KERNEL_DIED."""
    while True:
        reap_orphans()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return TIMED_OUT
        try:
            message = client.get_shell_msg(timeout=min(remaining, 1.0))
        except queue.Empty:
            if not manager.is_alive():
                return KERNEL_DIED
            continue
        except Exception:  # noqa: BLE001 - a malformed message from the kernel: skip it
            continue
        parent = message.get("parent_header") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(parent, dict) and parent.get("msg_id") == msg_id:
            return content if isinstance(content, dict) else {"status": "error"}


def start_kernel(work: Path) -> tuple[Any, Any]:
    """A python3 kernel of this environment in ``work``: its stdout and stderr to /dev/null,
    and only the shell channel connected."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = manager.client()
    client.allow_stdin = False  # input() raises instead of waiting forever
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    deadline = time.monotonic() + KERNEL_STARTUP_S
    reply = wait_for_reply(client, manager, client.kernel_info(), deadline)
    if not isinstance(reply, dict):
        raise RuntimeError(f"the kernel did not start: {reply}")
    return manager, client


def run_cells(notebook: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run every cell of ``notebook`` (see the module docstring); the report as a dict."""
    report: dict[str, Any] = {"cells": {}, "ran": [], "stopped": None, "stopped_at": None}
    answers: dict[str, str] = {}
    report["answers"] = answers
    manager, client = start_kernel(work)
    notebook_deadline = time.monotonic() + notebook["notebook_timeout"]
    try:
        for cell in notebook["cells"]:
            for exercise_id in cell["collects"]:
                answers_path(exercise_id).unlink(missing_ok=True)
            cell_deadline = time.monotonic() + notebook["cell_timeout"]
            deadline = min(cell_deadline, notebook_deadline)
            msg_id = client.execute(cell["source"], store_history=False, stop_on_error=False)
            reply = wait_for_reply(client, manager, msg_id, deadline)
            if reply == TIMED_OUT and notebook_deadline < cell_deadline:
                reply = NOTEBOOK_TIMED_OUT
            if not isinstance(reply, dict):
                report["stopped"], report["stopped_at"] = reply, cell["index"]
                break
            report["ran"].append(cell["index"])
            if reply.get("status") == "error":
                report["cells"][str(cell["index"])] = error_text(reply)
            for exercise_id in cell["collects"]:
                path = answers_path(exercise_id)
                if path.is_file():  # not a device or a pipe: at most answer_bytes of it
                    with open(path, "rb") as file:
                        text = file.read(notebook["answer_bytes"] + 1)
                    if len(text) <= notebook["answer_bytes"]:
                        answers[exercise_id] = text.decode("utf-8", errors="replace")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        reap_orphans()
    return report


def main(argv: list[str]) -> int:
    grading = Path(argv[0])
    protect_from_the_kernel()
    notebook = json.loads((grading / "in" / "notebook.json").read_text("utf-8"))
    apply_limits(notebook["limits"])
    work = grading / "work"
    try:
        copy_cache(Path(notebook["cache"]), work)
    except OSError as error:
        print(f"runner: the cache was not copied: {error}", file=sys.stderr)
    report = run_cells(notebook, work)
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
