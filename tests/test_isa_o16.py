"""Concrete runs of the 16-bit operand-size system forms, 16-bit gates and REP string forms.

Each test pins a place where 16 bits differ from 32 (SDM Vol. 2 Operation sections): the frame
size, EIP truncation, a register's upper half kept, the 24-bit LGDT base.
"""

import pytest
import z3

from pgvirt.model import state as st
from pgvirt.model.form import REGISTRY
from pgvirt.model.outcome import GP, Fault, Next
from helpers import desc, fault, gate, le, ok

GDT, IDT, TSS = 0x1000, 0x2000, 0x3000
STACK, TSS_ESP0 = 0x8000, 0x9000
EIP = 0x400
IF, AC = 1 << st.IF, 1 << st.AC

GDT_TABLE = {
    0x08: desc(type_=0xA, dpl=0), 0x10: desc(type_=0x2, dpl=0),
    0x18: desc(type_=0xA, dpl=3), 0x20: desc(type_=0x2, dpl=3),
    0x28: desc(base=TSS, limit=0x67, type_=0xB, s=0, g=0, db=0),
    0x30: gate(0x08, 0x5000, 0xC, dpl=3),                      # 32-bit call gate to ring 0
    0x38: gate(0x08, 0x00015678, 0x4, dpl=3),                  # 16-bit call gate to ring 0
    0x40: gate(0x1B, 0x00012345, 0x4, dpl=3),                  # 16-bit call gate, same ring
    0x48: desc(base=0x00ABCDEF, limit=0x5432, type_=0x2, dpl=3, g=0),
}
IDT_TABLE = {0x80: gate(0x08, 0x6000, 0xE, dpl=3),             # 32-bit interrupt gate
             0x90: gate(0x08, 0x00016400, 0x6, dpl=3)}         # 16-bit interrupt gate


def put(mem, addr, value, n=4):
    for k, b in le(value, n).items():
        mem[addr + k] = b


def tables():
    mem = {}
    for sel, (lo, hi) in GDT_TABLE.items():
        put(mem, GDT + sel, lo)
        put(mem, GDT + sel + 4, hi)
    for v, (lo, hi) in IDT_TABLE.items():
        put(mem, IDT + 8 * v, lo)
        put(mem, IDT + 8 * v + 4, hi)
    put(mem, TSS + 4, TSS_ESP0)
    put(mem, TSS + 8, 0x10, 2)
    put(mem, TSS + 0x66, 0x68, 2)        # I/O map base beyond the limit: no bitmap
    return mem


def machine(cpl=3, mem=None, **regs):
    cs, ss = (0x08, 0x10) if cpl == 0 else (0x1B, 0x23)
    m = tables()
    m.update(mem or {})
    attr = lambda code: (0xC09B if code else 0xC093) | (cpl << 5)  # noqa: E731
    values = dict(cpl=cpl, cs=cs, ss=ss, ds=ss, es=ss, esp=STACK, eip=EIP, cr0=0x11,
                  sysflags=IF, gdtr_base=GDT, gdtr_limit=0x4F, idtr_base=IDT, idtr_limit=0x97 * 8,
                  tr=0x28, tr_base=TSS, tr_limit=0x67, tr_attr=0x8B, cs_attr=attr(True),
                  ss_attr=attr(False), ds_attr=attr(False), es_attr=attr(False), mem=m)
    for r in st.SREGS:
        values[f"{r}_limit"] = 0xFFFFFFFF
    values.update(regs)
    return values


def run(name, values, code=None):
    return REGISTRY[name].execute(values, code)


def word(s, a):
    return s["mem"][a] | s["mem"][a + 1] << 8


def dword(s, a):
    return word(s, a) | word(s, a + 2) << 16


# --- segment registers -----------------------------------------------------------------------------

def test_push_sreg_o16_pushes_a_word():
    s = ok(run("push_cs_o16", machine(mem={STACK - 4: 0x77, STACK - 3: 0x77})))
    assert s["esp"] == STACK - 2 and word(s, STACK - 2) == 0x1B
    assert s["mem"].get(STACK - 3, 0x77) == 0x77          # nothing below the word


