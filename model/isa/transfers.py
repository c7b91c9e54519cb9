"""Far transfers, software interrupts and fast system calls (SDM Vol. 2A/2B; Vol. 3A 5.8, 6.12).

Far CALL/JMP, RETF, INT n/INT3/INTO, IRET/IRETD, SYSENTER and SYSEXIT in protected mode, with
32- and 16-bit operand size.  The size of a frame is the operand size for a direct transfer and a
return, and the gate's size through a gate (32 bits: 16-bit gates are assumed away, below); a
16-bit transfer truncates EIP to 16 bits.  They are the protection-system references of Robin and Irvine: gate and segment
DPLs are checked against CPL and RPL, a call gate or an interrupt moves to an inner ring on the
stack the TSS names, and a return to an outer ring reloads SS:ESP and drops data segments the outer
ring may not use.  IRETD restores IF only when CPL <= IOPL and IOPL only at CPL 0, dropping any
other change without a fault.  Software interrupt delivery is an ordinary transfer into the
handler; only the failed checks are faults (with EXT = 0: the event is the instruction itself).

What is assumed away (each listed with the verdicts):

* task switches: a far CALL/JMP to a task gate or TSS that passes its own DPL and present checks,
  INT n through a task gate, IRETD with EFLAGS.NT = 1 (SDM Vol. 3A 7.3);
* 16-bit call, interrupt and trap gates for far CALL and INT n (a frame of words whatever the
  operand size); far JMP through a 16-bit call gate is modelled (it only truncates the offset).
  Modelling the word frames beside the doubleword ones doubled the stores every query of the
  32-bit forms reasons about (2-4x the solver time) for gates no 32-bit system uses;
* call gates with a non-zero parameter count on an inter-privilege far CALL (the parameter copy);
* IRETD to virtual-8086 mode (popped VM = 1 at CPL 0).

The stack-room checks (#SS(0) / #SS(selector) for a stack that cannot hold the frame) are the
profile's "memory accesses are inside their segments" assumption; the target EIP is still checked
against the new code segment's limit (#GP(0)), which is a check of the transfer, not of an access.
The TSS is 32-bit and EFLAGS.VM = 0 (the profile's well-formed states: a busy 32-bit TSS in TR, no
virtual-8086 mode).  A selector
pushed as a doubleword is zero-extended: the SDM leaves the pad bits of CALL and interrupt frames
unspecified, and QEMU and Bochs write zero.
"""

import z3

from .. import checks
from .. import state as st
from ..checks import (Descriptor, descriptor, gate_descriptor, is_null, load_cache, load_null, rpl,
                      sel_code, set_accessed)
from ..form import form
from ..outcome import BP, GP, NP, OF, SS, TS, UD

CALL_GATE16, TASK_GATE, INT_GATE16, TRAP_GATE16 = 0x4, 0x5, 0x6, 0x7
CALL_GATE32, INT_GATE32, TRAP_GATE32 = 0xC, 0xE, 0xF
TSS_TYPES = (0x1, 0x3, 0x9, 0xB)          # 16/32-bit TSS, available or busy
TSS_BUSY = (0x3, 0xB)

# The flags an interrupt or trap gate clears on entry (SDM Vol. 3A 6.12.1, flag usage by the
# handler procedure); an interrupt gate clears IF as well.
_ENTRY_CLEARS = (1 << st.TF) | (1 << st.NT) | (1 << st.RF) | (1 << st.VM)


def _either(cond, a: Descriptor, b: Descriptor) -> Descriptor:
    """``a`` where ``cond`` holds, else ``b``: one target descriptor for direct and gate paths, so
    the CS load is written once instead of once per path."""
    return Descriptor(z3.If(cond, a.lo, b.lo), z3.If(cond, a.hi, b.hi),
                      z3.If(cond, a.in_limit, b.in_limit), z3.If(cond, a.addr, b.addr))


def _cpl_sel(sel, cpl):
    """``sel`` with its RPL replaced by ``cpl``: CS(RPL) <- CPL after every far transfer."""
    return (sel & 0xFFFC) | z3.ZeroExt(14, cpl)


def _dword(sel):
    return z3.ZeroExt(16, sel)


def _sized(v, n: int):
    """``v`` as an ``n``-byte stack item: selectors zero-extended, (E)IP/(E)SP/FLAGS truncated."""
    w = 8 * n
    return z3.ZeroExt(w - v.size(), v) if v.size() < w else z3.Extract(w - 1, 0, v)


def _push_frame(x, values, wide) -> None:
    """Push ``values`` in order as doublewords where ``wide`` holds, else as words: the frame size
    of a far transfer is the operand size, or through a gate the gate's size (SDM Vol. 2A CALL
    and INT n, Operation: "IF CallGateSize = 32 ... ELSE (* CallGateSize = 16 *)")."""
    def push(n):
        for v in values:
            x.push(_sized(v, n), n)
    # Only a constant condition picks one size: a state-dependent one (the gate's type) keeps
    # both, so every run lists the same accesses whether its state is symbolic or concrete.
    w = z3.BoolVal(wide) if isinstance(wide, bool) else wide
    if z3.is_true(w):
        push(4)
    elif z3.is_false(w):
        push(2)
    else:
        with x.when(w):
            push(4)
        with x.when(z3.Not(w)):
            push(2)


def _ip16(v):
    return v & 0xFFFF


# --- shared protection steps ---------------------------------------------------------------------

