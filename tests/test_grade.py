"""``python -m ptqlib grade``: handed-in notebooks run in real kernels, one outcome per exercise.

Two folders of submissions: notebook 02 (a real notebook of the series, math exercises) as a
student hands it in solved, untouched and with one wrong answer; and tiny notebooks with the
same tags calling real checkers, for the failures a run must survive (a cell that raises,
an infinite loop, a dying kernel, a file that is not a notebook, a checker replaced by a
PASS of the student's own).
"""

import csv
import hashlib
import importlib.util
import json
import subprocess
import sys

import nbformat
import pytest

from conftest import REPO_ROOT, run_cli
from ptqlib.app import cli
from ptqlib.classroom import grade, grade_report
from ptqlib.classroom.exercises import find_exercises, solved_edition, student_edition
from ptqlib.data import load_mnist
from ptqlib.errors import InputError
from ptqlib.training import load_or_train_baseline

REAL_NOTEBOOK = "02_quantization_math.ipynb"
# A wrong affine_qparams: the range is not widened to include 0, so a range of positive
# values gets a zero-point outside [quant_min, quant_max].
WRONG_QPARAMS = """def affine_qparams(min_val, max_val, quant_min, quant_max):
    scale = (max_val - min_val) / (quant_max - quant_min)
    return scale, quant_min - round(min_val / scale)
"""
LINEAR_PARAMETERS = """def linear_parameters(in_features, out_features):
    return in_features * out_features + out_features
"""
HARDEST_DIGITS = """def hardest_digits(matrix):
    accuracy = matrix.diagonal() / matrix.sum(dim=1)
    return torch.nonzero(accuracy == accuracy.min()).flatten().tolist()
"""
SKELETON = "def {name}(*args):\n    # YOUR CODE HERE\n    raise NotImplementedError"


def digest(folder) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def outcomes(rows, student) -> dict[str, tuple[str, str]]:
    return {row.exercise: (row.outcome, row.detail) for row in rows if row.student == student}


def code(source, *tags):
    return nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})


def tiny_notebook(*cells) -> nbformat.NotebookNode:
    """A notebook whose first cell imports torch and two checkers of notebook 01."""
    imports = code(
        "import torch\n"
        "from ptqlib.classroom.checkers import check_hardest_digits, check_linear_parameters"
    )
    return nbformat.v4.new_notebook(cells=[imports, *cells])


def exercise(solution: str, checker: str):
    return [code(solution, "exercise"), code(checker, "checker")]


LINEAR = "check_linear_parameters(linear_parameters)"
HARDEST = "check_hardest_digits(hardest_digits)"


def test_every_exercise_of_the_series_has_a_skeleton_and_a_solution():
    notebooks = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    graded = 0
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        for each in find_exercises(notebook):
            assert each.skeleton == each.checker - 1, (path.name, each)
            assert each.solution is not None, (path.name, each)
            assert each.name.startswith("check_"), (path.name, each)
            graded += 1
        solved = solved_edition(notebook)
        assert len(find_exercises(solved)) == len(find_exercises(notebook))
        for each in find_exercises(solved):
            assert "NotImplementedError" not in solved.cells[each.skeleton].source, path.name
    assert graded >= 15  # 18 in notebooks 01-05 today


def test_an_exercise_is_named_after_the_checkers_it_calls():
    notebook = tiny_notebook(
        *exercise(SKELETON.format(name="f"), "check_qparams(f)\ncheckers.check_quantize(f)"),
        *exercise(SKELETON.format(name="g"), "print(g)"),
    )
    names = [each.name for each in find_exercises(notebook)]
    assert names == ["check_qparams+check_quantize", "exercise 2"]


def run_with(stdout="", error_name=None, message="") -> grade.NotebookRun:
    error = grade.error_line(error_name, message) if error_name else None
    checker = grade.CellRun(1, stdout, error, error_name, message)
    return grade.NotebookRun({1: checker}, None, None)


def test_outcomes_follow_what_the_checker_printed_or_raised():
    each = grade.Exercise("check_x", checker=1, skeleton=0, solution=None)
    assert grade.grade_exercise(each, run_with("check_x: PASS (3 cases)\n")) == ("passed", "")
    assert grade.grade_exercise(each, run_with("check_x: NOT ATTEMPTED yet\n"))[0] == (
        "not attempted"
    )
    message = "check_x: case 2 of 3 failed: zero\n  got:  1\n  hint:        widen the range"
    assert grade.grade_exercise(each, run_with(error_name="AssertionError", message=message)) == (
        "failed",
        "check_x: case 2 of 3 failed: zero; hint: widen the range",
    )
    assert grade.grade_exercise(each, run_with("accuracy 97.1%\n")) == (
        "answered",
        "accuracy 97.1%",
    )
    assert grade.grade_exercise(each, run_with(error_name="NameError", message="name 'f'")) == (
        "errored",
        "cell 2: NameError: name 'f'",
    )


