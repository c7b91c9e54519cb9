"""Shared protection logic, written once (SDM Vol. 3A ch. 3 and 5, Vol. 1 ch. 19).

Descriptor decoding, table look-ups, the CPL/RPL/DPL rules of segment loads and of LAR/LSL/
VERR/VERW, the IOPL and I/O-bitmap test, and the CR4 gates.  Forms call these; none re-derives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import z3

from . import state as st
from .outcome import GP, NP, SS


def _u(v, width=32):
    return z3.ZeroExt(width - v.size(), v) if v.size() < width else v


@dataclass(frozen=True)
class Descriptor:
    """A segment or gate descriptor read from a table (SDM Vol. 3A 3.4.5, 5.8.3, 6.11)."""

    lo: z3.BitVecRef
    hi: z3.BitVecRef
    in_limit: z3.BoolRef      # the selector's index lies inside its table
    addr: z3.BitVecRef        # linear address of the descriptor

    @property
    def type(self):
        return z3.Extract(11, 8, self.hi)

    @property
    def s(self):
        return z3.Extract(12, 12, self.hi) == 1

    @property
    def dpl(self):
        return z3.Extract(14, 13, self.hi)

    @property
    def present(self):
        return z3.Extract(15, 15, self.hi) == 1

    @property
    def base(self):
        return z3.Concat(z3.Extract(31, 24, self.hi), z3.Extract(7, 0, self.hi), z3.Extract(31, 16, self.lo))

    @property
    def raw_limit(self):
        return z3.Concat(z3.BitVecVal(0, 12), z3.Extract(19, 16, self.hi), z3.Extract(15, 0, self.lo))

    @property
    def limit(self):
        """Byte-granular limit: G scales by 4 KiB."""
        g = z3.Extract(23, 23, self.hi) == 1
        return z3.If(g, (self.raw_limit << 12) | 0xFFF, self.raw_limit)

    @property
    def attr(self):
        """Bits 40-55 as the hidden cache keeps them (limit nibble cleared)."""
        return z3.Extract(23, 8, self.hi) & 0xF0FF

    # code/data type bits (S = 1)
    @property
    def is_code(self):
        return z3.And(self.s, z3.Extract(11, 11, self.hi) == 1)

    @property
    def is_data(self):
        return z3.And(self.s, z3.Extract(11, 11, self.hi) == 0)

    @property
    def conforming(self):
        return z3.And(self.is_code, z3.Extract(10, 10, self.hi) == 1)

    @property
    def readable(self):
        return z3.Or(self.is_data, z3.And(self.is_code, z3.Extract(9, 9, self.hi) == 1))

    @property
    def writable(self):
        return z3.And(self.is_data, z3.Extract(9, 9, self.hi) == 1)

    # gates
    @property
    def gate_selector(self):
        return z3.Extract(31, 16, self.lo)

    @property
    def gate_offset(self):
        return z3.Concat(z3.Extract(31, 16, self.hi), z3.Extract(15, 0, self.lo))

    @property
    def gate_params(self):
        return z3.Extract(4, 0, self.hi)

    def system_type(self, *types: int):
        return z3.And(z3.Not(self.s), z3.Or([self.type == t for t in types]))


def is_null(sel) -> z3.BoolRef:
    return z3.Extract(15, 2, sel) == 0


def rpl(sel):
    return z3.Extract(1, 0, sel)


def sel_code(sel):
    """Error code of a selector fault: the selector with RPL cleared (SDM Vol. 3A 6.13)."""
    return z3.ZeroExt(16, sel & 0xFFFC)


def descriptor(x, sel) -> Descriptor:
    """Read the descriptor ``sel`` names from the GDT or, with TI = 1, the LDT."""
    ti = z3.Extract(2, 2, sel) == 1
    offset = z3.ZeroExt(16, sel & 0xFFF8)
    ldt_usable = z3.Not(is_null(x.ldtr))
    base = z3.If(ti, x.ldtr_base, x.gdtr_base)
    limit = z3.If(ti, x.ldtr_limit, z3.ZeroExt(16, x.gdtr_limit))
    in_limit = z3.And(z3.If(ti, ldt_usable, z3.BoolVal(True)), z3.ULE(offset + 7, limit),
                      z3.ULE(offset, offset + 7))
    addr = base + offset
    return Descriptor(x.load(addr, 4), x.load(addr + 4, 4), in_limit, addr)


def gate_descriptor(x, vector: int | z3.BitVecRef) -> Descriptor:
    """Read IDT entry ``vector`` (SDM Vol. 3A 6.10-6.11)."""
    v = z3.BitVecVal(vector, 32) if isinstance(vector, int) else _u(vector)
    offset = v * 8
    addr = x.idtr_base + offset
    in_limit = z3.ULE(offset + 7, z3.ZeroExt(16, x.idtr_limit))
    return Descriptor(x.load(addr, 4), x.load(addr + 4, 4), in_limit, addr)


def set_accessed(x, d: Descriptor) -> None:
    """A segment load sets the descriptor's accessed bit in memory (SDM Vol. 3A 3.4.5.1)."""
    with x.when(z3.Extract(8, 8, d.hi) == 0):
        x.store(d.addr + 4, 4, d.hi | 0x100)


