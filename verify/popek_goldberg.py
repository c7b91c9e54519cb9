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

from .solver import DEFAULT_TIMEOUT_MS, QUICK_MS, Result, Session, Verdict, in_worker

CLASSES = ("privileged", "control_sensitive", "mode_sensitive", "location_sensitive",
           "behavior_sensitive", "sensitive", "user_sensitive", "innocuous")
TIDY_MS = 2000  # budget for re-solving a SAT query into a readable witness
SEG_SPACE = monitor.ADDRESS_SPACE        # the guest's address space: relocation keeps it
RPL_COUPLED = monitor.RPL_COUPLED


# --- three-valued logic ----------------------------------------------------------------------

def t_or(*vals: bool | None) -> bool | None:
    if any(v is True for v in vals):
        return True
    if all(v is False for v in vals):
        return False
    return None


def t_not(v: bool | None) -> bool | None:
    return None if v is None else not v


# --- answers -----------------------------------------------------------------------------------

@dataclass
class Answer:
    """One class of one form: value True/False/None, how it was decided, and the witness."""

    cls: str
    value: bool | None
    verdict: str            # "proved" (by UNSAT), "refuted" (by a SAT witness), "unknown", "derived"
    witness: dict | None = None
    seconds: float = 0.0
    note: str = ""

    def __repr__(self) -> str:
        return f"<Answer {self.cls}={self.value} ({self.verdict}{', witness' if self.witness else ''})>"

    def as_json(self) -> dict:
        return {"class": self.cls, "value": self.value, "verdict": self.verdict,
                "witness": self.witness, "seconds": round(self.seconds, 4), "note": self.note}


@dataclass
class Classification:
    form: Form
    profile: Profile
    answers: dict[str, Answer] = field(default_factory=dict)
    assumptions: tuple[str, ...] = ()

    def __repr__(self) -> str:
        yes = [c for c in CLASSES if self.answers.get(c) is not None and self[c]]
        return f"<Classification {self.form.name} [{self.profile.name}]: {', '.join(yes) or 'none'}>"

    def __getitem__(self, cls: str) -> bool | None:
        return self.answers[cls].value

    @property
    def seconds(self) -> float:
        return sum(a.seconds for a in self.answers.values())

    def row(self) -> dict:
        f = self.form
        out = {"name": f.name, "mnemonic": f.mnemonic, "asm": f.asm, "bytes": f.bytes.hex()}
        out.update({c: self[c] for c in CLASSES})
        return out


# --- building blocks ---------------------------------------------------------------------------

def _mask_rpl(v):
    return v & 0xFFFC


def visible_parts(a: Outcome, b: Outcome) -> list:
    """Ways the two runs' visible results can differ (see the module docstring), cheapest first."""
    fa, fb = a.faults, b.faults
    parts = [fa != fb, z3.And(fa, fb, z3.Or(a.vector != b.vector, a.code != b.code))]
    neither = z3.And(z3.Not(fa), z3.Not(fb))
    for name in st.users():
        if st.FIELD[name].index_width:
            continue
        x, y = a.post[name], b.post[name]
        if name in RPL_COUPLED:
            x, y = _mask_rpl(x), _mask_rpl(y)
        if not x.eq(y):
            parts.append(z3.And(neither, x != y))
    addrs = [ad for arr, ad in a.stores + b.stores if arr == "mem"]
    if addrs:
        parts.append(z3.And(neither, z3.Or([z3.Select(a.post.mem, ad) != z3.Select(b.post.mem, ad)
                                            for ad in addrs])))
    return parts


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


def tidy_state(s) -> list:
    """Constraints that make a witness easy to read and replay; never used in a proof."""
    c = []
    for r in st.SREGS:
        c += [s[f"{r}_base"] == 0, s[f"{r}_limit"] == 0xFFFFFFFF]
    c += [z3.ULE(0x1000, s.eip), z3.ULT(s.eip, 0x1F00)]
    for reg in ("gdtr_base", "idtr_base", "ldtr_base", "tr_base"):
        c += [z3.ULE(0x10000, s[reg]), z3.ULT(s[reg], 0x70000)]
    c += [z3.ULE(0x20000, s.esp), z3.ULT(s.esp, 0x70000)]
    # Data segments the CPU could not have loaded at this CPL (only SYSEXIT leaves them) are
    # legal but cannot be set up in the emulator, and SYSENTER_CS keeps 16 bits there.
    for r in ("ds", "es", "fs", "gs"):
        attr = s[f"{r}_attr"]
        c.append(z3.Or(z3.Extract(7, 7, attr) == 0, z3.UGE(z3.Extract(6, 5, attr), s.cpl)))
    c.append(z3.ULT(s.sysenter_cs, 0x10000))
    return c


def tidy_memory(o: Outcome) -> list:
    return [c for arr, ad in o.loads + o.stores if arr == "mem"
            for c in (z3.ULE(0x8000, ad), z3.ULT(ad, 0x80000))]


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