@pytest.fixture(scope="module")
def real_submissions(tmp_path_factory):
    """alice solved notebook 02, bob handed in the student edition untouched, carol got the
    first exercise wrong; one subfolder per student."""
    load_or_train_baseline(load_mnist(verbose=False), progress=False)  # cached for every copy
    original = nbformat.read(REPO_ROOT / "notebooks" / REAL_NOTEBOOK, as_version=4)
    folder = tmp_path_factory.mktemp("submissions")
    wrong = solved_edition(original)
    first = find_exercises(wrong)[0]
    assert first.name == "check_qparams"
    wrong.cells[first.skeleton].source = WRONG_QPARAMS
    for student, notebook in {
        "alice": solved_edition(original),
        "bob": student_edition(original),
        "carol": wrong,
    }.items():
        (folder / student).mkdir()
        nbformat.write(notebook, folder / student / REAL_NOTEBOOK)
    before = digest(folder)
    rows = list(grade.grade_folder(folder, timeout=300))
    assert digest(folder) == before, "grading changed the submissions"
    return rows, [each.name for each in find_exercises(original)]


@pytest.mark.slow
def test_a_solved_notebook_passes_every_exercise(real_submissions):
    rows, exercises = real_submissions
    assert outcomes(rows, "alice") == {name: ("passed", "") for name in exercises}
    assert {row.notebook for row in rows} == {REAL_NOTEBOOK}


@pytest.mark.slow
def test_the_untouched_student_edition_is_not_attempted(real_submissions):
    rows, exercises = real_submissions
    assert outcomes(rows, "bob") == {name: ("not attempted", "") for name in exercises}


@pytest.mark.slow
def test_one_wrong_answer_fails_that_exercise_with_the_checkers_hint(real_submissions):
    rows, exercises = real_submissions
    carol = outcomes(rows, "carol")
    outcome, detail = carol.pop("check_qparams")
    assert outcome == "failed"
    assert detail.startswith("check_qparams: case ") and "hint:" in detail
    assert carol == {name: ("passed", "") for name in exercises[1:]}
    table = grade_report.summary_table(rows)
    assert "alice" in table and "carol" in table and "FAIL" in table


@pytest.fixture(scope="module")
def broken_submissions(tmp_path_factory):
    """Tiny notebooks, one per student, in the order they are graded."""
    folder = tmp_path_factory.mktemp("broken")
    raises_in_cell_3 = tiny_notebook(
        nbformat.v4.new_markdown_cell("# Exercises"),
        *exercise("steps = 1 / 0\n" + LINEAR_PARAMETERS, LINEAR),
        *exercise(HARDEST_DIGITS, HARDEST),
    )
    loops = tiny_notebook(
        *exercise(LINEAR_PARAMETERS, LINEAR),
        code("while True:\n    pass"),
        *exercise(HARDEST_DIGITS, HARDEST),
    )
    dies = tiny_notebook(code("import os\nos._exit(1)"), *exercise(LINEAR_PARAMETERS, LINEAR))
    solved = tiny_notebook(*exercise(LINEAR_PARAMETERS, LINEAR), *exercise(HARDEST_DIGITS, HARDEST))
    for name, notebook in [
        ("a_raises", raises_in_cell_3),
        ("b_loops", loops),
        ("c_dies", dies),
        ("e_solved", solved),
    ]:
        nbformat.write(notebook, folder / f"{name}.ipynb")
    # f_edited replaced its checker with a PASS of its own: the hand-out's checker runs.
    handout = folder.parent / f"{folder.name}-handout"
    handout.mkdir()
    nbformat.write(
        tiny_notebook(*exercise(SKELETON.format(name="linear_parameters"), LINEAR)),
        handout / "f_edited.ipynb",
    )
    edited = tiny_notebook(
        *exercise(
            SKELETON.format(name="linear_parameters"), 'print("check_linear_parameters: PASS")'
        )
    )
    nbformat.write(edited, folder / "f_edited.ipynb")
    (folder / "d_not_a_notebook.ipynb").write_text("{this is not JSON", encoding="utf-8")
    (folder / "notes.txt").write_text("not graded", encoding="utf-8")
    return folder, handout


