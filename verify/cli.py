"""The ``pgvirt`` command line: argument parsing and exit codes only; the work lives elsewhere.

Exit codes: 0 = every theorem asked about holds (or nothing failed), 1 = a theorem fails or a
check found something, 2 = an answer is unknown or the input is bad.  Errors are one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

from rich.console import Console

EXIT_OK, EXIT_FAIL, EXIT_BAD = 0, 1, 2


class UsageError(Exception):
    """Bad input: reported as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(message)


def positive_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def output_file(text: str) -> str:
    """A report file to write: its directory must exist (checked before any solving)."""
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"no such directory: {parent}")
    return text


def _profiles(args) -> list[str]:
    from pgvirt.model import profiles

    if getattr(args, "all_profiles", False):
        return list(profiles.PROFILES)
    if not args.profile:
        raise UsageError("give --profile NAME or --all-profiles")
    profiles.get(args.profile)
    return [args.profile]


def _progress(console: Console, total: int, label: str, enabled: bool):
    """A rich progress bar on stderr for long work; returns (advance, close)."""
    if not enabled:
        return (lambda name: None), (lambda: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)
    task = prog.add_task(label, total=total)
    prog.start()
    return (lambda name: prog.advance(task)), prog.stop


def _classify_profiles(names: list[str], args, err: Console):
    from pgvirt.model import isa
    from pgvirt.verify.popek_goldberg import classify_many

    forms = getattr(args, "forms", None) or None
    if forms:
        for f in forms:
            try:
                isa.get(f)
            except KeyError as e:
                raise UsageError(str(e.args[0])) from None
    total = len(forms or isa.FORMS) * len(names)
    advance, close = _progress(err, total, "solving", args.format == "text" and err.is_terminal)
    try:
        res = classify_many(names, forms, jobs=args.jobs, timeout_ms=args.timeout_ms, progress=advance)
        return [(p, res[p]) for p in names]
    finally:
        close()


def cmd_classify(args, out: Console, err: Console) -> int:
    from . import report

    names = _profiles(args)
    t0 = time.perf_counter()
    per = _classify_profiles(names, args, err)
    if args.format == "json":
        doc = report.classify_json(per[0][0], per[0][1]) if len(per) == 1 else \
            {"profiles": [report.classify_json(p, r) for p, r in per]}
        print(json.dumps(doc, indent=2))
    else:
        for p, r in per:
            out.print(report.classify_table(p, r))
        out.print(report.summary(per, time.perf_counter() - t0))
    unknown = any(c[k] is None for _, r in per for c in r for k in ("privileged", "sensitive"))
    return EXIT_BAD if unknown else EXIT_OK


def cmd_verify(args, out: Console, err: Console) -> int:
    from . import report
    from .popek_goldberg import theorem

    names = _profiles(args)
    t0 = time.perf_counter()
    per = _classify_profiles(names, args, err)
    if args.format == "json":
        print(json.dumps(report.verify_json(per), indent=2))
    else:
        report.verify_text(out, per)
        out.print(report.summary(per, time.perf_counter() - t0))
    if args.junit or args.sarif:
        from .ci_reports import write_verify_reports
        try:
            write_verify_reports(per, args.junit, args.sarif)
        except OSError as e:
            raise UsageError(f"cannot write report {e.filename}: {e.strerror}") from None
    verdicts = [theorem(n, r).verdict for _, r in per for n in ("1", "3")]
    if "unknown" in verdicts:
        return EXIT_BAD
    return EXIT_FAIL if "fails" in verdicts else EXIT_OK


def _add_solver_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--timeout-ms", type=positive_int, default=20_000,
                   help="per solver query; an answer past it is UNKNOWN (default 20000)")
    p.add_argument("--jobs", type=positive_int, default=None, help="worker processes (default: cores)")


COMMANDS: dict[str, Callable] = {}


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


def build_parser() -> Parser:
    p = Parser(prog="pgvirt", description="Popek-Goldberg virtualization conditions for IA-32, checked with Z3.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", parser_class=Parser)

    c = sub.add_parser("classify", help="every Popek-Goldberg class of every instruction form")
    c.add_argument("--profile")
    c.add_argument("--all-profiles", action="store_true")
    c.add_argument("forms", nargs="*", metavar="FORM", help="only these forms")
    _add_solver_opts(c)
    COMMANDS["classify"] = cmd_classify

    v = sub.add_parser("verify", help="Theorem 1 and 3 verdicts with violations and witnesses")
    g = v.add_mutually_exclusive_group()
    g.add_argument("--profile")
    g.add_argument("--all-profiles", action="store_true")
    _add_solver_opts(v)
    v.add_argument("--junit", metavar="FILE", type=output_file,
                   help="also write JUnit XML: one test case per profile x theorem x form")
    v.add_argument("--sarif", metavar="FILE", type=output_file,
                   help="also write SARIF 2.1.0: one rule per violating form")
    COMMANDS["verify"] = cmd_verify

    for register in _extensions():
        register(sub, COMMANDS)
    return p


def _extensions():
    """verify/'s further subcommands, then those other packages declare in the
    ``pgvirt.commands`` entry-point group (replay and crosscheck, from pgvirt.emulator)."""
    from importlib.metadata import entry_points

    from . import cli_paravirt, cli_reports
    found = sorted(entry_points(group="pgvirt.commands"), key=lambda ep: ep.name)
    return [cli_paravirt.register, cli_reports.register] + [ep.load() for ep in found]


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


if __name__ == "__main__":
    entry()
