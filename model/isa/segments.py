"""Segment-register moves and protection-system references (SDM Vol. 2A/2B; Vol. 3A 5.10).

PUSH/POP/MOV Sreg and the far-pointer loads expose the selectors (PUSH CS and MOV from CS/SS show
the CPL in the RPL) and run the segment-load checks of SDM Vol. 3A 5.6-5.7 against CPL, RPL and
DPL.  LAR, LSL, VERR and VERW report descriptor-table contents and the same DPL rule in ZF without
faulting.  The interrupt shadow after MOV SS / POP SS (SDM Vol. 2B MOV) is not part of the
modelled state: no single instruction's user-visible result depends on it.
"""

import z3

from .. import state as st
from ..checks import descriptor, is_null, load_data_segment, load_stack_segment, rpl, visible
from ..form import form


def _load_sreg(x, sreg: str, sel) -> None:
    if sreg == "ss":
        load_stack_segment(x, sel)
    else:
        load_data_segment(x, sreg, sel)


# --- PUSH Sreg -----------------------------------------------------------------------------------

def _push_sreg(x, sreg: str) -> None:
    """32-bit PUSH of a segment register: ESP drops by 4 but only the selector word is stored.

    SDM Vol. 2B PUSH: the processor either pushes the zero-extended selector or writes it with a
    16-bit move; "all recent Core and Atom processors perform a 16-bit move, leaving the upper
    portion of the stack location unmodified".  That is modelled.  QEMU (so Unicorn) stores the
    zero-extended doubleword instead, so the two upper stack bytes can differ from it.
    """
    esp = x.esp - 4
    x.store(x._through("ss", x.ss_base + esp, 4, True), 2, x.read(sreg))   # the slot is 4 bytes
    x.write("esp", esp)


@form("push_cs", enc="o32 0E", bytes="0e", asm="push cs", cite="SDM Vol. 2B PUSH")
def push_cs(x):
    _push_sreg(x, "cs")


@form("push_ss", enc="o32 16", bytes="16", asm="push ss", cite="SDM Vol. 2B PUSH")
def push_ss(x):
    _push_sreg(x, "ss")


@form("push_ds", enc="o32 1E", bytes="1e", asm="push ds", cite="SDM Vol. 2B PUSH")
def push_ds(x):
    _push_sreg(x, "ds")


@form("push_es", enc="o32 06", bytes="06", asm="push es", cite="SDM Vol. 2B PUSH")
def push_es(x):
    _push_sreg(x, "es")


@form("push_fs", enc="o32 0F A0", bytes="0fa0", asm="push fs", cite="SDM Vol. 2B PUSH")
def push_fs(x):
    _push_sreg(x, "fs")


@form("push_gs", enc="o32 0F A8", bytes="0fa8", asm="push gs", cite="SDM Vol. 2B PUSH")
def push_gs(x):
    _push_sreg(x, "gs")


def _push_sreg16(x, sreg: str) -> None:
    """16-bit PUSH of a segment register: ESP drops by 2 and the selector is stored (SDM Vol. 2B
    PUSH, "IF OperandSize = 16 ... ESP := ESP - 2")."""
    x.push(x.read(sreg), 2)


@form("push_cs_o16", enc="o16 0E", bytes="660e", asm="push cs", cite="SDM Vol. 2B PUSH")
def push_cs_o16(x):
    _push_sreg16(x, "cs")


@form("push_ss_o16", enc="o16 16", bytes="6616", asm="push ss", cite="SDM Vol. 2B PUSH")
def push_ss_o16(x):
    _push_sreg16(x, "ss")


@form("push_ds_o16", enc="o16 1E", bytes="661e", asm="push ds", cite="SDM Vol. 2B PUSH")
def push_ds_o16(x):
    _push_sreg16(x, "ds")


@form("push_es_o16", enc="o16 06", bytes="6606", asm="push es", cite="SDM Vol. 2B PUSH")
def push_es_o16(x):
    _push_sreg16(x, "es")