def test_pop_sreg_o16_pops_a_word_and_checks_the_load():
    s = ok(run("pop_ds_o16", machine(mem={STACK: 0x20, STACK + 1: 0})))
    assert s["esp"] == STACK + 2 and s["ds"] == 0x20
    fault(run("pop_ds_o16", machine(mem={STACK: 0x10, STACK + 1: 0})), GP, 0x10)   # DPL 0


def test_mov_ax_ss_keeps_the_upper_half():
    """tboot's ``mov ax, ss``: 16 bits written; the 32-bit form zero-extends (P6 and later)."""
    assert ok(run("mov_r16_ss", machine(eax=0xAAAA5555)))["eax"] == 0xAAAA0023
    assert ok(run("mov_r_ss", machine(eax=0xAAAA5555)))["eax"] == 0x00000023


def test_mov_sreg_from_r16():
    assert ok(run("mov_ds_r16", machine(eax=0xFFFF0048)))["ds_base"] == 0x00ABCDEF


def test_lar_lsl_r16_write_the_low_word():
    s = ok(run("lar_r16", machine(eax=0xAAAA0048)))
    hi = GDT_TABLE[0x48][1]
    assert s["eax"] == 0xAAAA0000 | (hi & 0xFF00) and s["flags"] & (1 << st.ZF)
    s = ok(run("lsl_r16", machine(eax=0xAAAA0048)))
    assert s["eax"] == 0xAAAA5432


@pytest.mark.parametrize("name,field", [("str_r16", "tr"), ("sldt_r16", "ldtr"),
                                        ("smsw_r16", "cr0")])
def test_store_r16_keeps_the_upper_half(name, field):
    s = ok(run(name, machine(eax=0xBBBB0000)))
    assert s["eax"] == 0xBBBB0000 | (machine().get(field, 0) & 0xFFFF)


def test_store_r16_faults_under_umip():
    out = REGISTRY["str_r16"].execute(machine(cr4=1 << st.CR4_UMIP), features=frozenset({"umip"}))
    fault(out, GP, 0)


def test_lds_m16_reads_offset_word_then_selector():
    mem = {0x7000: 0x34, 0x7001: 0x12, 0x7002: 0x48, 0x7003: 0}
    s = ok(run("lds_m16", machine(mem=mem, eax=0x7000, ebx=0xCCCC0000), bytes.fromhex("66c518")))
    assert s["ebx"] == 0xCCCC1234 and s["ds"] == 0x48


def test_sgdt_o16_stores_the_full_base_and_lgdt_o16_loads_24_bits():
    s = ok(run("sgdt_m_o16", machine(eax=0x7000, gdtr_base=0x12345678)))
    assert dword(s, 0x7002) == 0x12345678               # the current SDM: all 32 bits
    mem = {0x7000: 0xFF, 0x7001: 0, 0x7002: 0x78, 0x7003: 0x56, 0x7004: 0x34, 0x7005: 0x12}
    s = ok(run("lgdt_m_o16", machine(cpl=0, mem=mem, eax=0x7000)))
    assert s["gdtr_base"] == 0x345678 and s["gdtr_limit"] == 0xFF
    assert ok(run("lgdt_m", machine(cpl=0, mem=mem, eax=0x7000)))["gdtr_base"] == 0x12345678


# --- far transfers ----------------------------------------------------------------------------------

def test_far_call_ptr16_direct_pushes_words_and_truncates():
    code = bytes.fromhex("669a") + (0x1234).to_bytes(2, "little") + (0x1B).to_bytes(2, "little")
    s = ok(run("call_far_ptr16", machine(eip=0x12FFF8), code))
    assert (s["eip"], s["cs"], s["esp"]) == (0x1234, 0x1B, STACK - 4)
    assert word(s, STACK - 2) == 0x1B and word(s, STACK - 4) == (0x12FFF8 + 6) & 0xFFFF


def test_far_call_o16_through_a_32_bit_gate_pushes_dwords():
    code = bytes.fromhex("669a") + (0).to_bytes(2, "little") + (0x33).to_bytes(2, "little")
    s = ok(run("call_far_ptr16", machine(), code))
    assert s["cpl"] == 0 and s["eip"] == 0x5000 and s["esp"] == TSS_ESP0 - 16
    assert dword(s, TSS_ESP0 - 4) == 0x23 and dword(s, TSS_ESP0 - 8) == STACK


