"""The tools of a class: exercises, their checkers, and grading handed-in notebooks.

- ``ptqlib.classroom.checkers``      each exercise defined once
  (:mod:`ptqlib.classroom.checkers.exercise`: the protocol a new exercise follows) and its
  known-answer checker, one module a notebook (``check_qparams(my_function)`` prints PASS,
  NOT ATTEMPTED or a hint); ``EXERCISES`` lists them all
- ``ptqlib.classroom.cells``         which notebook cells are exercises, checkers and
  solutions (``make student`` and ``grade``)
- ``ptqlib.classroom.grade``         ``python -m ptqlib grade``: one outcome per exercise,
  decided from the answers in the grader's own process; ``grade_report`` its CSV, table and
  JSON; ``submission`` reads a hand-in and finds its exercises; ``flags`` reads its code
- ``ptqlib.classroom.sandbox``       one notebook in bubblewrap, with limits; inside it
  ``runner`` runs the cells and ``collect`` calls the student's function on the inputs;
  ``plain`` is the only data that crosses

The core of ptqlib never imports this package: it teaches with the library, not the
other way round.
"""
