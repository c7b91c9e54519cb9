"""Notebook views of hardware virtualization (notebook 05): the four profiles' theorem verdicts
side by side with the minimal control sets, the controls table, one control switched off with the
witness that appears, and VT-x and SVM on Robin and Irvine's instructions.

Every number is an answer of the solver (``verify.popek_goldberg``, ``verify.controls``); the
views only arrange them.  Results are kept per process: each cell asks once.
"""

from __future__ import annotations

from pgvirt.model import isa, profiles, svm, vmx
from pgvirt.report.html import HTML, _e, table
from pgvirt.report.theorems import witness_line
from pgvirt.verify import controls as C
from pgvirt.verify.cache import classifications
from pgvirt.verify.popek_goldberg import classify_all, theorem

__all__ = ["PROFILES", "overview", "controls_table", "switch_off", "compare", "picker"]

PROFILES = ("pentium", "umip", "vtx", "svm")
_CLASSIFIED: dict[str, list] = {}
_SEARCHES: dict[str, C.Search] = {}


def _results(name: str) -> list:
    """Every form's classification: a hardware profile's from its controls search (the baseline
    it starts from), a legacy one's through the proof cache notebooks 01-04 share."""
    if name not in _CLASSIFIED:
        if profiles.get(name).vm is not None:
            _CLASSIFIED[name] = search(name).classifications
        else:
            names = [f.name for f in isa.FORMS]
            known, _ = classifications(name, names)
            _CLASSIFIED[name] = [known[n] for n in names]
    return _CLASSIFIED[name]


def search(name: str) -> C.Search:
    if name not in _SEARCHES:
        _SEARCHES[name] = C.search(profiles.get(name))
    return _SEARCHES[name]


def overview() -> HTML:
    """pentium / umip / vtx / svm: Theorem 1 and 3 verdicts, violations, the minimal control set."""
    rows = []
    for name in PROFILES:
        res = _results(name)
        t1, t3 = theorem("1", res), theorem("3", res)
        minimal = ", ".join(search(name).minimal) if profiles.get(name).vm is not None else \
            "(trap and emulate: no controls)"
        rows.append([name, t1.verdict, len(t1.violations), t3.verdict, len(t3.violations), len(res), minimal])
    return HTML(table(["profile", "Theorem 1", "violations", "Theorem 3", "violations", "forms",
                       "minimal sufficient controls"], rows))


def controls_table(name: str) -> HTML:
    """Every exiting control of the profile's configuration, switched off on its own."""
    s = search(name)
    rows = [[r.control, r.verdict, r.reasked, r.form, r.why + ("; " + witness_line(r.witness) if r.witness else "")]
            for r in s.results]
    head = f"<p>[{_e(name)}] configuration '{_e(s.configuration)}': Theorem 1 {_e(s.baseline)}; minimal " \
           f"sufficient set: {_e(', '.join(s.minimal))}</p>"
    return HTML(head + table(["control", "switched off", "forms re-asked", "form", "why / witness"], rows))


def _without(name: str, control: str):
    c = profiles.get(name).vm
    off = c.without(control)
    return vmx.check(off) if isinstance(off, vmx.Controls) else svm.check(off)


def switch_off(name: str, control: str) -> HTML:
    """The whole ISA under the profile's configuration without ``control``: the verdict, and the
    witness of each violation (the non-root run against the guest's own machine)."""
    try:
        c = _without(name, control)
    except (vmx.ControlsError, svm.InterceptsError) as e:
        return HTML(f"<p>{_e(control)} cannot be switched off: {_e(e)}</p>")
    res = classify_all(profiles.get(name).with_controls(c))
    th = theorem("1", res)
    rows = [[v.form.name, v.form.asm, v.answers["sensitive"].note,
             witness_line(v.answers["privileged"].witness or {})] for v in th.violations]
    head = f"<p>[{_e(name)}] without {_e(control)}: Theorem 1 <b>{_e(th.verdict)}</b> " \
           f"({len(th.violations)} violations, {len(th.undecided)} undecided)</p>"
    return HTML(head + (table(["form", "asm", "why", "witness"], rows) if rows else
                        "<p>every form proved root-mode privileged (UNSAT): the control is not needed</p>"))


def compare() -> HTML:
    rows = []
    for r in C.compare():
        def cell(x):
            return f"yes ({x['exit_reason']})" if x["can_exit"] == "exits" else \
                ("no (proved)" if x["can_exit"] == "never" else "unknown")
        rows.append([r["paper"], r["form"], cell(r["vtx"]), r["vtx"]["default"], cell(r["svm"]),
                     r["svm"]["default"], r["difference"]])
    return HTML(table(["instruction", "form", "VT-x can exit", "VT-x default", "SVM can exit",
                       "SVM default", "difference"], rows))


def picker(name: str = "vtx"):
    """A drop-down of the profile's exiting controls: picking one shows ``switch_off``'s answer."""
    import ipywidgets as w

    names = C.candidates(profiles.get(name).vm)
    first = next((n for n in ("hlt_exiting", "cpuid") if n in names), names[0])
    pick = w.Dropdown(options=names, value=first,
                      description="switch off")
    out = w.HTML(switch_off(name, pick.value).text)

    def changed(change):
        out.value = switch_off(name, change["new"]).text
    pick.observe(changed, names="value")
    box = w.VBox([pick, out])
    box.pick, box.html = pick, out
    return box