def test_far_call_through_a_16_bit_gate_is_assumed_away_at_either_operand_size():
    """Word frames through 16-bit call gates stay outside the model (transfers.py says why)."""
    for name, code in (("call_far_ptr", bytes([0x9A]) + bytes(4) + (0x3B).to_bytes(2, "little")),
                       ("call_far_ptr16", bytes.fromhex("669a0000") + (0x3B).to_bytes(2, "little"))):
        out = REGISTRY[name].run(st.concrete(machine()), code)
        assert z3.is_false(z3.simplify(out.assumed)), name


def test_far_jmp_ptr16_and_through_a_16_bit_gate():
    code = bytes.fromhex("66ea") + (0x5060).to_bytes(2, "little") + (0x1B).to_bytes(2, "little")
    s = ok(run("jmp_far_ptr16", machine(), code))
    assert (s["eip"], s["cs"], s["esp"]) == (0x5060, 0x1B, STACK)
    code = bytes.fromhex("66ea") + (0).to_bytes(2, "little") + (0x43).to_bytes(2, "little")
    assert ok(run("jmp_far_ptr16", machine(), code))["eip"] == 0x2345


def test_retf_o16_same_and_outer_ring():
    mem = {}
    put(mem, STACK, 0x1234, 2)
    put(mem, STACK + 2, 0x1B, 2)
    s = ok(run("retf_imm_o16", machine(mem=mem), bytes.fromhex("66ca0400")))
    assert (s["eip"], s["cs"], s["esp"]) == (0x1234, 0x1B, STACK + 8)
    # CPL 0 -> 3: SP and SS words above 4 bytes of parameters; ESP := SP + 4
    mem = {}
    for k, v in enumerate((0x4321, 0x1B, 0xEEEE, 0xEEEE, 0x7000, 0x23)):
        put(mem, STACK + 2 * k, v, 2)
    s = ok(run("retf_imm_o16", machine(cpl=0, mem=mem), bytes.fromhex("66ca0400")))
    assert (s["cpl"], s["eip"], s["ss"], s["esp"]) == (3, 0x4321, 0x23, 0x7004)


def test_iretw_loads_only_the_low_flags_word():
    mem = {}
    for k, v in enumerate((0x2222, 0x08, 0x3002 | (1 << st.CF))):      # IOPL 3, CF
        put(mem, STACK + 2 * k, v, 2)
    s = ok(run("iretw", machine(cpl=0, mem=mem, sysflags=IF | AC)))
    assert s["eip"] == 0x2222 and s["esp"] == STACK + 6
    assert s["sysflags"] & AC and (s["sysflags"] >> st.IOPL_LO) & 3 == 3 and not s["sysflags"] & IF
    assert s["flags"] & (1 << st.CF)


def test_pushfw_popfw():
    s = ok(run("pushfw", machine(sysflags=IF | AC, flags=1)))
    assert s["esp"] == STACK - 2 and word(s, STACK - 2) == IF | 1 | 2
    mem = {STACK: 0x00, STACK + 1: 0x30}                 # IOPL 3, IF 0
    s = ok(run("popfw", machine(mem=mem, sysflags=IF | AC)))
    assert s["esp"] == STACK + 2 and s["sysflags"] == IF | AC      # CPL 3: IOPL, IF dropped


def test_int_through_a_16_bit_interrupt_gate_is_assumed_away():
    out = REGISTRY["int_imm"].run(st.concrete(machine()), bytes.fromhex("cd90"))
    assert z3.is_false(z3.simplify(out.assumed))


# --- port I/O --------------------------------------------------------------------------------------

def test_word_port_io():
    s = ok(run("in_ax_dx", machine(cpl=0, edx=0x60, eax=0xAAAAAAAA, io={0x60: 0x34, 0x61: 0x12})))
    assert s["eax"] == 0xAAAA1234
    s = ok(run("outsw", machine(cpl=0, edx=0x60, esi=0x7000, mem={0x7000: 5, 0x7001: 6})))
    assert s["io"][0x60] == 5 and s["io"][0x61] == 6 and s["esi"] == 0x7002
    fault(run("insw", machine(cpl=3, edx=0x60)), GP, 0)