@form("push_fs_o16", enc="o16 0F A0", bytes="660fa0", asm="push fs", cite="SDM Vol. 2B PUSH")
def push_fs_o16(x):
    _push_sreg16(x, "fs")


@form("push_gs_o16", enc="o16 0F A8", bytes="660fa8", asm="push gs", cite="SDM Vol. 2B PUSH")
def push_gs_o16(x):
    _push_sreg16(x, "gs")


# --- POP Sreg ------------------------------------------------------------------------------------

def _pop_sreg(x, sreg: str) -> None:
    """32-bit POP to a segment register: the selector is the low word at SS:ESP; ESP rises by 4.

    SDM Vol. 2B POP: with 32-bit operand size ESP is incremented by 4; only the selector word is
    read (Bochs does the same; the upper word never reaches any register).  The load runs the
    checks of SDM Vol. 3A 5.6 (DS/ES/FS/GS) or 5.7 (SS).
    """
    sel = x.load(x._through("ss", x.ss_base + x.esp, 4, False), 2)        # the slot is 4 bytes
    x.write("esp", x.esp + 4)
    _load_sreg(x, sreg, sel)


@form("pop_ss", enc="o32 17", bytes="17", asm="pop ss", cite="SDM Vol. 2B POP; Vol. 3A 5.7")
def pop_ss(x):
    _pop_sreg(x, "ss")


@form("pop_ds", enc="o32 1F", bytes="1f", asm="pop ds", cite="SDM Vol. 2B POP; Vol. 3A 5.6")
def pop_ds(x):
    _pop_sreg(x, "ds")


@form("pop_es", enc="o32 07", bytes="07", asm="pop es", cite="SDM Vol. 2B POP; Vol. 3A 5.6")
def pop_es(x):
    _pop_sreg(x, "es")


@form("pop_fs", enc="o32 0F A1", bytes="0fa1", asm="pop fs", cite="SDM Vol. 2B POP; Vol. 3A 5.6")
def pop_fs(x):
    _pop_sreg(x, "fs")


@form("pop_gs", enc="o32 0F A9", bytes="0fa9", asm="pop gs", cite="SDM Vol. 2B POP; Vol. 3A 5.6")
def pop_gs(x):
    _pop_sreg(x, "gs")


def _pop_sreg16(x, sreg: str) -> None:
    """16-bit POP to a segment register: the selector word at SS:ESP, ESP up by 2, then the load
    and its checks (SDM Vol. 2B POP; Vol. 3A 5.6, 5.7)."""
    sel = x.seg_load("ss", x.ss_base + x.esp, 2)
    x.write("esp", x.esp + 2)
    _load_sreg(x, sreg, sel)


@form("pop_ss_o16", enc="o16 17", bytes="6617", asm="pop ss", cite="SDM Vol. 2B POP; Vol. 3A 5.7")
def pop_ss_o16(x):
    _pop_sreg16(x, "ss")


@form("pop_ds_o16", enc="o16 1F", bytes="661f", asm="pop ds", cite="SDM Vol. 2B POP; Vol. 3A 5.6")
def pop_ds_o16(x):
    _pop_sreg16(x, "ds")


@form("pop_es_o16", enc="o16 07", bytes="6607", asm="pop es", cite="SDM Vol. 2B POP; Vol. 3A 5.6")
def pop_es_o16(x):
    _pop_sreg16(x, "es")


@form("pop_fs_o16", enc="o16 0F A1", bytes="660fa1", asm="pop fs", cite="SDM Vol. 2B POP; Vol. 3A 5.6")
def pop_fs_o16(x):
    _pop_sreg16(x, "fs")


@form("pop_gs_o16", enc="o16 0F A9", bytes="660fa9", asm="pop gs", cite="SDM Vol. 2B POP; Vol. 3A 5.6")
def pop_gs_o16(x):
    _pop_sreg16(x, "gs")


