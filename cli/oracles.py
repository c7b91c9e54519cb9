"""``replay`` and ``crosscheck`` on any oracle: the command layer's logic, as library functions.

``replay_report(profile, names, oracles, ...)`` asks the solver, for every Theorem-1 violation
and every oracle, for a counterexample that steers clear of that oracle's known deviations
(``verify.counterexample.find(..., avoid=deviations.triggers(oracle))``), replays it there
(``replay.replay_on``) and returns the JSON document; ``crosscheck_report`` runs
``sweep.crosscheck``.  ``render_replay``/``render_crosscheck`` print them with rich;
``cli/emulator.py`` hands ``--oracle`` and ``--cluster`` runs to ``cmd_replay``/``cmd_crosscheck``
here (its default Unicorn path is unchanged).  This module may ask ``pgvirt.verify`` for
witnesses; the harness below it (``pgvirt.emulator``) never does.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pgvirt.emulator import deviations as D
from pgvirt.emulator import oracles as O
from pgvirt.emulator import replay as R
from pgvirt.emulator import sweep

from .errors import UsageError


def make_oracle(name: str, profile: str, run_seconds: float = 2.0):
    """The oracle ``name`` for ``profile``; ``oracles.Unavailable`` (one line) when not installed."""
    if name == "unicorn":
        from .oracles.unicorn import UnicornOracle
        return UnicornOracle(seconds=run_seconds)
    return O.make(name, profile)


def replay_report(profile: str, names: Sequence[str] | None, oracles: Sequence[str], *,
                  jobs: int | None = None, timeout_ms: int = 20_000, run_seconds: float = 2.0,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Every Theorem-1 counterexample of ``profile`` (or of ``names``) replayed on each oracle."""
    from pgvirt.model import isa, profiles
    from pgvirt.verify import counterexample as cx
    p = profiles.get(profile)
    instances = {o: make_oracle(o, p.name, run_seconds) for o in oracles}
    t0 = time.perf_counter()
    viol, undecided = cx.violations(p, list(names) if names else None, jobs, timeout_ms)
    per: dict[str, dict[str, dict]] = {n: {} for n in viol}
    steering: dict[str, dict[str, dict]] = {n: {} for n in viol}
    for o in oracles:
        found = cx.find_many(viol, p, jobs, timeout_ms, progress, avoid=D.triggers(o))
        items = [(f["name"], f["witness"]) for f in found if f["witness"]]
        for f in found:
            if not f["witness"]:
                per[f["name"]][o] = {"outcome": "mismatch", "note": f"no counterexample: {f['note']}"}
            else:
                steering[f["name"]][o] = f["witness"].get("steering", {})
        for (name, _), rep in zip(items, R.replay_on(instances[o], items, cx.criterion_concrete, p.name)):
            doc = rep.as_json()
            doc["steering"] = steering[name][o]
            per[name][o] = doc
    replays = []
    for name in viol:
        f = isa.get(name)
        confirmed = [o for o in oracles if per[name].get(o, {}).get("outcome") == "confirmed"]
        replays.append({"name": name, "mnemonic": f.mnemonic, "asm": f.asm, "oracles": per[name],
                        "confirmed_on": confirmed,
                        "confirmed_full_system": any(o in O.FULL_SYSTEM for o in confirmed)})
    counts = {o: {k: sum(r["oracles"].get(o, {}).get("outcome") == k for r in replays)
                  for k in R.ORACLE_OUTCOMES} for o in oracles}
    fs = [o for o in oracles if o in O.FULL_SYSTEM]
    return {"profile": p.name, "oracles": list(oracles),
            "cpus": {o: getattr(instances[o], "cpu", "") for o in oracles},
            "replays": replays, "counts": counts, "undecided": undecided,
            "unconfirmed_full_system": [r["name"] for r in replays if fs and not r["confirmed_full_system"]],
            "seconds": round(time.perf_counter() - t0, 3)}


def replay_exit(doc: dict) -> int:
    """1 when some replay mismatches on some oracle, else 0."""
    return 1 if any(c["mismatch"] for c in doc["counts"].values()) else 0


