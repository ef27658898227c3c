"""The checkers of notebook 10: a correct answer passes, a near miss fails."""

import pytest

from ptqlib.classroom.checkers.c_export import (
    REFERENCE_REQUANTIZE_C,
    check_arena_bytes,
    check_requantize_c,
)
from ptqlib.deploy.c_budget import arena_bytes


def test_requantize_checker_and_arena():
    check_requantize_c(REFERENCE_REQUANTIZE_C)
    wrong = REFERENCE_REQUANTIZE_C.replace("(shift - 1)", "shift")
    with pytest.raises(AssertionError):
        check_requantize_c(wrong)
    check_arena_bytes(arena_bytes)
    with pytest.raises(AssertionError):
        check_arena_bytes(lambda sizes, element_bytes: max(sizes) * element_bytes)