# --- MOV r/m16, Sreg -----------------------------------------------------------------------------

def _store_sreg(x, sreg: str) -> None:
    """MOV r/m16, Sreg: a memory destination takes exactly 16 bits whatever the operand size; a
    32-bit register destination gets the selector zero-extended (SDM Vol. 2B MOV: zero on P6 and
    later processors, undefined on earlier IA-32 ones)."""
    sel = x.read(sreg)
    if x.d.is_mem:
        x.set_rm(2, sel)
    else:
        x.set_rm(4, z3.ZeroExt(16, sel))


_MOV_FROM = "SDM Vol. 2B MOV (Move from Segment Register)"


@form("mov_r_es", enc="o32 8C /0 reg", bytes="8cc0", asm="mov eax, es", cite=_MOV_FROM)
def mov_r_es(x):
    _store_sreg(x, "es")


@form("mov_m_es", enc="o32 8C /0 mem", bytes="8c00", asm="mov word ptr [eax], es", cite=_MOV_FROM)
def mov_m_es(x):
    _store_sreg(x, "es")


@form("mov_r_cs", enc="o32 8C /1 reg", bytes="8cc8", asm="mov eax, cs", cite=_MOV_FROM)
def mov_r_cs(x):
    _store_sreg(x, "cs")


@form("mov_m_cs", enc="o32 8C /1 mem", bytes="8c08", asm="mov word ptr [eax], cs", cite=_MOV_FROM)
def mov_m_cs(x):
    _store_sreg(x, "cs")


@form("mov_r_ss", enc="o32 8C /2 reg", bytes="8cd0", asm="mov eax, ss", cite=_MOV_FROM)
def mov_r_ss(x):
    _store_sreg(x, "ss")


@form("mov_m_ss", enc="o32 8C /2 mem", bytes="8c10", asm="mov word ptr [eax], ss", cite=_MOV_FROM)
def mov_m_ss(x):
    _store_sreg(x, "ss")


@form("mov_r_ds", enc="o32 8C /3 reg", bytes="8cd8", asm="mov eax, ds", cite=_MOV_FROM)
def mov_r_ds(x):
    _store_sreg(x, "ds")


@form("mov_m_ds", enc="o32 8C /3 mem", bytes="8c18", asm="mov word ptr [eax], ds", cite=_MOV_FROM)
def mov_m_ds(x):
    _store_sreg(x, "ds")


@form("mov_r_fs", enc="o32 8C /4 reg", bytes="8ce0", asm="mov eax, fs", cite=_MOV_FROM)
def mov_r_fs(x):
    _store_sreg(x, "fs")


@form("mov_m_fs", enc="o32 8C /4 mem", bytes="8c20", asm="mov word ptr [eax], fs", cite=_MOV_FROM)
def mov_m_fs(x):
    _store_sreg(x, "fs")


@form("mov_r_gs", enc="o32 8C /5 reg", bytes="8ce8", asm="mov eax, gs", cite=_MOV_FROM)
def mov_r_gs(x):
    _store_sreg(x, "gs")


@form("mov_m_gs", enc="o32 8C /5 mem", bytes="8c28", asm="mov word ptr [eax], gs", cite=_MOV_FROM)
def mov_m_gs(x):
    _store_sreg(x, "gs")


def _store_sreg16(x, sreg: str) -> None:
    """MOV r/m16, Sreg with 16-bit operand size: 16 bits to memory, or the low word of the
    register (its upper half kept) - ``mov ax, ss`` (SDM Vol. 2B MOV)."""
    x.set_rm(2, x.read(sreg))


@form("mov_r16_es", enc="o16 8C /0 reg", bytes="668cc0", asm="mov ax, es", cite=_MOV_FROM)
def mov_r16_es(x):
    _store_sreg16(x, "es")


@form("mov_m16_es", enc="o16 8C /0 mem", bytes="668c00", asm="mov word ptr [eax], es",
      cite=_MOV_FROM)
