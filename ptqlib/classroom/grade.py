"""Grade a class: ``python -m ptqlib grade SUBMISSIONS/`` runs every handed-in notebook in a
sandbox and decides, per exercise, from the answers alone, in this process.

Every file under ``SUBMISSIONS/`` is one student's hand-in: ``alice.ipynb`` belongs to
``alice``; ``alice/02_quantization_math.ipynb`` (one subfolder per student) too. Hidden
files and folders (``.ipynb_checkpoints``) are skipped; anything else that is not a notebook
is a row that says so. A submission is read, never written.

For each notebook (see :mod:`ptqlib.classroom.submission`): its exercises are found by the
checkers its cells call, whatever its file name; the grader draws each exercise's cases
afresh (the known-answer cases and random ones, :mod:`ptqlib.classroom.checkers.exercise`),
keeps their answers, and runs the notebook in a sandbox (:mod:`ptqlib.classroom.sandbox`)
with only the cases' inputs; in place of each checker cell the student's function is
called on them and its results come back as plain data. The outcome of an exercise:

- ``passed``: every result equals the grader's answer (the exercise's own comparison);
- ``failed``: a result differs, is not plain data, or the function raised; the detail names
  the case and its hint;
- ``not attempted``: the function still raises NotImplementedError;
- ``answered``: an open question (no right answer) whose function returned a choice, shown
  in the detail; never ``passed``;
- ``errored``: no answers: the function is not defined (the detail names the cell that
  raised before defining it), or its checker cell never ran.

A passed or failed exercise whose function calls ptqlib's own answer (or the checkers' code,
or hides what it runs) says so in its detail: ``flag: uses ...`` (:mod:`ptqlib.classroom.
flags`). Problems of the whole notebook get a row with the exercise ``(notebook)``: ``not a
notebook``, ``no exercises``, ``wrong notebook``, ``checker edited``, ``checker missing``,
``suspicious`` (code that only makes sense against a grader), ``cell error`` (a cell that
raised; cell numbers count every cell from 1, markdown included), ``timed out``,
``kernel died`` and ``not run`` (the sandbox itself failed, or the grader: a bug).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer
from ptqlib.classroom.checkers.exercise import Exercise, OpenQuestion
from ptqlib.classroom.flags import exercise_flags, notebook_flags
from ptqlib.classroom.plain import NotPlainData, decode, encode
from ptqlib.classroom.runner import KERNEL_DIED, NOTEBOOK_TIMED_OUT, TIMED_OUT
from ptqlib.classroom.sandbox import Limits, SandboxRun, isolation_problem, run_notebook
from ptqlib.classroom.submission import (
    Cell,
    Match,
    defined_names,
    match_notebook,
    read_cells,
    runnable_cells,
)
from ptqlib.errors import InputError

# The outcome of an exercise.
PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"
ANSWERED = "answered"
ERRORED = "errored"
# Problems of a whole notebook (and those of ptqlib.classroom.submission).
NOT_A_NOTEBOOK = "not a notebook"
NO_EXERCISES = "no exercises"
SUSPICIOUS = "suspicious"
CELL_ERROR = "cell error"
NOT_RUN = "not run"
WHOLE_NOTEBOOK = "(notebook)"  # the exercise column of a row about the whole notebook
DETAIL_CHARS = 400
STOPS = (None, TIMED_OUT, NOTEBOOK_TIMED_OUT, KERNEL_DIED)
MAX_FOLDER_DEPTH = 32  # below a hand-in's folder; deeper folders are rows, not read
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True)
class Grade:
    """One row of the grade sheet."""

    student: str
    notebook: str  # the file's path inside the student's folder (or its name)
    exercise: str  # the exercise's id, or "(notebook)"
    outcome: str
    detail: str = ""


@dataclass
class NotebookRun:
    """What the sandbox reported: cells that raised, how far it got, the answers."""

    errors: dict[int, str] = field(default_factory=dict)
    ran: set[int] = field(default_factory=set)
    stopped: str | None = None
    stopped_at: int | None = None
    answers: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # the run gave no usable report


def clean(text: str) -> str:
    """One line without control characters (terminal escapes), at most DETAIL_CHARS, that
    UTF-8 can write: a file name in another encoding, or a kernel's message with a lone
    surrogate (``"\\ud800"``), keeps a ``\\udce9`` escape instead of stopping the CSV."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    text = CONTROL.sub(" ", text).strip()
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 3] + "..."


def find_submissions(folder: Path) -> list[tuple[str, str, Path]]:
    """(student, file, path) of every file under ``folder``, sorted; hidden ones skipped."""
    if not folder.is_dir():
        raise InputError(f"SUBMISSIONS: {str(folder)!r} is not a folder of handed-in notebooks")
    found = []
    for root, folders, files in os.walk(folder):  # does not follow links to folders
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        if len(Path(root).relative_to(folder).parts) >= MAX_FOLDER_DEPTH:
            # os.walk recurses: a hand-in of ~1,000 nested folders stopped the whole run.
            files, folders[:] = files + folders, []  # each a row: "not a regular file"
        for name in sorted(files):
            path = Path(root) / name
            relative = path.relative_to(folder)
            if name.startswith("."):
                continue
            if len(relative.parts) == 1:
                found.append((path.stem, name, path))
            else:
                found.append((relative.parts[0], Path(*relative.parts[1:]).as_posix(), path))
    if not found:
        raise InputError(f"SUBMISSIONS: no files under {str(folder)!r}")
    return found