def _tss_min_limit(d: Descriptor):
    """The least limit of a TSS: 67H for a 32-bit TSS, 2BH for a 16-bit one (SDM Vol. 3A 7.3,
    Table 7-1)."""
    return z3.If(d.system_type(0x1, 0x3), z3.BitVecVal(0x2B, 32), z3.BitVecVal(0x67, 32))


def _new_tss(x, tss_sel, what: str, *, fault_sel: int, busy: bool, ext: int = 0,
             d: Descriptor | None = None) -> z3.BoolRef:
    """The checks of the new TSS a task switch makes before it can VM-exit (SDM Vol. 3C 25.4.2,
    steps 2-4): its selector in the GDT (TI = 0, index within the limit: TSS descriptors live
    only there, Vol. 3A 7.2.2), the descriptor a TSS - available, or busy for IRET's return -
    then present, then a limit of at least 67H (2BH); Vol. 2A CALL, JMP, INT n and IRET,
    Operation, give the faults: ``fault_sel`` (#GP for CALL/JMP/INT, #TS for IRET) for the
    selector and type, #NP(selector) when not present, #TS(selector) for the limit.  ``d``: the
    descriptor already read (a CALL/JMP straight to a TSS).  Whether all pass."""
    code = _with_ext(sel_code(tss_sel), ext)
    in_gdt = z3.Extract(2, 2, tss_sel) == 0
    x.require(in_gdt, fault_sel, code, f"{what}: TSS selector not in the GDT")
    t = d if d is not None else descriptor(x, tss_sel)
    x.require(t.in_limit, fault_sel, code, f"{what}: TSS selector outside the GDT limit")
    kind = t.system_type(*TSS_BUSY) if busy else t.system_type(0x1, 0x9)
    x.require(kind, fault_sel, code,
              f"{what}: {'not a busy TSS' if busy else 'not an available TSS'}")
    x.require(t.present, NP, code, f"{what}: TSS not present")
    roomy = z3.UGE(t.limit, _tss_min_limit(t))
    x.require(roomy, TS, code, f"{what}: TSS limit below 67H (2BH for a 16-bit TSS)")
    return z3.And(in_gdt, t.in_limit, kind, t.present, roomy)


def _far_target(x, sel, what: str) -> Descriptor:
    """The descriptor a far CALL/JMP names, with the checks every kind of target shares, and the
    task-gate/TSS branch up to the task switch (SDM Vol. 2A CALL and JMP, Operation)."""
    x.require(z3.Not(is_null(sel)), GP, 0, f"{what}: null selector")
    d = descriptor(x, sel)
    code = sel_code(sel)
    x.require(d.in_limit, GP, code, f"{what}: selector index outside the descriptor table")
    task = d.system_type(TASK_GATE, *TSS_TYPES)
    x.require(z3.Or(d.is_code, d.system_type(CALL_GATE16, CALL_GATE32), task), GP, code,
              f"{what}: not a code segment, call gate, task gate or TSS")
    with x.when(task):
        dpl_ok = z3.And(z3.UGE(d.dpl, x.cpl), z3.UGE(d.dpl, rpl(sel)))
        x.require(dpl_ok, GP, code, f"{what}: task gate or TSS DPL below CPL or RPL")
        idle = z3.Not(d.system_type(*TSS_BUSY))
        x.require(idle, GP, code, f"{what}: TSS is busy")
        x.require(d.present, NP, code, f"{what}: task gate or TSS not present")
        passed = z3.And(dpl_ok, idle, d.present)
        # Task switches exit in non-root operation (SDM Vol. 3C 25.4.2), after the new TSS's
        # checks, and under the SVM task-switch intercept (APM Vol. 2 15.14), here before them;
        # only the switch itself is out of the model.  No term is built on bare hardware (the
        # witnesses stay as they were): there the switch is assumed away from the gate on.
        if x.vm is not None:
            checks.vmexit(x, svm="task_switch", cond=passed, what=f"{what} to a task gate or TSS")
            gate = d.system_type(TASK_GATE)
            with x.when(z3.And(passed, gate)):
                via_gate = _new_tss(x, d.gate_selector, what, fault_sel=GP, busy=False)
            with x.when(z3.And(passed, z3.Not(gate))):
                direct = _new_tss(x, sel, what, fault_sel=GP, busy=False, d=d)
            passed = z3.And(passed, z3.If(gate, via_gate, direct))
            checks.vmexit(x, vmx=(None, "task_switch"), cond=passed,
                          what=f"{what} to a task gate or TSS")
        x.assume(z3.Not(passed),
                 "far CALL/JMP to a task gate or TSS switches tasks: task switches are not modelled")
    return d


def _direct_code_checks(x, sel, d: Descriptor, what: str) -> None:
    """CALL/JMP straight to a code segment: conforming needs DPL <= CPL, nonconforming RPL <= CPL
    and DPL = CPL; the CPL never changes (SDM Vol. 3A 5.8.1, 5.8.1.1)."""
    code = sel_code(sel)
    cpl = x.cpl
    ok = z3.If(d.conforming, z3.ULE(d.dpl, cpl), z3.And(z3.ULE(rpl(sel), cpl), d.dpl == cpl))
    x.require(ok, GP, code, f"{what}: code segment DPL/RPL do not permit a direct transfer")
    x.require(d.present, NP, code, f"{what}: code segment not present")


