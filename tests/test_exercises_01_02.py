"""Notebooks 01 and 02 follow the instructor-kit convention for every exercise that asks for
code: a skeleton cell (tag ``exercise``) that raises NotImplementedError, then a cell (tag
``checker``) that calls a ``ptqlib.classroom.checkers`` function on it, then the solution (tags
``solution`` and ``hide-cell``) that defines the same function and passes the same checker.
The skeleton and checker cells are run here, outside Jupyter: the untouched skeleton is
reported as not attempted, and nothing raises, so a student notebook runs top to bottom."""

from __future__ import annotations

import ast
import contextlib
import io
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
OWNED = ["01_fp32_baseline.ipynb", "02_quantization_math.ipynb"]


def code_cells(name: str) -> list[dict]:
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    return [cell for cell in cells if cell["cell_type"] == "code"]


def tags(cell: dict) -> list[str]:
    return cell["metadata"].get("tags", [])


def source(cell: dict) -> str:
    return "".join(cell["source"])


def defined_functions(code: str) -> set[str]:
    return {node.name for node in ast.parse(code).body if isinstance(node, ast.FunctionDef)}


def called_checkers(code: str) -> set[str]:
    calls = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)]
    return {
        c.func.id for c in calls if isinstance(c.func, ast.Name) and c.func.id.startswith("check_")
    }


def exercises(name: str) -> list[tuple[dict, dict, dict]]:
    cells = code_cells(name)
    found = []
    for index, cell in enumerate(cells):
        if "exercise" in tags(cell):
            found.append((cell, cells[index + 1], cells[index + 2]))
    return found


@pytest.mark.parametrize("name", OWNED)
def test_every_exercise_is_skeleton_checker_solution(name):
    found = exercises(name)
    assert len(found) >= 3, f"{name}: expected at least three code exercises"
    for skeleton, checker, solution in found:
        assert "# YOUR CODE HERE" in source(skeleton)
        assert "raise NotImplementedError" in source(skeleton)
        assert tags(checker)[:1] == ["checker"] and "nbval-ignore-output" in tags(checker)
        assert {"solution", "hide-cell"} <= set(tags(solution))
        assert defined_functions(source(skeleton)) == defined_functions(source(solution))
        assert called_checkers(source(checker)) <= called_checkers(source(solution))
        assert called_checkers(source(checker)), "the checker cell calls no check_... function"


@pytest.mark.parametrize("name", OWNED)
def test_untouched_skeletons_are_reported_as_not_attempted(name):
    imports = source(code_cells(name)[0])
    for skeleton, checker, _ in exercises(name):
        namespace: dict = {}
        exec(imports, namespace)
        exec(source(skeleton), namespace)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(source(checker), namespace)
        lines = printed.getvalue().strip().splitlines()
        assert lines and all("NOT ATTEMPTED" in line for line in lines), printed.getvalue()


@pytest.mark.parametrize("name", OWNED)
def test_a_setup_cell_follows_the_version_cell(name):
    cells = code_cells(name)
    assert "environment_summary()" in source(cells[1])
    assert "setup" in tags(cells[2])