def mov_m16_es(x):
    _store_sreg16(x, "es")


@form("mov_r16_cs", enc="o16 8C /1 reg", bytes="668cc8", asm="mov ax, cs", cite=_MOV_FROM)
def mov_r16_cs(x):
    _store_sreg16(x, "cs")


@form("mov_m16_cs", enc="o16 8C /1 mem", bytes="668c08", asm="mov word ptr [eax], cs",
      cite=_MOV_FROM)
def mov_m16_cs(x):
    _store_sreg16(x, "cs")


@form("mov_r16_ss", enc="o16 8C /2 reg", bytes="668cd0", asm="mov ax, ss", cite=_MOV_FROM)
def mov_r16_ss(x):
    _store_sreg16(x, "ss")


@form("mov_m16_ss", enc="o16 8C /2 mem", bytes="668c10", asm="mov word ptr [eax], ss",
      cite=_MOV_FROM)
def mov_m16_ss(x):
    _store_sreg16(x, "ss")


@form("mov_r16_ds", enc="o16 8C /3 reg", bytes="668cd8", asm="mov ax, ds", cite=_MOV_FROM)
def mov_r16_ds(x):
    _store_sreg16(x, "ds")


@form("mov_m16_ds", enc="o16 8C /3 mem", bytes="668c18", asm="mov word ptr [eax], ds",
      cite=_MOV_FROM)
def mov_m16_ds(x):
    _store_sreg16(x, "ds")


@form("mov_r16_fs", enc="o16 8C /4 reg", bytes="668ce0", asm="mov ax, fs", cite=_MOV_FROM)
def mov_r16_fs(x):
    _store_sreg16(x, "fs")


@form("mov_m16_fs", enc="o16 8C /4 mem", bytes="668c20", asm="mov word ptr [eax], fs",
      cite=_MOV_FROM)
def mov_m16_fs(x):
    _store_sreg16(x, "fs")


@form("mov_r16_gs", enc="o16 8C /5 reg", bytes="668ce8", asm="mov ax, gs", cite=_MOV_FROM)
def mov_r16_gs(x):
    _store_sreg16(x, "gs")


@form("mov_m16_gs", enc="o16 8C /5 mem", bytes="668c28", asm="mov word ptr [eax], gs",
      cite=_MOV_FROM)
def mov_m16_gs(x):
    _store_sreg16(x, "gs")


# --- MOV Sreg, r/m16 (MOV to CS, 8E /1, is #UD and has no form) ----------------------------------

_MOV_TO = "SDM Vol. 2B MOV (Move to Segment Register); Vol. 3A 5.6"
_MOV_TO_SS = "SDM Vol. 2B MOV (Move to Segment Register); Vol. 3A 5.7"


@form("mov_es_r", enc="o32 8E /0 reg", bytes="8ec0", asm="mov es, eax", cite=_MOV_TO)
def mov_es_r(x):
    _load_sreg(x, "es", x.rm(2))


@form("mov_es_m", enc="o32 8E /0 mem", bytes="8e00", asm="mov es, word ptr [eax]", cite=_MOV_TO)
def mov_es_m(x):
    _load_sreg(x, "es", x.rm(2))


@form("mov_ss_r", enc="o32 8E /2 reg", bytes="8ed0", asm="mov ss, eax", cite=_MOV_TO_SS)
def mov_ss_r(x):
    _load_sreg(x, "ss", x.rm(2))


@form("mov_ss_m", enc="o32 8E /2 mem", bytes="8e10", asm="mov ss, word ptr [eax]", cite=_MOV_TO_SS)
def mov_ss_m(x):
    _load_sreg(x, "ss", x.rm(2))


@form("mov_ds_r", enc="o32 8E /3 reg", bytes="8ed8", asm="mov ds, eax", cite=_MOV_TO)
def mov_ds_r(x):
    _load_sreg(x, "ds", x.rm(2))


