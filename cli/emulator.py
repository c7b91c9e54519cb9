"""``pgvirt replay`` and ``pgvirt crosscheck``: the emulator's commands.

The witnesses come from ``pgvirt.verify`` and the runs from ``pgvirt.emulator``; the two meet in
``pgvirt.api.replay_run`` (``pgvirt.emulator`` imports only ``pgvirt.model``).

Exit codes as everywhere: 0 = nothing wrong (no mismatch, nothing unexplained), 1 = a replay
mismatches or a cross-check disagreement is unexplained, 2 = bad input (one line on stderr).
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.text import Text

from pgvirt.report.emulator import crosscheck_text, replay_table

from .common import add_profile, positive_int, progress, warn
from .errors import EXIT_FAIL, EXIT_OK, UsageError


def _seconds(text: str) -> float:
    import argparse
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


MAX_SAMPLES = 1_000_000


def _samples(text: str) -> int:
    import argparse

    v = positive_int(text)
    if v > MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"at most {MAX_SAMPLES:,} states per form (got {v:,}); "
                                         "run longer sweeps as several seeds")
    return v


def _int0(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        import argparse
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


# --- replay -----------------------------------------------------------------------------------------
def cmd_replay(args, out: Console, err: Console) -> int:
    from pgvirt.api import ReplayRequestError, replay_run
    from pgvirt.emulator import replay as R
    from pgvirt.model import isa, profiles

    if args.oracle:                   # Bochs, QEMU, several: cli/oracles.py
        from .oracles import cmd_replay as on_oracles
        return on_oracles(args, out, err)
    for n in args.names:
        isa.get(n)                      # KeyError -> one line, exit 2
    profile = args.profile
    if args.controls:
        from .theorems import load_controls
        profile = load_controls(args.profile, args.controls)
    show = args.format == "text" and err.is_terminal and not args.state
    hardware = profiles.get(args.profile).vm is not None
    advance, close = progress(err, None, "holes" if hardware else "counterexamples", show)
    try:
        run = replay_run(profile, args.names or None, state=args.state, jobs=args.jobs,
                         timeout_ms=args.timeout_ms, run_seconds=args.run_seconds, progress=advance)
    except (R.ReplayInputError, ReplayRequestError) as e:
        raise UsageError(str(e)) from None
    finally:
        close()
    counts = run.counts
    if args.format == "json":
        print(json.dumps(run.as_json(), indent=2, default=str))
    else:
        for r in run.replays:
            out.print(replay_table(r, color=out.color_system is not None) if not isinstance(r, dict) else
                      Text(f"{r['name']}: {r['outcome']} - {r['note']}",
                           style="cyan" if r["outcome"] == "model-only" else "bold red"))
        style = "green" if not counts["mismatch"] else "bold red"
        only = f", {counts['model-only']} model-only" if "model-only" in counts else ""
        out.print(Text(f"[{run.profile}] {len(run.replays)} replays: {counts['confirmed']} confirmed, "
                       f"{counts['emulator-deviation']} emulator-deviation, {counts['mismatch']} "
                       f"mismatch{only}  [replay {run.replay_seconds:.2f} s, total {run.seconds:.1f} s]",
                       style=style), soft_wrap=True)
    return EXIT_FAIL if counts["mismatch"] else EXIT_OK


# --- crosscheck -------------------------------------------------------------------------------------
def cmd_crosscheck(args, out: Console, err: Console) -> int:
    from pgvirt.model import isa

    from pgvirt.emulator import crosscheck as C

    if args.oracle or args.cluster:   # Bochs, QEMU, several, or on Dask: cli/oracles.py
        from .oracles import cmd_crosscheck as on_oracles
        return on_oracles(args, out, err)
    for n in args.forms:
        isa.get(n)
    names = args.forms or [f.name for f in isa.FORMS]
    advance, close = progress(err, len(names), "cross-checking", args.format == "text" and err.is_terminal)
    try:
        total = args.samples * len(names)
        if total > 100_000:   # say up front what a long sweep costs (about 1,600 checks/s per core)
            warn(err, f"{total:,} checks: about {total / (1600 * (args.jobs or 2)) / 60:.0f} min")
        rep = C.crosscheck(names, args.samples, args.seed, args.jobs, advance)
    finally:
        close()
    if args.format == "json":
        print(json.dumps(rep.as_json(), indent=2, default=str))
    else:
        crosscheck_text(out, rep, args.samples, args.seed)
    return EXIT_FAIL if rep.unexplained else EXIT_OK


# --- registration -----------------------------------------------------------------------------------
def register(sub, commands) -> None:
    r = sub.add_parser("replay", help="replay Theorem-1 counterexamples on Unicorn")
    add_profile(r)
    r.add_argument("names", nargs="*", metavar="NAME", help="only these forms")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.add_argument("--controls", metavar="FILE",
                   help="vtx/svm: the VMCS controls / VMCB intercepts (JSON, as verify --controls): "
                        "their holes replayed on Unicorn, or with --oracle bochs the exits on Bochs")
    r.add_argument("--state", metavar="FILE.json",
                   help="replay the pair(s) in this file instead of solving for counterexamples")
    r.add_argument("--timeout-ms", type=positive_int, default=20_000,
                   help="per solver query (default 20000)")
    r.add_argument("--jobs", type=positive_int, default=None, help="solver processes (default: cores)")
    r.add_argument("--run-seconds", type=_seconds, default=2.0,
                   help="wall-clock bound of one emulator run (default 2)")
    r.add_argument("--oracle", metavar="unicorn|bochs|qemu|all",
                   help="replay on these oracles (comma-separated), each with witnesses steered "
                        "clear of its known deviations (default: Unicorn, unsteered)")
    r.add_argument("--samples", type=_samples, default=20,
                   help="vtx: drawn non-root states per form (default 20)")
    r.add_argument("--seed", type=_int0, default=0, help="vtx: the states' seed (default 0)")
    r.add_argument("--witnesses", metavar="CONTROLS.json",
                   help="vtx: also replay the witnesses of 'pgvirt controls --profile vtx --format json'")
    commands["replay"] = cmd_replay

    c = sub.add_parser("crosscheck", help="cross-check the model against Unicorn on random states")
    c.add_argument("forms", nargs="*", metavar="FORM", help="only these forms")
    c.add_argument("--samples", type=_samples, default=200,
                   help=f"states per form (default 200, at most {MAX_SAMPLES:,})")
    c.add_argument("--seed", type=_int0, default=0)
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.add_argument("--jobs", type=positive_int, default=2, help="worker processes (default 2)")
    c.add_argument("--oracle", metavar="unicorn|bochs|qemu|all",
                   help="check against these oracles (comma-separated) and each other")
    c.add_argument("--cluster", metavar="local|tcp://HOST:PORT",
                   help="run the sweep on Dask: a LocalCluster of --jobs workers, or a scheduler")
    commands["crosscheck"] = cmd_crosscheck
