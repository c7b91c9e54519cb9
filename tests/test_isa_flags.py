"""Concrete runs of the EFLAGS and port-I/O forms (model/isa/flags.py)."""


import pytest
import z3

from pgvirt.model import profiles
from pgvirt.model import state as st
from pgvirt.model.form import REGISTRY
from pgvirt.model.isa import FORMS
from helpers import gp0, le, ok

FLAG_FORMS = [f for f in FORMS if f.theme == "flags"]

STACK = 0x8000
TSS = 0x3000
IOMAP = 0x68            # I/O map base: right after the 104-byte TSS
IF = 1 << st.IF
VIF = 1 << st.VIF
VIP = 1 << st.VIP
PVI = 1 << st.CR4_PVI


def iopl(n):
    return n << st.IOPL_LO


def tss_mem(bitmap=b"", map_base=IOMAP):
    """A TSS at TSS whose I/O map base is ``map_base``, followed by ``bitmap``."""
    mem = {TSS + 0x66 + k: b for k, b in le(map_base, 2).items()}
    for k, b in enumerate(bitmap):
        mem[TSS + map_base + k] = b
    return mem


def machine(cpl=0, sysflags=0, tr_limit=0x67, mem=None, **regs):
    cs, ss = (0x08, 0x10) if cpl == 0 else (0x1B, 0x23)
    values = dict(cpl=cpl, cs=cs, ss=ss, esp=STACK, eip=0x100, cr0=0x11, sysflags=sysflags,
                  ss_limit=0xFFFFFFFF, ds_limit=0xFFFFFFFF, es_limit=0xFFFFFFFF,
                  cs_attr=0xC09B | (cpl << 5), ss_attr=0xC093 | (cpl << 5),
                  tr=0x48, tr_base=TSS, tr_limit=tr_limit, tr_attr=0x8B,
                  mem=mem if mem is not None else tss_mem())
    values.update(regs)
    return values


def run(name, code=None, **kw):
    return REGISTRY[name].execute(machine(**kw), code)


def read(mem, addr, n):
    return sum(mem[addr + k] << (8 * k) for k in range(n))


# --- forms are well made ------------------------------------------------------------------------

def test_flag_forms_registered():
    assert {f.name for f in FLAG_FORMS} == {
        "pushfd", "popfd", "cli", "sti", "in_al_imm8", "in_eax_imm8", "out_imm8_al",
        "out_imm8_eax", "in_al_dx", "in_eax_dx", "out_dx_al", "out_dx_eax",
        "insb", "insd", "outsb", "outsd",
        "pushfw", "popfw", "in_ax_imm8", "out_imm8_ax", "in_ax_dx", "out_dx_ax", "insw", "outsw",
        "rep_insb", "rep_insw", "rep_insd", "rep_outsb", "rep_outsw", "rep_outsd"}


# --- PUSHFD / POPFD ----------------------------------------------------------------------------

@pytest.mark.parametrize("cpl", [0, 3])
def test_pushfd_exposes_if_iopl_and_clears_vm_rf(cpl):
    sysflags = IF | iopl(2) | (1 << st.VM) | (1 << st.RF) | (1 << st.AC) | VIF
    s = ok(run("pushfd", cpl=cpl, sysflags=sysflags, flags=(1 << st.CF) | (1 << st.ZF)))
    assert s["esp"] == STACK - 4
    image = read(s["mem"], STACK - 4, 4)
    assert image == IF | iopl(2) | (1 << st.AC) | VIF | (1 << st.CF) | (1 << st.ZF) | 0x2
    assert s["sysflags"] == sysflags  # PUSHFD changes no flag


def popped(value):
    return {STACK + k: b for k, b in le(value, 4).items()} | tss_mem()


def test_popfd_cpl3_iopl0_drops_if_and_iopl_silently():
    value = IF | iopl(3) | (1 << st.CF) | (1 << st.AC) | (1 << st.NT)
    s = ok(run("popfd", cpl=3, sysflags=0, mem=popped(value)))
    assert s["esp"] == STACK + 4
    assert s["flags"] == 1 << st.CF
    assert s["sysflags"] == (1 << st.AC) | (1 << st.NT)   # IF and IOPL unchanged (0)
    s = ok(run("popfd", cpl=3, sysflags=IF | (1 << st.TF), mem=popped(0)))
    assert s["sysflags"] == IF  # cannot clear IF either; TF cleared


