"""The counterexample of a Theorem-1 violation: a guest run natively and the same guest as a
trap-and-emulate monitor really runs it.

For a form that is sensitive but not privileged, the solver is asked for a pair of states:

* ``native``: a CPL-0 guest state with its own tables and flags (the guest as it believes it
  runs);
* ``deprivileged``: the same guest as the monitor runs it - ``profiles.with_mode(..., host=True)``
  applied to ``popek_goldberg.relocated(native)``: the same USER fields and address space, CPL 3,
  the profile's host settings (IOPL, CR4 bits, no I/O bitmap: ``profiles.deprivileged``), and
  the monitor's own descriptor tables, TR, CRs, hidden attributes and the other relocation fields;

such that **the deprivileged run does not trap** (so the monitor never gets control) and either

* its *visible result* differs from the native run's (``popek_goldberg.visible_parts``: traps,
  vectors and error codes, USER fields with CS/SS compared without their RPL, stored bytes), or
* the native run changes a SYSTEM field and the deprivileged run does not end with the same
  value in the bits that changed (``(pre XOR post) AND (post XOR post') != 0``), for some SYSTEM
  field the form may write (its ``effects``) or some I/O port it writes - the intended
  system-state change is silently lost or altered (POPFD's IF, a segment load that reads the
  monitor's GDT instead of the guest's, ...).  Bits the guest did not change are not compared:
  the two runs start from different SYSTEM values (the monitor's), so their deltas may differ
  while the guest's intent is carried out.

The query is built from the Engine's pieces (the form's one definition, ``frame``, ``relocated``,
``visible_parts``); nothing about instructions is described here.  Both states are constrained to
be replayable on the emulator (``replayable``: what ``emulator.machine`` can load, and CS.D = SS.B =
CR0.ET = 1, which the 32-bit, P6-or-later forms presuppose), and re-solved within ``tidy`` (flat
segments, tables and stack in low memory) for a readable pair; the model's predictions for both
runs go into the witness.  ``criterion_concrete`` evaluates the same criterion on concrete results
(the replay applies it to the emulator's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import z3

from pgvirt.model import isa, profiles
from pgvirt.model import state as st
from pgvirt.model.form import Form
from pgvirt.model.outcome import Fault, Next, Outcome, from_changes_json
from pgvirt.model.derived import registry
from pgvirt.model.profiles import Profile
from pgvirt.model.profiles.hardware import Ownership, ownership

from .popek_goldberg import (Engine, Query, relocated, system_writes, tidy_memory, tidy_state,
                             visible_differs_concrete, visible_parts)
from .solver import DEFAULT_TIMEOUT_MS, Verdict, in_worker

LOW, HIGH = 0x8000, 0x80000       # every memory access of a replayable pair lies in [LOW, HIGH)
CODE_LO, CODE_HI = 0x1000, 0x1F00  # EIP (CS.base = 0): below every access


# --- the two states ------------------------------------------------------------------------------

_PAIRS: dict[str, tuple] = {}


def deprivileged_twin(s, profile: Profile, tag: str = "d"):
    """``s`` as a trap-and-emulate monitor runs it: relocated, CPL 3, host settings."""
    return profiles.with_mode(relocated(s, profile, tag), 3, profile, host=True)


def _pair(profile: Profile):
    """(native, deprivileged, wf(d), deprivileged(d) constraint, its extra addresses), per profile."""
    p = _PAIRS.get(profile.name)
    if p is None:
        from .popek_goldberg import frame
        s = frame(profile).s
        d = deprivileged_twin(s, profile)
        dep, extra = profiles.deprivileged(d, profile)
        p = _PAIRS[profile.name] = (s, d, profiles.wellformed(d, profile), dep, extra)
    return p


def replayable(x) -> list:
    """Constraints that the emulator can load ``x`` (``emulator.machine``'s checks) and that the
    forms' 32-bit P6 reading applies: CS.D = SS.B = 1, CR0.ET = 1."""
    c = [z3.Implies(st.bit(x.cr0, st.CR0_NW), st.bit(x.cr0, st.CR0_CD)), st.bit(x.cr0, st.CR0_ET),
         z3.ULT(x.sysenter_cs, 0x10000),
         z3.Extract(15, 2, x.cs) != 0, z3.Extract(15, 2, x.ss) != 0,
         z3.Extract(14, 14, x.cs_attr) == 1, z3.Extract(14, 14, x.ss_attr) == 1,
         z3.Implies(x.cpl != 0, z3.Extract(15, 2, x.cs) != z3.Extract(15, 2, x.ss)),
         z3.ULE(x.eip, x.cs_limit)]
    for r in st.SREGS:
        sel, base, limit, attr = x[r], x[f"{r}_base"], x[f"{r}_limit"], x[f"{r}_attr"]
        g = z3.Extract(15, 15, attr) == 1
        encodable = z3.If(g, limit & 0xFFF == 0xFFF, z3.ULE(limit, 0xFFFFF))
        present = z3.And(z3.Extract(4, 4, attr) == 1, z3.Extract(7, 7, attr) == 1,
                         z3.Extract(0, 0, attr) == 1, encodable)
        if r in ("cs", "ss"):
            c.append(present)
            continue
        code = z3.Extract(3, 3, attr) == 1
        conforming_code = z3.And(code, z3.Extract(2, 2, attr) == 1)
        dpl = z3.Extract(6, 5, attr)
        loadable = z3.And(present, z3.Implies(code, z3.Extract(1, 1, attr) == 1),
                          z3.Or(conforming_code, z3.And(z3.ULE(z3.Extract(1, 0, sel), dpl),
                                                       z3.UGE(dpl, x.cpl))))
        null = z3.Extract(15, 2, sel) == 0
        c.append(z3.If(null, z3.And(base == 0, limit == 0, attr == 0), loadable))
    return c


def _placed(x) -> list:
    """Hard placement for replay: flat CS at a low EIP, every access above it."""
    return [x.cs_base == 0, z3.ULE(CODE_LO, x.eip), z3.ULT(x.eip, CODE_HI)]


def _inside(addresses) -> list:
    return [c for ad in addresses for c in (z3.ULE(LOW, ad), z3.ULT(ad, HIGH))]


def lost_change_parts(n: Outcome, d: Outcome) -> list:
    """Ways the native run changes bits of a SYSTEM field (or port) that the deprivileged run
    leaves with other values; both runs without a fault."""
    ok = z3.And(z3.Not(n.faults), z3.Not(d.faults))
    parts = []
    for name, addrs in system_writes(n):
        if addrs is None:
            a0, a1, b1 = n.pre[name], n.post[name], d.post[name]
            if not a1.eq(a0):
                parts.append(z3.And(ok, a0 != a1, _lost(a0, a1, b1)))
        elif addrs:
            cells = []
            for ad in addrs:
                a0, a1 = z3.Select(n.pre[name], ad), z3.Select(n.post[name], ad)
                cells.append(z3.And(a0 != a1, _lost(a0, a1, z3.Select(d.post[name], ad))))
            parts.append(z3.And(ok, z3.Or(cells)))
    return parts


def _lost(a0, a1, b1):
    """A bit the native run changed (``a0`` to ``a1``) ends otherwise (``b1``) deprivileged;
    the same expression on Z3 terms and on ints."""
    return (a0 ^ a1) & (a1 ^ b1) != 0


# --- the query -----------------------------------------------------------------------------------

@dataclass
class Counterexample:
    form: Form
    profile: Profile
    verdict: str                 # "found" | "none" (UNSAT) | "unknown"
    witness: dict | None
    seconds: float
    note: str = ""

    def __repr__(self) -> str:
        return f"<Counterexample {self.form.name} [{self.profile.name}]: {self.verdict}>"

    def as_json(self) -> dict:
        f = self.form
        return {"name": f.name, "mnemonic": f.mnemonic, "asm": f.asm, "bytes": f.bytes.hex(),
                "profile": self.profile.name, "verdict": self.verdict, "witness": self.witness,
                "seconds": round(self.seconds, 3), "note": self.note}


def query(eng: Engine) -> Query:
    """The counterexample query of ``eng``'s form (see the module docstring)."""
    s, d, wf_d, dep_d, extra_d = _pair(eng.profile)
    o = eng.o
    od = eng.run(d)
    constraints = ([s.cpl == 0, wf_d, od.assumed, dep_d, z3.Not(od.faults)]
                   + replayable(s) + replayable(d) + _placed(s) + _placed(d)
                   + _inside(ad for arr, ad in list(o.loads + o.stores + od.loads + od.stores) + list(extra_d)
                             if arr == "mem"))
    goal = visible_parts(o, od) + lost_change_parts(o, od)
    tidy = tidy_state(s) + tidy_state(d) + tidy_memory(o) + tidy_memory(od)
    return Query("counterexample", constraints, goal, {"native": s, "deprivileged": d},
                 {"native": o, "deprivileged": od}, {"deprivileged": list(extra_d)}, tidy, eng.wf)


def steering(form: Form, q: Query, avoid) -> list[tuple[str, z3.BoolRef]]:
    """(id, constraint) for each ``avoid`` entry that can affect ``form``: neither run of the pair
    meets its trigger.  ``avoid`` holds (id, trigger) with ``trigger(form, state, outcome)`` a Z3
    Boolean over the model's terms, or None when the entry cannot affect the form (an emulator's
    deviation table supplies them; this module knows no emulator)."""
    out = []
    for ident, trigger in avoid or ():
        parts = [t for t in (trigger(form, q.states[k], q.outcomes[k]) for k in ("native", "deprivileged"))
                 if t is not None]
        if parts:
            out.append((ident, z3.Not(z3.Or(parts))))
    return out


def unavoidable(eng: Engine, q: Query, steer: list) -> list[str]:
    """Which entries of ``steer`` (together UNSAT with ``q``) make it so: each one that alone
    leaves no witness; if none does alone, all of them together."""
    import dataclasses
    alone = []
    for ident, c in steer:
        if z3.is_false(z3.simplify(c)):
            alone.append(ident)
            continue
        r, _ = eng.solve(dataclasses.replace(q, constraints=q.constraints + [c]))
        if r.verdict is Verdict.PROVED:
            alone.append(ident)
    return alone or [i for i, _ in steer]


def find(form: Form | str, profile: Profile | str, timeout_ms: int = DEFAULT_TIMEOUT_MS,
         avoid=None) -> Counterexample:
    """Solve the counterexample query for ``form`` under ``profile``.

    ``avoid``: (id, trigger) pairs of an emulator's known deviations (``steering``).  The pair is
    first asked to meet none of them; only if no such pair exists (or the solver cannot tell) is
    the query asked without them, and the witness then says which entries were unavoidable
    (``witness["steering"]``: {"avoided": ids} or {"unavoidable": ids} or {"unknown": ids})."""
    form = isa.get(form) if isinstance(form, str) else form
    profile = profiles.get(profile) if isinstance(profile, str) else profile
    t0 = time.perf_counter()
    eng = Engine(form, profile, timeout_ms)
    q = query(eng)
    steer = steering(form, q, avoid)
    if steer:
        import dataclasses
        # an entry whose trigger always holds for this form cannot be avoided: no need to ask
        hopeless = [i for i, c in steer if z3.is_false(z3.simplify(c))]
        rest = [(i, c) for i, c in steer if i not in hopeless]
        r2 = None
        if rest:
            q2 = dataclasses.replace(q, constraints=q.constraints + [c for _, c in rest])
            # within the tidy shape first (flat segments, low tables): it meets most triggers'
            # negations already, so that query is usually the easy one
            r2, chosen2 = eng.solve(dataclasses.replace(q2, constraints=q2.constraints + q.tidy))
            if r2.verdict is not Verdict.REFUTED:
                r2, chosen2 = eng.solve(q2)
            if r2.verdict is Verdict.UNKNOWN:
                # the steered query is the harder one; the search is chaotic: one longer try
                eng.timeout *= 3
                try:
                    r2, chosen2 = eng.solve(q2)
                finally:
                    eng.timeout //= 3
            if r2.verdict is Verdict.REFUTED:
                w, _ = eng.witness(q2, r2, chosen2, readable=True)
                w = _finish(w)
                w["steering"] = {"avoided": [i for i, _ in rest]}
                if hopeless:
                    w["steering"]["unavoidable"] = hopeless
                return Counterexample(form, profile, "found", w, time.perf_counter() - t0,
                                      "; ".join(w["criterion"]))
        if r2 is None or r2.verdict is Verdict.PROVED:
            steered = {"unavoidable": hopeless + (unavoidable(eng, q, rest) if rest else [])}
        else:
            steered = {"unknown": [i for i, _ in rest], "unavoidable": hopeless}
    r, chosen = eng.solve(q)
    if r.verdict is Verdict.PROVED:
        return Counterexample(form, profile, "none", None, time.perf_counter() - t0,
                              "no replayable pair: the deprivileged run traps or matches the native one")
    if r.verdict is Verdict.UNKNOWN:
        return Counterexample(form, profile, "unknown", None, time.perf_counter() - t0,
                              r.reason or "solver gave no answer")
    w, _ = eng.witness(q, r, chosen, readable=True)
    w = _finish(w)
    if steer:
        w["steering"] = steered
    return Counterexample(form, profile, "found", w, time.perf_counter() - t0,
                          "; ".join(w["criterion"]))


def _finish(w: dict) -> dict:
    """The witness as replays read it: both states (complete on their own: each has the memory
    either run touches), the model's prediction for each, and why the pair is a counterexample."""
    out = {"native": w["native"], "deprivileged": w["deprivileged"],
           "model": {"native": w["native_outcome"], "deprivileged": w["deprivileged_outcome"]}}
    n, d = out["native"], out["deprivileged"]
    # One memory (a USER field): each state lists every byte either one was read at.
    for arr in ("mem",):
        both = dict(n[arr]) | dict(d[arr])
        n[arr], d[arr] = dict(sorted(both.items())), dict(sorted(both.items()))
    out["criterion"] = criterion_concrete(n, from_changes_json(n, w["native_outcome"]),
                                          d, from_changes_json(d, w["deprivileged_outcome"]))
    return out


def criterion_concrete(native: Mapping, native_res: Fault | Next, dep: Mapping,
                       dep_res: Fault | Next, ignore: tuple[str, ...] = ()) -> list[str]:
    """The counterexample criterion on concrete results: the reasons it holds (empty: it does not).

    ``ignore`` names SYSTEM fields whose values are not observed (an emulator's NOT_HELD ones)."""
    if isinstance(dep_res, Fault):
        return []
    reasons = []
    if visible_differs_concrete(native, native_res, dep, dep_res):
        if isinstance(native_res, Fault):
            reasons.append(f"the native run traps ({native_res}) and the deprivileged one does not")
        else:
            diff = [n for n in st.users() if not st.FIELD[n].index_width
                    and _vis(n, native_res.state[n]) != _vis(n, dep_res.state[n])]
            reasons.append("visible result differs" + (f": {', '.join(diff)}" if diff else ": memory"))
    if isinstance(native_res, Next):
        lost = []
        for name in st.systems():
            if name in ignore:
                continue
            if st.FIELD[name].index_width:
                a, b = native_res.state[name], dep_res.state[name]
                for k in set(a) | set(b):
                    a0, a1 = native[name].get(k, 0), a.get(k, 0)
                    b1 = b.get(k, dep[name].get(k, 0))
                    if a0 != a1 and _lost(a0, a1, b1):
                        lost.append(f"{name}[{k:#x}]")
                continue
            a0, a1, b1 = native[name], native_res.state[name], dep_res.state[name]
            if a0 != a1 and _lost(a0, a1, b1):
                lost.append(name)
        if lost:
            reasons.append("system change lost: " + ", ".join(sorted(lost)))
    return reasons


def _vis(name: str, v: int) -> int:
    return v & 0xFFFC if name in ("cs", "ss") else v


# --- many forms -----------------------------------------------------------------------------------

def _job(args) -> dict:
    name, pname, timeout, avoid = args
    return find(name, pname, timeout, avoid).as_json()


def find_many(names: list[str], profile: Profile | str, jobs: int | None = None,
              timeout_ms: int = DEFAULT_TIMEOUT_MS, progress=None, avoid=None) -> list[dict]:
    """``find`` for each form (JSON dicts, in ``names`` order) in ``jobs`` worker processes;
    ``avoid`` as in ``find`` (module-level triggers, so they reach the workers)."""
    import os

    from pgvirt.model import parallel

    pname = profile if isinstance(profile, str) else profile.name
    profiles.get(pname)
    work = [(n, pname, timeout_ms, list(avoid) if avoid else None) for n in names]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work) or 1))
    done: dict[str, dict] = {}
    if jobs == 1:
        for w in work:
            r = _job(w)
            done[r["name"]] = r
            if progress:
                progress(r["name"])
    else:
        for r in parallel.imap(_job, work, jobs, ordered=False, initializer=in_worker):
            done[r["name"]] = r
            if progress:
                progress(r["name"])
    return [done[n] for n in names]