def render_replay(doc: dict, out: Console) -> None:
    oracles = doc["oracles"]
    t = Table(title=Text(f"[{doc['profile']}] Theorem-1 counterexamples on "
                         + ", ".join(f"{o} ({doc['cpus'][o]})" for o in oracles)))
    t.add_column("form", no_wrap=True)
    for o in oracles:
        t.add_column(o)
    t.add_column("deviations met / unavoidable", overflow="fold")
    style = {"confirmed": "green", "emulator-deviation": "yellow", "mismatch": "bold red",
             "not-run": "magenta"}
    for r in doc["replays"]:
        cells, notes = [], []
        for o in oracles:
            d = r["oracles"].get(o, {})
            cells.append(Text(d.get("outcome", "-"), style=style.get(d.get("outcome"), "")))
            if d.get("outcome") == "emulator-deviation" and d.get("note"):
                notes.append(f"{o}: {d['note']}")
            if d.get("outcome") in ("mismatch", "not-run") and d.get("note"):
                notes.append(f"{o}: {d['note'][:120]}")
            un = (d.get("steering") or {}).get("unavoidable")
            if un:
                notes.append(f"{o} unavoidable: {', '.join(un)}")
        t.add_row(r["name"], *cells, Text("; ".join(notes)))
    out.print(t)
    for o in oracles:
        c = doc["counts"][o]
        out.print(Text(f"{o}: " + ", ".join(f"{c[k]} {k}" for k in R.ORACLE_OUTCOMES),
                       style="bold red" if c["mismatch"] else "green"), soft_wrap=True)
    if doc["unconfirmed_full_system"]:
        out.print(Text("not confirmed on any full-system oracle: " + ", ".join(doc["unconfirmed_full_system"]),
                       style="yellow"), soft_wrap=True)