def load_cache(x, sreg: str, sel, d: Descriptor) -> None:
    x.write(sreg, sel)
    x.write(f"{sreg}_base", d.base)
    x.write(f"{sreg}_limit", d.limit)
    x.write(f"{sreg}_attr", d.attr | 0x0001)  # the cache holds the accessed type


def load_null(x, sreg: str, sel) -> None:
    x.write(sreg, sel)
    x.write(f"{sreg}_base", 0)
    x.write(f"{sreg}_limit", 0)
    x.write(f"{sreg}_attr", 0)


def load_data_segment(x, sreg: str, sel) -> None:
    """MOV/POP/LxS to DS, ES, FS or GS in protected mode (SDM Vol. 2B MOV, Vol. 3A 5.7)."""
    null = is_null(sel)
    with x.when(null):
        load_null(x, sreg, sel)
    with x.when(z3.Not(null)):
        d = descriptor(x, sel)
        code = sel_code(sel)
        x.require(d.in_limit, GP, code, "selector index outside the descriptor table")
        x.require(d.readable, GP, code, "not a data or readable code segment")
        needs_dpl = z3.Not(d.conforming)
        x.require(z3.Implies(needs_dpl, z3.And(z3.UGE(d.dpl, rpl(sel)), z3.UGE(d.dpl, x.cpl))),
                  GP, code, "segment DPL below CPL or RPL")
        x.require(d.present, NP, code, "segment not present")
        set_accessed(x, d)
        load_cache(x, sreg, sel, d)


def load_stack_segment(x, sel) -> None:
    """MOV/POP/LSS to SS: RPL = DPL = CPL and a writable data segment (SDM Vol. 2B MOV)."""
    x.require(z3.Not(is_null(sel)), GP, 0, "null selector loaded into SS")
    d = descriptor(x, sel)
    code = sel_code(sel)
    x.require(d.in_limit, GP, code, "selector index outside the descriptor table")
    x.require(rpl(sel) == x.cpl, GP, code, "SS selector RPL differs from CPL")
    x.require(d.writable, GP, code, "SS must be a writable data segment")
    x.require(d.dpl == x.cpl, GP, code, "SS descriptor DPL differs from CPL")
    x.require(d.present, SS, code, "stack segment not present")
    set_accessed(x, d)
    load_cache(x, "ss", sel, d)


def visible(x, sel, d: Descriptor) -> z3.BoolRef:
    """The DPL rule of LAR/LSL/VERR/VERW: conforming code, or DPL >= CPL and DPL >= RPL."""
    return z3.Or(d.conforming, z3.And(z3.UGE(d.dpl, x.cpl), z3.UGE(d.dpl, rpl(sel))))


def cpl0(x) -> z3.BoolRef:
    return x.cpl == 0


def require_cpl0(x, what: str) -> None:
    x.require(cpl0(x), GP, 0, f"{what} needs CPL 0")


def umip_blocks(x) -> z3.BoolRef:
    """CR4.UMIP makes SGDT/SIDT/SLDT/SMSW/STR fault outside CPL 0 (SDM Vol. 3A 2.5)."""
    return z3.And(x.has("umip"), st.bit(x.cr4, st.CR4_UMIP), x.cpl != 0)


def iopl_ok(x) -> z3.BoolRef:
    return z3.ULE(x.cpl, st.iopl(x.s))


