"""Concrete runs of the CPL-0 system forms (model/isa/system.py): CR/DR moves, MSRs, counters."""


import pytest
import z3

from pgvirt.model import profiles
from pgvirt.model import state as st
from pgvirt.model.form import REGISTRY
from pgvirt.model.isa import FORMS
from pgvirt.model.isa import system
from pgvirt.model.outcome import DB, UD, Fault, Next
from helpers import gp0, ok

SYSTEM_FORMS = [f for f in FORMS if f.theme == "system"]
STACK = 0x8000
TS = 1 << st.CR0_TS


def machine(cpl=0, **regs):
    """Protected mode without paging at ``cpl`` (CR0 = PE|ET), flat CS/SS of that privilege."""
    cs, ss = (0x08, 0x10) if cpl == 0 else (0x1B, 0x23)
    values = dict(cpl=cpl, cs=cs, ss=ss, esp=STACK, eip=0x100, cr0=0x11,
                  ss_limit=0xFFFFFFFF, ds_limit=0xFFFFFFFF,
                  cs_attr=0xC09B | (cpl << 5), ss_attr=0xC093 | (cpl << 5),
                  tr_attr=0x8B, tr_limit=0x67, caches=1, tlb=1)
    values.update(regs)
    return values


def run(name, cpl=0, code=None, features=frozenset(), **regs):
    return REGISTRY[name].execute(machine(cpl, **regs), code, features)


# --- forms are well made ------------------------------------------------------------------------

def test_system_forms_registered():
    names = {f.name for f in SYSTEM_FORMS}
    expected = ({f"mov_r_cr{n}" for n in (0, 2, 3, 4)} | {f"mov_cr{n}_r" for n in (0, 2, 3, 4)}
                | {f"mov_r_dr{n}" for n in range(8)} | {f"mov_dr{n}_r" for n in range(8)}
                | {"clts", "invd", "wbinvd", "invlpg_m", "hlt", "rdmsr", "wrmsr", "rdtsc",
                   "rdtscp", "rdpmc", "cpuid"})
    assert names == expected


# --- CPL-0 instructions -------------------------------------------------------------------------

# Operands that make each CPL-0 form complete at CPL 0.
CPL0_CASES = {
    **{f"mov_r_cr{n}": {} for n in (0, 2, 3, 4)},
    "mov_cr0_r": dict(eax=0x80000011),
    "mov_cr2_r": dict(eax=0x1234),
    "mov_cr3_r": dict(eax=0x5000),
    "mov_cr4_r": dict(eax=0x10),
    **{f"mov_r_dr{n}": {} for n in range(8)},
    **{f"mov_dr{n}_r": dict(eax=0x1) for n in range(8)},
    "clts": dict(cr0=0x11 | TS), "invd": {}, "wbinvd": {}, "invlpg_m": dict(eax=0x4000),
    "hlt": {}, "rdmsr": dict(ecx=st.MSR_TSC), "wrmsr": dict(ecx=st.MSR_SYSENTER_CS, eax=0x8),
}


def test_every_cpl0_form_has_a_case():
    cpl0_only = {f.name for f in SYSTEM_FORMS} - {"rdtsc", "rdtscp", "rdpmc", "cpuid"}
    assert set(CPL0_CASES) == cpl0_only


@pytest.mark.parametrize("name", sorted(CPL0_CASES))
@pytest.mark.parametrize("cpl", [1, 2, 3])
def test_cpl0_forms_fault_outside_ring0(name, cpl):
    gp0(run(name, cpl=cpl, **CPL0_CASES[name]))


@pytest.mark.parametrize("name", sorted(CPL0_CASES))
def test_cpl0_forms_complete_at_ring0(name):
    s = ok(run(name, **CPL0_CASES[name]))
    assert s["eip"] == 0x100 + len(REGISTRY[name].bytes)


