"""The Popek-Goldberg definitions as named solver queries over the IA-32 model.

Reading of the 1974 definitions for x86 (README, "Mode and relocation on x86"):

* *mode* M = CPL together with the fields the profile's monitor imposes on a deprivileged guest
  (IOPL, CR4.TSD/PCE/UMIP...).  Supervisor = CPL 0 with the guest's own settings; user = the
  same state moved to CPL 3 with the host settings (``profiles.with_mode``).
* *relocation* R = every other SYSTEM field: descriptor-table registers, LDTR/TR, hidden segment
  attributes, CR0/CR2/CR3, the non-mode CR4 and EFLAGS system bits, DRs, MSRs, I/O ports.
  Segment bases and limits are the guest's address space: equal in a location pair.
* *visible result* = trap or not (with vector and error code), and, without a trap, the USER
  fields afterwards (CS/SS compared without their RPL, which is the CPL) and every memory byte
  either run writes.

Queries (each over well-formed states satisfying the form's stated assumptions):

privileged        no user-mode state runs without a fault (UNSAT) and some CPL-0 state does (SAT)
control_sensitive some state runs without a fault and changes a SYSTEM field
mode_sensitive    some CPL-0 state and its user-mode twin give different visible results
location_sensitive some two states equal but for relocation give different visible results
user_sensitive    control sensitive from a user-mode state, or location sensitive with both in user mode
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import z3

from pgvirt.model import isa, monitor, profiles, state as st
from pgvirt.model.derived import forms as dforms, registry
from pgvirt.model.form import Form
from pgvirt.model.outcome import Fault, Next, Outcome, changes_json
from pgvirt.model.profiles import Profile

from .queries import (CLASSES, RPL_COUPLED, TIDY_MS, Answer, Classification, Query, _derived,  # noqa: F401
                      _mask_rpl, _sat_answer, _witness, differences, solve, t_not, t_or, tidy_memory,
                      tidy_state, visible_parts, witness)
from .solver import DEFAULT_TIMEOUT_MS, Result, Session, Verdict, in_worker  # noqa: F401

SEG_SPACE = monitor.ADDRESS_SPACE        # the guest's address space: relocation keeps it


# --- building blocks ---------------------------------------------------------------------------

def system_writes(o: Outcome):
    """The SYSTEM values ``o``'s form may write: (field, None) for a scalar field, (field,
    stored addresses) for an array (I/O ports)."""
    for name in o.effects:
        f = st.FIELD[name]
        if f.owner == st.SYSTEM:
            yield name, ([ad for arr, ad in o.stores if arr == name] if f.index_width else None)


def system_change_parts(o: Outcome) -> list:
    """Ways a run can change a SYSTEM field."""
    parts = []
    for name, addrs in system_writes(o):
        if addrs is None:
            parts.append(o.post[name] != o.pre[name])
        elif addrs:
            parts.append(z3.Or([z3.Select(o.post[name], ad) != z3.Select(o.pre[name], ad)
                                for ad in addrs]))
    return parts


def relocated(s, profile: Profile, tag: str):
    """A twin of ``s`` equal in USER fields, mode, address space and the SYSTEM bits the
    profile's monitor passes through from the guest; free in the rest of the relocation."""
    changes = {}
    kept = profile.kept_bits
    for f in st.FIELDS:
        if f.owner != st.SYSTEM or f.name == "cpl" or f.name in SEG_SPACE:
            continue
        m = kept.get(f.name, 0)
        if not f.index_width and m & ((1 << f.width) - 1) == (1 << f.width) - 1:
            continue
        fresh = z3.Const(f"{tag}.{f.name}", st.sort_of(f))
        changes[f.name] = (s[f.name] & m) | (fresh & ~m) if m else fresh
    return s.replace(**changes)


@dataclass(frozen=True)
class Frame:
    """The symbolic states every query of a profile speaks about, built once per process."""

    s: Any
    u: Any
    r: Any
    wf_s: z3.BoolRef
    wf_u: z3.BoolRef
    wf_r: z3.BoolRef
    dep_s: z3.BoolRef
    dep_u: z3.BoolRef
    dep_r: z3.BoolRef
    extra_s: list
    extra_u: list
    extra_r: list
    tidy_s: list
    tidy_u: list
    tidy_r: list
    to_u: Any = None     # a term over s -> the same term over u (``state.substitution``)
    to_r: Any = None


_FRAMES: dict[Profile, Frame] = {}