def _gate_code(x, sel, gate: Descriptor, what: str):
    """A call gate's own checks (DPL >= CPL and >= RPL, present) and the code segment it names,
    before the CALL- or JMP-specific DPL rule (SDM Vol. 3A 5.8.4)."""
    code = sel_code(sel)
    x.require(z3.And(z3.UGE(gate.dpl, x.cpl), z3.UGE(gate.dpl, rpl(sel))), GP, code,
              f"{what}: call gate DPL below CPL or RPL")
    x.require(gate.present, NP, code, f"{what}: call gate not present")
    csel = gate.gate_selector
    x.require(z3.Not(is_null(csel)), GP, 0, f"{what}: call gate names a null code selector")
    cd = descriptor(x, csel)
    x.require(cd.in_limit, GP, sel_code(csel), f"{what}: gate code selector outside its table")
    return csel, cd


def _with_ext(code, ext: int):
    """An error code with the EXT bit (bit 0) of an external event (SDM Vol. 3A 6.13)."""
    return code | ext if ext else code


def _tss_stack(x, dpl, ext: int = 0):
    """SS:ESP for privilege ``dpl`` from the 32-bit TSS (ESPn at 4+8n, SSn at 8+8n) and the checks
    of the stack switch: #TS for a bad selector or descriptor, #SS when it is not present
    (SDM Vol. 3A 5.8.5, 6.12.1; Vol. 2A CALL and INT n, Operation).  ``ext`` is the EXT bit of
    the error codes: 1 while an event external to the program is delivered (Vol. 3A 6.13)."""
    at = z3.ZeroExt(30, dpl) * 8 + 4
    x.require(z3.ULE(at + 5, x.tr_limit), TS, _with_ext(sel_code(x.tr), ext),
              "TSS limit does not cover the stack pointer for the new privilege level")
    esp = x.load(x.tr_base + at, 4)
    ss = x.load(x.tr_base + at + 4, 2)
    x.require(z3.Not(is_null(ss)), TS, ext, "TSS names a null stack selector")
    sd = descriptor(x, ss)
    code = _with_ext(sel_code(ss), ext)
    x.require(sd.in_limit, TS, code, "TSS stack selector outside its descriptor table")
    x.require(z3.And(rpl(ss) == dpl, sd.dpl == dpl, sd.writable), TS, code,
              "TSS stack segment is not writable data with RPL = DPL = new CPL")
    x.require(sd.present, SS, code, "TSS stack segment not present")
    return ss, esp, sd


def _switch_stack(x, ss, esp, sd: Descriptor) -> None:
    """Load SS (accessed bit set) and ESP of the stack a transfer moves to.

    The frames are pushed and popped with 32-bit stack addressing; a new stack segment with
    B = 0 would make them use SP instead (StackAddressSize = 16 in SDM Vol. 2A CALL, INT n,
    RET and IRET), which the model does not describe, so it is assumed away (found by the
    counterexample replay: a call gate to a 16-bit ring-0 stack)."""
    x.assume(z3.Extract(22, 22, sd.hi) == 1,
             "a stack switch to a 16-bit stack segment (B = 0) is not modelled")
    set_accessed(x, sd)
    load_cache(x, "ss", ss, sd)
    x.write("esp", esp)


def _enter(x, sel, d: Descriptor, eip, cpl) -> None:
    """Load CS (accessed bit set, RPL = the new CPL), the CPL and EIP (SDM Vol. 3A 3.4.5.1)."""
    set_accessed(x, d)
    load_cache(x, "cs", _cpl_sel(sel, cpl), d)
    x.write("cpl", cpl)
    x.jump(eip)


def _return_code(x, sel, what: str) -> Descriptor:
    """The code segment a RETF/IRETD returns to: RPL >= CPL, conforming DPL <= RPL, nonconforming
    DPL = RPL, present (SDM Vol. 2A RET and Vol. 2A IRET, Operation)."""
    x.require(z3.Not(is_null(sel)), GP, 0, f"{what}: null return code selector")
    d = descriptor(x, sel)
    code = sel_code(sel)
    r = rpl(sel)
    x.require(d.in_limit, GP, code, f"{what}: return code selector outside its table")
    x.require(d.is_code, GP, code, f"{what}: return selector does not name a code segment")
    x.require(z3.UGE(r, x.cpl), GP, code, f"{what}: return to an inner ring (RPL < CPL)")
    x.require(z3.If(d.conforming, z3.ULE(d.dpl, r), d.dpl == r), GP, code,
              f"{what}: return code segment DPL does not match the RPL")
    x.require(d.present, NP, code, f"{what}: return code segment not present")
    return d


def _return_stack(x, ss, r, what: str) -> Descriptor:
    """The stack of an outer-ring return: RPL = DPL = the new CPL, writable data, present."""
    x.require(z3.Not(is_null(ss)), GP, 0, f"{what}: null return stack selector")
    sd = descriptor(x, ss)
    code = sel_code(ss)
    x.require(sd.in_limit, GP, code, f"{what}: return stack selector outside its table")
    x.require(z3.And(rpl(ss) == r, sd.dpl == r, sd.writable), GP, code,
              f"{what}: return stack is not writable data with RPL = DPL = the new CPL")
    x.require(sd.present, SS, code, f"{what}: return stack segment not present")
    return sd


