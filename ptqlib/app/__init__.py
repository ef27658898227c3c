"""The command line and the whole pipeline in one call.

- ``ptqlib.app.cli``           ``python -m ptqlib``: the parser and ``main``
- ``ptqlib.app.commands``      what each command does
- ``ptqlib.app.c_commands``    ``evaluate`` and ``export`` for C directories and firmware
- ``ptqlib.app.pipeline``      train, calibrate, convert and compare in one call
- ``ptqlib.app.quantize``      one FP32 checkpoint in, one INT8 checkpoint out (``quantize``):
  one settings object, every check before any work, one metadata schema
"""
