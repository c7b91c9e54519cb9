"""Exit codes and the usage error every command shares.

0 = everything asked about holds (nothing failed), 1 = a theorem fails or a check found something,
2 = an answer is unknown or the input is bad (one line on stderr, never a traceback),
130 = interrupted (Ctrl-C).
"""

EXIT_OK, EXIT_FAIL, EXIT_BAD, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = ("exit codes: 0 = everything asked about holds, 1 = a theorem fails or a check found "
          "something, 2 = an unknown answer or bad input (one line on stderr), 130 = interrupted")


class UsageError(Exception):
    """Bad input: reported as one line, exit 2."""