def frame(profile: Profile) -> Frame:
    f = _FRAMES.get(profile)
    if f is None:
        s = st.fresh("s")
        u = profiles.with_mode(s, 3, profile, host=True)
        r = relocated(s, profile, "r")
        (ds, es), (du, eu), (dr, er) = (profiles.deprivileged(x, profile) for x in (s, u, r))
        f = Frame(s, u, r, *(profiles.wellformed(x, profile) for x in (s, u, r)), ds, du, dr,
                  es, eu, er, *(tidy_state(x) for x in (s, u, r)), st.substitution(s, u),
                  st.substitution(s, r))
        _FRAMES[profile] = f
    return f


_SESSIONS: dict[int, Session] = {}


def _shared_session(fr: Frame, timeout_ms: int) -> Session:
    s = _SESSIONS.get(id(fr))
    if s is None:
        s = _SESSIONS[id(fr)] = Session([fr.wf_s], timeout_ms)
    return s


class Engine:
    """Builds and runs the queries of one form under one profile.

    The form runs three times symbolically: on a state ``s``, on its user-mode twin ``u`` and on
    its relocated twin ``r``; every query is a different set of constraints over these.
    """

    def __init__(self, form: Form, profile: Profile, timeout_ms: int = DEFAULT_TIMEOUT_MS):
        self.form, self.profile, self.timeout = form, profile, timeout_ms
        fr = self.frame = frame(profile)
        self.s, self.u, self.r = fr.s, fr.u, fr.r
        self.o = self.run(fr.s)
        if registry.is_derived(form.name):
            # A derived form's twins are its run on s with the twin's terms substituted
            # (``Outcome.substituted``): the same formulas as running it twice more, built
            # without re-executing the definition (most of a derived form's cost).
            self.ou, self.orr = self.o.substituted(fr.u, fr.to_u), self.o.substituted(fr.r, fr.to_r)
        else:
            self.ou, self.orr = self.run(fr.u), self.run(fr.r)
        self.wf = [fr.wf_s, self.o.assumed]
        self.dep_s, self.extra_s = fr.dep_s, fr.extra_s
        self.dep_u, self.extra_u = fr.dep_u, fr.extra_u
        self.dep_r, self.extra_r = fr.dep_r, fr.extra_r
        if registry.is_derived(form.name):
            # Derived forms share one solver per profile that holds the well-formedness
            # constraints (asserted and preprocessed once): their own constraints are scoped.
            self.session = _shared_session(fr, timeout_ms)
            self._scoped = [self.o.assumed]
        else:
            self.session = Session(self.wf, timeout_ms)
            self._scoped = []

    def check(self, constraints: list, timeout_ms: int, rlimit: int = 0) -> Result:
        """Constraints are checked together with the form's shared ones (``self.wf``)."""
        return self.session.check(self._scoped + constraints, timeout_ms, rlimit)

    def run(self, s) -> Outcome:
        return self.form.run(s, features=self.profile.features)

    def tidy_s(self) -> list:
        """Readability constraints for witnesses (built only for a SAT answer's re-solve)."""
        return self.frame.tidy_s + tidy_memory(self.o)

    def _one(self, name: str, constraints: list, goal: list, extra=()) -> Query:
        return Query(name, constraints, goal, {"state": self.s}, {"state": self.o},
                     {"state": list(extra)}, self.tidy_s, self.wf)

    def queries(self) -> dict[str, Query]:
        s, o = self.s, self.o
        runs = [z3.Not(o.faults)]
        changes = system_change_parts(o)
        mode = Query("mode_sensitive",
                     [s.cpl == 0, self.frame.wf_u, self.ou.assumed, self.dep_u],
                     visible_parts(o, self.ou),
                     {"native": s, "deprivileged": self.u}, {"native": o, "deprivileged": self.ou},
                     {"deprivileged": self.extra_u},
                     lambda: self.tidy_s() + self.frame.tidy_u + tidy_memory(self.ou), self.wf)
        loc_base = [self.frame.wf_r, self.orr.assumed]
        loc_goal = visible_parts(o, self.orr)
        pair = ({"a": s, "b": self.r}, {"a": o, "b": self.orr})
        def loc_tidy():
            return self.tidy_s() + self.frame.tidy_r + tidy_memory(self.orr)
        return {
            "user_runs": self._one("privileged.user_runs", [self.dep_s], runs, self.extra_s),
            "supervisor_runs": self._one("privileged.supervisor_runs", [s.cpl == 0], runs),
            "control": self._one("control_sensitive", runs, changes),
            "control_user": self._one("control_sensitive.user", [self.dep_s] + runs, changes,
                                      self.extra_s),
            "mode": mode,
            "location": Query("location_sensitive", loc_base, loc_goal, *pair, {}, loc_tidy, self.wf),
            "location_user": Query("location_sensitive.user", loc_base + [self.dep_s, self.dep_r],
                                   loc_goal, *pair, {"a": self.extra_s, "b": self.extra_r}, loc_tidy,
                                   self.wf),
        }

    def solve(self, q: Query) -> tuple[Result, list | None]:
        """Decide ``q`` (``queries.solve``)."""
        return solve(self, q)

    def witness(self, q: Query, r: Result, chosen: list, readable: bool) -> tuple[dict, float]:
        return witness(self, q, r, chosen, readable)