def test_popfd_cpl0_changes_if_and_iopl():
    s = ok(run("popfd", cpl=0, sysflags=0, mem=popped(IF | iopl(3))))
    assert s["sysflags"] == IF | iopl(3)
    s = ok(run("popfd", cpl=0, sysflags=IF | iopl(3), mem=popped(0)))
    assert s["sysflags"] == 0


def test_popfd_cpl3_with_iopl3_changes_if_not_iopl():
    s = ok(run("popfd", cpl=3, sysflags=iopl(3), mem=popped(IF)))
    assert s["sysflags"] == IF | iopl(3)


def test_popfd_cpl1_iopl1_changes_if_keeps_iopl():
    s = ok(run("popfd", cpl=1, sysflags=iopl(1), mem=popped(IF | iopl(0))))
    assert s["sysflags"] == IF | iopl(1)


def test_popfd_keeps_vip_vif_vm_and_clears_rf():
    keep = VIP | VIF
    s = ok(run("popfd", cpl=0, sysflags=keep | (1 << st.RF), mem=popped((1 << st.VM) | (1 << st.RF))))
    assert s["sysflags"] == keep
    s = ok(run("popfd", cpl=0, sysflags=keep, mem=popped(0)))
    assert s["sysflags"] == keep


def test_popfd_never_faults():
    out = REGISTRY["popfd"].run(st.fresh())
    assert z3.is_false(z3.simplify(out.faults))


# --- CLI / STI ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,before,after", [("cli", IF, 0), ("sti", 0, IF)])
def test_cli_sti_at_cpl_le_iopl(name, before, after):
    assert ok(run(name, cpl=0, sysflags=before))["sysflags"] == after
    assert ok(run(name, cpl=3, sysflags=before | iopl(3)))["sysflags"] == after | iopl(3)
    assert ok(run(name, cpl=2, sysflags=before | iopl(2)))["sysflags"] == after | iopl(2)


@pytest.mark.parametrize("name", ["cli", "sti"])
def test_cli_sti_fault_when_cpl_above_iopl(name):
    gp0(run(name, cpl=3, sysflags=IF))
    gp0(run(name, cpl=1, sysflags=IF))
    gp0(run(name, cpl=3, sysflags=iopl(2)))
    gp0(run(name, cpl=1, sysflags=0, cr4=PVI))  # PVI applies at CPL 3 only


def test_cli_under_pvi_clears_vif():
    s = ok(run("cli", cpl=3, sysflags=IF | VIF, cr4=PVI))
    assert s["sysflags"] == IF  # real IF untouched


def test_sti_under_pvi_sets_vif_unless_vip():
    s = ok(run("sti", cpl=3, sysflags=0, cr4=PVI))
    assert s["sysflags"] == VIF
    out = run("sti", cpl=3, sysflags=VIP, cr4=PVI)
    gp0(out)
    assert "VIP" in out.reason
    # With CPL <= IOPL the real IF is set and VIP does not matter.
    assert ok(run("sti", cpl=3, sysflags=VIP | iopl(3), cr4=PVI))["sysflags"] == VIP | iopl(3) | IF


@pytest.mark.parametrize("name", ["cli", "sti"])
def test_cli_sti_fault_under_monitor_host_settings(name):
    p = profiles.PENTIUM
    s = profiles.with_mode(st.concrete(machine(0, sysflags=iopl(3) | IF)), 3, p, host=True)
    out = REGISTRY[name].run(s)
    solver = z3.Solver()
    solver.check()
    gp0(out.concrete(solver.model()))


# --- IN / OUT ----------------------------------------------------------------------------------

PORT_FORMS = {
    # name: (code, port register setup, size, direction)
    "in_al_imm8": ("e460", {}, 1, "in"), "in_eax_imm8": ("e560", {}, 4, "in"),
    "out_imm8_al": ("e660", {}, 1, "out"), "out_imm8_eax": ("e760", {}, 4, "out"),
    "in_al_dx": ("ec", {"edx": 0x60}, 1, "in"), "in_eax_dx": ("ed", {"edx": 0x60}, 4, "in"),
    "out_dx_al": ("ee", {"edx": 0x60}, 1, "out"), "out_dx_eax": ("ef", {"edx": 0x60}, 4, "out"),
    "insb": ("6c", {"edx": 0x60}, 1, "in"), "insd": ("6d", {"edx": 0x60}, 4, "in"),
    "outsb": ("6e", {"edx": 0x60}, 1, "out"), "outsd": ("6f", {"edx": 0x60}, 4, "out"),
}
PORTS = {0x60 + k: 0xA1 + k for k in range(4)}
BUF = 0x9000