_FRAMES: dict[Profile, Frame] = {}


def frame(profile: Profile) -> Frame:
    f = _FRAMES.get(profile)
    if f is None:
        s = st.fresh("s")
        u = profiles.with_mode(s, 3, profile, host=True)
        r = relocated(s, profile, "r")
        (ds, es), (du, eu), (dr, er) = (profiles.deprivileged(x, profile) for x in (s, u, r))
        f = Frame(s, u, r, *(profiles.wellformed(x, profile) for x in (s, u, r)), ds, du, dr,
                  es, eu, er, *(tidy_state(x) for x in (s, u, r)))
        _FRAMES[profile] = f
    return f


_SESSIONS: dict[int, Session] = {}


def _shared_session(fr: Frame, timeout_ms: int) -> Session:
    s = _SESSIONS.get(id(fr))
    if s is None:
        s = _SESSIONS[id(fr)] = Session([fr.wf_s], timeout_ms)
    return s


@dataclass
class Query:
    """Is there a model of ``constraints`` and one of the ``goal`` disjuncts?"""

    name: str
    constraints: list                     # besides ``base``
    goal: list
    states: dict[str, Any]                # label -> symbolic state
    outcomes: dict[str, Outcome]
    extra_addrs: dict[str, list]          # label -> [(array, addr term)]
    tidy: Any                             # list, or a function giving it (built only when needed)
    base: list = field(default_factory=list)  # shared by every query of the form

    def __post_init__(self) -> None:
        simplified = (z3.simplify(g) for g in self.goal)
        self.goal = [g for g in simplified if not z3.is_false(g)]

    @property
    def formula(self) -> list:
        """The whole query as one conjunction (for export and for other solvers)."""
        return self.base + self.constraints + [z3.Or(self.goal) if self.goal else z3.BoolVal(False)]


def _witness(q: Query, model: z3.ModelRef) -> dict:
    out: dict[str, Any] = {}
    # A pair shares memory: every state gets the union of the addresses either run touches, so
    # each state is complete on its own.
    shared: dict[str, set[int]] = {}
    for o in q.outcomes.values():
        for arr, v in o.addresses(model).items():
            shared.setdefault(arr, set()).update(v)
    for label, s in q.states.items():
        o = q.outcomes[label]
        addrs = {k: set(v) for k, v in shared.items()}
        extra = q.extra_addrs.get(label, [])
        for (arr, _), a in zip(extra, st.eval_many(model, [ad for _, ad in extra])):
            addrs.setdefault(arr, set()).add(a)
        pre = st.evaluate(s, model, addrs)
        res = o.concrete(model, addrs, pre)
        out[label] = pre
        out[f"{label}_outcome"] = changes_json(pre, res)
    return out