def _drop_inner_segments(x, cpl) -> None:
    """After a return to an outer ring, ES/DS/FS/GS holding a null selector, or data or
    nonconforming code of DPL < the new CPL, become null: the outer ring must not keep access
    through them (SDM Vol. 2A RET and IRET, Operation; Vol. 3A 5.8.6)."""
    for r in ("es", "ds", "fs", "gs"):
        attr = x.read(f"{r}_attr")
        conforming_code = z3.And(z3.Extract(4, 4, attr) == 1, z3.Extract(3, 2, attr) == 3)
        stale = z3.Or(is_null(x.read(r)),
                      z3.And(z3.ULT(z3.Extract(6, 5, attr), cpl), z3.Not(conforming_code)))
        with x.when(stale):
            load_null(x, r, 0)


# --- far CALL ------------------------------------------------------------------------------------

def _far_call(x, sel, off, size: int = 4) -> None:
    """CALL ptr16:32 / m16:32 (``size`` 4) or ptr16:16 / m16:16 (2) in protected mode (SDM Vol. 2A
    CALL, Operation; Vol. 3A 5.8.4-5.8.5).  A direct call pushes CS and the return (E)IP with the
    operand size and, with 16 bits, EIP := offset AND FFFFH; a call through a (32-bit) call gate
    pushes doublewords whatever the operand size ("IF CallGateSize = 32")."""
    what = "far CALL"
    cpl = x.cpl
    ret_cs, ret_eip, old_ss, old_esp = x.cs, x.next_eip, x.ss, x.esp
    d = _far_target(x, sel, what)
    with x.when(z3.And(z3.Not(is_null(sel)), d.in_limit)):
        x.assume(z3.Not(d.system_type(CALL_GATE16)),
                 "far CALL through a 16-bit call gate (16-bit return frame) is not modelled")
    gate = d.system_type(CALL_GATE32)
    with x.when(d.is_code):
        _direct_code_checks(x, sel, d, what)
    with x.when(gate):
        csel, cd = _gate_code(x, sel, d, what)
        ccode = sel_code(csel)
        x.require(z3.And(cd.is_code, z3.ULE(cd.dpl, cpl)), GP, ccode,
                  f"{what}: call gate target is not code of DPL <= CPL")
        x.require(cd.present, NP, ccode, f"{what}: call gate target not present")
    inner = z3.And(gate, z3.Not(cd.conforming), z3.ULT(cd.dpl, cpl))
    with x.when(inner):
        x.assume(d.gate_params == 0,
                 "inter-privilege far CALL through a call gate with a parameter count: "
                 "copying parameters between stacks is not modelled")
        new_ss, new_esp, sd = _tss_stack(x, cd.dpl)
    target = _either(gate, cd, d)
    eip = z3.If(gate, d.gate_offset, off if size == 4 else _ip16(off))
    x.require(z3.ULE(eip, target.limit), GP, 0, f"{what}: target offset beyond the code segment limit")
    wide = True if size == 4 else gate       # a 32-bit gate pushes doublewords
    with x.when(inner):
        _switch_stack(x, new_ss, new_esp, sd)
        _push_frame(x, (old_ss, old_esp), wide)
    _push_frame(x, (ret_cs, ret_eip), wide)
    _enter(x, z3.If(gate, csel, sel), target, eip, z3.If(inner, cd.dpl, cpl))


_CALL = "SDM Vol. 2A CALL; Vol. 3A 5.8.4-5.8.5"


@form("call_far_ptr", flow="far_call", enc="o32 9A cp", bytes="9a785634123412", asm="lcall 0x1234, 0x12345678",
      cite=_CALL)
def call_far_ptr(x):
    _far_call(x, z3.BitVecVal(x.d.imm2, 16), z3.BitVecVal(x.d.imm, 32))


@form("call_far_m", flow="far_call", enc="o32 FF /3 mem", bytes="ff18", asm="call ptr [eax]", cite=_CALL)
def call_far_m(x):
    _far_call(x, x.seg_load(x.default_seg(), x.ea(4), 2), x.seg_load(x.default_seg(), x.ea(), 4))


@form("call_far_ptr16", flow="far_call", enc="o16 9A cd", bytes="669a78563412", asm="lcall 0x1234, 0x5678",
      cite=_CALL)
def call_far_ptr16(x):
    """CALL ptr16:16: the four immediate bytes are the offset word, then the selector."""
    _far_call(x, z3.BitVecVal(x.d.imm >> 16, 16), z3.BitVecVal(x.d.imm & 0xFFFF, 32), 2)


@form("call_far_m16", flow="far_call", enc="o16 FF /3 mem", bytes="66ff18", asm="lcall [eax]", cite=_CALL)
def call_far_m16(x):
    _far_call(x, x.seg_load(x.default_seg(), x.ea(2), 2), z3.ZeroExt(16, x.seg_load(x.default_seg(), x.ea(), 2)), 2)


# --- far JMP -------------------------------------------------------------------------------------

