"""One definition per exercise, used twice: by the notebook's checker and by the grader.

An :class:`Exercise` says everything about one graded exercise that asks for code::

    QPARAMS = Exercise(
        id="qparams",                     # the checker is check_qparams
        notebook="02_quantization_math",  # the notebook whose cells hold it
        function="affine_qparams",        # the checker cell: check_qparams(affine_qparams)
        cases=qparams_cases,              # () -> the known-answer cases, with hints
        draw=draw_qparams_cases,          # (generator) -> fresh cases of the same kinds
        compare=compare_qparams,          # (case, answer) -> None, or raise WrongAnswer
        answers=("ptqlib.quantization.qparams_from_range",),  # ptqlib's own answer
    )

    def check_qparams(student_fn):
        \"\"\"What the student's function must do (the docstring students read).\"\"\"
        run_exercise(QPARAMS, student_fn)

**In the notebook**, ``check_qparams(affine_qparams)`` runs the student's function on
``cases()`` and prints PASS, NOT ATTEMPTED or the first failing case with its hint; it is the
student's feedback and nothing else.

**In the grader** (``python -m ptqlib grade``) the grader, in its own process, calls
``cases()`` and ``draw(generator)`` with a generator seeded afresh for every notebook, so a
table of answers looked up by input cannot pass. Each :class:`Case` carries its expected
answer, computed by the builder with the exercise's private reference (``_hardest``,
``qparams_from_range``...): that answer never leaves the grader. Only the argument values go
into the student's sandboxed kernel; there, in place of the checker cell, the grader's
collector (:mod:`ptqlib.classroom.collect`) calls the student's function on them exactly as
the checker does (:func:`~ptqlib.classroom.checkers.core.call_case`) and sends back each
result as plain data (:mod:`ptqlib.classroom.plain`). The grader compares them with
``compare``, in its own process. Nothing the kernel prints decides a grade.

Rules for a new exercise (or for reworking one):

- **Arguments are plain data**: tensors, numbers, strings, lists, tuples, dicts, None. An
  exercise whose function takes a model or an ONNX graph keeps a plain description in its
  cases (layer sizes, a seed) and a ``build(*values) -> arguments`` that makes the object;
  the checker and the collector both call it, and the reference sees the built object too.
- **Answers are plain data**: ``compare`` receives what :func:`ptqlib.classroom.plain.decode`
  makes (an exact ``torch.Tensor``, ``int``, ``float``, ``list``, ``tuple``, ``dict``...),
  never the student's own object. Check the dtype where it matters.
- ``prepare(handed_in) -> function`` when the student hands in something other than the
  function the cases call (C source: compile it; an observer class: feed it the batches). It
  runs in the kernel, so it may run the student's code.
- ``draw`` builds cases of the same kinds as ``cases`` (same hints) with values from the
  generator, and keeps every value where a correct answer cannot be ambiguous: no rounding
  ties, no float32/float64 disagreement beyond the tolerance of ``compare``. The tests run
  every notebook's solution on many draws (``tests/test_exercise_protocol.py``).
- ``answers`` names the ptqlib functions that compute the answer: the grader flags a
  student's function that calls them (``uses ptqlib.quantization.qparams_from_range``).
- Add the exercise to ``EXERCISES`` in :mod:`ptqlib.classroom.checkers` and tag the notebook
  cells as :mod:`ptqlib.classroom.cells` says: the skeleton ``exercise``, then the checker
  cell ``check_<id>(<function>)`` tagged ``checker``, then the ``solution``. The grader finds
  the exercise by the checker it calls; nothing in the grader changes.

An :class:`OpenQuestion` (notebook 03's choice of observers) has no right answer: the grader
records that the student's function returned something, as ``answered``, never ``passed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, run_cases


@dataclass(frozen=True)
class Exercise:
    """A graded exercise that asks for code; see the module docstring for each field."""

    id: str
    notebook: str | None  # the notebook's file name without ".ipynb"; None: in none
    function: str
    cases: Callable[[], list[Case]]
    draw: Callable[[torch.Generator], list[Case]]
    compare: Callable[[Case, Any], None]
    answers: tuple[str, ...] = ()
    prepare: Callable[[Any], Callable[..., Any]] | None = None
    build: Callable[..., tuple[Any, ...]] | None = None

    @property
    def checker(self) -> str:
        """The name of the notebook's checker function, ``check_<id>``."""
        return f"check_{self.id}"


@dataclass(frozen=True)
class OpenQuestion:
    """An exercise without a single right answer: ``function()`` returns the student's
    choice, which the notebook's checker evaluates and the grader records as answered."""

    id: str
    notebook: str
    function: str

    @property
    def checker(self) -> str:
        return f"check_{self.id}"


def run_exercise(exercise: Exercise, handed_in: Any) -> None:
    """The notebook's checker: the known-answer cases, PASS or the first failure."""
    run_cases(
        exercise.checker,
        handed_in,
        exercise.cases(),
        exercise.compare,
        prepare=exercise.prepare,
        build=exercise.build,
    )
