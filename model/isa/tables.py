"""Descriptor-table and machine-status instructions (SDM Vol. 2A/2B; Vol. 3A 2.8, 3.5)."""

import z3

from .. import checks
from ..checks import descriptor, is_null, sel_code
from ..form import form
from ..outcome import GP, NP



def _store_table_register(x, base, limit):
    x.require(z3.Not(checks.umip_blocks(x)), GP, 0, "CR4.UMIP = 1 and CPL > 0")
    _table_exit(x, False)
    seg = x.default_seg()
    x.seg_store(seg, x.ea(), 2, limit)
    x.seg_store(seg, x.ea(2), 4, base)


@form("sgdt_m", enc="o32 0F 01 /0 mem", bytes="0f0100", asm="sgdt [eax]",
      cite="SDM Vol. 2B SGDT; Vol. 3A 2.8.7 (UMIP)")
def sgdt_m(x):
    _store_table_register(x, x.gdtr_base, x.gdtr_limit)


@form("sidt_m", enc="o32 0F 01 /1 mem", bytes="0f0108", asm="sidt [eax]",
      cite="SDM Vol. 2B SIDT; Vol. 3A 2.8.7 (UMIP)")
def sidt_m(x):
    _store_table_register(x, x.idtr_base, x.idtr_limit)


# With 16-bit operand size SGDT/SIDT store the same 6 bytes: the current SDM ("If the operand-size
# attribute is 16 or 32 bits, ... the 32-bit base address is stored in the high 4 bytes").  Older
# editions stored 24 bits and a zero byte; QEMU still does (emulator/deviations.py).
_SXDT16 = " (16-bit operand size: the full 32-bit base)"


@form("sgdt_m_o16", enc="o16 0F 01 /0 mem", bytes="660f0100", asm="sgdt [eax]",
      cite="SDM Vol. 2B SGDT" + _SXDT16 + "; Vol. 3A 2.8.7 (UMIP)")
def sgdt_m_o16(x):
    _store_table_register(x, x.gdtr_base, x.gdtr_limit)


@form("sidt_m_o16", enc="o16 0F 01 /1 mem", bytes="660f0108", asm="sidt [eax]",
      cite="SDM Vol. 2B SIDT" + _SXDT16 + "; Vol. 3A 2.8.7 (UMIP)")
def sidt_m_o16(x):
    _store_table_register(x, x.idtr_base, x.idtr_limit)


# Descriptor-table exiting (SDM Vol. 3C 25.1.3, after the UMIP and CPL faults, 25.1.1) and the SVM
# IDTR/GDTR/LDTR/TR read and write intercepts (APM Vol. 2 15.13), named by the mnemonic.
_TABLE = {"SGDT": ("gdtr_idtr", "gdtr_read"), "SIDT": ("gdtr_idtr", "idtr_read"),
          "LGDT": ("gdtr_idtr", "gdtr_write"), "LIDT": ("gdtr_idtr", "idtr_write"),
          "SLDT": ("ldtr_tr", "ldtr_read"), "STR": ("ldtr_tr", "tr_read"),
          "LLDT": ("ldtr_tr", "ldtr_write"), "LTR": ("ldtr_tr", "tr_write")}


def _table_exit(x, write: bool) -> None:
    reason, intercept = _TABLE[x.form.mnemonic]
    checks.vmexit(x, vmx=("descriptor_table_exiting", reason), svm=intercept, what=x.form.mnemonic)


def _store_selector(x, value, zero_extend_reg: bool):
    """A memory destination takes 16 bits whatever the operand size; a register destination
    with 32-bit operand size the zero-extended selector (P6 and later), with 16-bit operand
    size its low word only (SDM Vol. 2B SLDT/STR: "the upper 16 bits ... are not modified")."""
    x.require(z3.Not(checks.umip_blocks(x)), GP, 0, "CR4.UMIP = 1 and CPL > 0")
    if x.form.mnemonic == "SMSW":
        value = checks.cr_read(x, 0, value, "SMSW")
    else:
        _table_exit(x, False)
    if x.d.is_mem:
        x.set_rm(2, value)
    elif zero_extend_reg:
        x.set_rm(4, z3.ZeroExt(16, value))
    else:
        x.set_rm(2, value)


@form("sldt_m", enc="o32 0F 00 /0 mem", bytes="0f0000", asm="sldt word ptr [eax]",
      cite="SDM Vol. 2B SLDT")