@pytest.mark.parametrize("name", sorted(CPL0_CASES))
def test_cpl0_forms_fault_under_monitor_host_settings(name):
    """The CPL-3 state a monitor really runs (pentium profile) faults #GP(0) as well."""
    p = profiles.PENTIUM
    s = profiles.with_mode(st.concrete(machine(0, **CPL0_CASES[name])), 3, p, host=True)
    out = REGISTRY[name].run(s)
    solver = z3.Solver()
    assert solver.check() == z3.sat
    gp0(out.concrete(solver.model()))


# --- control registers -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 2, 3, 4])
def test_mov_from_cr_reads_register(n):
    s = ok(run(f"mov_r_cr{n}", **{f"cr{n}": 0x80000011 if n == 0 else 0x1230 + n, "eax": 7}))
    assert s["eax"] == (0x80000011 if n == 0 else 0x1230 + n)


def test_mov_from_cr_uses_modrm_rm_register():
    s = ok(run("mov_r_cr3", code=bytes.fromhex("0f20df"), cr3=0xABC000))  # mov edi, cr3
    assert s["edi"] == 0xABC000 and s["eax"] == 0


def test_mov_cr0_sets_paging():
    s = ok(run("mov_cr0_r", eax=0x80000011))
    assert s["cr0"] == 0x80000011


def test_mov_cr0_pg_without_pe_faults():
    out = run("mov_cr0_r", eax=0x80000010)
    gp0(out)
    assert "PG" in out.reason


def test_mov_cr0_nw_without_cd_faults():
    out = run("mov_cr0_r", eax=0x20000011)
    gp0(out)
    assert "NW" in out.reason
    assert ok(run("mov_cr0_r", eax=0x60000011))["cr0"] == 0x60000011


def test_mov_cr0_ignores_reserved_bits_and_sets_et():
    s = ok(run("mov_cr0_r", eax=0x1FFA0FC1))
    assert s["cr0"] == (0x1FFA0FC1 & st.CR0_DEFINED) | 0x10


def test_mov_cr0_clearing_pg_flushes_tlb():
    assert ok(run("mov_cr0_r", cr0=0x80000011, eax=0x11))["tlb"] == 0
    assert ok(run("mov_cr0_r", cr0=0x11, eax=0x13))["tlb"] == 1


PDPT = 0x6000


def pdpt(entries):
    mem = {}
    for i, e in enumerate(entries):
        for k in range(8):
            mem[PDPT + 8 * i + k] = (e >> (8 * k)) & 0xFF
    return mem


GOOD_PDPT = pdpt([0x7001, 0, 0x8001, 0xF_FFFF_F019])  # present entries, PWT/PCD and high address
BAD_PDPT = pdpt([0x7001, 0x9003, 0, 0])                # bit 1 reserved in a present entry
HIGH_PDPT = pdpt([0x1_0000_0000_7001, 0, 0, 0])        # address bit 48 is beyond MAXPHYADDR
NOT_PRESENT = pdpt([0xFFFF_FFFF_FFFF_FFFE, 0, 0, 0])   # reserved bits ignored when P = 0


def test_mov_cr0_enabling_pae_paging_checks_pdptes():
    cr4 = 1 << st.CR4_PAE
    assert ok(run("mov_cr0_r", cr4=cr4, cr3=PDPT, mem=GOOD_PDPT, eax=0x80000011))["cr0"] == 0x80000011
    assert isinstance(run("mov_cr0_r", cr4=cr4, cr3=PDPT, mem=NOT_PRESENT, eax=0x80000011), Next)
    for mem in (BAD_PDPT, HIGH_PDPT):
        gp0(run("mov_cr0_r", cr4=cr4, cr3=PDPT, mem=mem, eax=0x80000011))
    # Without PAE the PDPT is not read.
    assert isinstance(run("mov_cr0_r", cr3=PDPT, mem=BAD_PDPT, eax=0x80000011), Next)


