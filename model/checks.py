"""Shared protection logic, written once (SDM Vol. 3A ch. 3 and 5, Vol. 1 ch. 19).

Descriptor decoding, table look-ups, the CPL/RPL/DPL rules of segment loads and of LAR/LSL/
VERR/VERW, the IOPL and I/O-bitmap test, and the CR4 gates.  Forms call these; none re-derives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import z3

from . import state as st
from .outcome import GP, NP, SS


def _u(v, width=32):
    return z3.ZeroExt(width - v.size(), v) if v.size() < width else v


@dataclass(frozen=True)
class Descriptor:
    """A segment or gate descriptor read from a table (SDM Vol. 3A 3.4.5, 5.8.3, 6.11)."""

    lo: z3.BitVecRef
    hi: z3.BitVecRef
    in_limit: z3.BoolRef      # the selector's index lies inside its table
    addr: z3.BitVecRef        # linear address of the descriptor

    @property
    def type(self):
        return z3.Extract(11, 8, self.hi)

    @property
    def s(self):
        return z3.Extract(12, 12, self.hi) == 1

    @property
    def dpl(self):
        return z3.Extract(14, 13, self.hi)

    @property
    def present(self):
        return z3.Extract(15, 15, self.hi) == 1

    @property
    def base(self):
        return z3.Concat(z3.Extract(31, 24, self.hi), z3.Extract(7, 0, self.hi), z3.Extract(31, 16, self.lo))

    @property
    def raw_limit(self):
        return z3.Concat(z3.BitVecVal(0, 12), z3.Extract(19, 16, self.hi), z3.Extract(15, 0, self.lo))

    @property
    def limit(self):
        """Byte-granular limit: G scales by 4 KiB."""
        g = z3.Extract(23, 23, self.hi) == 1
        return z3.If(g, (self.raw_limit << 12) | 0xFFF, self.raw_limit)

    @property
    def attr(self):
        """Bits 40-55 as the hidden cache keeps them (limit nibble cleared)."""
        return z3.Extract(23, 8, self.hi) & 0xF0FF

    # code/data type bits (S = 1)
    @property
    def is_code(self):
        return z3.And(self.s, z3.Extract(11, 11, self.hi) == 1)

    @property
    def is_data(self):
        return z3.And(self.s, z3.Extract(11, 11, self.hi) == 0)

    @property
    def conforming(self):
        return z3.And(self.is_code, z3.Extract(10, 10, self.hi) == 1)

    @property
    def readable(self):
        return z3.Or(self.is_data, z3.And(self.is_code, z3.Extract(9, 9, self.hi) == 1))

    @property
    def writable(self):
        return z3.And(self.is_data, z3.Extract(9, 9, self.hi) == 1)

    # gates
    @property
    def gate_selector(self):
        return z3.Extract(31, 16, self.lo)

    @property
    def gate_offset(self):
        return z3.Concat(z3.Extract(31, 16, self.hi), z3.Extract(15, 0, self.lo))

    @property
    def gate_params(self):
        return z3.Extract(4, 0, self.hi)

    def system_type(self, *types: int):
        return z3.And(z3.Not(self.s), z3.Or([self.type == t for t in types]))


def is_null(sel) -> z3.BoolRef:
    return z3.Extract(15, 2, sel) == 0


def rpl(sel):
    return z3.Extract(1, 0, sel)


def sel_code(sel):
    """Error code of a selector fault: the selector with RPL cleared (SDM Vol. 3A 6.13)."""
    return z3.ZeroExt(16, sel & 0xFFFC)


def descriptor(x, sel) -> Descriptor:
    """Read the descriptor ``sel`` names from the GDT or, with TI = 1, the LDT."""
    ti = z3.Extract(2, 2, sel) == 1
    offset = z3.ZeroExt(16, sel & 0xFFF8)
    ldt_usable = z3.Not(is_null(x.ldtr))
    base = z3.If(ti, x.ldtr_base, x.gdtr_base)
    limit = z3.If(ti, x.ldtr_limit, z3.ZeroExt(16, x.gdtr_limit))
    in_limit = z3.And(z3.If(ti, ldt_usable, z3.BoolVal(True)), z3.ULE(offset + 7, limit),
                      z3.ULE(offset, offset + 7))
    addr = base + offset
    return Descriptor(x.load(addr, 4), x.load(addr + 4, 4), in_limit, addr)


def gate_descriptor(x, vector: int | z3.BitVecRef) -> Descriptor:
    """Read IDT entry ``vector`` (SDM Vol. 3A 6.10-6.11)."""
    v = z3.BitVecVal(vector, 32) if isinstance(vector, int) else _u(vector)
    offset = v * 8
    addr = x.idtr_base + offset
    in_limit = z3.ULE(offset + 7, z3.ZeroExt(16, x.idtr_limit))
    return Descriptor(x.load(addr, 4), x.load(addr + 4, 4), in_limit, addr)


def set_accessed(x, d: Descriptor) -> None:
    """A segment load sets the descriptor's accessed bit in memory (SDM Vol. 3A 3.4.5.1)."""
    with x.when(z3.Extract(8, 8, d.hi) == 0):
        x.store(d.addr + 4, 4, d.hi | 0x100)


