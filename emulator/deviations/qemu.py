"""Where QEMU (qemu-system-i386 7.2, TCG, ``-cpu max[,-umip]``) departs from the SDM.

Each entry: what it affects, the SDM, what QEMU does, a reproduction (``base.Repro``: minimal
cases from ``repro.state`` and the instruction, run through the test kernel; the whole table runs
in one boot, ``present_all``), the ``explains`` predicate the cross-check and replay use, and a
``trigger`` (the condition on a symbolic pre-state) that witness steering avoids.  Most of these
QEMU already had in the 5.0 that Unicorn embeds (``unicorn.py``); QEMU 7.2 no longer drops the
upper half of a pushed selector, and its SYSENTER is a real transfer, only with the wrong test.
"""

from __future__ import annotations

import z3

from pgvirt.model import state as st
from pgvirt.model.outcome import GP, UD

from . import harness
from . import repro as R
from . import unicorn as U
from .base import Deviation, Repro, loads_cs, reads_unaccessed_segment
from .. import states as S

_DR_ALL = U._DR_ALL


def _bit(term, n):
    return z3.Extract(n, n, term) == 1


# --- reproductions -------------------------------------------------------------------------------
def _sysenter_cases():
    return [R.case("sysenter", R.state(3, sysenter_cs=3, sysenter_eip=0x4100,
                                       sysenter_esp=S.STACK_TOP[0]))]


def _sysenter_holds(rs):
    return R.completes(rs[0]) and R.post(rs[0])["cpl"] == 0 and R.post(rs[0])["cs"] == 0


def _sysexit_cases():
    return [R.case("sysexit", R.state(0, sysenter_cs=3, ecx=0x7000, edx=0x4100))]


def _pvi_cases():
    s = R.state(3, iopl=0, cr4=1 << st.CR4_PVI)
    return [R.case("cli", s), R.case("sti", dict(s, mem=dict(s["mem"])))]


def _dr_cpl_cases():
    return [R.case("mov_r_dr4", R.state(3, cr4=1 << st.CR4_DE)),
            R.case("mov_r_dr0", R.state(3, dr7=0x400 | 1 << 13))]


def _gd_cases():
    return [R.case("mov_r_dr0", R.state(0, dr7=0x400 | 1 << 13, dr0=0x1234))]


def _dr_reserved_cases():
    return [R.case("mov_dr6_r", R.state(0, eax=0xFFFF0FF0 | 1 << 12))]


def _cr4_cases():
    return [R.case("mov_cr4_r", R.state(0, eax=1 << 18))]              # CR4.OSXSAVE


def _tsc_aux_cases():
    return [R.case("rdmsr", R.state(0, ecx=0xC0000103, tsc_aux=0x1234))]


def _rdpmc_cases():
    return [R.case("rdpmc", R.state(0, ecx=0))]


def _accessed_cases():
    """Far JMPs to code whose descriptor has the accessed bit clear: in the GDT, in the LDT."""
    target = (S.CODE + 0x100).to_bytes(4, "little")
    s = R.state(3)
    R.gdt(s, 0x60, S.descriptor(0, 0xFFFFFFFF, S.code_attr(3, accessed=False)))
    s2 = R.state(3, ldtr=S.LDT_SEL, ldtr_base=S.LDT_BASE, ldtr_limit=0xF)
    S.put(s2["mem"], S.LDT_BASE + 8, S.descriptor(0, 0xFFFFFFFF, S.code_attr(3, accessed=False)))
    return [R.case("jmp_far_ptr", s, b"\xea" + target + (0x63).to_bytes(2, "little")),
            R.case("jmp_far_ptr", s2, b"\xea" + target + (0x0F).to_bytes(2, "little"))]


def _accessed_holds(rs):
    gdt, ldt = (R.post(r) for r in rs)
    return (R.completes(rs[0]) and R.completes(rs[1]) and not gdt["mem"][S.GDT_BASE + 0x65] & 1
            and not ldt["mem"][S.LDT_BASE + 13] & 1)


def _offset_cases():
    s = R.state(3)
    R.gdt(s, 0x60, S.descriptor(0, 0xFFF, S.code_attr(0) & ~S.G_BIT))
    R.gdt(s, 0x68, S.gate(0x60, 0x5000, 0xC, 3))
    return [R.case("call_far_ptr", s, bytes.fromhex("9a00000000") + (0x6B).to_bytes(2, "little"))]


