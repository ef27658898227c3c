"""The fast path: the teaching path's integers, computed quickly.

- ``ptqlib.fast.model``      ``FastInt8Model``: any INT8 model (MLP or CNN) with its constants
  folded; one class, following the teaching model's state
- ``ptqlib.fast.folding``    the requantization folded into one multiply-add
- ``ptqlib.fast.conv``      convolutions channels last, max-pool before requantizing
- ``ptqlib.fast.profiling``  where an INT8 forward pass spends its time

The parity matrix (``tests/test_parity_matrix.py``) checks it equal, integer for integer, to
the teaching path (``ptqlib.int8_model``) in every mode it accepts.
"""

from ptqlib.fast.model import FastInt8Model

__all__ = ["FastInt8Model"]