def classify(form: Form | str, profile: Profile | str, timeout_ms: int = DEFAULT_TIMEOUT_MS,
             witnesses: bool = True) -> Classification:
    """Every Popek-Goldberg class of ``form`` under ``profile``, each derived by Z3.  Without
    ``witnesses`` a SAT answer carries its witness only if the form violates a theorem (what
    ``verify`` reports); the answers are the same."""
    form = registry.get(form) if isinstance(form, str) else form
    profile = profiles.get(profile) if isinstance(profile, str) else profile
    if profile.vm is not None:     # VT-x / SVM: root-mode privilege and the holes (verify/hardware.py)
        from . import hardware
        return hardware.classify(form, profile, timeout_ms)
    eng = Engine(form, profile, timeout_ms)
    qs = eng.queries()
    raw: dict[str, tuple[Result, list | None]] = {}

    def solve(key: str, implied_by: str | None = None) -> None:
        # A user-mode query is a restriction of its general one: UNSAT there is UNSAT here.
        if implied_by and raw[implied_by][0].verdict is Verdict.PROVED:
            raw[key] = (Result(Verdict.PROVED, None, 0.0, f"implied by {implied_by}"), None)
        else:
            raw[key] = eng.solve(qs[key])

    for key, implied in (("user_runs", None), ("control", None), ("control_user", "control"),
                         ("mode", None), ("location", None), ("location_user", "location")):
        solve(key, implied)
    if raw["user_runs"][0].verdict is not Verdict.REFUTED:
        solve("supervisor_runs")

    # Witnesses are read for every SAT answer (with ``witnesses`` false, for a violation's
    # only: the theorems report no other); a violation's are re-solved to be readable (flat
    # segments, tables and stack in low memory) because reports and replays show them.
    sat = {k: r.verdict is Verdict.REFUTED for k, (r, _) in raw.items()}
    violation = sat["user_runs"] and any(sat[k] for k in ("control", "mode", "location"))
    res: dict[str, tuple[Result, dict | None, float]] = {}
    for key, (r, chosen) in raw.items():
        if sat[key] and (witnesses or violation):
            w, extra = eng.witness(qs[key], r, chosen, readable=violation)
            res[key] = (r, w, r.seconds + extra)
        else:
            res[key] = (r, None, r.seconds)
    out = Classification(form, profile)
    out.assumptions = profiles.ASSUMPTIONS + tuple(sorted({why for _, why in eng.o.assumptions}))

    # privileged: no user-mode state runs without a fault, and a CPL-0 state does.
    (ru, wu, tu) = res["user_runs"]
    if ru.verdict is Verdict.REFUTED:
        priv = Answer("privileged", False, "refuted", wu, tu, "runs without a trap in user mode")
    else:
        rs, ws, ts = res["supervisor_runs"]
        if ru.verdict is Verdict.UNKNOWN or rs.verdict is Verdict.UNKNOWN:
            priv = Answer("privileged", None, "unknown", None, tu + ts, ru.reason or rs.reason)
        elif rs.verdict is Verdict.PROVED:
            priv = Answer("privileged", False, "proved", None, tu + ts, "traps in every mode")
        else:
            priv = Answer("privileged", True, "proved", ws, tu + ts,
                          "every user-mode run traps (UNSAT); witness: a CPL-0 run without a trap")
    a = out.answers
    a["privileged"] = priv
    a["control_sensitive"] = _sat_answer("control_sensitive", *res["control"])
    a["mode_sensitive"] = _sat_answer("mode_sensitive", *res["mode"])
    a["location_sensitive"] = _sat_answer("location_sensitive", *res["location"])
    ctl_u = _sat_answer("control_sensitive.user", *res["control_user"])
    loc_u = _sat_answer("location_sensitive.user", *res["location_user"])
    a["behavior_sensitive"] = _derived("behavior_sensitive", a["mode_sensitive"], a["location_sensitive"])
    a["sensitive"] = _derived("sensitive", a["control_sensitive"], a["behavior_sensitive"])
    a["user_sensitive"] = _derived("user_sensitive", ctl_u, loc_u)
    a["innocuous"] = Answer("innocuous", t_not(a["sensitive"].value), "derived", None, 0.0,
                            "not sensitive")
    return out