def io_permitted(x, port, width: int) -> z3.BoolRef:
    """CPL <= IOPL, or every bit for the ports in the TSS I/O bitmap is clear (SDM Vol. 1 19.5)."""
    port32 = z3.ZeroExt(16, port)
    # tr_attr keeps descriptor bits 40-55: type in bits 3:0, S in bit 4.
    tss32 = z3.And(z3.Extract(4, 4, x.tr_attr) == 0,
                   z3.Or(z3.Extract(3, 0, x.tr_attr) == 9, z3.Extract(3, 0, x.tr_attr) == 0xB))
    has_base = z3.ULE(z3.BitVecVal(0x67, 32), x.tr_limit)
    io_base = z3.ZeroExt(16, x.load(x.tr_base + 0x66, 2))
    byte = io_base + z3.LShR(port32, 3)
    within = z3.And(z3.ULE(byte + 1, x.tr_limit), z3.ULT(byte, byte + 1))
    word = x.load(x.tr_base + byte, 2)
    mask = z3.BitVecVal((1 << width) - 1, 32) << (port32 & 7)
    bits_clear = (z3.ZeroExt(16, word) & mask) == 0
    bitmap_ok = z3.And(tss32, has_base, within, bits_clear)
    return z3.Or(iopl_ok(x), bitmap_ok)


# --- VM exits (VMX non-root operation, SDM Vol. 3C ch. 25; SVM guests, AMD APM Vol. 2 ch. 15) -----
#
# A form states its exit conditions here, in the place of its definition the priority rules put
# them: after the faults that come first (SDM Vol. 3C 25.1.1: #UD, the CPL checks, the TSS
# I/O-bitmap #GP; APM Vol. 2 15.7.2: intercepts after the instruction's simple exceptions),
# save where the SDM makes an exception: MOV-DR exits come before MOV DR's CPL #GP and DR4/DR5
# #UD (25.1.3), task-switch exits after the gate and new-TSS checks only (25.4.2).
# ``x.vm`` is the configuration: ``vmx.Controls``, ``svm.Intercepts``, or None on bare hardware,
# where every helper returns at once and builds no term.

def _on(x, control: str) -> bool:
    """Whether ``control`` (a VMX control or an SVM intercept) is set, noted as consulted by the
    form (``Outcome.consulted``: the controls search re-asks only the forms that read it)."""
    x.consulted.add(control)
    return x.vm.on(control)


def _vmx(x) -> bool:
    from .vmx import Controls
    return isinstance(x.vm, Controls)


def _svm(x) -> bool:
    from .svm import Intercepts
    return isinstance(x.vm, Intercepts)


def _vmx_exit(reason: str, why: str):
    from .outcome import Exit
    from .vmx import EXIT_REASONS
    return Exit("vmx", reason, EXIT_REASONS[reason], None, why)


def _svm_exit(name: str, code: int, why: str):
    from .outcome import Exit
    return Exit("svm", name, code, None, why)


def vmexit(x, *, vmx: tuple[str | None, str] | None = None, svm: str | None = None, cond=True,
           qualification=None, what: str = "") -> None:
    """Exit when ``cond`` holds and the configuration asks for it.  ``vmx``: (the VM-execution
    control, or None for an unconditional exit (SDM Vol. 3C 25.1.2), the basic exit reason);
    ``svm``: the intercept (APM Vol. 2 Table B-1), its exit code from ``svm.INTERCEPTS``."""
    if x.vm is None:
        return
    if vmx is not None and _vmx(x):
        control, reason = vmx
        if control is None or _on(x, control):
            why = f"{what}: unconditional in VMX non-root operation" if control is None \
                else f"{what} with '{control}' set"
            x.exit_when(cond, _vmx_exit(reason, why), qualification)
    elif svm is not None and _svm(x) and _on(x, svm):
        from .svm import INTERCEPTS
        x.exit_when(cond, _svm_exit(svm, INTERCEPTS[svm].exit_code, f"{what} with the {svm} intercept set"),
                    qualification)


# The guest interruptibility state (SDM Vol. 3C 24.4.2, Table 24-3) is not a field of the model: a
# state does not record whether the instruction before was STI, MOV SS or POP SS, nor whether a
# virtual NMI is blocked.  Each is a free Boolean of the run, so both values are possible (built
# only when a window control is set: no term is made for runs that never read them).
BLOCKING = {"sti": "vmx.blocking_by_sti", "mov_ss": "vmx.blocking_by_mov_ss",
            "virtual_nmi": "vmx.virtual_nmi_blocking"}