def crosscheck_report(forms: Sequence[str] | None, samples: int, seed: int,
                      oracles: Sequence[str], *, jobs: int = 1, cluster: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> sweep.SweepReport:
    for o in oracles:
        why = O.unavailable(o)
        if why:
            raise O.Unavailable(why)
    return sweep.crosscheck(forms, samples, seed, oracles, jobs=jobs, cluster=cluster,
                            progress=progress)


def crosscheck_exit(rep: sweep.SweepReport) -> int:
    """1 when a disagreement is unexplained or an oracle failed on a case, else 0."""
    return 1 if rep.unexplained or rep.errors else 0


def render_crosscheck(rep: sweep.SweepReport, out: Console) -> None:
    t = Table(title=f"model versus {', '.join(rep.oracles)}: {rep.samples} states per form, seed "
                    f"{rep.seed}")
    t.add_column("form", no_wrap=True)
    for o in rep.oracles:
        t.add_column(f"{o}: agree/checked", justify="right")
    t.add_column("explained by / unexplained / errors", overflow="fold")
    t.add_column("agreement patterns", overflow="fold")
    for f in rep.forms:
        cells, notes = [], []
        for o in rep.oracles:
            c = f.oracles[o]
            pct = f" {100 * c.agreement:.0f}%" if c.checks else ""
            cells.append(Text(f"{c.agree}/{c.checks}{pct}", style="bold red" if c.unexplained else ""))
            if c.by_deviation:
                notes.append(f"{o}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.by_deviation.items())))
            if c.unexplained or c.errors:
                notes.append(f"{o}: {c.unexplained} unexplained, {c.errors} errors")
        pats = ", ".join(f"{k} {v}" for k, v in sorted(f.patterns.items(), key=lambda kv: -kv[1])[:3])
        t.add_row(f.form, *cells, Text("; ".join(notes)), Text(pats))
    out.print(t)
    for f in rep.forms:
        for o in rep.oracles:
            for ex in f.oracles[o].examples:
                what = ex.get("differences") or [ex.get("oracle_error", "")]
                out.print(Text(f"{f.form} on {o} [{ex['profile']}, sample {ex['k']}]: " + "; ".join(what),
                               style="bold red"), soft_wrap=True)
                if ex.get("state"):
                    out.print(json.dumps(ex["state"], default=str), soft_wrap=True)
                if ex.get("log"):
                    out.print(ex["log"], soft_wrap=True)
    totals = ", ".join(f"{o} {rep.total(o, 'agree')}/{rep.total(o, 'checks')}" for o in rep.oracles)
    out.print(Text(f"{rep.checks} checks in {rep.seconds:.1f} s on {rep.workers} worker(s): {totals}; "
                   f"{rep.unexplained} unexplained, {rep.errors} oracle errors",
                   style="green" if not (rep.unexplained or rep.errors) else "bold red"), soft_wrap=True)


# --- the commands (``emulator.cli`` hands over when --oracle or --cluster is given) ---------------
def progress_bar(console: Console, label: str, enabled: bool):
    """(callback(n, total), close) drawing a rich progress bar on ``console`` (stderr)."""
    if not enabled:
        return (lambda n, total: None), (lambda: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)
    task = prog.add_task(label, total=None)
    prog.start()

    def cb(n: int, total: int) -> None:
        prog.update(task, completed=n, total=total)
    return cb, prog.stop


def _names(spec: str, usage_error) -> tuple[str, ...]:
    try:
        names = O.expand(spec)
    except KeyError as e:
        raise usage_error(str(e.args[0])) from None
    for n in names:
        why = O.unavailable(n)
        if why:
            raise usage_error(why)
    return names


def cmd_replay(args, out: Console, err: Console) -> int:
    from pgvirt.model import isa, profiles
    if not args.profile:
        raise UsageError("give --profile NAME")
    oracles = _names(args.oracle, UsageError)
    profile = profiles.get(args.profile)
    for n in args.names:
        isa.get(n)
    if args.state:
        doc = _replay_pairs(args, profile.name, oracles, UsageError)
    else:
        show = args.format == "text" and err.is_terminal
        cb, close = progress_bar(err, "counterexamples", show)
        count = {"n": 0}

        def advance(name):
            count["n"] += 1
            cb(count["n"], None)
        try:
            doc = replay_report(profile.name, args.names or None, oracles, jobs=args.jobs,
                                timeout_ms=args.timeout_ms, run_seconds=args.run_seconds,
                                progress=advance)
        finally:
            close()
    if args.format == "json":
        print(json.dumps(doc, indent=2, default=str))
    else:
        render_replay(doc, out)
    return replay_exit(doc)


def _replay_pairs(args, profile: str, oracles, usage_error) -> dict:
    """Hand-given pairs (--state) on each oracle, without steering: they are what they are."""
    from pgvirt.verify import counterexample as cx
    try:
        pairs = R.load_pairs(args.state, __import__("pgvirt.model.profiles", fromlist=["get"]).get(profile),
                             args.names or None)
    except R.ReplayInputError as e:
        raise usage_error(str(e)) from None
    if args.names:
        pairs = [(n, w) for n, w in pairs if n in args.names]
    per: dict = {}
    for o in oracles:
        try:
            reps = R.replay_on(make_oracle(o, profile, args.run_seconds), pairs,
                               cx.criterion_concrete, profile, strict=(o == "unicorn"))
        except R.ReplayInputError as e:
            raise usage_error(str(e)) from None
        for k, rep in enumerate(reps):
            per.setdefault(k, {})[o] = rep.as_json()
    replays = []
    for k, (name, _) in enumerate(pairs):
        f = __import__("pgvirt.model.isa", fromlist=["get"]).get(name)
        confirmed = [o for o in oracles if per[k][o]["outcome"] == "confirmed"]
        replays.append({"name": name, "mnemonic": f.mnemonic, "asm": f.asm, "oracles": per[k],
                        "confirmed_on": confirmed,
                        "confirmed_full_system": any(o in O.FULL_SYSTEM for o in confirmed)})
    counts = {o: {x: sum(r["oracles"][o]["outcome"] == x for r in replays) for x in R.ORACLE_OUTCOMES}
              for o in oracles}
    fs = [o for o in oracles if o in O.FULL_SYSTEM]
    return {"profile": profile, "oracles": list(oracles), "cpus": {o: sweep.cpu_models(o)[profile] for o in oracles},
            "replays": replays, "counts": counts, "undecided": [],
            "unconfirmed_full_system": [r["name"] for r in replays if fs and not r["confirmed_full_system"]]}


def cmd_crosscheck(args, out: Console, err: Console) -> int:
    from pgvirt.model import isa
    oracles = _names(args.oracle or "unicorn", UsageError)
    for n in args.forms:
        isa.get(n)
    cb, close = progress_bar(err, "cross-checking", args.format == "text" and err.is_terminal)
    try:
        rep = crosscheck_report(args.forms or None, args.samples, args.seed, oracles,
                                jobs=args.jobs, cluster=args.cluster, progress=cb)
    except OSError as e:
        raise UsageError(f"cannot reach the Dask scheduler {args.cluster}: {e}") from None
    finally:
        close()
    if args.format == "json":
        print(json.dumps(rep.as_json(), indent=2, default=str))
    else:
        render_crosscheck(rep, out)
    return crosscheck_exit(rep)
