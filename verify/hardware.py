"""Theorem 1, hardware version (Bugnion, Nieh and Tsafrir 2017): with root and non-root modes and
a duplicate of the processor state, a monitor can be built if every sensitive instruction is
root-mode privileged, i.e. causes a VM exit in non-root operation wherever it is sensitive.

Under a ``vtx`` or ``svm`` profile every form runs twice: in non-root operation on a state ``s``
under the profile's controls (``Form.run(vm=...)``: its exit conditions are part of its
definition), and on bare hardware on the guest's own machine ``n = guest_view(s)``
(``profiles.hardware``): the fields the monitor owns free, the masked CR0/CR4 bits as the read
shadows show them, the TSC offset.  A *hole* is a non-root run that does not exit and

control   changes state the monitor owns, or
mode      gives a visible result (trap, vector, code, USER fields, memory, the guest-owned SYSTEM
          bits) other than the guest's own machine gives.

Root-mode privileged = no hole (UNSAT, one query per kind); a hole is a witness.  Relocation needs
no query of its own: the guest's machine leaves every monitor-owned field free, so a result that
depends on one differs from it in some state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import z3

from pgvirt.model import profiles, state as st, vmx
from pgvirt.model.derived import registry
from pgvirt.model.form import Form
from pgvirt.model.outcome import Outcome
from pgvirt.model.profiles import Profile
from pgvirt.model.profiles.hardware import Ownership, entry_ok, guest_view, ownership

from .queries import (Answer, Classification, Query, _derived, _sat_answer, solve, tidy_memory,
                      tidy_state, visible_parts, witness)
from .solver import DEFAULT_TIMEOUT_MS, Result, Session, Verdict

ASSUMPTIONS = (
    "the guest runs in VMX non-root operation / SVM guest mode under the profile's controls, "
    "on a real state VM entry / VMRUN accepts (SDM Vol. 3C 26.3.1.1; APM Vol. 2 15.5.1)",
    "the guest's own machine is a well-formed 32-bit unpaged protected-mode state; the masked "
    "CR0/CR4 bits are the read shadows, so a guest whose masked bits differ from them is another "
    "configuration",
    "the monitor loads the guest's values of what VM entry does not (CR2, DR0-DR3, DR6, XCR0, "
    "IA32_TSC_AUX) before entering it",
)


@dataclass(frozen=True)
class HwFrame:
    """The symbolic states of a hardware profile, built once per process and profile."""

    s: Any
    n: Any
    own: Ownership
    wf_s: z3.BoolRef
    wf_n: z3.BoolRef
    tidy: list


_FRAMES: dict[Profile, HwFrame] = {}
# The proof obligations of a form (``export-smt`` writes these): the holes, all and at CPL 3.
OBLIGATIONS = ("control", "mode", "control_user", "mode_user")
_SHARED: dict[int, Session] = {}


def hw_frame(profile: Profile) -> HwFrame:
    f = _FRAMES.get(profile)
    if f is None:
        s = st.fresh("s")
        own = ownership(profile.vm)
        n = guest_view(s, own)
        wf_s = z3.And(profiles.wellformed(forced_paging_hidden(s, profile), profile),
                      entry_ok(s, profile.vm))
        f = HwFrame(s, n, own, wf_s, profiles.wellformed(n, profile), tidy_state(s))
        _FRAMES[profile] = f
    return f


def forced_paging_hidden(s, profile: Profile):
    """``s`` as the well-formedness rules judge it.  Without unrestricted guest VM entry needs
    CR0.PG = 1 (SDM Vol. 3C 26.3.1.1): a monitor runs an unpaged guest with paging forced on and
    hidden behind the CR0 read shadow (PG masked, shadow 0), its page table mapping guest memory
    one to one, which the model (linear = physical) leaves as it is.  Such a state is judged with
    PG as the guest sees it; any other configuration keeps the rule CR0.PG = 0 of the real state,
    and one without unrestricted guest then has no state at all (verdicts UNKNOWN, never proved)."""
    c = profile.vm
    if isinstance(c, vmx.Controls) and not c.on("unrestricted_guest") \
            and c.cr0_mask & vmx.CR0_PG and not c.cr0_shadow & vmx.CR0_PG:
        return s.replace(cr0=s.cr0 & ~vmx.CR0_PG)
    return s


def owned_changes(o: Outcome, own: Ownership) -> list:
    """Ways the non-root run changes state the monitor owns (the ports it owns included)."""
    parts = []
    for name in o.effects:
        f = st.FIELD[name]
        if f.owner != st.SYSTEM:
            continue
        if name == "io":
            for arr, ad in o.stores:
                if arr == "io":
                    parts.append(z3.And(own.io_owned(ad), z3.Select(o.post.io, ad) != z3.Select(o.pre.io, ad)))
            continue
        m = own.mask(name) & ((1 << f.width) - 1)
        if m:
            parts.append((o.post[name] ^ o.pre[name]) & m != 0)
    return parts


def guest_state_parts(o: Outcome, on: Outcome, own: Ownership) -> list:
    """Ways the guest-owned SYSTEM state after the non-root run differs from the guest's own
    machine's after its run (neither trapped): unmasked bits equal, masked bits equal to the
    shadow, the TSC equal up to the offset."""
    neither = z3.And(z3.Not(o.faults), z3.Not(on.faults))
    parts = []
    for name in sorted(set(o.effects) | set(on.effects)):
        f = st.FIELD[name]
        if f.owner != st.SYSTEM or f.index_width or name == "cpl":
            continue
        g, sm, sv = own.guest_part(name)
        a, b = o.post[name], on.post[name]
        if name == "tsc" and own.tsc_offset is not None:
            a = a + own.tsc_offset
        if g:
            parts.append(z3.And(neither, a & g != b & g))
        if sm:
            parts.append(z3.And(neither, b & sm != sv))
    return parts


class HwEngine:
    """The queries of one form under one hardware profile; solved and read out as the legacy
    engine's are (``queries.solve``: disjunct by disjunct, then together; ``queries.witness``)."""

    def __init__(self, form: Form, profile: Profile, timeout_ms: int = DEFAULT_TIMEOUT_MS):
        self.form, self.profile, self.timeout = form, profile, timeout_ms
        fr = self.frame = hw_frame(profile)
        self.s, self.n = fr.s, fr.n
        self.o = form.run(fr.s, features=profile.features, vm=profile.vm)
        self.on = form.run(fr.n, features=profile.features)
        base = [self.o.assumed, self.on.assumed]
        if registry.is_derived(form.name):
            sess = _SHARED.get(id(fr))
            if sess is None:
                sess = _SHARED[id(fr)] = Session([fr.wf_s, fr.wf_n], timeout_ms)
            self.session, self._scoped, self.wf = sess, base, [fr.wf_s, fr.wf_n] + base
        else:
            self.wf = [fr.wf_s, fr.wf_n] + base
            self.session, self._scoped = Session(self.wf, timeout_ms), []

    def check(self, constraints: list, timeout_ms: int, rlimit: int = 0) -> Result:
        return self.session.check(self._scoped + constraints, timeout_ms, rlimit)

    def solve(self, q: Query) -> tuple[Result, list | None]:
        return solve(self, q)

    def witness(self, q: Query, r: Result, chosen: list, readable: bool) -> tuple[dict, float]:
        return witness(self, q, r, chosen, readable)

    def _tidy(self) -> list:
        return self.frame.tidy + tidy_memory(self.o) + tidy_memory(self.on)

    def queries(self) -> dict[str, Query]:
        o, on, own = self.o, self.on, self.frame.own
        runs = [z3.Not(o.exits)]
        states = {"guest": self.s, "native": self.n}
        outs = {"guest": o, "native": on}

        def q(name, extra, goal):
            return Query(name, runs + extra, goal, states, outs, {}, self._tidy, self.wf)
        control = owned_changes(o, own)
        mode = visible_parts(o, on) + guest_state_parts(o, on, own)
        user = [self.s.cpl == 3]
        return {"control": q("hole.control", [z3.Not(o.faults)], control),
                "mode": q("hole.mode", [], mode),
                "control_user": q("hole.control.user", [z3.Not(o.faults)] + user, control),
                "mode_user": q("hole.mode.user", user, mode),
                "unmodelled": Query("unmodelled", runs + [z3.Not(o.assumed)], [z3.BoolVal(True)], states, outs,
                                    {}, self._tidy, [self.frame.wf_s]),
                "exists": Query("vacuity", [], [z3.BoolVal(True)], states, outs, {}, self._tidy, self.wf)}



