"""Grade a class: ``python -m ptqlib grade SUBMISSIONS/`` runs every handed-in notebook and
records, per exercise, what its checker said.

Each ``.ipynb`` under ``SUBMISSIONS/`` is one student's notebook: ``alice.ipynb`` belongs to
the student ``alice``; ``alice/02_quantization_math.ipynb`` (one subfolder per student) too.
A notebook is read, never written: it runs in a fresh kernel (the ``python3`` kernel of this
environment) whose working directory and ``PTQLIB_OUTPUT_DIR`` are a temporary folder, cell by
cell, in order, each cell with a time limit. A cell that raises does not stop the notebook (a
student who got exercise 1 wrong is still graded on exercise 2); a cell that runs past the
limit, or a kernel that dies, stops that notebook and grading goes on with the next one.

The exercises are the cells tagged ``checker`` (see :mod:`ptqlib.classroom.exercises`, the
definition ``make student`` uses too). Each gets one outcome, from its checker cell's run:

- ``passed``: the checker printed PASS;
- ``failed``: the checker raised AssertionError; the detail is its first line and its hint;
- ``not attempted``: the checker printed NOT ATTEMPTED (the skeleton still raises
  NotImplementedError);
- ``answered``: the checker ran and gave no verdict (an open question such as notebook 03's
  choice of observers): read its output;
- ``errored``: the checker raised anything else, or never ran; the detail names the cell that
  raised before it (cell numbers count every cell from 1, markdown included) and the error's
  last line.

The checker cells that run are the hand-out's: when the folder of handed-out notebooks
(``--handout``, default the repository's ``notebooks/``) has a notebook of the same file name,
its checker cells replace the submission's, one for one, so an edited checker
(``print("PASS")``) does not grade itself.

Problems of the whole notebook get a row with the exercise ``(notebook)``: ``not a notebook``
(the file is not notebook JSON), ``cell error`` (a cell outside the checkers raised),
``timed out``, ``kernel died``, ``checker edited`` (the hand-out's checker ran instead) and
``checkers changed`` (not as many checker cells as the hand-out: the notebook's own ran).

Grading executes the students' code: run it in a container or a throwaway account.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ptqlib.classroom.exercises import CHECKER_TAG, Exercise, find_exercises, tags
from ptqlib.errors import InputError
from ptqlib.paths import OUTPUT_DIR_ENV, REPO_ROOT, artifacts_dir

# The outcome of an exercise.
PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"
ANSWERED = "answered"
ERRORED = "errored"
# Problems of a whole notebook.
NOT_A_NOTEBOOK = "not a notebook"
CELL_ERROR = "cell error"
TIMED_OUT = "timed out"
KERNEL_DIED = "kernel died"
CHECKER_EDITED = "checker edited"
CHECKERS_CHANGED = "checkers changed"
WHOLE_NOTEBOOK = "(notebook)"  # the exercise column of a row about the whole notebook
DEFAULT_TIMEOUT_S = 120
KERNEL_NAME = "python3"
# The notebooks make student hands out: their checker cells are the ones that grade.
DEFAULT_HANDOUT = REPO_ROOT / "notebooks"


@dataclass(frozen=True)
class Grade:
    """One row of the grade sheet."""

    student: str
    notebook: str  # the file's path inside the student's folder (or its name)
    exercise: str  # the checker(s) the exercise calls, or "(notebook)"
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class CellRun:
    """How one code cell ran: its printed text and, if it raised, the error's last line."""

    index: int  # 0-based position in the notebook
    stdout: str
    error: str | None  # "ZeroDivisionError: division by zero"
    error_name: str | None  # "ZeroDivisionError"
    error_message: str  # the exception's whole message (a checker's hint is in it)


@dataclass(frozen=True)
class NotebookRun:
    """The cells that ran, in order, and why the run stopped early (None: it did not)."""

    cells: dict[int, CellRun]
    stopped: str | None  # TIMED_OUT or KERNEL_DIED
    stopped_at: int | None  # the cell that timed out or killed the kernel


def find_submissions(folder: Path) -> list[tuple[str, str, Path]]:
    """(student, notebook, path) of every ``.ipynb`` under ``folder``, sorted.

    A notebook directly in ``folder`` is its own student (the file's stem); one further down
    belongs to the subfolder it is in. Jupyter's ``.ipynb_checkpoints`` copies are skipped."""
    if not folder.is_dir():
        raise InputError(f"SUBMISSIONS: {str(folder)!r} is not a folder of handed-in notebooks")
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        relative = path.relative_to(folder)
        if ".ipynb_checkpoints" in relative.parts or not path.is_file():
            continue
        if len(relative.parts) == 1:
            found.append((path.stem, path.name, path))
        else:
            found.append((relative.parts[0], Path(*relative.parts[1:]).as_posix(), path))
    if not found:
        raise InputError(f"SUBMISSIONS: no .ipynb files under {str(folder)!r}")
    return found


