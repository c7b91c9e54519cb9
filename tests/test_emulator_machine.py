"""The Unicorn Machine: reaching any model state, running one instruction, reading it back.

Also: the deviation table is still accurate (every reproduction still deviates), and the model
and Unicorn agree on the descriptor-table forms on concrete wellformed states.
"""

import random

import pytest
import z3

from pgvirt.emulator import deviations
from pgvirt.emulator import states as S
from pgvirt.emulator.machine import (NOT_HELD, ImpossibleState, IncompleteRun, Machine,
                                     StateError, UnsupportedState)
from pgvirt.model import isa, profiles
from pgvirt.model import state as st
from pgvirt.model.outcome import DF, GP, UD, Fault, Next

SGDT = bytes.fromhex("0f0100")      # sgdt [eax]
CLI = bytes.fromhex("fa")
HLT = bytes.fromhex("f4")
PUSHFD = bytes.fromhex("9c")
MOV_EAX_CS = bytes.fromhex("8cc8")
NOP = bytes.fromhex("90")


@pytest.fixture(scope="module")
def m():
    return Machine()


def le(state, address, size):
    return int.from_bytes(bytes(state["mem"][address + k] for k in range(size)), "little")


# --- the states helper ---------------------------------------------------------------------------
@pytest.mark.parametrize("cpl", range(4))
def test_flat_state_is_wellformed(cpl):
    s = st.concrete(S.flat_state(cpl))
    solver = z3.Solver()
    solver.add(z3.Not(profiles.wellformed(s, profiles.PENTIUM)))
    assert solver.check() == z3.unsat


def test_flat_state_tables_encode_the_caches():
    s = S.flat_state(3)
    gdt = bytes(s["mem"][S.GDT_BASE + k] for k in range(S.GDT_ENTRIES * 8))
    for seg in st.SREGS:
        index = s[seg] >> 3
        assert gdt[index * 8:index * 8 + 8] == S.descriptor(s[f"{seg}_base"], s[f"{seg}_limit"],
                                                            s[f"{seg}_attr"])
    tss = S.TSS_BASE
    assert le(s, tss + 4, 4) == S.STACK_TOP[0] and le(s, tss + 8, 2) == S.data_selector(0)
    assert le(s, tss + 0x66, 2) > s["tr_limit"]          # no I/O permission bitmap


# --- CPL 3 behaviour the project relies on ---------------------------------------------------------
def test_sgdt_at_cpl3_stores_the_real_gdtr(m):
    s = S.flat_state(3, iopl=0)
    out = m.run(s, SGDT)
    assert isinstance(out, Next)
    assert out.state["cpl"] == 3 and out.state["eip"] == S.CODE + 3
    assert le(out.state, S.DATA, 2) == s["gdtr_limit"]
    assert le(out.state, S.DATA + 2, 4) == S.GDT_BASE


def test_cli_at_cpl3_iopl0_is_gp(m):
    out = m.run(S.flat_state(3, iopl=0), CLI)
    assert isinstance(out, Fault) and out.vector == GP and out.code is None


def test_cli_at_cpl3_iopl3_clears_if(m):
    out = m.run(S.flat_state(3, iopl=3), CLI)
    assert isinstance(out, Next) and not out.state["sysflags"] & (1 << st.IF)


def test_mov_from_cs_shows_rpl3(m):
    out = m.run(S.flat_state(3), MOV_EAX_CS)
    assert isinstance(out, Next) and out.state["eax"] & 3 == 3
    assert out.state["eax"] == S.code_selector(3)


@pytest.mark.parametrize("iopl", range(4))
def test_pushfd_shows_iopl(m, iopl):
    s = S.flat_state(3, iopl=iopl)
    out = m.run(s, PUSHFD)
    assert isinstance(out, Next)
    pushed = le(out.state, s["esp"] - 4, 4)
    assert (pushed >> st.IOPL_LO) & 3 == iopl and pushed & (1 << st.IF)
    assert out.state["esp"] == s["esp"] - 4


def test_hlt_at_cpl3_is_gp_and_halts_at_cpl0(m):
    out = m.run(S.flat_state(3), HLT)
    assert isinstance(out, Fault) and out.vector == GP
    out = m.run(S.flat_state(0), HLT)
    assert isinstance(out, Next) and out.state["halted"] == 1 and out.state["eip"] == S.CODE + 1