def sldt_m(x):
    _store_selector(x, x.ldtr, True)


@form("sldt_r", enc="o32 0F 00 /0 reg", bytes="0f00c0", asm="sldt eax",
      cite="SDM Vol. 2B SLDT (r32: upper half cleared on P6 and later)")
def sldt_r(x):
    _store_selector(x, x.ldtr, True)


@form("sldt_m_o16", enc="o16 0F 00 /0 mem", bytes="660f0000", asm="sldt word ptr [eax]",
      cite="SDM Vol. 2B SLDT")
def sldt_m_o16(x):
    _store_selector(x, x.ldtr, False)


@form("sldt_r16", enc="o16 0F 00 /0 reg", bytes="660f00c0", asm="sldt ax",
      cite="SDM Vol. 2B SLDT (r16: the upper half of the register is kept)")
def sldt_r16(x):
    _store_selector(x, x.ldtr, False)


@form("str_m", enc="o32 0F 00 /1 mem", bytes="0f0008", asm="str word ptr [eax]",
      cite="SDM Vol. 2B STR")
def str_m(x):
    _store_selector(x, x.tr, True)


@form("str_r", enc="o32 0F 00 /1 reg", bytes="0f00c8", asm="str eax",
      cite="SDM Vol. 2B STR (r32: upper half cleared on P6 and later)")
def str_r(x):
    _store_selector(x, x.tr, True)


@form("str_m_o16", enc="o16 0F 00 /1 mem", bytes="660f0008", asm="str word ptr [eax]",
      cite="SDM Vol. 2B STR")
def str_m_o16(x):
    _store_selector(x, x.tr, False)


@form("str_r16", enc="o16 0F 00 /1 reg", bytes="660f00c8", asm="str ax",
      cite="SDM Vol. 2B STR (r16: the upper half of the register is kept)")
def str_r16(x):
    _store_selector(x, x.tr, False)


@form("smsw_m", enc="o32 0F 01 /4 mem", bytes="0f0120", asm="smsw word ptr [eax]",
      cite="SDM Vol. 2B SMSW")
def smsw_m(x):
    _store_selector(x, z3.Extract(15, 0, x.cr0), False)


@form("smsw_r", enc="o32 0F 01 /4 reg", bytes="0f01e0", asm="smsw eax",
      cite="SDM Vol. 2B SMSW (r32: upper half undefined; modelled as CR0[31:16])")
def smsw_r(x):
    x.require(z3.Not(checks.umip_blocks(x)), GP, 0, "CR4.UMIP = 1 and CPL > 0")
    x.set_rm(4, checks.cr_read(x, 0, x.cr0, "SMSW"))


@form("smsw_m_o16", enc="o16 0F 01 /4 mem", bytes="660f0120", asm="smsw word ptr [eax]",
      cite="SDM Vol. 2B SMSW")
def smsw_m_o16(x):
    _store_selector(x, z3.Extract(15, 0, x.cr0), False)


@form("smsw_r16", enc="o16 0F 01 /4 reg", bytes="660f01e0", asm="smsw ax",
      cite="SDM Vol. 2B SMSW (r16: CR0[15:0]; the upper half of the register is kept)")
def smsw_r16(x):
    _store_selector(x, z3.Extract(15, 0, x.cr0), False)


def _load_table_register(x, base_field, limit_field, what, size: int = 4):
    """LGDT/LIDT: limit from the low word; the base from the next 4 bytes, or with 16-bit
    operand size from the next 3 with the base's high byte zero (SDM Vol. 2A LGDT/LIDT:
    "GDTR(Base) := SRC[16:47] AND 00FFFFFFH"; the sixth byte is not used)."""
    checks.require_cpl0(x, what)
    _table_exit(x, True)
    seg = x.default_seg()
    x.write(limit_field, x.seg_load(seg, x.ea(), 2))
    base = x.seg_load(seg, x.ea(2), 4 if size == 4 else 3)
    x.write(base_field, z3.ZeroExt(32 - base.size(), base))


@form("lgdt_m", enc="o32 0F 01 /2 mem", bytes="0f0110", asm="lgdt [eax]", cite="SDM Vol. 2A LGDT")
def lgdt_m(x):
    _load_table_register(x, "gdtr_base", "gdtr_limit", "LGDT")


@form("lidt_m", enc="o32 0F 01 /3 mem", bytes="0f0118", asm="lidt [eax]", cite="SDM Vol. 2A LIDT")
def lidt_m(x):
    _load_table_register(x, "idtr_base", "idtr_limit", "LIDT")


