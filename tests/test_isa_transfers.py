"""Concrete runs of the far-transfer forms (model/isa/transfers.py) against real GDT, IDT and TSS
bytes in memory, plus a few symbolic properties the verifier relies on."""


import pytest
import z3

from pgvirt.model import state as st
from pgvirt.model.form import REGISTRY
from pgvirt.model.isa import FORMS
from pgvirt.model.outcome import GP, NP, SS, Fault, Next
from helpers import desc, gate, le

TRANSFER_FORMS = [f for f in FORMS if f.theme == "transfers"]

GDT, IDT, TSS = 0x1000, 0x2000, 0x3000
STACK, TSS_ESP0 = 0x8000, 0x9000
EIP = 0x400
IF = 1 << st.IF
IOPL3 = 3 << st.IOPL_LO
CF = 1 << st.CF


# Accessed bits start clear, so every segment load must set one in memory.
GDT_TABLE = {
    0x08: desc(type_=0xA, dpl=0),                                  # ring-0 code
    0x10: desc(type_=0x2, dpl=0),                                  # ring-0 data
    0x18: desc(type_=0xA, dpl=3),                                  # ring-3 code
    0x20: desc(type_=0x2, dpl=3),                                  # ring-3 data
    0x28: desc(base=TSS, limit=0x67, type_=0xB, s=0, g=0, db=0),   # busy 32-bit TSS
    0x30: gate(0x08, 0x5000, 0xC, dpl=3),                          # call gate to ring 0
    0x38: gate(0x08, 0x5000, 0xC, dpl=0),                          # ring-0-only call gate
    0x40: desc(type_=0xE, dpl=0),                                  # conforming code, DPL 0
    0x48: gate(0x1B, 0x5100, 0xC, dpl=3),                          # call gate to ring-3 code
    0x50: gate(0x28, 0, 0x5, dpl=3),                               # task gate
    0x58: gate(0x08, 0x5000, 0xC, dpl=3, params=2),                # call gate copying 2 dwords
    0x60: desc(type_=0xA, dpl=0, p=0),                             # ring-0 code, not present
    0x68: desc(type_=0x2, dpl=3, p=0),                             # ring-3 data, not present
    0x70: gate(0x1B, 0x00012345, 0x4, dpl=3),                      # 16-bit call gate
    0x78: desc(limit=0x0FFF, type_=0xA, dpl=3, g=0),               # ring-3 code, 4 KiB
}
GDT_LIMIT = 0x80 - 1

IDT_TABLE = {
    0x03: gate(0x08, 0x6300, 0xF, dpl=3),                          # trap gate
    0x04: gate(0x08, 0x6400, 0xE, dpl=3),
    0x80: gate(0x08, 0x6000, 0xE, dpl=3),                          # interrupt gate, user-callable
    0x81: gate(0x08, 0x6100, 0xE, dpl=0),                          # kernel-only
    0x82: gate(0x08, 0x6000, 0xE, dpl=3, p=0),
    0x83: gate(0x40, 0x6200, 0xF, dpl=3),                          # conforming handler
    0x84: gate(0x28, 0, 0x5, dpl=3),                               # task gate
    0x85: gate(0x60, 0x6000, 0xE, dpl=3),                          # handler not present
}
IDT_LIMIT = 0x86 * 8 - 1


def put(mem, addr, value, n=4):
    for k, b in le(value, n).items():
        mem[addr + k] = b


def tables():
    mem = {}
    for base, table in ((GDT, GDT_TABLE), (IDT, IDT_TABLE)):
        for index, (lo, hi) in table.items():
            at = base + (index if base == GDT else index * 8)
            put(mem, at, lo)
            put(mem, at + 4, hi)
    put(mem, TSS + 4, TSS_ESP0)   # ESP0
    put(mem, TSS + 8, 0x10, 2)    # SS0
    return mem


def seg_attr(dpl, code):
    return (0xC09B if code else 0xC093) | (dpl << 5)


