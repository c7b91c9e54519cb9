"""Instruction forms: one definition each, in the spirit of a Sail clause.

A form is a decorated function::

    @form("sgdt_m", enc="0F 01 /0 mem", bytes="0f0100", asm="sgdt [eax]",
          cite="SDM Vol. 2B SGDT; Vol. 3A 2.8.7")
    def sgdt(x):
        x.require(~checks.umip_blocks(x), GP, 0, "CR4.UMIP=1 and CPL > 0")
        a = x.ea()
        x.store(a, 2, x.read("gdtr_limit"))
        x.store(a + 2, 4, x.read("gdtr_base"))

The body speaks a small vocabulary on ``Exec``: ``require``/``fault``, ``read``/``write``,
``load``/``store``, ``push``/``pop``, ``jump``, ``when`` (a guarded branch) and ``assume``
(a restriction of the modelled state space, reported with every answer). EIP advances by the
instruction's length unless the body jumped; nothing the body wrote survives a fault.
"""

from __future__ import annotations

import builtins
import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import z3

from . import state as st
from .encoding import Decoded, Encoding, EncodingError, decode
from .features import KNOWN
from .outcome import PF, UD, Check, Exit, Outcome
from .state import State


class ModelError(Exception):
    """A form used the vocabulary wrongly (a bug in the model, not a property of x86)."""


def _bv(v, width: int):
    if isinstance(v, int):
        return z3.BitVecVal(v, width)
    if v.size() == width:
        return v
    if v.size() < width:
        return z3.ZeroExt(width - v.size(), v)
    return z3.Extract(width - 1, 0, v)


def _byte_addresses(addr, size: int) -> list:
    """``addr + k`` for k < size, built through the C API (the same terms as ``addr + k``:
    numerals and applications are hash-consed); wide vector operands load 16-64 bytes."""
    ctx = addr.ctx
    c, a, srt = ctx.ref(), addr.as_ast(), addr.sort().ast
    out = []
    for k in range(size):
        out.append(z3.BitVecRef(z3.Z3_mk_bvadd(c, a, z3.Z3_mk_unsigned_int64(c, k, srt)), ctx))
    return out


def _select(arr, a):
    ctx = arr.ctx
    return z3.BitVecRef(z3.Z3_mk_select(ctx.ref(), arr.as_ast(), a.as_ast()), ctx)