def read_submission(path: Path) -> nbformat.NotebookNode:
    """The notebook in ``path``; InputError naming the problem if it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except ValueError as error:  # invalid JSON or not UTF-8 (UnicodeDecodeError)
        raise InputError(f"not JSON: {error}") from None
    if not isinstance(raw, dict) or raw.get("nbformat") != 4:
        raise InputError("JSON, but not a notebook in Jupyter's format 4 (nbformat: 4)")
    cells = raw.get("cells")
    # nbformat's validator expects a list of objects; it checks their fields.
    if not isinstance(cells, list) or not all(isinstance(cell, dict) for cell in cells):
        raise InputError("not a valid notebook: 'cells' is not a list of cells")
    try:
        nbformat.validate(raw, version=4)
    except nbformat.ValidationError as error:
        raise InputError(f"not a valid notebook: {str(error).splitlines()[0]}") from None
    return nbformat.reads(text, as_version=4)  # valid now; joins each source's lines


def kernel_environment(workdir: Path) -> dict[str, str]:
    """This process's environment, with ptqlib's outputs sent into ``workdir``."""
    environment = dict(os.environ)
    environment[OUTPUT_DIR_ENV] = str(workdir)
    return environment


def prepare_workdir(workdir: Path) -> None:
    """Copy the grader's cached checkpoints (``artifacts/``) into ``workdir``, so notebooks
    that load the cached baseline do not each train it again. A copy, not a link: a student's
    notebook cannot change the cache the next student's notebook reads."""
    cached = artifacts_dir()
    if cached.is_dir():
        shutil.copytree(cached, workdir / "artifacts")


def error_line(name: str, message: str) -> str:
    """The last line of a traceback, ``Name: first line of the message``."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{name}: {first}" if first else name


def cell_run(index: int, cell: nbformat.NotebookNode) -> CellRun:
    """What an executed cell printed on stdout and the error it raised, from its outputs."""
    stdout, error, name, message = [], None, None, ""
    for output in cell.outputs:
        if output.output_type == "stream" and output.name == "stdout":
            stdout.append(output.text)
        elif output.output_type == "error":
            name, message = output.ename, output.evalue
            error = error_line(name, message)
    return CellRun(index, "".join(stdout), error, name, message)


def run_notebook(notebook: nbformat.NotebookNode, timeout: int) -> NotebookRun:
    """Execute the code cells of a copy of ``notebook`` in order, in a fresh kernel, each
    with ``timeout`` seconds; go on past cells that raise, stop at a timeout or a dead
    kernel."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    notebook = nbformat.from_dict(notebook)  # the executed outputs land in this copy
    cells: dict[int, CellRun] = {}
    with tempfile.TemporaryDirectory(prefix="ptqlib-grade-") as folder:
        workdir = Path(folder)
        prepare_workdir(workdir)
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name=KERNEL_NAME,
            allow_errors=True,  # record the error and run the next cell
            resources={"metadata": {"path": str(workdir)}},  # the kernel's working directory
        )
        with client.setup_kernel(env=kernel_environment(workdir)):
            for index, cell in enumerate(notebook.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                try:
                    client.execute_cell(cell, index)
                except CellTimeoutError:
                    return NotebookRun(cells, TIMED_OUT, index)
                except DeadKernelError:
                    return NotebookRun(cells, KERNEL_DIED, index)
                cells[index] = cell_run(index, cell)
    return NotebookRun(cells, None, None)


def failure_detail(message: str) -> str:
    """A checker's AssertionError message in one line: which case failed, and the hint."""
    # " ".join(split()): the checkers align their lines with runs of spaces ("hint:        ...")
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()]
    if not lines:
        return "AssertionError"
    hints = [line for line in lines if line.startswith("hint:")]
    return "; ".join([lines[0], *hints[:1]])


def last_error_before(run: NotebookRun, index: int) -> CellRun | None:
    """The closest cell above ``index`` that raised, if any."""
    raised = [cell for cell in run.cells.values() if cell.index < index and cell.error]
    return raised[-1] if raised else None