@pytest.mark.parametrize("code", ["0f0b", "0fff", "c4c0"])   # UD2, UD0, LES with a register
def test_invalid_opcode_is_ud(m, code):
    out = m.run(S.flat_state(3), bytes.fromhex(code))
    assert isinstance(out, Fault) and out.vector == UD


# --- reaching states -----------------------------------------------------------------------------
@pytest.mark.parametrize("cpl", range(4))
def test_every_cpl_is_reached(m, cpl):
    s = S.flat_state(cpl, iopl=cpl)
    out = m.run(s, NOP)
    assert isinstance(out, Next)
    assert out.state["cpl"] == cpl and out.state["eip"] == S.CODE + 1
    skip = set(NOT_HELD) | {"eip"}
    assert {k: v for k, v in out.state.items() if k not in skip} == \
        {k: v for k, v in s.items() if k not in skip}


def test_stale_cache_and_nonflat_code_segment(m):
    """Caches that disagree with the GDT are reproduced; until/EIP work with CS.base != 0."""
    s = S.flat_state(3, ds_base=0x10000, cs_base=0x100000, cs_limit=0xFFFFF,
                     cs_attr=S.code_attr(3) & ~S.G_BIT)
    s["mem"][0x10000 + S.DATA] = 0xAB
    out = m.run(s, bytes.fromhex("8b00"))                        # mov eax, [eax] via DS
    assert isinstance(out, Next) and out.state["eax"] == 0xAB
    assert out.state["eip"] == S.CODE + 2 and out.state["cs_base"] == 0x100000
    assert m.last.reads == {0x10000 + S.DATA + k for k in range(4)}
    # MOV DS, AX reloads from the GDT: the cache becomes flat again.
    out = m.run(dict(s, eax=S.data_selector(3)), bytes.fromhex("8ed8"))
    assert isinstance(out, Next) and out.state["ds_base"] == 0


def test_ldt_selectors_and_cpl0_far_entry(m):
    s = S.flat_state(0, ds=0x0C, ds_base=0x20000, cs=0x1230, cs_base=0x40000, ss=0x7F0,
                     ss_base=0x100, ldtr=S.LDT_SEL, ldtr_base=S.LDT_BASE, ldtr_limit=0xF)
    out = m.run(s, MOV_EAX_CS)
    assert isinstance(out, Next) and out.state["eax"] == 0x1230
    for name in ("ds", "ds_base", "cs", "cs_base", "ss", "ss_base", "ldtr", "ldtr_base"):
        assert out.state[name] == s[name], name


def random_segments(rng, cpl):
    """A state at ``cpl`` whose six caches are random but loadable: any base (CS.base + EIP
    may wrap), byte or page granular limits, GDT or LDT selectors, null ES..GS, conforming CS,
    read-only, expand-down and readable-code data segments, 16-bit segments."""
    s = S.flat_state(cpl)
    s["mem"] = {}
    for seg in st.SREGS:
        g = rng.random() < 0.5
        if seg == "cs":
            conforming = rng.random() < 0.3
            attr = S.code_attr(rng.randrange(cpl + 1) if conforming else cpl, conforming)
            rpl = cpl
        elif seg == "ss":
            attr, rpl = S.data_attr(cpl), cpl
        elif rng.random() < 0.15:
            s[seg], s[f"{seg}_base"], s[f"{seg}_limit"], s[f"{seg}_attr"] = rng.randrange(4), 0, 0, 0
            continue
        else:
            dpl = rng.randrange(cpl, 4)
            kind = rng.randrange(4)
            attr = [S.data_attr(dpl) & ~0x2, S.data_attr(dpl) | 0x4, S.data_attr(dpl),
                    S.code_attr(dpl, conforming=rng.random() < 0.5)][kind]
            rpl = rng.randrange(4) if attr & 0xC == 0xC else rng.randrange(dpl + 1)
        attr &= ~(0 if rng.random() < 0.5 else S.DB_BIT) & ~(0 if g else S.G_BIT)
        limit = (rng.randrange(1 << 20) << 12 | 0xFFF) if g else rng.randrange(1 << 20)
        sel = rng.randrange(1, 8192) << 3 | rng.randrange(2) << 2 | rpl
        s[seg], s[f"{seg}_base"], s[f"{seg}_limit"], s[f"{seg}_attr"] = \
            sel, rng.randrange(1 << 32), limit, attr
    s["eip"] = rng.randrange(min(s["cs_limit"], 0xFFFFFFF0) + 1)
    return s


