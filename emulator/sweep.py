"""Big cross-check sweeps: the model against every oracle, the oracles against each other.

The work is cut into *items* of plain data - form names, sample index ranges, the seed, the
oracle names - never closures or solvers, so an item runs the same anywhere: in this process,
on a Dask ``LocalCluster`` (``cluster="local"``, the default when ``jobs`` > 1) or on an existing
scheduler (``cluster="tcp://HOST:PORT"``).  Sample ``k`` of form ``f`` draws its profile and state
from ``random.Random(f"{seed}:{f}:{k}")``, so it is the same state whatever item holds it, and the
records an item returns (plain dicts) are merged in (form, k) order: a seed gives the same report
on 1 worker or 16.

For every sample: the compiled model's run (skipped if the state is not well-formed or outside
the form's assumptions), then each oracle's Result (full-system oracles skip memory traps,
``Outcome.in_segments``, which the model assumes away and they check), each compared with the
model on what that oracle observes (``crosscheck.compare_result``) and explained by that oracle's
deviation table; then the oracles with each other (``crosscheck.same_result``).  Per form the
report counts, for each oracle, agree / explained (by which entries) / unexplained / skipped
(why) / oracle errors, and the agreement table: how often each pair of parties agreed, and the
pattern of agreement per state ("model=bochs=qemu | unicorn").
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from pgvirt.model import concrete, isa, profiles

from . import crosscheck as C
from . import deviations as D
from . import strategies
from .oracles import FULL_SYSTEM, Result, make, model_case

CHUNK = 600            # samples per work item: a boot of a full-system oracle is worth ~0.2-1 s
MAX_EXAMPLES = 3


# --- work items ---------------------------------------------------------------------------------------
def plan(names: Sequence[str], samples: int, seed: int, oracles: Sequence[str],
         chunk: int = CHUNK) -> list[dict]:
    """Items of about ``chunk`` samples each: [{"parts": [[form, k0, k1], ...], "seed", "oracles"}]."""
    items, parts, size = [], [], 0
    for name in names:
        k = 0
        while k < samples:
            take = min(samples - k, chunk - size)
            parts.append([name, k, k + take])
            size += take
            k += take
            if size >= chunk:
                items.append({"parts": parts, "seed": seed, "oracles": list(oracles)})
                parts, size = [], 0
    if parts:
        items.append({"parts": parts, "seed": seed, "oracles": list(oracles)})
    return items


def sample(name: str, k: int, seed: int) -> tuple[profiles.Profile, dict]:
    """Sample ``k`` of form ``name``: its profile and state (deterministic in the seed)."""
    rng = random.Random(f"{seed}:{name}:{k}")
    profile = C.PROFILES[rng.randrange(len(C.PROFILES))]
    return profile, strategies.generate(strategies.RandomDraw(rng), isa.get(name), profile)


_ORACLES: dict[tuple[str, str], object] = {}


def oracle(name: str, profile: str):
    """One oracle per (name, profile) in this process (a worker keeps its own)."""
    key = (name, profile)
    if key not in _ORACLES:
        _ORACLES[key] = make(name, profile)
    return _ORACLES[key]


def _short(outcome) -> str:
    return C.describe(outcome) if outcome is not None else "-"


def crosscheck_item(item: dict) -> list[dict]:
    """Run one work item: a record per sample (plain data, see the module docstring)."""
    seed, names = item["seed"], item["oracles"]
    todo = []                                    # (record, form, profile, state, comp, run, io_dep)
    out = []
    for name, k0, k1 in item["parts"]:
        form = isa.get(name)
        for k in range(k0, k1):
            profile, state = sample(name, k, seed)
            rec = {"form": name, "k": k, "profile": profile.name, "skip": "", "per": {}}
            out.append(rec)
            if not strategies.wellformed(state, profile):
                rec["skip"] = "not wellformed"
                continue
            comp = concrete.compiled(form, profile.features)
            run = comp.evaluate(state)
            if not run.assumed:
                rec["skip"] = "outside the form's assumptions"
                continue
            todo.append((rec, form, profile, state, comp, run, C.io_dependent(comp, state, run)))
    results: dict[str, list] = {}
    for oname in names:
        got: list = [None] * len(todo)
        by_profile: dict[str, list[int]] = {}
        for i, (_, _, profile, *_) in enumerate(todo):
            by_profile.setdefault(profile.name, []).append(i)
        for pname, idx in sorted(by_profile.items()):
            cases, where = [], []
            for i in idx:
                rec, form, profile, state, comp, run, _ = todo[i]
                if oname in FULL_SYSTEM and not run.in_segments:
                    got[i] = Result(refused="a memory trap (an access outside its segment, or "
                                            "misaligned with AC): the model assumes none")
                    continue
                unsafe = D.base.unsafe_for(D.table(oname), form, profile.features)(state) \
                    if oname in FULL_SYSTEM else None
                if unsafe:
                    got[i] = Result(refused=f"it meets {oname}'s deviation {unsafe}, which takes the "
                                            "emulator where the test kernel cannot catch it")
                    continue
                if oname in FULL_SYSTEM and run.fault is not None and not run.in_current_segments:
                    got[i] = Result(refused="a memory trap through the instruction's own segments "
                                            "may come before the model's fault")
                    continue
                cases.append(model_case(form, state, run))
                where.append(i)
            for i, r in zip(where, oracle(oname, pname).run(cases)):
                got[i] = r
        results[oname] = got
    for i, (rec, form, profile, state, comp, run, io_dep) in enumerate(todo):
        finished = {}
        for oname in names:
            res = results[oname][i]
            v = _verdict(oname, form, state, comp, run, res, io_dep)
            rec["per"][oname] = v
            if v["v"] in ("agree", "explained", "unexplained"):
                finished[oname] = (res, v)
        rec["pattern"] = _pattern(form, state, run, finished, io_dep)
        if any(v["v"] == "unexplained" for v in rec["per"].values()):
            rec["state"] = C.jsonable(state)
    return out


def _verdict(oname: str, form, state, comp, run, res: Result, io_dep) -> dict:
    if res.error:
        return {"v": "error", "why": res.error, "log": res.log}
    if res.outcome is None:
        return {"v": "skipped", "why": res.refused}
    if "cpuid" in comp.ufs:
        uf = C.cpuid_uf(_CPUID.setdefault(oname, {}), state, res.outcome)
        if uf is not None:
            run = comp.evaluate(state, uf)
    label = {"unicorn": "Unicorn", "bochs": "Bochs", "qemu": "QEMU"}[oname]
    diffs = C.compare_result(form, state, run, res, io_dep, label)
    if not diffs:
        return {"v": "agree"}
    obs = D.Observation(form, state, run.fault, run.post if run.fault is None else None,
                        res.outcome, diffs, {a for arr, a in run.stores if arr == "mem"})
    used, left = D.base.explain(D.table(oname), obs)
    if left:
        return {"v": "unexplained", "dev": used, "diffs": [str(d) for d in left]}
    return {"v": "explained", "dev": used}


_CPUID: dict[str, dict] = {}


def _pattern(form, state, run, finished: dict, io_dep) -> str:
    """Which parties agree: classes of the model and the oracles that finished, e.g.
    "model=bochs=qemu | unicorn" (the model's class first, the rest in name order)."""
    classes: list[list[str]] = [["model"]]
    reps: list = [None]
    for oname in sorted(finished):
        res, v = finished[oname]
        if v["v"] == "agree":
            classes[0].append(oname)
            continue
        for cl, rep in zip(classes[1:], reps[1:]):
            if C.same_result(form, state, run, rep, res, io_dep):
                cl.append(oname)
                break
        else:
            classes.append([oname])
            reps.append(res)
    return " | ".join("=".join(cl) for cl in classes)


# --- running the items --------------------------------------------------------------------------------
def run(items: list[dict], fn: Callable[[dict], list], *, jobs: int = 1, cluster: str | None = None,
        progress: Callable[[int, int], None] | None = None) -> list[list]:
    """``fn`` on every item: serially (``jobs`` 1, no cluster), on a fresh Dask ``LocalCluster``
    of ``jobs`` single-threaded worker processes (``cluster="local"``, or ``jobs`` > 1), or on
    the scheduler at ``cluster`` ("tcp://HOST:PORT").  Results come back in item order."""
    done: list = [None] * len(items)
    if cluster is None and jobs <= 1:
        for i, it in enumerate(items):
            done[i] = fn(it)
            if progress:
                progress(i + 1, len(items))
        return done
    from distributed import Client, LocalCluster, as_completed
    local = None
    if cluster in (None, "local"):
        local = LocalCluster(n_workers=max(1, jobs), threads_per_worker=1, processes=True,
                             dashboard_address=None, silence_logs=50)
        client = Client(local)
    else:
        client = Client(cluster, timeout="20s")
    try:
        futures = {client.submit(fn, it, pure=False): i for i, it in enumerate(items)}
        for n, fut in enumerate(as_completed(futures), 1):
            done[futures[fut]] = fut.result()
            if progress:
                progress(n, len(items))
    finally:
        client.close()
        if local is not None:
            local.close()
    return done


# --- the merged report --------------------------------------------------------------------------------
@dataclass
class OracleCounts:
    agree: int = 0
    explained: int = 0
    unexplained: int = 0
    errors: int = 0
    by_deviation: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)

    @property
    def checks(self) -> int:
        return self.agree + self.explained + self.unexplained

    @property
    def agreement(self) -> float:
        return self.agree / self.checks if self.checks else 0.0

    def as_json(self) -> dict:
        return {"checks": self.checks, "agree": self.agree, "explained": self.explained,
                "explained_by": dict(sorted(self.by_deviation.items())),
                "unexplained": self.unexplained, "oracle_errors": self.errors,
                "skipped": dict(sorted(self.skipped.items())),
                "agreement": round(self.agreement, 4), "unexplained_examples": self.examples}


