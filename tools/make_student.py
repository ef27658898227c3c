"""Write the student edition of the notebooks: solutions removed, outputs cleared.

    python tools/make_student.py [--out student]

Every cell tagged ``solution`` is deleted; every other code cell keeps its source and loses
its outputs and execution count, so the student starts from a clean, unrun notebook. The
exercise cells (tagged ``exercise``: a skeleton that raises ``NotImplementedError``) and the
checker cells after them stay: run the checker after filling the skeleton. ``make student``
runs this into ``student/`` (gitignored), ready to hand out. Which cells are exercises,
checkers and solutions is defined once, in ``ptqlib.classroom.exercises``, which ``python -m ptqlib
grade`` reads too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from ptqlib.classroom.exercises import student_edition

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_student_notebooks(source: Path, out: Path) -> list[Path]:
    """Write the student edition of every ``source/*.ipynb`` into ``out``; return the paths."""
    notebooks = sorted(source.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"{source}: no notebooks to convert")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        target = out / path.name
        nbformat.write(student_edition(nbformat.read(path, as_version=4)), target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO_ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "student")
    args = parser.parse_args(argv)
    try:
        written = write_student_notebooks(args.source, args.out)
    except (ValueError, OSError) as error:
        print(f"make_student: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} student notebooks to {args.out}/ (solutions removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