def violations(profile: Profile | str, forms=None, jobs: int | None = None,
               timeout_ms: int = DEFAULT_TIMEOUT_MS) -> tuple[list[str], list[str]]:
    """(forms violating Theorem 1 under ``profile``, forms left undecided), by classification
    (the cache of derived answers, ``verify.cache``, spares re-deriving unchanged forms)."""
    from .cache import classifications
    from .popek_goldberg import theorem
    names = [f.name for f in isa.FORMS] if forms is None else list(forms)
    known, _ = classifications(profile, names, jobs=jobs, timeout_ms=timeout_ms)
    th = theorem("1", [known[n] for n in names])
    return [c.form.name for c in th.violations], [c.form.name for c in th.undecided]


# --- replay: a hole as a pair of states the emulator can run ------------------------------------
#
# Unicorn has no VMX or SVM: it runs an instruction on a state as bare hardware does.  A non-root
# run WITHOUT an exit is that bare run of the real state, except where VMX/SVM changes what the
# instruction does without exiting (SDM Vol. 3C 25.3: the CR0/CR4 read shadows and the bits the
# masks keep, the TSC offset, the #UD of a secondary control's instruction).  So a hole replays as
# two bare runs: the non-root state as the processor holds it (the replay's ``deprivileged``
# side), and the guest's own machine (its ``native`` side).  Where the model's non-root run of
# the witness differs from its bare run, the emulator cannot show it, and the replay says so.

