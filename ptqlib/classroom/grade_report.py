"""The grade sheet of ``python -m ptqlib grade``: a CSV (student, notebook, exercise, outcome,
detail), a table of students × exercises on the terminal, or JSON; and the command itself.

Running the notebooks and deciding each outcome is :mod:`ptqlib.classroom.grade`.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path

from ptqlib.classroom.grade import (
    ANSWERED,
    DEFAULT_HANDOUT,
    DEFAULT_TIMEOUT_S,
    ERRORED,
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    WHOLE_NOTEBOOK,
    Grade,
    grade_folder,
)

CSV_COLUMNS = ("student", "notebook", "exercise", "outcome", "detail")


def write_csv(grades: list[Grade], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(grade) for grade in grades)


SYMBOLS = {PASSED: "pass", FAILED: "FAIL", NOT_ATTEMPTED: "-", ANSWERED: "ans", ERRORED: "ERR"}


def summary_table(grades: list[Grade]) -> str:
    """Students × exercises, one table per set of exercises (per hand-out notebook):
    pass, FAIL, - (not attempted), ans (answered, no verdict), ERR (errored); notebook
    problems in the last column."""
    notebooks: dict[tuple[str, str], list[Grade]] = {}
    for grade in grades:
        notebooks.setdefault((grade.student, grade.notebook), []).append(grade)
    groups: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for key, rows in notebooks.items():
        exercises = tuple(row.exercise for row in rows if row.exercise != WHOLE_NOTEBOOK)
        groups.setdefault(exercises, []).append(key)
    blocks = []
    for exercises, keys in groups.items():
        names = sorted({notebook for _, notebook in keys})
        title = ", ".join(names) if len(names) <= 3 else f"{len(names)} notebooks"
        legend = "  ".join(f"{n}={name}" for n, name in enumerate(exercises, start=1))
        label_width = max(len("student"), *(len(_row_label(key, keys)) for key in keys))
        header = [
            f"{'student':{label_width}s}",
            *(f"{n:>4d}" for n in range(1, len(exercises) + 1)),
        ]
        lines = [
            f"{title}: {len(exercises)} exercises" + (f" ({legend})" if legend else ""),
            "  ".join([*header, "passed", "notebook"]),
        ]
        for key in keys:
            rows = notebooks[key]
            by_exercise = {row.exercise: row.outcome for row in rows}
            marks = [f"{SYMBOLS[by_exercise[name]]:>4s}" for name in exercises]
            passed = sum(by_exercise[name] == PASSED for name in exercises)
            problems = sorted({row.outcome for row in rows if row.exercise == WHOLE_NOTEBOOK})
            status = ", ".join(problems) or "ok"
            cells = [
                f"{_row_label(key, keys):{label_width}s}",
                *marks,
                f"{passed:>3d}/{len(exercises):<2d}",
                status,
            ]
            lines.append("  ".join(cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _row_label(key: tuple[str, str], keys: list[tuple[str, str]]) -> str:
    """The student, and the notebook too when that student has several in the table."""
    student, notebook = key
    if sum(other == student for other, _ in keys) > 1:
        return f"{student}/{notebook}"
    return student


def run_grade(args: argparse.Namespace) -> int:
    """The ``grade`` command: grade, write the CSV, print the table (or JSON). Needs nbformat
    and nbclient (``ptqlib.app.cli`` checks they are installed before importing this)."""
    folder = Path(args.submissions)
    timeout = DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    if args.trust_checkers:
        handout = None
    elif args.handout is not None:
        handout = Path(args.handout)
    else:  # the repository's notebooks/, if ptqlib runs from a clone
        handout = DEFAULT_HANDOUT if DEFAULT_HANDOUT.is_dir() else None
    grades = list(grade_folder(folder, timeout, handout, progress=True))
    out = Path(args.out)
    write_csv(grades, out)
    if args.json:
        print(json.dumps([asdict(grade) for grade in grades], indent=2))
    else:
        print()
        print(summary_table(grades))
        print(f"\n{len(grades)} rows written to {out}")
    return 0
