"""Concrete runs of the segment forms (model/isa/segments.py) against a real GDT in memory."""


import pytest
import z3

from pgvirt.model import profiles
from pgvirt.model import state as st
from pgvirt.model.isa import FORMS
from pgvirt.model.isa import segments  # noqa: F401  (registers the forms)
from pgvirt.model.form import REGISTRY
from pgvirt.model.outcome import GP, NP, SS, Fault
from helpers import desc, fault, le, ok

SEGMENT_FORMS = [f for f in FORMS if f.theme == "segments"]

GDT = 0x1000
STACK = 0x8000
ZF = 1 << st.ZF
OTHER_FLAGS = (1 << st.CF) | (1 << st.PF) | (1 << st.AF) | (1 << st.SF) | (1 << st.OF)


# Every descriptor starts with its accessed bit clear, so a load must set it in memory.
TABLE = {
    0x08: desc(type_=0xA, dpl=0),                      # code, execute/read, DPL 0
    0x10: desc(type_=0x2, dpl=0),                      # data, read/write, DPL 0
    0x18: desc(type_=0xA, dpl=3),                      # code, execute/read, DPL 3
    0x20: desc(type_=0x2, dpl=3),                      # data, read/write, DPL 3
    0x28: desc(type_=0xE, dpl=0),                      # conforming readable code, DPL 0
    0x30: desc(type_=0x2, dpl=0, p=0),                 # data, DPL 0, not present
    0x38: desc(type_=0x0, dpl=3),                      # read-only data, DPL 3
    0x40: desc(type_=0x8, dpl=3),                      # execute-only code, DPL 3
    0x48: desc(base=0x3000, limit=0x67, type_=0x9, s=0, dpl=0, g=0, db=0),  # 32-bit TSS, DPL 0
    0x50: desc(type_=0xC, s=0, dpl=3),                 # 32-bit call gate, DPL 3
    0x58: desc(type_=0xE, s=0, dpl=3),                 # 32-bit interrupt gate, DPL 3
    0x60: desc(base=0x5000, limit=0x3F, type_=0x2, s=0, dpl=3, g=0, db=0),  # LDT, DPL 3
    0x68: desc(base=0x00ABCDEF, limit=0x5432, type_=0x2, dpl=3, g=0),        # byte-granular data
    0x70: desc(type_=0x2, dpl=3, p=0),                 # data, DPL 3, not present
    0x78: desc(base=0x3000, limit=0x67, type_=0x9, s=0, dpl=3, g=0, db=0),  # 32-bit TSS, DPL 3
    0x80: desc(limit=0x12345, type_=0x2, dpl=3, g=1),  # page-granular data, DPL 3
}
GDT_LIMIT = 0x88 - 1
OUTSIDE = 0x88  # first selector past the GDT limit


def gdt_mem():
    mem = {}
    for sel, (lo, hi) in TABLE.items():
        for k, b in le(lo, 4).items():
            mem[GDT + sel + k] = b
        for k, b in le(hi, 4).items():
            mem[GDT + sel + 4 + k] = b
    return mem


def machine(cpl=0, mem=None, **regs):
    """A protected-mode state at ``cpl`` with CS/SS flat ring-``cpl`` segments and the GDT above."""
    cs, ss = (0x08, 0x10) if cpl == 0 else (0x1B, 0x23)
    m = gdt_mem()
    m.update(mem or {})
    values = dict(cpl=cpl, cs=cs, ss=ss, esp=STACK, cr0=0x11, gdtr_base=GDT, gdtr_limit=GDT_LIMIT,
                  ss_limit=0xFFFFFFFF, ds_limit=0xFFFFFFFF,
                  cs_attr=0xC09B | (cpl << 5), ss_attr=0xC093 | (cpl << 5), mem=m)
    values.update(regs)
    return values


def run(name, cpl=0, code=None, mem=None, **regs):
    return REGISTRY[name].execute(machine(cpl, mem, **regs), code)


def byte(post, addr) -> int:
    """A memory byte of a concrete post-state, including bytes the form did not touch."""
    return z3.simplify(z3.Select(post.mem, addr)).as_long()


def accessed(state, sel) -> bool:
    return bool(state["mem"][GDT + sel + 5] & 1)


# --- encodings ----------------------------------------------------------------------------------

