"""Every exercise of the series is defined once (ptqlib.classroom.checkers.EXERCISES) and that
definition matches the notebooks: the checker cells call exactly the registered exercises, in
order, on the registered function; the solutions pass both the notebook's cases and the
grader's fresh draws, on the grader's path (plain inputs in, plain answers out)."""

import ast
import contextlib
import importlib
import io

import nbformat
import pytest
import torch

from conftest import NOTEBOOKS
from ptqlib.classroom import checkers
from ptqlib.classroom.cells import called_ids, find_exercises
from ptqlib.classroom.checkers import EXERCISES
from ptqlib.classroom.checkers.core import WrongAnswer
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise
from ptqlib.classroom.collect import answer, answer_cases
from ptqlib.classroom.plain import decode, encode
from ptqlib.classroom.submission import notebooks

SEEDS = range(6)
GRADED = [exercise for exercise in EXERCISES if isinstance(exercise, Exercise)]


def requantize_in_float64(acc, multiplier, zero_point, quant_min, quant_max):
    """check_requantize is in no notebook: its solution, written as a student would."""
    scaled = torch.round(acc.to(torch.float64) * multiplier).to(torch.int64)
    return (scaled + zero_point).clamp(quant_min, quant_max)


# The other checkers in no notebook (practice ones), with their solutions written the same way.
def per_channel_scales(weight):
    return weight.abs().amax(dim=1) / 127.5


def int32_bias(bias, input_scale, weight_scale, output_scale):
    return torch.round(bias.double() / (input_scale * weight_scale.double())).to(torch.int32)


def zero_point_correction(weight, input_zero_point):
    return (-input_zero_point * weight.to(torch.int32).sum(dim=1)).to(torch.int32)


PRACTICE = {
    "requantize": requantize_in_float64,
    "per_channel_scales": per_channel_scales,
    "int32_bias": int32_bias,
    "zero_point_correction": zero_point_correction,
}


def test_ids_are_unique_and_each_names_a_checker_of_the_package():
    ids = [exercise.id for exercise in EXERCISES]
    assert len(ids) == len(set(ids))
    for exercise in EXERCISES:
        assert callable(getattr(checkers, exercise.checker)), exercise.checker


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_checker_cells_call_the_registered_exercises_in_order(path):
    notebook = nbformat.read(path, as_version=4)
    registered = notebooks().get(path.stem, [])
    called = [each for cells in find_exercises(notebook) for each in cells.ids]
    assert called == [exercise.id for exercise in registered]
    by_id = {exercise.id: exercise for exercise in registered}
    for cells in find_exercises(notebook):
        skeleton = notebook.cells[cells.skeleton].source
        for each in cells.ids:
            function = by_id[each].function
            assert f"{by_id[each].checker}({function}" in notebook.cells[cells.checker].source
            assert function in defined(skeleton), (path.name, function)


def test_an_exercise_outside_the_notebooks_is_in_none():
    called = set()
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            called.update(called_ids(cell.source))
    for exercise in EXERCISES:
        assert (exercise.id in called) == (exercise.notebook is not None), exercise.id


def defined(source: str) -> set[str]:
    tree = ast.parse(source)
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def functions_of(cell: str) -> dict[str, object]:
    """Each exercise's function as the ``cell`` ("solution" or "skeleton") of its notebook
    defines it, in a namespace holding that notebook's imports."""
    found = {}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        namespace: dict = {}
        first_code = [each.cell_type for each in notebook.cells].index("code")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(notebook.cells[first_code].source, namespace)
        for cells in find_exercises(notebook):
            tree = ast.parse(notebook.cells[getattr(cells, cell)].source)
            kinds = (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
            definitions = [node for node in tree.body if isinstance(node, kinds)]
            exec(compile(ast.Module(definitions, []), path.name, "exec"), namespace)
        for exercise in notebooks().get(path.stem, []):
            found[exercise.id] = namespace[exercise.function]
    return found


@pytest.fixture(scope="module")
def solutions() -> dict[str, object]:
    return {**functions_of("solution"), **PRACTICE}


@pytest.mark.parametrize("exercise", GRADED, ids=lambda exercise: exercise.id)
def test_draws_are_plain_fresh_and_passed_by_the_solution(exercise, solutions, capsys):
    solution = solutions[exercise.id]
    run_exercise(exercise, solution)
    assert capsys.readouterr().out.startswith(f"{exercise.checker}: PASS")
    function = solution if exercise.prepare is None else exercise.prepare(solution)
    inputs = []
    for seed in SEEDS:
        cases = exercise.draw(torch.Generator().manual_seed(seed))
        assert cases, exercise.id
        values = [[value for _, value in case.arguments] for case in cases]
        assert encode(decode(encode(values))) == encode(values)  # plain, and sent as is
        inputs.append(encode(values))
        for case, case_values in zip(cases, values, strict=True):
            kind, got = answer(function, decode(encode(case_values)), exercise.build)
            assert kind == "returned", (case.name, got)
            exercise.compare(case, got)  # raises WrongAnswer on a wrong answer
    assert len(set(inputs)) == len(inputs), "two seeds drew the same inputs"


def test_the_skeletons_are_not_attempted_on_the_graders_path():
    skeletons = functions_of("skeleton")
    for exercise in GRADED:
        if exercise.notebook is None:
            continue
        cases = exercise.draw(torch.Generator().manual_seed(0))
        inputs = [[value for _, value in case.arguments] for case in cases]
        record = answer_cases(exercise, skeletons[exercise.id], inputs)
        assert record == {"status": "answered", "results": [["not attempted"]]}, exercise.id


@pytest.mark.parametrize("exercise", GRADED, ids=lambda exercise: exercise.id)
def test_not_a_number_is_never_right(exercise):
    """NaN compares False with everything: a comparison written "wrong if error > tolerance"
    lets a NaN answer through. Every exercise must fail one, in a tensor or as a number."""
    nan = float("nan")

    def nan_like(value):
        if isinstance(value, torch.Tensor):
            return torch.full_like(value, nan, dtype=torch.float64)
        if isinstance(value, (tuple, list)):
            return type(value)(nan_like(item) for item in value)
        return nan

    for case in exercise.cases():
        if "nan" in repr(case.expected):  # NaN is the right answer (an E4M3 NaN byte)
            continue
        with pytest.raises(WrongAnswer):
            exercise.compare(case, decode(encode(nan_like(case.expected))))


@pytest.mark.parametrize("exercise", GRADED, ids=lambda exercise: exercise.id)
def test_the_names_of_ptqlibs_own_answer_exist(exercise):
    for name in exercise.answers:
        module, _, attribute = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), name
