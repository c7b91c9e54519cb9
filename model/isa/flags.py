"""EFLAGS system-bit instructions and port I/O (SDM Vol. 2B PUSHF/POPF/CLI/STI/IN/OUT; Vol. 1 19).

Protected mode only (EFLAGS.VM = 0 is a model-wide assumption, ``profiles.ASSUMPTIONS``), so the
virtual-8086 rules of these instructions do not appear.  PUSHFD shows the real IF and IOPL at any
CPL; POPFD drops changes to IOPL (CPL > 0) and IF (CPL > IOPL) without a fault.  CLI and STI need
CPL <= IOPL, or change VIF under CR4.PVI at CPL 3.  Port I/O goes through ``checks.io_permitted``
(IOPL, then the TSS I/O permission bitmap); the port space is the ``io`` array.
"""

import z3

from .. import checks
from .. import state as st
from ..form import form
from ..outcome import GP

# --- PUSHFD / POPFD ----------------------------------------------------------------------------

@form("pushfd", enc="9C", bytes="9c", asm="pushfd", cite="SDM Vol. 2B PUSHF/PUSHFD")
def pushfd(x):
    """The image on the stack has VM and RF cleared."""
    x.push(x.eflags() & ~((1 << st.VM) | (1 << st.RF)), 4)


# Bits POPFD may load at any CPL besides the arithmetic flags; IF and IOPL depend on privilege.
_POPF_ALWAYS = (1 << st.TF) | (1 << st.NT) | (1 << st.AC) | (1 << st.ID)
_IOPL_MASK = 3 << st.IOPL_LO


@form("popfd", enc="9D", bytes="9d", asm="popfd", cite="SDM Vol. 2B POPF/POPFD (protected mode)")
def popfd(x):
    """IOPL changes only at CPL 0 and IF only when CPL <= IOPL; other attempts are dropped
    silently.  VIP, VIF and VM keep their values and RF is cleared."""
    loads_iopl = x.cpl == 0
    loads_if = checks.iopl_ok(x)
    v = x.pop(4)
    mask = (z3.BitVecVal(_POPF_ALWAYS, 32)
            | z3.If(loads_iopl, z3.BitVecVal(_IOPL_MASK, 32), z3.BitVecVal(0, 32))
            | z3.If(loads_if, z3.BitVecVal(1 << st.IF, 32), z3.BitVecVal(0, 32)))
    old = x.sysflags
    x.write("flags", v & st.USER_FLAGS_MASK)
    x.write("sysflags", (old & ~mask & ~(1 << st.RF)) | (v & mask))


# --- CLI / STI ---------------------------------------------------------------------------------

def _pvi_mode(x):
    """CLI/STI act on VIF instead: CPL 3 with CR4.PVI = 1 and IOPL < 3 (SDM Vol. 3B 20.4)."""
    return z3.And(x.cpl == 3, st.bit(x.cr4, st.CR4_PVI))


@form("cli", enc="FA", bytes="fa", asm="cli", cite="SDM Vol. 2A CLI; Vol. 3B 20.4")
def cli(x):
    ok = checks.iopl_ok(x)
    x.require(z3.Or(ok, _pvi_mode(x)), GP, 0, "CPL > IOPL and no CR4.PVI at CPL 3")
    with x.when(ok):
        x.set_flag(st.IF, False)
    with x.when(z3.Not(ok)):
        x.set_flag(st.VIF, False)


@form("sti", enc="FB", bytes="fb", asm="sti", cite="SDM Vol. 2B STI; Vol. 3B 20.4")
def sti(x):
    """The one-instruction interrupt shadow after STI is not part of the modelled state."""
    ok = checks.iopl_ok(x)
    x.require(z3.Or(ok, _pvi_mode(x)), GP, 0, "CPL > IOPL and no CR4.PVI at CPL 3")
    with x.when(z3.Not(ok)):
        x.require(z3.Not(st.bit(x.sysflags, st.VIP)), GP, 0,
                  "STI under CR4.PVI with a virtual interrupt pending (VIP = 1)")
        x.set_flag(st.VIF, True)
    with x.when(ok):
        x.set_flag(st.IF, True)


# --- IN / OUT ----------------------------------------------------------------------------------

def _require_io(x, port, size: int) -> None:
    x.require(checks.io_permitted(x, port, size), GP, 0,
              "CPL > IOPL and the TSS I/O bitmap does not permit the port")


def _imm_port(x):
    return z3.BitVecVal(x.d.imm, 16)


def _dx_port(x):
    return z3.Extract(15, 0, x.edx)


