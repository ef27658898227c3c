"""Write the student edition of the notebooks: solutions removed, outputs cleared.

    python tools/make_student.py [--out student]

Every cell tagged ``solution`` is deleted; every other code cell keeps its source and loses
its outputs and execution count, so the student starts from a clean, unrun notebook. The
exercise cells (tagged ``exercise``: a skeleton that raises ``NotImplementedError``) and the
checker cells after them stay: run the checker after filling the skeleton. ``make student``
runs this into ``student/`` (gitignored), ready to hand out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]


def student_edition(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` without solution cells and without outputs."""
    student = nbformat.v4.new_notebook(metadata=notebook.metadata)
    for cell in notebook.cells:
        if "solution" in cell.metadata.get("tags", []):
            continue
        cell = nbformat.from_dict(dict(cell))
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        student.cells.append(cell)
    return student


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
