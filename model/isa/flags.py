"""EFLAGS system-bit instructions and port I/O (SDM Vol. 2B PUSHF/POPF/CLI/STI/IN/OUT; Vol. 1 19).

Protected mode only (EFLAGS.VM = 0 is a model-wide assumption, ``profiles.ASSUMPTIONS``), so the
virtual-8086 rules of these instructions do not appear.  PUSHFD shows the real IF and IOPL at any
CPL; POPF drops changes to IOPL (CPL > 0) and IF (CPL > IOPL) without a fault, with 16- and
32-bit operand size alike.  CLI and STI need
CPL <= IOPL, or change VIF under CR4.PVI at CPL 3.  Port I/O goes through ``checks.io_permitted``
(IOPL, then the TSS I/O permission bitmap); the port space is the ``io`` array.
"""

import z3

from .. import checks
from .. import state as st
from ..form import form
from ..outcome import GP

# --- PUSHF / POPF ------------------------------------------------------------------------------

@form("pushfd", enc="o32 9C", bytes="9c", asm="pushfd", cite="SDM Vol. 2B PUSHF/PUSHFD")
def pushfd(x):
    """The image on the stack has VM and RF cleared."""
    checks.vmexit(x, svm="pushf", what="PUSHFD")
    x.push(x.eflags() & ~((1 << st.VM) | (1 << st.RF)), 4)


@form("pushfw", enc="o16 9C", bytes="669c", asm="pushf", cite="SDM Vol. 2B PUSHF/PUSHFD")
def pushfw(x):
    """16-bit operand size: the low word of EFLAGS (IF and IOPL in it), ESP down by 2."""
    checks.vmexit(x, svm="pushf", what="PUSHF")
    x.push(z3.Extract(15, 0, x.eflags()), 2)


# Bits POPF may load at any CPL besides the arithmetic flags; IF and IOPL depend on privilege.
_POPF_ALWAYS = (1 << st.TF) | (1 << st.NT) | (1 << st.AC) | (1 << st.ID)
_IOPL_MASK = 3 << st.IOPL_LO


def _popf(x, size: int) -> None:
    """IOPL changes only at CPL 0 and IF only when CPL <= IOPL; other attempts are dropped
    silently (SDM Vol. 2B POPF, protected mode).  With 32-bit operand size VIP, VIF and VM keep
    their values and RF is cleared; with 16-bit only EFLAGS[15:0] is loaded, the upper word
    (AC, ID, RF, VM, VIF, VIP) is untouched."""
    checks.vmexit(x, svm="popf", what="POPF")
    loads_iopl = x.cpl == 0
    loads_if = checks.iopl_ok(x)
    v = z3.ZeroExt(32 - 8 * size, x.pop(size))
    always = _POPF_ALWAYS if size == 4 else _POPF_ALWAYS & 0xFFFF
    mask = (z3.BitVecVal(always, 32)
            | z3.If(loads_iopl, z3.BitVecVal(_IOPL_MASK, 32), z3.BitVecVal(0, 32))
            | z3.If(loads_if, z3.BitVecVal(1 << st.IF, 32), z3.BitVecVal(0, 32)))
    old = x.sysflags
    cleared = ~mask & ~(1 << st.RF) if size == 4 else ~mask
    x.write("flags", v & st.USER_FLAGS_MASK)
    x.write("sysflags", (old & cleared) | (v & mask))


@form("popfd", enc="o32 9D", bytes="9d", asm="popfd", cite="SDM Vol. 2B POPF/POPFD (protected mode)")
def popfd(x):
    _popf(x, 4)


@form("popfw", enc="o16 9D", bytes="669d", asm="popf", cite="SDM Vol. 2B POPF/POPFD (protected mode)")
def popfw(x):
    _popf(x, 2)


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
    """The IOPL and TSS I/O-bitmap #GP comes before the I/O exit (SDM Vol. 3C 25.1.1)."""
    x.require(checks.io_permitted(x, port, size), GP, 0,
              "CPL > IOPL and the TSS I/O bitmap does not permit the port")
    checks.io_exit(x, port, size, x.form.mnemonic)


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


_IN, _OUT = "SDM Vol. 2A IN; Vol. 1 19.5", "SDM Vol. 2B OUT; Vol. 1 19.5"


@form("in_al_imm8", enc="E4 ib", bytes="e460", asm="in al, 0x60", cite=_IN)
def in_al_imm8(x):
    _in(x, _imm_port(x), 1)


@form("in_ax_imm8", enc="o16 E5 ib", bytes="66e560", asm="in ax, 0x60", cite=_IN)
def in_ax_imm8(x):
    _in(x, _imm_port(x), 2)


@form("in_eax_imm8", enc="o32 E5 ib", bytes="e560", asm="in eax, 0x60", cite=_IN)
def in_eax_imm8(x):
    _in(x, _imm_port(x), 4)


@form("out_imm8_al", enc="E6 ib", bytes="e660", asm="out 0x60, al", cite=_OUT)
def out_imm8_al(x):
    _out(x, _imm_port(x), 1)


@form("out_imm8_ax", enc="o16 E7 ib", bytes="66e760", asm="out 0x60, ax", cite=_OUT)
def out_imm8_ax(x):
    _out(x, _imm_port(x), 2)


@form("out_imm8_eax", enc="o32 E7 ib", bytes="e760", asm="out 0x60, eax", cite=_OUT)
def out_imm8_eax(x):
    _out(x, _imm_port(x), 4)


