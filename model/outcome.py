"""Outcomes of one instruction: a fault is a value (vector, error code, reason), not an exception,
and so is a VM exit (exit reason and qualification) in VMX non-root operation or an SVM guest.

``Outcome`` is the symbolic result of running a form on a (possibly symbolic) state; ``Fault``,
``Exit`` and ``Next`` are the concrete results read out of it under a Z3 model (SDM Vol. 3A 6.15;
Vol. 3C 25.1, 27.2; AMD APM Vol. 2 15.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Mapping

import z3

from .state import State, eval_many, evaluate

DE, DB, BP, OF, BR, UD, NM, DF, TS, NP, SS, GP, PF, MF, AC = (
    0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17)
VECTOR_NAMES = {DE: "#DE", DB: "#DB", BP: "#BP", OF: "#OF", BR: "#BR", UD: "#UD", NM: "#NM",
                DF: "#DF", TS: "#TS", NP: "#NP", SS: "#SS", GP: "#GP", PF: "#PF", MF: "#MF",
                AC: "#AC"}


def vector_name(v: int) -> str:
    return VECTOR_NAMES.get(v, f"vector {v}")


@dataclass(frozen=True)
class Fault:
    vector: int
    code: int | None
    reason: str

    def __str__(self) -> str:
        code = "" if self.code is None else f"({self.code:#x})"
        return f"{vector_name(self.vector)}{code}: {self.reason}"

    def as_json(self) -> dict:
        return {"fault": True, "vector": self.vector, "error_code": self.code, "reason": self.reason}


@dataclass(frozen=True)
class Exit:
    """A VM exit (VT-x: basic exit reason, SDM Vol. 3C Appendix C) or #VMEXIT (SVM: exit code,
    AMD APM Vol. 2 Appendix C): the instruction does not complete, the monitor takes over.
    ``qualification`` is what the monitor learns besides the reason (the exception vector, the
    port, the MSR, the control register), ``reason`` the condition that made it exit."""

    kind: str               # "vmx" or "svm"
    exit_reason: str        # the SDM's / APM's name: "cpuid", "io", "cr_access", "excp13"...
    code: int               # basic exit reason (VT-x) or exit code (SVM)
    qualification: int | None
    reason: str

    def __str__(self) -> str:
        q = "" if self.qualification is None else f"({self.qualification:#x})"
        word = "VM exit" if self.kind == "vmx" else "#VMEXIT"
        return f"{word} {self.exit_reason}{q}: {self.reason}"

    def as_json(self) -> dict:
        return {"fault": False, "exit": True, "kind": self.kind, "exit_reason": self.exit_reason,
                "exit_code": self.code, "qualification": self.qualification, "reason": self.reason}


@dataclass(frozen=True)
class Next:
    state: dict

    def as_json(self) -> dict:
        return {"fault": False, "state": self.state}


def changes_json(pre: Mapping, res: Fault | Exit | Next) -> dict:
    """A concrete outcome as JSON: the fault or the exit, or the fields (and memory/port bytes)
    that differ from ``pre``."""
    if isinstance(res, (Fault, Exit)):
        return res.as_json()
    changed: dict = {}
    for k, v in res.state.items():
        if k in ("mem", "io"):
            d = {a: b for a, b in v.items() if pre[k].get(a) != b}
            if d:
                changed[k] = d
        elif pre[k] != v:
            changed[k] = v
    return {"fault": False, "changed": changed}


def from_changes_json(pre: Mapping, doc: Mapping) -> Fault | Exit | Next:
    """The Fault, Exit or Next a ``changes_json`` document describes, given the state before."""
    if doc.get("exit"):
        return Exit(doc["kind"], doc["exit_reason"], doc["exit_code"], doc.get("qualification"),
                    doc.get("reason", ""))
    if doc.get("fault"):
        return Fault(doc["vector"], doc.get("error_code"), doc.get("reason", ""))
    changed = doc.get("changed", {})
    post = {k: v for k, v in pre.items() if k not in ("mem", "io")}
    post.update({k: v for k, v in changed.items() if k not in ("mem", "io")})
    for arr in ("mem", "io"):
        post[arr] = dict(pre.get(arr, {})) | dict(changed.get(arr, {}))
    return Next(post)


@dataclass(frozen=True)
class Check:
    fails: z3.BoolRef       # this check fires (and no earlier one did not matter: order decides)
    vector: int
    code: Any               # Z3 BV32 or None
    reason: str
    exit: Exit | None = None    # a VM exit, not a fault: ``code`` is then its qualification


@dataclass(frozen=True)
class Outcome:
    """Symbolic result: ``faults`` holds iff some check fires; then the first one decides."""

    pre: State
    checks: tuple[Check, ...]
    post: State
    assumptions: tuple[tuple[z3.BoolRef, str], ...]
    loads: tuple[tuple[str, Any], ...]    # (array field, address term) read
    stores: tuple[tuple[str, Any], ...]   # (array field, address term) written
    effects: tuple[str, ...] = field(default=())  # scalar fields the form may change
    # segment-relative accesses, for ``in_segments``: (path, checks before it, whether the
    # segment is still the one the instruction started with, selector, base,
    # limit, attr, linear address, size, write, cpl, cr0, sysflags, register name), each term as
    # it stood then; a fetch ("fetch") has no base and the offset (EIP) for the address
    segmented: tuple | None = field(default=None, compare=False)   # None: not recorded
    # the VMX controls / SVM intercepts (and ``exception_N``) the definition consulted
    consulted: frozenset = field(default=frozenset(), compare=False)

    # Computed once per outcome: the queries ask for them many times.
    @cached_property
    def faults(self) -> z3.BoolRef:
        return z3.Or([c.fails for c in self.checks]) if self.checks else z3.BoolVal(False)

    @cached_property
    def exits(self) -> z3.BoolRef:
        """The first check that fires is a VM exit (never so outside non-root operation)."""
        out, earlier = [], []
        for c in self.checks:
            if c.exit is not None:
                out.append(z3.And([c.fails] + [z3.Not(e) for e in earlier]))
            earlier.append(c.fails)
        return z3.Or(out) if out else z3.BoolVal(False)

    @cached_property
    def vector(self) -> z3.BitVecRef:
        v = z3.BitVecVal(0, 8)
        for c in reversed(self.checks):
            v = z3.If(c.fails, z3.BitVecVal(c.vector, 8), v)
        return v

    @cached_property
    def code(self) -> z3.BitVecRef:
        """Error code, or 0xFFFFFFFF... never: faults without a code read as -1 (all ones)."""
        v = z3.BitVecVal(-1, 33)
        for c in reversed(self.checks):
            cv = z3.BitVecVal(-1, 33) if c.code is None else z3.ZeroExt(1, c.code)
            v = z3.If(c.fails, cv, v)
        return v

    def substituted(self, pre: State, sub) -> "Outcome":
        """This run's outcome with its initial state replaced by ``pre``, whose fields ``sub``
        (``state.substitution(self.pre, pre)``) gives as terms over this run's: every term of
        the run with the constants substituted.  That is what running the semantics on ``pre``
        computes, up to simplification: a definition is a function of the state's terms, and
        it branches only on what Z3 simplifies a term to (a check that cannot fire, a path
        that is always taken), which the substituted terms still say.  Segment accesses are not
        carried over (record a run of its own)."""
        old = self.pre.values
        post = {k: pre.values[k] if v is old[k] else sub(v) for k, v in self.post.values.items()}
        checks = tuple(Check(sub(c.fails), c.vector, None if c.code is None else sub(c.code), c.reason,
                             c.exit) for c in self.checks)
        return Outcome(pre, checks, State(post), tuple((sub(a), why) for a, why in self.assumptions),
                       tuple((arr, sub(ad)) for arr, ad in self.loads),
                       tuple((arr, sub(ad)) for arr, ad in self.stores), self.effects, None,
                       self.consulted)

    @property
    def in_segments(self) -> z3.BoolRef:
        return self.segments_ok(True)

    @property
    def in_current_segments(self) -> z3.BoolRef:
        """No memory trap through the segments the instruction starts with, even past a check the
        model makes first: hardware may raise such a trap before the model's fault (a far CALL's
        push onto the current stack comes before its offset check, SDM Vol. 2A CALL)."""
        return self.segments_ok(False, current_only=True)

    def segments_ok(self, guarded: bool = True, current_only: bool = False) -> z3.BoolRef:
        """No access of the run is a *memory trap*: every segment-relative access lies inside its
        segment (limit, expand-down bounds), goes through a usable segment of the right type
        (not null, no write to code or read-only data, no read of execute-only code) and is
        aligned where CPL 3 with CR0.AM = EFLAGS.AC = 1 asks for it (SDM Vol. 3A 5.3-5.6, 6.15
        #AC, on the linear address); the instruction's bytes and a jump's target lie inside CS
        (SDM Vol. 2A JMP).  The model assumes these away (README: memory traps are outside Popek and
        Goldberg's definitions); an emulator that checks them is compared only where this holds.
        An access counts only on its path and when no check before it fired (a run that faults
        earlier never makes it).  Recorded accesses never change what the run computes."""
        if self.segmented is None:
            raise ValueError("segment accesses were not recorded: run the form with record=True")
        oks = []
        for path, k, current, sel, base, limit, attr, addr, size, write, cpl, cr0, sysflags, reg in self.segmented:
            if current_only:
                path = z3.And(path, current)
            if k and guarded:
                path = z3.And(path, z3.Not(z3.Or([c.fails for c in self.checks[:k]])))
            off = addr if base is None else addr - base
            if reg == "fetch":
                last = z3.ZeroExt(1, off) + (size - 1)
                oks.append(z3.Implies(path, z3.ULE(last, z3.ZeroExt(1, limit))))
                continue
            code = z3.Extract(3, 3, attr) == 1
            bit1 = z3.Extract(1, 1, attr) == 1
            down = z3.And(z3.Not(code), z3.Extract(2, 2, attr) == 1)
            first = z3.ZeroExt(1, off)
            last = first + (size - 1)
            lim = z3.ZeroExt(1, limit)
            upper = z3.If(z3.Extract(14, 14, attr) == 1, z3.BitVecVal(0xFFFFFFFF, 33),
                          z3.BitVecVal(0xFFFF, 33))
            inside = z3.If(down, z3.And(z3.UGT(first, lim), z3.ULE(last, upper)), z3.ULE(last, lim))
            typed = z3.If(code, z3.BoolVal(False) if write else bit1,
                          bit1 if write else z3.BoolVal(True))
            usable = z3.BoolVal(True) if reg in ("cs", "ss") else z3.Extract(15, 2, sel) != 0
            aligned = z3.BoolVal(True)
            if size > 1:
                aligned = z3.Or(cpl != 3, z3.Extract(18, 18, cr0) == 0,
                                z3.Extract(18, 18, sysflags) == 0, (addr & (size - 1)) == 0)
            oks.append(z3.Implies(path, z3.And(usable, typed, inside, aligned)))
        return z3.And(oks) if oks else z3.BoolVal(True)

    @property
    def assumed(self) -> z3.BoolRef:
        return z3.And([a for a, _ in self.assumptions]) if self.assumptions else z3.BoolVal(True)

    def addresses(self, model: z3.ModelRef) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        refs = self.loads + self.stores
        for (name, _), a in zip(refs, eval_many(model, [ad for _, ad in refs])):
            out.setdefault(name, set()).add(a)
        return out

    def concrete(self, model: z3.ModelRef, extra: dict[str, set[int]] | None = None,
                 pre: dict | None = None) -> Fault | Exit | Next:
        """The concrete outcome under ``model``: a Fault or an Exit with its reason, or Next(state).

        ``pre`` is ``self.pre`` already read under ``model``; unchanged fields are copied from it.
        """
        one, zero = z3.BitVecVal(1, 1), z3.BitVecVal(0, 1)
        fired = eval_many(model, [z3.If(c.fails, one, zero) for c in self.checks])
        for c, bit in zip(self.checks, fired):
            if bit:
                code = None if c.code is None else model.eval(c.code, model_completion=True).as_long()
                if c.exit is not None:    # an exit's ``code`` term is its qualification
                    return replace(c.exit, qualification=code)
                return Fault(c.vector, code, c.reason)
        addrs = {} if extra is not None else self.addresses(model)
        for k, v in (extra or {}).items():
            addrs.setdefault(k, set()).update(v)
        known = (self.pre, pre) if pre is not None else None
        return Next(evaluate(self.post, model, addrs, known))