def test_mov_cr3_under_pae_paging_checks_new_pdptes():
    on = dict(cr0=0x80000011, cr4=1 << st.CR4_PAE)
    assert ok(run("mov_cr3_r", mem=GOOD_PDPT, eax=PDPT, **on))["cr3"] == PDPT
    gp0(run("mov_cr3_r", mem=BAD_PDPT, eax=PDPT, **on))
    assert ok(run("mov_cr3_r", mem=BAD_PDPT, eax=PDPT))["cr3"] == PDPT  # paging off: no reload


def test_mov_cr3_keeps_low_bits_and_flushes_nonglobal_tlb():
    s = ok(run("mov_cr3_r", eax=0x5018))
    assert s["cr3"] == 0x5018 and s["tlb"] == 0
    assert ok(run("mov_cr3_r", cr4=1 << st.CR4_PGE, eax=0x5000))["tlb"] == 1


def test_mov_cr4_reserved_bits_fault():
    gp0(run("mov_cr4_r", eax=1 << 12))
    gp0(run("mov_cr4_r", eax=1 << 13, features=frozenset({"umip"})))
    assert ok(run("mov_cr4_r", eax=0x7FF))["cr4"] == 0x7FF


def test_mov_cr4_umip_reserved_without_feature():
    umip = 1 << st.CR4_UMIP
    gp0(run("mov_cr4_r", eax=umip))
    assert ok(run("mov_cr4_r", eax=umip, features=frozenset({"umip"})))["cr4"] == umip


def test_mov_cr4_paging_bits_reload_pdptes_and_flush_tlb():
    pae = 1 << st.CR4_PAE
    gp0(run("mov_cr4_r", cr0=0x80000011, cr3=PDPT, mem=BAD_PDPT, eax=pae))
    s = ok(run("mov_cr4_r", cr0=0x80000011, cr3=PDPT, mem=GOOD_PDPT, eax=pae))
    assert s["cr4"] == pae and s["tlb"] == 0
    # TSD does not touch paging: no PDPTE reload, TLB kept.
    s = ok(run("mov_cr4_r", cr0=0x80000011, cr4=pae, cr3=PDPT, mem=BAD_PDPT,
               eax=pae | (1 << st.CR4_TSD)))
    assert s["tlb"] == 1


def test_mov_cr2_writes():
    assert ok(run("mov_cr2_r", code=bytes.fromhex("0f22d3"), ebx=0xDEADBEEF))["cr2"] == 0xDEADBEEF


# --- debug registers ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_dr0_3_round_trip(n):
    assert ok(run(f"mov_dr{n}_r", eax=0xC0001000 + n))[f"dr{n}"] == 0xC0001000 + n
    assert ok(run(f"mov_r_dr{n}", **{f"dr{n}": 0x4321}))["eax"] == 0x4321


def test_dr6_dr7_fixed_bits():
    assert ok(run("mov_dr6_r", eax=0))["dr6"] == 0xFFFF0FF0
    assert ok(run("mov_dr6_r", eax=0xFFFFFFFF))["dr6"] == 0xFFFFEFFF
    assert ok(run("mov_dr7_r", eax=0))["dr7"] == 0x400
    assert ok(run("mov_dr7_r", eax=0xFFFFFFFF))["dr7"] == 0xFFFF27FF


@pytest.mark.parametrize("n,alias", [(4, "dr6"), (5, "dr7")])
def test_dr4_dr5_alias_or_ud(n, alias):
    assert ok(run(f"mov_r_dr{n}", **{alias: 0xFFFF0FF1}))["eax"] == 0xFFFF0FF1
    s = ok(run(f"mov_dr{n}_r", eax=0x3))
    assert s[alias] == (0xFFFF0FF3 if alias == "dr6" else 0x403)
    de = 1 << st.CR4_DE
    for name in (f"mov_r_dr{n}", f"mov_dr{n}_r"):
        out = run(name, cr4=de)
        assert isinstance(out, Fault) and out.vector == UD and out.code is None
        # #UD comes before the privilege check
        out = run(name, cpl=3, cr4=de)
        assert isinstance(out, Fault) and out.vector == UD


