"""The machinery every checker shares: a known-answer case, running a student's function
on the cases, and comparing its answers with a message that names the first wrong one.

A checker is a list of :class:`Case` objects, a comparison that raises
:class:`WrongAnswer` when an answer is wrong, and one call of :func:`run_cases`::

    def check_double(student_fn):
        x = torch.tensor([-2, 0, 3])
        cases = [Case("negative and positive integers", (("x", x),), 2 * x, "multiply by 2")]
        run_cases("check_double", student_fn, cases, compare_integers)

:func:`run_cases` prints one ``PASS`` line, or raises ``AssertionError`` naming the first
case that fails: the inputs, the expected answer, what the function returned, and the
case's hint about the usual mistake behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ptqlib.classroom.plain import NotPlainData, decode, encode

# What an answer may be made of (see ptqlib.classroom.plain).
PLAIN_ANSWER = "return numbers, tensors, lists, tuples, dicts or strings"
# Dequantized values may differ by float round-off: allow 1/10,000 of a step.
DEQUANTIZE_TOLERANCE_IN_STEPS = 1e-4


@dataclass(frozen=True)
class Case:
    """One known-answer case: the arguments, the right answer, and a hint if it fails."""

    name: str  # what the case exercises, e.g. "values beyond the range are clamped"
    arguments: tuple[tuple[str, Any], ...]  # (name, value) pairs, passed in this order
    expected: Any
    hint: str


class WrongAnswer(Exception):
    """Raised by the comparisons; turned into an AssertionError that names the case."""


def as_integer(value: Any, what: str) -> int:
    """A Python int from an int or a one-element integer tensor, else a clear error."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            shape = tuple(value.shape)
            raise WrongAnswer(f"{what} should be an integer, got a {value.dtype} tensor {shape}")
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongAnswer(
            f"{what} should be an integer (int), got {value!r} of type {type(value).__name__}; "
            "convert it with int(...)"
        )
    return value


def as_float(value: Any, what: str) -> float:
    """A Python float from a number or a one-element tensor, else a clear error."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise WrongAnswer(f"{what} should be one number, got a tensor {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type(value).__name__
        raise WrongAnswer(f"{what} should be a number, got {value!r} of type {kind}")
    return float(value)


def as_pair(got: Any, names: str) -> Sequence[Any]:
    """``got`` if it is a pair (tuple or list of two), else a clear error naming ``names``."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise WrongAnswer(f"your function should return a pair ({names}), got {got!r}")
    return got


def _check_tensor(got: Any, expected: torch.Tensor, kind: str) -> torch.Tensor:
    """``got`` as a tensor of the expected shape and kind ('integer' or 'float')."""
    if not isinstance(got, torch.Tensor):
        raise WrongAnswer(f"your function should return a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise WrongAnswer(
            f"the shape is {tuple(got.shape)}, expected {tuple(expected.shape)} (as the input)"
        )
    is_integer = not got.is_floating_point() and not got.is_complex() and got.dtype != torch.bool
    if kind == "integer" and not is_integer:
        raise WrongAnswer(
            f"expected an integer tensor, got dtype {got.dtype}; quantized values are integers "
            "(convert with .to(torch.int64) after rounding)"
        )
    if kind == "float" and not got.is_floating_point():
        raise WrongAnswer(f"expected a float tensor, got dtype {got.dtype}")
    return got


def distance_to_tie(values: torch.Tensor) -> torch.Tensor:
    """How far each value is from the nearest x.5, where rounding conventions differ (half to
    even, half up, fixed point). Drawn cases keep every rounded value far from one."""
    fraction = values.double().abs() % 1.0
    return (fraction - 0.5).abs()


def draw_uniform(generator: torch.Generator, low: float, high: float, shape=()) -> torch.Tensor:
    """float64 values uniformly in [low, high)."""
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _first_difference(got: torch.Tensor, expected: torch.Tensor, close: torch.Tensor) -> str:
    index = tuple(int(i) for i in torch.nonzero(~close)[0])
    return (
        f"first difference at index {list(index)}: "
        f"expected {describe(expected[index].item())}, got {describe(got[index].item())}"
    )


def compare_integers(case: Case, got: Any) -> None:
    """An integer tensor equal to ``case.expected``, element by element."""
    got = _check_tensor(got, case.expected, "integer").to(torch.int64)
    same = got == case.expected
    if not bool(same.all()):
        raise WrongAnswer(_first_difference(got, case.expected, same))


def compare_floats(case: Case, got: Any) -> None:
    """A float tensor within 1/10,000 of a step (the case's ``scale`` argument) of the answer."""
    got = _check_tensor(got, case.expected, "float").to(torch.float64)
    expected = case.expected.to(torch.float64)
    scale = dict(case.arguments)["scale"]
    close = (got - expected).abs() <= DEQUANTIZE_TOLERANCE_IN_STEPS * scale
    if not bool(close.all()):
        raise WrongAnswer(_first_difference(got, expected, close))


def compare_close(case: Case, got: Any) -> None:
    """Float results, right to 1e-5 relative (plus 1e-6 absolute, for the zeros)."""
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        got = torch.tensor(float(got), dtype=torch.float64)  # a plain number is fine too
    got = _check_tensor(got, case.expected, "float").to(torch.float64)
    expected = case.expected.to(torch.float64)
    close = (got - expected).abs() <= 1e-5 * expected.abs() + 1e-6
    if not bool(close.all()):
        raise WrongAnswer(_first_difference(got, expected, close))