def grade_exercise(exercise: Exercise, run: NotebookRun) -> tuple[str, str]:
    """(outcome, detail) of one exercise from the run of its checker cell."""
    checker = run.cells.get(exercise.checker)
    if checker is None and run.stopped is None:
        return ERRORED, f"cell {exercise.checker + 1}: the checker cell is empty"
    if checker is None:  # the run stopped at or before the checker
        return ERRORED, f"not run: cell {run.stopped_at + 1} {run.stopped}"
    if checker.error_name == "AssertionError":
        return FAILED, failure_detail(checker.error_message)
    if checker.error:
        earlier = last_error_before(run, exercise.checker)
        culprit = earlier if earlier is not None else checker
        return ERRORED, f"cell {culprit.index + 1}: {culprit.error}"
    if "NOT ATTEMPTED" in checker.stdout:
        return NOT_ATTEMPTED, ""
    if "PASS" in checker.stdout:
        return PASSED, ""
    printed = checker.stdout.strip().splitlines()
    return ANSWERED, printed[-1] if printed else "the checker printed nothing"


def restore_checkers(
    notebook: nbformat.NotebookNode, handout: nbformat.NotebookNode
) -> tuple[list[int], str | None]:
    """Put the hand-out's checker cells back into ``notebook`` (in place), so that a checker
    a student edited (``print("PASS")``) is not what grades them.

    Returns the indices of the cells put back, and a problem when the two notebooks do not
    have the same number of checker cells (then nothing is changed: the notebook's own
    checkers run)."""
    theirs = [index for index, cell in enumerate(notebook.cells) if CHECKER_TAG in tags(cell)]
    ours = [cell.source for cell in handout.cells if CHECKER_TAG in tags(cell)]
    if len(theirs) != len(ours):
        return [], f"the hand-out has {len(ours)} checker cells, this notebook {len(theirs)}"
    edited = []
    for index, source in zip(theirs, ours, strict=True):
        if notebook.cells[index].source.strip() != source.strip():
            notebook.cells[index].source = source
            edited.append(index)
    return edited, None


def grade_notebook(
    student: str, name: str, path: Path, timeout: int, handout: Path | None = None
) -> list[Grade]:
    """The grade sheet rows of one handed-in notebook: one per exercise, then one per problem
    of the whole notebook. Its checkers are those of the notebook with the same file name in
    ``handout``, when there is one."""
    try:
        notebook = read_submission(path)
    except InputError as error:
        return [Grade(student, name, WHOLE_NOTEBOOK, NOT_A_NOTEBOOK, str(error))]
    problems: list[tuple[str, str]] = []  # (outcome, detail) of the whole notebook
    reference = handout / Path(name).name if handout is not None else None
    if reference is not None and reference.is_file():
        try:
            edited, mismatch = restore_checkers(notebook, read_submission(reference))
        except InputError as error:
            raise InputError(f"--handout: {str(reference)!r}: {error}") from None
        for index in edited:
            problems.append((CHECKER_EDITED, f"cell {index + 1}: the hand-out's checker ran"))
        if mismatch is not None:
            problems.append((CHECKERS_CHANGED, f"{mismatch}; its own checkers ran"))
    run = run_notebook(notebook, timeout)
    for cell in run.cells.values():
        if cell.error and CHECKER_TAG not in tags(notebook.cells[cell.index]):
            problems.append((CELL_ERROR, f"cell {cell.index + 1}: {cell.error}"))
    if run.stopped == TIMED_OUT:
        detail = f"cell {run.stopped_at + 1} ran longer than {timeout} s; later cells not run"
        problems.append((TIMED_OUT, detail))
    elif run.stopped == KERNEL_DIED:
        detail = f"the kernel died in cell {run.stopped_at + 1}; later cells not run"
        problems.append((KERNEL_DIED, detail))
    exercises = [
        Grade(student, name, exercise.name, *grade_exercise(exercise, run))
        for exercise in find_exercises(notebook)
    ]
    return exercises + [Grade(student, name, WHOLE_NOTEBOOK, *problem) for problem in problems]


def grade_folder(
    folder: Path,
    timeout: int = DEFAULT_TIMEOUT_S,
    handout: Path | None = DEFAULT_HANDOUT,
    progress: bool = False,
) -> Iterator[Grade]:
    """Grade every notebook under ``folder``, one after the other, row by row; ``handout``
    is the folder of the notebooks handed out (None: trust the submitted checker cells)."""
    if handout is not None and not handout.is_dir():
        raise InputError(f"--handout: {str(handout)!r} is not a folder of notebooks")
    for student, name, path in find_submissions(folder):
        if progress:
            print(f"grading {student}: {name}", file=sys.stderr, flush=True)
        yield from grade_notebook(student, name, path, timeout, handout)
