"""The ``pgvirt`` command line: builds the parser from the command modules and maps errors to exit
codes (cli/errors.py).  ``pgvirt`` and ``python -m pgvirt`` are this ``entry``."""

from __future__ import annotations

import os
import sys
from typing import Callable

from . import coverage, emulator, hardware, paravirt, run, smt, theorems
from .common import Parser, consoles, width
from .errors import EXIT_BAD, EXIT_INTERRUPTED, UsageError

GROUPS = (theorems, hardware, paravirt, smt, emulator, run, coverage)


def _version() -> str:
    """pgvirt's version and the versions of the tools its answers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"
    return (f"pgvirt {v('pgvirt')} (z3-solver {v('z3-solver')}, unicorn {v('unicorn')}, "
            f"capstone {v('capstone')})")


COMMANDS: dict[str, Callable] = {}


class _Commands:
    """The subparsers action, handing every command the options all of them share."""

    def __init__(self, sub, shared: Parser):
        self._sub, self._shared = sub, shared

    def add_parser(self, name: str, **kw):
        kw.setdefault("parents", [self._shared])
        kw.setdefault("description", kw.get("help"))
        return self._sub.add_parser(name, **kw)


def build_parser() -> Parser:
    p = Parser(prog="pgvirt", description="Popek-Goldberg virtualization conditions for IA-32, checked with Z3.")
    p.add_argument("--version", action="version", version=_version())
    shared = Parser(add_help=False)
    shared.add_argument("--width", type=width, default=None, metavar="COLUMNS",
                        help="text output width (default: the terminal's; piped: lines are not wrapped)")
    sub = p.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    commands = _Commands(sub, shared)
    for group in GROUPS:
        group.register(commands, COMMANDS)
    return p


def main(argv: list[str] | None = None, exit_on_interrupt: bool = False) -> int:
    """Run one command; ``exit_on_interrupt`` (the installed command) leaves the process at
    once after Ctrl-C: tearing down half-built solver state only makes noise, and every file
    pgvirt writes is written whole or not at all."""
    from pgvirt.verify import solver

    solver.interruptible()
    solver.INTERRUPTED = False        # a command begins uninterrupted (tests run several)
    out, err = consoles(None)
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            out, err = consoles(getattr(args, "width", None))
            if not args.command:
                raise UsageError("a command is required: " + ", ".join(COMMANDS))
            rc = COMMANDS[args.command](args, out, err)
            solver.stop_if_interrupted()    # an interrupt a finalizer swallowed still counts
            return rc
        except Exception:
            # Ctrl-C inside a ctypes call comes out as its ArgumentError, inside a library as
            # whatever it made of it: once interrupted, every error is the interrupt.
            if solver.INTERRUPTED:
                raise KeyboardInterrupt from None
            raise
    except UsageError as e:
        print(f"pgvirt: error: {e}", file=sys.stderr)
        return EXIT_BAD
    except KeyError as e:  # unknown profile or form from the model
        msg = e.args[0] if type(e) is KeyError and e.args else str(e)
        print(f"pgvirt: error: {msg}", file=sys.stderr)
        return EXIT_BAD
    except KeyboardInterrupt:
        print("pgvirt: interrupted", file=sys.stderr)
        if exit_on_interrupt:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED


def entry() -> None:
    try:
        rc = main(exit_on_interrupt=True)
    except KeyboardInterrupt:       # before main's own handler is in place (its first imports)
        print("pgvirt: interrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    sys.exit(rc)