class Engine:
    """Builds and runs the queries of one form under one profile.

    The form runs three times symbolically: on a state ``s``, on its user-mode twin ``u`` and on
    its relocated twin ``r``; every query is a different set of constraints over these.
    """

    def __init__(self, form: Form, profile: Profile, timeout_ms: int = DEFAULT_TIMEOUT_MS):
        self.form, self.profile, self.timeout = form, profile, timeout_ms
        fr = self.frame = frame(profile)
        self.s, self.u, self.r = fr.s, fr.u, fr.r
        self.o, self.ou, self.orr = self.run(fr.s), self.run(fr.u), self.run(fr.r)
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

    def check(self, constraints: list, timeout_ms: int) -> Result:
        """Constraints are checked together with the form's shared ones (``self.wf``)."""
        return self.session.check(self._scoped + constraints, timeout_ms)

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
        """Decide ``q``: the result, and for SAT the constraints that were satisfied.

        The goal's disjuncts are tried one at a time first, each with a short budget: one
        disjunct has a much smaller cone of influence than the whole goal.  SAT for one is SAT;
        the disjuncts left undecided are then asked together with the full budget.  A goal with
        no disjunct left (every way to differ is syntactically impossible) is UNSAT as it stands.
        """
        if not q.goal:
            return Result(Verdict.PROVED, None, 0.0, "the goal is false: no field can differ"), None
        spent = 0.0
        pending = []
        parts = q.goal if len(q.goal) > 1 else []
        for part in parts:
            rp = self.check(q.constraints + [part], min(self.timeout, QUICK_MS))
            spent += rp.seconds
            if rp.verdict is Verdict.REFUTED:
                rp.seconds = spent
                return rp, q.constraints + [part]
            if rp.verdict is Verdict.UNKNOWN:
                pending.append(part)
        if parts and not pending:
            return Result(Verdict.PROVED, None, spent, "every disjunct UNSAT"), None
        chosen = q.constraints + [z3.Or(pending) if parts else z3.Or(q.goal)]
        r = self.check(chosen, self.timeout)
        r.seconds += spent
        if r.verdict is Verdict.UNKNOWN and len(pending) > 1:
            # A disjunction can be harder than every one of its parts (a loaded machine also
            # makes the short first tries miss): each undecided part gets a share of the budget.
            share = max(min(self.timeout, QUICK_MS), self.timeout // len(pending))
            proved = 0
            for part in pending:
                rp = self.check(q.constraints + [part], share)
                r.seconds += rp.seconds
                if rp.verdict is Verdict.REFUTED:
                    rp.seconds = r.seconds
                    return rp, q.constraints + [part]
                proved += rp.verdict is Verdict.PROVED
            if proved == len(pending):
                return Result(Verdict.PROVED, None, r.seconds, "every disjunct UNSAT"), None
        return r, (chosen if r.verdict is Verdict.REFUTED else None)

    def witness(self, q: Query, r: Result, chosen: list, readable: bool) -> tuple[dict, float]:
        """The witness of a SAT answer; ``readable`` re-solves within ``tidy`` first."""
        model, spent = r.model, 0.0
        if readable:
            tidy = q.tidy() if callable(q.tidy) else q.tidy
            nice = self.check(chosen + tidy, min(self.timeout, TIDY_MS))
            spent = nice.seconds
            if nice.verdict is Verdict.REFUTED:
                model = nice.model
        return _witness(q, model), spent


def _sat_answer(cls: str, r: Result, w: dict | None, dt: float) -> Answer:
    """Existential class: SAT (witness) means True, UNSAT means False."""
    if r.verdict is Verdict.REFUTED:
        return Answer(cls, True, "refuted", w, dt, "witness found")
    if r.verdict is Verdict.PROVED:
        return Answer(cls, False, "proved", None, dt, "no state exists (UNSAT)")
    return Answer(cls, None, "unknown", None, dt, r.reason or "solver gave no answer")


def classify(form: Form | str, profile: Profile | str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Classification:
    """Every Popek-Goldberg class of ``form`` under ``profile``, each derived by Z3."""
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

    # Witnesses are read for every SAT answer; a violation's are re-solved to be readable
    # (flat segments, tables and stack in low memory) because reports and replays show them.
    sat = {k: r.verdict is Verdict.REFUTED for k, (r, _) in raw.items()}
    violation = sat["user_runs"] and any(sat[k] for k in ("control", "mode", "location"))
    res: dict[str, tuple[Result, dict | None, float]] = {}
    for key, (r, chosen) in raw.items():
        if sat[key]:
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


def _derived(cls: str, *parts: Answer) -> Answer:
    value = t_or(*(p.value for p in parts))
    witness = next((p for p in parts if p.value is True), None)
    secs = sum(p.seconds for p in parts)
    if witness is not None:
        return Answer(cls, True, "derived", witness.witness, secs, f"because {witness.cls}")
    note = " and ".join(f"not {p.cls}" for p in parts) if value is False else "a part is unknown"
    return Answer(cls, value, "derived", None, secs, note)


# --- theorems -----------------------------------------------------------------------------------

@dataclass
class Theorem:
    number: str
    statement: str
    verdict: str                 # "holds" | "fails" | "unknown"
    violations: list[Classification]
    undecided: list[Classification]
    cls: str

    def __repr__(self) -> str:
        return (f"<Theorem {self.number}: {self.verdict} ({len(self.violations)} violations, "
                f"{len(self.undecided)} undecided)>")

    def as_json(self) -> dict:
        return {"verdict": self.verdict, "statement": self.statement,
                "violations": [violation_json(c, self.cls) for c in self.violations],
                "undecided": [c.form.name for c in self.undecided]}


def violation_json(c: Classification, cls: str) -> dict:
    f = c.form
    return {"name": f.name, "mnemonic": f.mnemonic, "asm": f.asm, "bytes": f.bytes.hex(),
            "class": c.answers[cls].note, "witness": {
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
    return Theorem(number, statement, verdict, violations, undecided, cls)


# --- whole-ISA runs -----------------------------------------------------------------------------

def _job(args) -> tuple[str, str, dict[str, Answer], tuple[str, ...], int, float]:
    """Classify one (form name, Profile, timeout): the profile goes whole, so profiles that are
    not in ``profiles.PROFILES`` (a test's, a benchmark's) work too."""
    from .solver import STATS
    name, prof, timeout = args
    q0, s0 = STATS.queries, STATS.seconds
    c = classify(name, prof, timeout)
    return name, prof.name, c.answers, c.assumptions, STATS.queries - q0, STATS.seconds - s0


def classify_many(profile_names, forms=None, jobs: int | None = None,
                  timeout_ms: int = DEFAULT_TIMEOUT_MS, progress=None) -> dict[str, list[Classification]]:
    """Classify every form (or ``forms``) under each profile, all in one pool of ``jobs`` workers.

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
            work.append((n, p, timeout_ms))
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
