"""Descriptor-table and machine-status instructions (SDM Vol. 2A/2B; Vol. 3A 2.8, 3.5)."""

import z3

from .. import checks
from ..checks import descriptor, is_null, sel_code
from ..form import form
from ..outcome import GP, NP



def _store_table_register(x, base, limit):
    x.require(z3.Not(checks.umip_blocks(x)), GP, 0, "CR4.UMIP = 1 and CPL > 0")
    seg, a = x.default_seg(), x.ea()
    x.seg_store(seg, a, 2, limit)
    x.seg_store(seg, a + 2, 4, base)


@form("sgdt_m", enc="0F 01 /0 mem", bytes="0f0100", asm="sgdt [eax]",
      cite="SDM Vol. 2B SGDT; Vol. 3A 2.8.7 (UMIP)")
def sgdt_m(x):
    _store_table_register(x, x.gdtr_base, x.gdtr_limit)


@form("sidt_m", enc="0F 01 /1 mem", bytes="0f0108", asm="sidt [eax]",
      cite="SDM Vol. 2B SIDT; Vol. 3A 2.8.7 (UMIP)")
def sidt_m(x):
    _store_table_register(x, x.idtr_base, x.idtr_limit)


def _store_selector(x, value, zero_extend_reg: bool):
    x.require(z3.Not(checks.umip_blocks(x)), GP, 0, "CR4.UMIP = 1 and CPL > 0")
    if x.d.is_mem:
        x.set_rm(2, value)
    elif zero_extend_reg:
        x.set_rm(4, z3.ZeroExt(16, value))
    else:
        x.set_rm(2, value)


@form("sldt_m", enc="0F 00 /0 mem", bytes="0f0000", asm="sldt word ptr [eax]",
      cite="SDM Vol. 2B SLDT")
def sldt_m(x):
    _store_selector(x, x.ldtr, True)


@form("sldt_r", enc="0F 00 /0 reg", bytes="0f00c0", asm="sldt eax",
      cite="SDM Vol. 2B SLDT (r32: upper half cleared on P6 and later)")
def sldt_r(x):
    _store_selector(x, x.ldtr, True)


@form("str_m", enc="0F 00 /1 mem", bytes="0f0008", asm="str word ptr [eax]",
      cite="SDM Vol. 2B STR")
def str_m(x):
    _store_selector(x, x.tr, True)


@form("str_r", enc="0F 00 /1 reg", bytes="0f00c8", asm="str eax",
      cite="SDM Vol. 2B STR (r32: upper half cleared on P6 and later)")
def str_r(x):
    _store_selector(x, x.tr, True)


@form("smsw_m", enc="0F 01 /4 mem", bytes="0f0120", asm="smsw word ptr [eax]",
      cite="SDM Vol. 2B SMSW")
def smsw_m(x):
    _store_selector(x, z3.Extract(15, 0, x.cr0), False)


@form("smsw_r", enc="0F 01 /4 reg", bytes="0f01e0", asm="smsw eax",
      cite="SDM Vol. 2B SMSW (r32: upper half undefined; modelled as CR0[31:16])")
def smsw_r(x):
    x.require(z3.Not(checks.umip_blocks(x)), GP, 0, "CR4.UMIP = 1 and CPL > 0")
    x.set_rm(4, x.cr0)


def _load_table_register(x, base_field, limit_field, what):
    checks.require_cpl0(x, what)
    seg, a = x.default_seg(), x.ea()
    x.write(limit_field, x.seg_load(seg, a, 2))
    x.write(base_field, x.seg_load(seg, a + 2, 4))


@form("lgdt_m", enc="0F 01 /2 mem", bytes="0f0110", asm="lgdt [eax]", cite="SDM Vol. 2A LGDT")
def lgdt_m(x):
    _load_table_register(x, "gdtr_base", "gdtr_limit", "LGDT")


@form("lidt_m", enc="0F 01 /3 mem", bytes="0f0118", asm="lidt [eax]", cite="SDM Vol. 2A LIDT")
def lidt_m(x):
    _load_table_register(x, "idtr_base", "idtr_limit", "LIDT")


@form("lldt_r", enc="0F 00 /2", bytes="0f00d0", asm="lldt ax", cite="SDM Vol. 2A LLDT")
def lldt(x):
    checks.require_cpl0(x, "LLDT")
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


@form("ltr_r", enc="0F 00 /3", bytes="0f00d8", asm="ltr ax", cite="SDM Vol. 2A LTR")
def ltr(x):
    checks.require_cpl0(x, "LTR")
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


@form("lmsw_r", enc="0F 01 /6", bytes="0f01f0", asm="lmsw ax", cite="SDM Vol. 2A LMSW")
def lmsw(x):
    checks.require_cpl0(x, "LMSW")
    src = z3.ZeroExt(16, x.rm(2))
    # LMSW writes PE, MP, EM, TS and cannot clear PE.
    new = (x.cr0 & ~0xE) | (src & 0xE) | (x.cr0 & 1) | (src & 1)
    x.write("cr0", new)