def test_random_segment_caches_are_reproduced(m):
    rng = random.Random(11)
    for i in range(300):
        s = random_segments(rng, rng.randrange(4))
        out = m.run(s, NOP)
        assert isinstance(out, Next), (i, out)
        assert out.state["eip"] == (s["eip"] + 1) & 0xFFFFFFFF
        for name in st.SCALARS:
            if name not in NOT_HELD and name != "eip":
                assert out.state[name] == s[name], (i, name)


def test_null_selectors_with_rpl_survive_the_entry(m):
    """IRETD zeroes a null ES/DS with RPL 3 in QEMU; the Machine loads them after it."""
    s = S.flat_state(3, es=3, es_base=0, es_limit=0, es_attr=0, ds=2, ds_base=0, ds_limit=0,
                     ds_attr=0, gs=1, gs_base=0, gs_limit=0, gs_attr=0)
    out = m.run(s, bytes.fromhex("8cd8"))                         # mov eax, ds
    assert isinstance(out, Next) and out.state["eax"] == 2
    assert (out.state["es"], out.state["ds"], out.state["gs"]) == (3, 2, 1)


def test_pages_mapped_on_demand_behave_the_same():
    lazy = Machine(map_all=False)
    assert lazy.memory_mode == "pages mapped on demand"
    assert isinstance(lazy.run(S.flat_state(3, eax=0xFFFFFFFE), SGDT), Next)   # wraps past 4 GiB
    out = lazy.run(S.flat_state(3, eax=0xFFFFFFFE), bytes.fromhex("8b00"))
    assert isinstance(out, Next) and out.state["eax"] == 0
    out = lazy.run(S.flat_state(3, eax=0x7654320), SGDT)
    assert le(out.state, 0x7654322, 4) == S.GDT_BASE


def test_memory_is_zero_unless_the_state_says_otherwise(m):
    m.run(S.flat_state(3, eax=0x123000), SGDT)                   # writes 6 bytes at 0x123000
    s = S.flat_state(3, eax=0x123000)
    out = m.run(s, bytes.fromhex("8b00"))                        # reads them back in a new state
    assert isinstance(out, Next) and out.state["eax"] == 0
    assert out.state["mem"][0x123000] == 0


def test_io_ports_come_from_the_state(m):
    out = m.run(S.flat_state(0, io={0x60: 0x5A, 0x61: 0x11}), bytes.fromhex("e560"))  # in eax, 0x60
    assert isinstance(out, Next) and out.state["eax"] == 0x115A
    out = m.run(S.flat_state(0, eax=0xDEADBEEF), bytes.fromhex("e760"))              # out 0x60, eax
    assert out.state["io"] == {0x60: 0xEF, 0x61: 0xBE, 0x62: 0xAD, 0x63: 0xDE}


def test_exactly_one_instruction_runs(m):
    out = m.run(S.flat_state(3), bytes.fromhex("ebfe"))          # jmp $
    assert isinstance(out, Next) and out.state["eip"] == S.CODE
    out = m.run(S.flat_state(3), bytes.fromhex("eb10"))          # jmp +0x10: lands on zeros
    assert isinstance(out, Next) and out.state["eip"] == S.CODE + 0x12
    assert out.state["mem"] == S.flat_state(3)["mem"]            # ADD [EAX], AL never ran
    out = m.run(S.flat_state(3, ecx=5), bytes.fromhex("f3a4"))  # rep movsb: all iterations
    assert out.state["ecx"] == 0 and out.state["edi"] == S.DATA + 0x205
    with pytest.raises(IncompleteRun):
        Machine(max_iterations=100).run(S.flat_state(3, ecx=1000), bytes.fromhex("f3a4"))


