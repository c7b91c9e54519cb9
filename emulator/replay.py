"""Counterexample replay on Unicorn: both runs of a Theorem-1 counterexample, on one Machine.

A witness (``verify.counterexample``) holds a ``native`` state (the guest at CPL 0 with its own
tables), its ``deprivileged`` twin (the guest as the monitor runs it) and the model's prediction
for each run.  ``Replayer.replay`` runs both states on ONE ``Machine`` per process (it restores a
saved context before every run; no fresh Unicorn per state), bounded by the Machine's
one-instruction stop and a wall-clock ``Watchdog``, and compares each run with the model's
prediction exactly as the cross-check does (``crosscheck.compare``: fault and vector - Unicorn
exposes no error codes -, every register and flag but the fields the Machine cannot hold and the
flags the SDM leaves undefined, every memory byte and port either side touched).  The outcome:

* ``confirmed``: the emulator agrees with the model on both runs, and the counterexample
  criterion holds on the emulator's own results (the deprivileged run does not trap, and its
  visible result differs or a system change of the native run is lost);
* ``emulator-deviation``: the emulator disagrees, and every difference is accounted for by an
  entry of ``deviations.DEVIATIONS`` (named in ``deviation``);
* ``mismatch``: anything else - a difference no entry explains, or agreement on both runs
  without the criterion holding on the emulator's results.

The criterion itself is passed in (``criterion``): the command layer hands in
``verify.counterexample.criterion_concrete``, so the one definition lives with the query and
this module imports only ``pgvirt.model``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Mapping

from pgvirt.model import concrete, isa, profiles
from pgvirt.model.files import InputError, read_regular
from pgvirt.model import state as st
from pgvirt.model.form import Form
from pgvirt.model.outcome import Fault, Next, from_changes_json

from . import deviations as D
from . import strategies
from .crosscheck import ModelResult, compare
from .machine import NOT_HELD, Machine, StateError, Watchdog

OUTCOMES = ("confirmed", "emulator-deviation", "mismatch")
Criterion = Callable[..., list]


class ReplayInputError(ValueError):
    """A hand-given pair that cannot be replayed (one line, exit 2)."""


@dataclass
class Run:
    """One state of the pair on the emulator, next to the model's prediction."""

    state: dict
    prediction: dict                 # the model's outcome JSON (fault/vector or changed)
    emulator: Fault | Next | None = None
    differences: list = field(default_factory=list)     # D.Diff
    explained_by: list = field(default_factory=list)    # deviation ids
    unexplained: list = field(default_factory=list)     # D.Diff no entry accounts for
    error: str = ""

    def emulator_json(self) -> dict:
        if self.emulator is None:
            return {"error": self.error}
        if isinstance(self.emulator, Fault):
            return {"fault": True, "vector": self.emulator.vector, "error_code": self.emulator.code,
                    "reason": self.emulator.reason}
        return {"fault": False, "changed": _changed(self.state, self.emulator.state)}

    def as_json(self) -> dict:
        return {"state": _json_state(self.state), "emulator": self.emulator_json(),
                "agrees": not self.differences and self.emulator is not None,
                "differences": [str(d) for d in self.differences],
                "explained_by": self.explained_by,
                "unexplained": [str(d) for d in self.unexplained]}


@dataclass
class Replay:
    form: Form
    profile: str
    outcome: str
    native: Run
    deprivileged: Run
    model: dict
    deviation: str | None
    emulator_criterion: list
    note: str = ""
    # What the two runs are: a trap-and-emulate pair by default; a hardware hole's replay names
    # them (the guest's own machine, the non-root state run as bare hardware runs it).
    labels: tuple[str, str] = ("native", "deprivileged")

    def __repr__(self) -> str:
        return f"<Replay {self.form.name} [{self.profile}]: {self.outcome}>"

    def as_json(self) -> dict:
        doc = {"name": self.form.name, "mnemonic": self.form.mnemonic, "asm": self.form.asm,
               "outcome": self.outcome, "native": self.native.as_json(),
               "deprivileged": self.deprivileged.as_json(),
               "model": self.model, "emulator_criterion": self.emulator_criterion,
               "deviation": self.deviation, "note": self.note}
        if self.labels != ("native", "deprivileged"):
            doc["runs"] = {"native": self.labels[0], "deprivileged": self.labels[1]}
        return doc


