"""``python -m pgvirt`` and the ``pgvirt`` script.

Loading the command line takes a moment (z3, the model, the decoder tables): a Ctrl-C in that
moment ends the command as one during its work does, with one line and exit 130, not with the
traceback of whichever import it interrupted."""

import os
import sys


def entry() -> None:
    try:
        from pgvirt.cli.main import entry as run
    except KeyboardInterrupt:
        print("pgvirt: interrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)     # cli/errors.py EXIT_INTERRUPTED, not imported: the import was cut short
    run()


if __name__ == "__main__":
    entry()