def _far_jmp(x, sel, off, size: int = 4) -> None:
    """JMP ptr16:32 / m16:32 (or ptr16:16 / m16:16: EIP := offset AND FFFFH) in protected mode:
    through a call gate the CPL never changes, so the target code must be conforming with
    DPL <= CPL or nonconforming with DPL = CPL, and the gate's size sets the offset's
    (SDM Vol. 2A JMP, Operation; Vol. 3A 5.8.4)."""
    what = "far JMP"
    cpl = x.cpl
    d = _far_target(x, sel, what)
    gate = d.system_type(CALL_GATE16, CALL_GATE32)
    with x.when(d.is_code):
        _direct_code_checks(x, sel, d, what)
    with x.when(gate):
        csel, cd = _gate_code(x, sel, d, what)
        ccode = sel_code(csel)
        same_ring = z3.If(cd.conforming, z3.ULE(cd.dpl, cpl), cd.dpl == cpl)
        x.require(z3.And(cd.is_code, same_ring), GP, ccode,
                  f"{what}: call gate target is not code a jump may reach without a ring change")
        x.require(cd.present, NP, ccode, f"{what}: call gate target not present")
    target = _either(gate, cd, d)
    gate_eip = z3.If(d.type == CALL_GATE16, _ip16(d.gate_offset), d.gate_offset)
    eip = z3.If(gate, gate_eip, off if size == 4 else _ip16(off))
    x.require(z3.ULE(eip, target.limit), GP, 0, f"{what}: target offset beyond the code segment limit")
    _enter(x, z3.If(gate, csel, sel), target, eip, cpl)


@form("jmp_far_ptr", flow="far_jump", enc="o32 EA cp", bytes="ea785634123412", asm="ljmp 0x1234:0x12345678",
      cite="SDM Vol. 2A JMP; Vol. 3A 5.8.4")
def jmp_far_ptr(x):
    _far_jmp(x, z3.BitVecVal(x.d.imm2, 16), z3.BitVecVal(x.d.imm, 32))


@form("jmp_far_m", flow="far_jump", enc="o32 FF /5 mem", bytes="ff28", asm="jmp ptr [eax]",
      cite="SDM Vol. 2A JMP; Vol. 3A 5.8.4")
def jmp_far_m(x):
    _far_jmp(x, x.seg_load(x.default_seg(), x.ea(4), 2), x.seg_load(x.default_seg(), x.ea(), 4))


@form("jmp_far_ptr16", flow="far_jump", enc="o16 EA cd", bytes="66ea78563412", asm="ljmp 0x1234:0x5678",
      cite="SDM Vol. 2A JMP; Vol. 3A 5.8.4")
def jmp_far_ptr16(x):
    """JMP ptr16:16 (tboot's 16-bit far jumps): offset word, then selector."""
    _far_jmp(x, z3.BitVecVal(x.d.imm >> 16, 16), z3.BitVecVal(x.d.imm & 0xFFFF, 32), 2)


@form("jmp_far_m16", flow="far_jump", enc="o16 FF /5 mem", bytes="66ff28", asm="ljmp [eax]",
      cite="SDM Vol. 2A JMP; Vol. 3A 5.8.4")
def jmp_far_m16(x):
    _far_jmp(x, x.seg_load(x.default_seg(), x.ea(2), 2), z3.ZeroExt(16, x.seg_load(x.default_seg(), x.ea(), 2)), 2)


# --- RETF ----------------------------------------------------------------------------------------

def _far_return(x, imm: int, size: int = 4) -> None:
    """RETF [imm16] in protected mode: (E)IP and CS from the stack; to an outer ring also (E)SP
    and SS (read above the ``imm`` parameter bytes), ``imm`` released on both stacks, and segment
    registers the outer ring may not use nulled (SDM Vol. 2A RET, Operation; Vol. 3A 5.8.6).
    With 16-bit operand size every item is a word and EIP, ESP are the popped words zero-extended
    (the new stack is 32-bit; Bochs ``return_protected``)."""
    what = "RETF"
    w = size
    cpl, esp, base = x.cpl, x.esp, x.ss_base

    def item(at, n=w):
        v = x.seg_load("ss", base + esp + at, n)
        return z3.ZeroExt(32 - v.size(), v) if n == w and v.size() < 32 else v

    eip = item(0)
    sel = x.seg_load("ss", base + esp + w, 2)
    d = _return_code(x, sel, what)
    r = rpl(sel)
    outer = z3.UGT(r, cpl)
    with x.when(outer):
        new_esp = item(2 * w + imm)
        new_ss = x.seg_load("ss", base + esp + 3 * w + imm, 2)
        sd = _return_stack(x, new_ss, r, what)
    x.require(z3.ULE(eip, d.limit), GP, 0, f"{what}: return offset beyond the code segment limit")
    _enter(x, sel, d, eip, r)
    x.write("esp", esp + 2 * w + imm)
    with x.when(outer):
        _switch_stack(x, new_ss, new_esp + imm, sd)
        _drop_inner_segments(x, r)


_RET = "SDM Vol. 2A RET; Vol. 3A 5.8.6"


@form("retf", flow="far_return", enc="o32 CB", bytes="cb", asm="retf", cite=_RET)
def retf(x):
    _far_return(x, 0)


@form("retf_imm", flow="far_return", enc="o32 CA iw", bytes="ca0800", asm="retf 8", cite=_RET)
def retf_imm(x):
    _far_return(x, x.d.imm)


@form("retf_o16", flow="far_return", enc="o16 CB", bytes="66cb", asm="retf", cite=_RET)
def retf_o16(x):
    _far_return(x, 0, 2)


@form("retf_imm_o16", flow="far_return", enc="o16 CA iw", bytes="66ca0800", asm="retf 8", cite=_RET)
def retf_imm_o16(x):
    _far_return(x, x.d.imm, 2)


# --- INT n, INT3, INTO ---------------------------------------------------------------------------