def port_run(name, bitmap=None, map_base=IOMAP, tr_limit=None, **kw):
    code, regs, size, _ = PORT_FORMS[name]
    mem = tss_mem(bitmap or b"", map_base) | {BUF + k: 0x51 + k for k in range(4)}
    limit = tr_limit if tr_limit is not None else IOMAP + max(len(bitmap or b""), 1) - 1
    values = dict(regs, eax=0x11223344, edi=BUF, esi=BUF, io=PORTS)
    values.update(kw)
    return REGISTRY[name].execute(machine(tr_limit=limit, mem=mem, **values), bytes.fromhex(code))


def bitmap_with(port, size=1):
    bm = bytearray(0x10) + b"\xff"  # ports 0-127 permitted, then the SDM's trailing 0xFF byte
    for p in range(port, port + size):
        bm[p >> 3] |= 1 << (p & 7)
    return bytes(bm)


CLEAR = bytes(0x10) + b"\xff"


def assert_effect(name, s):
    _, _, size, direction = PORT_FORMS[name]
    if name.startswith("ins"):
        assert read(s["mem"], BUF, size) == read(PORTS, 0x60, size)
        assert s["edi"] == BUF + size
    elif name.startswith("outs"):
        assert read(s["io"], 0x60, size) == read({BUF + k: 0x51 + k for k in range(4)}, BUF, size)
        assert s["esi"] == BUF + size
    elif direction == "in":
        expect = read(PORTS, 0x60, size)
        assert s["eax"] == (expect if size == 4 else (0x11223300 | expect))
    else:
        assert read(s["io"], 0x60, size) == 0x11223344 & ((1 << (8 * size)) - 1)


@pytest.mark.parametrize("name", sorted(PORT_FORMS))
def test_io_at_cpl0(name):
    assert_effect(name, ok(port_run(name, cpl=0)))


@pytest.mark.parametrize("name", sorted(PORT_FORMS))
def test_io_at_cpl3_with_iopl3(name):
    assert_effect(name, ok(port_run(name, cpl=3, sysflags=iopl(3))))


@pytest.mark.parametrize("name", sorted(PORT_FORMS))
def test_io_bitmap_bit_clear_permits(name):
    assert_effect(name, ok(port_run(name, bitmap=CLEAR, cpl=3)))


@pytest.mark.parametrize("name", [n for n in sorted(PORT_FORMS) if PORT_FORMS[n][2] == 1])
def test_io_bitmap_neighbour_bit_does_not_matter(name):
    assert_effect(name, ok(port_run(name, bitmap=bitmap_with(0x61), cpl=3)))


@pytest.mark.parametrize("name", sorted(PORT_FORMS))
def test_io_bitmap_bit_set_faults(name):
    gp0(port_run(name, bitmap=bitmap_with(0x60), cpl=3))
    # Each of the ports a doubleword access touches is checked.
    if PORT_FORMS[name][2] == 4:
        gp0(port_run(name, bitmap=bitmap_with(0x63), cpl=3))


@pytest.mark.parametrize("name", sorted(PORT_FORMS))
def test_io_bitmap_beyond_tss_limit_faults(name):
    # The bitmap byte for port 0x60 is at IOMAP + 12; a limit that ends before it denies access.
    gp0(port_run(name, bitmap=CLEAR, tr_limit=IOMAP + 11, cpl=3))
    # No bitmap at all: the map base lies past the limit, as a monitor arranges it.
    gp0(port_run(name, map_base=0xFFFF, tr_limit=0x67, cpl=3))


@pytest.mark.parametrize("name", sorted(PORT_FORMS))
def test_io_faults_under_monitor_host_settings(name):
    code, regs, _, _ = PORT_FORMS[name]
    p = profiles.PENTIUM
    values = machine(0, sysflags=iopl(3), mem=tss_mem(b"", 0xFFFF), **regs)
    s = profiles.with_mode(st.concrete(values), 3, p, host=True)
    out = REGISTRY[name].run(s, bytes.fromhex(code))
    solver = z3.Solver()
    solver.check()
    gp0(out.concrete(solver.model()))