@form("mov_ds_m", enc="o32 8E /3 mem", bytes="8e18", asm="mov ds, word ptr [eax]", cite=_MOV_TO)
def mov_ds_m(x):
    _load_sreg(x, "ds", x.rm(2))


@form("mov_fs_r", enc="o32 8E /4 reg", bytes="8ee0", asm="mov fs, eax", cite=_MOV_TO)
def mov_fs_r(x):
    _load_sreg(x, "fs", x.rm(2))


@form("mov_fs_m", enc="o32 8E /4 mem", bytes="8e20", asm="mov fs, word ptr [eax]", cite=_MOV_TO)
def mov_fs_m(x):
    _load_sreg(x, "fs", x.rm(2))


@form("mov_gs_r", enc="o32 8E /5 reg", bytes="8ee8", asm="mov gs, eax", cite=_MOV_TO)
def mov_gs_r(x):
    _load_sreg(x, "gs", x.rm(2))


@form("mov_gs_m", enc="o32 8E /5 mem", bytes="8e28", asm="mov gs, word ptr [eax]", cite=_MOV_TO)
def mov_gs_m(x):
    _load_sreg(x, "gs", x.rm(2))



@form("mov_es_r16", enc="o16 8E /0 reg", bytes="668ec0", asm="mov es, ax", cite=_MOV_TO)
def mov_es_r16(x):
    _load_sreg(x, "es", x.rm(2))


@form("mov_es_m16", enc="o16 8E /0 mem", bytes="668e00", asm="mov es, word ptr [eax]",
      cite=_MOV_TO)
def mov_es_m16(x):
    _load_sreg(x, "es", x.rm(2))


@form("mov_ss_r16", enc="o16 8E /2 reg", bytes="668ed0", asm="mov ss, ax", cite=_MOV_TO_SS)
def mov_ss_r16(x):
    _load_sreg(x, "ss", x.rm(2))


@form("mov_ss_m16", enc="o16 8E /2 mem", bytes="668e10", asm="mov ss, word ptr [eax]",
      cite=_MOV_TO_SS)
def mov_ss_m16(x):
    _load_sreg(x, "ss", x.rm(2))


@form("mov_ds_r16", enc="o16 8E /3 reg", bytes="668ed8", asm="mov ds, ax", cite=_MOV_TO)
def mov_ds_r16(x):
    _load_sreg(x, "ds", x.rm(2))


@form("mov_ds_m16", enc="o16 8E /3 mem", bytes="668e18", asm="mov ds, word ptr [eax]",
      cite=_MOV_TO)
def mov_ds_m16(x):
    _load_sreg(x, "ds", x.rm(2))


@form("mov_fs_r16", enc="o16 8E /4 reg", bytes="668ee0", asm="mov fs, ax", cite=_MOV_TO)
def mov_fs_r16(x):
    _load_sreg(x, "fs", x.rm(2))


@form("mov_fs_m16", enc="o16 8E /4 mem", bytes="668e20", asm="mov fs, word ptr [eax]",
      cite=_MOV_TO)
def mov_fs_m16(x):
    _load_sreg(x, "fs", x.rm(2))


@form("mov_gs_r16", enc="o16 8E /5 reg", bytes="668ee8", asm="mov gs, ax", cite=_MOV_TO)
def mov_gs_r16(x):
    _load_sreg(x, "gs", x.rm(2))


@form("mov_gs_m16", enc="o16 8E /5 mem", bytes="668e28", asm="mov gs, word ptr [eax]",
      cite=_MOV_TO)
def mov_gs_m16(x):
    _load_sreg(x, "gs", x.rm(2))


# --- LAR, LSL, VERR, VERW --------------------------------------------------------------------------

