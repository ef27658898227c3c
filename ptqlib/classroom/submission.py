"""A handed-in file as the grader reads it: its cells, which notebook of the series its
exercises belong to, and the notebook that actually runs.

- :func:`read_cells` reads any notebook in Jupyter's format 4 (every minor version, with or
  without cell ids) and refuses everything else with a one-line reason.
- :func:`match_notebook` finds the exercises by the checkers its cells call, not by its file
  name: ``01_fp32_baseline (1).ipynb`` and ``alice.ipynb`` are graded like the original, and
  notebook 03 handed in under 02's name is graded as 03 and reported as the wrong notebook.
- :func:`runnable_cells` is what runs: every code cell as the student wrote it, outputs and
  tags ignored (``skip-execution`` and ``raises-exception`` change nothing), except the
  checker cells, which become the grader's collector calls
  (:func:`ptqlib.classroom.collect.collector_call`) for the exercises the hand-out checks
  there. A checker cell the student changed is reported; a copy of one is not; an
  exercise whose checker cell is gone is checked after the last cell.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ptqlib.classroom.cells import CHECKER_TAG, EXERCISE_TAG, called_ids, tags
from ptqlib.classroom.checkers import EXERCISES
from ptqlib.classroom.checkers.exercise import Exercise, OpenQuestion
from ptqlib.classroom.collect import collector_call
from ptqlib.errors import InputError

# Problems of a whole notebook, found before it runs.
WRONG_NOTEBOOK = "wrong notebook"
CHECKER_EDITED = "checker edited"
CHECKER_MISSING = "checker missing"
NOTEBOOK_NUMBER = re.compile(r"(?<!\d)(\d\d)_")
MAX_NOTEBOOK_BYTES = 50 * 2**20
# The grader reads every code cell as Python several times, in its own process and without
# a time limit: about 7 s and 360 MB a megabyte of code. The series' notebooks have under
# 100 cells and 40,000 characters of code.
MAX_CELLS = 1000
MAX_CODE_CHARS = 500_000


@dataclass(frozen=True)
class Cell:
    index: int  # 0-based position in the notebook; shown to people as index + 1
    kind: str  # "code", "markdown" or "raw"
    source: str
    tags: tuple[str, ...]


@dataclass
class Match:
    """The notebook whose exercises a file holds, and how its checker cells are to run."""

    notebook: str | None
    exercises: list[Exercise | OpenQuestion]
    checks: dict[int, list[str]] = field(default_factory=dict)  # cell -> ids it checks
    missing: list[str] = field(default_factory=list)  # ids without a checker cell
    problems: list[tuple[str, str]] = field(default_factory=list)  # (outcome, detail)


def notebooks() -> dict[str, list[Exercise | OpenQuestion]]:
    """Every notebook of the series with its exercises, in order."""
    found: dict[str, list[Exercise | OpenQuestion]] = {}
    for exercise in EXERCISES:
        if exercise.notebook is not None:
            found.setdefault(exercise.notebook, []).append(exercise)
    return found


def read_cells(path: Path) -> list[Cell]:
    """The cells of the notebook in ``path``; InputError naming the problem if the file is
    not a notebook (Jupyter's JSON format 4)."""
    if path.suffix.lower() != ".ipynb":
        what = f"a {path.suffix} file" if path.suffix else "a file without an extension"
        raise InputError(f"{what}, not a notebook: hand in the .ipynb")
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise InputError(f"larger than {MAX_NOTEBOOK_BYTES // 2**20} MB")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # not UTF-8, or not JSON
        raise InputError(f"not JSON: {str(error)[:200]}") from None
    if not isinstance(raw, dict) or raw.get("nbformat") != 4:
        raise InputError("JSON, but not a notebook in Jupyter's format 4 (nbformat: 4)")
    cells = raw.get("cells")
    if not isinstance(cells, list) or not all(isinstance(cell, dict) for cell in cells):
        raise InputError("not a valid notebook: 'cells' is not a list of cells")
    if len(cells) > MAX_CELLS:
        raise InputError(f"{len(cells):,} cells, more than the {MAX_CELLS:,} the grader reads")
    read = [_cell(index, cell) for index, cell in enumerate(cells)]
    code = sum(len(cell.source) for cell in read if cell.kind == "code")
    if code > MAX_CODE_CHARS:
        raise InputError(
            f"{code:,} characters of code, more than the {MAX_CODE_CHARS:,} the grader reads"
        )
    return read


def _cell(index: int, cell: dict) -> Cell:
    source = cell.get("source", "")
    if isinstance(source, list) and all(isinstance(line, str) for line in source):
        source = "".join(source)
    if not isinstance(source, str):
        raise InputError(f"not a valid notebook: cell {index + 1} has no source text")
    kind = cell.get("cell_type")
    return Cell(index, kind if kind in ("code", "markdown") else "raw", source, tuple(tags(cell)))


def match_notebook(cells: list[Cell], file_name: str) -> Match:
    """Which notebook the cells are, by the checkers they call; how each exercise is checked."""
    series = notebooks()
    code = [cell for cell in cells if cell.kind == "code"]
    called = {each for cell in code for each in called_ids(cell.source)}
    counts = {name: len(called & {e.id for e in exercises}) for name, exercises in series.items()}
    best = max(counts, key=lambda name: (counts[name], name in file_name), default=None)
    if best is None or counts[best] == 0:
        return Match(None, [])
    match = Match(best, series[best])
    named = _named_notebook(file_name, series)
    if named is not None and named != best:
        detail = f"handed in as {file_name}, but its exercises are those of {best}.ipynb"
        match.problems.append((WRONG_NOTEBOOK, detail))
    ids = {exercise.id: exercise for exercise in match.exercises}
    for cell in code:
        checked = [each for each in called_ids(cell.source) if each in ids]
        if CHECKER_TAG in cell.tags and not checked:
            checked = _exercises_above(cells, cell.index, match.exercises)
            detail = f"cell {cell.index + 1}: changed; the hand-out's checker ran instead"
            if not checked:
                detail = f"cell {cell.index + 1}: tagged checker, but checks no exercise"
            match.problems.append((CHECKER_EDITED, detail))
        elif checked and CHECKER_TAG not in cell.tags and not _only_checks(cell.source):
            continue  # the student calls a checker in their own cell: it stays theirs
        elif checked and not _only_checks(cell.source, [ids[each] for each in checked]):
            detail = f"cell {cell.index + 1}: changed; the hand-out's checker ran instead"
            match.problems.append((CHECKER_EDITED, detail))
        if checked:
            match.checks[cell.index] = checked
    done = {each for checked in match.checks.values() for each in checked}
    match.missing = [exercise.id for exercise in match.exercises if exercise.id not in done]
    for each in match.missing:
        detail = f"no checker cell for {each}: it was checked after the last cell"
        match.problems.append((CHECKER_MISSING, detail))
    return match


def _named_notebook(file_name: str, series: dict) -> str | None:
    """The notebook of the series a file name refers to (``02_quantization_math (1)``)."""
    for name in series:
        if name in file_name:
            return name
    number = NOTEBOOK_NUMBER.match(file_name)
    named = [name for name in series if number and name.startswith(number.group(1) + "_")]
    return named[0] if len(named) == 1 else None


def _exercises_above(cells: list[Cell], index: int, exercises: list) -> list[str]:
    """The exercises whose function the closest exercise cell above ``index`` defines."""
    for cell in reversed(cells[:index]):
        if EXERCISE_TAG in cell.tags and cell.kind == "code":
            defined = defined_names(cell.source)
            return [exercise.id for exercise in exercises if exercise.function in defined]
    return []


def _only_checks(source: str, exercises: list | None = None) -> bool:
    """Whether ``source`` is nothing but checker calls (``check_x(f)``, maybe assigned),
    each passing the exercise's function first when ``exercises`` are given."""
    tree = parse(source)
    if tree is None or not tree.body:
        return False
    functions = {e.checker: e.function for e in exercises} if exercises is not None else None
    for statement in tree.body:
        call = statement.value if isinstance(statement, (ast.Expr, ast.Assign)) else None
        if not isinstance(call, ast.Call):
            return False
        name = call.func.attr if isinstance(call.func, ast.Attribute) else None
        name = call.func.id if isinstance(call.func, ast.Name) else name
        if name is None or not name.startswith("check_"):
            return False
        if functions is not None:
            first = call.args[0] if call.args else None
            if not isinstance(first, ast.Name) or functions.get(name) != first.id:
                return False
    return True


def parse(source: str) -> ast.Module | None:
    """The cell's code as Python (IPython's ``%magic`` and ``!shell`` lines left out), or
    None if it is not Python."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def defined_names(source: str) -> set[str]:
    """The names a cell defines at its top level (functions, classes, assignments)."""
    tree = parse(source)
    names: set[str] = set()
    for statement in tree.body if tree is not None else []:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(statement.name)
        elif isinstance(statement, ast.Assign):
            names.update(t.id for t in statement.targets if isinstance(t, ast.Name))
    return names


def runnable_cells(cells: list[Cell], match: Match) -> list[dict]:
    """The cells the runner executes, in order: ``{"index", "source", "collects"}``. Checker
    cells collect their exercises' answers; missing ones are collected after the last cell."""
    functions = {exercise.id: exercise.function for exercise in match.exercises}
    runnable = []
    for cell in cells:
        if cell.kind != "code" or not cell.source.strip():
            continue
        checked = match.checks.get(cell.index, [])
        source = "\n".join(collector_call(each, functions[each]) for each in checked)
        runnable.append({"index": cell.index, "source": source or cell.source, "collects": checked})
    for number, each in enumerate(match.missing):
        source = collector_call(each, functions[each])
        runnable.append({"index": len(cells) + number, "source": source, "collects": [each]})
    return runnable