def blocking(kind: str) -> z3.BoolRef:
    return z3.Bool(BLOCKING[kind])


def event_windows(x) -> None:
    """The VM exits at the instruction boundary, before anything of the instruction is done (SDM
    Vol. 3C 25.2): with 'interrupt-window exiting', before any instruction with EFLAGS.IF = 1 and
    no blocking by STI or MOV SS (so after STI only once the next instruction is done, and after a
    POPF or IRET that set IF at once); with 'NMI-window exiting', before any instruction without
    virtual-NMI blocking and without blocking by MOV SS.  A monitor sets them while it holds an
    interrupt / a virtual NMI for the guest.  SVM's VINTR intercept needs a pending V_IRQ, which
    the VMCB data does not hold: not modelled."""
    if x.vm is None or not _vmx(x):
        return
    if _on(x, "interrupt_window_exiting"):
        x.exit_when(z3.And(st.bit(x.sysflags, st.IF), z3.Not(blocking("sti")), z3.Not(blocking("mov_ss"))),
                    _vmx_exit("interrupt_window", "EFLAGS.IF = 1 without blocking by STI or MOV SS, with "
                                                  "'interrupt-window exiting' set"))
    if _on(x, "nmi_window_exiting"):
        x.exit_when(z3.And(z3.Not(blocking("virtual_nmi")), z3.Not(blocking("mov_ss"))),
                    _vmx_exit("nmi_window", "no virtual-NMI blocking and no blocking by MOV SS, with "
                                            "'NMI-window exiting' set"))


def _cr_qual(n: int, access: int, reg: int = 0):
    """VT-x exit qualification for control-register accesses (SDM Vol. 3C Table 27-3): CR number,
    access type (0 MOV to CR, 1 MOV from CR, 2 CLTS, 3 LMSW), general register."""
    return n | access << 4 | reg << 8


def cr_read(x, n: int, value, what: str):
    """The value a read of CRn (MOV from CR, SMSW) returns, after its exit check.  VT-x: CR0 and
    CR4 read the read shadow in the bits the guest/host mask owns (SDM Vol. 3C 25.3), MOV from
    CR3 exits under 'CR3-store exiting' (25.1.3); SVM: the CRn read intercept (APM Vol. 2 15.9;
    SMSW is a CR0 read there)."""
    if x.vm is None:
        return value
    if _vmx(x):
        if n == 3 and _on(x, "cr3_store_exiting"):
            x.exit_when(True, _vmx_exit("cr_access", f"{what} with 'CR3-store exiting' set"),
                        _cr_qual(3, 1))
        if n in (0, 4):
            mask, shadow = (x.vm.cr0_mask, x.vm.cr0_shadow) if n == 0 else (x.vm.cr4_mask, x.vm.cr4_shadow)
            return (value & ~mask) | (shadow & mask)
        return value
    from .svm import EXIT_READ_CR
    x.consulted.add(f"cr{n}_read")
    if x.vm.cr(n, write=False):
        x.exit_when(True, _svm_exit(f"read_cr{n}", EXIT_READ_CR + n, f"{what} with the CR{n} read intercept set"))
    return value


