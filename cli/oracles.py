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
    profile = profiles.get(args.profile)
    if profile.vm is not None:        # vtx (svm refused): the test kernel's VMX mode on Bochs
        return cmd_replay_vmx(args, out, err, profile)
    if args.controls or args.witnesses:
        raise UsageError("--controls and --witnesses apply to the hardware profiles (vtx)")
    oracles = _names(args.oracle, UsageError)
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


# --- the vtx profile on Bochs's VMX -------------------------------------------------------------------
def vmx_replay_report(profile, names: Sequence[str] | None, *, samples: int = 20, seed: int = 0,
                      witnesses: Sequence[dict] | None = None, oracle=None) -> dict:
    """The vtx profile's exit conditions on Bochs's VMX (``emulator.vmxreplay``): every form of
    ``names`` (default: those whose definitions exit under the profile's controls) on
    ``samples`` drawn non-root states, and each controls witness of ``witnesses`` (rows of
    ``pgvirt controls --format json``) with its control off and on."""
    from pgvirt.emulator import vmxreplay as V
    from pgvirt.emulator.oracles.bochs import BochsSVM, BochsVMX
    from pgvirt.model import svm
    t0 = time.perf_counter()
    cls = BochsSVM if isinstance(profile.vm, svm.Intercepts) else BochsVMX
    b = oracle or cls(profile.name, controls=profile.vm)
    caps = b.caps()                 # fails first (no VMX) before the forms are compiled
    exiting = V.exiting_forms(profile.vm, profile)
    names = list(names) if names else exiting
    forms = V.replay_forms(b, names, samples, seed, profile.vm, profile)
    wit = V.replay_witnesses(b, witnesses, profile) if witnesses else []
    rows = [f.as_json() for f in forms]
    for r in rows:
        r["exits_under_controls"] = r["form"] in exiting
    keys = ("agree", "explained", "model_bugs", "unexplained", "refused", "exits_agreed", "no_exit_agreed")
    totals = {k: sum(r[k] for r in rows) for k in keys}
    totals["errors"] = sum(len(r["errors"]) for r in rows)
    bugs: dict = {}
    explained: dict = {}
    for r in rows:
        for d in r["disagree"]:
            if d["model_bug"]:
                bugs[d["model_bug"]] = bugs.get(d["model_bug"], 0) + 1
            for i in d["explained_by"]:
                explained[i] = explained.get(i, 0) + 1
    return {"profile": profile.name, "oracle": "bochs", "cpu": b.cpu, "mode": b.mode,
            "controls": profile.vm.name, "samples": samples, "seed": seed,
            "capabilities": caps.as_json(), "forms": rows, "totals": totals,
            "model_bugs": bugs, "explained_by": explained,
            "witnesses": [w.as_json() for w in wit],
            "witness_counts": {k: sum(w.status == k for w in wit)
                               for k in ("confirmed", "emulator-deviation", "mismatch", "not-run")},
            "boots": b.stats["boots"], "seconds": round(time.perf_counter() - t0, 3)}


def vmx_replay_exit(doc: dict) -> int:
    """1 when a state disagrees unexplained, a known model bug showed, or a witness mismatched."""
    t = doc["totals"]
    bad = t["unexplained"] or t["model_bugs"] or t["errors"] or doc["witness_counts"]["mismatch"]
    return 1 if bad else 0


def render_vmx_replay(doc: dict, out: Console) -> None:
    t = doc["totals"]
    out.print(Text(f"[{doc['profile']}] exit conditions on Bochs's {doc['mode'].upper()} (cpu {doc['cpu']}, controls "
                   f"'{doc['controls']}', {doc['samples']} states a form, seed {doc['seed']}, "
                   f"{doc['boots']} boots, {doc['seconds']:.1f} s)", style="bold"))
    tab = Table()
    for col in ("form", "agree", "exits", "no exit", "explained", "model bug", "unexplained", "refused"):
        tab.add_column(col, justify="left" if col == "form" else "right")
    for r in doc["forms"]:
        if r["agree"] or r["disagree"]:
            tab.add_row(r["form"] + (" *" if r["exits_under_controls"] else ""), str(r["agree"]),
                        str(r["exits_agreed"]), str(r["no_exit_agreed"]), str(r["explained"]),
                        str(r["model_bugs"]), str(r["unexplained"]), str(r["refused"]))
    out.print(tab)
    out.print(Text(f"{t['agree']} states agree ({t['exits_agreed']} same exit, {t['no_exit_agreed']} "
                   f"completed without an exit), {t['explained']} explained by Bochs's tables, "
                   f"{t['model_bugs']} known model bugs, {t['unexplained']} unexplained, {t['refused']} "
                   f"refused, {t['errors']} oracle errors   (* = exits under the controls)"), soft_wrap=True)
    for k, n in sorted(doc["model_bugs"].items()):
        out.print(Text(f"  model bug {k}: {n} states", style="yellow"))
    for k, n in sorted(doc["explained_by"].items()):
        out.print(Text(f"  explained by {k}: {n} states"))
    for r in doc["forms"]:
        for d in r["disagree"]:
            if d["unexplained"]:
                out.print(Text(f"  {r['form']}: model {d['model']}, bochs {d['bochs']}: "
                               + "; ".join(d["unexplained"]), style="bold red"), soft_wrap=True)
    if doc["witnesses"]:
        wt = Table(title="controls witnesses: the control off (a hole: no exit) and on")
        for col in ("control", "form", "off: bochs", "off: model", "on: bochs", "on: model", "status"):
            wt.add_column(col)
        for w in doc["witnesses"]:
            wt.add_row(w["control"], w["form"], w["off"], w["model_off"], w["on"], w["model_on"],
                       w["status"] + (f" ({w['why']})" if w["why"] else ""))
        out.print(wt)


def cmd_replay_vmx(args, out: Console, err: Console, profile) -> int:
    from pgvirt.emulator.oracles.bochs import OracleSetupError
    from pgvirt.model import isa
    if args.oracle.strip() != "bochs":
        raise UsageError(f"replay --profile {profile.name} runs on Bochs's VMX/SVM only: give --oracle bochs")
    for n in args.names:
        isa.get(n)
    if args.state:
        raise UsageError("--state pairs are Theorem-1 counterexamples of the legacy profiles; "
                         "the vtx replay draws its own states (--samples, --seed)")
    why = O.unavailable("bochs")
    if why:
        raise UsageError(why)
    if args.controls:
        from .theorems import load_controls
        profile = load_controls(profile.name, args.controls)
    rows = None
    if args.witnesses:
        from pgvirt.model.files import InputError, read_regular
        try:
            wdoc = json.loads(read_regular(args.witnesses, "witnesses file", 16 << 20))
            rows = wdoc["controls"]
            if not isinstance(rows, list):
                raise TypeError
        except InputError as e:
            raise UsageError(str(e)) from None
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{args.witnesses}: not the JSON of 'pgvirt controls --format json'") from None
    try:
        doc = vmx_replay_report(profile, args.names or None, samples=args.samples, seed=args.seed,
                                witnesses=rows)
    except OracleSetupError as e:
        raise UsageError(str(e)) from None
    except (KeyError, ValueError) as e:
        raise UsageError(f"{args.witnesses or 'witnesses'}: {e}") from None
    if args.format == "json":
        print(json.dumps(doc, indent=2, default=str))
    else:
        render_vmx_replay(doc, out)
    return vmx_replay_exit(doc)