def read_report(run: SandboxRun) -> NotebookRun:
    """The runner's report, checked field by field: it comes from the sandbox."""
    try:
        data = json.loads(run.report.decode("utf-8"))
        report = NotebookRun(
            errors={int(index): clean(text) for index, text in data["cells"].items()},
            ran={int(index) for index in data["ran"]},
            stopped=data["stopped"]
            if data["stopped"] in (None, TIMED_OUT, NOTEBOOK_TIMED_OUT, KERNEL_DIED)
            else None,
            stopped_at=None if data["stopped_at"] is None else int(data["stopped_at"]),
            answers={str(key): str(text) for key, text in data["answers"].items()},
        )
    # OverflowError: int() of a float the JSON wrote as 1e400 (infinity)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError):
        last = (run.errors.strip().splitlines() or ["no message"])[-1]
        problem = run.problem or "the grading runner gave no report"
        return NotebookRun(problem=clean(f"{problem} ({last})"))
    report.problem = run.problem
    return report


def grade_notebook(
    student: str, name: str, path: Path, limits: Limits, sandboxed: bool
) -> list[Grade]:
    """The grade sheet rows of one handed-in file: one per exercise, then one per problem of
    the whole notebook."""

    def row(exercise: str, outcome: str, detail: str = "") -> Grade:
        return Grade(clean(student), clean(name), exercise, outcome, clean(detail))

    try:
        if path.is_symlink() or not stat.S_ISREG(path.lstat().st_mode):
            raise InputError("not a regular file (a link, a folder, a device...)")
        cells = read_cells(path)
    except (InputError, OSError) as error:
        return [row(WHOLE_NOTEBOOK, NOT_A_NOTEBOOK, str(error))]
    match = match_notebook(cells, Path(name).name)
    if match.notebook is None:
        return [row(WHOLE_NOTEBOOK, NO_EXERCISES, "it calls no checker of the series")]
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    cases = {
        exercise.id: exercise.cases() + exercise.draw(generator)
        for exercise in match.exercises
        if isinstance(exercise, Exercise)
    }
    inputs = {
        key: [[value for _, value in case.arguments] for case in each]
        for key, each in cases.items()
    }
    notebook = {"cells": runnable_cells(cells, match)}
    with tempfile.TemporaryDirectory(prefix="ptqlib-grade-") as folder:
        run = read_report(run_notebook(Path(folder), notebook, encode(inputs), limits, sandboxed))
    rows = []
    for exercise in match.exercises:
        outcome, detail = grade_exercise(exercise, cases.get(exercise.id, []), run, match, cells)
        flags = answer_flags(exercise, match, cells)
        if flags and outcome in (PASSED, FAILED, ANSWERED):
            detail = "; ".join(filter(None, [detail, "flag: " + "; ".join(flags)]))
        rows.append(row(exercise.id, outcome, detail))
    problems = list(match.problems)
    problems += [(SUSPICIOUS, flag) for flag in notebook_flags(cells)]
    collectors = {index for index in match.checks}
    for index, error in sorted(run.errors.items()):
        if index not in collectors:
            problems.append((CELL_ERROR, f"cell {index + 1}: {error}"))
    problems += stop_problems(run, limits, len(cells))
    return rows + [row(WHOLE_NOTEBOOK, outcome, detail) for outcome, detail in problems]


def stop_problems(run: NotebookRun, limits: Limits, cell_count: int) -> list[tuple[str, str]]:
    if run.stopped is None and run.problem is None:
        return []
    if run.stopped is None:
        return [(NOT_RUN, run.problem or "")]
    cell = _cell_name(run.stopped_at, cell_count)
    if run.stopped == KERNEL_DIED:
        return [(KERNEL_DIED, f"the kernel died in {cell}; later cells not run")]
    if run.stopped == NOTEBOOK_TIMED_OUT:
        detail = f"the notebook ran longer than {limits.notebook_timeout} s, in {cell}"
    else:
        detail = f"{cell} ran longer than {limits.cell_timeout} s"
    return [(TIMED_OUT, f"{detail}; later cells not run")]


def _cell_name(index: int | None, cell_count: int) -> str:
    if index is None:
        return "a cell"
    return f"cell {index + 1}" if index < cell_count else "the checks after the last cell"


def answer_flags(exercise: Exercise | OpenQuestion, match: Match, cells: list[Cell]) -> list[str]:
    """The flags on every definition of the exercise's function its answers may come from:
    the one above each cell that collects them (a copy of the checker cell further down
    collects again, and the last answers count), or above the end if none does."""
    checking = sorted(index for index, ids in match.checks.items() if exercise.id in ids)
    flags: dict[str, None] = {}
    for index in checking or [len(cells)]:
        flags.update(dict.fromkeys(exercise_flags(cells, exercise, index)))
    return list(flags)