def cr_write(x, n: int, old, value, what: str, access: int = 0, bits: int = ~0):
    """The value a write of CRn leaves in the register, after its exit checks.  VT-x (SDM Vol. 3C
    25.1.3, 25.3): CR0/CR4 writes exit when a bit the mask owns would differ from the read shadow;
    without an exit those bits keep their value (``access`` 2 for CLTS, 3 for LMSW); MOV to CR3
    exits under 'CR3-load exiting' unless the value is a CR3-target value.  SVM (APM Vol. 2 15.9):
    the CRn write intercept, then for CR0 the selective intercept (a change of a bit other than
    TS and MP; LMSW and CLTS are CR0 writes).  ``bits``: the bits the instruction can write
    (CLTS: TS; LMSW: PE, MP, EM, TS), the only ones whose shadow it is compared with."""
    if x.vm is None:
        return value
    if _vmx(x):
        if n in (0, 4):
            mask, shadow = (x.vm.cr0_mask, x.vm.cr0_shadow) if n == 0 else (x.vm.cr4_mask, x.vm.cr4_shadow)
            if mask & bits:
                x.exit_when((value ^ shadow) & mask & bits != 0,
                            _vmx_exit("cr_access", f"{what} changes a CR{n} bit the guest/host mask owns "
                                                   "from its read shadow"), _cr_qual(n, access))
            return (value & ~mask) | (old & mask)
        if n == 3 and _on(x, "cr3_load_exiting"):
            hit = z3.Or([value == t for t in x.vm.cr3_targets]) if x.vm.cr3_targets else z3.BoolVal(False)
            x.exit_when(z3.Not(hit), _vmx_exit("cr_access", f"{what} with 'CR3-load exiting' set and "
                                                            "the value not a CR3-target value"),
                        _cr_qual(3, access))
        return value
    from .svm import EXIT_WRITE_CR, INTERCEPTS
    x.consulted.add(f"cr{n}_write")
    if x.vm.cr(n, write=True):
        x.exit_when(True, _svm_exit(f"write_cr{n}", EXIT_WRITE_CR + n, f"{what} with the CR{n} write intercept set"))
    if n == 0 and _on(x, "cr0_selective_write"):
        tsmp = (1 << st.CR0_TS) | (1 << st.CR0_MP)
        x.exit_when((old ^ value) & ~tsmp != 0,
                    _svm_exit("cr0_selective_write", INTERCEPTS["cr0_selective_write"].exit_code,
                              f"{what} changes a CR0 bit other than TS and MP"))
    return value


def cr_keep(x, n: int, old, value):
    """The value a CR0/CR4 write that did not exit leaves: in VMX non-root operation the bits the
    guest/host mask owns keep their value (SDM Vol. 3C 25.3)."""
    if x.vm is None or not _vmx(x) or n not in (0, 4):
        return value
    mask = x.vm.cr0_mask if n == 0 else x.vm.cr4_mask
    return (value & ~mask) | (old & mask) if mask else value


def require_enabled(x, control: str, what: str) -> None:
    """In VMX non-root operation an instruction a secondary control enables is #UD while that
    control is 0 (SDM Vol. 3C 25.3: RDTSCP, INVPCID, XSAVES/XRSTORS, VMFUNC...)."""
    if x.vm is not None and _vmx(x) and not _on(x, control):
        from .outcome import UD
        x.fault(UD, None, f"{what} in VMX non-root operation with '{control}' clear")


def dr_exit(x, n: int, write: bool, what: str) -> None:
    """VT-x: 'MOV-DR exiting' (SDM Vol. 3C 25.1.3).  Called before every check of MOV DR: such
    exits are an exception to 25.1.1 and take priority over the #GP based on privilege level
    and over the #UD of DR4/DR5 with CR4.DE = 1; the general-detect #DB (DR7.GD) is a fault
    25.1.1 does not list, below every fault-like VM exit."""
    if x.vm is None or not _vmx(x):
        return
    if _on(x, "mov_dr_exiting"):
        x.exit_when(True, _vmx_exit("mov_dr", f"{what} with 'MOV-DR exiting' set"),
                    n | (0 if write else 1) << 4)


def dr_intercept(x, n: int, write: bool, what: str) -> None:
    """SVM: the DRn read/write intercepts (APM Vol. 2 15.9), after the instruction's own
    exceptions (15.7.2)."""
    if x.vm is None or not _svm(x):
        return
    from .svm import EXIT_READ_DR, EXIT_WRITE_DR
    x.consulted.add(f"dr{n}_{'write' if write else 'read'}")
    if x.vm.dr(n, write):
        base = EXIT_WRITE_DR if write else EXIT_READ_DR
        x.exit_when(True, _svm_exit(f"{'write' if write else 'read'}_dr{n}", base + n,
                                    f"{what} with the DR{n} {'write' if write else 'read'} intercept set"))


def _ports(port, width: int, ports: frozenset[int]):
    """Some byte of the access ``port``..``port+width-1`` lies in ``ports`` (16-bit port space:
    an access that wraps past FFFFH exits as well, SDM Vol. 3C 25.1.3)."""
    if len(ports) == 1 << 16:
        return z3.BoolVal(True)
    if not ports:
        return z3.BoolVal(False)
    runs, start, prev = [], None, None
    for p in sorted(ports):
        if start is None:
            start = prev = p
        elif p == prev + 1:
            prev = p
        else:
            runs.append((start, prev))
            start = prev = p
    runs.append((start, prev))
    out = []
    for k in range(width):
        q = port + k
        out += [z3.And(z3.UGE(q, lo), z3.ULE(q, hi)) if lo != hi else q == lo for lo, hi in runs]
    if width > 1:
        out.append(z3.UGT(port, 0xFFFF - (width - 1)))
    return z3.Or(out)