def test_restore_across_many_runs(m):
    """1000 states, faults among them: no sticky #DF, every run independent."""
    rng = random.Random(7)
    for i in range(1000):
        cpl = rng.choice((0, 3))
        s = S.flat_state(cpl, iopl=rng.choice((0, 3)), eax=S.DATA + rng.randrange(0, 0x100))
        code = rng.choice((CLI, SGDT, HLT, NOP, bytes.fromhex("0f0b")))
        out = m.run(s, code)
        if code == CLI:
            want_fault = cpl > (s["sysflags"] >> st.IOPL_LO) & 3
            assert isinstance(out, Fault) == want_fault and (not want_fault or out.vector == GP)
        elif code == HLT:
            assert isinstance(out, Fault) == (cpl == 3)
        elif code == SGDT:
            assert isinstance(out, Next) and le(out.state, s["eax"] + 2, 4) == S.GDT_BASE
        elif code == NOP:
            assert isinstance(out, Next) and out.state["eip"] == S.CODE + 1
        else:
            assert out.vector == UD
        assert not (isinstance(out, Fault) and out.vector == DF), i


# --- states that cannot be put on the Machine ---------------------------------------------------
IMPOSSIBLE = {
    "CPL 3 with CS.RPL 0": dict(cs=S.code_selector(0)),
    "CPL 3 with PE = 0": dict(cr0=0x10),
    "SS DPL differs from CPL": dict(ss_attr=S.data_attr(0)),
    "SS holds code": dict(ss_attr=S.code_attr(3)),
    "null CS": dict(cs=3),
    "limit not expressible": dict(ds_limit=0x1234, ds_attr=S.data_attr(3)),
    "EIP beyond the CS limit": dict(cs_limit=0xFFF, cs_attr=S.code_attr(3) & ~S.G_BIT),
    "accessed bit clear": dict(es_attr=S.data_attr(3, accessed=False)),
    "RPL above DPL": dict(fs=0x13, fs_attr=S.data_attr(0)),
}
UNSUPPORTED = {
    "paging": dict(cr0=0x80000011),
    "virtual-8086": dict(sysflags=1 << st.VM),
    "breakpoints": dict(dr7=0x401),
    "data DPL below CPL": dict(ds=S.data_selector(0), ds_attr=S.data_attr(0)),
}


@pytest.mark.parametrize("what", IMPOSSIBLE)
def test_impossible_state_is_a_clear_error(m, what):
    with pytest.raises(ImpossibleState) as e:
        m.run(S.flat_state(3, **IMPOSSIBLE[what]), NOP)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    assert e.value.__cause__ is None                  # not a Unicorn traceback


@pytest.mark.parametrize("what", UNSUPPORTED)
def test_unsupported_state_is_a_clear_error(m, what):
    with pytest.raises(UnsupportedState) as e:
        m.run(S.flat_state(3, **UNSUPPORTED[what]), NOP)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [dict(eax=-1), dict(cs=0x10000), dict(mem={1 << 32: 0}),
                                 dict(mem={0: 256}), dict(nosuch=1)])
def test_malformed_state_is_a_state_error(m, bad):
    s = S.flat_state(3)
    s.update(bad)
    with pytest.raises(StateError):
        m.run(s, NOP)


def test_machine_still_works_after_errors(m):
    with pytest.raises(StateError):
        m.run(S.flat_state(3, cs=S.code_selector(0)), NOP)
    assert isinstance(m.run(S.flat_state(3), NOP), Next)


# --- the deviation table ---------------------------------------------------------------------
@pytest.mark.parametrize("dev", deviations.DEVIATIONS, ids=lambda d: d.id)
def test_deviation_still_present(m, dev):
    assert dev.reproduce(m), f"Unicorn no longer shows {dev.id}: update emulator/deviations/unicorn.py"
    assert dev.affects and dev.sdm and dev.unicorn and dev.kind in ("semantics", "api")


# --- model versus Unicorn --------------------------------------------------------------------
PSEUDO = (0x1FF).to_bytes(2, "little") + (0x00ABC000).to_bytes(4, "little")
TABLE_CASES = {
    "sgdt_m": {}, "sidt_m": {}, "sldt_m": {}, "sldt_r": {}, "str_m": {}, "str_r": {},
    "smsw_m": {},
    "lgdt_m": {"mem": PSEUDO}, "lidt_m": {"mem": PSEUDO},
    "lldt_r": {"eax": S.LDT_SEL},
    "ltr_r": {"eax": S.TSS_SEL, "available_tss": True, "deviations": ("ltr-cache-not-busy",)},
    "lmsw_r": {"eax": 0x000F},
}