def grade_exercise(
    exercise: Exercise | OpenQuestion,
    cases: list[Case],
    run: NotebookRun,
    match: Match,
    cells: list[Cell],
) -> tuple[str, str]:
    """(outcome, detail) of one exercise from the answers its checker cells collected."""
    text = run.answers.get(exercise.id)
    if text is None:
        return ERRORED, not_collected(exercise, run, match, cells)
    try:
        record = decode(text)
        status = record["status"]
    except (NotPlainData, TypeError, KeyError) as error:
        return ERRORED, f"its answers could not be read: {error}"
    if status == "undefined":
        return ERRORED, undefined(exercise, run, cells)
    if status == "prepare raised":
        return FAILED, f"{exercise.function}: {record.get('message', '')}"
    results = record.get("results") if status == "answered" else None
    if not isinstance(results, list) or not results or not all(_is_result(r) for r in results):
        return ERRORED, "its answers could not be read"
    if isinstance(exercise, OpenQuestion):
        return open_answer(exercise, results[0])
    for number, (case, result) in enumerate(zip(cases, results, strict=False), start=1):
        where = f"case {number} of {len(cases)} failed: {case.name}"
        kind = result[0]
        if kind == "not attempted":
            return NOT_ATTEMPTED, ""
        if kind == "raised":
            return FAILED, f"{where}: your function raised {result[1]}; hint: {case.hint}"
        if kind == "not plain":
            return FAILED, f"{where}: your function returned {result[1]}, not plain data"
        try:
            exercise.compare(case, result[1])
        except WrongAnswer as wrong:
            return FAILED, f"{where}: {wrong}; hint: {case.hint}"
        except Exception as error:  # noqa: BLE001 - an answer the comparison cannot handle
            return FAILED, f"{where}: the answer cannot be compared ({type(error).__name__})"
    if len(results) != len(cases):
        return ERRORED, f"answers to {len(results)} of the {len(cases)} cases"
    return PASSED, ""


def _is_result(result: Any) -> bool:
    if not isinstance(result, list) or not result or not isinstance(result[0], str):
        return False
    sizes = {"not attempted": 1, "raised": 2, "not plain": 2, "returned": 2}
    return sizes.get(result[0]) == len(result)


def open_answer(exercise: OpenQuestion, result: list) -> tuple[str, str]:
    """An open question: answered (with the choice), not attempted, or errored."""
    if result[0] == "not attempted":
        return NOT_ATTEMPTED, ""
    if result[0] == "returned":
        return ANSWERED, f"{exercise.function}() returned {result[1]!r}"
    return ERRORED, f"{exercise.function}() {result[0]}: {result[1]}"


def not_collected(
    exercise: Exercise | OpenQuestion, run: NotebookRun, match: Match, cells: list[Cell]
) -> str:
    """Why an exercise has no answers."""
    if run.stopped is None and run.problem is not None:
        return f"not graded: {run.problem}"
    checking = [index for index, ids in match.checks.items() if exercise.id in ids]
    checking = checking or [len(cells) + match.missing.index(exercise.id)]
    if run.stopped is not None and not any(index in run.ran for index in checking):
        return f"not run: {_cell_name(run.stopped_at, len(cells))} {run.stopped}"
    for index in checking:
        if index in run.errors:
            return f"{_cell_name(index, len(cells))}: {run.errors[index]}"
    return "its checker cell ran but collected no answers (the notebook changed the collector?)"


def undefined(exercise: Exercise | OpenQuestion, run: NotebookRun, cells: list[Cell]) -> str:
    """An undefined function: the cell that raised before defining it, if one did."""
    defining = [
        cell.index
        for cell in cells
        if cell.kind == "code" and exercise.function in defined_names(cell.source)
    ]
    for index in defining:
        if index in run.errors:
            return f"cell {index + 1}: {run.errors[index]} (before defining {exercise.function})"
    if not defining:
        return f"no cell defines {exercise.function}"
    return f"{exercise.function} is not defined when its checker cell runs"


def grade_folder(
    folder: Path,
    limits: Limits | None = None,
    jobs: int = 1,
    sandboxed: bool | None = None,
    progress: bool = False,
) -> list[Grade]:
    """Grade every file under ``folder``, ``jobs`` notebooks at a time; rows in the order
    of the files. ``sandboxed`` None: with bubblewrap if it runs here."""
    limits = Limits() if limits is None else limits
    submissions = find_submissions(folder)
    if sandboxed is None:
        sandboxed = isolation_problem() is None

    def grade(submission: tuple[str, str, Path]) -> list[Grade]:
        student, name, path = submission
        if progress:
            print(f"grading {clean(student)}: {clean(name)}", file=sys.stderr, flush=True)
        try:
            return grade_notebook(student, name, path, limits, sandboxed)
        except Exception as error:  # noqa: BLE001 - a bug must not cost the class its sheet
            traceback.print_exc()
            detail = f"the grader failed on it (a bug: please report it): {error!r}"
            return [Grade(clean(student), clean(name), WHOLE_NOTEBOOK, NOT_RUN, clean(detail))]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [row for rows in pool.map(grade, submissions) for row in rows]