def _changed(pre: Mapping, post: Mapping) -> dict:
    out: dict = {}
    for k, v in post.items():
        if k in ("mem", "io"):
            d = {a: b for a, b in v.items() if pre.get(k, {}).get(a, 0) != b}
            if d:
                out[k] = d
        elif k not in NOT_HELD and pre.get(k) != v:
            out[k] = v
    return out


def _json_state(s: Mapping) -> dict:
    return {k: (dict(sorted(v.items())) if isinstance(v, Mapping) else v) for k, v in s.items()}


def prediction(form: Form, state: Mapping, features=frozenset()) -> dict:
    """The model's outcome JSON for ``state`` (the compiled form; used for hand-given pairs)."""
    res = concrete.compiled(form, features).run(state)
    if isinstance(res, Fault):
        return res.as_json()
    return {"fault": False, "changed": _changed(state, res.state)}


class Replayer:
    """Replays counterexamples on one Machine (create one per process)."""

    def __init__(self, machine: Machine | None = None, seconds: float = 2.0):
        self.m = machine or Machine(rep_once=True)
        self.bounded = Watchdog(self.m, seconds)

    def _run(self, form: Form, label: str, state: dict, pred: Mapping, strict: bool) -> Run:
        run = Run(state, dict(pred))
        model = ModelResult.from_prediction(state, pred)
        try:
            emu = self.bounded.run(state, form.bytes, mem=model.addresses["mem"], io=model.addresses["io"])
        except StateError as e:
            if strict:
                raise ReplayInputError(f"{form.name}: {label} state: {e}") from None
            run.error = f"the Machine refuses the {label} state: {e}"
            return run
        run.emulator = emu
        last = self.m.last
        run.differences = compare(form, state, model, emu, last.reads | last.writes,
                                  last.ports_in | last.ports_out)
        if run.differences:
            stores = set(pred.get("changed", {}).get("mem", {})) if not pred.get("fault") else set()
            obs = D.Observation(form, state, model.fault, model.post, emu, list(run.differences),
                                {int(a) for a in stores})
            run.explained_by, run.unexplained = D.explain(obs)
        return run

    def replay(self, form: Form | str, witness: Mapping, criterion: Criterion,
               profile: str = "", strict: bool = False) -> Replay:
        """Replay ``witness`` (``native``, ``deprivileged``, ``model``) of ``form``.

        ``strict``: a state the Machine refuses raises ``ReplayInputError`` (hand-given input)
        instead of making the replay a mismatch."""
        form = isa.get(form) if isinstance(form, str) else form
        pred = witness["model"]
        n = self._run(form, "native", witness["native"], pred["native"], strict)
        d = self._run(form, "deprivileged", witness["deprivileged"], pred["deprivileged"], strict)
        model = {"native": pred["native"], "deprivileged": pred["deprivileged"],
                 "criterion": criterion(n.state, from_changes_json(n.state, pred["native"]),
                                        d.state, from_changes_json(d.state, pred["deprivileged"]))}
        if n.emulator is None or d.emulator is None:
            return Replay(form, profile, "mismatch", n, d, model, None, [], n.error or d.error)
        emu_crit = criterion(n.state, n.emulator, d.state, d.emulator, ignore=NOT_HELD)
        return _classify(form, profile, n, d, model, emu_crit, D.BY_ID)


