"""Which cells of a notebook are exercises, checkers and solutions: one definition, read by
``make student`` (which removes the solutions) and by ``python -m ptqlib grade`` (which runs
the checkers of a handed-in notebook).

The notebooks mark an exercise with three cell tags::

    [exercise]  def affine_qparams(...):        the skeleton the student fills in;
                    # YOUR CODE HERE            it raises NotImplementedError until then
                    raise NotImplementedError
    [checker]   check_qparams(affine_qparams)   runs the matching checker function:
                                                PASS, NOT ATTEMPTED, or an AssertionError
                                                whose message ends with a hint
    [solution]  # Solution 1 ...                the model answer; not in the student edition

An exercise is a checker cell; its skeleton is the closest exercise cell above it and its
solution the first solution cell below it (before the next exercise). Solution cells with no
checker (questions answered in prose or by a free-form cell) are not graded. A new exercise
tagged this way is handed out and graded without changing any code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nbformat

EXERCISE_TAG = "exercise"
CHECKER_TAG = "checker"
SOLUTION_TAG = "solution"
# A checker cell calls one or more ptqlib.classroom.checkers functions, e.g. check_qparams(my_fn) or
# checkers.check_int32_bias(my_fn); their names name the exercise.
CHECKER_CALL = re.compile(r"\b(check_\w+)\s*\(")


def tags(cell: nbformat.NotebookNode) -> list[str]:
    """The cell's tags (an empty list when it has none)."""
    return list(cell.get("metadata", {}).get("tags", []))


def is_solution(cell: nbformat.NotebookNode) -> bool:
    return SOLUTION_TAG in tags(cell)


@dataclass(frozen=True)
class Exercise:
    """One graded exercise of a notebook; the numbers are cell indices (0 = the first cell)."""

    name: str  # the checker functions its checker cell calls, e.g. "check_qparams"
    checker: int  # the cell tagged "checker"
    skeleton: int | None  # the closest cell tagged "exercise" above the checker
    solution: int | None  # the first cell tagged "solution" below the checker


def find_exercises(notebook: nbformat.NotebookNode) -> list[Exercise]:
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
        called = dict.fromkeys(CHECKER_CALL.findall(cell.source))  # in order, no repeats
        name = "+".join(called) or f"exercise {len(exercises) + 1}"
        exercises.append(Exercise(name, index, skeleton, solution))
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
