"""Notebook layer for counterexample replay (``notebooks/03_counterexample_replay.ipynb``).

Like the command line, this sits above both halves: the counterexample comes from the solver
(``verify.counterexample``), the runs from Unicorn (``emulator.replay``).  Every view is an object
with ``_repr_html_``; the explorer's widgets set their own ``.value`` in callbacks.
"""

from __future__ import annotations

import html
from typing import Mapping

from pgvirt.model import isa
from pgvirt.model.outcome import Fault, vector_name
from pgvirt.verify import counterexample as cx

from pgvirt.emulator.machine import NOT_HELD
from pgvirt.emulator.replay import Replay, Replayer

_TABLE = ('<table style="border-collapse:collapse;font-family:monospace;font-size:12px">{}</table>')
_CELL = 'style="border:1px solid #ccc;padding:2px 6px;{}"'
COLOURS = {"confirmed": "#2e7d32", "emulator-deviation": "#ef6c00", "mismatch": "#c62828"}

_REPLAYER: Replayer | None = None
_FOUND: dict[tuple[str, str], cx.Counterexample] = {}


def _replayer() -> Replayer:
    global _REPLAYER
    if _REPLAYER is None:
        _REPLAYER = Replayer()   # one Machine for the whole kernel: restored before every run
    return _REPLAYER


def violations(profile: str) -> list[str]:
    """The profile's Theorem-1 violations, derived (or read from the cache of derived answers)."""
    return cx.violations(profile)[0]


def counterexample(form: str, profile: str) -> cx.Counterexample:
    key = (form, profile)
    if key not in _FOUND:
        _FOUND[key] = cx.find(form, profile)
    return _FOUND[key]


def replay(form: str, profile: str) -> "ReplayView":
    """Solve ``form``'s counterexample and run both states on Unicorn."""
    found = counterexample(form, profile)
    if found.witness is None:
        return ReplayView(form, profile, None, found.note)
    rep = _replayer().replay(form, found.witness, cx.criterion_concrete, profile)
    return ReplayView(form, profile, rep, found.note)


def _e(v) -> str:
    return html.escape(str(v))


def _fmt(v) -> str:
    return f"{v:#x}" if isinstance(v, int) else _e(v)


def _outcome(res) -> str:
    if res is None:
        return "refused by the Machine"
    if isinstance(res, Fault):
        return f"trap {vector_name(res.vector)}"
    return "runs without a trap"


def _pred_outcome(p: Mapping) -> str:
    return f"trap {vector_name(p['vector'])}" if p.get("fault") else "runs without a trap"