def _unmodelled(eng: HwEngine, q: Query) -> dict | None:
    """A witness that the non-root run, without an exit, breaks one of its form's assumptions
    (the solver asked without them), or None (UNSAT)."""
    from .solver import check
    r = check(q.base + q.constraints, eng.timeout)
    if r.verdict is Verdict.PROVED:
        return None
    return {"reason": "unmodelled", "answer": r.verdict.name.lower()}


def classify(form: Form, profile: Profile, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Classification:
    """Root-mode privilege and the holes of ``form`` under a hardware profile, each from Z3."""
    eng = HwEngine(form, profile, timeout_ms)
    qs = eng.queries()
    raw: dict[str, tuple[Result, list | None]] = {}
    for key, implied in (("control", None), ("mode", None), ("control_user", "control"),
                         ("mode_user", "mode")):
        if implied and raw[implied][0].verdict is Verdict.PROVED:
            raw[key] = (Result(Verdict.PROVED, None, 0.0, f"implied by {implied}"), None)
        else:
            raw[key] = eng.solve(qs[key])
    res = {}
    hole = any(r.verdict is Verdict.REFUTED for r, _ in raw.values())
    for key, (r, chosen) in raw.items():
        if r.verdict is Verdict.REFUTED:
            w, extra = eng.witness(qs[key], r, chosen, readable=True)
            res[key] = (r, w, r.seconds + extra)
        else:
            res[key] = (r, None, r.seconds)
    out = Classification(form, profile)
    out.assumptions = profiles.ASSUMPTIONS[:6] + ASSUMPTIONS + tuple(
        sorted({why for _, why in eng.o.assumptions + eng.on.assumptions}))
    a = out.answers
    a["control_sensitive"] = _sat_answer("control_sensitive", *res["control"])
    a["mode_sensitive"] = _sat_answer("mode_sensitive", *res["mode"])
    a["location_sensitive"] = Answer("location_sensitive", False, "derived", None, 0.0,
                                     "part of mode_sensitive: the guest's own machine leaves every "
                                     "monitor-owned field free")
    ctl_u = _sat_answer("control_sensitive.user", *res["control_user"])
    mode_u = _sat_answer("mode_sensitive.user", *res["mode_user"])
    for k in ("control_sensitive", "mode_sensitive"):
        if a[k].value is True:
            a[k].note = "a non-root run without a VM exit: " + ("changes state the monitor owns"
                        if k == "control_sensitive" else "differs from the guest's own machine")
    a["behavior_sensitive"] = _derived("behavior_sensitive", a["mode_sensitive"], a["location_sensitive"])
    a["sensitive"] = _derived("sensitive", a["control_sensitive"], a["behavior_sensitive"])
    a["user_sensitive"] = _derived("user_sensitive", ctl_u, mode_u)
    a["innocuous"] = Answer("innocuous", None if a["sensitive"].value is None else not a["sensitive"].value,
                            "derived", None, 0.0, "no hole")
    secs = sum(t for _, _, t in res.values())
    verdicts = [r.verdict for r, _ in raw.values()]
    if hole:
        key = next(k for k in ("control", "mode", "control_user", "mode_user")
                   if raw[k][0].verdict is Verdict.REFUTED)
        a["privileged"] = Answer("privileged", False, "refuted", res[key][1], secs,
                                 "runs in non-root operation without a VM exit where it is sensitive")
    elif Verdict.UNKNOWN in verdicts:
        a["privileged"] = Answer("privileged", None, "unknown", None, secs,
                                 next(r.reason for r, _ in raw.values() if r.verdict is Verdict.UNKNOWN))
    else:
        ex, _ = eng.solve(qs["exists"])
        secs += ex.seconds
        if ex.verdict is Verdict.REFUTED:
            a["privileged"] = Answer("privileged", True, "proved", None, secs,
                                     "root-mode privileged: every non-root run exits where it is "
                                     "sensitive (UNSAT)")
        else:
            # No state at all: a proof about nothing proves nothing.
            why = "no well-formed non-root state with these assumptions exists" \
                if ex.verdict is Verdict.PROVED else (ex.reason or "solver gave no answer")
            a["privileged"] = Answer("privileged", None, "unknown", None, secs, why)
    # Proofs hold under the forms' assumptions, as everywhere; whether a non-root run without an
    # exit reaches what they assume away is recorded, so that the controls search never calls a
    # control harmless only because its absence leads there (verify/controls.py).
    um = _unmodelled(eng, qs["unmodelled"]) if eng.o.assumptions else None
    a["unmodelled"] = Answer("unmodelled", um is not None, "refuted" if um else "proved", None, 0.0,
                             "; ".join(sorted({w for _, w in eng.o.assumptions})) if um else "")
    return out
