"""The paravirtual monitor's hypercall handlers: the emulating half of a patched guest.

``pgvirt patch`` replaces every sensitive-but-unprivileged instruction of a guest with a
hypercall: HLT (F4) padded with NOPs (90) to the original length (``replacement``).  HLT is a
CPL-0 instruction (SDM Vol. 2A HLT: #GP(0) at CPL > 0), so the deprivileged guest's HLT faults
into the monitor, and a fault reports the faulting instruction's EIP (SDM Vol. 3A 6.5): the
site.  The monitor looks that EIP up in its site table (``Monitor``); the hypercall number is
the site's index there.  An EIP that names no site is the guest's own HLT, not a hypercall.

The virtual machine is two records, both ``State`` values:

* ``real`` (R): the processor's state at the trap: the guest's USER fields, with the CS/SS RPL
  equal to the real CPL (3), and the monitor's SYSTEM fields under the profile's host settings.
* ``vcpu`` (C): the monitor's record of the SYSTEM fields the guest believes it has (virtual
  CPL, IF, IOPL, GDTR, CR0, the virtual I/O ports...).  Its USER fields mean nothing.

``handle`` emulates the site's ORIGINAL instruction (its bytes decoded by its form) on the
guest's view of the two (``view``), and writes the result back (``write_back``): guest-visible
results into R, the virtual system state into C.  It is a function of (R, C) built with
``State.replace`` and the forms' own semantics, so it runs on symbolic states (the equivalence
proofs of ``pgvirt check-patch``) and on concrete ones (``run``, ``Monitor.on_trap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import z3

from . import state as st
from .form import Form
from .outcome import Exit, Fault, Outcome
from .state import State

HYPERCALL = 0xF4    # HLT: privileged under every profile (SDM Vol. 2A HLT)
PAD = 0x90          # NOP: fills the rest of the site, never executed (the handler resumes past it)

# The guest's address space: segment bases and limits are SYSTEM fields, but the guest's code
# runs through them directly, so the real ones must equal the virtual ones (README, "Mode and
# relocation": Popek and Goldberg's E|r is the same storage under both relocations).
ADDRESS_SPACE = tuple(f"{r}_{k}" for r in st.SREGS for k in ("base", "limit"))
RPL_COUPLED = ("cs", "ss")   # their RPL is the CPL (SDM Vol. 3A 5.5), so it is mode, not storage
SCALAR_USER = tuple(n for n in st.users() if not st.FIELD[n].index_width)
SCALAR_SYSTEM = tuple(n for n in st.systems() if not st.FIELD[n].index_width)
_USERS, _SYSTEMS = st.users(), st.systems()
_BACK_TO_REAL = SCALAR_USER + ADDRESS_SPACE


def replacement(length: int) -> bytes:
    """The hypercall that stands in for a ``length``-byte instruction: HLT, then NOPs."""
    if not 1 <= length <= 15:
        raise ValueError(f"an x86 instruction is 1 to 15 bytes long, not {length}")
    return bytes([HYPERCALL]) + bytes([PAD]) * (length - 1)


@dataclass(frozen=True)
class Site:
    """One hypercall site: its number (index in the site table), address and original instruction."""

    number: int
    address: int
    code: bytes          # the original instruction's bytes
    form: Form           # the form those bytes are an instance of

    @property
    def length(self) -> int:
        return len(self.code)

    @property
    def replacement(self) -> bytes:
        return replacement(len(self.code))


def _with_rpl(sel, cpl):
    if isinstance(sel, int):                  # a concrete state (plain integers)
        return (sel & 0xFFFC) | cpl
    return (sel & ~3) | z3.ZeroExt(14, cpl)


def _replace(s, changes: dict):
    return s.replace(**changes) if isinstance(s, State) else {**s, **changes}


def view(real, vcpu):
    """The state the guest believes it runs in: USER fields of R (EIP = the trapping site), every
    SYSTEM field of C, and CS/SS showing the virtual CPL as their RPL.

    ``real`` and ``vcpu`` are both ``State`` values (the proofs) or both plain-integer mappings
    (a running monitor; ``mem`` may be any object with ``get(address, default)``)."""
    user = {n: real[n] for n in _USERS}
    for n in RPL_COUPLED:
        user[n] = _with_rpl(real[n], vcpu["cpl"])
    return _replace(vcpu, user)


def write_back(real, vcpu, after):
    """R' and C' from the guest's view ``after`` the emulated instruction.

    R' gets every USER field (CS/SS keep the real CPL as RPL: the guest stays deprivileged) and
    the address space, so the guest's next instructions run where the original would; every
    other real SYSTEM field stays the monitor's.  C' gets every SYSTEM field.  Works on
    ``State`` values and on plain-integer mappings alike (as ``view``).
    """
    if not isinstance(after, State):          # a concrete result: scalars (arrays written apart)
        r2 = dict(real)
        for n in _BACK_TO_REAL:
            r2[n] = after[n]
        for n in RPL_COUPLED:
            r2[n] = _with_rpl(after[n], real["cpl"])
        c2 = dict(vcpu)
        for n in SCALAR_SYSTEM:
            c2[n] = after[n]
        return r2, c2
    user = {n: after[n] for n in _USERS}
    for n in RPL_COUPLED:
        user[n] = _with_rpl(after[n], real["cpl"])
    user.update({n: after[n] for n in ADDRESS_SPACE})
    return _replace(real, user), _replace(vcpu, {n: after[n] for n in _SYSTEMS})


@dataclass(frozen=True)
class HandlerOutcome:
    """A handler's symbolic result.  When ``faults`` holds, the fault (``vector``, ``code``) is
    injected into the guest and R, C stay as they were (faults are values, as in ``Outcome``);
    otherwise the machine continues from ``real`` with ``vcpu`` as its virtual CPU."""

    emulated: Outcome    # the original instruction's run on the guest's view
    real: State
    vcpu: State

    @property
    def faults(self) -> z3.BoolRef:
        return self.emulated.faults

    @property
    def vector(self) -> z3.BitVecRef:
        return self.emulated.vector

    @property
    def code(self) -> z3.BitVecRef:
        return self.emulated.code


Handler = Callable[[Site, State, State, frozenset], HandlerOutcome]


def handle(site: Site, real: State, vcpu: State, features: frozenset[str] = frozenset()) -> HandlerOutcome:
    """Emulate ``site``'s original instruction for the guest and resume after it.

    The form's semantics run on ``view(real, vcpu)`` with the site's own bytes, so operands,
    prefixes and displacements are the instance's; EIP advances by the original length (or the
    instruction jumps), not by HLT's one byte.
    """
    o = site.form.run(view(real, vcpu), code=site.code, features=features)
    r2, c2 = write_back(real, vcpu, o.post)
    return HandlerOutcome(o, r2, c2)


# --- concrete runs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Injected:
    """The hypercall raises ``fault`` in the guest (delivered through the guest's virtual IDT)."""

    fault: Fault


@dataclass(frozen=True)
class Resumed:
    """The guest resumes from ``real`` with ``vcpu`` as its virtual CPU (plain-integer dicts)."""

    real: dict
    vcpu: dict


def run(site: Site, real: Mapping, vcpu: Mapping, features: Iterable[str] = frozenset(),
        handler: Handler = handle) -> Injected | Resumed:
    """``handler`` on concrete states (the dict format of ``state.concrete``).

    Memory and ports are read back at the addresses the inputs list and the instruction touches.
    """
    h = handler(site, st.concrete(real), st.concrete(vcpu), frozenset(features))
    solver = z3.Solver()
    solver.check()
    model = solver.model()
    res = h.emulated.concrete(model)
    if isinstance(res, Fault):
        return Injected(res)
    touched = h.emulated.addresses(model)
    addrs = {a: set(real.get(a, {})) | set(vcpu.get(a, {})) | touched.get(a, set())
             for a in st.ARRAYS}
    return Resumed(st.evaluate(h.real, model, addrs), st.evaluate(h.vcpu, model, addrs))


@dataclass(frozen=True)
class Step:
    """One instruction emulated concretely with its compiled form (``concrete.compiled``).

    ``fault`` is the original instruction's fault (inject it into the guest; nothing changed), or
    None: then ``real``/``vcpu`` hold the scalar fields afterwards, ``mem`` the bytes it stored
    (address -> byte, only those that change), ``io_out`` the port bytes it wrote and ``io_in``
    the ports it read (a device read has side effects: the caller commits them in this order).
    ``exit`` is the VM exit the instruction causes in non-root operation (``emulate(vm=...)``):
    it did not complete, nothing changed, the monitor takes over (SDM Vol. 3C 25.1, 27.1).
    ``assumed`` is False when the state lies outside the form's stated assumptions: the model
    does not describe that run, and a monitor must not pretend it does.
    """

    form: Form
    fault: Fault | None
    assumed: bool
    real: dict
    vcpu: dict
    mem: dict
    io_out: dict
    io_in: tuple
    exit: Exit | None = None


def emulate(form: Form, code: bytes, real: Mapping, vcpu: Mapping | None = None,
            features: Iterable[str] = frozenset(), uf: Callable | None = None, vm=None) -> Step:
    """``form`` (instance ``code``) on the guest's view of (``real``, ``vcpu``), compiled.

    ``vcpu`` None: the guest runs on the real machine (no monitor between), so the view is
    ``real`` itself and the result is written to ``real`` only (``Step.vcpu`` is empty).
    The memory and ports of the view are read through their ``get``, so a running machine can
    hand over lazy readers; stores come back as values, never written here.  ``vm`` runs the form
    in VMX non-root operation / an SVM guest under those controls (``Form.run``).
    """
    from .concrete import compiled

    guest = real if vcpu is None else view(real, vcpu)
    run = compiled(form, frozenset(features), code, vm).evaluate(guest, uf, complete=False)
    if run.fault is not None or run.exit is not None or not run.assumed:
        same = {n: real[n] for n in st.SCALARS}
        return Step(form, run.fault, run.assumed, same,
                    {} if vcpu is None else {n: vcpu[n] for n in st.SCALARS}, {}, {}, (), run.exit)
    mem_in = guest["mem"]
    mem: dict = {}
    io_out: dict = {}
    io_in: list = []
    for arr, a in run.loads:
        if arr == "io" and a not in io_in:
            io_in.append(a)
    for arr, a in run.stores:
        v = run.read(arr, a)          # the last store to ``a`` wins
        if arr == "io":
            io_out[a] = v             # OUT always writes its port: a port write is an event
        elif v != mem_in.get(a, 0):
            mem[a] = v                # a store guarded off (a branch not taken) changes nothing
    after = {n: guest[n] for n in st.SCALARS}
    after.update(run.post)
    if vcpu is None:
        return Step(form, None, True, after, {}, mem, io_out, tuple(io_in))
    r2, c2 = write_back({n: real[n] for n in st.SCALARS}, {n: vcpu[n] for n in st.SCALARS}, after)
    return Step(form, None, True, r2, c2, mem, io_out, tuple(io_in))


class Monitor:
    """The site table: hypercall number = index; the trapping EIP selects the site."""

    def __init__(self, sites: Iterable[Site], features: Iterable[str] = frozenset(),
                 handler: Handler = handle):
        self.sites = tuple(sites)
        for i, s in enumerate(self.sites):
            if s.number != i:
                raise ValueError(f"site at {s.address:#x} has number {s.number}, expected {i}")
        self.by_eip = {s.address: s for s in self.sites}
        if len(self.by_eip) != len(self.sites):
            raise ValueError("two hypercall sites share an address")
        self.features = frozenset(features)
        self.handler = handler

    def site_at(self, eip: int) -> Site | None:
        return self.by_eip.get(eip)

    def on_trap(self, real: Mapping, vcpu: Mapping) -> Injected | Resumed | None:
        """The #GP(0) of a hypercall, concretely.  None: R's EIP names no site, so the trap is
        the guest's own privileged instruction, which ordinary trap-and-emulate handles."""
        site = self.site_at(int(real.get("eip", 0)))
        if site is None:
            return None
        return run(site, real, vcpu, self.features, self.handler)


__all__ = ["HYPERCALL", "PAD", "ADDRESS_SPACE", "Site", "replacement", "view", "write_back",
           "HandlerOutcome", "Handler", "handle", "Injected", "Resumed", "run", "Monitor",
           "Step", "emulate"]