class ReplayView:
    """One replay: native and deprivileged runs side by side, model and Unicorn, differences marked."""

    def __init__(self, form: str, profile: str, rep: Replay | None, note: str):
        self.form, self.profile, self.rep, self.note = form, profile, rep, note

    @property
    def outcome(self) -> str:
        return self.rep.outcome if self.rep else "no counterexample"

    def rows(self) -> list[tuple[str, str, str, str, str, bool]]:
        """(field, native before, native after (Unicorn), deprivileged before, deprivileged
        after (Unicorn), differs) for every field either run changes or the two states differ in."""
        r = self.rep
        n, d = r.native.state, r.deprivileged.state
        ne = r.native.emulator.state if r.native.emulator is not None and not isinstance(
            r.native.emulator, Fault) else None
        de = r.deprivileged.emulator.state if r.deprivileged.emulator is not None and not isinstance(
            r.deprivileged.emulator, Fault) else None
        keys = []
        for k in n:
            if k in ("mem", "io") or k in NOT_HELD:
                continue
            changed = (ne is not None and ne.get(k) != n[k]) or (de is not None and de.get(k) != d[k])
            if changed or n[k] != d[k]:
                keys.append(k)
        out = []
        for k in keys:
            na = ne.get(k) if ne is not None else None
            da = de.get(k) if de is not None else None
            out.append((k, _fmt(n[k]), "" if na is None else _fmt(na), _fmt(d[k]),
                        "" if da is None else _fmt(da), na != da))
        for arr in ("mem", "io"):
            addrs = sorted(set((ne or {}).get(arr, {})) | set((de or {}).get(arr, {})))
            for a in addrs:
                nb, db = n[arr].get(a, 0), d[arr].get(a, 0)
                na = (ne or {}).get(arr, {}).get(a) if ne is not None else None
                da = (de or {}).get(arr, {}).get(a) if de is not None else None
                if na == nb and da == db and nb == db:
                    continue
                out.append((f"{arr}[{a:#x}]", _fmt(nb), "" if na is None else _fmt(na), _fmt(db),
                            "" if da is None else _fmt(da), na != da))
        return out

    def _repr_html_(self) -> str:
        f = isa.get(self.form)
        head = (f"<b>{_e(f.name)}</b> <code>{_e(f.asm)}</code> under <b>{_e(self.profile)}</b>: ")
        if self.rep is None:
            return head + f"no counterexample ({_e(self.note)})"
        r = self.rep
        colour = COLOURS.get(r.outcome, "#000")
        parts = [head + f'<b style="color:{colour}">{_e(r.outcome)}</b>',
                 f"<div>why a counterexample: {_e(self.note)}</div>"]
        if r.deviation:
            parts.append(f"<div>emulator deviation: {_e(r.deviation)}</div>")
        summary = [("model", _pred_outcome(r.model["native"]), _pred_outcome(r.model["deprivileged"])),
                   ("Unicorn", _outcome(r.native.emulator), _outcome(r.deprivileged.emulator))]
        cells = "".join(f"<tr><td {_CELL.format('')}>{a}</td><td {_CELL.format('')}>{_e(b)}</td>"
                        f"<td {_CELL.format('')}>{_e(c)}</td></tr>" for a, b, c in summary)
        parts.append(_TABLE.format(
            f"<tr><th {_CELL.format('')}></th><th {_CELL.format('')}>native (CPL 0, guest's tables)</th>"
            f"<th {_CELL.format('')}>deprivileged (CPL 3, IOPL 0, monitor's tables)</th></tr>" + cells))
        body = "".join(
            f"<tr><td {_CELL.format('')}>{_e(k)}</td><td {_CELL.format('')}>{a}</td>"
            f"<td {_CELL.format('background:#fff3b0' if diff else '')}>{b}</td>"
            f"<td {_CELL.format('')}>{c}</td>"
            f"<td {_CELL.format('background:#fff3b0' if diff else '')}>{dd}</td></tr>"
            for k, a, b, c, dd, diff in self.rows())
        parts.append("<div>fields that differ between the states or that a run changes "
                     "(after-values from Unicorn; highlighted where the two runs end differently):</div>")
        parts.append(_TABLE.format(
            f"<tr><th {_CELL.format('')}>field</th><th {_CELL.format('')}>native before</th>"
            f"<th {_CELL.format('')}>native after</th><th {_CELL.format('')}>deprivileged before</th>"
            f"<th {_CELL.format('')}>deprivileged after</th></tr>" + body))
        return "".join(parts)


class ReplayAll:
    """Every violation of a profile replayed: one row each with the outcome."""

    def __init__(self, profile: str):
        self.profile = profile
        self.views = [replay(name, profile) for name in violations(profile)]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.views:
            out[v.outcome] = out.get(v.outcome, 0) + 1
        return out

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td {_CELL.format('')}>{_e(v.form)}</td><td {_CELL.format('')}>"
            f"<code>{_e(isa.get(v.form).asm)}</code></td><td {_CELL.format('color:' + COLOURS.get(v.outcome, '#000'))}>"
            f"{_e(v.outcome)}</td><td {_CELL.format('')}>{_e(v.rep.deviation or v.note if v.rep else v.note)}</td></tr>"
            for v in self.views)
        summary = ", ".join(f"{k}: {n}" for k, n in sorted(self.counts().items()))
        return (f"<div><b>{_e(self.profile)}</b>: {len(self.views)} violations replayed ({_e(summary)})</div>"
                + _TABLE.format(f"<tr><th {_CELL.format('')}>form</th><th {_CELL.format('')}>asm</th>"
                                f"<th {_CELL.format('')}>outcome</th><th {_CELL.format('')}>why</th></tr>" + rows))


def explorer(profile: str = "pentium", form: str | None = None):
    """Pick a violation, see its two runs; a button replays them all.  Callbacks set ``.value``."""
    import ipywidgets as w

    names = violations(profile)
    picker = w.Dropdown(options=names, value=form if form in names else names[0], description="violation")
    view = w.HTML(value=replay(picker.value, profile)._repr_html_())
    button = w.Button(description="replay all")
    summary = w.HTML(value="")

    def on_pick(change):
        view.value = replay(change["new"], profile)._repr_html_()

    def on_all(_):
        summary.value = ReplayAll(profile)._repr_html_()

    picker.observe(on_pick, names="value")
    button.on_click(on_all)
    box = w.VBox([picker, view, button, summary])
    box.picker, box.view, box.button, box.summary = picker, view, button, summary
    return box