def test_in_dx_uses_low_16_bits_of_edx():
    s = ok(port_run("in_al_dx", cpl=0, edx=0xABCD0060))
    assert s["eax"] & 0xFF == 0xA1


# --- string I/O ---------------------------------------------------------------------------------

DF = 1 << st.DF


def test_ins_outs_direction_flag():
    s = ok(port_run("insd", cpl=0, flags=DF))
    assert s["edi"] == BUF - 4 and read(s["mem"], BUF, 4) == 0xA4A3A2A1
    s = ok(port_run("outsb", cpl=0, flags=DF))
    assert s["esi"] == BUF - 1 and s["io"][0x60] == 0x51


def test_ins_writes_es_and_outs_reads_overridable_segment():
    s = ok(port_run("insb", cpl=0, es_base=0x100, ds_base=0x200))
    assert s["mem"][0x100 + BUF] == 0xA1
    # A segment prefix does not move INS's destination off ES.
    out = REGISTRY["insb"].execute(machine(0, edx=0x60, edi=BUF, es_base=0x100, fs_base=0x300,
                                           io=PORTS), bytes.fromhex("646c"))
    assert ok(out)["mem"][0x100 + BUF] == 0xA1
    out = REGISTRY["outsb"].execute(machine(0, edx=0x60, esi=BUF, fs_base=0x10,
                                            mem={BUF + 0x10: 0x77}), bytes.fromhex("646e"))
    s = ok(out)
    assert s["io"][0x60] == 0x77 and s["esi"] == BUF + 1


def test_rep_ins_runs_one_iteration_and_stays_on_the_instruction():
    """REP INSB: one iteration per execution; EIP stays until ECX reaches 0 (Exec.repeat)."""
    f = REGISTRY["rep_insb"]
    s = ok(f.execute(machine(0, edx=0x60, edi=BUF, ecx=3, eip=0x100, io=PORTS)))
    assert s["mem"][BUF] == 0xA1 and s["edi"] == BUF + 1 and s["ecx"] == 2 and s["eip"] == 0x100
    s = ok(f.execute(machine(0, edx=0x60, edi=BUF, ecx=1, eip=0x100, io=PORTS)))
    assert s["ecx"] == 0 and s["eip"] == 0x102
    # ECX = 0: nothing is transferred, EIP moves on
    s = ok(f.execute(machine(0, edx=0x60, edi=BUF, ecx=0, eip=0x100, io=PORTS)))
    assert s["ecx"] == 0 and s["edi"] == BUF and s["eip"] == 0x102 and s["mem"].get(BUF, 0) == 0
    assert not f.run(st.fresh()).assumptions


def test_rep_io_checks_permission_even_with_a_zero_count():
    """As Bochs (REP_INSB_YbDX) and QEMU: the I/O check precedes the count test."""
    for name in ("rep_insb", "rep_outsd"):
        gp0(REGISTRY[name].execute(machine(3, edx=0x60, ecx=0)))


def test_rep_ins_with_16_bit_addressing_uses_di_and_cx():
    f = REGISTRY["rep_insw"]
    out = f.execute(machine(0, edx=0x60, edi=0x1234FFFF, ecx=0xABCD0002, io=PORTS),
                    bytes.fromhex("6766f36d"))
    s = ok(out)
    assert s["edi"] == 0x12340001 and s["ecx"] == 0xABCD0001      # DI wraps, CX counts
    assert s["mem"][0xFFFF] == 0xA1 and s["mem"][0x10000] == 0xA2


def test_rep_prefix_is_no_instance_of_the_plain_form_nor_f2_of_the_rep_form():
    from pgvirt.model.encoding import matches
    assert matches(REGISTRY["insb"].enc, bytes.fromhex("f36c")) is None
    assert matches(REGISTRY["rep_insb"].enc, bytes.fromhex("f26c")) is None
    assert matches(REGISTRY["rep_insb"].enc, bytes.fromhex("f26c")) is None
    assert matches(REGISTRY["rep_insb"].enc, bytes.fromhex("f2f36c")) is not None   # last wins


def test_regression_tss_type_read_from_cache_layout():
    """Regression: io_permitted once read the TSS type from bits 11:8 of tr_attr, so no bitmap
    could ever allow a port.  tr_attr keeps descriptor bits 40-55 (type in 3:0)."""
    assert_effect("in_al_dx", ok(port_run("in_al_dx", bitmap=CLEAR, cpl=3)))