@pytest.mark.parametrize("name", [f"mov_r_dr{n}" for n in range(8)] + [f"mov_dr{n}_r" for n in range(8)])
def test_dr7_gd_raises_db(name):
    for cpl in (0, 3):
        out = run(name, cpl=cpl, dr7=0x2400)
        assert isinstance(out, Fault) and out.vector == DB and out.code is None, str(out)


def test_mov_dr_from_other_register():
    assert ok(run("mov_r_dr7", code=bytes.fromhex("0f21fe"), dr7=0x401))["esi"] == 0x401  # mov esi, dr7


# --- other CPL-0 instructions ------------------------------------------------------------------

def test_clts_clears_ts_only():
    assert ok(run("clts", cr0=0x8000003B))["cr0"] == 0x80000033


def test_invd_wbinvd_drop_caches():
    for name in ("invd", "wbinvd"):
        s = ok(run(name, caches=1))
        assert s["caches"] == 0 and s["tlb"] == 1


def test_invlpg_drops_tlb_and_needs_memory_operand():
    s = ok(run("invlpg_m", tlb=1))
    assert s["tlb"] == 0 and s["caches"] == 1
    s = ok(run("invlpg_m", code=bytes.fromhex("0f01bb00100000"), tlb=1))  # invlpg [ebx+0x1000]
    assert s["eip"] == 0x107
    with pytest.raises(Exception):
        REGISTRY["invlpg_m"].decode(bytes.fromhex("0f01f8"))  # mod = 11b is not INVLPG


def test_hlt_sets_halted_and_advances():
    s = ok(run("hlt"))
    assert s["halted"] == 1 and s["eip"] == 0x101


# --- MSRs --------------------------------------------------------------------------------------

MSR_VALUES = dict(tsc=0x1122334455667788, sysenter_cs=0x10, sysenter_esp=0xC0008000,
                  sysenter_eip=0xC0001234, tsc_aux=0x7)


@pytest.mark.parametrize("msr,edx_eax", [
    (0x10, 0x1122334455667788), (0x174, 0x10), (0x175, 0xC0008000), (0x176, 0xC0001234),
    (0xC0000103, 0x7)])
def test_rdmsr_known(msr, edx_eax):
    s = ok(run("rdmsr", ecx=msr, **MSR_VALUES))
    assert (s["edx"] << 32) | s["eax"] == edx_eax


@pytest.mark.parametrize("msr", [0x0, 0x1B, 0x177, 0xC0000080, 0xC0000102])
def test_rdmsr_wrmsr_unknown_fault(msr):
    gp0(run("rdmsr", ecx=msr))
    gp0(run("wrmsr", ecx=msr))


def test_wrmsr_writes():
    assert ok(run("wrmsr", ecx=0x10, edx=0xAB, eax=0xCD))["tsc"] == 0xAB000000CD
    assert ok(run("wrmsr", ecx=0x174, eax=0x8))["sysenter_cs"] == 0x8
    assert ok(run("wrmsr", ecx=0x175, eax=0xC0008000))["sysenter_esp"] == 0xC0008000
    assert ok(run("wrmsr", ecx=0x176, eax=0xC0001000))["sysenter_eip"] == 0xC0001000
    s = ok(run("wrmsr", ecx=0xC0000103, eax=0x5))
    assert s["tsc_aux"] == 0x5 and s["tsc"] == 0


def test_wrmsr_tsc_aux_reserved_high_half():
    gp0(run("wrmsr", ecx=0xC0000103, edx=1, eax=5))