def _vm86_cases():
    s = R.state(3, iopl=3)
    frame = (0x100, 0x1234, (1 << st.VM) | 0x202, 0x200, 0x4321, 0, 0, 0, 0)
    S.put(s["mem"], s["esp"], b"".join(v.to_bytes(4, "little") for v in frame))
    return [R.case("iretd", s)]


def _vip_cases():
    s = R.state(0)
    vif_vip = (1 << st.VIF) | (1 << st.VIP)
    frame = (S.CODE + 0x10, S.code_selector(0), vif_vip | 0x202)
    S.put(s["mem"], s["esp"], b"".join(v.to_bytes(4, "little") for v in frame))
    return [R.case("iretd", s)]


def _vip_holds(rs):
    p = R.post(rs[0])
    return R.completes(rs[0]) and p["eip"] == S.CODE + 0x10 and not p["sysflags"] & (3 << st.VIF)


def _rdtsc_cases():
    return [R.case("rdtsc", R.state(0, tsc=0x1234)), R.case("rdtsc", R.state(0, tsc=0x1234))]


def _rdtsc_holds(rs):
    vals = [R.post(r)["edx"] << 32 | R.post(r)["eax"] for r in rs if R.completes(r)]
    return len(vals) == 2 and 0x1234 not in vals


# --- predicates -------------------------------------------------------------------------------
def _x_sysenter(o, d):
    cs = o.state["sysenter_cs"]
    return (o.name == "sysenter" and U._outcome(o, d) and o.model_faults(GP)
            and cs & 0xFFFC == 0 and cs != 0 and o.emu_post is not None)


def _t_sysenter(form, s, o):
    if form.name != "sysenter":
        return None
    return z3.And(z3.Extract(15, 2, s.sysenter_cs) == 0, s.sysenter_cs != 0)


def _t_sysexit(form, s, o):
    if form.name != "sysexit":
        return None
    return z3.And(z3.Extract(15, 2, s.sysenter_cs) == 0, s.sysenter_cs != 0)


def _t_pvi(form, s, o):
    if form.name not in ("cli", "sti"):
        return None
    return z3.And(s.cpl == 3, _bit(s.cr4, st.CR4_PVI), st.iopl(s) != 3)


def _t_transfer(form, s, o):
    return reads_unaccessed_segment(s, o) if loads_cs(form) else None


def _popped_flags_byte(s):
    """Byte 2 of the EFLAGS image IRETD pops (VM is its bit 1, VIF bit 3, VIP bit 4)."""
    return z3.Select(s.mem, s.ss_base + s.esp + 10)


def _t_vm86(form, s, o):
    if form.name != "iretd":
        return None
    return z3.And(s.cpl != 0, z3.Extract(1, 1, _popped_flags_byte(s)) == 1)


def _t_vip(form, s, o):
    if form.name != "iretd":
        return None
    return z3.And(s.cpl == 0, z3.Extract(4, 3, _popped_flags_byte(s)) != z3.Extract(20, 19, s.sysflags))


def _x_accessed(o, d):
    """A descriptor byte whose accessed bit the model sets and QEMU leaves clear; the far
    transfers and INT n delivery alike (the Unicorn entry's predicate covers the former)."""
    if not loads_cs(o.form) or o.model is not None or d.kind != "mem":
        return False
    return d.model == d.emu | 1 and not d.emu & 1 and U._descriptor_byte5(o, d.key)


def _x_offset(o, d):
    """Far transfers and INT n delivery alike skip the new EIP's limit check."""
    return (loads_cs(o.form) and U._outcome(o, d) and o.model_faults(GP)
            and U._model_reason(o, "offset beyond the code segment limit") and o.emu_post is not None)


def _x_call_code(o, d):
    return (o.name in ("call_far_ptr", "call_far_m") and d.kind == "outcome" and d.key == "code"
            and U._model_reason(o, "target offset beyond the code segment limit")
            and o.emu_faults(GP) and o.emu.code not in (0, None))


def _x_conforming(o, d):
    """CS.RPL (which the catch reads as the CPL) becomes the conforming segment's DPL."""
    post = o.emu_post
    if o.name not in ("call_far_ptr", "call_far_m") or o.model is not None or post is None:
        return False
    if d.kind == "reg" and d.key == "cpl":
        return d.model == o.cpl and d.emu == post["cs"] & 3 and d.emu < o.cpl
    return U._x_gate_conforming(o, d)


def _offset_int_cases():
    s = R.state(3)
    R.gdt(s, 0x60, S.descriptor(0, 0xFFF, S.code_attr(0) & ~S.G_BIT))
    S.put(s["mem"], S.IDT_BASE + 8 * 0x81, S.gate(0x60, 0x5000, 0xE, 3))
    return [R.case("int_imm", s, bytes.fromhex("cd81"))]


