"""The ``pgvirt`` command line: builds the parser from the command modules and maps errors to exit
codes (cli/errors.py).  ``pgvirt`` and ``python -m pgvirt`` are this ``entry``."""

from __future__ import annotations

import sys
from typing import Callable

from rich.console import Console

from . import emulator, paravirt, smt, theorems
from .common import Parser
from .errors import EXIT_BAD, UsageError

GROUPS = (theorems, paravirt, smt, emulator)


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


def build_parser() -> Parser:
    p = Parser(prog="pgvirt", description="Popek-Goldberg virtualization conditions for IA-32, checked with Z3.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    for group in GROUPS:
        group.register(sub, COMMANDS)
    return p


def main(argv: list[str] | None = None) -> int:
    out = Console()
    err = Console(stderr=True)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            raise UsageError("a command is required: " + ", ".join(COMMANDS))
        return COMMANDS[args.command](args, out, err)
    except UsageError as e:
        print(f"pgvirt: error: {e}", file=sys.stderr)
        return EXIT_BAD
    except KeyError as e:  # unknown profile or form from the model
        msg = e.args[0] if type(e) is KeyError and e.args else str(e)
        print(f"pgvirt: error: {msg}", file=sys.stderr)
        return EXIT_BAD
    except KeyboardInterrupt:
        print("pgvirt: interrupted", file=sys.stderr)
        return EXIT_BAD


def entry() -> None:
    sys.exit(main())