@form("lgdt_m_o16", enc="o16 0F 01 /2 mem", bytes="660f0110", asm="lgdt [eax]",
      cite="SDM Vol. 2A LGDT (16-bit operand size: a 24-bit base)")
def lgdt_m_o16(x):
    _load_table_register(x, "gdtr_base", "gdtr_limit", "LGDT", 2)


@form("lidt_m_o16", enc="o16 0F 01 /3 mem", bytes="660f0118", asm="lidt [eax]",
      cite="SDM Vol. 2A LIDT (16-bit operand size: a 24-bit base)")
def lidt_m_o16(x):
    _load_table_register(x, "idtr_base", "idtr_limit", "LIDT", 2)


@form("lldt_r", enc="o32 0F 00 /2", bytes="0f00d0", asm="lldt ax", cite="SDM Vol. 2A LLDT")
def lldt(x):
    _lldt(x)


@form("lldt_r_o16", enc="o16 0F 00 /2", bytes="660f00d0", asm="lldt ax", cite="SDM Vol. 2A LLDT")
def lldt_o16(x):
    """The operand is a 16-bit selector whatever the operand size."""
    _lldt(x)


def _lldt(x):
    checks.require_cpl0(x, "LLDT")
    _table_exit(x, True)
    sel = x.rm(2)
    null = is_null(sel)
    with x.when(null):
        x.write("ldtr", sel)
        x.write("ldtr_base", 0)
        x.write("ldtr_limit", 0)
    with x.when(z3.Not(null)):
        code = sel_code(sel)
        x.require(z3.Extract(2, 2, sel) == 0, GP, code, "LDT selector must name the GDT")
        d = descriptor(x, sel)
        x.require(d.in_limit, GP, code, "selector index outside the GDT")
        x.require(d.system_type(2), GP, code, "descriptor is not an LDT")
        x.require(d.present, NP, code, "LDT descriptor not present")
        x.write("ldtr", sel)
        x.write("ldtr_base", d.base)
        x.write("ldtr_limit", d.limit)


@form("ltr_r", enc="o32 0F 00 /3", bytes="0f00d8", asm="ltr ax", cite="SDM Vol. 2A LTR")
def ltr(x):
    _ltr(x)


@form("ltr_r_o16", enc="o16 0F 00 /3", bytes="660f00d8", asm="ltr ax", cite="SDM Vol. 2A LTR")
def ltr_o16(x):
    """The operand is a 16-bit selector whatever the operand size."""
    _ltr(x)


def _ltr(x):
    checks.require_cpl0(x, "LTR")
    _table_exit(x, True)
    sel = x.rm(2)
    code = sel_code(sel)
    x.require(z3.Not(is_null(sel)), GP, 0, "null selector")
    x.require(z3.Extract(2, 2, sel) == 0, GP, code, "TSS selector must name the GDT")
    d = descriptor(x, sel)
    x.require(d.in_limit, GP, code, "selector index outside the GDT")
    x.require(d.system_type(1, 9), GP, code, "descriptor is not an available TSS")
    x.require(d.present, NP, code, "TSS descriptor not present")
    x.store(d.addr + 4, 4, d.hi | 0x200)  # mark the TSS busy in the GDT
    x.write("tr", sel)
    x.write("tr_base", d.base)
    x.write("tr_limit", d.limit)
    x.write("tr_attr", d.attr | 0x2)


@form("lmsw_r", enc="o32 0F 01 /6", bytes="0f01f0", asm="lmsw ax", cite="SDM Vol. 2A LMSW")
def lmsw(x):
    _lmsw(x)


@form("lmsw_r_o16", enc="o16 0F 01 /6", bytes="660f01f0", asm="lmsw ax", cite="SDM Vol. 2A LMSW")
def lmsw_o16(x):
    """The operand is 16 bits whatever the operand size."""
    _lmsw(x)


def _lmsw(x):
    checks.require_cpl0(x, "LMSW")
    src = z3.ZeroExt(16, x.rm(2))
    # LMSW writes PE, MP, EM, TS and cannot clear PE.
    new = (x.cr0 & ~0xE) | (src & 0xE) | (x.cr0 & 1) | (src & 1)
    x.write("cr0", checks.cr_write(x, 0, x.cr0, new, "LMSW", access=3, bits=0xF))