# --- theorems -----------------------------------------------------------------------------------

KINDS = ("hand_written", "derived")


def kind(name: str) -> str:
    """Whether a form is written by hand (model/isa) or derived from a footprint (model/derived)."""
    return "derived" if registry.is_derived(name) else "hand_written"


def kind_counts(results) -> dict[str, int]:
    """How many of ``results`` (classifications) are of each kind."""
    out = dict.fromkeys(KINDS, 0)
    for c in results:
        out[kind(c.form.name)] += 1
    return out


@dataclass
class Theorem:
    number: str
    statement: str
    verdict: str                 # "holds" | "fails" | "unknown"
    violations: list[Classification]
    undecided: list[Classification]
    cls: str
    forms: dict[str, int] = field(default_factory=dict)   # the forms it ranged over, by kind

    def __repr__(self) -> str:
        return (f"<Theorem {self.number}: {self.verdict} ({len(self.violations)} violations, "
                f"{len(self.undecided)} undecided)>")

    def as_json(self) -> dict:
        return {"verdict": self.verdict, "statement": self.statement, "forms": self.forms,
                "violations": [violation_json(c, self.cls) for c in self.violations],
                "violations_by_kind": kind_counts(self.violations),
                "undecided": [c.form.name for c in self.undecided]}


def violation_json(c: Classification, cls: str) -> dict:
    f = c.form
    return {"name": f.name, "kind": kind(f.name), "mnemonic": f.mnemonic, "asm": f.asm,
            "bytes": f.bytes.hex(), "class": c.answers[cls].note, "witness": {
                "sensitive": c.answers[cls].witness,
                "runs_unprivileged": c.answers["privileged"].witness}}


def theorem(number: str, results: list[Classification]) -> Theorem:
    """Theorem 1: sensitive ⊆ privileged.  Theorem 3: user sensitive ⊆ privileged."""
    cls = {"1": "sensitive", "3": "user_sensitive"}[number]
    statement = {"1": "every sensitive instruction is privileged (a VMM can be built)",
                 "3": "every user-sensitive instruction is privileged (a hybrid VMM can be built)"}[number]
    if results and results[0].profile.vm is not None:
        # Bugnion, Nieh and Tsafrir's hardware version (verify/hardware.py).
        statement = {"1": "every sensitive instruction is root-mode privileged: it exits in non-root "
                          "operation wherever it is sensitive (a VMM can be built on the hardware)",
                     "3": "every instruction sensitive at guest CPL 3 exits there"}[number]
    violations, undecided = [], []
    for c in results:
        s, p = c[cls], c["privileged"]
        if s is True and p is False:
            violations.append(c)
        elif s is not False and p is not True:
            undecided.append(c)
    verdict = "fails" if violations else ("unknown" if undecided else "holds")
    return Theorem(number, statement, verdict, violations, undecided, cls, kind_counts(results))


# --- whole-ISA runs -----------------------------------------------------------------------------

def _job(args) -> tuple[str, str, dict[str, Answer], tuple[str, ...], int, float]:
    """Classify one (form name, Profile, timeout, witnesses): the profile goes whole, so
    profiles that are not in ``profiles.PROFILES`` (a test's, a benchmark's) work too."""
    from .solver import STATS
    name, prof, timeout, witnesses = args
    q0, s0 = STATS.queries, STATS.seconds
    c = classify(name, prof, timeout, witnesses)
    return name, prof.name, c.answers, c.assumptions, STATS.queries - q0, STATS.seconds - s0