def deliver(x, vector: int, *, software: bool = True, error_code=None) -> None:
    """Deliver ``vector`` through a 32-bit interrupt or trap gate of the IDT (SDM Vol. 3A 6.12.1;
    Vol. 2A INT n/INTO/INT3, Operation).  The one definition of event delivery, for every source:

    * ``software`` (INT n, INT3, INTO): the gate's DPL is checked against CPL, because the event
      is an instruction; the return address is the next instruction; delivery faults carry
      EXT = 0 (the IDT error code is vector*8+2);
    * otherwise an event external to the program (Vol. 3A 6.12.1.1, 6.13): a maskable interrupt
      from the INTR pin, or an exception.  The gate's DPL is ignored, the return address is the
      current EIP (the state is at the instruction boundary, or at the faulting instruction),
      and delivery faults carry EXT = 1.  An exception with an error code (``error_code``, Vol.
      3A 6.13 and Table 6-1) pushes it after the return address; an interrupt pushes none.

    Whether a maskable interrupt may be delivered at all (EFLAGS.IF, Vol. 3A 6.8.1) is the
    caller's question: ``pgvirt.model.events`` asks it before delivering one."""
    ext = 0 if software else 1
    cpl = x.cpl
    ret_cs, ret_eip, old_ss, old_esp, flags = x.cs, x.next_eip, x.ss, x.esp, x.eflags()
    vcode = vector * 8 + 2 + ext
    g = gate_descriptor(x, vector)
    x.require(g.in_limit, GP, vcode, "vector beyond the IDT limit")
    kinds = g.system_type(TASK_GATE, INT_GATE16, TRAP_GATE16, INT_GATE32, TRAP_GATE32)
    x.require(kinds, GP, vcode, "IDT entry is not an interrupt, trap or task gate")
    dpl_ok = z3.UGE(g.dpl, cpl) if software else z3.BoolVal(True)
    if software:
        x.require(dpl_ok, GP, vcode, "software interrupt through a gate of DPL < CPL")
    x.require(g.present, NP, vcode, "IDT gate not present")
    what = "INT n" if software else "an interrupt or exception"
    gate_ok = z3.And(g.in_limit, kinds, dpl_ok, g.present)
    if x.vm is not None:      # as for far CALL/JMP (``_far_target``): the new TSS's checks first
        task = z3.And(gate_ok, g.system_type(TASK_GATE))
        checks.vmexit(x, svm="task_switch", cond=task, what=f"{what} through a task gate")
        with x.when(task):
            switch_ok = _new_tss(x, g.gate_selector, what, fault_sel=GP, busy=False, ext=ext)
        checks.vmexit(x, vmx=(None, "task_switch"), cond=z3.And(task, switch_ok),
                      what=f"{what} through a task gate")
        gate_ok = z3.And(gate_ok, z3.Or(z3.Not(g.system_type(TASK_GATE)), switch_ok))
    x.assume(z3.Implies(gate_ok, g.system_type(INT_GATE32, TRAP_GATE32)),
             f"{what} through a task gate (task switch) or a 16-bit interrupt/trap gate is not modelled")
    csel = g.gate_selector
    x.require(z3.Not(is_null(csel)), GP, ext, "gate names a null code selector")
    cd = descriptor(x, csel)
    ccode = _with_ext(sel_code(csel), ext)
    x.require(cd.in_limit, GP, ccode, "gate code selector outside its table")
    x.require(z3.And(cd.is_code, z3.ULE(cd.dpl, cpl)), GP, ccode,
              "gate target is not code of DPL <= CPL")
    x.require(cd.present, NP, ccode, "gate target code segment not present")
    # A nonconforming handler of DPL < CPL runs on its own ring's stack; conforming code, or
    # DPL = CPL, stays on the current stack and ring (DPL > CPL faulted above).
    inner = z3.And(z3.Not(cd.conforming), z3.ULT(cd.dpl, cpl))
    with x.when(inner):
        new_ss, new_esp, sd = _tss_stack(x, cd.dpl, ext)
    eip = g.gate_offset
    x.require(z3.ULE(eip, cd.limit), GP, ext, "handler offset beyond the code segment limit")
    with x.when(inner):
        _switch_stack(x, new_ss, new_esp, sd)
        x.push(_dword(old_ss))
        x.push(old_esp)
    x.push(flags)
    x.push(_dword(ret_cs))
    x.push(ret_eip)
    if error_code is not None:
        x.push(error_code)
    clears = z3.If(g.type == INT_GATE32, z3.BitVecVal(_ENTRY_CLEARS | (1 << st.IF), 32),
                   z3.BitVecVal(_ENTRY_CLEARS, 32))
    x.write("sysflags", x.sysflags & ~clears)
    _enter(x, csel, cd, eip, z3.If(inner, cd.dpl, cpl))


@form("int_imm", flow="interrupt", enc="CD ib", bytes="cd80", asm="int 0x80",
      cite="SDM Vol. 2A INT n/INTO/INT3/INT1; Vol. 3A 6.12.1")
def int_imm(x):
    checks.vmexit(x, svm="intn", what="INT n")
    deliver(x, x.d.imm)


@form("int3", flow="interrupt", enc="CC", bytes="cc", asm="int3", cite="SDM Vol. 2A INT n/INTO/INT3/INT1; Vol. 3A 6.12.1")
def int3(x):
    deliver(x, BP)