# System descriptor types each instruction accepts (SDM Vol. 2A LAR and LSL, tables of valid
# descriptor types in protected mode): TSSs (available or busy) and the LDT for both; LAR also
# the call gates and the task gate.  Interrupt and trap gates and reserved types are invalid.
_LAR_SYSTEM_TYPES = (0x1, 0x2, 0x3, 0x4, 0x5, 0x9, 0xB, 0xC)
_LSL_SYSTEM_TYPES = (0x1, 0x2, 0x3, 0x9, 0xB)


def _accessible(x, sel, system_types):
    """The descriptor ``sel`` names and whether LAR/LSL may report it (SDM Vol. 3A 5.10.1, 5.10.3):
    a non-null selector inside its table, a code/data or listed system type, and - unless
    conforming code - DPL >= CPL and DPL >= RPL.  The present bit is not examined."""
    d = descriptor(x, sel)
    ok = z3.And(z3.Not(is_null(sel)), d.in_limit,
                z3.Or(d.s, d.system_type(*system_types)), visible(x, sel, d))
    return d, ok


def _report(x, ok, value, size: int) -> None:
    """ZF := ok; the destination (32 bits, or the low word of a 16-bit one) is written only
    when ZF = 1; CF, PF, AF, SF, OF keep their values (SDM Vol. 2A LAR/LSL "Flags Affected")."""
    x.set_flag(st.ZF, ok)
    with x.when(ok):
        x.set_reg(size, value)


def _lar(x, size: int = 4):
    """LAR r32, r32/m16: with 32-bit operand size the second descriptor doubleword masked by
    00FxFF00H.  The nibble x (bits 19:16, the limit's high bits) is undefined in the SDM and
    modelled as 0, as QEMU returns it.  With 16-bit operand size: its low word masked by FF00H
    (type, S, DPL, P)."""
    d, ok = _accessible(x, x.rm(2), _LAR_SYSTEM_TYPES)
    _report(x, ok, d.hi & (0x00F0FF00 if size == 4 else 0xFF00), size)


def _lsl(x, size: int = 4):
    """LSL r32, r32/m16: the byte-granular limit, a page-granular one (G = 1) shifted left by 12
    with the low 12 bits set to 1; with 16-bit operand size its low 16 bits ("DEST :=
    SegmentLimit AND 0000FFFFH")."""
    d, ok = _accessible(x, x.rm(2), _LSL_SYSTEM_TYPES)
    _report(x, ok, d.limit, size)


@form("lar_r", enc="o32 0F 02 /r reg", bytes="0f02c0", asm="lar eax, eax",
      cite="SDM Vol. 2A LAR; Vol. 3A 5.10.1")
def lar_r(x):
    _lar(x)


@form("lar_m", enc="o32 0F 02 /r mem", bytes="0f0200", asm="lar eax, word ptr [eax]",
      cite="SDM Vol. 2A LAR; Vol. 3A 5.10.1")
def lar_m(x):
    _lar(x)


@form("lsl_r", enc="o32 0F 03 /r reg", bytes="0f03c0", asm="lsl eax, eax",
      cite="SDM Vol. 2A LSL; Vol. 3A 5.10.3")
def lsl_r(x):
    _lsl(x)


@form("lsl_m", enc="o32 0F 03 /r mem", bytes="0f0300", asm="lsl eax, word ptr [eax]",
      cite="SDM Vol. 2A LSL; Vol. 3A 5.10.3")
def lsl_m(x):
    _lsl(x)


@form("lar_r16", enc="o16 0F 02 /r reg", bytes="660f02c0", asm="lar ax, ax",
      cite="SDM Vol. 2A LAR; Vol. 3A 5.10.1")
def lar_r16(x):
    _lar(x, 2)


@form("lar_m16", enc="o16 0F 02 /r mem", bytes="660f0200", asm="lar ax, word ptr [eax]",
      cite="SDM Vol. 2A LAR; Vol. 3A 5.10.1")
def lar_m16(x):
    _lar(x, 2)


@form("lsl_r16", enc="o16 0F 03 /r reg", bytes="660f03c0", asm="lsl ax, ax",
      cite="SDM Vol. 2A LSL; Vol. 3A 5.10.3")