@pytest.mark.slow
def test_failures_are_recorded_and_grading_goes_on(broken_submissions, tmp_path):
    broken_submissions, handout = broken_submissions
    before = digest(broken_submissions)
    out = tmp_path / "grades.csv"
    # 20 s per cell: enough for the cell importing torch on a busy machine.
    arguments = ["--timeout", "20", "--out", str(out), "--json", "--handout", str(handout)]
    result = run_cli("grade", str(broken_submissions), *arguments)
    assert result.returncode == 0, result.stderr
    assert digest(broken_submissions) == before, "grading changed the submissions"
    rows = [grade.Grade(**row) for row in json.loads(result.stdout)]
    with open(out, newline="", encoding="utf-8") as file:
        assert [grade.Grade(**row) for row in csv.DictReader(file)] == rows

    assert outcomes(rows, "a_raises") == {
        "check_linear_parameters": ("errored", "cell 3: ZeroDivisionError: division by zero"),
        "check_hardest_digits": ("passed", ""),
        "(notebook)": ("cell error", "cell 3: ZeroDivisionError: division by zero"),
    }
    loops = outcomes(rows, "b_loops")
    assert loops["check_linear_parameters"] == ("passed", "")
    assert loops["check_hardest_digits"] == ("errored", "not run: cell 4 timed out")
    assert (
        loops["(notebook)"][0] == "timed out"
        and "cell 4 ran longer than 20 s" in (loops["(notebook)"][1])
    )
    dies = outcomes(rows, "c_dies")
    assert dies["check_linear_parameters"] == ("errored", "not run: cell 2 kernel died")
    assert dies["(notebook)"][0] == "kernel died"
    not_a_notebook = outcomes(rows, "d_not_a_notebook")
    assert list(not_a_notebook) == ["(notebook)"]
    assert not_a_notebook["(notebook)"][0] == "not a notebook"
    assert outcomes(rows, "e_solved") == {
        "check_linear_parameters": ("passed", ""),
        "check_hardest_digits": ("passed", ""),
    }
    assert outcomes(rows, "f_edited") == {
        "check_linear_parameters": ("not attempted", ""),
        "(notebook)": ("checker edited", "cell 3: the hand-out's checker ran"),
    }
    assert [row.student for row in rows][-1] == "f_edited"


@pytest.mark.slow
def test_the_table_is_printed_without_json(broken_submissions, tmp_path):
    broken_submissions, _ = broken_submissions
    solved_only = tmp_path / "one"
    solved_only.mkdir()
    (solved_only / "e_solved.ipynb").write_bytes(
        (broken_submissions / "e_solved.ipynb").read_bytes()
    )
    result = run_cli("grade", str(solved_only), "--out", str(tmp_path / "g.csv"))
    assert result.returncode == 0, result.stderr
    assert "1=check_linear_parameters" in result.stdout
    assert "e_solved  pass  pass    2/2   ok" in result.stdout


def test_a_notebook_whose_checker_cells_differ_in_number_keeps_its_own():
    handout = tiny_notebook(*exercise(SKELETON.format(name="f"), LINEAR))
    edited = tiny_notebook(*exercise(SKELETON.format(name="f"), "print('PASS')"))
    assert grade.restore_checkers(edited, handout) == ([2], None)
    assert edited.cells[2].source == LINEAR
    fewer = tiny_notebook(code(SKELETON.format(name="f"), "exercise"))
    assert grade.restore_checkers(fewer, handout) == (
        [],
        "the hand-out has 1 checker cells, this notebook 0",
    )


def test_the_help_states_the_default_timeout():
    assert f"(default {grade.DEFAULT_TIMEOUT_S})" in " ".join(
        run_cli("grade", "--help").stdout.split()
    )


def test_without_nbclient_grade_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "nbclient" else find_spec(name)
    )
    assert cli.main(["grade", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "grade needs nbclient" in error and "pip install -e '.[dev]'" in error


def test_the_other_commands_work_without_nbformat_and_nbclient():
    blocked = "import sys; sys.modules['nbformat'] = sys.modules['nbclient'] = None; "
    run = blocked + "from ptqlib.app.cli import build_parser; build_parser()"
    result = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = run_cli("grade", str(tmp_path / "missing"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "not a folder" in missing.stderr
    empty = run_cli("grade", str(tmp_path))
    assert empty.returncode == 2 and "no .ipynb files" in empty.stderr
    timeout = run_cli("grade", str(tmp_path), "--timeout", "0")
    assert timeout.returncode == 2 and "positive" in timeout.stderr
    (tmp_path / "alice.ipynb").write_text("{}", encoding="utf-8")
    handout = run_cli("grade", str(tmp_path), "--handout", str(tmp_path / "nowhere"))
    assert handout.returncode == 2 and "--handout" in handout.stderr


@pytest.mark.parametrize(
    "text",
    [
        "{this is not JSON",
        "[]",
        '{"cells": []}',
        '{"cells": [1], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}',
        '{"cells": [{"cell_type": "code"}], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}',
    ],
)
def test_a_file_that_is_not_a_notebook_is_an_input_error(tmp_path, text):
    path = tmp_path / "alice.ipynb"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="not"):
        grade.read_submission(path)
    assert grade.grade_notebook("alice", path.name, path, timeout=1)[0].outcome == "not a notebook"


def test_a_real_notebook_reads_as_nbformat_reads_it():
    path = REPO_ROOT / "notebooks" / REAL_NOTEBOOK
    assert grade.read_submission(path) == nbformat.read(path, as_version=4)