@form("in_al_dx", enc="EC", bytes="ec", asm="in al, dx", cite=_IN)
def in_al_dx(x):
    _in(x, _dx_port(x), 1)


@form("in_ax_dx", enc="o16 ED", bytes="66ed", asm="in ax, dx", cite=_IN)
def in_ax_dx(x):
    _in(x, _dx_port(x), 2)


@form("in_eax_dx", enc="o32 ED", bytes="ed", asm="in eax, dx", cite=_IN)
def in_eax_dx(x):
    _in(x, _dx_port(x), 4)


@form("out_dx_al", enc="EE", bytes="ee", asm="out dx, al", cite=_OUT)
def out_dx_al(x):
    _out(x, _dx_port(x), 1)


@form("out_dx_ax", enc="o16 EF", bytes="66ef", asm="out dx, ax", cite=_OUT)
def out_dx_ax(x):
    _out(x, _dx_port(x), 2)


@form("out_dx_eax", enc="o32 EF", bytes="ef", asm="out dx, eax", cite=_OUT)
def out_dx_eax(x):
    _out(x, _dx_port(x), 4)


# --- INS / OUTS ----------------------------------------------------------------------------------

def _step(x, size: int):
    """The index register moves by the operand size, down when DF = 1."""
    return z3.If(st.bit(x.flags, st.DF), z3.BitVecVal(-size, 32), z3.BitVecVal(size, 32))


def _ins_body(x, port, size: int) -> None:
    """ES:(E)DI := port; the destination is always ES, a segment prefix does not apply to it."""
    di = x.areg(7)
    x.seg_store("es", x.es_base + di, size, x.load(port, size, array="io"))
    x.set_areg(7, di + _step(x, size))


def _outs_body(x, port, size: int) -> None:
    si = x.areg(6)
    seg = x.d.seg or "ds"
    x.store(port, size, x.seg_load(seg, x.seg_base(seg) + si, size), array="io")
    x.set_areg(6, si + _step(x, size))


def _ins(x, size: int, rep: bool = False) -> None:
    """INS, and with REP one iteration of it (``Exec.repeat``).  The I/O permission check comes
    first, before the count is looked at: Bochs (REP_INSB_YbDX) and QEMU (gen_check_io before
    gen_repz) raise #GP(0) even with (E)CX = 0."""
    port = _dx_port(x)
    _require_io(x, port, size)
    if rep:
        x.repeat(lambda: _ins_body(x, port, size))
    else:
        _ins_body(x, port, size)


def _outs(x, size: int, rep: bool = False) -> None:
    port = _dx_port(x)
    _require_io(x, port, size)
    if rep:
        x.repeat(lambda: _outs_body(x, port, size))
    else:
        _outs_body(x, port, size)


_INS = "SDM Vol. 2A INS/INSB/INSW/INSD; Vol. 1 19.5"
_OUTS = "SDM Vol. 2B OUTS/OUTSB/OUTSW/OUTSD; Vol. 1 19.5"
_REP = "; Vol. 2B REP"


@form("insb", enc="6C addr", bytes="6c", asm="insb byte ptr es:[edi], dx", cite=_INS)
def insb(x):
    _ins(x, 1)


@form("insw", enc="o16 6D addr", bytes="666d", asm="insw word ptr es:[edi], dx", cite=_INS)
def insw(x):
    _ins(x, 2)


@form("insd", enc="o32 6D addr", bytes="6d", asm="insd dword ptr es:[edi], dx", cite=_INS)
def insd(x):
    _ins(x, 4)


@form("outsb", enc="6E addr", bytes="6e", asm="outsb dx, byte ptr [esi]", cite=_OUTS)
def outsb(x):
    _outs(x, 1)


@form("outsw", enc="o16 6F addr", bytes="666f", asm="outsw dx, word ptr [esi]", cite=_OUTS)
def outsw(x):
    _outs(x, 2)


@form("outsd", enc="o32 6F addr", bytes="6f", asm="outsd dx, dword ptr [esi]", cite=_OUTS)
def outsd(x):
    _outs(x, 4)


@form("rep_insb", enc="F3 6C addr", bytes="f36c", asm="rep insb byte ptr es:[edi], dx",
      cite=_INS + _REP)
def rep_insb(x):
    _ins(x, 1, rep=True)


@form("rep_insw", enc="o16 F3 6D addr", bytes="66f36d", asm="rep insw word ptr es:[edi], dx",
      cite=_INS + _REP)
def rep_insw(x):
    _ins(x, 2, rep=True)


@form("rep_insd", enc="o32 F3 6D addr", bytes="f36d", asm="rep insd dword ptr es:[edi], dx",
      cite=_INS + _REP)
def rep_insd(x):
    _ins(x, 4, rep=True)


@form("rep_outsb", enc="F3 6E addr", bytes="f36e", asm="rep outsb dx, byte ptr [esi]",
      cite=_OUTS + _REP)
def rep_outsb(x):
    _outs(x, 1, rep=True)


@form("rep_outsw", enc="o16 F3 6F addr", bytes="66f36f", asm="rep outsw dx, word ptr [esi]",
      cite=_OUTS + _REP)
def rep_outsw(x):
    _outs(x, 2, rep=True)


@form("rep_outsd", enc="o32 F3 6F addr", bytes="f36f", asm="rep outsd dx, dword ptr [esi]",
      cite=_OUTS + _REP)
def rep_outsd(x):
    _outs(x, 4, rep=True)