def lsl_r16(x):
    _lsl(x, 2)


@form("lsl_m16", enc="o16 0F 03 /r mem", bytes="660f0300", asm="lsl ax, word ptr [eax]",
      cite="SDM Vol. 2A LSL; Vol. 3A 5.10.3")
def lsl_m16(x):
    _lsl(x, 2)


def _verify(x, writing: bool) -> None:
    """VERR/VERW (SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2): ZF := 1 for a non-null selector inside
    its table naming a code or data segment that is readable (VERR) or a writable data segment
    (VERW), and that passes the DPL rule (conforming code is exempt; it is never writable).
    System descriptors and gates give ZF = 0; no other flag changes and nothing faults."""
    sel = x.rm(2)
    d = descriptor(x, sel)
    right = d.writable if writing else d.readable
    x.set_flag(st.ZF, z3.And(z3.Not(is_null(sel)), d.in_limit, right, visible(x, sel, d)))


@form("verr_r", enc="o32 0F 00 /4 reg", bytes="0f00e0", asm="verr ax",
      cite="SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2")
def verr_r(x):
    _verify(x, writing=False)


@form("verr_m", enc="o32 0F 00 /4 mem", bytes="0f0020", asm="verr word ptr [eax]",
      cite="SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2")
def verr_m(x):
    _verify(x, writing=False)


@form("verw_r", enc="o32 0F 00 /5 reg", bytes="0f00e8", asm="verw ax",
      cite="SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2")
def verw_r(x):
    _verify(x, writing=True)


@form("verw_m", enc="o32 0F 00 /5 mem", bytes="0f0028", asm="verw word ptr [eax]",
      cite="SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2")
def verw_m(x):
    _verify(x, writing=True)


# VERR/VERW read a 16-bit selector whatever the operand size: the 66-prefixed forms are the same.

@form("verr_r_o16", enc="o16 0F 00 /4 reg", bytes="660f00e0", asm="verr ax",
      cite="SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2")
def verr_r_o16(x):
    _verify(x, writing=False)


@form("verr_m_o16", enc="o16 0F 00 /4 mem", bytes="660f0020", asm="verr word ptr [eax]",
      cite="SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2")
def verr_m_o16(x):
    _verify(x, writing=False)


@form("verw_r_o16", enc="o16 0F 00 /5 reg", bytes="660f00e8", asm="verw ax",
      cite="SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2")
def verw_r_o16(x):
    _verify(x, writing=True)


@form("verw_m_o16", enc="o16 0F 00 /5 mem", bytes="660f0028", asm="verw word ptr [eax]",
      cite="SDM Vol. 2B VERR/VERW; Vol. 3A 5.10.2")
def verw_m_o16(x):
    _verify(x, writing=True)


# --- ARPL ----------------------------------------------------------------------------------------

def _arpl(x):
    """ARPL r/m16, r16 (SDM Vol. 2A ARPL; Vol. 3A 5.10.4): if the destination's RPL is below the
    source's, raise it to the source's and set ZF, else clear ZF and leave the destination alone."""
    dest = x.rm(2, rmw=True)    # "#GP(0) if the destination is located in a non-writable segment"
    src = x.reg(2)
    adjust = z3.ULT(rpl(dest), rpl(src))
    x.set_flag(st.ZF, adjust)
    with x.when(adjust):
        x.set_rm(2, (dest & 0xFFFC) | (src & 3))


@form("arpl_r", enc="o32 63 /r reg", bytes="63c0", asm="arpl ax, ax",
      cite="SDM Vol. 2A ARPL; Vol. 3A 5.10.4")
def arpl_r(x):
    _arpl(x)


@form("arpl_m", enc="o32 63 /r mem", bytes="6300", asm="arpl word ptr [eax], ax",
      cite="SDM Vol. 2A ARPL; Vol. 3A 5.10.4")
def arpl_m(x):
    _arpl(x)


