"""``pgvirt replay`` and ``pgvirt crosscheck``: the emulator's commands.

This is the command layer: it may ask ``pgvirt.verify`` for witnesses (classification and the
counterexample query) and hands the counterexample criterion to the replay; the rest of
``pgvirt.emulator`` imports only ``pgvirt.model``.

Exit codes as everywhere: 0 = nothing wrong (no mismatch, nothing unexplained), 1 = a replay
mismatches or a cross-check disagreement is unexplained, 2 = bad input (one line on stderr).
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.text import Text

from pgvirt.report.emulator import crosscheck_text, replay_table

from .common import positive_int, progress
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


def _int0(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        import argparse
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


# --- replay -----------------------------------------------------------------------------------------
def cmd_replay(args, out: Console, err: Console) -> int:
    from pgvirt.model import isa, profiles
    from pgvirt.verify import counterexample as cx

    from pgvirt.emulator import replay as R

    if not args.profile:
        raise UsageError("give --profile NAME")
    profile = profiles.get(args.profile)
    for n in args.names:
        isa.get(n)                      # KeyError -> one line, exit 2
    t0 = time.perf_counter()
    entries: list[tuple[str, dict | None, str]] = []      # (form, witness, note when none)
    if args.state:
        try:
            pairs = R.load_pairs(args.state, profile, args.names or None)
        except R.ReplayInputError as e:
            raise UsageError(str(e)) from None
        if args.names:
            pairs = [(n, w) for n, w in pairs if n in args.names]
            if not pairs:
                raise UsageError(f"{args.state} holds no pair for {', '.join(args.names)}")
        entries = [(n, w, "") for n, w in pairs]
        strict = True
    else:
        strict = False
        show = args.format == "text" and err.is_terminal
        viol, undecided = cx.violations(profile, args.names or None, args.jobs, args.timeout_ms)
        if args.names:
            bad = [n for n in args.names if n not in viol]
            if bad:
                why = "undecided" if set(bad) <= set(undecided) else "not a Theorem-1 violation"
                raise UsageError(f"{', '.join(bad)}: {why} under {profile.name} (nothing to replay)")
        advance, close = progress(err, len(viol), "counterexamples", show)
        try:
            found = cx.find_many(viol, profile, args.jobs, args.timeout_ms, advance)
        finally:
            close()
        entries = [(f["name"], f["witness"], f["note"]) for f in found]
    replayer = R.Replayer(seconds=args.run_seconds)
    reps = []
    t1 = time.perf_counter()
    for name, w, note in entries:
        if w is None:
            reps.append(_no_witness(name, profile.name, note))
            continue
        try:
            reps.append(replayer.replay(name, w, cx.criterion_concrete, profile.name, strict=strict))
        except R.ReplayInputError as e:
            raise UsageError(str(e)) from None
    replay_s = time.perf_counter() - t1
    docs = [r if isinstance(r, dict) else r.as_json() for r in reps]
    counts = {o: sum(d["outcome"] == o for d in docs) for o in R.OUTCOMES}
    if args.format == "json":
        print(json.dumps({"profile": profile.name, "replays": docs, "counts": counts,
                          "seconds": {"total": round(time.perf_counter() - t0, 3),
                                      "replay": round(replay_s, 3)}}, indent=2, default=str))
    else:
        for r in reps:
            out.print(replay_table(r) if not isinstance(r, dict) else
                      Text(f"{r['name']}: mismatch - {r['note']}", style="bold red"))
        style = "green" if not counts["mismatch"] else "bold red"
        out.print(Text(f"[{profile.name}] {len(docs)} replays: {counts['confirmed']} confirmed, "
                       f"{counts['emulator-deviation']} emulator-deviation, {counts['mismatch']} "
                       f"mismatch  [replay {replay_s:.2f} s, total {time.perf_counter() - t0:.1f} s]",
                       style=style), soft_wrap=True)
    return EXIT_FAIL if counts["mismatch"] else EXIT_OK


def _no_witness(name: str, profile: str, note: str) -> dict:
    from pgvirt.model import isa
    f = isa.get(name)
    return {"name": name, "mnemonic": f.mnemonic, "asm": f.asm, "outcome": "mismatch",
            "native": None, "deprivileged": None, "model": None, "emulator_criterion": [],
            "deviation": None, "note": f"no counterexample to replay: {note}"}


# --- crosscheck -------------------------------------------------------------------------------------
def cmd_crosscheck(args, out: Console, err: Console) -> int:
    from pgvirt.model import isa

    from pgvirt.emulator import crosscheck as C

    for n in args.forms:
        isa.get(n)
    names = args.forms or [f.name for f in isa.FORMS]
    advance, close = progress(err, len(names), "cross-checking", args.format == "text" and err.is_terminal)
    try:
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
    r.add_argument("--profile")
    r.add_argument("names", nargs="*", metavar="NAME", help="only these forms")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.add_argument("--state", metavar="FILE.json",
                   help="replay the pair(s) in this file instead of solving for counterexamples")
    r.add_argument("--timeout-ms", type=positive_int, default=20_000,
                   help="per solver query (default 20000)")
    r.add_argument("--jobs", type=positive_int, default=None, help="solver processes (default: cores)")
    r.add_argument("--run-seconds", type=_seconds, default=2.0,
                   help="wall-clock bound of one emulator run (default 2)")
    commands["replay"] = cmd_replay

    c = sub.add_parser("crosscheck", help="cross-check the model against Unicorn on random states")
    c.add_argument("forms", nargs="*", metavar="FORM", help="only these forms")
    c.add_argument("--samples", type=positive_int, default=200, help="states per form (default 200)")
    c.add_argument("--seed", type=_int0, default=0)
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.add_argument("--jobs", type=positive_int, default=2, help="worker processes (default 2)")
    commands["crosscheck"] = cmd_crosscheck
