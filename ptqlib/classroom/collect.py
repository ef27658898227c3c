"""The grader's side of a checker cell, inside the student's kernel: run the student's function
on the inputs the grader drew, and write down what it returned, as plain data.

When ``python -m ptqlib grade`` runs a notebook, each checker cell is replaced by::

    __import__("ptqlib.classroom.collect", fromlist=["collect"]).collect(
        "qparams", lambda: affine_qparams
    )

:func:`collect` reads the exercise's inputs from ``$PTQLIB_GRADING_DIR/in/inputs.json`` (the
argument values of every case, no answers), calls the student's function on each exactly as
the notebook's checker does (:func:`~ptqlib.classroom.checkers.core.call_case`), and writes
``$PTQLIB_GRADING_DIR/work/answers/<id>.json``: the function's result for every case, or the
exception it raised. It decides nothing: the grader compares, in its own process.

Everything here runs in the student's process, so a student can change any of it; what they
cannot do is see the expected answers, which never enter the sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptqlib.classroom.checkers import EXERCISES
from ptqlib.classroom.checkers.core import call_case
from ptqlib.classroom.checkers.exercise import Exercise
from ptqlib.classroom.plain import NotPlainData, decode, encode
from ptqlib.classroom.runner import GRADING_DIR_ENV, answers_path

MESSAGE_CHARS = 300  # of an exception's message, kept in an answer


def collector_call(exercise_id: str, function: str) -> str:
    """The source of the cell that collects ``exercise_id``'s answers from ``function``."""
    return (
        f'__import__("ptqlib.classroom.collect", fromlist=["collect"]).collect('
        f'"{exercise_id}", lambda: {function})'
    )


def error_text(error: BaseException) -> str:
    """``Name: message``, the message cut to :data:`MESSAGE_CHARS`."""
    message = str(error)[:MESSAGE_CHARS]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def collect(exercise_id: str, handed_in: Callable[[], Any]) -> None:
    """Write the answers of ``handed_in()`` (the student's function, or what the exercise's
    ``prepare`` takes) for exercise ``exercise_id`` on the grader's inputs."""
    exercise = {each.id: each for each in EXERCISES}[exercise_id]
    try:
        student = handed_in()
    except NameError as error:
        record: dict[str, Any] = {"status": "undefined", "message": error_text(error)}
    else:
        inputs = decode(
            (Path(os.environ[GRADING_DIR_ENV]) / "in" / "inputs.json").read_text("utf-8")
        )
        if isinstance(exercise, Exercise):
            record = answer_cases(exercise, student, inputs[exercise_id])
        else:  # an open question: the choice itself
            record = {"status": "answered", "results": [answer(student, [])]}
    path = answers_path(exercise_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(encode(record), encoding="utf-8")
    partial.replace(path)
    print(f"{exercise.checker}: answers collected for grading")


def answer_cases(exercise: Exercise, student: Any, inputs: list[list[Any]]) -> dict[str, Any]:
    """The record of ``student``'s answers to every case: stops at NotImplementedError."""
    try:
        function = student if exercise.prepare is None else exercise.prepare(student)
    except NotImplementedError:
        return {"status": "answered", "results": [["not attempted"]]}
    except BaseException as error:  # noqa: BLE001 - the student's code may raise anything
        return {"status": "prepare raised", "message": error_text(error)}
    results = []
    for values in inputs:
        result = answer(function, values, exercise.build)
        results.append(result)
        if result[0] == "not attempted":
            break
    return {"status": "answered", "results": results}


def answer(
    function: Callable[..., Any],
    values: list[Any],
    build: Callable[..., tuple[Any, ...]] | None = None,
) -> list[Any]:
    """``["returned", value]``, ``["raised", "Name: message"]``, ``["not attempted"]`` or
    ``["not plain", what]`` for one call of the student's function."""
    try:
        got = call_case(function, values, build)
    except NotImplementedError:
        return ["not attempted"]
    except BaseException as error:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too
        return ["raised", error_text(error)]
    try:
        return ["returned", decode(encode(got))]  # plain types from here on
    except NotPlainData as error:
        return ["not plain", str(error)]
    except BaseException as error:  # noqa: BLE001 - an object whose methods raise
        return ["not plain", f"a {type(got).__name__} that could not be read ({error_text(error)})"]