@dataclass
class FormSweep:
    form: str
    mnemonic: str
    tried: int = 0
    skipped: dict = field(default_factory=dict)       # before any oracle ran
    oracles: dict = field(default_factory=dict)       # name -> OracleCounts
    pairs: dict = field(default_factory=dict)         # "a~b" -> {"compared", "agree"}
    patterns: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"name": self.form, "mnemonic": self.mnemonic, "tried": self.tried,
                "skipped": dict(sorted(self.skipped.items())),
                "oracles": {k: v.as_json() for k, v in self.oracles.items()},
                "agreement": {"pairs": dict(sorted(self.pairs.items())),
                              "patterns": dict(sorted(self.patterns.items(), key=lambda kv: -kv[1]))}}


@dataclass
class SweepReport:
    forms: list
    oracles: list
    cpus: dict
    samples: int
    seed: int
    workers: int
    seconds: float

    def total(self, oracle: str, what: str) -> int:
        return sum(getattr(f.oracles[oracle], what) for f in self.forms)

    @property
    def unexplained(self) -> int:
        return sum(self.total(o, "unexplained") for o in self.oracles)

    @property
    def errors(self) -> int:
        return sum(self.total(o, "errors") for o in self.oracles)

    @property
    def checks(self) -> int:
        return sum(self.total(o, "checks") for o in self.oracles)

    def as_json(self) -> dict:
        return {"oracles": self.oracles, "cpus": self.cpus, "samples": self.samples,
                "seed": self.seed, "workers": self.workers, "seconds": round(self.seconds, 3),
                "checks": self.checks, "unexplained": self.unexplained, "oracle_errors": self.errors,
                "totals": {o: {w: self.total(o, w) for w in ("checks", "agree", "explained",
                                                              "unexplained", "errors")}
                           for o in self.oracles},
                "forms": [f.as_json() for f in self.forms]}


