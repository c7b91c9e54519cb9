"""The pieces every solver query of pgvirt shares, under any profile: three-valued answers, a
form's classification, a query and its witness, the visible-result comparison, and the solving
strategy (``solve``: disjunct by disjunct, then together; ``witness``: re-solved to be readable).

``popek_goldberg`` (trap and emulate) and ``hardware`` (VT-x, SVM) build their queries from these;
neither imports the other's engine.  The names are re-exported by ``popek_goldberg``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import z3

from pgvirt.model import monitor, state as st
from pgvirt.model.derived import registry
from pgvirt.model.form import Form
from pgvirt.model.outcome import Outcome, changes_json
from pgvirt.model.profiles import Profile

from .solver import Result, Verdict, decide

CLASSES = ("privileged", "control_sensitive", "mode_sensitive", "location_sensitive",
           "behavior_sensitive", "sensitive", "user_sensitive", "innocuous")
TIDY_MS = 2000  # budget for re-solving a SAT query into a readable witness
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
        out = {"name": f.name, "mnemonic": f.mnemonic, "asm": f.asm, "bytes": f.bytes.hex(),
               "code": registry.code_of(f.name)}     # the iced-x86 Code the bytes decode to
        out.update({c: self[c] for c in CLASSES})
        return out



def _mask_rpl(v):
    return v & 0xFFFC


def differences(a, b, a_post, b_post, fields, arrays=(), masked=(),
                label: str = "{}") -> list[tuple[str, z3.BoolRef]]:
    """(label, condition) ways two runs' visible results can differ, cheapest first: one faults
    and the other not; both fault with another vector or error code; neither faults and one of
    ``fields`` differs between ``a_post`` and ``b_post`` (those in ``masked`` without their RPL);
    neither faults and a byte differs at one of the addresses of ``arrays``' (label, array of a,
    array of b, addresses).  ``a`` and ``b`` are outcomes (``faults``, ``vector``, ``code``)."""
    fa, fb = a.faults, b.faults
    out = [("fault: one traps, the other does not", fa != fb),
           ("fault: different vector or error code",
            z3.And(fa, fb, z3.Or(a.vector != b.vector, a.code != b.code)))]
    neither = z3.And(z3.Not(fa), z3.Not(fb))
    for name in fields:
        x, y = a_post[name], b_post[name]
        if x is y:          # a field neither run touched holds its (shared) initial term
            continue
        if name in masked:
            x, y = _mask_rpl(x), _mask_rpl(y)
        if not x.eq(y):
            out.append((label.format(name), z3.And(neither, x != y)))
    for what, xa, xb, addrs in arrays:
        if addrs:
            out.append((what, z3.And(neither, z3.Or([z3.Select(xa, ad) != z3.Select(xb, ad)
                                                     for ad in addrs]))))
    return out


def visible_parts(a: Outcome, b: Outcome) -> list:
    """Ways the two runs' visible results can differ (see the module docstring), cheapest first."""
    scalars = [n for n in st.users() if not st.FIELD[n].index_width]
    addrs = [ad for arr, ad in a.stores + b.stores if arr == "mem"]
    return [g for _, g in differences(a, b, a.post, b.post, scalars,
                                      [("memory byte", a.post.mem, b.post.mem, addrs)], RPL_COUPLED)]


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



def _sat_answer(cls: str, r: Result, w: dict | None, dt: float) -> Answer:
    """Existential class: SAT (witness) means True, UNSAT means False."""
    if r.verdict is Verdict.REFUTED:
        return Answer(cls, True, "refuted", w, dt, "witness found")
    if r.verdict is Verdict.PROVED:
        return Answer(cls, False, "proved", None, dt, "no state exists (UNSAT)")
    return Answer(cls, None, "unknown", None, dt, r.reason or "solver gave no answer")



def _derived(cls: str, *parts: Answer) -> Answer:
    value = t_or(*(p.value for p in parts))
    witness = next((p for p in parts if p.value is True), None)
    secs = sum(p.seconds for p in parts)
    if witness is not None:
        return Answer(cls, True, "derived", witness.witness, secs, f"because {witness.cls}")
    note = " and ".join(f"not {p.cls}" for p in parts) if value is False else "a part is unknown"
    return Answer(cls, value, "derived", None, secs, note)




# --- the solving strategy, for any engine with ``check(constraints, timeout_ms)`` and ``timeout`` ---

def solve(eng, q: "Query") -> tuple[Result, list | None]:
    """Decide ``q`` on ``eng``'s solver (``solver.decide``): the result, and for SAT the
    constraints that were satisfied (a witness is re-solved with them)."""
    r, hit = decide(eng.check, q.constraints, q.goal, eng.timeout)
    return r, (q.constraints + [hit] if hit is not None else None)


def witness(eng, q: "Query", r: Result, chosen: list, readable: bool) -> tuple[dict, float]:
    """The witness of a SAT answer; ``readable`` re-solves within ``tidy`` first."""
    model, spent = r.model, 0.0
    if readable:
        tidy = q.tidy() if callable(q.tidy) else q.tidy
        nice = eng.check(chosen + tidy, min(eng.timeout, TIDY_MS))
        spent = nice.seconds
        if nice.verdict is Verdict.REFUTED:
            model = nice.model
    return _witness(q, model), spent
