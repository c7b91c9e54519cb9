"""Rich text of ``replay`` and ``crosscheck``: the two runs of a witness side by side, model and
emulator for each, and the cross-check's table per form."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pgvirt.model import state as st
from pgvirt.model.outcome import from_changes_json, vector_name


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:#x}" if isinstance(v, int) else str(v)


def replay_table(r, color: bool = True) -> Table:
    """The two runs side by side: model and Unicorn for each; cells where native and deprivileged
    results differ are highlighted, and a Unicorn value that departs from the model is marked:
    by colour, or without colour by a trailing ``*`` and ``!``."""
    style = {"confirmed": "green", "emulator-deviation": "yellow", "mismatch": "bold red",
             "model-only": "cyan"}[r.outcome]
    one, two = r.labels
    legend = (f"[magenta: {one} and {two} differ; reversed: Unicorn departs from the model]"
              if color else f"[*: {one} and {two} differ; !: Unicorn departs from the model]")
    # An emulator-deviation's note is the deviations' names, which their descriptions repeat.
    caption = r.deviation if r.outcome == "emulator-deviation" and r.deviation else \
        r.note + (f"\n{r.deviation}" if r.deviation else "")
    # Text, not markup: asm ("sgdt [eax]") and the legend carry brackets.
    t = Table(title=Text(f"{r.form.name} ({r.form.asm}) under {r.profile}: {r.outcome}  {legend}",
                         style=style),
              caption=Text(caption), caption_justify="left")
    t.add_column("", no_wrap=True)
    short = {"native": "native", "deprivileged": "depriv."}
    for col in (f"{short.get(one, one)}/model", f"{short.get(one, one)}/Unicorn",
                f"{short.get(two, two)}/model", f"{short.get(two, two)}/Unicorn"):
        t.add_column(col, overflow="fold")
    runs = (r.native, r.deprivileged)
    models = [from_changes_json(x.state, x.prediction) for x in runs]
    emus = [x.emulator for x in runs]

    def outcome(res):
        if res is None:
            return "refused"
        if hasattr(res, "vector"):
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
            mine, other = (pres[i], v), (pres[j], vals[j])
            apart = differs(key, *((mine, other) if i < 2 else (other, mine)))  # native vs depriv.
            departs = i % 2 == 1 and v != vals[i - 1]                       # Unicorn vs the model
            if not color:
                shown += (" *" if apart else "") + (" !" if departs else "")
            txt = Text(shown)
            if color and apart:
                txt.stylize("bold magenta")
            if color and departs:
                txt.stylize("reverse")
            cells.append(txt)
        t.add_row(label, *cells)
    return t


def crosscheck_text(out: Console, rep, samples: int, seed: int) -> None:
    t = Table(title=f"model versus Unicorn: {samples} states per form, seed {seed}")
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