def machine(cpl=3, mem=None, **regs):
    """A protected-mode state at ``cpl`` on flat ring-``cpl`` CS/SS/DS/ES, with the tables above."""
    cs, ss = (0x08, 0x10) if cpl == 0 else (0x1B, 0x23)
    m = tables()
    m.update(mem or {})
    values = dict(cpl=cpl, cs=cs, ss=ss, ds=ss, es=ss, esp=STACK, eip=EIP, cr0=0x11,
                  sysflags=IF, gdtr_base=GDT, gdtr_limit=GDT_LIMIT, idtr_base=IDT,
                  idtr_limit=IDT_LIMIT, tr=0x28, tr_base=TSS, tr_limit=0x67, tr_attr=0x8B,
                  cs_attr=seg_attr(cpl, True), ss_attr=seg_attr(cpl, False),
                  ds_attr=seg_attr(cpl, False), es_attr=seg_attr(cpl, False), mem=m)
    for r in st.SREGS:
        values[f"{r}_limit"] = 0xFFFFFFFF
    values.update(regs)
    return values


def run(name, values, code=None):
    return REGISTRY[name].execute(values, code)


def dword(state, addr):
    return sum(state["mem"][addr + k] << (8 * k) for k in range(4))


def accessed(state, sel):
    """The accessed bit of GDT entry ``sel`` after the run."""
    return state["mem"][GDT + (sel & ~7) + 5] & 1


def assumed_away(name, values, code=None):
    """True when the run lies outside the modelled states (an assumption excludes it)."""
    out = REGISTRY[name].run(st.concrete(values), code)
    return z3.is_false(z3.simplify(out.assumed))


def changed(name, values, code=None):
    """Every memory address whose byte the run changes."""
    out = REGISTRY[name].run(st.concrete(values), code)
    after = run(name, values, code).state["mem"]
    addrs = {z3.simplify(a).as_long() for arr, a in out.stores if arr == "mem"}
    return {a for a in addrs if after[a] != values["mem"].get(a, 0)}


def scribbled(values):
    """``values`` with both stacks filled with 0xAA, so every byte a frame stores shows."""
    for lo in (STACK - 32, TSS_ESP0 - 32):
        for a in range(lo, lo + 64):
            values["mem"].setdefault(a, 0xAA)
    return values


def span(lo, hi):
    return set(range(lo, hi))


def far_ptr(opcode, sel, offset):
    return bytes([opcode]) + offset.to_bytes(4, "little") + sel.to_bytes(2, "little")


def ptr_mem(addr, sel, offset):
    m = {}
    put(m, addr, offset)
    put(m, addr + 4, sel, 2)
    return m


# --- the forms' own claims --------------------------------------------------------------------------

def test_every_transfer_form_is_registered():
    assert {f.name for f in TRANSFER_FORMS} == {
        "call_far_ptr", "call_far_m", "jmp_far_ptr", "jmp_far_m", "retf", "retf_imm",
        "int_imm", "int3", "into", "iretd", "sysenter", "sysexit",
        "call_far_ptr16", "call_far_m16", "jmp_far_ptr16", "jmp_far_m16", "retf_o16",
        "retf_imm_o16", "iretw", "syscall", "sysret"}


@pytest.mark.parametrize("form", TRANSFER_FORMS, ids=lambda f: f.name)
def test_every_transfer_can_fault(form):
    out = form.run(st.fresh())
    assert "eip" in out.effects and out.checks


# --- INT n, INT3, INTO ------------------------------------------------------------------------------

def test_int80_through_dpl3_gate_from_ring3_switches_to_the_tss_stack():
    r = run("int_imm", machine(cpl=3, flags=CF))
    assert isinstance(r, Next)
    s = r.state
    assert (s["cpl"], s["cs"], s["eip"]) == (0, 0x08, 0x6000)
    assert (s["ss"], s["esp"]) == (0x10, TSS_ESP0 - 20)
    assert s["ss_attr"] & 0x60 == 0 and s["cs_attr"] & 0x60 == 0
    frame = [dword(s, TSS_ESP0 - 20 + 4 * k) for k in range(5)]
    assert frame == [EIP + 2, 0x1B, 0x202 | IF | CF, STACK, 0x23]
    assert s["sysflags"] & IF == 0             # interrupt gate
    assert accessed(s, 0x08) and accessed(s, 0x10)


def test_int80_through_dpl0_gate_from_ring3_is_gp_with_idt_error_code():
    m = tables()
    lo, hi = gate(0x08, 0x6000, 0xE, dpl=0)
    put(m, IDT + 0x80 * 8, lo)
    put(m, IDT + 0x80 * 8 + 4, hi)
    r = run("int_imm", machine(cpl=3, mem=m))
    assert r == Fault(GP, 0x80 * 8 + 2, r.reason)
    r = run("int_imm", machine(cpl=3), code=bytes([0xCD, 0x81]))
    assert (r.vector, r.code) == (GP, 0x81 * 8 + 2)