def test_all_forms_present():
    names = {f.name for f in SEGMENT_FORMS}
    expected = ({f"push_{s}" for s in st.SREGS} | {f"pop_{s}" for s in st.SREGS if s != "cs"}
                | {f"mov_r_{s}" for s in st.SREGS} | {f"mov_m_{s}" for s in st.SREGS}
                | {f"mov_{s}_{k}" for s in st.SREGS if s != "cs" for k in "rm"}
                | {f"{i}_{k}" for i in ("lar", "lsl", "verr", "verw", "arpl") for k in "rm"}
                | {f"l{s}_m" for s in ("ds", "es", "fs", "gs", "ss")})
    o16 = ({f"push_{s}_o16" for s in st.SREGS} | {f"pop_{s}_o16" for s in st.SREGS if s != "cs"}
           | {f"mov_{k}16_{s}" for s in st.SREGS for k in "rm"}
           | {f"mov_{s}_{k}16" for s in st.SREGS if s != "cs" for k in "rm"}
           | {f"{i}_{k}16" for i in ("lar", "lsl") for k in "rm"}
           | {f"{i}_{k}_o16" for i in ("verr", "verw", "arpl") for k in "rm"}
           | {f"l{s}_m16" for s in ("ds", "es", "fs", "gs", "ss")})
    assert names == expected | o16


# --- PUSH / MOV from segment registers ----------------------------------------------------------

@pytest.mark.parametrize("cpl", [0, 3])
def test_push_cs_reveals_cpl_and_keeps_upper_stack_word(cpl):
    mem = {STACK - 2: 0xAA, STACK - 1: 0xBB}
    s = ok(run("push_cs", cpl, mem=mem))
    assert s["esp"] == STACK - 4
    assert s["mem"][STACK - 4] & 3 == cpl
    assert s["mem"][STACK - 4] | s["mem"][STACK - 3] << 8 == (0x08 if cpl == 0 else 0x1B)
    post = REGISTRY["push_cs"].run(st.concrete(machine(cpl, mem))).post
    assert [byte(post, STACK - 2), byte(post, STACK - 1)] == [0xAA, 0xBB]  # a 16-bit move


def test_push_fs_pushes_selector():
    s = ok(run("push_fs", 3, fs=0x2B))
    assert (s["mem"][STACK - 4], s["mem"][STACK - 3]) == (0x2B, 0x00)
    assert s["esp"] == STACK - 4 and s["eip"] == 2


@pytest.mark.parametrize("cpl", [0, 3])
def test_mov_r_cs_zero_extends(cpl):
    s = ok(run("mov_r_cs", cpl, eax=0xFFFFFFFF))
    assert s["eax"] == (0x08 if cpl == 0 else 0x1B)


def test_mov_r_ss_reveals_cpl():
    assert ok(run("mov_r_ss", 3, eax=0xDEADBEEF))["eax"] == 0x23


def test_mov_m_cs_writes_a_word():
    mem = {0x6002: 0x77}
    s = ok(run("mov_m_cs", 3, mem=mem, eax=0x6000))
    assert (s["mem"][0x6000], s["mem"][0x6001]) == (0x1B, 0x00)
    post = REGISTRY["mov_m_cs"].run(st.concrete(machine(3, mem, eax=0x6000))).post
    assert byte(post, 0x6002) == 0x77


# --- segment loads ------------------------------------------------------------------------------

def test_mov_ds_dpl0_data_at_cpl0_loads_cache_and_sets_accessed():
    s = ok(run("mov_ds_r", 0, eax=0x10))
    assert s["ds"] == 0x10
    assert s["ds_base"] == 0 and s["ds_limit"] == 0xFFFFFFFF
    assert s["ds_attr"] & 0xFF == 0x93
    assert accessed(s, 0x10)


def test_mov_ds_dpl0_data_at_cpl3_faults():
    fault(run("mov_ds_r", 3, eax=0x10), GP, 0x10)
    fault(run("mov_ds_r", 3, eax=0x13), GP, 0x10)


def test_mov_ds_rpl_above_dpl_faults_at_cpl0():
    fault(run("mov_ds_r", 0, eax=0x13), GP, 0x10)


def test_mov_ds_user_data_at_cpl3():
    s = ok(run("mov_ds_r", 3, eax=0x6B))
    assert (s["ds"], s["ds_base"], s["ds_limit"]) == (0x6B, 0x00ABCDEF, 0x5432)
    assert accessed(s, 0x68)