# --- hand-given pairs -------------------------------------------------------------------------------
def load_pairs(path: str, profile: profiles.Profile, forms: list[str] | None = None) -> list[tuple[str, dict]]:
    """Pairs from a JSON file: one object ``{"form", "native", "deprivileged"[, "model"]}`` or a
    list of them (or ``{"replays": [...]}``).  States use the model's concrete format (array
    addresses may be strings).  Predictions missing from the file are computed by the model.
    Raises ``ReplayInputError`` (one line) on anything malformed or impossible."""
    try:
        doc = json.loads(read_regular(path, "state file", 64 << 20))
    except InputError as e:
        raise ReplayInputError(str(e)) from None
    except UnicodeDecodeError:
        raise ReplayInputError(f"{path} is not JSON: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ReplayInputError(f"{path} is not JSON: {e.msg} at line {e.lineno}") from None
    items = doc.get("replays", doc.get("pairs", [doc])) if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise ReplayInputError(f"{path}: expected a pair object or a list of them")
    out = []
    for k, item in enumerate(items):
        where = f"{path}: pair {k}"
        if not isinstance(item, dict):
            raise ReplayInputError(f"{where} is not an object")
        name = item.get("form") or item.get("name") or (forms[0] if forms and len(forms) == 1 else None)
        if not name:
            raise ReplayInputError(f"{where} names no form (give \"form\" or one NAME)")
        try:
            form = isa.get(name)
        except KeyError as e:
            raise ReplayInputError(str(e.args[0])) from None
        w = {}
        for label in ("native", "deprivileged"):
            s = item.get(label)
            if isinstance(s, dict) and isinstance(s.get("state"), dict):   # a replay's own JSON
                s = s["state"]
            if not isinstance(s, dict):
                raise ReplayInputError(f"{where}: no {label} state")
            w[label] = _normalise(s, f"{where} {label}")
            _check_state(w[label], profile, f"{where} {label}")
        if w["native"]["cpl"] != 0:
            raise ReplayInputError(f"{where}: the native state runs at CPL {w['native']['cpl']}, not 0")
        if w["deprivileged"]["cpl"] != 3:
            raise ReplayInputError(f"{where}: the deprivileged state runs at CPL "
                                   f"{w['deprivileged']['cpl']}, not 3")
        if not _as_monitor_runs(w["deprivileged"], profile):
            raise ReplayInputError(f"{where}: the deprivileged state is not as the {profile.name} "
                                   f"monitor runs a guest (IOPL {profile.iopl}, its CR4 bits, no "
                                   "I/O permission bitmap: profiles.deprivileged)")
        model = item.get("model") or {}
        w["model"] = {label: model.get(label) or prediction(form, w[label], profile.features)
                      for label in ("native", "deprivileged")}
        out.append((form.name, w))
    return out


def _normalise(s: Mapping, where: str) -> dict:
    out: dict = {}
    unknown = set(s) - set(st.FIELD)
    if unknown:
        raise ReplayInputError(f"{where}: no such state field: {', '.join(sorted(unknown))}")
    for name in st.SCALARS:
        v = s.get(name, 0)
        if isinstance(v, str):
            try:
                v = int(v, 0)
            except ValueError:
                raise ReplayInputError(f"{where}: {name} = {v!r} is not a number") from None
        if not isinstance(v, int) or isinstance(v, bool):
            raise ReplayInputError(f"{where}: {name} = {v!r} is not an integer")
        out[name] = v
    for arr in ("mem", "io"):
        cells = s.get(arr, {})
        if not isinstance(cells, Mapping):
            raise ReplayInputError(f"{where}: {arr} must be an object {{address: byte}}")
        try:
            out[arr] = {int(a, 0) if isinstance(a, str) else int(a): int(b) for a, b in cells.items()}
        except (TypeError, ValueError):
            raise ReplayInputError(f"{where}: {arr} holds a non-integer address or byte") from None
    return out


def _as_monitor_runs(s: dict, profile: profiles.Profile) -> bool:
    """``profiles.deprivileged`` holds on the concrete state ``s``."""
    import z3
    cond, _ = profiles.deprivileged(st.concrete(s), profile)
    return z3.is_true(z3.simplify(cond))


def _check_state(s: dict, profile: profiles.Profile, where: str) -> None:
    from .machine import check
    try:
        check(s)
    except StateError as e:
        raise ReplayInputError(f"{where}: {e}") from None
    if not strategies.wellformed(s, profile):
        raise ReplayInputError(f"{where}: not a well-formed state of the model "
                               f"(profiles.wellformed fails under {profile.name})")


# --- on any oracle ---------------------------------------------------------------------------------
ORACLE_OUTCOMES = OUTCOMES + ("not-run",)
_LABEL = {"unicorn": "Unicorn", "bochs": "Bochs", "qemu": "QEMU"}


def replay_on(oracle, items: list[tuple[str, Mapping]], criterion: Criterion, profile: str,
              strict: bool = False) -> list[Replay]:
    """Replay each (form, witness) of ``items`` on ``oracle`` (an ``oracles`` instance; a
    full-system one runs every state of every pair in one batch), as ``Replayer.replay`` does on
    Unicorn: confirmed / emulator-deviation (naming ``oracle``'s entries) / mismatch, and
    ``not-run`` when the oracle refused a state or failed on it (``note`` says why).  The model's
    side is each witness's own prediction; the compiled model only places the catch points."""
    from .oracles import model_case
    from .deviations import by_id, table
    name = oracle.name
    if name == "unicorn":
        rp = Replayer(oracle.m)
        return [rp.replay(form, w, criterion, profile, strict) for form, w in items]
    feats = profiles.get(profile).features
    cases, pairs = [], []
    for form_name, w in items:
        form = isa.get(form_name)
        comp = concrete.compiled(form, feats)
        for label in ("native", "deprivileged"):
            s = w[label]
            cases.append(model_case(form, s, comp.evaluate(s)))
        pairs.append(form)
    results = oracle.run(cases)
    entries = by_id(name)
    out = []
    for k, (form, (form_name, w)) in enumerate(zip(pairs, items)):
        runs = []
        for j, label in enumerate(("native", "deprivileged")):
            s, pred, res = w[label], w["model"][label], results[2 * k + j]
            run = Run(s, dict(pred))
            if res.outcome is None:
                run.error = res.error or f"{name} refuses the {label} state: {res.refused}"
                runs.append((run, res))
                continue
            run.emulator = res.outcome
            model = ModelResult.from_prediction(s, pred)
            comp = concrete.compiled(form, feats)
            io_dep = _io_dep(comp, s)
            run.differences = _compare_model(form, s, model, res, io_dep, _LABEL[name])
            if run.differences:
                obs = D.Observation(form, s, model.fault, model.post, res.outcome,
                                    list(run.differences), set(model.addresses.get("mem", ())))
                run.explained_by, run.unexplained = D.base.explain(table(name), obs)
            runs.append((run, res))
        (n, nres), (d, dres) = runs
        model = {"native": w["model"]["native"], "deprivileged": w["model"]["deprivileged"],
                 "criterion": criterion(n.state, from_changes_json(n.state, w["model"]["native"]),
                                        d.state, from_changes_json(d.state, w["model"]["deprivileged"]))}
        if n.emulator is None or d.emulator is None:
            out.append(Replay(form, profile, "not-run", n, d, model, None, [], n.error or d.error))
            continue
        ignore = tuple(f for f in st.SCALARS if not _held(nres, f) or not _held(dres, f))
        emu_crit = criterion(n.state, n.emulator, d.state, d.emulator, ignore=ignore)
        out.append(_classify(form, profile, n, d, model, emu_crit, entries))
    return out


def _held(res, name: str) -> bool:
    return res.observed is None or bool(res.observed.get(name))


def _io_dep(comp, state):
    from .crosscheck import io_dependent
    return io_dependent(comp, state, comp.evaluate(state))


def _compare_model(form, pre, model: ModelResult, res, io_dep, label):
    """``crosscheck.compare_result`` with the witness's prediction on the model's side."""
    from .crosscheck import compare_model
    return compare_model(form, pre, model, res, io_dep, label)


def _classify(form, profile, n: Run, d: Run, model: dict, emu_crit: list, entries) -> Replay:
    if not model["criterion"]:
        return Replay(form, profile, "mismatch", n, d, model, None, emu_crit,
                      "the model's own predictions do not meet the counterexample criterion")
    if not n.differences and not d.differences:
        if emu_crit:
            return Replay(form, profile, "confirmed", n, d, model, None, emu_crit, "; ".join(emu_crit))
        return Replay(form, profile, "mismatch", n, d, model, None, emu_crit,
                      "the emulator agrees with the model, yet its results do not meet the criterion")
    if n.unexplained or d.unexplained:
        left = [f"{lbl}: {x}" for lbl, r in (("native", n), ("deprivileged", d)) for x in r.unexplained]
        return Replay(form, profile, "mismatch", n, d, model, None, emu_crit,
                      "unexplained: " + "; ".join(left))
    ids = list(dict.fromkeys(n.explained_by + d.explained_by))
    why = "; ".join(f"{i}: {entries[i].emulator}" for i in ids)
    return Replay(form, profile, "emulator-deviation", n, d, model, why, emu_crit, ", ".join(ids))
