"""Display helpers for the notebooks: HTML views of answers and witnesses, the heat map, the explorer.

They live here, not in the notebooks, so each notebook cell is one call and the helpers are tested.
Every value shown comes from ``popek_goldberg.classify``/``classify_all`` (or the on-disk cache of
their answers); nothing is declared.
"""

from __future__ import annotations

from typing import Iterable

from pgvirt.model import isa, profiles
from pgvirt.model import state as st
from pgvirt.model.derived import registry, table
from pgvirt.model.outcome import vector_name

from pgvirt.report import theorems as report
from pgvirt.report.html import HTML, _TABLE, _e, _td  # noqa: F401  (notebook/paravirt.py uses them)
from pgvirt.verify.cache import classifications
from pgvirt.verify.popek_goldberg import CLASSES, Classification, classify, recheck, theorem

# --- classifications, computed once per process -------------------------------------------------

_ALL: dict[str, list[Classification]] = {}
_ONE: dict[tuple[str, str], Classification] = {}


def classified(profile: str) -> list[Classification]:
    """Every form under ``profile``, hand-written then derived: derived by the solver once, then
    kept in this process and in the on-disk cache of derived answers (``verify.cache``), so the
    notebooks share one run."""
    profiles.get(profile)
    if profile not in _ALL:
        names = list(registry.names())
        known, _ = classifications(profile, names, witnesses=True)
        _ALL[profile] = [known[n] for n in names]
    return _ALL[profile]


def family(c: Classification) -> str:
    """The family a form is shown in: a hand-written form's theme (its module in model/isa), a
    derived form's encoding kind and the CPUID feature its iced-x86 code needs (or "base")."""
    return _family_of(c.form.theme, c.form.code)


def _family_of(theme: str, code: str | None) -> str:
    if not theme.startswith("derived."):
        return f"hand-written: {theme}"
    rec = table.codes()[code]
    return f"{rec['encoding']}: {rec['cpuid'][0] if rec['cpuid'] else 'base'}"


