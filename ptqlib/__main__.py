import gc

from ptqlib.app.cli import main

status = main()
# The command is done. At exit the interpreter tears down torch's thousands of objects,
# and its cyclic garbage collector walks them all again (0.4 s here, a fifth of a short
# command): freezing them skips those walks. Everything is still freed and every exit
# handler still runs.
gc.freeze()
raise SystemExit(status)