def test_mov_ds_null_is_allowed_at_any_cpl():
    s = ok(run("mov_ds_r", 3, eax=0x0003, ds=0x23, ds_base=0x1234, ds_attr=0xF3))
    assert (s["ds"], s["ds_base"], s["ds_limit"], s["ds_attr"]) == (3, 0, 0, 0)


def test_mov_ds_conforming_readable_code_skips_dpl_check():
    s = ok(run("mov_ds_r", 3, eax=0x2B))
    assert s["ds"] == 0x2B


def test_mov_ds_type_limit_and_presence_faults():
    fault(run("mov_ds_r", 3, eax=0x43), GP, 0x40)      # execute-only code
    fault(run("mov_ds_r", 0, eax=0x48), GP, 0x48)      # system descriptor
    fault(run("mov_ds_r", 0, eax=OUTSIDE), GP, OUTSIDE)
    fault(run("mov_ds_r", 0, eax=0x30), NP, 0x30)
    fault(run("mov_ds_r", 3, eax=0x73), NP, 0x70)


def test_mov_ds_through_ldt():
    ldt = {0x5000 + 8 + k: b for k, b in le(desc(type_=0x2, dpl=3)[0], 4).items()}
    ldt.update({0x5000 + 12 + k: b for k, b in le(desc(type_=0x2, dpl=3)[1], 4).items()})
    s = ok(run("mov_fs_r", 3, mem=ldt, eax=0x0F, ldtr=0x60, ldtr_base=0x5000, ldtr_limit=0x3F))
    assert s["fs"] == 0x0F and s["mem"][0x5000 + 8 + 5] & 1
    fault(run("mov_fs_r", 3, mem=ldt, eax=0x0F), GP, 0x0C)  # null LDTR: no LDT to index


def test_mov_ds_memory_operand():
    s = ok(run("mov_ds_m", 3, mem={0x6000: 0x23, 0x6001: 0}, eax=0x6000))
    assert s["ds"] == 0x23


def test_mov_ss_rules():
    s = ok(run("mov_ss_r", 0, eax=0x10))
    assert s["ss"] == 0x10 and accessed(s, 0x10)
    ok(run("mov_ss_r", 3, eax=0x23))
    fault(run("mov_ss_r", 0, eax=0x00), GP, 0)          # null
    fault(run("mov_ss_r", 0, eax=0x13), GP, 0x10)       # RPL != CPL
    fault(run("mov_ss_r", 3, eax=0x13), GP, 0x10)       # DPL 0 at CPL 3
    fault(run("mov_ss_r", 3, eax=0x3B), GP, 0x38)       # read-only data
    fault(run("mov_ss_r", 3, eax=0x1B), GP, 0x18)       # code
    fault(run("mov_ss_r", 3, eax=0x73), SS, 0x70)       # not present: #SS, not #NP


def test_pop_ss_rules():
    stack = {STACK: 0x10, STACK + 1: 0x00, STACK + 2: 0xFF, STACK + 3: 0xFF}
    s = ok(run("pop_ss", 0, mem=stack))
    assert s["ss"] == 0x10 and s["esp"] == STACK + 4 and accessed(s, 0x10)
    fault(run("pop_ss", 3, mem=stack), GP, 0x10)
    fault(run("pop_ss", 0, mem={STACK: 0, STACK + 1: 0}), GP, 0)
    user = {STACK: 0x23, STACK + 1: 0x00}
    s = ok(run("pop_ss", 3, mem=user))
    assert s["ss"] == 0x23 and s["esp"] == STACK + 4


def test_pop_ds_uses_the_low_word_and_rejects_ring0_data_at_cpl3():
    stack = {STACK: 0x2B, STACK + 1: 0x00, STACK + 2: 0x12, STACK + 3: 0x34}
    s = ok(run("pop_gs", 3, mem=stack))
    assert s["gs"] == 0x2B and s["esp"] == STACK + 4
    fault(run("pop_ds", 3, mem={STACK: 0x10, STACK + 1: 0}), GP, 0x10)
    s = ok(run("pop_es", 3, mem={STACK: 0x00, STACK + 1: 0}, es=0x23))
    assert s["es"] == 0 and s["esp"] == STACK + 4


def test_fault_reason_names_the_rule():
    out = run("pop_ds", 3, mem={STACK: 0x10, STACK + 1: 0})
    assert isinstance(out, Fault) and "DPL" in out.reason


# --- LAR / LSL / VERR / VERW --------------------------------------------------------------------

def zf(s):
    return bool(s["flags"] & ZF)