class Exec:
    """The state of one symbolic execution of a form."""

    def __init__(self, form: "Form", s: State, d: Decoded, features: frozenset[str] = frozenset(),
                 record: bool = False, vm=None):
        self.form = form
        self.features = features
        # The VMCS controls (``vmx.Controls``) or VMCB intercepts (``svm.Intercepts``) of VMX
        # non-root operation / an SVM guest; None on bare hardware, where no exit condition is
        # even built (the solver sees the very formulas it saw before exits existed).
        self.vm = vm
        self.consulted: set[str] = set()     # the controls / intercepts the definition read
        self.pre = s
        self.s = s
        self.d = d
        self.path: z3.BoolRef = z3.BoolVal(True)
        self._checks: list[Check] = []
        self._assumptions: list[tuple[z3.BoolRef, str]] = []
        self._loads: list[tuple[str, object]] = []
        self._stores: list[tuple[str, object]] = []
        self._jumped: z3.BoolRef = z3.BoolVal(False)
        self._effects: set[str] = set()
        # Segment-relative accesses are noted only when asked (``record``): the references they
        # keep would change which Z3 AST ids get reused, and with them the solver's witnesses.
        self.recording = record
        self._segmented: list[tuple] = []
        self._fetch(s.eip, d.length)

    def has(self, feature: str) -> z3.BoolRef:
        """Whether the processor has ``feature`` (a profile fact, e.g. "umip"; ``features``)."""
        if feature not in KNOWN:
            raise ModelError(f"{self.form.name}: unknown processor feature {feature!r}")
        return z3.BoolVal(feature in self.features)

    # --- faults and assumptions -------------------------------------------------------------
    def require(self, ok, vector: int, code, reason: str) -> None:
        """Fault with ``vector``/``code`` unless ``ok`` holds (on the current path)."""
        ok = z3.BoolVal(ok) if isinstance(ok, bool) else ok
        if code is not None:
            code = _bv(code, 32)
        fails = z3.simplify(z3.And(self.path, z3.Not(ok)))
        if not z3.is_false(fails):
            # The exception bitmap (SDM Vol. 3C 24.6.3, 25.2) or the exception intercepts (AMD
            # APM Vol. 2 15.12) turn the fault into an exit: the one place this happens.
            # A #PF's exit depends on its error code (VT-x's PFEC_MASK/PFEC_MATCH): the fault
            # splits into the exit where the condition holds and the fault where it does not.
            if self.vm is None:
                self._checks.append(Check(fails, vector, code, reason))
                return
            self.consulted.add(f"exception_{vector}")
            if vector == PF:
                self.consulted.add("pfec_filter")
            ex, when = self.vm.exception_exit(vector, reason, code)
            when = z3.simplify(z3.BoolVal(when) if isinstance(when, bool) else when)
            if ex is None or z3.is_false(when):
                self._checks.append(Check(fails, vector, code, reason))
            elif z3.is_true(when):
                self._checks.append(Check(fails, vector, z3.BitVecVal(vector, 32), reason, ex))
            else:
                self._checks.append(Check(z3.And(fails, when), vector, z3.BitVecVal(vector, 32), reason, ex))
                self._checks.append(Check(z3.And(fails, z3.Not(when)), vector, code, reason))

    def fault(self, vector: int, code, reason: str) -> None:
        self.require(False, vector, code, reason)

    def exit_when(self, cond, ex: Exit, qualification=None) -> None:
        """A VM exit ``ex`` when ``cond`` holds (on the current path), after every check made so
        far: the order of the calls in a definition is the priority of SDM Vol. 3C 25.1.1 (and
        AMD APM Vol. 2 15.7: intercepts are checked after the instruction's own exceptions).
        ``qualification`` is a term (port, MSR, CR number) the exit reports."""
        if self.vm is None:
            raise ModelError(f"{self.form.name}: an exit outside VMX non-root operation / an SVM guest")
        cond = z3.BoolVal(cond) if isinstance(cond, bool) else cond
        fails = z3.simplify(z3.And(self.path, cond))
        if not z3.is_false(fails):
            q = None if qualification is None else _bv(qualification, 32)
            self._checks.append(Check(fails, 0, q, ex.reason, ex))

    def assume(self, cond, reason: str) -> None:
        """Restrict the modelled states (on the current path); every verdict lists these.  In
        non-root operation a run that already exited is not restricted: what the exit left
        undone is the monitor's (an IRET's task switch after its VM exit)."""
        path = self.path
        exits = [c.fails for c in self._checks if c.exit is not None]
        if exits:
            path = z3.And(path, z3.Not(z3.Or(exits)))
        self._assumptions.append((z3.Implies(path, cond), reason))

    # --- branches ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def when(self, cond) -> Iterator[None]:
        saved = self.path
        self.path = z3.And(saved, cond)
        try:
            yield
        finally:
            self.path = saved

    def _guard(self, new, old):
        if z3.is_true(self.path):
            return new
        return z3.If(self.path, new, old)

    # --- registers ------------------------------------------------------------------------------
    def read(self, name: str):
        return self.s[name]

    def write(self, name: str, value) -> None:
        f = st.FIELD[name]
        old = self.s[name]
        new = value if f.index_width else _bv(value, f.width)
        self._effects.add(name)
        self.s = self.s.replace(**{name: self._guard(new, old)})

    def __getattr__(self, name: str):
        if name in st.FIELD:
            return self.s[name]
        raise AttributeError(name)

    def gpr(self, n: int, size: int = 4):
        v = self.s[st.GPRS[n & 7]] if size != 1 else self.s[st.GPRS[n & 3]]
        if size == 4:
            return v
        if size == 2:
            return z3.Extract(15, 0, v)
        return z3.Extract(15, 8, v) if n & 4 else z3.Extract(7, 0, v)

    def set_gpr(self, n: int, size: int, value) -> None:
        if size == 4:
            self.write(st.GPRS[n], value)
            return
        if size == 2:
            old = self.s[st.GPRS[n]]
            self.write(st.GPRS[n], z3.Concat(z3.Extract(31, 16, old), _bv(value, 16)))
            return
        r = st.GPRS[n & 3]
        old = self.s[r]
        v = _bv(value, 8)
        if n & 4:
            self.write(r, z3.Concat(z3.Extract(31, 16, old), v, z3.Extract(7, 0, old)))
        else:
            self.write(r, z3.Concat(z3.Extract(31, 8, old), v))

    def eflags(self):
        return st.eflags(self.s)

    def set_eflags(self, value) -> None:
        user, system = st.split_eflags(_bv(value, 32))
        self.write("flags", user)
        self.write("sysflags", system)

    def flag(self, n: int):
        return st.bit(self.eflags(), n)

    def set_flag(self, n: int, value) -> None:
        name = "flags" if (1 << n) & st.USER_FLAGS_MASK else "sysflags"
        old = self.s[name]
        b = z3.If(value, z3.BitVecVal(1 << n, 32), z3.BitVecVal(0, 32)) if isinstance(value, z3.BoolRef) \
            else z3.BitVecVal((1 << n) if value else 0, 32)
        self.write(name, (old & ~(1 << n)) | b)

    # --- memory ---------------------------------------------------------------------------------
    def load(self, addr, size: int, array: str = "mem"):
        """Little-endian load of ``size`` bytes (no limit or paging checks: see README)."""
        width = st.FIELD[array].index_width
        addr = _bv(addr, width)
        arr = self.s[array]
        parts = []
        for a in _byte_addresses(addr, size):
            self._loads.append((array, a))
            parts.append(_select(arr, a))
        return parts[0] if size == 1 else z3.Concat(*reversed(parts))

    def store(self, addr, size: int, value, array: str = "mem") -> None:
        width = st.FIELD[array].index_width
        addr = _bv(addr, width)
        value = _bv(value, 8 * size)
        arr = self.s[array]
        guarded = not z3.is_true(self.path)
        for k, a in enumerate(_byte_addresses(addr, size)):
            self._stores.append((array, a))
            byte = z3.Extract(8 * k + 7, 8 * k, value)
            if guarded:
                # Guard each byte, not the array: an if-then-else over arrays is slow to solve.
                byte = z3.If(self.path, byte, z3.Select(arr, a))
            arr = z3.Store(arr, a, byte)
        self._effects.add(array)
        self.s = self.s.replace(**{array: arr})

    def seg_base(self, seg: str):
        return self.s[f"{seg}_base"]

    def _through(self, seg: str, linear, size: int, write: bool):
        """Note an access through ``seg`` at ``linear`` (its base plus the offset) for
        ``Outcome.in_segments``, and return ``linear``.  Only terms that exist already are kept
        (the offset is derived when the predicate is built), so recording creates no Z3 term:
        the solver sees the very formulas, built in the very order, that it saw without it."""
        if not self.recording:
            return linear
        s = self.s
        current = self._same(seg)
        self._segmented.append((self.path, len(self._checks), current, s[seg], s[f"{seg}_base"],
                                s[f"{seg}_limit"], s[f"{seg}_attr"], linear, size, write, s.cpl,
                                s.cr0, s.sysflags, seg))
        return linear

    def _fetch(self, eip, length: int) -> None:
        """Note an instruction fetch at CS:``eip`` (the instruction itself, a jump's target)."""
        if not self.recording:
            return
        s = self.s
        current = self._same("cs")
        self._segmented.append((self.path, len(self._checks), current, s.cs, None, s.cs_limit, s.cs_attr,
                                eip, length, False, s.cpl, s.cr0, s.sysflags, "fetch"))

    def _same(self, seg: str):
        """Whether ``seg`` still holds the limit and attributes it started with (a term: a form
        may rewrite it under a condition, a far CALL's SS for instance).  Recording only."""
        s, pre = self.s, self.pre
        parts = [s[f] == pre[f] for f in (f"{seg}_limit", f"{seg}_attr") if s[f] is not pre[f]]
        return z3.And(parts) if parts else z3.BoolVal(True)

    def seg_load(self, seg: str, linear, size: int):
        """Load ``size`` bytes at ``linear`` through ``seg`` (no limit or type checks: README)."""
        return self.load(self._through(seg, linear, size, False), size)

    def seg_store(self, seg: str, linear, size: int, value) -> None:
        self.store(self._through(seg, linear, size, True), size, value)

    def offset(self):
        """Effective offset of the ModRM memory operand (SDM Vol. 2A 2.1.5): with a 16-bit
        address size the sum of BX/BP/SI/DI and the displacement, modulo 64 KiB (Table 2-1)."""
        d = self.d
        if not d.is_mem:
            raise ModelError(f"{self.form.name}: no memory operand")
        if d.asize == 16:
            off = z3.BitVecVal(d.disp, 16)
            if d.base is not None:
                off = off + self.gpr(d.base, 2)
            if d.index is not None:
                off = off + self.gpr(d.index, 2)
            return z3.ZeroExt(16, off)
        off = z3.BitVecVal(d.disp, 32)
        if d.base is not None:
            off = off + self.gpr(d.base)
        if d.index is not None:
            off = off + self.gpr(d.index) * d.scale
        return off

    def default_seg(self) -> str:
        """The override, else SS for ESP/EBP-based (BP-based under a16) modes, else DS."""
        if self.d.seg:
            return self.d.seg
        if self.d.base in (4, 5):     # a disp32/disp16-only operand has no base at all
            return "ss"
        return "ds"

    def wrap(self, offset):
        """An offset reduced to the address size (64 KiB under a16, SDM Vol. 3A 3.3)."""
        if self.d.asize == 16:
            return z3.ZeroExt(16, z3.Extract(15, 0, _bv(offset, 32)))
        return _bv(offset, 32)

    def ea(self, extra: int = 0):
        """Linear address of the memory operand (segment base + offset); ``extra`` moves to a
        later part of the operand, the offset wrapping at the address size as Bochs does."""
        if self.d.asize == 32:
            return self.seg_base(self.default_seg()) + self.offset() + extra
        return self.seg_base(self.default_seg()) + self.wrap(self.offset() + extra)

    # --- address-size registers of string and other implicit-memory forms --------------------
    def areg(self, n: int):
        """Register ``n`` as an address or count: (E)SI, (E)DI, (E)CX by the address size."""
        return z3.ZeroExt(16, self.gpr(n, 2)) if self.d.asize == 16 else self.gpr(n)

    def set_areg(self, n: int, value) -> None:
        self.set_gpr(n, 2 if self.d.asize == 16 else 4, value)

    def repeat(self, body: Callable[[], None], stop: Callable[[], object] | None = None) -> None:
        """One iteration of a REP-prefixed string instruction (SDM Vol. 2B REP/REPE/REPZ/REPNE/
        REPNZ, Operation).  With the count register (E)CX = 0 nothing happens.  Otherwise
        ``body`` runs once and the count drops by one; while it is not 0 (and ``stop``, the
        REPE/REPNE termination test read after the body, does not hold) EIP stays on the
        instruction, which the processor executes again: the state an interrupt between two
        iterations leaves, from which the operation resumes (SDM Vol. 2B REP, Description).
        A whole loop is these steps in a row."""
        count = self.areg(1)
        with self.when(count != 0):
            body()
            left = count - 1
            self.set_areg(1, left)
            again = left != 0
            if stop is not None:
                again = z3.And(again, z3.Not(stop()))
            with self.when(again):
                self.jump(self.pre.eip)

    def rm(self, size: int, rmw: bool = False):
        """The r/m operand; ``rmw``: a memory destination the instruction may write back, which
        must lie in a writable segment whether or not it is written (``Outcome.in_segments``)."""
        if self.d.is_mem:
            if rmw and self.recording:
                self._through(self.default_seg(), self.ea(), size, True)
            return self.seg_load(self.default_seg(), self.ea(), size)
        return self.gpr(self.d.rm, size)

    def set_rm(self, size: int, value) -> None:
        if self.d.is_mem:
            self.seg_store(self.default_seg(), self.ea(), size, value)
        else:
            self.set_gpr(self.d.rm, size, value)

    def reg(self, size: int = 4):
        return self.gpr(self.d.reg, size)

    def set_reg(self, size: int, value) -> None:
        self.set_gpr(self.d.reg, size, value)

    # --- stack and control flow -----------------------------------------------------------------
    def push(self, value, size: int = 4) -> None:
        esp = self.s.esp - size
        self.seg_store("ss", self.s.ss_base + esp, size, value)
        self.write("esp", esp)

    def pop(self, size: int = 4):
        v = self.seg_load("ss", self.s.ss_base + self.s.esp, size)
        self.write("esp", self.s.esp + size)
        return v

    def jump(self, eip) -> None:
        self._fetch(eip, 1)
        self.write("eip", eip)
        self._jumped = z3.Or(self._jumped, self.path)

    @property
    def next_eip(self):
        return self.pre.eip + self.d.length

    def finish(self) -> Outcome:
        jumped = z3.simplify(self._jumped)
        if z3.is_false(jumped):
            eip = self.next_eip
        elif z3.is_true(jumped):
            eip = self.s.eip
        else:
            eip = z3.If(jumped, self.s.eip, self.next_eip)
        post = self.s.replace(eip=eip)
        effects = tuple(sorted(self._effects | {"eip"}))
        return Outcome(self.pre, tuple(self._checks), post, tuple(self._assumptions),
                       tuple(self._loads), tuple(self._stores), effects,
                       tuple(self._segmented) if self.recording else None,
                       frozenset(self.consulted))


