"""The fast path: the teaching path's integers, computed quickly.

- ``ptqlib.fast.mlp``        ``FastInt8Model``: an INT8 MLP with its constants folded
- ``ptqlib.fast.cnn``        ``FastInt8CNN``: the same for the CNN
- ``ptqlib.fast.profiling``  where an INT8 forward pass spends its time

Each is tested equal, integer for integer, to the teaching path (``ptqlib.int8_model``).
"""