def test_wrmsr_sysenter_high_half_is_a_stated_assumption():
    out = REGISTRY["wrmsr"].run(st.concrete(machine(0, ecx=0x174, edx=1)))
    assert any("SYSENTER" in why for _, why in out.assumptions)
    assert z3.is_false(z3.simplify(out.assumed))
    out = REGISTRY["wrmsr"].run(st.concrete(machine(3, ecx=0x174, edx=1)))
    assert z3.is_true(z3.simplify(out.assumed))  # at CPL 3 it simply faults


def test_msr_access_faults_at_cpl3_for_known_msrs():
    for msr in (0x10, 0x174, 0xC0000103):
        gp0(run("rdmsr", cpl=3, ecx=msr))
        gp0(run("wrmsr", cpl=3, ecx=msr))


# --- time-stamp and performance counters -------------------------------------------------------

TSD = 1 << st.CR4_TSD
PCE = 1 << st.CR4_PCE


@pytest.mark.parametrize("cpl", [0, 1, 3])
def test_rdtsc_tsd_gate(cpl):
    s = ok(run("rdtsc", cpl=cpl, tsc=0x0000000A_0000000B))
    assert (s["edx"], s["eax"]) == (0xA, 0xB)
    if cpl == 0:
        assert ok(run("rdtsc", cr4=TSD, tsc=5))["eax"] == 5
    else:
        gp0(run("rdtsc", cpl=cpl, cr4=TSD))


def test_rdtscp_reads_tsc_aux_and_shares_gate():
    s = ok(run("rdtscp", cpl=3, tsc=0x1_00000002, tsc_aux=0x42, ecx=0x99))
    assert (s["edx"], s["eax"], s["ecx"]) == (1, 2, 0x42)
    gp0(run("rdtscp", cpl=3, cr4=TSD))
    assert ok(run("rdtscp", cr4=TSD, tsc_aux=3))["ecx"] == 3


def test_rdpmc_pce_gate_and_counter_select():
    counters = dict(pmc0=0x1_0000_0002, pmc1=0x3_0000_0004)
    gp0(run("rdpmc", cpl=3, ecx=0, **counters))
    s = ok(run("rdpmc", cpl=3, cr4=PCE, ecx=1, **counters))
    assert (s["edx"], s["eax"]) == (3, 4)
    s = ok(run("rdpmc", cpl=0, ecx=0, **counters))
    assert (s["edx"], s["eax"]) == (1, 2)
    gp0(run("rdpmc", cpl=0, ecx=2, **counters))
    gp0(run("rdpmc", cpl=3, cr4=PCE, ecx=0x40000000, **counters))


# --- CPUID -------------------------------------------------------------------------------------

def test_cpuid_never_faults_and_writes_four_registers():
    out = REGISTRY["cpuid"].run(st.fresh())
    assert z3.is_false(z3.simplify(out.faults))
    assert set(out.effects) == {"eax", "ebx", "ecx", "edx", "eip"}


def test_cpuid_same_in_every_state():
    """Two arbitrary states with equal EAX/ECX (any CPL, CR4, MSRs) get the same answer."""
    a, b = st.fresh("a"), st.fresh("b")
    f = REGISTRY["cpuid"]
    pa, pb = f.run(a).post, f.run(b).post
    solver = z3.Solver()
    solver.add(a.eax == b.eax, a.ecx == b.ecx, a.cpl == 0, b.cpl == 3, a.cr4 != b.cr4)
    solver.add(z3.Or([pa[r] != pb[r] for r in ("eax", "ebx", "ecx", "edx")]))
    assert solver.check() == z3.unsat


def test_cpuid_depends_on_leaf():
    a, b = st.fresh("a"), st.fresh("b")
    f = REGISTRY["cpuid"]
    solver = z3.Solver()
    solver.add(a.eax != b.eax, f.run(a).post.eax != f.run(b).post.eax)
    assert solver.check() == z3.sat


def test_pdpte_reserved_mask():
    assert system.PDPTE_RESERVED == 0xFFFF_FFF0_0000_01E6
