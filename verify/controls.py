"""Which exiting controls a monitor needs: for every VM-execution control (VT-x) or intercept (SVM)
the configuration sets, whether switching it off breaks the hardware Theorem 1 (a form with a
witness) or is harmless (every form re-asked proved), and a minimal sufficient set.

Switching a control off changes two things only: the exit conditions of the forms whose
definitions consulted it (``Outcome.consulted``, recorded by the vocabulary in model/checks.py),
and, for a few controls, what the monitor owns (``profiles.hardware.ownership``: EPT, external-
interrupt exiting, the I/O bitmaps, nested paging, the INTR intercept...).  Only those forms are
re-asked: the consulting ones, and for an ownership change every hand-written form (a derived
form reads no SYSTEM field but the FPU/SIMD controls, issue 12's refusal rule, and no control
changes who owns those).  Everything else keeps its proof from the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgvirt.model import isa, svm, vmx
from pgvirt.model.derived import registry
from pgvirt.model.profiles import Profile
from pgvirt.model.profiles.hardware import ownership

from .popek_goldberg import Classification, classify_many, theorem
from .solver import DEFAULT_TIMEOUT_MS

# Ownership of these fields' bits can change with a control; derived forms read none of them.
_DERIVED_READS = {"cr0", "cr4", "xcr0"}


@dataclass
class ControlResult:
    control: str
    verdict: str                 # "necessary", "harmless", "refused" (VM entry), "unknown"
                                 # (no answer, or only behaviour the model assumes away)
    reasked: int = 0
    form: str = ""
    asm: str = ""
    why: str = ""
    witness: dict | None = None

    def as_json(self) -> dict:
        return {"control": self.control, "verdict": self.verdict, "forms_reasked": self.reasked,
                "form": self.form or None, "asm": self.asm or None, "why": self.why,
                "witness": self.witness}


@dataclass
class Search:
    profile: str
    configuration: str
    baseline: str                                   # the theorem's verdict with every control on
    results: list[ControlResult] = field(default_factory=list)
    minimal: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict:
        return {"profile": self.profile, "configuration": self.configuration,
                "baseline": self.baseline, "controls": [r.as_json() for r in self.results],
                "minimal_sufficient_set": self.minimal}


def candidates(c) -> list[str]:
    """The exiting controls / intercepts ``c`` sets (those the search may switch off)."""
    if isinstance(c, vmx.Controls):
        return [n for n, k in vmx.CONTROLS.items()
                if c.on(n) and not (k.group != "secondary" and vmx.DEFAULT1[k.group] >> k.bit & 1)]
    out = [n for n in svm.INTERCEPTS if c.on(n)]
    out += [f"cr{n}_{rw}" for rw in ("read", "write") for n in range(16) if c.cr(n, rw == "write")]
    out += [f"dr{n}_{rw}" for rw in ("read", "write") for n in range(16) if c.dr(n, rw == "write")]
    return out


def _without(c, names):
    for n in names:
        c = c.without(n)
    if isinstance(c, vmx.Controls):
        return vmx.check(c)
    return svm.check(c)


def _unmodelled(c: Classification) -> bool:
    a = c.answers.get("unmodelled")
    return a is not None and a.value is not False


def _owner_changes(a, b) -> set[str]:
    oa, ob = ownership(a), ownership(b)
    names = {f for f, _, _ in oa.fields + ob.fields} | {f for f, _, _, _ in oa.shadows + ob.shadows}
    out = {n for n in names if oa.mask(n) != ob.mask(n) or oa.shadow(n) != ob.shadow(n)}
    if oa.io_ports != ob.io_ports:
        out.add("io")
    if oa.tsc_offset != ob.tsc_offset:
        out.add("tsc")
    return out


def _dependents(names, consulted: dict[str, frozenset], secondary: bool) -> set[str]:
    keys = set(names)
    if secondary:   # 'activate secondary controls' gates every secondary control
        keys |= {n for n, k in vmx.CONTROLS.items() if k.group == "secondary"}
    return {f for f, used in consulted.items() if used & keys}


class Searcher:
    """Classifies under one configuration at a time, re-asking only what a change can affect."""

    def __init__(self, profile: Profile, jobs: int | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 forms=None):
        self.profile, self.jobs, self.timeout = profile, jobs, timeout_ms
        self.names = [f if isinstance(f, str) else f.name for f in (forms or isa.FORMS)]
        self.hand = [n for n in self.names if not registry.is_derived(n)]
        self.base = classify_many([profile], self.names, jobs, timeout_ms)[profile.name]
        self.by_name = {c.form.name: c for c in self.base}
        self.consulted = self._consulted(profile)

    def _consulted(self, profile: Profile) -> dict[str, frozenset]:
        from pgvirt.model import state as st
        s = st.fresh("s")
        return {n: registry.get(n).run(s, features=profile.features, vm=profile.vm).consulted
                for n in self.hand}

    def verdict(self, removed: list[str]) -> tuple[str, Classification | None, int]:
        """The theorem's verdict with ``removed`` off: ("holds" | "fails" | "unknown" |
        "refused: rule"), a violating (or undecided) classification, the number re-asked."""
        c0 = self.profile.vm
        try:
            c = _without(c0, removed)
        except (vmx.ControlsError, svm.InterceptsError) as e:
            return f"refused: {e}", None, 0
        changed = _owner_changes(c0, c)
        secondary = "activate_secondary_controls" in removed
        forms = _dependents(removed, self.consulted, secondary)
        if changed or "unrestricted_guest" in removed or "enable_ept" in removed or secondary:
            forms |= set(self.hand)
            if changed & _DERIVED_READS:
                forms = set(self.names)
        if not forms:
            return "holds", None, 0
        order = [n for n in self.names if n in forms]
        res = classify_many([self.profile.with_controls(c)], order, self.jobs, self.timeout)[self.profile.name]
        th = theorem("1", res)
        bad = (th.violations or th.undecided or [None])[0]
        if th.verdict == "holds":
            # Reaching what a form assumes away, where the baseline did not: no proof of harmlessness.
            new = [r for r in res if _unmodelled(r) and not _unmodelled(self.by_name[r.form.name])]
            if new:
                return "unmodelled", new[0], len(order)
        return th.verdict, bad, len(order)

    def run(self) -> list[ControlResult]:
        out = []
        for name in candidates(self.profile.vm):
            v, bad, k = self.verdict([name])
            if v.startswith("refused"):
                out.append(ControlResult(name, "refused", 0, why=v[len("refused: "):]))
            elif v == "holds":
                out.append(ControlResult(name, "harmless", k, why=f"every form re-asked proved ({k})"
                                         if k else "no form's definition reads it"))
            elif v == "fails":
                a = bad.answers["privileged"]
                kind = "control" if bad["control_sensitive"] else "mode"
                out.append(ControlResult(name, "necessary", k, bad.form.name, bad.form.asm,
                                         f"a {kind} hole: {bad.answers['sensitive'].note or kind}",
                                         a.witness))
            elif v == "unmodelled":
                out.append(ControlResult(name, "unknown", k, bad.form.name, bad.form.asm,
                                         "without it a run reaches behaviour the model assumes away: "
                                         + bad.answers["unmodelled"].note))
            else:
                out.append(ControlResult(name, "unknown", k, bad.form.name if bad else "",
                                         bad.form.asm if bad else "",
                                         bad.answers["privileged"].note if bad else "no answer"))
        return out

    def minimal(self, results: list[ControlResult]) -> list[str]:
        """Greedy: drop the harmless controls one after another while the theorem still holds;
        the rest is a sufficient set none of whose members the greedy order could drop."""
        removed: list[str] = []
        for r in results:
            if r.verdict != "harmless":
                continue
            v, _, _ = self.verdict(removed + [r.control])
            if v == "holds":
                removed.append(r.control)
        return [n for n in candidates(self.profile.vm) if n not in removed]


def search(profile: Profile, jobs: int | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
           forms=None) -> Search:
    import time
    t0 = time.perf_counter()
    s = Searcher(profile, jobs, timeout_ms, forms)
    base = theorem("1", s.base).verdict
    out = Search(profile.name, profile.vm.name, base)
    out.results = s.run()
    out.minimal = s.minimal(out.results) if base == "holds" else []
    out.seconds = time.perf_counter() - t0
    return out