def named_mistake(
    case: Case, got: Any, mistakes: dict[str, torch.Tensor], dtype: torch.dtype | None, why: str
) -> None:
    """``compare_integers``, naming the mistake an exactly wrong answer reproduces, then the
    dtype check (``dtype`` None: any integer dtype)."""
    try:
        compare_integers(case, got)
    except WrongAnswer as wrong:
        if isinstance(got, torch.Tensor) and got.shape == case.expected.shape:
            for mistake, answer in mistakes.items():
                if not torch.equal(answer, case.expected) and torch.equal(
                    got.to(torch.int64), answer.to(torch.int64)
                ):
                    message = f"{wrong}; your answer is exactly what you get if you {mistake}"
                    raise WrongAnswer(message) from None
        raise
    if dtype is not None and got.dtype != dtype:
        raise WrongAnswer(f"the values are right but the dtype is {got.dtype}: {why}")


def comparing_mistakes(
    dtype: torch.dtype, why: str, mistakes: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
) -> Callable[[Case, Any], None]:
    """An exercise's comparison: :func:`named_mistake` with the mistakes that
    ``mistakes(arguments)`` computes for the case, and the answer's ``dtype`` (``why`` says
    why)."""

    def compare(case: Case, got: Any) -> None:
        named_mistake(case, got, mistakes(dict(case.arguments)), dtype, why)

    return compare


def describe(value: Any) -> str:
    """A short, readable form of an argument or a result (floats to 7 significant digits)."""
    if isinstance(value, torch.Tensor):
        return f"tensor({describe(value.tolist())}, dtype={value.dtype})"
    if isinstance(value, (tuple, list)):
        inside = ", ".join(describe(v) for v in value)
        return f"({inside})" if isinstance(value, tuple) else f"[{inside}]"
    if isinstance(value, float):
        text = f"{value:.7g}"
        return text if any(c in text for c in ".einf") else text + ".0"  # 6.0, not 6
    return repr(value)


def _failure(
    checker: str, number: int, cases: list[Case], case: Case, got: str, problem: str
) -> str:
    arguments = ", ".join(f"{name}={describe(value)}" for name, value in case.arguments)
    return (
        f"{checker}: case {number} of {len(cases)} failed: {case.name}\n"
        f"  called with: {arguments}\n"
        f"  expected:    {describe(case.expected)}\n"
        f"  got:         {got}\n"
        f"  problem:     {problem}\n"
        f"  hint:        {case.hint}"
    )


def fresh_copy(value: Any) -> Any:
    """A deep copy of the tensors in ``value`` (nested in lists, tuples and dicts), so that a
    function that changes its input in place cannot change the case."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(fresh_copy(item) for item in value)
    if isinstance(value, dict):
        return {key: fresh_copy(item) for key, item in value.items()}
    return value


def call_case(
    function: Callable[..., Any],
    values: Sequence[Any],
    build: Callable[..., tuple[Any, ...]] | None = None,
) -> Any:
    """``function`` called on fresh copies of a case's argument values, built into the
    objects it takes first when ``build`` is given (a model from its layer sizes...). The
    notebook's checker and the grader's collector both call a student's function this way."""
    arguments = [fresh_copy(value) for value in values]
    if build is not None:
        arguments = build(*arguments)
    return function(*arguments)


def not_attempted(checker: str) -> None:
    # Two short lines: a notebook's output column shows about 80 characters.
    print(f"{checker}: NOT ATTEMPTED yet")
    print("    (your function raises NotImplementedError): fill in the exercise cell above,")
    print("    run it, then run this cell again")


def run_cases(
    checker: str,
    student_fn: Callable[..., Any],
    cases: list[Case],
    compare: Callable[[Case, Any], None],
    prepare: Callable[[Any], Callable[..., Any]] | None = None,
    build: Callable[..., tuple[Any, ...]] | None = None,
) -> None:
    """Run ``student_fn`` on every case: print PASS, or raise AssertionError on a failure.

    ``prepare`` turns what the student hands in into the function the cases call (their C
    source into a compiled function, their observer class into a function of the batches);
    ``build`` turns a case's plain argument values into what the function takes (see
    :class:`~ptqlib.classroom.checkers.exercise.Exercise`). Each answer is compared as the
    plain data the grader receives (:func:`ptqlib.classroom.plain.encode`).

    A function that raises ``NotImplementedError`` is the notebook's untouched skeleton: one
    line says so and nothing is raised, so a notebook still runs top to bottom before the
    exercise is done."""
    if prepare is None and not callable(student_fn):
        raise TypeError(f"{checker}: expected your function, got {student_fn!r}")
    try:
        function = student_fn if prepare is None else prepare(student_fn)
    except NotImplementedError:
        not_attempted(checker)
        return
    for number, case in enumerate(cases, start=1):
        try:
            got = call_case(function, [value for _, value in case.arguments], build)
        except NotImplementedError:
            not_attempted(checker)
            return
        except Exception as error:
            message = _failure(
                checker,
                number,
                cases,
                case,
                "(nothing: it raised an exception)",
                f"your function raised {type(error).__name__}: {error}",
            )
            raise AssertionError(message) from error
        try:
            compare(case, decode(encode(got)))
        except NotPlainData as error:
            problem = f"your function returned {error}: {PLAIN_ANSWER}"
            raise AssertionError(_failure(checker, number, cases, case, "?", problem)) from None
        except WrongAnswer as wrong:
            message = _failure(checker, number, cases, case, describe(got), str(wrong))
            raise AssertionError(message) from None
    print(f"{checker}: PASS ({len(cases)} cases)")
