"""What every command module uses: the argument parser that fails in one line (with the exit codes
in every ``--help``), argument types, the one ``--profile`` convention, the consoles and the
progress bar."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.text import Text

from .errors import EPILOG, UsageError

DEFAULT_PROFILE = "pentium"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit 2, and whose help ends with the exit
    codes."""

    def __init__(self, *args, **kw):
        kw.setdefault("epilog", EPILOG)
        super().__init__(*args, **kw)

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
    """A file to write: checked to be writable before any solving starts."""
    from pgvirt.model.files import InputError, check_writable

    try:
        check_writable(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def profile_name(text: str) -> str:
    from pgvirt.model import profiles

    if text not in profiles.PROFILES:
        raise argparse.ArgumentTypeError(f"unknown profile {text!r} (known: {', '.join(profiles.PROFILES)})")
    return text


def add_profile(p: argparse.ArgumentParser, *, all_profiles: bool = False, manifest: bool = False) -> None:
    """The ``--profile`` option every command shares: the same choices, help and default rule
    (``pentium``; check-patch: the profile the manifest was patched for)."""
    from pgvirt.model import profiles

    names = list(profiles.PROFILES)
    default = "the manifest's" if manifest else DEFAULT_PROFILE
    known = "; ".join(f"{n}: {profiles.PROFILES[n].description}" for n in names)
    target = p.add_mutually_exclusive_group() if all_profiles else p
    target.add_argument("--profile", type=profile_name, choices=names, default=None if manifest else DEFAULT_PROFILE,
                        metavar="{" + ",".join(names) + "}",
                        help=f"the processor and the host settings its monitor imposes (default: {default}). {known}")
    if all_profiles:
        target.add_argument("--all-profiles", action="store_true", help="every profile, one after another")


def profile_names(args) -> list[str]:
    from pgvirt.model import profiles

    if getattr(args, "all_profiles", False):
        return list(profiles.PROFILES)
    return [args.profile]


def width(text: str) -> int:
    v = positive_int(text)
    if v < 40:
        raise argparse.ArgumentTypeError(f"too narrow to print tables: {text} (at least 40)")
    return v


# Lines of a report that is piped or redirected are as long as their content: CI logs and grep
# read them whole, and wrapping at an imagined 80 columns cut cells mid-word.
UNWRAPPED = 10_000


def consoles(width: int | None) -> tuple[Console, Console]:
    """(stdout, stderr) consoles: ``width`` if given, else the terminal's, else unwrapped."""
    import sys

    def make(stream, stderr: bool) -> Console:
        w = width or (None if stream.isatty() else UNWRAPPED)
        return Console(stderr=stderr, width=w, soft_wrap=w == UNWRAPPED)
    return make(sys.stdout, False), make(sys.stderr, True)


def progress(console: Console, total: int, label: str, enabled: bool):
    """A rich progress bar on stderr for long work; returns (advance, close)."""
    if not enabled:
        return (lambda name: None), (lambda: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)
    task = prog.add_task(label, total=total)
    prog.start()
    return (lambda name: prog.advance(task)), prog.stop


def warn(err: Console, message: str) -> None:
    """A warning on stderr: one line, however long (never wrapped)."""
    err.print(Text(f"pgvirt: warning: {message}", style="yellow"), soft_wrap=True)