def _call_code_cases():
    s = R.state(2)
    R.gdt(s, 0x60, S.descriptor(0, 0xFFF, S.code_attr(0, conforming=True) & ~S.G_BIT))
    return [R.case("call_far_ptr", s, bytes.fromhex("9a00500000") + (0x62).to_bytes(2, "little"))]


def _conforming_cases():
    s = R.state(1)
    R.gdt(s, 0x60, S.descriptor(0, 0xFFFFFFFF, S.code_attr(0, conforming=True)))
    R.gdt(s, 0x68, S.gate(0x60, 0x4100, 0xC, 3))
    return [R.case("call_far_ptr", s, bytes.fromhex("9a00000000") + (0x6B).to_bytes(2, "little"))]


def _fs_gs_cases():
    s = R.state(0, gs=2, gs_base=0, gs_limit=0, gs_attr=0)
    frame = (S.CODE + 0x100, S.code_selector(3), 0x7000, S.data_selector(3))
    S.put(s["mem"], s["esp"], b"".join(v.to_bytes(4, "little") for v in frame))
    return [R.case("retf", s)]


def _jmp_np_cases():
    s = R.state(0)
    R.gdt(s, 0x60, S.descriptor(0, 0xFFFFFFFF, S.code_attr(0) & ~0x80))     # not present
    R.gdt(s, 0x68, S.gate(0x60, 0x4100, 0xC, 0))
    return [R.case("jmp_far_ptr", s, bytes.fromhex("ea00000000") + (0x68).to_bytes(2, "little"))]


def _ltr_null_cases():
    return [R.case("ltr_r", R.state(0, eax=0))]


def _cr0_cases():
    s = R.state(0)
    return [R.case("mov_cr0_r", dict(s, eax=s["cr0"] | 0x40))]          # bit 6 is reserved


def _sysenter_cs_cases():
    return [R.case("wrmsr", R.state(0, ecx=st.MSR_SYSENTER_CS, eax=0x12345678, edx=0))]


def _x_tsc(o, d):
    return o.name in ("rdtsc", "rdtscp") and d.kind == "reg" and d.key in ("eax", "edx")


def _x_tsc_aux(o, d):
    if o.name == "rdmsr" and o.state["ecx"] == 0xC0000103:
        return d.kind == "reg" and d.key in ("eax", "edx") and d.emu == 0
    if o.name == "rdtscp":
        return d.kind == "reg" and d.key == "ecx" and d.emu == 0
    return o.name == "wrmsr" and U._outcome(o, d) and U._model_reason(o, "IA32_TSC_AUX") \
        and o.emu_post is not None


def _x_msr_tsc(o, d):
    return (o.name == "rdmsr" and o.state["ecx"] == st.MSR_TSC and d.kind == "reg"
            and d.key in ("eax", "edx"))