def catalogue() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every form as (family, [(name, asm)]), grouped as ``families`` groups classifications,
    read from the forms' definitions and the footprint table without building a derived form
    or asking the solver (the explorer's pickers)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for f in isa.FORMS:
        out.setdefault(_family_of(f.theme, None), []).append((f.name, f.asm))
    recs = table.codes()
    for name in registry.derived_names():
        code = registry.code_of(name)
        rec = recs[code]
        out.setdefault(_family_of(f"derived.{rec['encoding']}", code), []).append((name, rec["asm"]))
    return list(out.items())


def families(results: Iterable[Classification]) -> list[tuple[str, list[Classification]]]:
    """``results`` grouped by ``family``, families in order of their first form."""
    out: dict[str, list[Classification]] = {}
    for c in results:
        out.setdefault(family(c), []).append(c)
    return list(out.items())


def family_counts(group: list[Classification], cls: str) -> tuple[int, int, int]:
    """(yes, no, unknown) answers for ``cls`` over one family's forms."""
    vals = [c[cls] for c in group]
    return vals.count(True), vals.count(False), vals.count(None)


def classification(form: str, profile: str) -> Classification:
    """One form: from the profile's full run when there is one, else solved on its own."""
    done = next((c for c in _ALL.get(profile, ()) if c.form.name == form), None)
    if done is not None:
        return done
    key = (form, profile)
    if key not in _ONE:
        _ONE[key] = classify(form, profile)
    return _ONE[key]


def available(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split ``names`` into forms the model defines and forms it does not (yet)."""
    have = [n for n in names if n in isa.REGISTRY]
    return have, [n for n in names if n not in isa.REGISTRY]


# --- how an answer was settled -------------------------------------------------------------------

def settled_by(c: Classification, cls: str) -> str:
    """"proved" (an UNSAT query), "refuted" (a SAT witness) or "unknown".

    A derived class is an OR of query answers: true by a part's witness, false only when every
    part was proved UNSAT.  Innocuous is the negation of sensitive.
    """
    a = c.answers[cls]
    if a.value is None:
        return "unknown"
    if a.verdict in ("proved", "refuted"):
        return a.verdict
    if cls == "innocuous":
        return settled_by(c, "sensitive")
    return "refuted" if a.value else "proved"


CATEGORIES = (  # (value, settled_by) -> label and colour; proved = blues, refuted = oranges
    ((True, "proved"), "yes, proved (UNSAT)", "#08519c"),
    ((False, "proved"), "no, proved (UNSAT)", "#9ecae1"),
    ((True, "refuted"), "yes, by witness (SAT)", "#d94801"),
    ((False, "refuted"), "no, by witness (SAT)", "#fdae6b"),
    ((None, "unknown"), "unknown (no answer)", "#bdbdbd"),
)
_CAT_INDEX = {key: i for i, (key, _, _) in enumerate(CATEGORIES)}


def category(c: Classification, cls: str) -> int:
    return _CAT_INDEX[(c[cls], settled_by(c, cls))]


# --- HTML ------------------------------------------------------------------------------------------

def _cell(c: Classification, cls: str) -> str:
    _, label, colour = CATEGORIES[category(c, cls)]
    v = c[cls]
    text = "?" if v is None else ("yes" if v else "no")
    fg = "white" if colour in ("#08519c", "#d94801") else "black"
    return _td(text, f"background:{colour};color:{fg};text-align:center", title=f"{label}: {c.answers[cls].note}")


def _theorem_cell(c: Classification, num: str) -> str:
    v = theorem(num, [c]).verdict
    colour = {"holds": "#e5f5e0", "fails": "#fcbba1", "unknown": "#bdbdbd"}[v]
    return _td({"holds": "ok", "fails": "VIOLATES", "unknown": "?"}[v], f"background:{colour}")


def _legend() -> str:
    items = "".join(f'<span style="background:{col};padding:0 8px;margin:0 4px">&nbsp;</span>{_e(lbl)}'
                    for _, lbl, col in CATEGORIES)
    return f'<p style="font-size:12px">{items}</p>'


def answers_table(results: list[Classification], missing: Iterable[str] = ()) -> HTML:
    """Rows of forms, a column per class and per theorem, each cell coloured by how it was settled."""
    head = "".join(_td(_e(h), tag="th") for h in ("form", "asm", *(report.SHORT[k] for k in CLASSES),
                                                  "Thm 1", "Thm 3"))
    rows = []
    for c in results:
        cells = [_td(_e(c.form.name)), _td(_e(c.form.asm))] + [_cell(c, k) for k in CLASSES]
        rows.append("<tr>" + "".join(cells + [_theorem_cell(c, "1"), _theorem_cell(c, "3")]) + "</tr>")
    note = ""
    missing = list(missing)
    if missing:
        note = f"<p><i>not in the model yet: {_e(', '.join(missing))}</i></p>"
    return HTML(f"{_legend()}<table {_TABLE}><tr>{head}</tr>{''.join(rows)}</table>{note}")


def check_forms(names: Iterable[str], profile: str = "pentium") -> HTML:
    """The solver's answers for a handful of forms (those the model defines; the rest are listed)."""
    have, missing = available(list(names))
    return answers_table([classification(n, profile) for n in have], missing)


def _family_cell(group: list[Classification], cls: str) -> str:
    yes, no, unknown = family_counts(group, cls)
    share = yes / len(group)
    # blue shade by the share of "yes"; any unknown answer greys the cell and shows "?"
    colour = "#bdbdbd" if unknown else f"rgba(8,81,156,{0.1 + 0.9 * share:.2f})"
    fg = "white" if share > 0.5 and not unknown else "black"
    text = f"{yes}/{len(group)}" + (f" ({unknown}?)" if unknown else "")
    return _td(text, f"background:{colour};color:{fg};text-align:center",
               title=f"{yes} yes, {no} no, {unknown} unknown")


def _family_theorem_cell(group: list[Classification], num: str) -> str:
    th = theorem(num, group)
    colour = {"holds": "#e5f5e0", "fails": "#fcbba1", "unknown": "#bdbdbd"}[th.verdict]
    if not th.violations and not th.undecided:
        return _td("ok", f"background:{colour}")
    names = ", ".join(c.form.name for c in th.violations)
    text = f"{len(th.violations)} violate" + (f", {len(th.undecided)} ?" if th.undecided else "")
    return _td(f"<details><summary>{text}</summary>{_e(names)}</details>", f"background:{colour}")


def family_table(results: list[Classification]) -> HTML:
    """One row per family: how many of its forms are in each class ("yes" of all), and the forms
    that violate Theorems 1 and 3; the family's forms one per row behind its name."""
    head = "".join(_td(_e(h), tag="th") for h in ("family", "forms", *(report.SHORT[k] for k in CLASSES),
                                                  "Thm 1", "Thm 3"))
    rows = []
    for name, group in families(results):
        listing = ", ".join(f"{c.form.name} ({c.form.asm})" for c in group)
        cells = [_td(f"<details><summary>{_e(name)}</summary>{_e(listing)}</details>"),
                 _td(str(len(group)), "text-align:right")]
        cells += [_family_cell(group, k) for k in CLASSES]
        rows.append("<tr>" + "".join(cells + [_family_theorem_cell(group, "1"),
                                              _family_theorem_cell(group, "3")]) + "</tr>")
    note = (f"<p style=\"font-size:12px\">{len(results)} forms in {len(rows)} families; a cell is "
            "how many of the family's forms are in the class (darker: more); grey: some answer "
            "unknown</p>")
    return HTML(f"{note}<table {_TABLE}><tr>{head}</tr>{''.join(rows)}</table>")


def classification_table(profile: str) -> HTML:
    """The whole classification of ``profile``, grouped by family, with its theorem verdicts on top."""
    results = classified(profile)
    return HTML(theorems(profile).text + family_table(results).text)


def theorems(profile: str) -> HTML:
    """Theorems 1 and 3 checked over every form of ``profile``, with the violations listed."""
    results = classified(profile)
    parts = []
    for num in ("1", "3"):
        th = theorem(num, results)
        colour = {"holds": "green", "fails": "#b2182b", "unknown": "#b8860b"}[th.verdict]
        parts.append(f"<h4>[{_e(profile)}] Theorem {num}: {_e(th.statement)}: "
                     f'<span style="color:{colour}">{th.verdict.upper()}</span> '
                     f"({len(th.violations)} violations, {len(th.undecided)} undecided, "
                     f"{len(results)} forms)</h4>")
        if th.violations:
            rows = "".join("<tr>" + _td(_e(c.form.name)) + _td(_e(c.form.asm)) +
                           _td(_e(report.explain(c, th.cls)[0])) +
                           _td(_e(report.explain(c, th.cls)[1])) + "</tr>" for c in th.violations)
            parts.append(f"<details><summary>violations</summary><table {_TABLE}><tr>"
                         + "".join(_td(h, tag="th") for h in ("form", "asm", "because", "witness"))
                         + f"</tr>{rows}</table></details>")
        if th.undecided:
            parts.append(f"<p>undecided: {_e(', '.join(c.form.name for c in th.undecided))}</p>")
    return HTML("".join(parts))


# --- witnesses ------------------------------------------------------------------------------------

LABELS = {"state": ("state",), "native": ("native, CPL 0", "deprivileged, CPL 3"),
          "a": ("state", "relocated twin")}
_ALWAYS = ("cpl", "eip", "eax", "esp")


def _fmt(name: str, v) -> str:
    if name == "cpl":
        return str(v)
    w = st.FIELD[name].width
    return f"{v:#0{w // 4 + 2}x}" if w >= 4 else str(v)


def _mem(cells: dict) -> str:
    """Bytes as runs of consecutive addresses: ``0x8000: 00 01 02``."""
    runs, out = [], []
    for a in sorted(cells):
        if runs and a == runs[-1][-1] + 1:
            runs[-1].append(a)
        else:
            runs.append([a])
    for r in runs:
        out.append(f"{r[0]:#x}: " + " ".join(f"{cells[a]:02x}" for a in r))
    return "<br>".join(out) or "-"


def _post(pre: dict, outcome: dict) -> dict | None:
    if outcome.get("fault"):
        return None
    post = {k: (dict(v) if isinstance(v, dict) else v) for k, v in pre.items()}
    for k, v in outcome.get("changed", {}).items():
        if isinstance(v, dict):
            post[k].update(v)
        else:
            post[k] = v
    return post


def _result(outcome: dict) -> str:
    if outcome.get("fault"):
        code = outcome.get("error_code")
        code = "" if code is None else f"({code:#x})"
        return f"<b>{_e(vector_name(outcome['vector']))}{code}</b>: {_e(outcome.get('reason', ''))}"
    return "completes without a trap"


class Witness:
    """A witness as a readable state: the fields that matter before, and the two outcomes."""

    def __init__(self, c: Classification, cls: str):
        self.c, self.cls = c, cls
        self.answer = c.answers[cls]

    @property
    def confirmed(self) -> bool | None:
        """The witness replayed on the concrete semantics (``popek_goldberg.recheck``)."""
        return recheck(self.c, self.cls) if self.answer.witness else None

    def states(self) -> list[tuple[str, dict, dict]]:
        w = self.answer.witness or {}
        key = next((k for k in LABELS if k in w), None)
        if key is None:
            return []
        names = {"state": ["state"], "native": ["native", "deprivileged"], "a": ["a", "b"]}[key]
        return [(lbl, w[n], w[f"{n}_outcome"]) for lbl, n in zip(LABELS[key], names)]

    def fields(self) -> list[str]:
        """CPL and a few registers, whatever differs between the states, whatever a run changed."""
        runs = self.states()
        keep = set(_ALWAYS)
        for _, pre, out in runs:
            keep |= {k for k in out.get("changed", {}) if k not in ("mem", "io")}
        if len(runs) == 2:
            (_, a, _), (_, b, _) = runs
            keep |= {k for k in st.SCALARS if a.get(k) != b.get(k)}
        return [f.name for f in st.FIELDS if f.name in keep and not f.index_width]

    def _repr_html_(self) -> str:
        c, a = self.c, self.answer
        value = "?" if a.value is None else ("yes" if a.value else "no")
        head = (f"<h4>{_e(c.form.name)} <code>{_e(c.form.asm)}</code>: {_e(self.cls)} under "
                f"{_e(c.profile.name)} = {value} ({_e(settled_by(c, self.cls))}: {_e(a.note)})</h4>")
        runs = self.states()
        if not runs:
            return head + "<p>No witness: the answer is a proof that no such state exists (UNSAT).</p>"
        ok = self.confirmed
        head += (f"<p>Replayed on the concrete semantics: "
                 f"<b>{'confirmed' if ok else 'NOT confirmed'}</b></p>")
        fields = self.fields()
        if len(runs) == 1:
            (lbl, pre, out), = runs
            post = _post(pre, out)
            cols = ["field", "before", "after" if post else "after (trapped)"]
            rows = [(f, pre[f], post[f] if post else pre[f]) for f in fields]
            mem = [("memory", _mem(pre.get("mem", {})), _mem(post["mem"]) if post else "-")]
            outcomes = f"<p>{_e(lbl)}: {_result(out)}</p>"
        else:
            (la, pa, oa), (lb, pb, ob) = runs
            cols = ["field", f"{la}: before", f"{lb}: before", f"{la}: after", f"{lb}: after"]
            qa, qb = _post(pa, oa), _post(pb, ob)
            rows = [(f, pa[f], pb[f], qa[f] if qa else None, qb[f] if qb else None) for f in fields]
            mem = [("memory", _mem(pa.get("mem", {})), _mem(pb.get("mem", {})),
                    _mem(qa["mem"]) if qa else "-", _mem(qb["mem"]) if qb else "-")]
            outcomes = (f"<table {_TABLE}><tr>{_td(_e(la), tag='th')}{_td(_e(lb), tag='th')}</tr>"
                        f"<tr>{_td(_result(oa))}{_td(_result(ob))}</tr></table>")
        body = [f"<tr>{''.join(_td(_e(x), tag='th') for x in cols)}</tr>"]
        for r in rows:
            name, vals = r[0], r[1:]
            differ = len(runs) == 2 and (vals[0] != vals[1] or vals[2] != vals[3])
            style = "background:#fff3b0" if differ else ""
            body.append("<tr>" + _td(_e(name)) + "".join(
                _td("-" if v is None else _fmt(name, v), style) for v in vals) + "</tr>")
        body.append("<tr>" + "".join(_td(x if i else _e(x)) for i, x in enumerate(mem[0])) + "</tr>")
        return head + outcomes + f"<table {_TABLE}>{''.join(body)}</table>"


def witness(form: str, cls: str, profile: str = "pentium") -> Witness | HTML:
    """The witness (or proof) for ``form`` being ``cls`` under ``profile``."""
    if form not in isa.REGISTRY:
        return HTML(f"<p><i>{_e(form)} is not in the model yet.</i></p>")
    if cls not in CLASSES:
        raise KeyError(f"unknown class {cls!r} (known: {', '.join(CLASSES)})")
    return Witness(classification(form, profile), cls)


def form_report(c: Classification) -> str:
    """Every class of one form: its answer, how it was settled, and the witness (HTML)."""
    rows = []
    for cls in CLASSES:
        a = c.answers[cls]
        line = report.witness_line(a.witness) if a.witness else ""
        rows.append("<tr>" + _td(_e(cls)) + _cell(c, cls) +
                    _td(_e(settled_by(c, cls))) + _td(_e(a.note)) + _td(_e(line)) + "</tr>")
    head = "".join(_td(h, tag="th") for h in ("class", "answer", "settled", "how", "witness"))
    says = {"holds": "consistent with", "fails": "violates", "unknown": "undecided for"}
    verdicts = "; ".join(f"{says[theorem(n, [c]).verdict]} Theorem {n}" for n in ("1", "3"))
    details = "".join(
        f"<details><summary>witness: {_e(cls)}</summary>{Witness(c, cls)._repr_html_()}</details>"
        for cls in CLASSES if c.answers[cls].witness and c.answers[cls].verdict != "derived")
    return (f'<div class="pgvirt-form" data-form="{_e(c.form.name)}" data-profile="{_e(c.profile.name)}">'
            f"<h3>{_e(c.form.name)} <code>{_e(c.form.asm)}</code> ({_e(c.form.bytes.hex())}) "
            f"under {_e(c.profile.name)}</h3><p>{_e(verdicts)}</p>"
            f"<table {_TABLE}><tr>{head}</tr>{''.join(rows)}</table>{details}</div>")


# --- the heat map ----------------------------------------------------------------------------------

class Picture:
    """A matplotlib Figure shown as PNG without pyplot (no global figure state, no double display)."""

    def __init__(self, figure):
        self.figure = figure

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=90)
        return buf.getvalue()


def family_grid(results: list[Classification]) -> tuple[list[str], list[list[float]]]:
    """Families x classes: the share of each family's forms in the class (None if any answer is
    unknown, so that a share is never an undecided count)."""
    names, grid = [], []
    for name, group in families(results):
        names.append(f"{name} ({len(group)})")
        row = []
        for k in CLASSES:
            yes, _, unknown = family_counts(group, k)
            row.append(None if unknown else yes / len(group))
        grid.append(row)
    return names, grid


def heatmap(profile: str) -> Picture:
    """Families x classes over every form, each cell the share of the family's forms in the class."""
    import matplotlib
    from matplotlib.figure import Figure

    results = classified(profile)
    names, grid = family_grid(results)
    fig = Figure(figsize=(8, 1.8 + 0.14 * len(names)))
    ax = fig.add_subplot()
    # unknown cells are masked (NaN) and drawn grey by the colormap's "bad" colour
    values = [[float("nan") if v is None else v for v in row] for row in grid]
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#bdbdbd")
    im = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(CLASSES)), [report.SHORT[k] for k in CLASSES])
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xticks([x - 0.5 for x in range(1, len(CLASSES))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(names))], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.4)
    ax.tick_params(which="minor", length=0)
    ax.set_title(f"Popek-Goldberg classes by family, profile {profile} ({len(results)} forms)", pad=24)
    fig.colorbar(im, ax=ax, fraction=0.03, label="share of the family's forms in the class "
                                                 "(grey: some answer unknown)")
    fig.tight_layout()
    return Picture(fig)