REPLAY_LABELS = ("guest's own machine", "non-root")


def hole_witness(form: Form | str, profile: Profile, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> dict:
    """Solve for a hole of ``form`` under ``profile`` within what the emulator can load (the
    placement and loadability constraints of trap-and-emulate replays,
    ``replayable``).  JSON: ``verdict`` found / none / unknown, ``witness`` with
    ``native`` (the guest's own machine), ``deprivileged`` (the non-root state), ``model`` (each
    run's outcome), ``as_bare`` (the model's non-root run of the state equals its bare run, so the
    emulator's run of it stands for the non-root run) and ``criterion``."""
    import dataclasses

    from pgvirt.model.outcome import from_changes_json

    form = registry.get(form) if isinstance(form, str) else form
    from .hardware import HwEngine

    eng = HwEngine(form, profile, timeout_ms)
    qs = eng.queries()
    s, n, o, on = eng.s, eng.n, eng.o, eng.on
    extra = (replayable(s) + replayable(n) + _placed(s) + _placed(n)
             + _inside(ad for arr, ad in list(o.loads + o.stores + on.loads + on.stores) if arr == "mem"))
    out = {"name": form.name, "asm": form.asm, "verdict": "none", "witness": None,
           "note": "no replayable hole: every non-root run exits or matches the guest's own machine"}
    for key in ("control", "mode"):
        q = dataclasses.replace(qs[key], constraints=qs[key].constraints + extra)
        r, chosen = eng.solve(q)
        if r.verdict is Verdict.UNKNOWN:
            out.update(verdict="unknown", note=r.reason or "solver gave no answer")
            continue
        if r.verdict is not Verdict.REFUTED:
            continue
        w, _ = eng.witness(q, r, chosen, readable=True)
        g, nat = w["guest"], w["native"]
        both = dict(g["mem"]) | dict(nat["mem"])
        g["mem"], nat["mem"] = dict(sorted(both.items())), dict(sorted(both.items()))
        nonroot = form.execute(g, features=profile.features, vm=profile.vm)
        bare = form.execute(g, features=profile.features)
        same = nonroot == bare and _bare_everywhere(form, g, profile, timeout_ms)
        wit = {"native": nat, "deprivileged": g,
               "model": {"native": w["native_outcome"], "deprivileged": w["guest_outcome"]},
               "as_bare": same, "hole": key}
        if not same:
            shown = (f" ({_line(g, nonroot)}, bare: {_line(g, bare)})" if nonroot != bare else
                     " (they differ in what the model leaves free: the host processor answering)")
            wit["not_bare"] = (f"the non-root run is not the bare run of the same state{shown}: VMX/SVM "
                               "changes the instruction without an exit (read shadows, TSC offset, a "
                               "disabled instruction's #UD, the host processor answering), which one "
                               "emulator without VMX/SVM cannot show")
        crit = hole_criterion(ownership(profile.vm))
        wit["criterion"] = crit(nat, from_changes_json(nat, wit["model"]["native"]),
                                g, from_changes_json(g, wit["model"]["deprivileged"]))
        out.update(verdict="found", witness=wit, note="; ".join(wit["criterion"]))
        return out
    return out


def _bare_everywhere(form: Form, g: dict, profile: Profile, timeout_ms: int) -> bool:
    """Whether the non-root run of the concrete state ``g`` is its bare run whatever the model
    leaves free (the processor's answers: CPUID, RDRAND...): UNSAT of a difference in the
    outcome or in any field either run writes."""
    from .solver import check
    s = st.concrete(g)
    a = form.run(s, features=profile.features, vm=profile.vm)
    b = form.run(s, features=profile.features)
    names = sorted(set(a.effects) | set(b.effects))
    differ = z3.Or(a.faults != b.faults,
                   z3.And(z3.Not(a.faults), z3.Or([a.post[n] != b.post[n] for n in names] or [False])))
    return check([a.assumed, b.assumed, differ], timeout_ms).verdict is Verdict.PROVED


def _line(pre: dict, res) -> str:
    from pgvirt.model.outcome import Next
    if not isinstance(res, Next):
        return str(res)
    ch = {k: v for k, v in res.state.items() if k not in ("mem", "io") and pre.get(k) != v}
    return ", ".join(f"{k}={v:#x}" for k, v in sorted(ch.items())) or "no register change"


def hole_criterion(own: Ownership):
    """The hole criterion on concrete results, as ``owned_changes``, ``visible_parts`` and
    ``guest_state_parts`` state it on terms: ``criterion(native, native_res, dep, dep_res,
    ignore=())`` with ``native`` the guest's own machine and ``dep`` the non-root state; the
    reasons it holds (empty: it does not).  ``ignore``: fields whose values are not observed."""
    from pgvirt.model.outcome import Exit, Fault, Next

    def criterion(native, native_res, dep, dep_res, ignore=()) -> list[str]:
        if dep_res is None or isinstance(dep_res, Exit):
            return []
        reasons = []
        if isinstance(dep_res, Next):
            changed = []
            for name, mask, _ in own.fields:
                f = st.FIELD[name]
                if name in ignore or f.index_width:
                    continue
                if (dep_res.state[name] ^ dep[name]) & mask & ((1 << f.width) - 1):
                    changed.append(name)
            for port, v in dep_res.state.get("io", {}).items():
                if port in own.io_ports and v != dep["io"].get(port, 0):
                    changed.append(f"io[{port:#x}]")
            if changed:
                reasons.append("changes monitor-owned " + ", ".join(sorted(set(changed))))
        if isinstance(native_res, (Fault, Next)) and visible_differs_concrete(native, native_res, dep, dep_res):
            reasons.append("visible result differs from the guest's own machine")
        if isinstance(native_res, Next) and isinstance(dep_res, Next):
            diff = []
            for name in st.systems():
                f = st.FIELD[name]
                if f.index_width or name == "cpl" or name in ignore:
                    continue
                width = (1 << f.width) - 1
                g, sm, sv = own.guest_part(name)
                a, b = dep_res.state[name], native_res.state[name]
                if name == "tsc" and own.tsc_offset is not None:
                    a = (a + own.tsc_offset) & width
                if (a ^ b) & g or (sm and b & sm != sv):
                    diff.append(name)
            if diff:
                reasons.append("guest-owned system state differs: " + ", ".join(diff))
        return reasons
    return criterion