def load_cache(x, sreg: str, sel, d: Descriptor) -> None:
    x.write(sreg, sel)
    x.write(f"{sreg}_base", d.base)
    x.write(f"{sreg}_limit", d.limit)
    x.write(f"{sreg}_attr", d.attr | 0x0001)  # the cache holds the accessed type


def load_null(x, sreg: str, sel) -> None:
    x.write(sreg, sel)
    x.write(f"{sreg}_base", 0)
    x.write(f"{sreg}_limit", 0)
    x.write(f"{sreg}_attr", 0)


def load_data_segment(x, sreg: str, sel) -> None:
    """MOV/POP/LxS to DS, ES, FS or GS in protected mode (SDM Vol. 2B MOV, Vol. 3A 5.7)."""
    null = is_null(sel)
    with x.when(null):
        load_null(x, sreg, sel)
    with x.when(z3.Not(null)):
        d = descriptor(x, sel)
        code = sel_code(sel)
        x.require(d.in_limit, GP, code, "selector index outside the descriptor table")
        x.require(d.readable, GP, code, "not a data or readable code segment")
        needs_dpl = z3.Not(d.conforming)
        x.require(z3.Implies(needs_dpl, z3.And(z3.UGE(d.dpl, rpl(sel)), z3.UGE(d.dpl, x.cpl))),
                  GP, code, "segment DPL below CPL or RPL")
        x.require(d.present, NP, code, "segment not present")
        set_accessed(x, d)
        load_cache(x, sreg, sel, d)


def load_stack_segment(x, sel) -> None:
    """MOV/POP/LSS to SS: RPL = DPL = CPL and a writable data segment (SDM Vol. 2B MOV)."""
    x.require(z3.Not(is_null(sel)), GP, 0, "null selector loaded into SS")
    d = descriptor(x, sel)
    code = sel_code(sel)
    x.require(d.in_limit, GP, code, "selector index outside the descriptor table")
    x.require(rpl(sel) == x.cpl, GP, code, "SS selector RPL differs from CPL")
    x.require(d.writable, GP, code, "SS must be a writable data segment")
    x.require(d.dpl == x.cpl, GP, code, "SS descriptor DPL differs from CPL")
    x.require(d.present, SS, code, "stack segment not present")
    set_accessed(x, d)
    load_cache(x, "ss", sel, d)


def visible(x, sel, d: Descriptor) -> z3.BoolRef:
    """The DPL rule of LAR/LSL/VERR/VERW: conforming code, or DPL >= CPL and DPL >= RPL."""
    return z3.Or(d.conforming, z3.And(z3.UGE(d.dpl, x.cpl), z3.UGE(d.dpl, rpl(sel))))


def cpl0(x) -> z3.BoolRef:
    return x.cpl == 0


def require_cpl0(x, what: str) -> None:
    x.require(cpl0(x), GP, 0, f"{what} needs CPL 0")


def umip_blocks(x) -> z3.BoolRef:
    """CR4.UMIP makes SGDT/SIDT/SLDT/SMSW/STR fault outside CPL 0 (SDM Vol. 3A 2.5)."""
    return z3.And(x.has("umip"), st.bit(x.cr4, st.CR4_UMIP), x.cpl != 0)


def iopl_ok(x) -> z3.BoolRef:
    return z3.ULE(x.cpl, st.iopl(x.s))


def io_permitted(x, port, width: int) -> z3.BoolRef:
    """CPL <= IOPL, or every bit for the ports in the TSS I/O bitmap is clear (SDM Vol. 1 19.5)."""
    port32 = z3.ZeroExt(16, port)
    # tr_attr keeps descriptor bits 40-55: type in bits 3:0, S in bit 4.
    tss32 = z3.And(z3.Extract(4, 4, x.tr_attr) == 0,
                   z3.Or(z3.Extract(3, 0, x.tr_attr) == 9, z3.Extract(3, 0, x.tr_attr) == 0xB))
    has_base = z3.ULE(z3.BitVecVal(0x67, 32), x.tr_limit)
    io_base = z3.ZeroExt(16, x.load(x.tr_base + 0x66, 2))
    byte = io_base + z3.LShR(port32, 3)
    within = z3.And(z3.ULE(byte + 1, x.tr_limit), z3.ULT(byte, byte + 1))
    word = x.load(x.tr_base + byte, 2)
    mask = z3.BitVecVal((1 << width) - 1, 32) << (port32 & 7)
    bits_clear = (z3.ZeroExt(16, word) & mask) == 0
    bitmap_ok = z3.And(tss32, has_base, within, bits_clear)
    return z3.Or(iopl_ok(x), bitmap_ok)
