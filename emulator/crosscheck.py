"""The model cross-checked against Unicorn on random valid states, form by form.

For every form, states from ``strategies.generate`` (valid: ``profiles.wellformed`` holds, checked
concretely) are run by the model - compiled once per form (``pgvirt.model.concrete``), the very
Outcome the verifier reasons about - and by the ``Machine``.  The two results are compared
(``compare``): fault or no fault, the vector (Unicorn exposes no error codes), and, when both
complete, every scalar field but those the Machine cannot hold (``machine.NOT_HELD``), EFLAGS
without the flags the SDM leaves undefined for the form (its ``undefined_flags``), every
memory byte either side read or wrote and every port either side accessed.

A disagreement is *explained* when every difference is accounted for by an entry of
``deviations.DEVIATIONS`` (their ``explains`` predicates), and *unexplained* otherwise; an
unexplained one is reported with a minimal reproducing state: fields reset to ``flat_state``
defaults and memory dropped, greedily, while the state stays valid and the disagreement stays
unexplained.  States outside a form's stated assumptions (``assume`` in its definition) are not
compared; they are counted.

CPUID's result is an uninterpreted function in the model (a fixed property of the processor):
here it is read from Unicorn's answer for the same (EAX, ECX), and the answers are required to be
a function of (EAX, ECX) across all states of the run (the model's claim).  RDRAND's and RDSEED's
numbers are uninterpreted too; each check takes Unicorn's number and CF as the answer.

``crosscheck(forms, samples, seed, jobs)`` runs the sweep in ``jobs`` worker processes, each with
one Machine; the report has per-form counts and the rate in checks per second.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from pgvirt.model import concrete, isa, parallel, profiles
from pgvirt.model import state as st
from pgvirt.model.form import Form
from pgvirt.model.outcome import Fault, Next

from . import deviations as D
from . import states as S
from . import strategies
from .machine import NOT_HELD, IncompleteRun, Machine, StateError, Watchdog  # noqa: F401

COMPARED = tuple(n for n in st.SCALARS if n not in NOT_HELD)


# --- the model's side of a comparison ----------------------------------------------------------
@dataclass
class ModelResult:
    """What the model says one run does: its fault, or every scalar afterwards and a byte reader."""

    fault: Fault | None
    post: Mapping | None
    byte: Callable[[str, int], int]
    addresses: dict

    @classmethod
    def from_run(cls, run: concrete.Run) -> "ModelResult":
        return cls(run.fault, run.post, run.read, run.addresses())

    @classmethod
    def from_prediction(cls, pre: Mapping, outcome: Mapping) -> "ModelResult":
        """From a witness: the state before and the model's outcome JSON (``fault``/``vector``,
        or ``changed``: the fields and bytes that differ afterwards)."""
        addrs = {"mem": set(pre.get("mem", {})), "io": set(pre.get("io", {}))}
        if outcome.get("fault"):
            f = Fault(outcome["vector"], outcome.get("error_code"), outcome.get("reason", ""))
            return cls(f, None, lambda arr, a: pre[arr].get(a, 0), addrs)
        changed = outcome.get("changed", {})
        post = {n: changed.get(n, pre.get(n, 0)) for n in st.SCALARS}
        arrays = {arr: dict(pre.get(arr, {})) | dict(changed.get(arr, {})) for arr in ("mem", "io")}
        for arr in ("mem", "io"):
            addrs[arr] |= set(changed.get(arr, {}))
        return cls(None, post, lambda arr, a: arrays[arr].get(a, 0), addrs)


def describe(result) -> str:
    if isinstance(result, Fault):
        return str(result)
    return "completes"


def compare(form: Form, pre: Mapping, model: ModelResult, emu: Fault | Next,
            touched: Iterable[int] = (), ports: Iterable[int] = ()) -> list[D.Diff]:
    """Every difference between the model's result and Unicorn's (see the module docstring).

    ``touched``/``ports``: addresses and ports Unicorn accessed (``Machine.last``)."""
    if model.fault is not None or isinstance(emu, Fault):
        if model.fault is not None and isinstance(emu, Fault):
            if model.fault.vector == emu.vector:
                return []
            return [D.Diff("outcome", "vector", model.fault.vector, emu.vector)]
        return [D.Diff("outcome", "fault", describe(model.fault) if model.fault else "completes",
                       describe(emu))]
    out: list[D.Diff] = []
    post, got = model.post, emu.state
    undefined = form.undefined_flags
    for name in COMPARED:
        a, b = post[name], got[name]
        if name == "flags" and undefined:
            a, b = a & ~undefined, b & ~undefined
        if a != b:
            out.append(D.Diff("reg", name, a, b))
    for arr, extra in (("mem", touched), ("io", ports)):
        seen = got[arr]
        for a in sorted(set(model.addresses.get(arr, ())) | set(extra)):
            mine = model.byte(arr, a)
            theirs = seen.get(a, pre[arr].get(a, 0))
            if mine != theirs:
                out.append(D.Diff(arr, a, mine, theirs))
    return out


explain = D.explain


# --- a bound on every run ------------------------------------------------------------------------
# RDRAND/RDSEED's numbers come from outside the state (``isa.extensions._RANDOM``): the model's
# answer for one check is Unicorn's number and CF, so what is compared is everything else the
# instruction does (the destination's width, the other flags, faults).
_RANDOM_UFS = {"rdrand16": 16, "rdrand32": 32, "rdseed16": 16, "rdseed32": 32}


def _random_answer(form: Form, compiled: concrete.Compiled, emu) -> Callable:
    (name,) = compiled.ufs
    width = _RANDOM_UFS[name]
    reg = st.GPRS[form.bytes[-1] & 7]           # 0F C7 /6 or /7 with mod = 11b: the r/m register
    value = emu.state[reg] & ((1 << width) - 1)
    cf = emu.state["flags"] >> st.CF & 1

    def uf(_name, *args):
        return cf << width | value
    return uf


# --- one check --------------------------------------------------------------------------------
@dataclass
class Check:
    form: str
    profile: str
    verdict: str                      # agree | explained | unexplained | skipped
    reason: str = ""                  # for skipped: why
    deviations: list = field(default_factory=list)
    diffs: list = field(default_factory=list)
    unexplained: list = field(default_factory=list)
    state: dict | None = None


class Checker:
    """Checks states on one Machine (one per process)."""

    def __init__(self, machine: Machine | None = None, seconds: float = 2.0):
        self.m = machine or Machine(rep_once=True)
        self.bounded = Watchdog(self.m, seconds)
        self.cpuid: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    def _uf(self, form: Form, c: concrete.Compiled, state: Mapping, emu) -> Callable | None:
        if not c.ufs:
            return None
        unknown = c.ufs - {"cpuid"} - set(_RANDOM_UFS)
        if unknown:
            raise concrete.CompileError(f"no treatment of uninterpreted {sorted(unknown)} in cross-checks")
        if not isinstance(emu, Next):
            return None
        if c.ufs <= set(_RANDOM_UFS):
            return _random_answer(form, c, emu)
        key = (state["eax"], state["ecx"])
        got = tuple(emu.state[r] for r in ("eax", "ebx", "ecx", "edx"))
        seen = self.cpuid.setdefault(key, got)
        a, b, c_, d = seen          # the first answer defines the function; later ones must agree
        value = a | b << 32 | c_ << 64 | d << 96

        def uf(name, *args):
            return value if args == key else 0
        return uf

    def check(self, form: Form, profile: profiles.Profile, state: dict, keep_state: bool = False) -> Check:
        name = form.name
        if not strategies.wellformed(state, profile):
            return Check(name, profile.name, "skipped", "not wellformed")
        comp = concrete.compiled(form, profile.features)
        run = comp.evaluate(state)
        if not run.assumed:
            return Check(name, profile.name, "skipped", "outside the form's assumptions")
        addrs = run.addresses()
        try:
            emu = self.bounded.run(state, form.bytes, mem=addrs.get("mem", ()), io=addrs.get("io", ()))
        except StateError as e:
            return Check(name, profile.name, "skipped", f"the Machine refuses it: {e}")
        except IncompleteRun as e:
            return Check(name, profile.name, "skipped", str(e))
        uf = self._uf(form, comp, state, emu)
        if uf is not None:
            run = comp.evaluate(state, uf)
        model = ModelResult.from_run(run)
        last = self.m.last
        diffs = compare(form, state, model, emu, last.reads | last.writes, last.ports_in | last.ports_out)
        if not diffs:
            return Check(name, profile.name, "agree", state=state if keep_state else None)
        obs = D.Observation(form, state, run.fault, run.post if run.fault is None else None, emu,
                            diffs, {a for arr, a in run.stores if arr == "mem"})
        used, left = explain(obs)
        verdict = "unexplained" if left else "explained"
        return Check(name, profile.name, verdict, "", used, diffs, left,
                     state if (keep_state or left) else None)


# --- minimal reproducing states ---------------------------------------------------------------
def minimise(checker: Checker, form: Form, profile: profiles.Profile, state: dict,
             budget: int = 600) -> dict:
    """Reset fields to ``flat_state`` defaults and drop memory while the state stays valid and
    the disagreement stays unexplained (greedy, at most ``budget`` checks)."""
    code_at = (state["cs_base"] + state["eip"]) & 0xFFFFFFFF
    code = {(code_at + k) & 0xFFFFFFFF for k in range(len(form.bytes))}
    cur = _copy(state)
    spent = 0

    def still(cand) -> bool:
        nonlocal spent
        spent += 1
        try:
            return checker.check(form, profile, cand).verdict == "unexplained"
        except Exception:
            return False

    changed = True
    while changed and spent < budget:
        changed = False
        base = S.flat_state(cur["cpl"])
        for name in st.SCALARS:
            if spent >= budget:
                break
            if cur[name] == base[name] or name in ("cs_base", "eip"):
                continue
            cand = _copy(cur)
            cand[name] = base[name]
            if still(cand):
                cur, changed = cand, True
        # memory: 8-byte groups, then single bytes, never the instruction's bytes
        for width in (8, 1):
            groups: dict[int, list[int]] = {}
            for a in cur["mem"]:
                if a not in code:
                    groups.setdefault(a // width, []).append(a)
            for _, cells in sorted(groups.items()):
                if spent >= budget:
                    break
                cand = _copy(cur)
                for a in cells:
                    if a in base["mem"]:
                        cand["mem"][a] = base["mem"][a]
                    else:
                        del cand["mem"][a]
                if cand["mem"] != cur["mem"] and still(cand):
                    cur, changed = cand, True
        if cur["io"] and spent < budget:
            cand = _copy(cur)
            cand["io"] = {}
            if still(cand):
                cur, changed = cand, True
    return cur


def _copy(s: Mapping) -> dict:
    out = dict(s)
    out["mem"] = dict(s["mem"])
    out["io"] = dict(s.get("io", {}))
    return out


# --- the sweep --------------------------------------------------------------------------------
@dataclass
class FormReport:
    form: str
    mnemonic: str
    tried: int = 0
    agree: int = 0
    explained: int = 0
    unexplained: int = 0
    by_deviation: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)   # unexplained: diffs and a minimal state

    @property
    def checks(self) -> int:
        return self.agree + self.explained + self.unexplained

    def as_json(self) -> dict:
        return {"name": self.form, "mnemonic": self.mnemonic, "tried": self.tried,
                "checks": self.checks, "agree": self.agree, "explained": self.explained,
                "explained_by": dict(sorted(self.by_deviation.items())),
                "unexplained": self.unexplained, "skipped": dict(sorted(self.skipped.items())),
                "unexplained_examples": self.examples}


@dataclass
class Report:
    forms: list
    seconds: float
    samples: int
    seed: int
    jobs: int

    def __repr__(self) -> str:
        return f"<crosscheck Report: {self.checks} checks, {self.unexplained} unexplained>"

    @property
    def checks(self) -> int:
        return sum(f.checks for f in self.forms)

    @property
    def unexplained(self) -> int:
        return sum(f.unexplained for f in self.forms)

    @property
    def rate(self) -> float:
        return self.checks / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict:
        return {"forms": [f.as_json() for f in self.forms], "checks": self.checks,
                "unexplained": self.unexplained, "checks_per_second": round(self.rate, 1),
                "samples": self.samples, "seed": self.seed, "jobs": self.jobs,
                "seconds": round(self.seconds, 3)}


PROFILES = (profiles.PENTIUM, profiles.UMIP)
MAX_EXAMPLES = 3

_CHECKER: Checker | None = None


def _checker() -> Checker:
    global _CHECKER
    if _CHECKER is None:
        _CHECKER = Checker()
    return _CHECKER


def check_form(name: str, samples: int, seed: int, minimal: bool = True) -> FormReport:
    """``samples`` random states for form ``name`` (deterministic in ``seed``), checked."""
    form = isa.get(name)
    checker = _checker()
    rng = random.Random(f"{seed}:{name}")
    draw = strategies.RandomDraw(rng)
    rep = FormReport(name, form.mnemonic)
    for _ in range(samples):
        profile = PROFILES[rng.randrange(len(PROFILES))]
        state = strategies.generate(draw, form, profile)
        c = checker.check(form, profile, state)
        rep.tried += 1
        if c.verdict == "skipped":
            rep.skipped[c.reason] = rep.skipped.get(c.reason, 0) + 1
            continue
        if c.verdict == "agree":
            rep.agree += 1
            continue
        for i in c.deviations:
            rep.by_deviation[i] = rep.by_deviation.get(i, 0) + 1
        if c.verdict == "explained":
            rep.explained += 1
            continue
        rep.unexplained += 1
        if len(rep.examples) < MAX_EXAMPLES:
            small = minimise(checker, form, profile, state) if minimal else state
            again = checker.check(form, profile, small)
            rep.examples.append({
                "profile": profile.name,
                "differences": [str(d) for d in (again.unexplained or c.unexplained)],
                "state": jsonable(small)})
    return rep


def jsonable(state: Mapping) -> dict:
    """A state with its array keys as they are (ints); JSON writers turn them into strings."""
    return {k: (dict(sorted(v.items())) if isinstance(v, Mapping) else v) for k, v in state.items()}


def _job(args):
    return check_form(*args)


def _fresh_worker() -> None:
    """Each worker process builds its own Machine (never one inherited through fork)."""
    global _CHECKER
    _CHECKER = None


def crosscheck(forms: list[str] | None = None, samples: int = 200, seed: int = 0,
               jobs: int | None = None, progress: Callable[[str], None] | None = None,
               minimal: bool = True) -> Report:
    """Cross-check ``forms`` (default: all) with ``samples`` states each in ``jobs`` processes."""
    names = [f if isinstance(f, str) else f.name for f in (forms or [f.name for f in isa.FORMS])]
    for n in names:
        isa.get(n)
    jobs = max(1, min(jobs or min(2, os.cpu_count() or 1), len(names)))
    work = [(n, samples, seed, minimal) for n in names]
    t0 = time.perf_counter()
    done: dict[str, FormReport] = {}
    if jobs == 1:
        for w in work:
            r = _job(w)
            done[r.form] = r
            if progress:
                progress(r.form)
    else:
        # A worker that dies (Unicorn aborting the process) breaks the pool loudly instead of
        # leaving the sweep waiting for a result that never comes; Ctrl-C stops every worker.
        for r in parallel.imap(_job, work, jobs, ordered=False, initializer=_fresh_worker):
            done[r.form] = r
            if progress:
                progress(r.form)
    return Report([done[n] for n in names], time.perf_counter() - t0, samples, seed, jobs)


# --- any oracle: the model against each emulator, the emulators against each other -------------------
def io_dependent(comp: concrete.Compiled, state: Mapping, run: concrete.Run) -> tuple[set, set]:
    """(scalar fields, memory addresses) whose value afterwards depends on what a port returns:
    found by running the model again with every port it reads flipped.  An oracle whose ports
    are devices (``Result.observed`` set, no port state) is not compared on them."""
    ports = {a for arr, a in run.loads if arr == "io"}
    if not ports or run.fault is not None:
        return set(), set()
    flipped = dict(state)
    flipped["io"] = {**dict(state.get("io", {})), **{p: state.get("io", {}).get(p, 0) ^ 0xA5 for p in ports}}
    other = comp.evaluate(flipped)
    if other.fault is not None:
        return set(), set()
    fields = {n for n in st.SCALARS if run.post[n] != other.post[n]}
    addrs = {a for arr, a in run.stores if arr == "mem" and run.read("mem", a) != other.read("mem", a)}
    return fields, addrs


def compare_result(form: Form, pre: Mapping, run: concrete.Run, res, io_dep=(set(), set()),
                   oracle: str = "Unicorn") -> list[D.Diff]:
    """Every difference between the model's ``run`` and an oracle's ``Result`` on what the oracle
    observed (``res.observed``; None: Unicorn's own comparison, ``compare``).  Error codes are
    compared where the oracle reports them."""
    return compare_model(form, pre, ModelResult.from_run(run), res, io_dep, oracle)


def compare_model(form: Form, pre: Mapping, model: ModelResult, res, io_dep=(set(), set()),
                  oracle: str = "Unicorn") -> list[D.Diff]:
    """``compare_result`` with the model's side as a ``ModelResult`` (a run or a prediction)."""
    emu = res.outcome
    if res.observed is None:
        return compare(form, pre, model, emu, res.touched, res.ports)
    if model.fault is not None or isinstance(emu, Fault):
        if model.fault is not None and isinstance(emu, Fault):
            if model.fault.vector != emu.vector:
                return [D.Diff("outcome", "vector", model.fault.vector, emu.vector, oracle)]
            if model.fault.code is not None and emu.code is not None and model.fault.code != emu.code:
                return [D.Diff("outcome", "code", model.fault.code, emu.code, oracle)]
            return []
        return [D.Diff("outcome", "fault", describe(model.fault) if model.fault else "completes",
                       describe(emu), oracle)]
    out: list[D.Diff] = []
    post, got = model.post, emu.state
    undefined = form.undefined_flags
    fields, addrs = io_dep
    for name in st.SCALARS:
        mask = res.observed.get(name)
        if not mask or name in fields:
            continue
        if name == "flags":
            mask &= ~undefined
        a, b = post[name] & mask, got[name] & mask
        if a != b:          # the observed bits only: the explanations see what was compared
            out.append(D.Diff("reg", name, a, b, oracle))
    for a in sorted(set(model.addresses.get("mem", ())) - set(res.unobserved_mem) - addrs):
        mine, theirs = model.byte("mem", a), got["mem"].get(a, pre["mem"].get(a, 0))
        if mine != theirs:
            out.append(D.Diff("mem", a, mine, theirs, oracle))
    return out


def same_result(form: Form, pre: Mapping, run: concrete.Run, a, b, io_dep=(set(), set())) -> bool:
    """Whether two oracles' Results agree, on what both observed: the fault and vector (and the
    error code where both report one), else every field both read and every byte of the model's
    footprint."""
    x, y = a.outcome, b.outcome
    if isinstance(x, Fault) or isinstance(y, Fault):
        if not (isinstance(x, Fault) and isinstance(y, Fault)) or x.vector != y.vector:
            return False
        return x.code is None or y.code is None or x.code == y.code
    fields, addrs = io_dep
    undefined = form.undefined_flags
    for name in st.SCALARS:
        if name in fields or name in NOT_HELD:
            continue
        mask = (1 << st.FIELD[name].width) - 1
        for r in (a, b):
            if r.observed is not None:
                mask &= r.observed.get(name, 0)
        if name == "flags":
            mask &= ~undefined
        if (x.state[name] ^ y.state[name]) & mask:
            return False
    skip = set(a.unobserved_mem) | set(b.unobserved_mem) | addrs
    foot = {ad for arr, ad in run.loads + run.stores if arr == "mem"}
    return all(x.state["mem"].get(ad, pre["mem"].get(ad, 0)) == y.state["mem"].get(ad, pre["mem"].get(ad, 0))
               for ad in foot - skip)


def cpuid_uf(answers: dict, state: Mapping, emu) -> Callable | None:
    """CPUID's uninterpreted function from an oracle's answer for (EAX, ECX); ``answers`` keeps the
    first answer per input, so the model's claim (one function) is tested across a run."""
    if not isinstance(emu, Next):
        return None
    key = (state["eax"], state["ecx"])
    got = tuple(emu.state[r] for r in ("eax", "ebx", "ecx", "edx"))
    a, b, c_, d = answers.setdefault(key, got)
    value = a | b << 32 | c_ << 64 | d << 96

    def uf(name, *args):
        return value if args == key else 0
    return uf