def lar(cpl, sel, name="lar_r", flags=OTHER_FLAGS):
    """LAR EAX, ECX (0F 02 C1) with EAX preset to a marker."""
    code = {"lar_r": bytes.fromhex("0f02c1"), "lsl_r": bytes.fromhex("0f03c1")}[name]
    return ok(run(name, cpl, code=code, ecx=0xFFFF0000 | sel, eax=0xCAFEBABE, flags=flags))


def test_lar_visible_descriptor():
    s = lar(3, 0x23)
    assert zf(s) and s["eax"] == TABLE[0x20][1] & 0x00F0FF00
    assert s["flags"] & OTHER_FLAGS == OTHER_FLAGS


def test_lar_invisible_descriptor_leaves_destination():
    s = lar(3, 0x13)
    assert not zf(s) and s["eax"] == 0xCAFEBABE
    assert s["flags"] & OTHER_FLAGS == OTHER_FLAGS
    s = lar(0, 0x13)   # RPL 3 > DPL 0
    assert not zf(s) and s["eax"] == 0xCAFEBABE
    assert zf(lar(0, 0x10))


def test_lar_conforming_null_and_outside():
    s = lar(3, 0x2B)
    assert zf(s) and s["eax"] == TABLE[0x28][1] & 0x00F0FF00
    s = lar(0, 0x0000, flags=ZF | OTHER_FLAGS)
    assert not zf(s) and s["eax"] == 0xCAFEBABE
    s = lar(0, OUTSIDE, flags=ZF)
    assert not zf(s) and s["eax"] == 0xCAFEBABE


def test_lar_does_not_look_at_present_bit():
    s = lar(3, 0x73)
    assert zf(s) and s["eax"] & 0x8000 == 0


def test_lar_and_lsl_system_types():
    assert zf(lar(3, 0x53)) and not zf(lar(3, 0x53, "lsl_r"))          # call gate
    assert not zf(lar(3, 0x5B)) and not zf(lar(3, 0x5B, "lsl_r"))      # interrupt gate
    assert zf(lar(3, 0x7B)) and zf(lar(3, 0x7B, "lsl_r"))              # TSS, DPL 3
    assert not zf(lar(3, 0x4B)) and zf(lar(0, 0x48, "lsl_r"))          # TSS, DPL 0
    assert zf(lar(3, 0x63)) and zf(lar(3, 0x63, "lsl_r"))              # LDT


def test_lsl_limits():
    assert lar(3, 0x6B, "lsl_r")["eax"] == 0x5432
    assert lar(3, 0x83, "lsl_r")["eax"] == 0x12345FFF
    assert lar(3, 0x7B, "lsl_r")["eax"] == 0x67
    s = lar(3, 0x13, "lsl_r")
    assert not zf(s) and s["eax"] == 0xCAFEBABE


def test_lsl_memory_operand():
    s = ok(run("lsl_m", 3, mem={0x6000: 0x6B, 0x6001: 0}, eax=0x6000))
    assert s["eax"] == 0x5432 and zf(s)


def verify(name, cpl, sel):
    s = ok(run(name, cpl, eax=sel, flags=OTHER_FLAGS | (0 if name.startswith("verr") else ZF)))
    assert s["flags"] & OTHER_FLAGS == OTHER_FLAGS
    return zf(s)


def test_verr():
    assert verify("verr_r", 3, 0x23)             # visible data
    assert not verify("verr_r", 3, 0x13)         # DPL 0 data at CPL 3
    assert verify("verr_r", 0, 0x10)
    assert verify("verr_r", 3, 0x1B)             # readable code
    assert not verify("verr_r", 3, 0x43)         # execute-only code
    assert verify("verr_r", 3, 0x2B)             # conforming code of DPL 0
    assert not verify("verr_r", 0, 0x00)         # null
    assert not verify("verr_r", 0, OUTSIDE)
    assert not verify("verr_r", 0, 0x48)         # TSS
    assert not verify("verr_r", 3, 0x63)         # LDT


def test_verw():
    assert verify("verw_r", 3, 0x23)
    assert not verify("verw_r", 3, 0x13)
    assert not verify("verw_r", 3, 0x3B)         # read-only data
    assert not verify("verw_r", 3, 0x1B)         # code
    assert not verify("verw_r", 3, 0x2B)         # conforming code is never writable
    assert not verify("verw_r", 0, 0x00)
    assert not verify("verw_r", 0, OUTSIDE)


