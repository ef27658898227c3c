"""Checker for notebook 03's exercise 2: the exact L2 error of a candidate histogram range.

The function a student writes: ``l2_error(counts, bin_width, first_bin, last_bin, levels)
-> float``. The histogram has ``len(counts)`` bins; bin j covers ``[j w, (j + 1) w)`` with
``w = bin_width``, and its values are taken as spread evenly over it (density
``count / w``). The candidate range is ``[first_bin w, (last_bin + 1) w)``, cut into
``levels`` equal cells; every value is represented by the centre of its cell, and values
outside the range by the centre of the end cell nearest to them (that is the clipping
error). The error is ``sum over the pieces [b, e] of a bin that lie in one cell of
density * ((e - c)^3 - (b - c)^3) / 3``, ``c`` that cell's centre: the integral of the
squared distance to the centre.

torch.ao's ``HistogramObserver`` scores its candidate ranges with this error, and
:func:`ptqlib.observers.l2_search.quantization_error` ports its code; the reference below is
written out piece by piece instead, in float64, and the tests compare the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ptqlib.classroom.checkers.core import Case, WrongAnswer, as_float, draw_uniform
from ptqlib.classroom.checkers.exercise import Exercise, run_exercise

# float32 histograms and float64 sums: a right answer is within a few parts in a million.
RELATIVE_TOLERANCE = 1e-4


def _l2_error_reference(
    counts: torch.Tensor, bin_width: float, first_bin: int, last_bin: int, levels: int
) -> float:
    """The exact L2 error of quantizing the histogram ``counts`` onto the bins
    ``first_bin..last_bin`` with ``levels`` cells (see the module docstring)."""
    start = first_bin * bin_width
    cell = (last_bin - first_bin + 1) * bin_width / levels
    inner_edges = [start + i * cell for i in range(1, levels)]
    total = 0.0
    for index, count in enumerate(counts.double().tolist()):
        if count == 0.0:
            continue
        density = count / bin_width
        begin, end = index * bin_width, (index + 1) * bin_width
        cuts = [begin] + [edge for edge in inner_edges if begin < edge < end] + [end]
        for low, high in zip(cuts, cuts[1:], strict=False):
            which = min(max(math.floor(((low + high) / 2 - start) / cell), 0), levels - 1)
            centre = start + (which + 0.5) * cell
            total += density * ((high - centre) ** 3 - (low - centre) ** 3) / 3
    return total


HINT_PIECES = (
    "cut every bin where a cell edge crosses it; a piece [b, e] in the cell with centre c adds "
    "(count / bin_width) * ((e - c)**3 - (b - c)**3) / 3"
)
HINT_CLIPPING = (
    "values below first_bin belong to the first cell and values above last_bin to the last "
    "one: measure them from the centre of that end cell (the clipping error)"
)
HINT_WIDE_BINS = (
    "a bin wider than a cell spans several cells: it contributes one piece per cell, each "
    "measured from its own cell's centre"
)
HINT_UNITS = (
    "positions are in the units of the bins: bin j covers [j * bin_width, (j + 1) * "
    "bin_width), the range starts at first_bin * bin_width, and the density is count / "
    "bin_width"
)


def _l2_case(
    name: str,
    counts: list[float] | torch.Tensor,
    bin_width: float,
    first_bin: int,
    last_bin: int,
    levels: int,
    hint: str,
) -> Case:
    counts = torch.as_tensor(counts, dtype=torch.float32)
    arguments = (
        ("counts", counts),
        ("bin_width", bin_width),
        ("first_bin", first_bin),
        ("last_bin", last_bin),
        ("levels", levels),
    )
    expected = _l2_error_reference(counts, bin_width, first_bin, last_bin, levels)
    return Case(name, arguments, expected, hint)


def l2_error_cases() -> list[Case]:
    """Section 2's histogram whole, then clipped at one and both ends, wide bins, other units."""
    example = [2.0, 6.0, 30.0, 40.0, 14.0, 5.0, 2.0, 1.0]
    table = [
        ("the whole histogram, 4 cells of two bins", example, 1.0, 0, 7, 4, HINT_PIECES),
        (
            "section 2's example: bins 0..6 kept, the top one clipped",
            example,
            1.0,
            0,
            6,
            4,
            HINT_CLIPPING,
        ),
        ("bins 2..5 kept: values clipped at both ends", example, 1.0, 2, 5, 4, HINT_CLIPPING),
        (
            "2 bins kept, 8 cells: every bin spans 4 cells",
            [0.0, 5.0, 9.0, 3.0, 0.0, 0.0],
            1.0,
            1,
            2,
            8,
            HINT_WIDE_BINS,
        ),
        (
            "bins of width 0.25, some empty, 3 cells",
            [0.0, 0.0, 10.0, 0.0, 20.0, 0.0, 1.0, 4.0, 0.0, 2.0],
            0.25,
            1,
            8,
            3,
            HINT_UNITS,
        ),
    ]
    return [_l2_case(*row) for row in table]


def draw_l2_error_cases(generator: torch.Generator) -> list[Case]:
    """Random histograms (some bins empty), bin widths, ranges and numbers of cells."""
    cases = []
    for hint in (HINT_PIECES, HINT_CLIPPING, HINT_UNITS):
        bins = int(torch.randint(6, 40, (), generator=generator))
        counts = torch.randint(0, 50, (bins,), generator=generator).float()
        counts[torch.rand(bins, generator=generator) < 0.3] = 0.0
        counts[0] += 1.0  # never an empty histogram
        first_bin = int(torch.randint(0, bins // 2, (), generator=generator))
        last_bin = int(torch.randint(first_bin, bins, (), generator=generator))
        levels = int(torch.tensor([2, 3, 4, 8, 16])[torch.randint(5, (), generator=generator)])
        bin_width = round(float(draw_uniform(generator, 0.05, 2.0)), 3)
        name = f"a random histogram of {bins} bins, bins {first_bin}..{last_bin}, {levels} cells"
        cases.append(_l2_case(name, counts, bin_width, first_bin, last_bin, levels, hint))
    return cases


def _compare_error(case: Case, got: Any) -> None:
    error = as_float(got, "the L2 error")
    expected = case.expected
    # "not <=": a NaN answer compares False with everything and must fail.
    if not abs(error - expected) <= RELATIVE_TOLERANCE * max(abs(expected), 1e-12):
        raise WrongAnswer(f"the error is {error:.7g}, expected {expected:.7g}")


def check_l2_error(student_fn: Callable[..., Any]) -> None:
    """Check ``student_fn(counts, bin_width, first_bin, last_bin, levels) -> float``.

    ``counts`` a float32 tensor (the histogram), ``bin_width`` a float, ``first_bin`` and
    ``last_bin`` the candidate range's first and last bin (inclusive), ``levels`` the number
    of quantization cells. The answer, the exact L2 error of the module docstring, is compared
    to a relative tolerance of 1e-4.
    """
    run_exercise(L2_ERROR, student_fn)


L2_ERROR = Exercise(
    id="l2_error",
    notebook="03_observers_and_calibration",
    function="l2_error",
    cases=l2_error_cases,
    draw=draw_l2_error_cases,
    compare=_compare_error,
    answers=("ptqlib.observers.l2_search.quantization_error",),
)
