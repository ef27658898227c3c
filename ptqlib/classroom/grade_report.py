"""The grade sheet of ``python -m ptqlib grade``: a CSV (student, notebook, exercise, outcome,
detail), a table of students × exercises on the terminal, or JSON; and the command itself.

Running the notebooks and deciding each outcome is :mod:`ptqlib.classroom.grade`. The CSV is
written once, after every notebook has run and its sandbox is gone, to a temporary file
renamed over ``--out``: no notebook can touch it, and an interrupted run leaves the old one.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from ptqlib.classroom.grade import (
    ANSWERED,
    ERRORED,
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    WHOLE_NOTEBOOK,
    Grade,
    grade_folder,
)
from ptqlib.classroom.sandbox import Limits, isolation_problem

CSV_COLUMNS = ("student", "notebook", "exercise", "outcome", "detail")
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text``, with a leading ' if a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_csv(grades: list[Grade], path: Path) -> None:
    """Write the CSV to a temporary file beside ``path``, then rename it over ``path``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for grade in grades:
        writer.writerow({key: spreadsheet_safe(value) for key, value in asdict(grade).items()})
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    os.replace(partial, path)


SYMBOLS = {PASSED: "pass", FAILED: "FAIL", NOT_ATTEMPTED: "-", ANSWERED: "ans", ERRORED: "ERR"}


def mark(row: Grade) -> str:
    """The table's symbol for an exercise; * when its detail carries a flag."""
    return SYMBOLS.get(row.outcome, "?") + ("*" if "flag: " in row.detail else "")


def summary_table(grades: list[Grade]) -> str:
    """Students × exercises, one table per notebook of the series: pass, FAIL, - (not
    attempted), ans (answered, no verdict), ERR (errored), * flagged; notebook problems in
    the last column."""
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
            *(f"{n:>5d}" for n in range(1, len(exercises) + 1)),
        ]
        lines = [
            f"{title}: {len(exercises)} exercises" + (f" ({legend})" if legend else ""),
            "  ".join([*header, "passed", "notebook"]),
        ]
        for key in keys:
            rows = notebooks[key]
            by_exercise = {row.exercise: row for row in rows}
            marks = [f"{mark(by_exercise[name]):>5s}" for name in exercises]
            passed = sum(by_exercise[name].outcome == PASSED for name in exercises)
            problems = sorted({row.outcome for row in rows if row.exercise == WHOLE_NOTEBOOK})
            status = ", ".join(problems) or "ok"
            cells = [f"{_row_label(key, keys):{label_width}s}", *marks]
            lines.append("  ".join([*cells, f"{passed:>3d}/{len(exercises):<2d}", status]))
        blocks.append("\n".join(lines))
    footer = "* flagged: the detail column of the CSV says why (read that code)"
    return "\n\n".join(blocks) + ("\n" + footer if "*" in "".join(map(mark, grades)) else "")


def _row_label(key: tuple[str, str], keys: list[tuple[str, str]]) -> str:
    """The student, and the notebook too when that student has several in the table."""
    student, notebook = key
    if sum(other == student for other, _ in keys) > 1:
        return f"{student}/{notebook}"
    return student


def limits_from(args: argparse.Namespace) -> Limits:
    default = Limits()
    return Limits(
        cell_timeout=args.timeout or default.cell_timeout,
        notebook_timeout=args.notebook_timeout or default.notebook_timeout,
        memory_bytes=(args.memory * 2**20) if args.memory else default.memory_bytes,
    )


def run_grade(args: argparse.Namespace) -> int:
    """The ``grade`` command: grade, write the CSV, print the table (or JSON). Needs
    jupyter_client and ipykernel (``ptqlib.app.cli`` checks they are installed)."""
    problem = isolation_problem()
    if problem is not None:
        print(problem, file=sys.stderr, flush=True)
    grades = grade_folder(
        Path(args.submissions),
        limits_from(args),
        jobs=args.jobs,
        sandboxed=problem is None,
        progress=True,
    )
    out = Path(args.out)
    write_csv(grades, out)
    if args.json:
        print(json.dumps([asdict(grade) for grade in grades], indent=2))
    else:
        print()
        print(summary_table(grades))
        print(f"\n{len(grades)} rows written to {out}")
    if problem is not None:
        print(problem, file=sys.stderr)  # again, after the progress lines
    return 0