@form("arpl_r_o16", enc="o16 63 /r reg", bytes="6663c0", asm="arpl ax, ax",
      cite="SDM Vol. 2A ARPL; Vol. 3A 5.10.4")
def arpl_r_o16(x):
    """ARPL is a 16-bit operation whatever the operand size."""
    _arpl(x)


@form("arpl_m_o16", enc="o16 63 /r mem", bytes="666300", asm="arpl word ptr [eax], ax",
      cite="SDM Vol. 2A ARPL; Vol. 3A 5.10.4")
def arpl_m_o16(x):
    _arpl(x)


# --- LDS, LES, LFS, LGS, LSS -----------------------------------------------------------------------

def _load_far_pointer(x, sreg: str, size: int = 4) -> None:
    """LxS r32, m16:32 / r16, m16:16 (SDM Vol. 2A LDS/LES/LFS/LGS/LSS): the offset (4 or 2
    bytes) then the selector word; the segment load and its checks come first, so a fault leaves
    the register unwritten.  The pointer is read through the old segment state, before the load
    replaces it."""
    seg = x.default_seg()
    offset = x.seg_load(seg, x.ea(), size)
    sel = x.seg_load(seg, x.ea(size), 2)
    _load_sreg(x, sreg, sel)
    x.set_reg(size, offset)


_LXS = "SDM Vol. 2A LDS/LES/LFS/LGS/LSS"


@form("lds_m", enc="o32 C5 /r mem", bytes="c500", asm="lds eax, ptr [eax]", cite=_LXS + "; Vol. 3A 5.6")
def lds_m(x):
    _load_far_pointer(x, "ds")


@form("les_m", enc="o32 C4 /r mem", bytes="c400", asm="les eax, ptr [eax]", cite=_LXS + "; Vol. 3A 5.6")
def les_m(x):
    _load_far_pointer(x, "es")


@form("lfs_m", enc="o32 0F B4 /r mem", bytes="0fb400", asm="lfs eax, ptr [eax]",
      cite=_LXS + "; Vol. 3A 5.6")
def lfs_m(x):
    _load_far_pointer(x, "fs")


@form("lgs_m", enc="o32 0F B5 /r mem", bytes="0fb500", asm="lgs eax, ptr [eax]",
      cite=_LXS + "; Vol. 3A 5.6")
def lgs_m(x):
    _load_far_pointer(x, "gs")


@form("lss_m", enc="o32 0F B2 /r mem", bytes="0fb200", asm="lss eax, ptr [eax]",
      cite=_LXS + "; Vol. 3A 5.7")
def lss_m(x):
    _load_far_pointer(x, "ss")


@form("lds_m16", enc="o16 C5 /r mem", bytes="66c500", asm="lds ax, ptr [eax]",
      cite=_LXS + "; Vol. 3A 5.6")
def lds_m16(x):
    _load_far_pointer(x, "ds", 2)


@form("les_m16", enc="o16 C4 /r mem", bytes="66c400", asm="les ax, ptr [eax]",
      cite=_LXS + "; Vol. 3A 5.6")
def les_m16(x):
    _load_far_pointer(x, "es", 2)


@form("lfs_m16", enc="o16 0F B4 /r mem", bytes="660fb400", asm="lfs ax, ptr [eax]",
      cite=_LXS + "; Vol. 3A 5.6")
def lfs_m16(x):
    _load_far_pointer(x, "fs", 2)


@form("lgs_m16", enc="o16 0F B5 /r mem", bytes="660fb500", asm="lgs ax, ptr [eax]",
      cite=_LXS + "; Vol. 3A 5.6")
def lgs_m16(x):
    _load_far_pointer(x, "gs", 2)


@form("lss_m16", enc="o16 0F B2 /r mem", bytes="660fb200", asm="lss ax, ptr [eax]",
      cite=_LXS + "; Vol. 3A 5.7")
def lss_m16(x):
    _load_far_pointer(x, "ss", 2)