@form("into", flow="interrupt", enc="CE", bytes="ce", asm="into", cite="SDM Vol. 2A INT n/INTO/INT3/INT1; Vol. 3A 6.12.1")
def into(x):
    """INTO raises #OF (vector 4) as a software interrupt only when OF = 1; otherwise it does nothing."""
    with x.when(x.flag(st.OF)):
        deliver(x, OF)


# --- IRET, IRETD -----------------------------------------------------------------------------------

def _iret_flags(x, popped, cpl, size: int) -> None:
    """EFLAGS from an IRET frame, judged by the CPL and IOPL before the return: the arithmetic
    flags, TF, NT, RF, AC and ID always; IF only when CPL <= IOPL; IOPL, VIF and VIP only at CPL 0.
    With 16-bit operand size only FLAGS[15:0] is loaded.  VM never changes here (a return to
    virtual-8086 mode is assumed away).  Denied changes are dropped without a fault (SDM Vol. 2A
    IRET, Operation)."""
    always = (1 << st.TF) | (1 << st.NT) | (1 << st.RF) | (1 << st.AC) | (1 << st.ID)
    at0 = (3 << st.IOPL_LO) | (1 << st.VIF) | (1 << st.VIP)
    low = 0xFFFFFFFF if size == 4 else 0xFFFF
    zero = z3.BitVecVal(0, 32)
    mask = (z3.BitVecVal(always & low, 32)
            | z3.If(z3.ULE(cpl, st.iopl(x.s)), z3.BitVecVal(1 << st.IF, 32), zero)
            | z3.If(cpl == 0, z3.BitVecVal(at0 & low, 32), zero))
    x.write("flags", popped & st.USER_FLAGS_MASK)      # the arithmetic flags and DF: bits 11:0
    x.write("sysflags", (x.sysflags & ~mask) | (popped & mask))


def _iret(x, size: int) -> None:
    """IRET/IRETD in protected mode: same-ring return ((E)IP, CS, (E)FLAGS) or return to an outer
    ring (also (E)SP, SS; segment registers the outer ring may not use are nulled) (SDM Vol. 2A
    IRET).  With 16-bit operand size the frame is of words, EIP and ESP the popped words
    zero-extended (the stacks are 32-bit; Bochs ``iret_protected``)."""
    what = "IRETD" if size == 4 else "IRET"
    checks.vmexit(x, svm="iret", what=what)
    nested = st.bit(x.sysflags, st.NT)
    switch = nested
    if x.vm is not None:      # the new TSS's checks before the VMX exit (SDM Vol. 3C 25.4.2)
        checks.vmexit(x, svm="task_switch", cond=nested, what=f"{what} with EFLAGS.NT = 1")
        with x.when(nested):
            # the previous-task link, at offset 0 of the current TSS (Vol. 3A 7.2.1)
            link = x.load(x.tr_base, 2)
            switch = z3.And(nested, _new_tss(x, link, what, fault_sel=TS, busy=True))
        checks.vmexit(x, vmx=(None, "task_switch"), cond=switch, what=f"{what} with EFLAGS.NT = 1")
    x.assume(z3.Not(switch),
             f"{what} with EFLAGS.NT = 1 returns from a nested task: task switches are not modelled")
    w = size
    cpl, esp, base = x.cpl, x.esp, x.ss_base

    def item(at):
        v = x.seg_load("ss", base + esp + at, w)
        return v if w == 4 else z3.ZeroExt(16, v)

    eip = item(0)
    sel = x.seg_load("ss", base + esp + w, 2)
    popped = item(2 * w)
    x.assume(z3.Or(cpl != 0, z3.Not(st.bit(popped, st.VM))),
             f"{what} at CPL 0 with VM = 1 in the popped EFLAGS returns to virtual-8086 mode: not modelled")
    d = _return_code(x, sel, what)
    r = rpl(sel)
    outer = z3.UGT(r, cpl)
    with x.when(outer):
        new_esp = item(3 * w)
        new_ss = x.seg_load("ss", base + esp + 4 * w, 2)
        sd = _return_stack(x, new_ss, r, what)
    x.require(z3.ULE(eip, d.limit), GP, 0, f"{what}: return offset beyond the code segment limit")
    _iret_flags(x, popped, cpl, size)
    _enter(x, sel, d, eip, r)
    x.write("esp", esp + 3 * w)
    with x.when(outer):
        _switch_stack(x, new_ss, new_esp, sd)
        _drop_inner_segments(x, r)


@form("iretd", flow="far_return", enc="o32 CF", bytes="cf", asm="iretd", cite="SDM Vol. 2A IRET/IRETD; Vol. 3A 6.12.1")
def iretd(x):
    _iret(x, 4)


@form("iretw", flow="far_return", enc="o16 CF", bytes="66cf", asm="iret", cite="SDM Vol. 2A IRET/IRETD; Vol. 3A 6.12.1")
def iretw(x):
    _iret(x, 2)


# --- SYSENTER, SYSEXIT ---------------------------------------------------------------------------

# Flat 4-GByte segments as SYSENTER/SYSEXIT set the caches, whatever the GDT holds (SDM Vol. 2B):
# code type 1011b (execute/read, accessed), data type 0011b (read/write, accessed); S = P = D/B
# = G = 1; the DPL as given.  Attribute layout: descriptor bits 40-55 (see state.py).
def _flat_attr(type_: int, dpl: int) -> int:
    return type_ | (1 << 4) | (dpl << 5) | (1 << 7) | (1 << 14) | (1 << 15)