def _x_rdpmc(o, d):
    return o.name == "rdpmc" and U._outcome(o, d) and o.emu_faults(UD)


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "sysenter-null-cs-rpl", "SYSENTER with IA32_SYSENTER_CS = 1, 2 or 3",
        "#GP(0) when IA32_SYSENTER_CS[15:2] = 0 (SDM Vol. 2B SYSENTER)",
        "only IA32_SYSENTER_CS = 0 faults; otherwise CS := 0 (a null selector) with a flat cache, "
        "CPL 0, and the transfer completes", Repro(_sysenter_cases, _sysenter_holds),
        explains=_x_sysenter, trigger=_t_sysenter),
    Deviation(
        "sysexit-null-cs-rpl", "SYSEXIT with IA32_SYSENTER_CS = 1, 2 or 3",
        "#GP(0) when IA32_SYSENTER_CS[15:2] = 0 (SDM Vol. 2B SYSEXIT)",
        "only IA32_SYSENTER_CS = 0 faults; the others return to ring 3",
        Repro(_sysexit_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["cpl"] == 3),
        explains=U._x_sysexit_cs, trigger=_t_sysexit),
    Deviation(
        "pvi-not-implemented", "CLI/STI at CPL 3 with CR4.PVI = 1 and IOPL < 3",
        "CLI clears and STI sets EFLAGS.VIF instead of faulting (SDM Vol. 2A CLI, Vol. 2B STI)",
        "#GP(0): protected-mode virtual interrupts are not implemented",
        Repro(_pvi_cases, lambda rs: all(R.faults(r, GP) for r in rs)), explains=U._x_pvi,
        trigger=_t_pvi),
    Deviation(
        "mov-dr-cpl-first", "MOV to/from DRn at CPL > 0 with CR4.DE = 1 and DR4/DR5, or DR7.GD = 1",
        "#UD for DR4/DR5 under CR4.DE and the general-detect #DB come before the CPL test "
        "(SDM Vol. 2B MOV (debug registers), Vol. 3B 17.2.4)",
        "#GP(0) from the CPL test comes first",
        Repro(_dr_cpl_cases, lambda rs: all(R.faults(r, GP) for r in rs)),
        explains=U._x_mov_dr_cpl_first),
    Deviation(
        "dr7-gd-ignored", "MOV to/from DRn at CPL 0 with DR7.GD = 1",
        "#DB (general detect) before the access (SDM Vol. 3B 17.2.4)",
        "DR7.GD is not implemented: the MOV completes",
        Repro(_gd_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["eax"] == 0x1234),
        explains=U._x_gd_ignored),
    Deviation(
        "dr-reserved-bits-kept", "MOV DR6, MOV DR7 with reserved bits",
        "DR6 bit 12 and DR7 bits 11, 12, 14, 15 read as 0 (SDM Vol. 3B 17.2.3-17.2.4)",
        "written bits are kept",
        Repro(_dr_reserved_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["dr6"] >> 12 & 1 == 1),
        fields=("dr6", "dr7"), explains=U._x_dr_reserved),
    Deviation(
        "cr4-bits-beyond-the-model", "MOV CR4 setting a bit above UMIP (OSXSAVE, FSGSBASE, ...)",
        "#GP(0) for a reserved bit (SDM Vol. 2B MOV (control registers)); the model's processor "
        "defines CR4 up to UMIP (bit 11) and reserves the rest",
        "the CPU model (max) implements those bits: the write completes",
        Repro(_cr4_cases, lambda rs: R.completes(rs[0])), explains=U._x_cr4_reserved),
    Deviation(
        "tsc-aux-unimplemented", "RDMSR/WRMSR of IA32_TSC_AUX, RDTSCP's ECX (qemu-system-i386)",
        "IA32_TSC_AUX (0xC0000103) holds 32 bits that RDTSCP returns in ECX; WRMSR with EDX != 0 "
        "is #GP(0) (SDM Vol. 4 Table 2-2, Vol. 2B RDTSCP)",
        "the 32-bit build has no such MSR: RDMSR reads 0, WRMSR is dropped, RDTSCP returns ECX = 0",
        Repro(_tsc_aux_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["eax"] == 0),
        fields=("tsc_aux",), explains=_x_tsc_aux),
    Deviation(
        "rdtsc-host-time", "RDTSC, RDTSCP, RDMSR of IA32_TSC",
        "EDX:EAX = IA32_TSC, the state's time-stamp counter (the model's reading of SDM Vol. 3B "
        "17.17: it does not advance within one instruction)",
        "EDX:EAX derives from host time: it is neither the value written nor the same twice",
        Repro(_rdtsc_cases, _rdtsc_holds), fields=("tsc",),
        explains=lambda o, d: _x_tsc(o, d) or _x_msr_tsc(o, d)),
    Deviation(
        "rdpmc-ud", "RDPMC",
        "reads counter ECX at CPL 0 or with CR4.PCE = 1; #GP(0) for a counter that does not exist "
        "(SDM Vol. 2B RDPMC)", "#UD: TCG implements no performance counters",
        Repro(_rdpmc_cases, lambda rs: R.faults(rs[0], UD)), fields=("pmc0", "pmc1"),
        explains=_x_rdpmc),
    Deviation(
        "transfer-accessed-bit", "far CALL/JMP, RETF, IRETD, INT n: the CS (and SS) they load",
        "loading a segment register sets the descriptor's accessed bit in memory (SDM Vol. 3A "
        "3.4.5.1)", "far transfers load CS and SS without setting the accessed bit in memory",
        Repro(_accessed_cases, _accessed_holds), explains=_x_accessed, trigger=_t_transfer),
    Deviation(
        "transfer-offset-unchecked", "far CALL/JMP through a call gate, RETF, IRETD",
        "#GP(0) when the new EIP lies beyond the new CS limit (SDM Vol. 2A CALL, JMP, RET, IRET)",
        "the transfer completes", Repro(_offset_cases, lambda rs: R.completes(rs[0])),
        explains=_x_offset),
    Deviation(
        "int-offset-unchecked", "INT n, INT3, INTO through a gate whose offset lies beyond the "
        "handler's CS limit", "#GP(0) (SDM Vol. 2A INT n, Operation)",
        "the delivery completes", Repro(_offset_int_cases, lambda rs: R.completes(rs[0])),
        explains=_x_offset),
    Deviation(
        "call-far-offset-error-code", "direct far CALL to an offset beyond the target's CS limit",
        "#GP(0) (SDM Vol. 2A CALL, Operation)", "#GP(selector): the new CS selector as error code",
        Repro(_call_code_cases, lambda rs: R.faults(rs[0], GP, 0x60)), explains=_x_call_code),
    Deviation(
        "call-gate-conforming-rpl", "far CALL through a call gate to conforming code of DPL < CPL",
        "the CPL does not change and CS.RPL := CPL (SDM Vol. 2A CALL, Operation)",
        "CS.RPL := the code segment's DPL (what the catch sees as the CPL, too)",
        Repro(_conforming_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["cs"] == 0x60),
        explains=_x_conforming),
    Deviation(
        "fs-gs-null-kept-on-return", "RETF, IRETD to an outer ring with a null selector in FS or GS",
        "every one of ES, FS, GS, DS holding a null selector becomes 0 (SDM Vol. 2A IRET, RET)",
        "FS and GS holding a null selector keep it, RPL included",
        Repro(_fs_gs_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["gs"] == 2),
        explains=U._x_fs_gs_null),
    Deviation(
        "iret-vm86-any-cpl", "IRETD at CPL > 0 with VM = 1 in the popped EFLAGS",
        "a return to virtual-8086 mode happens only at CPL 0 (SDM Vol. 2A IRET, Operation)",
        "returns to virtual-8086 mode at any CPL",
        Repro(_vm86_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["sysflags"] >> st.VM & 1 == 1),
        explains=U._x_iret_vm86, trigger=_t_vm86, unsafe=True),
    Deviation(
        "sysenter-cs-16-bit", "WRMSR/RDMSR of IA32_SYSENTER_CS (MSR 0x174)",
        "a 64-bit MSR whose bits 15:0 name the ring-0 CS; the model keeps bits 31:0 as written "
        "(SDM Vol. 4 Table 2-2)", "bits 31:16 are dropped (so states holding them are refused)",
        Repro(_sysenter_cs_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["sysenter_cs"] == 0x5678),
        fields=("sysenter_cs",), explains=U._x_sysenter_cs),
    Deviation(
        "ltr-null-accepted", "LTR with a null selector at CPL 0", "#GP(0) (SDM Vol. 2A LTR)",
        "TR is loaded with the null selector", Repro(_ltr_null_cases, lambda rs: R.completes(rs[0])),
        explains=U._x_ltr_null),
    Deviation(
        "cr0-reserved-bits-kept", "MOV CR0 with reserved bits set",
        "reserved bits of CR0[31:0] are ignored and read back as 0 (the model; SDM Vol. 3A 2.5)",
        "stored and read back", Repro(_cr0_cases, lambda rs: R.completes(rs[0])
                                      and R.post(rs[0])["cr0"] & 0x40 != 0),
        fields=("cr0",), explains=U._x_cr0_reserved),
    Deviation(
        "msrs-beyond-the-model", "RDMSR/WRMSR of an MSR the model does not implement",
        "#GP(0) for an MSR the processor does not implement (SDM Vol. 2B RDMSR); the model "
        "implements IA32_TSC, IA32_SYSENTER_* and IA32_TSC_AUX only",
        "TCG implements many more (IA32_APIC_BASE, MTRRs, PAT, ...): the access completes",
        Repro(R.msr_cases, lambda rs: R.completes(rs[0])), explains=U.x_msr_beyond_model),
    Deviation(
        "jmp-gate-target-np-as-gp", "far JMP through a call gate whose code segment is not present",
        "#NP(code segment selector) (SDM Vol. 2A JMP, Operation)", "#GP(code segment selector)",
        Repro(_jmp_np_cases, lambda rs: R.faults(rs[0], GP)), explains=U._x_jmp_gate_np),
    Deviation(
        "iret-vif-vip-dropped", "IRETD at CPL 0 (protected-mode return)",
        "EFLAGS.VIF and VIP are loaded from the popped image at CPL 0 (SDM Vol. 2A IRET)",
        "VIF and VIP keep their values (the test kernel sets them through a virtual-8086 round "
        "trip for that reason)", Repro(_vip_cases, _vip_holds), explains=U._x_iret_vip,
        trigger=_t_vip),
)

DEVIATIONS += harness.entries("qemu")

BY_ID = {d.id: d for d in DEVIATIONS}
assert len(BY_ID) == len(DEVIATIONS), "duplicate deviation id"
