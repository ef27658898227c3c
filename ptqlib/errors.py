"""The one exception ptqlib raises for bad input.

``InputError`` is a ``ValueError``: a value that a user passed (an argument, a file, a
setting) is wrong, and the message names the argument, the bad value and what is expected.
The command line turns exactly these (and ``OSError``) into one line and exit status 2; any
other exception is a bug in ptqlib and keeps its traceback.
"""


class InputError(ValueError):
    """A value given to ptqlib is wrong; the message says which, and what is expected."""
