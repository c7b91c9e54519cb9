"""What every deviation table shares: differences, observations, entries and how they explain.

A ``Deviation`` names what it affects, what the SDM says, what the emulator does instead
(``emulator``), and a ``reproduce`` that runs a minimal case and returns True while the emulator
still behaves so (the tests run every one, so a table goes stale loudly).  ``explains(obs, diff)``
says whether it accounts for one observed difference; ``explain(table, obs)`` splits an
observation's differences into the ids that account for them and the ones none does.
``trigger(form, s, o)``, where given, is the same condition on a symbolic pre-state ``s`` and the
form's Outcome ``o`` on it (a Z3 Boolean over ``pgvirt.model`` terms; None: the deviation cannot
affect this form): the counterexample query adds its negation to find witnesses that steer clear
of the deviation.  The predicates never change what the model says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from pgvirt.model import state as st
from pgvirt.model.form import Form
from pgvirt.model.outcome import Fault, Next


@dataclass(frozen=True)
class Diff:
    """One difference between the model's result and an oracle's (``oracle`` names it).

    ``kind``: "outcome" (fault versus completion, or different vectors), "reg" (a scalar field;
    ``key`` is its name), "mem" or "io" (``key`` is the address or port).
    """

    kind: str
    key: Any
    model: Any
    emu: Any
    oracle: str = field(default="Unicorn", compare=False)

    def __str__(self) -> str:
        if self.kind == "outcome":
            return f"model {self.model}, {self.oracle} {self.emu}"
        where = f"{self.kind}[{self.key:#x}]" if self.kind in ("mem", "io") else str(self.key)
        def h(v):
            return f"{v:#x}" if isinstance(v, int) else str(v)
        return f"{where}: model {h(self.model)}, {self.oracle} {h(self.emu)}"

    def as_json(self) -> dict:
        return {"kind": self.kind, "key": self.key, "model": self.model, "emu": self.emu}


@dataclass
class Observation:
    """A form run on ``state`` by the model (``model``: its Fault, or None with ``model_post``
    holding every scalar field afterwards) and by an oracle (``emu``: Fault or Next)."""

    form: Form
    state: Mapping
    model: Fault | None
    model_post: Mapping | None
    emu: Fault | Next
    diffs: list = field(default_factory=list)
    model_stores: set = field(default_factory=set)   # memory addresses the model wrote

    # --- helpers the predicates share -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.form.name

    @property
    def cpl(self) -> int:
        return self.state["cpl"]

    @property
    def iopl(self) -> int:
        return (self.state["sysflags"] >> st.IOPL_LO) & 3

    def cr4(self, bit: int) -> bool:
        return bool(self.state["cr4"] >> bit & 1)

    @property
    def emu_post(self) -> Mapping | None:
        return self.emu.state if isinstance(self.emu, Next) else None

    def model_faults(self, *vectors: int) -> bool:
        return self.model is not None and (not vectors or self.model.vector in vectors)

    def emu_faults(self, *vectors: int) -> bool:
        return isinstance(self.emu, Fault) and (not vectors or self.emu.vector in vectors)

    def dword(self, address: int) -> int:
        mem = self.state["mem"]
        return int.from_bytes(bytes(mem.get((address + k) & 0xFFFFFFFF, 0) for k in range(4)), "little")


@dataclass(frozen=True)
class Deviation:
    id: str
    affects: str           # instructions / conditions
    sdm: str               # what the SDM specifies (with the citation)
    emulator: str          # what the emulator does instead
    reproduce: Callable[..., bool]
    kind: str = "semantics"
    fields: tuple[str, ...] = ()
    explains: Callable[[Observation, Diff], bool] | None = None
    trigger: Callable[[Form, Any, Any], Any] | None = None
    unsafe: bool = False   # meeting it, the emulator goes where the test kernel cannot catch it

    @property
    def unicorn(self) -> str:
        """What Unicorn does (the Unicorn table's name for ``emulator``)."""
        return self.emulator

    def present(self, machine=None) -> bool:
        """Run the reproduction (on ``machine``; a Unicorn entry makes a fresh Machine)."""
        if machine is None:
            from ..machine import Machine
            machine = Machine()
        return self.reproduce(machine)

    def applies(self, obs: Observation, diff: Diff) -> bool:
        """Whether this entry accounts for ``diff`` observed in ``obs``."""
        return self.explains is not None and bool(self.explains(obs, diff))


def loads_cs(form: Form) -> bool:
    """A far transfer or an INT n delivery: CS comes through a descriptor (``Form.flow``)."""
    return form.far or form.flow == "interrupt"


def reads_unaccessed_segment(s, o):
    """The run reads a code or data segment descriptor whose accessed bit is clear: byte 5 of a
    GDT/LDT entry with S = 1 and bit 0 = 0 among the bytes it loads (the one whose accessed bit a
    segment load then sets).  Only pre-state bytes are read, so the condition stays cheap."""
    import z3
    parts = []
    for arr, a in o.loads:
        if arr != "mem":
            continue
        byte = z3.Select(s.mem, a)
        flags = z3.And(z3.Extract(4, 4, byte) == 1, z3.Extract(0, 0, byte) == 0)
        for base, limit, usable in ((s.gdtr_base, z3.ZeroExt(16, s.gdtr_limit), z3.BoolVal(True)),
                                    (s.ldtr_base, s.ldtr_limit, z3.Extract(15, 2, s.ldtr) != 0)):
            off = a - base
            parts.append(z3.And(usable, z3.ULE(off, limit), z3.Extract(2, 0, off) == 5, flags))
    return z3.Or(parts) if parts else z3.BoolVal(False)


def explain(table: Sequence[Deviation], obs: Observation) -> tuple[list[str], list[Diff]]:
    """(ids of the entries of ``table`` that account for ``obs.diffs``, the differences none
    accounts for)."""
    used: list[str] = []
    left: list[Diff] = []
    for diff in obs.diffs:
        hit = [d.id for d in table if d.applies(obs, diff)]
        for i in hit:
            if i not in used:
                used.append(i)
        if not hit:
            left.append(diff)
    return used, left


# --- reproductions on a full-system oracle -------------------------------------------------------------
@dataclass(frozen=True)
class Repro:
    """A reproduction for a full-system oracle: ``cases()`` builds the minimal cases, ``holds``
    says from their Results whether the emulator still deviates.  A whole table's cases run in
    one boot (``present_all``); calling the Repro runs just its own."""

    cases: Callable[[], list]
    holds: Callable[[list], bool]

    def __call__(self, oracle) -> bool:
        return bool(self.holds(oracle.run(self.cases())))


def unsafe_for(table: Sequence[Deviation], form: Form, features=frozenset()):
    """A predicate on concrete states: the id of the first ``unsafe`` entry of ``table`` whose
    trigger the state meets (the emulator would run off where nothing catches it), or None."""
    from pgvirt.model import concrete
    key = (id(table), form.name, frozenset(features))
    preds = _UNSAFE.get(key)
    if preds is None:
        preds = []
        for d in table:
            if d.unsafe and d.trigger is not None:
                probe = d.trigger(form, _probe_state(), form.run(_probe_state(), features=features))
                if probe is None:
                    continue
                preds.append((d.id, concrete.compile_predicate(
                    lambda s, t=d.trigger: t(form, s, form.run(s, features=features)))))
        _UNSAFE[key] = preds

    def check(state):
        for ident, p in preds:
            if p(state):
                return ident
        return None
    return check


_UNSAFE: dict = {}


def _probe_state():
    from pgvirt.model import state as st
    return st.fresh("probe")


def present_all(table: Sequence[Deviation], oracle) -> dict[str, bool]:
    """Every reproduction of ``table`` on ``oracle``, all cases in one batch: id -> still present."""
    spans, cases = [], []
    for d in table:
        c = d.reproduce.cases()
        spans.append((d, len(cases), len(c)))
        cases += c
    results = oracle.run(cases)
    return {d.id: bool(d.reproduce.holds(results[at:at + n])) for d, at, n in spans}