def merge(names: Sequence[str], oracles: Sequence[str], records: Iterable[dict]) -> list[FormSweep]:
    """Per-form counts from the samples' records, in (form, k) order whatever order they came."""
    by_form = {n: FormSweep(n, isa.get(n).mnemonic, oracles={o: OracleCounts() for o in oracles})
               for n in names}
    parties = ["model"] + list(oracles)
    for rec in sorted(records, key=lambda r: (names.index(r["form"]), r["k"])):
        f = by_form[rec["form"]]
        f.tried += 1
        if rec["skip"]:
            f.skipped[rec["skip"]] = f.skipped.get(rec["skip"], 0) + 1
            continue
        for o in oracles:
            v, c = rec["per"][o], f.oracles[o]
            kind = v["v"]
            if kind == "skipped":
                c.skipped[v["why"]] = c.skipped.get(v["why"], 0) + 1
            elif kind == "error":
                c.errors += 1
                if len(c.examples) < MAX_EXAMPLES:
                    c.examples.append({"profile": rec["profile"], "k": rec["k"],
                                       "oracle_error": v["why"], "log": v.get("log", "")})
            else:
                setattr(c, kind, getattr(c, kind) + 1)
                for i in v.get("dev", []):
                    c.by_deviation[i] = c.by_deviation.get(i, 0) + 1
                if kind == "unexplained" and len(c.examples) < MAX_EXAMPLES:
                    c.examples.append({"profile": rec["profile"], "k": rec["k"],
                                       "differences": v["diffs"], "state": rec.get("state")})
        pat = rec.get("pattern", "")
        if pat:
            f.patterns[pat] = f.patterns.get(pat, 0) + 1
            cls = {p: i for i, group in enumerate(pat.split(" | ")) for p in group.split("=")}
            for i, a in enumerate(parties):
                for b in parties[i + 1:]:
                    if a in cls and b in cls:
                        key = f"{a}~{b}"
                        pair = f.pairs.setdefault(key, {"compared": 0, "agree": 0})
                        pair["compared"] += 1
                        pair["agree"] += cls[a] == cls[b]
    return [by_form[n] for n in names]


