"""The command line, the whole pipeline in one call, and the tools of a class.

- ``ptqlib.app.cli``           ``python -m ptqlib``: the parser and ``main``
- ``ptqlib.app.commands``      what each command does
- ``ptqlib.app.pipeline``      train, calibrate, convert and compare in one call
- ``ptqlib.app.quantize``      one FP32 checkpoint in, one INT8 checkpoint out (``quantize``):
  one settings object, every check before any work, one metadata schema
- ``ptqlib.app.exercises``     which notebook cells are exercises, checkers and solutions
  (``make student`` and ``grade``)
- ``ptqlib.app.grade``         ``grade``: run handed-in notebooks, one outcome per exercise;
  ``ptqlib.app.grade_report`` its CSV, table and JSON
"""