@dataclass(frozen=True)
class Form:
    """One instruction form: encoding, canonical bytes, Capstone's asm text, citation, semantics."""

    name: str
    enc: Encoding
    enc_text: str
    bytes: bytes
    asm: str
    cite: str
    theme: str
    semantics: Callable[[Exec], None]
    decoder: Callable[[bytes], object] | None = None   # operands of an instance, if not ``enc``'s
    code: str = ""                                      # the decoder's name for it (iced-x86 Code)
    undefined_flags: int = 0    # EFLAGS bits the SDM leaves undefined (the form writes a fixed value)
    flow: str = ""              # a transfer that loads CS through a descriptor (``FLOWS``)

    @property
    def far(self) -> bool:
        """A far CALL, JMP or return (RETF, IRET): CS from a selector (SDM Vol. 1 6.3-6.4)."""
        return self.flow.startswith("far_")

    @property
    def mnemonic(self) -> str:
        """The instruction's mnemonic, without a REP/REPE/REPNE prefix word ("rep insb" is INSB)."""
        words = self.asm.split()
        while len(words) > 1 and words[0] in ("rep", "repe", "repne"):
            words = words[1:]
        return words[0].upper() if words else ""

    def decode(self, code: bytes | None = None) -> Decoded:
        raw = self.bytes if code is None else code
        if self.decoder is not None:
            return self.decoder(raw)
        return decode(self.enc, raw)

    def run(self, s: State, code: bytes | None = None, features: frozenset[str] = frozenset(),
            record: bool = False, vm=None) -> Outcome:
        """Execute on ``s`` (symbolic or concrete); ``code`` is a site's bytes (default: canonical);
        ``record`` notes the segment-relative accesses for ``Outcome.in_segments``; ``vm`` the
        controls of VMX non-root operation or an SVM guest (None: bare hardware)."""
        d = self.decode(code)
        x = Exec(self, s, d, frozenset(features), record, vm)
        if vm is not None:
            from .checks import event_windows
            event_windows(x)        # at the boundary: before the instruction's own checks
        if d.lock and not (self.enc.lockable and d.is_mem):
            # Decoded before anything executes: the one generic LOCK rule (SDM Vol. 2A LOCK;
            # Vol. 3A 8.1.2.2).  The instance is #UD in every state; nothing else happens.
            x.fault(UD, None, "LOCK prefix on an instruction that is not lockable or has no "
                              "memory destination")
        else:
            self.semantics(x)
        return x.finish()


    def execute(self, values: dict, code: bytes | None = None,
                features: frozenset[str] = frozenset(), vm=None):
        """Run on a concrete state (plain integers, see ``state.concrete``): Fault, Exit or Next."""
        out = self.run(st.concrete(values), code, features, vm=vm)
        solver = z3.Solver()
        solver.check()
        return out.concrete(solver.model())