def test_verr_memory_operand():
    s = ok(run("verr_m", 3, mem={0x6000: 0x23, 0x6001: 0}, eax=0x6000))
    assert zf(s)


# --- ARPL ---------------------------------------------------------------------------------------

def test_arpl_adjusts_rpl():
    code = bytes.fromhex("63c8")  # arpl ax, cx
    s = ok(run("arpl_r", 3, code=code, eax=0x12340010, ecx=0x1B, flags=OTHER_FLAGS))
    assert s["eax"] == 0x12340013 and zf(s) and s["flags"] & OTHER_FLAGS == OTHER_FLAGS
    s = ok(run("arpl_r", 3, code=code, eax=0x12340013, ecx=0x18, flags=ZF))
    assert s["eax"] == 0x12340013 and not zf(s)


def test_arpl_memory():
    s = ok(run("arpl_m", 3, code=bytes.fromhex("6308"), mem={0x6000: 0x11, 0x6001: 0x22},
               eax=0x6000, ecx=0x02))
    assert (s["mem"][0x6000], s["mem"][0x6001]) == (0x12, 0x22) and zf(s)


# --- far-pointer loads --------------------------------------------------------------------------

def far_pointer(addr, offset, sel):
    m = {addr + k: b for k, b in le(offset, 4).items()}
    m.update({addr + 4 + k: b for k, b in le(sel, 2).items()})
    return m


def test_lds_loads_pointer():
    code = bytes.fromhex("c518")  # lds ebx, [eax]
    s = ok(run("lds_m", 0, code=code, mem=far_pointer(0x6000, 0x12345678, 0x10), eax=0x6000))
    assert s["ebx"] == 0x12345678 and s["ds"] == 0x10 and accessed(s, 0x10)


def test_lds_ring0_selector_at_cpl3_faults():
    fault(run("lds_m", 3, mem=far_pointer(0x6000, 0x12345678, 0x10), eax=0x6000), GP, 0x10)


def test_lfs_lgs_les_null_selector():
    for name in ("les_m", "lfs_m", "lgs_m"):
        s = ok(run(name, 3, mem=far_pointer(0x6000, 0xAABBCCDD, 0), eax=0x6000))
        assert s["eax"] == 0xAABBCCDD and s[name[1] + "s"] == 0


def test_lss_rules():
    s = ok(run("lss_m", 3, code=bytes.fromhex("0fb220"),  # lss esp, [eax]
               mem=far_pointer(0x6000, 0x9000, 0x23), eax=0x6000))
    assert s["esp"] == 0x9000 and s["ss"] == 0x23
    fault(run("lss_m", 3, mem=far_pointer(0x6000, 0x9000, 0x10), eax=0x6000), GP, 0x10)
    fault(run("lss_m", 0, mem=far_pointer(0x6000, 0x9000, 0), eax=0x6000), GP, 0)


def test_lds_uses_old_ds_base_for_the_pointer():
    s = ok(run("lds_m", 3, mem=far_pointer(0x7000, 0x55, 0x6B), eax=0x6000, ds_base=0x1000))
    assert s["eax"] == 0x55 and s["ds_base"] == 0x00ABCDEF


# --- symbolic ----------------------------------------------------------------------------------

def test_push_cs_stores_the_cpl_in_every_wellformed_state():
    s = st.fresh()
    out = REGISTRY["push_cs"].run(s)
    low = z3.Select(out.post.mem, s.ss_base + s.esp - 4)
    solver = z3.Solver()
    solver.add(profiles.wellformed(s, profiles.PENTIUM), z3.Extract(1, 0, low) != s.cpl)
    assert solver.check() == z3.unsat


def test_verr_is_mode_sensitive_but_monotone():
    """The same state at CPL 0 and at CPL 3: VERR's ZF can differ, but never in favour of CPL 3."""
    s = st.fresh()
    f = REGISTRY["verr_r"]
    k = profiles.with_mode(s, 0, profiles.PENTIUM, False)
    u = profiles.with_mode(s, 3, profiles.PENTIUM, True)
    zk, zu = st.bit(f.run(k).post.flags, st.ZF), st.bit(f.run(u).post.flags, st.ZF)
    wf = z3.And(profiles.wellformed(k, profiles.PENTIUM), profiles.wellformed(u, profiles.PENTIUM))
    solver = z3.Solver()
    solver.add(wf, zk != zu)
    assert solver.check() == z3.sat
    solver = z3.Solver()
    solver.add(wf, zu, z3.Not(zk))
    assert solver.check() == z3.unsat