def classify_many(profile_names, forms=None, jobs: int | None = None,
                  timeout_ms: int = DEFAULT_TIMEOUT_MS, progress=None,
                  witnesses: bool = True) -> dict[str, list[Classification]]:
    """Classify every form (or ``forms``) under each profile, all in one pool of ``jobs`` workers
    (``witnesses``: as for ``classify``).

    ``progress`` is called with each finished form's name.  Results keep the registry's order.
    Derived forms of one shape (``derived.forms.shape``: alpha-equivalent queries) are solved
    once per profile; the others get that classification under their own name.
    """
    import os

    from pgvirt.model import parallel

    from .solver import STATS

    profs = [profiles.get(p) if isinstance(p, str) else p for p in profile_names]
    names = [f if isinstance(f, str) else f.name for f in (forms or isa.FORMS)]
    for n in names:
        registry.get(n)  # unknown names fail before any work starts
    work, alias = [], {}
    for p in profs:
        first: dict[str, str] = {}
        for n in names:
            key = shape_of(n, p)
            if key is not None and key in first:
                alias[(p.name, n)] = first[key]
                continue
            if key is not None:
                first[key] = n
            work.append((n, p, timeout_ms, witnesses))
    prof_by = {p.name: p for p in profs}
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    done: dict[tuple[str, str], Classification] = {}

    def collect(item):
        name, pname, answers, assumptions, nq, secs = item
        done[(pname, name)] = Classification(registry.get(name), prof_by[pname], answers, assumptions)
        if jobs > 1:  # worker processes kept their own counters
            STATS.queries += nq
            STATS.seconds += secs
        if progress:
            progress(name)

    if jobs <= 1:
        for w in work:
            collect(_job(w))
    else:
        for item in parallel.imap(_job, work, jobs, ordered=False, initializer=in_worker,
                                  chunksize=max(1, len(work) // (8 * jobs))):
            collect(item)
    for (pname, n), rep in alias.items():
        c = done[(pname, rep)]
        done[(pname, n)] = Classification(registry.get(n), c.profile, dict(c.answers), c.assumptions)
        if progress:
            progress(n)
    return {p.name: [done[(p.name, n)] for n in names] for p in profs}


def shape_of(name: str, profile: Profile) -> str | None:
    """The shape of a derived form under ``profile`` (None for a hand-written form)."""
    if not registry.is_derived(name):
        return None
    return dforms.shape(registry.get(name).code, profile.features)


def classify_all(profile: Profile | str, forms=None, jobs: int | None = None,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS, progress=None) -> list[Classification]:
    """Classify every form (or ``forms``) under one profile."""
    name = profile if isinstance(profile, str) else profile.name
    return classify_many([profile], forms, jobs, timeout_ms, progress)[name]


# --- concrete re-checks of witnesses ------------------------------------------------------------

def _visible(pre: dict, res) -> tuple:
    if isinstance(res, Fault):
        return ("fault", res.vector, res.code)
    post = res.state
    regs = []
    for name in st.users():
        if st.FIELD[name].index_width:
            continue
        v = post[name]
        regs.append(v & 0xFFFC if name in RPL_COUPLED else v)
    return ("next", tuple(regs))


def visible_differs_concrete(pa: dict, ra, pb: dict, rb) -> bool:
    va, vb = _visible(pa, ra), _visible(pb, rb)
    if va != vb:
        return True
    if va[0] == "fault":
        return False
    ma, mb = ra.state["mem"], rb.state["mem"]
    return any(ma.get(k, pa["mem"].get(k, 0)) != mb.get(k, pb["mem"].get(k, 0)) for k in set(ma) | set(mb))


def recheck(c: Classification, cls: str) -> bool:
    """Evaluate the semantics on ``c``'s witness for ``cls`` and confirm the claim concretely."""
    f, p = c.form, c.profile
    a = c.answers[cls]
    w = a.witness
    run = lambda s: f.execute(s, features=p.features)  # noqa: E731
    if cls == "privileged":
        if a.value:  # witness: a CPL-0 run without a trap
            return w["state"]["cpl"] == 0 and isinstance(run(w["state"]), Next)
        s = w["state"]
        return s["cpl"] == 3 and ((s["sysflags"] >> st.IOPL_LO) & 3) == p.iopl and isinstance(run(s), Next)
    if "native" in w:
        n, d = w["native"], w["deprivileged"]
        return n["cpl"] == 0 and d["cpl"] == 3 and visible_differs_concrete(n, run(n), d, run(d))
    if "a" in w:
        x, y = w["a"], w["b"]
        same_user = all(x[k] == y[k] for k in st.users() if not st.FIELD[k].index_width)
        return same_user and visible_differs_concrete(x, run(x), y, run(y))
    s = w["state"]
    res = run(s)
    if not isinstance(res, Next):
        return False
    return any(res.state[k] != s[k] for k in st.systems() if not st.FIELD[k].index_width) or \
        any(res.state["io"].get(k) != s["io"].get(k, 0) for k in res.state["io"])
