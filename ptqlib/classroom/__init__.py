"""The tools of a class: exercises, their checkers, and grading handed-in notebooks.

- ``ptqlib.classroom.checkers``      known-answer checks of a student's code, one module a
  notebook (``check_qparams(my_function)`` prints PASS, NOT ATTEMPTED or a hint)
- ``ptqlib.classroom.exercises``     which notebook cells are exercises, checkers and solutions
  (``make student`` and ``grade``)
- ``ptqlib.classroom.grade``         ``python -m ptqlib grade``: run handed-in notebooks, one
  outcome per exercise; ``ptqlib.classroom.grade_report`` its CSV, table and JSON

The core of ptqlib never imports this package: it teaches with the library, not the
other way round.
"""