def _load_flat(x, sreg: str, sel, type_: int, dpl: int) -> None:
    x.write(sreg, sel)
    x.write(f"{sreg}_base", 0)
    x.write(f"{sreg}_limit", 0xFFFFFFFF)
    x.write(f"{sreg}_attr", _flat_attr(type_, dpl))


@form("sysenter", enc="0F 34", bytes="0f34", asm="sysenter", cite="SDM Vol. 2B SYSENTER")
def sysenter(x):
    """SYSENTER: ring 0 at IA32_SYSENTER_CS:EIP on IA32_SYSENTER_ESP, SS = CS + 8; VM, IF and RF
    cleared; nothing of the caller is saved (SDM Vol. 2B SYSENTER, Operation)."""
    x.require(st.bit(x.cr0, st.CR0_PE), GP, 0, "SYSENTER outside protected mode")
    cs = z3.Extract(15, 0, x.sysenter_cs)
    x.require(z3.Not(is_null(cs)), GP, 0, "IA32_SYSENTER_CS[15:2] = 0")
    x.write("sysflags", x.sysflags & ~((1 << st.VM) | (1 << st.IF) | (1 << st.RF)))
    x.write("esp", x.sysenter_esp)
    _load_flat(x, "cs", cs & 0xFFFC, 0xB, 0)
    _load_flat(x, "ss", (cs & 0xFFFC) + 8, 0x3, 0)
    x.write("cpl", 0)
    x.jump(x.sysenter_eip)


@form("sysexit", enc="0F 35", bytes="0f35", asm="sysexit", cite="SDM Vol. 2B SYSEXIT")
def sysexit(x):
    """SYSEXIT (32-bit): ring 3 at IA32_SYSENTER_CS+16 : EDX on ECX, SS = CS + 8, RPL 3; EFLAGS
    unchanged (SDM Vol. 2B SYSEXIT, Operation)."""
    cs = z3.Extract(15, 0, x.sysenter_cs)
    x.require(z3.And(st.bit(x.cr0, st.CR0_PE), x.cpl == 0, z3.Not(is_null(cs))), GP, 0,
              "SYSEXIT needs protected mode, CPL 0 and a non-null IA32_SYSENTER_CS")
    new_cs = (cs + 16) | 3
    x.write("esp", x.ecx)
    _load_flat(x, "cs", new_cs, 0xB, 3)
    _load_flat(x, "ss", new_cs + 8, 0x3, 3)
    x.write("cpl", 3)
    x.jump(x.edx)


# --- SYSCALL, SYSRET outside 64-bit mode -----------------------------------------------------------
#
# On Intel processors both are #UD outside 64-bit mode (SDM Vol. 2B SYSCALL, SYSRET: "IF (CS.L
# != 1) or (IA32_EFER.LMA != 1) or (IA32_EFER.SCE != 1) THEN #UD").  AMD processors run them in
# legacy mode with EFER.SCE = 1 (feature ``syscall``): CS and SS from STAR, flat segments as
# SYSENTER's (AMD APM Vol. 3 SYSCALL, SYSRET, legacy-mode Operation).


def _syscall_enabled(x, what: str) -> bool:
    x.require(z3.And(x.has("syscall"), st.bit(x.efer, st.EFER_SCE)), UD, None,
              f"{what} outside 64-bit mode without the AMD legacy-mode SYSCALL and EFER.SCE")
    return "syscall" in x.features


@form("syscall", enc="0F 05", bytes="0f05", asm="syscall", cite="SDM Vol. 2B SYSCALL; AMD APM Vol. 3 SYSCALL")
def syscall(x):
    """Legacy-mode SYSCALL: ECX := the next EIP; CS := STAR[47:32] AND FFFCH and SS := that + 8,
    flat ring-0 segments; IF, VM, RF := 0; CPL := 0; EIP := STAR[31:0]."""
    if not _syscall_enabled(x, "SYSCALL"):
        return
    cs = z3.Extract(47, 32, x.star) & 0xFFFC
    x.write("ecx", x.next_eip)
    x.write("sysflags", x.sysflags & ~((1 << st.VM) | (1 << st.IF) | (1 << st.RF)))
    _load_flat(x, "cs", cs, 0xB, 0)
    _load_flat(x, "ss", cs + 8, 0x3, 0)
    x.write("cpl", 0)
    x.jump(z3.Extract(31, 0, x.star))


@form("sysret", enc="0F 07", bytes="0f07", asm="sysret", cite="SDM Vol. 2B SYSRET; AMD APM Vol. 3 SYSRET")
def sysret(x):
    """Legacy-mode SYSRET: #GP(0) at CPL > 0; CS := STAR[63:48] OR 3 as a flat ring-3 code
    segment; the SS selector := (STAR[63:48] + 8) OR 3 with SS's base, limit and attributes left
    as they were (AMD APM: "SS base, limit, attributes unchanged"); IF := 1; CPL := 3;
    EIP := ECX."""
    if not _syscall_enabled(x, "SYSRET"):
        return
    x.require(x.cpl == 0, GP, 0, "SYSRET at CPL > 0")
    base = z3.Extract(63, 48, x.star)
    x.write("sysflags", x.sysflags | (1 << st.IF))
    _load_flat(x, "cs", base | 3, 0xB, 3)
    x.write("ss", (base + 8) | 3)
    x.write("cpl", 3)
    x.jump(x.ecx)