def test_int_through_kernel_gate_runs_at_ring0_on_the_same_stack():
    r = run("int_imm", machine(cpl=0), code=bytes([0xCD, 0x81]))
    s = r.state
    assert (s["cpl"], s["cs"], s["eip"], s["ss"], s["esp"]) == (0, 0x08, 0x6100, 0x10, STACK - 12)
    assert [dword(s, STACK - 12 + 4 * k) for k in range(3)] == [EIP + 2, 0x08, 0x202 | IF]
    assert changed("int_imm", scribbled(machine(cpl=0)), bytes([0xCD, 0x81])) == (
        span(STACK - 12, STACK) | {GDT + 0x08 + 5})


def test_int_gate_faults_not_present_and_outside_the_idt():
    assert run("int_imm", machine(), code=bytes([0xCD, 0x82])) == Fault(NP, 0x82 * 8 + 2, "IDT gate not present")
    r = run("int_imm", machine(), code=bytes([0xCD, 0x86]))
    assert (r.vector, r.code) == (GP, 0x86 * 8 + 2)
    r = run("int_imm", machine(), code=bytes([0xCD, 0x85]))
    assert (r.vector, r.code) == (NP, 0x60)


def test_int_to_conforming_handler_stays_in_ring3():
    r = run("int_imm", machine(cpl=3), code=bytes([0xCD, 0x83]))
    s = r.state
    assert (s["cpl"], s["cs"], s["eip"], s["ss"], s["esp"]) == (3, 0x43, 0x6200, 0x23, STACK - 12)
    assert s["sysflags"] & IF                  # trap gate keeps IF


def test_int_through_task_gate_is_assumed_away():
    assert assumed_away("int_imm", machine(), code=bytes([0xCD, 0x84]))
    assert not assumed_away("int_imm", machine())


def test_int3_uses_the_trap_gate_and_keeps_if():
    s = run("int3", machine(cpl=3)).state
    assert (s["cpl"], s["eip"], s["esp"]) == (0, 0x6300, TSS_ESP0 - 20)
    assert dword(s, TSS_ESP0 - 20) == EIP + 1
    assert s["sysflags"] & IF


def test_into_is_a_no_op_without_overflow_and_int4_with_it():
    values = machine(cpl=3)
    s = run("into", values).state
    assert s["eip"] == EIP + 1 and s["cpl"] == 3 and s["esp"] == STACK and s["cs"] == 0x1B
    s = run("into", machine(cpl=3, flags=1 << st.OF)).state
    assert (s["cpl"], s["eip"], s["esp"]) == (0, 0x6400, TSS_ESP0 - 20)
    assert dword(s, TSS_ESP0 - 20) == EIP + 1


# --- far CALL ---------------------------------------------------------------------------------------