def crosscheck(forms: Sequence[str] | None = None, samples: int = 200, seed: int = 0,
               oracles: Sequence[str] = ("unicorn",), *, jobs: int = 1, cluster: str | None = None,
               progress: Callable[[int, int], None] | None = None,
               chunk: int = CHUNK) -> SweepReport:
    """The model against ``oracles`` on ``samples`` states per form (see the module docstring)."""
    names = [f if isinstance(f, str) else f.name for f in (forms or [f.name for f in isa.FORMS])]
    for n in names:
        isa.get(n)
    oracles = list(oracles)
    t0 = time.perf_counter()
    items = plan(names, samples, seed, oracles, chunk)
    parts = run(items, crosscheck_item, jobs=jobs, cluster=cluster, progress=progress)
    records = [r for part in parts for r in part]
    cpus = {o: cpu_models(o) for o in oracles}
    workers = max(1, jobs) if (cluster is not None or jobs > 1) else 1
    return SweepReport(merge(names, oracles, records), oracles, cpus, samples, seed, workers,
                       time.perf_counter() - t0)


def cpu_models(oracle: str) -> dict[str, str]:
    """profile -> the CPU model ``oracle`` emulates for it."""
    if oracle == "unicorn":
        return {p.name: "Unicorn 2.1 (QEMU 5.0 TCG)" for p in C.PROFILES}
    from .oracles import bochs, qemu
    table = bochs.CPUS if oracle == "bochs" else qemu.CPUS
    return {p.name: table[p.name] for p in C.PROFILES}


def default_jobs() -> int:
    return min(2, os.cpu_count() or 1)
