"""``pgvirt replay`` and ``pgvirt crosscheck``: the emulator's commands (registered by verify.cli).

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
from rich.table import Table
from rich.text import Text

from pgvirt.verify.cli import EXIT_FAIL, EXIT_OK, UsageError, _progress, positive_int


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

    from . import replay as R

    if args.oracle:                   # Bochs, QEMU, several: emulator.cli_oracles
        from .cli_oracles import cmd_replay as on_oracles
        return on_oracles(args, out, err)
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
        advance, close = _progress(err, len(viol), "counterexamples", show)
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
            out.print(_replay_table(r) if not isinstance(r, dict) else
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


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:#x}" if isinstance(v, int) else str(v)


def _replay_table(r) -> Table:
    """The two runs side by side: model and Unicorn for each; cells where native and deprivileged
    results differ are highlighted, and a Unicorn value that departs from the model is marked."""
    from pgvirt.model import state as st

    from pgvirt.model.outcome import from_changes_json
    style = {"confirmed": "green", "emulator-deviation": "yellow", "mismatch": "bold red"}[r.outcome]
    # Text, not markup: asm ("sgdt [eax]") and the legend carry brackets.
    t = Table(title=Text(f"{r.form.name} ({r.form.asm}) under {r.profile}: {r.outcome}  "
                         "[magenta: native and deprivileged differ; reversed: Unicorn departs "
                         "from the model]", style=style),
              caption=Text(r.note + (f"\n{r.deviation}" if r.deviation else "")),
              caption_justify="left")
    t.add_column("", no_wrap=True)
    for col in ("native/model", "native/Unicorn", "depriv./model", "depriv./Unicorn"):
        t.add_column(col, overflow="fold")
    runs = (r.native, r.deprivileged)
    models = [from_changes_json(x.state, x.prediction) for x in runs]
    emus = [x.emulator for x in runs]

    def outcome(res):
        if res is None:
            return "refused"
        if hasattr(res, "vector"):
            from pgvirt.model.outcome import vector_name
            return vector_name(res.vector) + ("" if res.code is None else f"({res.code:#x})")
        return "completes"

    t.add_row("outcome", *[Text(outcome(v)) for pair in zip(models, emus) for v in pair])
    # every field and byte either run changes, per the model or per Unicorn
    keys: dict = {}
    for x, m, e in zip(runs, models, emus):
        for res in (m, e):
            if res is None or hasattr(res, "vector"):
                continue
            for k, v in res.state.items():
                if k in ("mem", "io"):
                    for a, b in v.items():
                        if x.state[k].get(a, 0) != b:
                            keys[(k, a)] = True
                elif x.state.get(k) != v:
                    keys[(k, None)] = True

    def value(res, pre, key):
        if res is None or hasattr(res, "vector"):
            return None
        k, a = key
        return res.state[k].get(a, pre[k].get(a, 0)) if a is not None else res.state[k]

    def before(pre, key):
        k, a = key
        return pre[k].get(a, 0) if a is not None else pre[k]

    def differs(key, native, dep):
        """Native and deprivileged differ here: a USER value afterwards (CS/SS without RPL), or
        for a SYSTEM field the bits each run flipped."""
        (n0, n1), (d0, d1) = native, dep
        if n1 is None or d1 is None:
            return n1 != d1
        k = key[0]
        if k in ("mem",) or st.FIELD[k].owner == st.USER:
            mask = 0xFFFC if k in ("cs", "ss") else -1
            return n1 & mask != d1 & mask
        return n0 ^ n1 != d0 ^ d1

    for key in sorted(keys, key=lambda k: (k[0] in ("mem", "io"), k[0], k[1] or 0)):
        label = f"{key[0]}[{key[1]:#x}]" if key[1] is not None else key[0]
        pres = [before(x.state, key) for x in runs for _ in (0, 1)]
        vals = [value(res, x.state, key) for x, pair in zip(runs, zip(models, emus)) for res in pair]
        cells = []
        for i, v in enumerate(vals):
            j = i + 2 if i < 2 else i - 2                           # the other run, same source
            shown = _fmt(v) if v is None or v == pres[i] else f"{_fmt(pres[i])} -> {_fmt(v)}"
            txt = Text(shown)
            mine, other = (pres[i], v), (pres[j], vals[j])
            if differs(key, *((mine, other) if i < 2 else (other, mine))):
                txt.stylize("bold magenta")                          # native and deprivileged differ
            if i % 2 == 1 and v != vals[i - 1]:
                txt.stylize("reverse")                               # Unicorn departs from the model
            cells.append(txt)
        t.add_row(label, *cells)
    return t


# --- crosscheck -------------------------------------------------------------------------------------
def cmd_crosscheck(args, out: Console, err: Console) -> int:
    from pgvirt.model import isa

    from . import crosscheck as C

    if args.oracle or args.cluster:   # Bochs, QEMU, several, or on Dask: emulator.cli_oracles
        from .cli_oracles import cmd_crosscheck as on_oracles
        return on_oracles(args, out, err)
    for n in args.forms:
        isa.get(n)
    names = args.forms or [f.name for f in isa.FORMS]
    advance, close = _progress(err, len(names), "cross-checking", args.format == "text" and err.is_terminal)
    try:
        rep = C.crosscheck(names, args.samples, args.seed, args.jobs, advance)
    finally:
        close()
    if args.format == "json":
        print(json.dumps(rep.as_json(), indent=2, default=str))
    else:
        t = Table(title=f"model versus Unicorn: {args.samples} states per form, seed {args.seed}")
        for col in ("form", "tried", "checked", "agree", "explained (by)", "unexplained", "skipped"):
            t.add_column(col)
        for f in rep.forms:
            by = ", ".join(f"{k} {v}" for k, v in sorted(f.by_deviation.items()))
            t.add_row(f.form, str(f.tried), str(f.checks), str(f.agree),
                      f"{f.explained}" + (f" ({by})" if by else ""),
                      Text(str(f.unexplained), style="bold red" if f.unexplained else ""),
                      str(sum(f.skipped.values())))
        out.print(t)
        for f in rep.forms:
            for ex in f.examples:
                out.print(Text(f"{f.form} [{ex['profile']}]: " + "; ".join(ex["differences"]),
                               style="bold red"))
                out.print(json.dumps(ex["state"], default=str))
        style = "green" if not rep.unexplained else "bold red"
        out.print(Text(f"{rep.checks} checks in {rep.seconds:.1f} s ({rep.rate:.0f} checks/s, "
                       f"{rep.jobs} processes): {rep.unexplained} unexplained", style=style),
                  soft_wrap=True)
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
    r.add_argument("--oracle", metavar="unicorn|bochs|qemu|all",
                   help="replay on these oracles (comma-separated), each with witnesses steered "
                        "clear of its known deviations (default: Unicorn, unsteered)")
    commands["replay"] = cmd_replay

    c = sub.add_parser("crosscheck", help="cross-check the model against Unicorn on random states")
    c.add_argument("forms", nargs="*", metavar="FORM", help="only these forms")
    c.add_argument("--samples", type=positive_int, default=200, help="states per form (default 200)")
    c.add_argument("--seed", type=_int0, default=0)
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.add_argument("--jobs", type=positive_int, default=2, help="worker processes (default 2)")
    c.add_argument("--oracle", metavar="unicorn|bochs|qemu|all",
                   help="check against these oracles (comma-separated) and each other")
    c.add_argument("--cluster", metavar="local|tcp://HOST:PORT",
                   help="run the sweep on Dask: a LocalCluster of --jobs workers, or a scheduler")
    commands["crosscheck"] = cmd_crosscheck