# --- the explorer --------------------------------------------------------------------------------

class Explorer:
    """Pick a profile and an instruction; the HTML below shows every class with proof and witness.

    Every form can be picked, hand-written and derived: a family first (as notebook 02's table
    groups them), then one of its forms; or a search over every form's name and asm, whose hits
    (at most ``MAX_HITS``) replace the family's list.  Only the form shown is classified.  The
    callbacks set ``html.value`` themselves (no output-widget printing), so they run the same
    with or without a front end.
    """

    MAX_HITS = 200

    def __init__(self, profile: str = "pentium", form: str | None = None):
        import ipywidgets as w

        self.groups = catalogue()
        self._family_of = {n: fam for fam, forms in self.groups for n, _ in forms}
        form = form or isa.FORMS[0].name
        if form not in self._family_of:
            raise KeyError(f"unknown instruction form {form!r}")
        self.profile = w.Dropdown(options=list(profiles.PROFILES), value=profile, description="profile")
        self.family = w.Dropdown(options=[(f"{fam} ({len(forms)})", fam) for fam, forms in self.groups],
                                 value=self._family_of[form], description="family")
        self.search = w.Text(value="", placeholder="name or asm, e.g. vpaddd", description="search",
                             continuous_update=False)
        self.form = w.Dropdown(options=self._options(self.family.value), value=form,
                               description="instruction")
        self.html = w.HTML()
        self.profile.observe(self.update, names="value")
        self.form.observe(self.update, names="value")
        self.family.observe(self._pick_family, names="value")
        self.search.observe(self._find, names="value")
        self.widget = w.VBox([w.HBox([self.profile, self.family]), w.HBox([self.search, self.form]),
                              self.html])
        self.update()

    def _options(self, fam: str) -> list[tuple[str, str]]:
        forms = dict(self.groups)[fam]
        return [(f"{n}: {a}", n) for n, a in forms]

    def _set_forms(self, options: list[tuple[str, str]]) -> None:
        """New choices; the first is shown (one classification, not one per option passed)."""
        if not options:
            return
        self.form.unobserve(self.update, names="value")
        try:
            self.form.options = options
            self.form.value = options[0][1]
        finally:
            self.form.observe(self.update, names="value")
        self.update()

    def _pick_family(self, change) -> None:
        self.search.value = ""
        self._set_forms(self._options(change["new"]))

    def _find(self, change) -> None:
        text = change["new"].strip().lower()
        if not text:
            self._set_forms(self._options(self.family.value))
            return
        hits = [(f"{n}: {a}", n) for _, forms in self.groups for n, a in forms
                if text in n or text in a.lower()]
        self._set_forms(hits[:self.MAX_HITS])

    def update(self, change=None) -> None:
        self.html.value = form_report(classification(self.form.value, self.profile.value))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def explorer(profile: str = "pentium", form: str | None = None) -> Explorer:
    return Explorer(profile, form)
