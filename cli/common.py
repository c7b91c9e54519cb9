"""What every command module uses: the argument parser that fails in one line, argument types,
the profile options and the progress bar."""

from __future__ import annotations

import argparse
import os

from rich.console import Console

from .errors import UsageError


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


def profile_names(args) -> list[str]:
    from pgvirt.model import profiles

    if getattr(args, "all_profiles", False):
        return list(profiles.PROFILES)
    if not args.profile:
        raise UsageError("give --profile NAME or --all-profiles")
    profiles.get(args.profile)
    return [args.profile]


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
