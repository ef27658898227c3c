"""ptqlib.classroom.flags: what the grader reads in a notebook's code. No notebook of the
series raises a flag, solved or not; each trick a student could try against a grader does,
and a call of ptqlib's own answer is named, however it is imported."""

from pathlib import Path

import nbformat
import pytest

from conftest import NOTEBOOKS
from ptqlib.classroom.cells import solved_edition, student_edition, tags
from ptqlib.classroom.checkers.quantization_math import QPARAMS
from ptqlib.classroom.flags import exercise_flags, notebook_flags
from ptqlib.classroom.submission import Cell


def cells_of(*sources: str) -> list[Cell]:
    return [Cell(index, "code", source, ()) for index, source in enumerate(sources)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_series_notebooks_raise_no_flag(path):
    from ptqlib.classroom.submission import match_notebook

    original = nbformat.read(path, as_version=4)
    for notebook in (student_edition(original), solved_edition(original)):
        cells = [
            Cell(index, cell.cell_type, cell.source, tuple(tags(cell)))
            for index, cell in enumerate(notebook.cells)
        ]
        assert notebook_flags(cells) == []
        match = match_notebook(cells, Path(path).name)
        for exercise in match.exercises:
            assert exercise_flags(cells, exercise, len(cells)) == [], exercise.id


@pytest.mark.parametrize(
    ("source", "flag"),
    [
        (
            "def check_qparams(f):\n    print('check_qparams: PASS')",
            "defines its own check_qparams",
        ),
        (
            "import ptqlib.classroom.checkers.core as core\ncore.run_cases = print",
            "patches ptqlib.classroom.checkers.core.run_cases",
        ),
        ("import builtins\nbuiltins.print = lambda *a: None", "patches builtins.print"),
        ("setattr(__builtins__, 'print', None)", "patches __builtins__"),
        ("get_ipython().set_custom_exc((AssertionError,), h)", "an IPython exception handler"),
        ("get_ipython().input_transformers_cleanup.append(f)", "an IPython input transformer"),
        ("import sys\nx = sys._getframe(1).f_locals['case']", "reads the caller's stack frame"),
        ("import torch\ntorch.Tensor.__eq__ = lambda a, b: True", "patches torch.Tensor.__eq__"),
        ("import torch\nclass T(torch.Tensor):\n    pass", "subclasses torch.Tensor"),
        ("class Yes(int):\n    def __eq__(self, other):\n        return True", "defines __eq__"),
        ("from ptqlib.classroom.checkers import qparams_cases", "imports ptqlib.classroom"),
        (
            "from ptqlib.classroom.checkers.fp32_baseline import _hardest",
            "imports ptqlib.classroom",
        ),
        ("import ptqlib.classroom.collect", "imports ptqlib.classroom.collect"),
        ("open('/proc/1/cmdline').read()", "reads /proc"),
        ("import os\nos.environ['PTQLIB_GRADING_DIR']", "touches the grading folder"),
        ("text = open('notebooks/02_quantization_math.ipynb').read()", "opens a notebook file"),
        ("import subprocess\nsubprocess.Popen(['sleep', '9'])", "starts or signals processes"),
        ("import os\nos.fork()", "starts or signals processes (os.fork)"),
        ("exec(bytes.fromhex('7072696e74').decode())", "hides what it runs (exec)"),
        ("import sys\nm = sys.modules['ptqlib.classroom.collect']", "hides what it runs"),
        ("import importlib\nm = importlib.import_module('x')", "hides what it runs (importlib"),
        ("import gc\nfound = gc.get_objects()", "hides what it runs (gc.get_objects)"),
    ],
)
def test_each_trick_against_a_grader_is_flagged(source, flag):
    flags = notebook_flags(cells_of(source))
    assert any(flag in each for each in flags), flags
    assert all(each.startswith("cell 1: ") for each in flags)


def test_a_variable_named_like_a_module_is_not_a_flag():
    assert notebook_flags(cells_of("signal = 3\nprint(signal.real)\nos = 'linux'")) == []


@pytest.mark.parametrize(
    "cells",
    [
        [
            "from ptqlib.quantization import qparams_from_range",
            "def affine_qparams(a, b, c, d):\n    return qparams_from_range(a, b)",
        ],
        [
            "import ptqlib.quantization as q",
            "def affine_qparams(*a):\n    return q.qparams_from_range(*a)",
        ],
        ["import ptqlib", "def affine_qparams(*a):\n    return ptqlib.qparams_from_range(*a)"],
        [
            "from ptqlib.quantization import *",
            "def affine_qparams(*a):\n    return qparams_from_range(*a)",
        ],
        # through a helper of the notebook
        [
            "from ptqlib.quantization import qparams_from_range as helper_fn",
            "def inner(*a):\n    return helper_fn(*a)",
            "def affine_qparams(*a):\n    return inner(*a)",
        ],
        # the function is ptqlib's itself
        ["from ptqlib.quantization import qparams_from_range as affine_qparams"],
        # a method of a class of the notebook
        [
            "from ptqlib.quantization import qparams_from_range\nclass Tools:\n"
            "    @staticmethod\n    def q(*a):\n        return qparams_from_range(*a)",
            "affine_qparams = Tools.q",
        ],
        # defined inside an if, a try or a with block
        [
            "import ptqlib.quantization as q\nif True:\n"
            "    def affine_qparams(*a):\n        return q.qparams_from_range(*a)",
        ],
        [
            "import ptqlib.quantization as q\ntry:\n    def affine_qparams(*a):\n"
            "        return q.qparams_from_range(*a)\nexcept Exception:\n    pass",
        ],
        # an attribute set on the function afterwards binds no new definition
        [
            "import ptqlib.quantization as q\n"
            "def affine_qparams(*a):\n    return q.qparams_from_range(*a)",
            "affine_qparams.note, (x, *rest) = 'mine', (1, 2)",
        ],
        # a helper bound by := or a for loop
        [
            "import ptqlib.quantization as q\n[helper := q.qparams_from_range]",
            "def affine_qparams(*a):\n    return helper(*a)",
        ],
        [
            "import ptqlib.quantization as q\nfor helper in [q.qparams_from_range]:\n    pass",
            "def affine_qparams(*a):\n    return helper(*a)",
        ],
    ],
)
def test_calling_ptqlibs_answer_is_flagged_however_it_is_imported(cells):
    flags = exercise_flags(cells_of(*cells), QPARAMS, len(cells))
    assert any("qparams_from_range" in flag for flag in flags), flags


def test_the_flags_read_the_definition_above_the_checker_and_name_hiding_code():
    cells = cells_of(
        "def affine_qparams(*a):\n    return eval('1')",
        "check_qparams(affine_qparams)",
        "from ptqlib.quantization import qparams_from_range\n"
        "def affine_qparams(*a):\n    return qparams_from_range(*a)",
    )
    assert exercise_flags(cells, QPARAMS, 1) == ["uses eval (hides what it runs)"]
    assert exercise_flags(cells, QPARAMS, 3) == ["uses ptqlib.quantization.qparams_from_range"]


def test_a_function_of_the_students_own_with_an_answers_name_is_not_flagged():
    cells = cells_of(
        "def qparams_from_range(a, b):\n    return (b - a) / 255, 0",
        "def affine_qparams(a, b, c, d):\n    return qparams_from_range(a, b)",
    )
    assert exercise_flags(cells, QPARAMS, 2) == []


def test_names_looked_up_by_string_are_flagged_as_hiding_what_runs():
    by_getattr = cells_of(
        "import ptqlib.quantization as q",
        "def affine_qparams(*a):\n    return getattr(q, 'qparams_from' + '_range')(*a)",
    )
    assert exercise_flags(by_getattr, QPARAMS, 2) == ["uses getattr (hides what it runs)"]
    by_dict = cells_of(
        "import ptqlib.quantization as q",
        "def affine_qparams(*a):\n    return q.__dict__['qparams_from_range'](*a)",
    )
    assert exercise_flags(by_dict, QPARAMS, 2) == ["uses q.__dict__ (hides what it runs)"]
    # a name put into the notebook by globals() in another cell
    hidden = cells_of("globals().update(helper=print)", "def affine_qparams(*a):\n    helper(*a)")
    assert notebook_flags(hidden) == ["cell 1: hides what it runs (globals)"]
    # a clean def whose code is then swapped for another function's
    swapped = cells_of(
        "def affine_qparams(*a):\n    return 1.0, 0",
        "affine_qparams.__code__ = (lambda *a: (0.5, 0)).__code__",
    )
    assert notebook_flags(swapped) == ["cell 2: patches affine_qparams.__code__"]
    # code run by IPython, which the flags cannot parse
    magics = cells_of(
        "get_ipython().ex('from ptqlib.quantization import qparams_from_range as f')",
        "!python make_helper.py\n%run helper.py\n%timeit 1 + 1",
    )
    assert notebook_flags(magics) == [
        "cell 1: hides what it runs (get_ipython)",
        "cell 2: runs code the flags cannot read (!python)",
        "cell 2: runs code the flags cannot read (%run)",
    ]


def test_a_variable_of_the_function_named_like_a_notebook_value_is_its_own():
    cells = cells_of(
        "import ptqlib.quantization as q\nfor scale in [q.qparams_from_range]:\n    pass",
        "def affine_qparams(a, b, c, d):\n    scale = (b - a) / (d - c)\n    return scale, 0",
    )
    assert exercise_flags(cells, QPARAMS, 2) == []
