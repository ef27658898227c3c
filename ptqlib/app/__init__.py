"""The command line and the whole pipeline in one call.

- ``ptqlib.app.cli``       ``python -m ptqlib``: the parser and ``main``
- ``ptqlib.app.commands``  what each command does
- ``ptqlib.app.pipeline``  train, calibrate, convert and compare in one call; quantizing a
  checkpoint
"""
