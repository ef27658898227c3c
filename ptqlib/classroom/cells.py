"""Which cells of a notebook are exercises, checkers and solutions: one definition, read by
``make student`` (which removes the solutions) and by ``python -m ptqlib grade``.

The notebooks mark an exercise with three cell tags::

    [exercise]  def affine_qparams(...):        the skeleton the student fills in;
                    # YOUR CODE HERE            it raises NotImplementedError until then
                    raise NotImplementedError
    [checker]   check_qparams(affine_qparams)   runs the exercise's checker: PASS, NOT
                                                ATTEMPTED, or an AssertionError whose
                                                message ends with a hint
    [solution]  # Solution 1 ...                the model answer; not in the student edition

The checker cell calls ``check_<id>`` of the exercises it checks (one or several): the id
names the exercise's definition in :data:`ptqlib.classroom.checkers.EXERCISES`, which the
grader uses (see :mod:`ptqlib.classroom.checkers.exercise`). The skeleton is the closest
exercise cell above the checker and the solution the first solution cell below it (before
the next exercise). Solution cells with no checker (questions answered in prose or by a
free-form cell) are not graded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import nbformat

EXERCISE_TAG = "exercise"
CHECKER_TAG = "checker"
SOLUTION_TAG = "solution"
# A checker cell calls check_<id>(...), e.g. check_qparams(my_fn) or checkers.check_int32_bias(f).
CHECKER_CALL = re.compile(r"\bcheck_(\w+)\s*\(")


def tags(cell: Any) -> list[str]:
    """The cell's tags (an empty list when it has none, or when they are not strings)."""
    metadata = cell.get("metadata") if isinstance(cell, dict) else None
    found = metadata.get("tags") if isinstance(metadata, dict) else None
    return [tag for tag in found if isinstance(tag, str)] if isinstance(found, list) else []


def is_solution(cell: nbformat.NotebookNode) -> bool:
    return SOLUTION_TAG in tags(cell)


def called_ids(source: str) -> list[str]:
    """The ids of the checkers ``source`` calls (``check_<id>(``), in order, no repeats."""
    return list(dict.fromkeys(CHECKER_CALL.findall(source)))


@dataclass(frozen=True)
class ExerciseCells:
    """The cells of one checker cell's exercises; numbers are cell indices (0 = first)."""

    ids: tuple[str, ...]  # the exercises its checker cell checks, e.g. ("qparams",)
    checker: int  # the cell tagged "checker"
    skeleton: int | None  # the closest cell tagged "exercise" above the checker
    solution: int | None  # the first cell tagged "solution" below the checker


def find_exercises(notebook: nbformat.NotebookNode) -> list[ExerciseCells]:
    """Every checker cell of ``notebook`` with its skeleton and solution cells, in order."""
    cells = notebook.cells
    exercises = []
    for index, cell in enumerate(cells):
        if CHECKER_TAG not in tags(cell):
            continue
        skeleton = next(
            (i for i in range(index - 1, -1, -1) if EXERCISE_TAG in tags(cells[i])), None
        )
        solution = None
        for later in range(index + 1, len(cells)):
            if EXERCISE_TAG in tags(cells[later]) or CHECKER_TAG in tags(cells[later]):
                break
            if is_solution(cells[later]):
                solution = later
                break
        exercises.append(ExerciseCells(tuple(called_ids(cell.source)), index, skeleton, solution))
    return exercises


def student_edition(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` without solution cells and without outputs."""
    student = nbformat.v4.new_notebook(metadata=notebook.metadata)
    for cell in notebook.cells:
        if is_solution(cell):
            continue
        cell = nbformat.from_dict(dict(cell))
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        student.cells.append(cell)
    return student


def solved_edition(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student edition with every skeleton replaced by its exercise's solution: what a
    student who solved every exercise hands in (used to test the grader)."""
    filled = nbformat.from_dict(notebook)
    for exercise in find_exercises(notebook):
        if exercise.skeleton is not None and exercise.solution is not None:
            filled.cells[exercise.skeleton].source = notebook.cells[exercise.solution].source
    return student_edition(filled)