def concrete_case(cpl, case):
    s = S.flat_state(cpl, ldtr=S.LDT_SEL, ldtr_base=S.LDT_BASE, ldtr_limit=0xF)
    if "eax" in case:
        s["eax"] = case["eax"]
    if "mem" in case:
        S.put(s["mem"], S.DATA, case["mem"])
    if case.get("available_tss"):
        # LTR needs an available TSS descriptor; TR itself holds the busy one (state's TR cache).
        S.put(s["mem"], S.GDT_BASE + S.TSS_SEL, S.descriptor(S.TSS_BASE, S.TSS_LIMIT, S.TSS_AVAIL_ATTR))
    return s


def disagreements(model, emu, known=()):
    """Differences, except in NOT_HELD fields and the fields of the ``known`` deviations."""
    if isinstance(model, Fault) or isinstance(emu, Fault):
        same = isinstance(model, Fault) and isinstance(emu, Fault) and model.vector == emu.vector
        return [] if same else [("outcome", str(model), str(emu))]
    skip = set(NOT_HELD).union(*(deviations.BY_ID[d].fields for d in known))
    out = [(k, model.state[k], emu.state[k]) for k in st.SCALARS
           if k not in skip and model.state[k] != emu.state[k]]
    out += [(f"mem[{a:#x}]", v, emu.state["mem"][a]) for a, v in model.state["mem"].items()
            if emu.state["mem"][a] != v]
    return out


@pytest.mark.parametrize("cpl", (0, 3))
@pytest.mark.parametrize("name", TABLE_CASES)
def test_model_and_unicorn_agree(m, name, cpl):
    form = isa.get(name)
    s = concrete_case(cpl, TABLE_CASES[name])
    model = form.execute(s)
    emu = m.run(s, form.bytes, mem=model.state["mem"] if isinstance(model, Next) else ())
    assert disagreements(model, emu, TABLE_CASES[name].get("deviations", ())) == []
    assert isinstance(emu, Fault) == (cpl == 3 and name[0] == "l")   # loads are CPL-0 only


# --- x87 / SSE / AVX registers -------------------------------------------------------------------
def test_fpu_and_vector_registers_round_trip(m):
    s = S.flat_state(3, fpr3=(0x4001 << 64) | 0xC000000000000000, fpr5=(0x3FFF << 64) | (1 << 63),
                     fsw=3 << st.FSW_TOP_LO, ftw=0xA5, fcw=0x37F, mxcsr=0x1F80, fop=0x123,
                     fip=0x1234, fcs=0x1B, fdp=0x5678, fds=0x23,
                     zmm2=(7 << 300) | (5 << 130) | 9, k3=0x55)
    out = m.run(s, NOP)
    assert isinstance(out, Next)
    for k in ("fpr3", "fpr5", "fsw", "ftw", "fcw", "mxcsr", "zmm2", "k3", "fop", "fip", "fcs", "fdp", "fds"):
        assert out.state[k] == s[k], k


def test_fld_pushes_onto_the_physical_register_below_top(m):
    """UC_X86_REG_FPi is physical register R_i: with TOP = 3, FLD ST(0) copies R3 into R2."""
    v = (0x4001 << 64) | 0xC000000000000000
    s = S.flat_state(3, fpr3=v, fsw=3 << st.FSW_TOP_LO, ftw=1 << 3, fcw=0x37F)
    out = m.run(s, bytes.fromhex("d9c0"))
    assert out.state["fpr2"] == v
    assert (out.state["fsw"] >> st.FSW_TOP_LO) & 7 == 2
    assert out.state["ftw"] == (1 << 3) | (1 << 2)


def test_sse_write_changes_xmm_and_carries_the_bits_unicorn_does_not_hold(m):
    """Bits 511:128 of ZMMi are not held on Unicorn (no AVX there): carried unchanged."""
    z = (3 << 400) | (1 << 200) | 1
    s = S.flat_state(3, zmm2=z, cr4=1 << st.CR4_OSFXSR, mxcsr=0x1F80)
    out = m.run(s, bytes.fromhex("0f57d2"))       # xorps xmm2, xmm2
    assert out.state["zmm2"] == z & ~((1 << 128) - 1)