def test_far_call_through_call_gate_from_ring3_lands_in_ring0_on_the_tss_stack():
    r = run("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x33, 0xDEAD))
    assert isinstance(r, Next)
    s = r.state
    assert (s["cpl"], s["cs"], s["eip"]) == (0, 0x08, 0x5000)       # the gate's offset, not 0xDEAD
    assert (s["ss"], s["esp"]) == (0x10, TSS_ESP0 - 16)
    frame = [dword(s, TSS_ESP0 - 16 + 4 * k) for k in range(4)]
    assert frame == [EIP + 7, 0x1B, STACK, 0x23]
    assert changed("call_far_ptr", scribbled(machine(cpl=3)), far_ptr(0x9A, 0x33, 0)) == (
        span(TSS_ESP0 - 16, TSS_ESP0) | {GDT + 0x08 + 5, GDT + 0x10 + 5})
    assert s["sysflags"] == IF                                      # a call changes no flag
    assert accessed(s, 0x08) and accessed(s, 0x10)


def test_far_call_m_reads_the_pointer_from_memory():
    m = tables()
    m.update(ptr_mem(0x7000, 0x33, 0))
    s = run("call_far_m", machine(cpl=3, mem=m, eax=0x7000)).state
    assert (s["cpl"], s["cs"], s["eip"], s["esp"]) == (0, 0x08, 0x5000, TSS_ESP0 - 16)
    assert dword(s, TSS_ESP0 - 16) == EIP + 2


def test_far_call_through_ring0_gate_from_ring3_is_gp_on_the_gate():
    r = run("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x3B, 0))
    assert (r.vector, r.code) == (GP, 0x38)
    s = run("call_far_ptr", machine(cpl=0), code=far_ptr(0x9A, 0x38, 0)).state
    assert (s["cpl"], s["cs"], s["eip"], s["ss"], s["esp"]) == (0, 0x08, 0x5000, 0x10, STACK - 8)


def test_far_call_direct_to_ring0_code_from_ring3_is_gp():
    r = run("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x08, 0x5000))
    assert (r.vector, r.code) == (GP, 0x08)


def test_far_call_to_conforming_code_keeps_the_cpl():
    s = run("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x40, 0x5200)).state
    assert (s["cpl"], s["cs"], s["eip"], s["ss"], s["esp"]) == (3, 0x43, 0x5200, 0x23, STACK - 8)
    assert [dword(s, STACK - 8), dword(s, STACK - 4)] == [EIP + 7, 0x1B]
    # the frame and the accessed bit, nothing of the caller's stack above it
    code = far_ptr(0x9A, 0x40, 0x5200)
    assert changed("call_far_ptr", scribbled(machine(cpl=3)), code) == (
        span(STACK - 8, STACK) | {GDT + 0x40 + 5})


def test_far_call_through_same_ring_gate_keeps_the_stack():
    s = run("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x4B, 0)).state
    assert (s["cpl"], s["cs"], s["eip"], s["ss"], s["esp"]) == (3, 0x1B, 0x5100, 0x23, STACK - 8)


def test_far_call_target_limit_and_presence():
    r = run("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x7B, 0x1000))
    assert (r.vector, r.code) == (GP, 0)
    r = run("call_far_ptr", machine(cpl=0), code=far_ptr(0x9A, 0x60, 0))
    assert (r.vector, r.code) == (NP, 0x60)
    r = run("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x00, 0))
    assert (r.vector, r.code) == (GP, 0)


def test_far_call_tss_stack_not_present_is_ss():
    m = tables()
    put(m, TSS + 8, 0x68 & ~3, 2)          # SS0 names a not-present data segment ...
    lo, hi = desc(type_=0x2, dpl=0, p=0)   # ... of DPL 0
    put(m, GDT + 0x68, lo)
    put(m, GDT + 0x6C, hi)
    r = run("call_far_ptr", machine(cpl=3, mem=m), code=far_ptr(0x9A, 0x33, 0))
    assert (r.vector, r.code) == (SS, 0x68)


def test_far_call_task_gate_and_parameter_copy_are_assumed_away():
    assert assumed_away("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x53, 0))
    assert assumed_away("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x5B, 0))
    # a failing check before the task switch is still modelled
    r = run("call_far_ptr", machine(cpl=3), code=far_ptr(0x9A, 0x2B, 0))
    assert (r.vector, r.code) == (GP, 0x28)


# --- far JMP ----------------------------------------------------------------------------------------

def test_far_jmp_same_ring_changes_only_cs_eip():
    s = run("jmp_far_ptr", machine(cpl=3), code=far_ptr(0xEA, 0x1B, 0x700)).state
    assert (s["cpl"], s["cs"], s["eip"], s["esp"], s["ss"]) == (3, 0x1B, 0x700, STACK, 0x23)
    assert accessed(s, 0x18)


def test_far_jmp_through_gate_never_changes_ring():
    r = run("jmp_far_ptr", machine(cpl=3), code=far_ptr(0xEA, 0x33, 0))
    assert (r.vector, r.code) == (GP, 0x08)
    s = run("jmp_far_ptr", machine(cpl=3), code=far_ptr(0xEA, 0x4B, 0)).state
    assert (s["cpl"], s["cs"], s["eip"], s["esp"]) == (3, 0x1B, 0x5100, STACK)


def test_far_jmp_through_16bit_gate_truncates_the_offset():
    s = run("jmp_far_ptr", machine(cpl=3), code=far_ptr(0xEA, 0x73, 0)).state
    assert (s["cs"], s["eip"]) == (0x1B, 0x2345)


def test_far_jmp_m_reads_the_pointer_from_memory():
    m = tables()
    m.update(ptr_mem(0x7000, 0x1B, 0x900))
    s = run("jmp_far_m", machine(cpl=3, mem=m, ebx=0x7000), code=bytes([0xFF, 0x2B])).state
    assert (s["cs"], s["eip"]) == (0x1B, 0x900)


# --- RETF -------------------------------------------------------------------------------------------

def ring0_frame(words, at=TSS_ESP0 - 16):
    m = tables()
    for k, w in enumerate(words):
        put(m, at + 4 * k, w)
    return m


def test_retf_to_ring3_pops_ss_esp_and_nulls_kernel_data_segments():
    m = ring0_frame([0x402, 0x1B, STACK, 0x23])
    values = machine(cpl=0, mem=m, esp=TSS_ESP0 - 16, es=0x23, es_attr=seg_attr(3, False),
                     fs=0x3, fs_attr=0)
    s = run("retf", values).state
    assert (s["cpl"], s["cs"], s["eip"], s["ss"], s["esp"]) == (3, 0x1B, 0x402, 0x23, STACK)
    assert (s["ds"], s["ds_attr"]) == (0, 0)            # ring-0 data: dropped
    assert (s["es"], s["es_attr"]) == (0x23, seg_attr(3, False))
    assert s["fs"] == 0                                  # null stays null, RPL cleared
    assert s["ss_attr"] & 0x60 == 0x60 and accessed(s, 0x18) and accessed(s, 0x20)


def test_retf_imm_releases_parameters_on_both_stacks():
    m = ring0_frame([0x402, 0x1B, 0, 0, STACK, 0x23])
    s = run("retf_imm", machine(cpl=0, mem=m, esp=TSS_ESP0 - 16)).state
    assert (s["cpl"], s["ss"], s["esp"]) == (3, 0x23, STACK + 8)
    m = ring0_frame([0x500, 0x08])
    s = run("retf_imm", machine(cpl=0, mem=m, esp=TSS_ESP0 - 16)).state
    assert (s["cpl"], s["cs"], s["eip"], s["ss"], s["esp"]) == (0, 0x08, 0x500, 0x10, TSS_ESP0)


def test_retf_to_an_inner_ring_is_gp():
    m = {}
    put(m, STACK, 0x500)
    put(m, STACK + 4, 0x08)
    r = run("retf", machine(cpl=3, mem=m))
    assert (r.vector, r.code) == (GP, 0x08)


def test_retf_to_outer_ring_with_absent_stack_is_ss():
    m = ring0_frame([0x402, 0x1B, STACK, 0x6B])
    r = run("retf", machine(cpl=0, mem=m, esp=TSS_ESP0 - 16))
    assert (r.vector, r.code) == (SS, 0x68)


# --- IRETD ------------------------------------------------------------------------------------------

def iret_frame(eflags, cs, ss=None):
    m = {}
    put(m, STACK, 0x444)
    put(m, STACK + 4, cs)
    put(m, STACK + 8, eflags)
    if ss is not None:
        put(m, STACK + 12, 0x7000)
        put(m, STACK + 16, ss)
    return m


def test_iretd_at_ring3_silently_keeps_if_and_iopl():
    values = machine(cpl=3, mem=iret_frame(CF | IOPL3 | 2, 0x1B), sysflags=IF)
    s = run("iretd", values).state
    assert s["sysflags"] & IF                          # IF = 0 in the frame is ignored (CPL > IOPL)
    assert s["sysflags"] & IOPL3 == 0                  # IOPL only changes at CPL 0
    assert s["flags"] & CF                             # arithmetic flags are restored
    assert (s["cpl"], s["cs"], s["eip"], s["esp"]) == (3, 0x1B, 0x444, STACK + 12)


def test_iretd_at_ring0_changes_if_and_iopl():
    values = machine(cpl=0, mem=iret_frame(CF | IOPL3 | 2, 0x08), sysflags=IF)
    s = run("iretd", values).state
    assert s["sysflags"] & IF == 0 and s["sysflags"] & IOPL3 == IOPL3
    assert (s["cpl"], s["cs"], s["eip"], s["esp"]) == (0, 0x08, 0x444, STACK + 12)


def test_iretd_if_follows_iopl_at_ring3():
    values = machine(cpl=3, mem=iret_frame(2, 0x1B), sysflags=IF | IOPL3)
    s = run("iretd", values).state
    assert s["sysflags"] & IF == 0 and s["sysflags"] & IOPL3 == IOPL3


def test_iretd_to_ring3_pops_ss_esp_and_takes_flags_at_cpl0():
    values = machine(cpl=0, mem=iret_frame(IF | IOPL3 | 2, 0x1B, 0x23), sysflags=0)
    s = run("iretd", values).state
    assert (s["cpl"], s["cs"], s["eip"], s["ss"], s["esp"]) == (3, 0x1B, 0x444, 0x23, 0x7000)
    assert s["sysflags"] & (IF | IOPL3) == IF | IOPL3
    assert s["ds"] == 0 and s["es"] == 0


def test_iretd_nested_task_and_v86_return_are_assumed_away():
    assert assumed_away("iretd", machine(cpl=0, mem=iret_frame(2, 0x08), sysflags=1 << st.NT))
    v86 = (1 << st.VM) | 2
    assert assumed_away("iretd", machine(cpl=0, mem=iret_frame(v86, 0x08)))
    s = run("iretd", machine(cpl=3, mem=iret_frame(v86, 0x1B))).state   # ignored at CPL 3
    assert s["sysflags"] & (1 << st.VM) == 0


# --- SYSENTER, SYSEXIT ------------------------------------------------------------------------------

def test_sysenter_enters_ring0_with_flat_segments():
    values = machine(cpl=3, sysenter_cs=0x08, sysenter_esp=0xA000, sysenter_eip=0xC0001000)
    s = run("sysenter", values).state
    assert (s["cpl"], s["cs"], s["ss"], s["esp"], s["eip"]) == (0, 0x08, 0x10, 0xA000, 0xC0001000)
    assert (s["cs_attr"], s["ss_attr"]) == (0xC09B, 0xC093)
    assert (s["cs_base"], s["cs_limit"], s["ss_limit"]) == (0, 0xFFFFFFFF, 0xFFFFFFFF)
    assert s["sysflags"] & IF == 0


def test_sysenter_with_null_sysenter_cs_is_gp0():
    for cs in (0, 3):
        r = run("sysenter", machine(cpl=3, sysenter_cs=cs))
        assert (r.vector, r.code) == (GP, 0)


def test_sysexit_returns_to_ring3_at_edx_on_ecx():
    values = machine(cpl=0, sysenter_cs=0x08, ecx=0x7F00, edx=0x401000)
    s = run("sysexit", values).state
    assert (s["cpl"], s["cs"], s["ss"], s["esp"], s["eip"]) == (3, 0x1B, 0x23, 0x7F00, 0x401000)
    assert (s["cs_attr"], s["ss_attr"]) == (0xC0FB, 0xC0F3)
    assert s["sysflags"] == IF


def test_sysexit_outside_ring0_or_without_sysenter_cs_is_gp0():
    r = run("sysexit", machine(cpl=3, sysenter_cs=0x08))
    assert (r.vector, r.code) == (GP, 0)
    r = run("sysexit", machine(cpl=0, sysenter_cs=0))
    assert (r.vector, r.code) == (GP, 0)


# --- symbolic properties ----------------------------------------------------------------------------

def _solve(*constraints):
    s = z3.Solver()
    s.set("timeout", 20000)
    s.add(*constraints)
    return s.check()


def test_iretd_never_changes_if_or_iopl_at_ring3_with_iopl0():
    s = st.fresh()
    out = REGISTRY["iretd"].run(s)
    keep = (1 << st.IF) | (3 << st.IOPL_LO)
    changed = (out.post.sysflags & keep) != (s.sysflags & keep)
    assert _solve(s.cpl == 3, st.iopl(s) == 0, out.assumed, z3.Not(out.faults), changed) == z3.unsat
    assert _solve(s.cpl == 0, out.assumed, z3.Not(out.faults), changed) == z3.sat


def test_int_through_gate_below_cpl_always_faults_with_the_idt_code():
    s = st.fresh()
    out = REGISTRY["int_imm"].run(s)
    g = st.bit(z3.Select(s.mem, s.idtr_base + 0x80 * 8 + 5), 6)  # gate DPL bit 1 (of byte 5: bits 5-6)
    low_dpl = z3.And(s.cpl == 3, z3.Not(g), z3.ULE(z3.BitVecVal(0x80 * 8 + 7, 16), s.idtr_limit))
    wrong = z3.Or(z3.Not(out.faults), out.code != 0x80 * 8 + 2)
    kinds = z3.Extract(4, 0, z3.Select(s.mem, s.idtr_base + 0x80 * 8 + 5))
    assert _solve(low_dpl, z3.Or(kinds == 0xE, kinds == 0xF), out.assumed, wrong) == z3.unsat