REGISTRY: dict[str, Form] = {}


# Far CALL, JMP, RET/IRET (SDM Vol. 1 6.3-6.4) and INT n/INT3/INTO (6.5): CS from a descriptor.
FLOWS = ("", "far_call", "far_jump", "far_return", "interrupt")


def form(name: str, *, enc: str, bytes: str, asm: str, cite: str, theme: str = "",
         undefined_flags: int = 0, flow: str = "", code: str = ""):
    """Register the decorated semantics as the one definition of instruction form ``name``;
    ``undefined_flags`` and ``flow`` are facts of the instruction that emulators' cross-checks
    read (which flags to mask, which transfers load CS through a descriptor).

    ``code`` names the iced-x86 Code of bytes the decoder takes only with a vendor option (Cyrix,
    ...); tools/footprints.py checks that the bytes decode to it with that option."""

    def deco(fn: Callable[[Exec], None]) -> Callable[[Exec], None]:
        if name in REGISTRY:
            raise ModelError(f"form {name!r} defined twice")
        if flow not in FLOWS:
            raise ModelError(f"form {name!r}: flow {flow!r} is not one of {FLOWS}")
        e = Encoding.parse(enc)
        raw = builtins.bytes.fromhex(bytes)
        try:
            d = decode(e, raw)
        except EncodingError as err:
            raise ModelError(f"form {name!r}: canonical bytes do not match {enc!r}: {err}") from None
        if d.length != len(raw):
            raise ModelError(f"form {name!r}: canonical bytes have {len(raw)} bytes, decode {d.length}")
        th = theme or fn.__module__.rsplit(".", 1)[-1]
        REGISTRY[name] = Form(name, e, enc, raw, asm, cite, th, fn, undefined_flags=undefined_flags,
                              flow=flow, code=code)
        return fn

    return deco