def _in(x, port, size: int) -> None:
    _require_io(x, port, size)
    x.set_gpr(0, size, x.load(port, size, array="io"))


def _out(x, port, size: int) -> None:
    _require_io(x, port, size)
    x.store(port, size, x.gpr(0, size), array="io")


@form("in_al_imm8", enc="E4 ib", bytes="e460", asm="in al, 0x60", cite="SDM Vol. 2A IN; Vol. 1 19.5")
def in_al_imm8(x):
    _in(x, _imm_port(x), 1)


@form("in_eax_imm8", enc="E5 ib", bytes="e560", asm="in eax, 0x60", cite="SDM Vol. 2A IN; Vol. 1 19.5")
def in_eax_imm8(x):
    _in(x, _imm_port(x), 4)


@form("out_imm8_al", enc="E6 ib", bytes="e660", asm="out 0x60, al", cite="SDM Vol. 2B OUT; Vol. 1 19.5")
def out_imm8_al(x):
    _out(x, _imm_port(x), 1)


@form("out_imm8_eax", enc="E7 ib", bytes="e760", asm="out 0x60, eax", cite="SDM Vol. 2B OUT; Vol. 1 19.5")
def out_imm8_eax(x):
    _out(x, _imm_port(x), 4)


@form("in_al_dx", enc="EC", bytes="ec", asm="in al, dx", cite="SDM Vol. 2A IN; Vol. 1 19.5")
def in_al_dx(x):
    _in(x, _dx_port(x), 1)


@form("in_eax_dx", enc="ED", bytes="ed", asm="in eax, dx", cite="SDM Vol. 2A IN; Vol. 1 19.5")
def in_eax_dx(x):
    _in(x, _dx_port(x), 4)


@form("out_dx_al", enc="EE", bytes="ee", asm="out dx, al", cite="SDM Vol. 2B OUT; Vol. 1 19.5")
def out_dx_al(x):
    _out(x, _dx_port(x), 1)


@form("out_dx_eax", enc="EF", bytes="ef", asm="out dx, eax", cite="SDM Vol. 2B OUT; Vol. 1 19.5")
def out_dx_eax(x):
    _out(x, _dx_port(x), 4)


# --- INS / OUTS --------------------------------------------------------------------------------

def _step(x, size: int):
    """The index register moves by the operand size, down when DF = 1."""
    return z3.If(st.bit(x.flags, st.DF), z3.BitVecVal(-size, 32), z3.BitVecVal(size, 32))


def _one_iteration(x) -> None:
    """A REP prefix is modelled for a single iteration only: ECX = 1 on entry, 0 after."""
    if x.d.rep is not None:
        x.assume(x.ecx == 1, "REP INS/OUTS is modelled for ECX = 1 only")
        x.write("ecx", 0)


def _ins(x, size: int) -> None:
    """The destination is always ES:EDI; a segment prefix does not apply to it."""
    port = _dx_port(x)
    _require_io(x, port, size)
    _one_iteration(x)
    edi = x.edi
    x.seg_store("es", x.es_base + edi, size, x.load(port, size, array="io"))
    x.write("edi", edi + _step(x, size))


def _outs(x, size: int) -> None:
    port = _dx_port(x)
    _require_io(x, port, size)
    _one_iteration(x)
    esi = x.esi
    x.store(port, size, x.seg_load(x.d.seg or "ds", x.seg_base(x.d.seg or "ds") + esi, size), array="io")
    x.write("esi", esi + _step(x, size))


@form("insb", enc="6C rep", bytes="6c", asm="insb byte ptr es:[edi], dx",
      cite="SDM Vol. 2A INS/INSB/INSW/INSD; Vol. 1 19.5")
def insb(x):
    _ins(x, 1)


@form("insd", enc="6D rep", bytes="6d", asm="insd dword ptr es:[edi], dx",
      cite="SDM Vol. 2A INS/INSB/INSW/INSD; Vol. 1 19.5")
def insd(x):
    _ins(x, 4)


@form("outsb", enc="6E rep", bytes="6e", asm="outsb dx, byte ptr [esi]",
      cite="SDM Vol. 2B OUTS/OUTSB/OUTSW/OUTSD; Vol. 1 19.5")
def outsb(x):
    _outs(x, 1)


@form("outsd", enc="6F rep", bytes="6f", asm="outsd dx, dword ptr [esi]",
      cite="SDM Vol. 2B OUTS/OUTSB/OUTSW/OUTSD; Vol. 1 19.5")
def outsd(x):
    _outs(x, 4)