# --- near transfers and ordinary 16-bit forms --------------------------------------------------------

def test_near_transfers_truncate_eip():
    assert ok(run("jmp_rel8_o16", machine(eip=0x1FFF0), bytes.fromhex("66eb7f")))["eip"] == 0x0072
    s = ok(run("call_rel16", machine(eip=0x1FFF0), bytes.fromhex("66e81000")))
    assert s["eip"] == (0x1FFF0 + 4 + 0x10) & 0xFFFF and word(s, STACK - 2) == 0xFFF4
    mem = {STACK: 0x34, STACK + 1: 0x12}
    assert ok(run("ret_near_o16", machine(mem=mem)))["eip"] == 0x1234
    s = ok(run("jne_rel8_o16", machine(eip=0xFFFE, flags=0), bytes.fromhex("667510")))
    assert s["eip"] == (0xFFFE + 3 + 0x10) & 0xFFFF


def test_alu16_flags_and_upper_half():
    s = ok(run("add_rm16_r16", machine(eax=0x1234FFFF, ecx=1)))
    assert s["eax"] == 0x12340000 and s["flags"] & (1 << st.CF) and s["flags"] & (1 << st.ZF)
    s = ok(run("sub_rm16_imm8", machine(eax=0x00000000), bytes.fromhex("6683e801")))
    assert s["eax"] == 0xFFFF and s["flags"] & (1 << st.CF) and s["flags"] & (1 << st.SF)
    assert ok(run("cwd", machine(eax=0x8000, edx=0x11110000)))["edx"] == 0x1111FFFF
    assert ok(run("cbw", machine(eax=0x99990080)))["eax"] == 0x9999FF80
    s = ok(run("pop_r16", machine(mem={STACK: 0xCD, STACK + 1: 0xAB}, eax=0x55550000)))
    assert s["eax"] == 0x5555ABCD and s["esp"] == STACK + 2


# --- REP string forms ---------------------------------------------------------------------------------

def test_rep_movsd_one_iteration_then_done():
    mem = {0x7000 + k: k + 1 for k in range(8)}
    v = machine(cpl=3, mem=mem, esi=0x7000, edi=0x7100, ecx=2)
    s = ok(run("rep_movsd", v))
    assert (s["ecx"], s["esi"], s["edi"], s["eip"]) == (1, 0x7004, 0x7104, EIP)
    s = ok(run("rep_movsd", {**s, "mem": {**mem, **s["mem"]}}))
    assert (s["ecx"], s["eip"]) == (0, EIP + 2) and dword(s, 0x7104) == 0x08070605


def test_repe_cmpsb_stops_on_a_difference():
    mem = {0x7000: 1, 0x7100: 2}
    s = ok(run("repe_cmpsb", machine(mem=mem, esi=0x7000, edi=0x7100, ecx=5)))
    assert s["ecx"] == 4 and s["eip"] == EIP + 2           # ZF = 0: the loop ends
    mem = {0x7000: 1, 0x7100: 1}
    s = ok(run("repe_cmpsb", machine(mem=mem, esi=0x7000, edi=0x7100, ecx=5)))
    assert s["ecx"] == 4 and s["eip"] == EIP               # equal: once more


def test_repne_scasb_stops_on_a_match():
    s = ok(run("repne_scasb", machine(mem={0x7100: 0x41}, eax=0x41, edi=0x7100, ecx=9)))
    assert s["ecx"] == 8 and s["eip"] == EIP + 2 and s["edi"] == 0x7101


# --- LOCK ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,code,runs", [
    ("add_rm16_r16", "f0660108", True), ("xchg_rm32_r32", "f08708", True),
    ("xchg_rm32_r32", "f087c8", False), ("test_rm32_r32", "f08508", False),
    ("pop_ds_o16", "f0661f", False), ("rep_movsb", "f0f3a4", False),
])
def test_lock(name, code, runs):
    out = run(name, machine(eax=0x7000, ecx=1), bytes.fromhex(code))
    assert isinstance(out, Next) == runs, out