def io_exit(x, port, width: int, what: str) -> None:
    """After the IOPL/TSS I/O-bitmap check (which has priority, SDM Vol. 3C 25.1.1): VT-x exits per
    the I/O bitmaps, else per 'unconditional I/O exiting' (25.1.3); SVM per the IOPM under the
    IOIO intercept (APM Vol. 2 15.10).  The qualification is the port in bits 31:16 and the
    access size less one in bits 2:0 (SDM Vol. 3C Table 27-5)."""
    if x.vm is None:
        return
    qual = (z3.ZeroExt(16, port) << 16) | (width - 1)
    if _vmx(x):
        c = x.vm
        if _on(x, "use_io_bitmaps"):
            cond = _ports(port, width, c.io_exits)
            why = f"{what}: a port of the access is set in the I/O bitmaps"
        elif _on(x, "unconditional_io_exiting"):
            cond, why = z3.BoolVal(True), f"{what} with 'unconditional I/O exiting' set"
        else:
            return
        x.exit_when(cond, _vmx_exit("io", why), qual)
        return
    if _on(x, "ioio_prot"):
        from .svm import INTERCEPTS
        x.exit_when(_ports(port, width, x.vm.io_exits),
                    _svm_exit("ioio", INTERCEPTS["ioio_prot"].exit_code,
                              f"{what}: a port of the access is set in the IOPM"), qual)


def msr_exit(x, ecx, write: bool, what: str) -> None:
    """After the CPL check: VT-x exits for every MSR without 'use MSR bitmaps', else for those set
    in the bitmaps and those outside their ranges (SDM Vol. 3C 24.6.9, 25.1.3); SVM under the MSR
    intercept per the MSRPM, MSRs outside its ranges always (APM Vol. 2 15.11)."""
    if x.vm is None:
        return
    exits = x.vm.msr_write_exits if write else x.vm.msr_read_exits
    if _vmx(x):
        reason = "wrmsr" if write else "rdmsr"
        if not _on(x, "use_msr_bitmaps"):
            x.exit_when(True, _vmx_exit(reason, f"{what} without 'use MSR bitmaps'"), ecx)
            return
        covered = z3.Or(z3.ULE(ecx, 0x1FFF), z3.And(z3.UGE(ecx, 0xC0000000), z3.ULE(ecx, 0xC0001FFF)))
        listed = z3.Or([ecx == m for m in sorted(exits)]) if exits else z3.BoolVal(False)
        x.exit_when(z3.Or(z3.Not(covered), listed),
                    _vmx_exit(reason, f"{what}: the MSR is set in the MSR bitmaps or outside them"), ecx)
        return
    if _on(x, "msr_prot"):
        from .svm import INTERCEPTS
        covered = z3.Or(z3.ULE(ecx, 0x1FFF), z3.And(z3.UGE(ecx, 0xC0000000), z3.ULE(ecx, 0xC0001FFF)),
                        z3.And(z3.UGE(ecx, 0xC0010000), z3.ULE(ecx, 0xC0011FFF)))
        listed = z3.Or([ecx == m for m in sorted(exits)]) if exits else z3.BoolVal(False)
        x.exit_when(z3.Or(z3.Not(covered), listed),
                    _svm_exit("msr", INTERCEPTS["msr_prot"].exit_code,
                              f"{what}: the MSR is set in the MSRPM or outside it"), ecx)


def tsc_value(x):
    """The TSC RDTSC/RDTSCP/RDMSR return: with 'use TSC offsetting' (VT-x, SDM Vol. 3C 25.3) or
    always (SVM, APM Vol. 2 15.30.5) the real TSC plus the offset."""
    if x.vm is None:
        return x.tsc
    if _vmx(x) and not _on(x, "use_tsc_offsetting"):
        return x.tsc
    return x.tsc + (x.vm.tsc_offset & ((1 << 64) - 1))
