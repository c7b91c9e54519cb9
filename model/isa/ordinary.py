"""Ordinary user instructions, modelled so that innocuousness is derived, not assumed (SDM Vol. 2).

Every form here computes its full architectural effect on the user state, including the six
arithmetic flags (SDM Vol. 1 3.4.3.1 and appendix A), so the verifier can *prove* that none of
them reads or writes what the monitor owns.  All forms use 32-bit operand and address size (the
decoder accepts no 66/67 prefix).  Memory is byte-addressed through segment bases; like the rest
of the model, no limit or paging checks are made (see the README).

Where the SDM leaves a flag undefined the form still writes a fixed value (documented in its
docstring, chosen as QEMU computes it) and names the flag in its ``undefined_flags``, so that
cross-checks against real hardware or an emulator can mask it.
"""

from __future__ import annotations

import z3

from ..form import ModelError, form
from ..state import AF, CF, DF, OF, PF, SF, ZF

_MASK32 = 0xFFFFFFFF

# EFLAGS bits the SDM leaves undefined, a form's ``undefined_flags`` (cross-checks mask them).
_LOGIC = 1 << AF                      # AND/OR/XOR/TEST: "the state of the AF flag is undefined"
_SHIFT = (1 << AF) | (1 << OF)        # shifts: AF undefined for count != 0, OF for count != 1
_SHIFT_BY_1 = 1 << AF                 # count 1: OF is defined, only AF is not


# --- flag arithmetic (SDM Vol. 1 3.4.3.1; Vol. 2 "Flags Affected" of each instruction) ----------

def _msb(v) -> z3.BoolRef:
    return z3.Extract(v.size() - 1, v.size() - 1, v) == 1


def _bit(v, n: int) -> z3.BoolRef:
    return z3.Extract(n, n, v) == 1


def _parity(r) -> z3.BoolRef:
    """PF: set when the low byte of the result has an even number of 1 bits."""
    acc = z3.Extract(0, 0, r)
    for i in range(1, 8):
        acc = acc ^ z3.Extract(i, i, r)
    return acc == 0


def _szp(r) -> dict:
    return {"sf": _msb(r), "zf": r == 0, "pf": _parity(r)}


_FLAG_BIT = {"cf": CF, "pf": PF, "af": AF, "zf": ZF, "sf": SF, "of": OF}


def _set_flags(x, **values) -> None:
    """Write the named arithmetic flags in one update of the ``flags`` field; others keep their value."""
    mask = 0
    bits = z3.BitVecVal(0, 32)
    for name, v in values.items():
        b = 1 << _FLAG_BIT[name]
        mask |= b
        if isinstance(v, bool):
            bits = bits | (b if v else 0)
        else:
            bits = bits | z3.If(v, z3.BitVecVal(b, 32), z3.BitVecVal(0, 32))
    x.write("flags", (x.flags & (~mask & _MASK32)) | bits)


def _carry(carry, width: int) -> z3.BitVecRef:
    if isinstance(carry, bool):
        return z3.BitVecVal(int(carry), width)
    return z3.If(carry, z3.BitVecVal(1, width), z3.BitVecVal(0, width))


def _add(a, b, carry=False):
    """a + b + carry at the operands' width w: CF (carry out of bit w-1), OF (signed overflow),
    AF (carry out of bit 3)."""
    w = a.size()
    wide = z3.ZeroExt(1, a) + z3.ZeroExt(1, b) + _carry(carry, w + 1)
    r = z3.Extract(w - 1, 0, wide)
    flags = {"cf": _bit(wide, w), "of": z3.And(_msb(a) == _msb(b), _msb(r) != _msb(a)),
             "af": _bit(a ^ b ^ r, 4), **_szp(r)}
    return r, flags


def _sub(a, b, borrow=False):
    """a - (b + borrow) at the operands' width w: CF (borrow into bit w-1), OF (signed
    overflow), AF (borrow from bit 4)."""
    w = a.size()
    wide = z3.ZeroExt(1, a) - z3.ZeroExt(1, b) - _carry(borrow, w + 1)
    r = z3.Extract(w - 1, 0, wide)
    flags = {"cf": _bit(wide, w), "of": z3.And(_msb(a) != _msb(b), _msb(r) != _msb(a)),
             "af": _bit(a ^ b ^ r, 4), **_szp(r)}
    return r, flags


def _logic(r):
    """AND/OR/XOR/TEST: CF = OF = 0; AF is undefined and written as 0 (QEMU's choice)."""
    return r, {"cf": False, "of": False, "af": False, **_szp(r)}


def _alu(x, op: str, a, b):
    """The eight group-1 operations in ModRM.reg order /0../7 (SDM Vol. 2A Table A-6)."""
    if op == "add":
        return _add(a, b)
    if op == "adc":
        return _add(a, b, x.flag(CF))
    if op in ("sub", "cmp"):
        return _sub(a, b)
    if op == "sbb":
        return _sub(a, b, x.flag(CF))
    if op == "and":
        return _logic(a & b)
    if op == "or":
        return _logic(a | b)
    if op == "xor":
        return _logic(a ^ b)
    raise ModelError(f"no ALU operation {op!r}")


def _alu_into_rm(x, op: str, src, size: int = 4) -> None:
    """r/m := r/m op src at ``size`` bytes (CMP only sets the flags)."""
    r, flags = _alu(x, op, x.rm(size), src)
    if op != "cmp":
        x.set_rm(size, r)
    _set_flags(x, **flags)


def _alu_into_reg(x, op: str, size: int = 4) -> None:
    """r := r op r/m at ``size`` bytes (CMP only sets the flags)."""
    r, flags = _alu(x, op, x.reg(size), x.rm(size))
    if op != "cmp":
        x.set_reg(size, r)
    _set_flags(x, **flags)


def _imm(x, size: int = 4):
    return z3.BitVecVal(x.d.imm, 8 * size)


def _imm32(x):
    return _imm(x, 4)


def _simm8(x, size: int = 4):
    """An 8-bit immediate or displacement sign-extended to ``size`` bytes."""
    return z3.BitVecVal((x.d.imm - 0x100 if x.d.imm & 0x80 else x.d.imm) & ((1 << 8 * size) - 1),
                        8 * size)


# --- NOP and data movement --------------------------------------------------------------------

@form("nop", enc="o32 90", bytes="90", asm="nop", cite="SDM Vol. 2B NOP")
def nop(x):
    """NOP: no operation; only EIP advances (F3 90, PAUSE, is the same to the model)."""


@form("mov_rm32_r32", enc="o32 89 /r", bytes="89c8", asm="mov eax, ecx", cite="SDM Vol. 2B MOV")
def mov_rm32_r32(x):
    """MOV r/m32, r32: DEST := SRC; no flags."""
    x.set_rm(4, x.reg(4))


@form("mov_r32_rm32", enc="o32 8B /r", bytes="8bc1", asm="mov eax, ecx", cite="SDM Vol. 2B MOV")
def mov_r32_rm32(x):
    """MOV r32, r/m32: DEST := SRC; no flags."""
    x.set_reg(4, x.rm(4))


@form("mov_rm8_r8", enc="88 /r", bytes="88c8", asm="mov al, cl", cite="SDM Vol. 2B MOV")
def mov_rm8_r8(x):
    """MOV r/m8, r8: DEST := SRC; the other bytes of a register destination are kept."""
    x.set_rm(1, x.reg(1))


@form("mov_r8_rm8", enc="8A /r", bytes="8ac1", asm="mov al, cl", cite="SDM Vol. 2B MOV")
def mov_r8_rm8(x):
    """MOV r8, r/m8: DEST := SRC; the other bytes of the register are kept."""
    x.set_reg(1, x.rm(1))


@form("mov_r32_imm32", enc="o32 B8+r id", bytes="b878563412", asm="mov eax, 0x12345678",
      cite="SDM Vol. 2B MOV")
def mov_r32_imm32(x):
    """MOV r32, imm32: the register named by the opcode's low three bits := imm32."""
    x.set_gpr(x.d.reg, 4, _imm32(x))


@form("mov_rm32_imm32", enc="o32 C7 /0 id", bytes="c70078563412",
      asm="mov dword ptr [eax], 0x12345678", cite="SDM Vol. 2B MOV")
def mov_rm32_imm32(x):
    """MOV r/m32, imm32: DEST := imm32; no flags."""
    x.set_rm(4, _imm32(x))


@form("movzx_r32_rm8", enc="o32 0F B6 /r", bytes="0fb6c1", asm="movzx eax, cl", cite="SDM Vol. 2B MOVZX")
def movzx_r32_rm8(x):
    """MOVZX r32, r/m8: DEST := ZeroExtend(SRC); no flags."""
    x.set_reg(4, z3.ZeroExt(24, x.rm(1)))


@form("movzx_r32_rm16", enc="o32 0F B7 /r", bytes="0fb7c1", asm="movzx eax, cx", cite="SDM Vol. 2B MOVZX")
def movzx_r32_rm16(x):
    """MOVZX r32, r/m16: DEST := ZeroExtend(SRC); no flags."""
    x.set_reg(4, z3.ZeroExt(16, x.rm(2)))


@form("movsx_r32_rm8", enc="o32 0F BE /r", bytes="0fbec1", asm="movsx eax, cl", cite="SDM Vol. 2B MOVSX")
def movsx_r32_rm8(x):
    """MOVSX r32, r/m8: DEST := SignExtend(SRC); no flags."""
    x.set_reg(4, z3.SignExt(24, x.rm(1)))


@form("movsx_r32_rm16", enc="o32 0F BF /r", bytes="0fbfc1", asm="movsx eax, cx", cite="SDM Vol. 2B MOVSX")
def movsx_r32_rm16(x):
    """MOVSX r32, r/m16: DEST := SignExtend(SRC); no flags."""
    x.set_reg(4, z3.SignExt(16, x.rm(2)))


@form("lea_r32_m", enc="o32 8D /r mem", bytes="8d4304", asm="lea eax, [ebx + 4]", cite="SDM Vol. 2A LEA")
def lea_r32_m(x):
    """LEA r32, m: DEST := effective offset of m; no segment, no memory access, no flags."""
    x.set_reg(4, x.offset())


@form("xchg_rm32_r32", enc="o32 87 /r lock", bytes="87c8", asm="xchg eax, ecx", cite="SDM Vol. 2D XCHG")
def xchg_rm32_r32(x):
    """XCHG r/m32, r32: swap the operands (a memory operand is implicitly locked); no flags."""
    a, b = x.rm(4), x.reg(4)
    x.set_rm(4, b)      # before the register write: the address may use that register
    x.set_reg(4, a)


@form("cdq", enc="o32 99", bytes="99", asm="cdq", cite="SDM Vol. 2A CWD/CDQ/CQO")
def cdq(x):
    """CDQ: EDX := every bit a copy of EAX[31]; no flags."""
    x.write("edx", z3.If(_msb(x.eax), z3.BitVecVal(_MASK32, 32), z3.BitVecVal(0, 32)))


@form("cwde", enc="o32 98", bytes="98", asm="cwde", cite="SDM Vol. 2A CBW/CWDE/CDQE")
def cwde(x):
    """CWDE: EAX := SignExtend(AX); no flags."""
    x.write("eax", z3.SignExt(16, z3.Extract(15, 0, x.eax)))


# --- group-1 arithmetic: ADD OR ADC SBB AND SUB XOR CMP ---------------------------------------

@form("add_rm32_r32", enc="o32 01 /r lock", bytes="01c8", asm="add eax, ecx", cite="SDM Vol. 2A ADD")
def add_rm32_r32(x):
    """ADD r/m32, r32: DEST := DEST + SRC; OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "add", x.reg(4))


@form("or_rm32_r32", undefined_flags=_SHIFT_BY_1, enc="o32 09 /r lock", bytes="09c8", asm="or eax, ecx", cite="SDM Vol. 2B OR")
def or_rm32_r32(x):
    """OR r/m32, r32: DEST := DEST | SRC; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_rm(x, "or", x.reg(4))


@form("adc_rm32_r32", enc="o32 11 /r lock", bytes="11c8", asm="adc eax, ecx", cite="SDM Vol. 2A ADC")
def adc_rm32_r32(x):
    """ADC r/m32, r32: DEST := DEST + SRC + CF; OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "adc", x.reg(4))


@form("sbb_rm32_r32", enc="o32 19 /r lock", bytes="19c8", asm="sbb eax, ecx", cite="SDM Vol. 2B SBB")
def sbb_rm32_r32(x):
    """SBB r/m32, r32: DEST := DEST - (SRC + CF); OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "sbb", x.reg(4))


@form("and_rm32_r32", undefined_flags=_SHIFT_BY_1, enc="o32 21 /r lock", bytes="21c8", asm="and eax, ecx", cite="SDM Vol. 2A AND")
def and_rm32_r32(x):
    """AND r/m32, r32: DEST := DEST & SRC; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_rm(x, "and", x.reg(4))


@form("sub_rm32_r32", enc="o32 29 /r lock", bytes="29c8", asm="sub eax, ecx", cite="SDM Vol. 2B SUB")
def sub_rm32_r32(x):
    """SUB r/m32, r32: DEST := DEST - SRC; OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "sub", x.reg(4))


@form("xor_rm32_r32", undefined_flags=_SHIFT_BY_1, enc="o32 31 /r lock", bytes="31c8", asm="xor eax, ecx", cite="SDM Vol. 2D XOR")
def xor_rm32_r32(x):
    """XOR r/m32, r32: DEST := DEST ^ SRC; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_rm(x, "xor", x.reg(4))


@form("cmp_rm32_r32", enc="o32 39 /r", bytes="39c8", asm="cmp eax, ecx", cite="SDM Vol. 2A CMP")
def cmp_rm32_r32(x):
    """CMP r/m32, r32: flags as for SUB r/m32, r32; no operand is written."""
    _alu_into_rm(x, "cmp", x.reg(4))


@form("add_r32_rm32", enc="o32 03 /r", bytes="03c1", asm="add eax, ecx", cite="SDM Vol. 2A ADD")
def add_r32_rm32(x):
    """ADD r32, r/m32: DEST := DEST + SRC; OF SF ZF AF CF PF from the result."""
    _alu_into_reg(x, "add")


@form("or_r32_rm32", undefined_flags=_SHIFT_BY_1, enc="o32 0B /r", bytes="0bc1", asm="or eax, ecx", cite="SDM Vol. 2B OR")
def or_r32_rm32(x):
    """OR r32, r/m32: DEST := DEST | SRC; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_reg(x, "or")


@form("adc_r32_rm32", enc="o32 13 /r", bytes="13c1", asm="adc eax, ecx", cite="SDM Vol. 2A ADC")
def adc_r32_rm32(x):
    """ADC r32, r/m32: DEST := DEST + SRC + CF; OF SF ZF AF CF PF from the result."""
    _alu_into_reg(x, "adc")


@form("sbb_r32_rm32", enc="o32 1B /r", bytes="1bc1", asm="sbb eax, ecx", cite="SDM Vol. 2B SBB")
def sbb_r32_rm32(x):
    """SBB r32, r/m32: DEST := DEST - (SRC + CF); OF SF ZF AF CF PF from the result."""
    _alu_into_reg(x, "sbb")


@form("and_r32_rm32", undefined_flags=_SHIFT_BY_1, enc="o32 23 /r", bytes="23c1", asm="and eax, ecx", cite="SDM Vol. 2A AND")
def and_r32_rm32(x):
    """AND r32, r/m32: DEST := DEST & SRC; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_reg(x, "and")


@form("sub_r32_rm32", enc="o32 2B /r", bytes="2bc1", asm="sub eax, ecx", cite="SDM Vol. 2B SUB")
def sub_r32_rm32(x):
    """SUB r32, r/m32: DEST := DEST - SRC; OF SF ZF AF CF PF from the result."""
    _alu_into_reg(x, "sub")


@form("xor_r32_rm32", undefined_flags=_SHIFT_BY_1, enc="o32 33 /r", bytes="33c1", asm="xor eax, ecx", cite="SDM Vol. 2D XOR")
def xor_r32_rm32(x):
    """XOR r32, r/m32: DEST := DEST ^ SRC; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_reg(x, "xor")


@form("cmp_r32_rm32", enc="o32 3B /r", bytes="3bc1", asm="cmp eax, ecx", cite="SDM Vol. 2A CMP")
def cmp_r32_rm32(x):
    """CMP r32, r/m32: flags as for SUB r32, r/m32; no operand is written."""
    _alu_into_reg(x, "cmp")


@form("add_rm32_imm32", enc="o32 81 /0 id lock", bytes="81c078563412", asm="add eax, 0x12345678",
      cite="SDM Vol. 2A ADD")
def add_rm32_imm32(x):
    """ADD r/m32, imm32: DEST := DEST + imm32; OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "add", _imm32(x))


@form("or_rm32_imm32", undefined_flags=_SHIFT_BY_1, enc="o32 81 /1 id lock", bytes="81c878563412", asm="or eax, 0x12345678",
      cite="SDM Vol. 2B OR")
def or_rm32_imm32(x):
    """OR r/m32, imm32: DEST := DEST | imm32; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_rm(x, "or", _imm32(x))


@form("adc_rm32_imm32", enc="o32 81 /2 id lock", bytes="81d078563412", asm="adc eax, 0x12345678",
      cite="SDM Vol. 2A ADC")
def adc_rm32_imm32(x):
    """ADC r/m32, imm32: DEST := DEST + imm32 + CF; OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "adc", _imm32(x))


@form("sbb_rm32_imm32", enc="o32 81 /3 id lock", bytes="81d878563412", asm="sbb eax, 0x12345678",
      cite="SDM Vol. 2B SBB")
def sbb_rm32_imm32(x):
    """SBB r/m32, imm32: DEST := DEST - (imm32 + CF); OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "sbb", _imm32(x))


@form("and_rm32_imm32", undefined_flags=_SHIFT_BY_1, enc="o32 81 /4 id lock", bytes="81e078563412", asm="and eax, 0x12345678",
      cite="SDM Vol. 2A AND")
def and_rm32_imm32(x):
    """AND r/m32, imm32: DEST := DEST & imm32; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_rm(x, "and", _imm32(x))


@form("sub_rm32_imm32", enc="o32 81 /5 id lock", bytes="81e878563412", asm="sub eax, 0x12345678",
      cite="SDM Vol. 2B SUB")
def sub_rm32_imm32(x):
    """SUB r/m32, imm32: DEST := DEST - imm32; OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "sub", _imm32(x))


@form("xor_rm32_imm32", undefined_flags=_SHIFT_BY_1, enc="o32 81 /6 id lock", bytes="81f078563412", asm="xor eax, 0x12345678",
      cite="SDM Vol. 2D XOR")
def xor_rm32_imm32(x):
    """XOR r/m32, imm32: DEST := DEST ^ imm32; OF = CF = 0, SF ZF PF from the result, AF undefined (0)."""
    _alu_into_rm(x, "xor", _imm32(x))


@form("cmp_rm32_imm32", enc="o32 81 /7 id", bytes="81f878563412", asm="cmp eax, 0x12345678",
      cite="SDM Vol. 2A CMP")
def cmp_rm32_imm32(x):
    """CMP r/m32, imm32: flags as for SUB r/m32, imm32; no operand is written."""
    _alu_into_rm(x, "cmp", _imm32(x))


@form("add_rm32_imm8", enc="o32 83 /0 ib lock", bytes="83c001", asm="add eax, 1", cite="SDM Vol. 2A ADD")
def add_rm32_imm8(x):
    """ADD r/m32, imm8: DEST := DEST + SignExtend(imm8); OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "add", _simm8(x))


@form("or_rm32_imm8", undefined_flags=_SHIFT_BY_1, enc="o32 83 /1 ib lock", bytes="83c801", asm="or eax, 1", cite="SDM Vol. 2B OR")
def or_rm32_imm8(x):
    """OR r/m32, imm8: DEST := DEST | SignExtend(imm8); OF = CF = 0, SF ZF PF set, AF undefined (0)."""
    _alu_into_rm(x, "or", _simm8(x))


@form("adc_rm32_imm8", enc="o32 83 /2 ib lock", bytes="83d001", asm="adc eax, 1", cite="SDM Vol. 2A ADC")
def adc_rm32_imm8(x):
    """ADC r/m32, imm8: DEST := DEST + SignExtend(imm8) + CF; OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "adc", _simm8(x))


@form("sbb_rm32_imm8", enc="o32 83 /3 ib lock", bytes="83d801", asm="sbb eax, 1", cite="SDM Vol. 2B SBB")
def sbb_rm32_imm8(x):
    """SBB r/m32, imm8: DEST := DEST - (SignExtend(imm8) + CF); OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "sbb", _simm8(x))


@form("and_rm32_imm8", undefined_flags=_SHIFT_BY_1, enc="o32 83 /4 ib lock", bytes="83e0f0", asm="and eax, 0xfffffff0", cite="SDM Vol. 2A AND")
def and_rm32_imm8(x):
    """AND r/m32, imm8: DEST := DEST & SignExtend(imm8); OF = CF = 0, SF ZF PF set, AF undefined (0)."""
    _alu_into_rm(x, "and", _simm8(x))


@form("sub_rm32_imm8", enc="o32 83 /5 ib lock", bytes="83e801", asm="sub eax, 1", cite="SDM Vol. 2B SUB")
def sub_rm32_imm8(x):
    """SUB r/m32, imm8: DEST := DEST - SignExtend(imm8); OF SF ZF AF CF PF from the result."""
    _alu_into_rm(x, "sub", _simm8(x))


@form("xor_rm32_imm8", undefined_flags=_SHIFT_BY_1, enc="o32 83 /6 ib lock", bytes="83f001", asm="xor eax, 1", cite="SDM Vol. 2D XOR")
def xor_rm32_imm8(x):
    """XOR r/m32, imm8: DEST := DEST ^ SignExtend(imm8); OF = CF = 0, SF ZF PF set, AF undefined (0)."""
    _alu_into_rm(x, "xor", _simm8(x))


@form("cmp_rm32_imm8", enc="o32 83 /7 ib", bytes="83f801", asm="cmp eax, 1", cite="SDM Vol. 2A CMP")
def cmp_rm32_imm8(x):
    """CMP r/m32, imm8: flags as for SUB with SignExtend(imm8); no operand is written."""
    _alu_into_rm(x, "cmp", _simm8(x))


@form("test_rm32_r32", undefined_flags=_SHIFT_BY_1, enc="o32 85 /r", bytes="85c8", asm="test eax, ecx", cite="SDM Vol. 2B TEST")
def test_rm32_r32(x):
    """TEST r/m32, r32: flags of r/m32 & r32 (OF = CF = 0, AF undefined (0)); nothing written."""
    _set_flags(x, **_logic(x.rm(4) & x.reg(4))[1])


@form("test_rm32_imm32", undefined_flags=_SHIFT_BY_1, enc="o32 F7 /0 id", bytes="f7c078563412", asm="test eax, 0x12345678",
      cite="SDM Vol. 2B TEST")
def test_rm32_imm32(x):
    """TEST r/m32, imm32: flags of r/m32 & imm32 (OF = CF = 0, AF undefined (0)); nothing written."""
    _set_flags(x, **_logic(x.rm(4) & _imm32(x))[1])


# --- unary arithmetic -------------------------------------------------------------------------

@form("inc_r32", enc="o32 40+r", bytes="40", asm="inc eax", cite="SDM Vol. 2A INC")
def inc_r32(x):
    """INC r32: DEST := DEST + 1; OF SF ZF AF PF from the result, CF unchanged."""
    r, flags = _add(x.gpr(x.d.reg), z3.BitVecVal(1, 32))
    del flags["cf"]
    x.set_gpr(x.d.reg, 4, r)
    _set_flags(x, **flags)


@form("dec_r32", enc="o32 48+r", bytes="48", asm="dec eax", cite="SDM Vol. 2A DEC")
def dec_r32(x):
    """DEC r32: DEST := DEST - 1; OF SF ZF AF PF from the result, CF unchanged."""
    r, flags = _sub(x.gpr(x.d.reg), z3.BitVecVal(1, 32))
    del flags["cf"]
    x.set_gpr(x.d.reg, 4, r)
    _set_flags(x, **flags)


@form("not_rm32", enc="o32 F7 /2 lock", bytes="f7d0", asm="not eax", cite="SDM Vol. 2B NOT")
def not_rm32(x):
    """NOT r/m32: DEST := ~DEST; no flags."""
    x.set_rm(4, ~x.rm(4))


@form("neg_rm32", enc="o32 F7 /3 lock", bytes="f7d8", asm="neg eax", cite="SDM Vol. 2B NEG")
def neg_rm32(x):
    """NEG r/m32: DEST := 0 - DEST; CF = (DEST != 0); OF SF ZF AF PF as for that subtraction."""
    r, flags = _sub(z3.BitVecVal(0, 32), x.rm(4))   # its borrow is exactly "source != 0"
    x.set_rm(4, r)
    _set_flags(x, **flags)


# --- shifts (SDM Vol. 2B SAL/SAR/SHL/SHR) -----------------------------------------------------

def _shift(x, kind: str, count8, size: int = 4) -> None:
    """Shift r/m of ``size`` bytes by ``count8`` masked to five bits (also for 16-bit operands,
    where counts 16-31 shift every bit out; CF is then undefined and the formulas below give the
    value QEMU computes).

    A masked count of 0 changes nothing, not even the flags.  Otherwise CF is the last bit shifted
    out and SF ZF PF follow the result.  OF is defined only for a count of 1 (SHL: MSB(result) XOR
    CF; SHR: MSB(original); SAR: 0); for larger counts it is undefined and the same formulas are
    used (SHL: MSB(result) XOR CF; SHR and SAR: 0).  AF is undefined and written as 0.
    """
    a = x.rm(size)
    count = z3.ZeroExt(8 * size - 8, count8) & 0x1F
    before_last = count - 1  # the value after all but the last one-bit step supplies CF
    if kind == "shl":
        r = a << count
        cf = _msb(a << before_last)
        of = z3.Xor(_msb(r), cf)
    elif kind == "shr":
        r = z3.LShR(a, count)
        last = z3.LShR(a, before_last)
        cf, of = _bit(last, 0), _msb(last)
    elif kind == "sar":
        r = a >> count
        cf, of = _bit(a >> before_last, 0), False
    else:
        raise ModelError(f"no shift {kind!r}")
    nonzero = z3.simplify(count != 0)
    if z3.is_false(nonzero):
        return

    def effect():
        x.set_rm(size, r)
        _set_flags(x, cf=cf, of=of, af=False, **_szp(r))

    if z3.is_true(nonzero):
        effect()
    else:
        with x.when(nonzero):
            effect()


@form("shl_rm32_imm8", undefined_flags=_SHIFT, enc="o32 C1 /4 ib", bytes="c1e004", asm="shl eax, 4",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def shl_rm32_imm8(x):
    """SHL r/m32, imm8: DEST := DEST << (imm8 & 31); flags as in ``_shift`` (AF, OF undefined)."""
    _shift(x, "shl", z3.BitVecVal(x.d.imm, 8))


@form("shr_rm32_imm8", undefined_flags=_SHIFT, enc="o32 C1 /5 ib", bytes="c1e804", asm="shr eax, 4",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def shr_rm32_imm8(x):
    """SHR r/m32, imm8: unsigned DEST >> (imm8 & 31); flags as in ``_shift`` (AF, OF undefined)."""
    _shift(x, "shr", z3.BitVecVal(x.d.imm, 8))


@form("sar_rm32_imm8", undefined_flags=_SHIFT, enc="o32 C1 /7 ib", bytes="c1f804", asm="sar eax, 4",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def sar_rm32_imm8(x):
    """SAR r/m32, imm8: signed DEST >> (imm8 & 31); flags as in ``_shift`` (AF, OF undefined)."""
    _shift(x, "sar", z3.BitVecVal(x.d.imm, 8))


@form("shl_rm32_1", undefined_flags=_SHIFT_BY_1, enc="o32 D1 /4", bytes="d1e0", asm="shl eax, 1", cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def shl_rm32_1(x):
    """SHL r/m32, 1: OF = MSB(result) XOR CF; AF undefined (0)."""
    _shift(x, "shl", z3.BitVecVal(1, 8))


@form("shr_rm32_1", undefined_flags=_SHIFT_BY_1, enc="o32 D1 /5", bytes="d1e8", asm="shr eax, 1", cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def shr_rm32_1(x):
    """SHR r/m32, 1: OF = MSB(original operand); AF undefined (0)."""
    _shift(x, "shr", z3.BitVecVal(1, 8))


@form("sar_rm32_1", undefined_flags=_SHIFT_BY_1, enc="o32 D1 /7", bytes="d1f8", asm="sar eax, 1", cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def sar_rm32_1(x):
    """SAR r/m32, 1: OF = 0; AF undefined (0)."""
    _shift(x, "sar", z3.BitVecVal(1, 8))


@form("shl_rm32_cl", undefined_flags=_SHIFT, enc="o32 D3 /4", bytes="d3e0", asm="shl eax, cl", cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def shl_rm32_cl(x):
    """SHL r/m32, CL: count CL & 31; flags as in ``_shift`` (AF, OF undefined)."""
    _shift(x, "shl", x.gpr(1, 1))


@form("shr_rm32_cl", undefined_flags=_SHIFT, enc="o32 D3 /5", bytes="d3e8", asm="shr eax, cl", cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def shr_rm32_cl(x):
    """SHR r/m32, CL: count CL & 31; flags as in ``_shift`` (AF, OF undefined)."""
    _shift(x, "shr", x.gpr(1, 1))


@form("sar_rm32_cl", undefined_flags=_SHIFT, enc="o32 D3 /7", bytes="d3f8", asm="sar eax, cl", cite="SDM Vol. 2B SAL/SAR/SHL/SHR")
def sar_rm32_cl(x):
    """SAR r/m32, CL: count CL & 31; flags as in ``_shift`` (AF, OF undefined)."""
    _shift(x, "sar", x.gpr(1, 1))


# --- stack ------------------------------------------------------------------------------------

@form("push_r32", enc="o32 50+r", bytes="50", asm="push eax", cite="SDM Vol. 2B PUSH")
def push_r32(x):
    """PUSH r32: ESP -= 4; SS:[ESP] := r32 (PUSH ESP stores the value before the decrement)."""
    x.push(x.gpr(x.d.reg))


def enter_frame(x, size: int) -> None:
    """ENTER imm16, imm8 on a 32-bit stack (SDM Vol. 2A ENTER): push EBP; with nesting level
    L = imm8 MOD 32 > 0, push the L - 1 frame pointers read at SS:[EBP - size * i] and then the
    new frame's own pointer; EBP := the ESP after the first push; ESP -= imm16.  The level is the
    instance's: every push and read is a stack access with its faults."""
    level = x.d.imm2 & 31
    x.push(x.gpr(5, size), size)
    frame = x.s.esp
    ebp = x.pre.ebp
    for _ in range(1, level):
        ebp = ebp - size
        x.push(x.seg_load("ss", x.s.ss_base + ebp, size), size)
    if level:
        x.push(z3.Extract(8 * size - 1, 0, frame) if size == 2 else frame, size)
    x.write("ebp", frame)
    x.write("esp", x.s.esp - x.d.imm)


@form("enter", enc="o32 C8 iw ib", bytes="c8100002", asm="enter 0x10, 2", cite="SDM Vol. 2A ENTER")
def enter(x):
    """ENTER imm16, imm8 with 32-bit operand size: a stack frame of imm16 bytes at nesting level
    imm8 MOD 32 (``enter_frame``)."""
    enter_frame(x, 4)


@form("pop_r32", enc="o32 58+r", bytes="58", asm="pop eax", cite="SDM Vol. 2B POP")
def pop_r32(x):
    """POP r32: r32 := SS:[ESP]; ESP += 4 (POP ESP leaves the popped value in ESP)."""
    v = x.pop()
    x.set_gpr(x.d.reg, 4, v)   # after pop's increment, so POP ESP ends with the loaded value


@form("push_imm32", enc="o32 68 id", bytes="6878563412", asm="push 0x12345678", cite="SDM Vol. 2B PUSH")
def push_imm32(x):
    """PUSH imm32: ESP -= 4; SS:[ESP] := imm32."""
    x.push(_imm32(x))


@form("push_imm8", enc="o32 6A ib", bytes="6aff", asm="push -1", cite="SDM Vol. 2B PUSH")
def push_imm8(x):
    """PUSH imm8: ESP -= 4; SS:[ESP] := SignExtend(imm8)."""
    x.push(_simm8(x))


# --- near control transfers -------------------------------------------------------------------

def _rel8(x):
    return x.next_eip + _simm8(x)


@form("call_rel32", enc="o32 E8 cd", bytes="e800000000", asm="call 5", cite="SDM Vol. 2A CALL")
def call_rel32(x):
    """CALL rel32 (near, relative): push the next EIP, then EIP := next EIP + rel32."""
    x.push(x.next_eip)
    x.jump(x.next_eip + _imm32(x))


@form("ret_near", enc="o32 C3", bytes="c3", asm="ret", cite="SDM Vol. 2B RET")
def ret_near(x):
    """RET (near): EIP := pop()."""
    x.jump(x.pop())


@form("ret_near_imm16", enc="o32 C2 iw", bytes="c20800", asm="ret 8", cite="SDM Vol. 2B RET")
def ret_near_imm16(x):
    """RET imm16 (near): EIP := pop(); then ESP += imm16 (release the caller's arguments)."""
    target = x.pop()
    x.write("esp", x.esp + x.d.imm)
    x.jump(target)


@form("jmp_rel8", enc="o32 EB cb", bytes="eb00", asm="jmp 2", cite="SDM Vol. 2A JMP")
def jmp_rel8(x):
    """JMP rel8 (short): EIP := next EIP + SignExtend(rel8)."""
    x.jump(_rel8(x))


@form("jmp_rel32", enc="o32 E9 cd", bytes="e900000000", asm="jmp 5", cite="SDM Vol. 2A JMP")
def jmp_rel32(x):
    """JMP rel32 (near): EIP := next EIP + rel32."""
    x.jump(x.next_eip + _imm32(x))


def _jcc(x, cond) -> None:
    """Jcc rel8: if ``cond`` then EIP := next EIP + SignExtend(rel8), else fall through."""
    with x.when(cond):
        x.jump(_rel8(x))


@form("jo_rel8", enc="o32 70 cb", bytes="7000", asm="jo 2", cite="SDM Vol. 2A Jcc")
def jo_rel8(x):
    """JO rel8: jump if OF = 1."""
    _jcc(x, x.flag(OF))


@form("jno_rel8", enc="o32 71 cb", bytes="7100", asm="jno 2", cite="SDM Vol. 2A Jcc")
def jno_rel8(x):
    """JNO rel8: jump if OF = 0."""
    _jcc(x, z3.Not(x.flag(OF)))


@form("jb_rel8", enc="o32 72 cb", bytes="7200", asm="jb 2", cite="SDM Vol. 2A Jcc")
def jb_rel8(x):
    """JB/JC/JNAE rel8: jump if CF = 1."""
    _jcc(x, x.flag(CF))


@form("jae_rel8", enc="o32 73 cb", bytes="7300", asm="jae 2", cite="SDM Vol. 2A Jcc")
def jae_rel8(x):
    """JAE/JNB/JNC rel8: jump if CF = 0."""
    _jcc(x, z3.Not(x.flag(CF)))


@form("je_rel8", enc="o32 74 cb", bytes="7400", asm="je 2", cite="SDM Vol. 2A Jcc")
def je_rel8(x):
    """JE/JZ rel8: jump if ZF = 1."""
    _jcc(x, x.flag(ZF))


@form("jne_rel8", enc="o32 75 cb", bytes="7500", asm="jne 2", cite="SDM Vol. 2A Jcc")
def jne_rel8(x):
    """JNE/JNZ rel8: jump if ZF = 0."""
    _jcc(x, z3.Not(x.flag(ZF)))


@form("jbe_rel8", enc="o32 76 cb", bytes="7600", asm="jbe 2", cite="SDM Vol. 2A Jcc")
def jbe_rel8(x):
    """JBE/JNA rel8: jump if CF = 1 or ZF = 1."""
    _jcc(x, z3.Or(x.flag(CF), x.flag(ZF)))


@form("ja_rel8", enc="o32 77 cb", bytes="7700", asm="ja 2", cite="SDM Vol. 2A Jcc")
def ja_rel8(x):
    """JA/JNBE rel8: jump if CF = 0 and ZF = 0."""
    _jcc(x, z3.Not(z3.Or(x.flag(CF), x.flag(ZF))))


@form("js_rel8", enc="o32 78 cb", bytes="7800", asm="js 2", cite="SDM Vol. 2A Jcc")
def js_rel8(x):
    """JS rel8: jump if SF = 1."""
    _jcc(x, x.flag(SF))


@form("jns_rel8", enc="o32 79 cb", bytes="7900", asm="jns 2", cite="SDM Vol. 2A Jcc")
def jns_rel8(x):
    """JNS rel8: jump if SF = 0."""
    _jcc(x, z3.Not(x.flag(SF)))


@form("jp_rel8", enc="o32 7A cb", bytes="7a00", asm="jp 2", cite="SDM Vol. 2A Jcc")
def jp_rel8(x):
    """JP/JPE rel8: jump if PF = 1."""
    _jcc(x, x.flag(PF))


@form("jnp_rel8", enc="o32 7B cb", bytes="7b00", asm="jnp 2", cite="SDM Vol. 2A Jcc")
def jnp_rel8(x):
    """JNP/JPO rel8: jump if PF = 0."""
    _jcc(x, z3.Not(x.flag(PF)))


@form("jl_rel8", enc="o32 7C cb", bytes="7c00", asm="jl 2", cite="SDM Vol. 2A Jcc")
def jl_rel8(x):
    """JL/JNGE rel8: jump if SF != OF."""
    _jcc(x, x.flag(SF) != x.flag(OF))


@form("jge_rel8", enc="o32 7D cb", bytes="7d00", asm="jge 2", cite="SDM Vol. 2A Jcc")
def jge_rel8(x):
    """JGE/JNL rel8: jump if SF = OF."""
    _jcc(x, x.flag(SF) == x.flag(OF))


@form("jle_rel8", enc="o32 7E cb", bytes="7e00", asm="jle 2", cite="SDM Vol. 2A Jcc")
def jle_rel8(x):
    """JLE/JNG rel8: jump if ZF = 1 or SF != OF."""
    _jcc(x, z3.Or(x.flag(ZF), x.flag(SF) != x.flag(OF)))


@form("jg_rel8", enc="o32 7F cb", bytes="7f00", asm="jg 2", cite="SDM Vol. 2A Jcc")
def jg_rel8(x):
    """JG/JNLE rel8: jump if ZF = 0 and SF = OF."""
    _jcc(x, z3.And(z3.Not(x.flag(ZF)), x.flag(SF) == x.flag(OF)))


# --- string instructions (SDM Vol. 2B MOVS/STOS/CMPS/SCAS, Vol. 2A LODS; Vol. 2B REP) ---------
#
# ES:(E)DI is the destination (no override), DS:(E)SI the source (overridable); the 67 prefix
# selects SI/DI/CX (``addr``).  The REP forms (F3, and F2 = REPNE for CMPS/SCAS) run one iteration
# per execution (``Exec.repeat``); F2 on MOVS/STOS/LODS is reserved and no instance of any form.

def _string_step(x, size: int):
    """The index increment: -size when DF = 1, +size when DF = 0."""
    return z3.If(x.flag(DF), z3.BitVecVal(-size & _MASK32, 32), z3.BitVecVal(size, 32))


def _source(x):
    """DS:(E)SI, or the overriding segment (the destination ES:(E)DI cannot be overridden)."""
    return x.seg_base(x.d.seg or "ds") + x.areg(6)


def _dest(x):
    return x.es_base + x.areg(7)


def _movs(x, size: int) -> None:
    step = _string_step(x, size)
    x.seg_store("es", _dest(x), size, x.seg_load(x.d.seg or "ds", _source(x), size))
    x.set_areg(6, x.areg(6) + step)
    x.set_areg(7, x.areg(7) + step)


def _stos(x, size: int) -> None:
    step = _string_step(x, size)
    x.seg_store("es", _dest(x), size, x.gpr(0, size))
    x.set_areg(7, x.areg(7) + step)


def _lods(x, size: int) -> None:
    step = _string_step(x, size)
    x.set_gpr(0, size, x.seg_load(x.d.seg or "ds", _source(x), size))
    x.set_areg(6, x.areg(6) + step)


def _cmps(x, size: int) -> None:
    """Flags of [source] - [destination], as SUB; both index registers step."""
    step = _string_step(x, size)
    _set_flags(x, **_sub(x.seg_load(x.d.seg or "ds", _source(x), size), x.seg_load("es", _dest(x), size))[1])
    x.set_areg(6, x.areg(6) + step)
    x.set_areg(7, x.areg(7) + step)


def _scas(x, size: int) -> None:
    """Flags of AL/AX/EAX - [destination], as SUB."""
    step = _string_step(x, size)
    _set_flags(x, **_sub(x.gpr(0, size), x.seg_load("es", _dest(x), size))[1])
    x.set_areg(7, x.areg(7) + step)


def _rep(x, op, size: int) -> None:
    x.repeat(lambda: op(x, size))


def _repe(x, op, size: int) -> None:
    """REPE/REPZ: the loop also ends when ZF = 0 after an iteration."""
    x.repeat(lambda: op(x, size), stop=lambda: z3.Not(x.flag(ZF)))


def _repne(x, op, size: int) -> None:
    """REPNE/REPNZ: the loop also ends when ZF = 1 after an iteration."""
    x.repeat(lambda: op(x, size), stop=lambda: x.flag(ZF))


_MOVS = "SDM Vol. 2B MOVS/MOVSB/MOVSW/MOVSD/MOVSQ"
_STOS = "SDM Vol. 2B STOS/STOSB/STOSW/STOSD/STOSQ"
_LODS = "SDM Vol. 2A LODS/LODSB/LODSW/LODSD/LODSQ"
_CMPS = "SDM Vol. 2A CMPS/CMPSB/CMPSW/CMPSD/CMPSQ"
_SCAS = "SDM Vol. 2B SCAS/SCASB/SCASW/SCASD"
_REPC = "; Vol. 2B REP/REPE/REPZ/REPNE/REPNZ"


@form("movsb", enc="A4 addr", bytes="a4", asm="movsb byte ptr es:[edi], byte ptr [esi]", cite=_MOVS)
def movsb(x):
    """MOVSB: ES:[EDI] := DS:[ESI] (byte); ESI, EDI step by 1 in the direction DF gives."""
    _movs(x, 1)


@form("movsw", enc="o16 A5 addr", bytes="66a5", asm="movsw word ptr es:[edi], word ptr [esi]",
      cite=_MOVS)
def movsw(x):
    """MOVSW: ES:[EDI] := DS:[ESI] (word); ESI, EDI step by 2."""
    _movs(x, 2)


@form("movsd", enc="o32 A5 addr", bytes="a5", asm="movsd dword ptr es:[edi], dword ptr [esi]",
      cite=_MOVS)
def movsd(x):
    """MOVSD: ES:[EDI] := DS:[ESI] (dword); ESI, EDI step by 4 in the direction DF gives."""
    _movs(x, 4)


@form("stosb", enc="AA addr", bytes="aa", asm="stosb byte ptr es:[edi], al", cite=_STOS)
def stosb(x):
    """STOSB: ES:[EDI] := AL; EDI steps by 1 in the direction DF gives."""
    _stos(x, 1)


@form("stosw", enc="o16 AB addr", bytes="66ab", asm="stosw word ptr es:[edi], ax", cite=_STOS)
def stosw(x):
    """STOSW: ES:[EDI] := AX; EDI steps by 2."""
    _stos(x, 2)


@form("stosd", enc="o32 AB addr", bytes="ab", asm="stosd dword ptr es:[edi], eax", cite=_STOS)
def stosd(x):
    """STOSD: ES:[EDI] := EAX; EDI steps by 4 in the direction DF gives."""
    _stos(x, 4)


@form("lodsb", enc="AC addr", bytes="ac", asm="lodsb al, byte ptr [esi]", cite=_LODS)
def lodsb(x):
    """LODSB: AL := DS:[ESI]; ESI steps by 1 in the direction DF gives."""
    _lods(x, 1)


@form("lodsw", enc="o16 AD addr", bytes="66ad", asm="lodsw ax, word ptr [esi]", cite=_LODS)
def lodsw(x):
    """LODSW: AX := DS:[ESI]; ESI steps by 2."""
    _lods(x, 2)


@form("lodsd", enc="o32 AD addr", bytes="ad", asm="lodsd eax, dword ptr [esi]", cite=_LODS)
def lodsd(x):
    """LODSD: EAX := DS:[ESI]; ESI steps by 4 in the direction DF gives."""
    _lods(x, 4)


@form("cmpsb", enc="A6 addr", bytes="a6", asm="cmpsb byte ptr [esi], byte ptr es:[edi]", cite=_CMPS)
def cmpsb(x):
    """CMPSB: flags of DS:[ESI] - ES:[EDI] (bytes); ESI, EDI step by 1."""
    _cmps(x, 1)


@form("cmpsw", enc="o16 A7 addr", bytes="66a7", asm="cmpsw word ptr [esi], word ptr es:[edi]",
      cite=_CMPS)
def cmpsw(x):
    _cmps(x, 2)


@form("cmpsd", enc="o32 A7 addr", bytes="a7", asm="cmpsd dword ptr [esi], dword ptr es:[edi]",
      cite=_CMPS)
def cmpsd(x):
    _cmps(x, 4)


@form("scasb", enc="AE addr", bytes="ae", asm="scasb al, byte ptr es:[edi]", cite=_SCAS)
def scasb(x):
    """SCASB: flags of AL - ES:[EDI]; EDI steps by 1."""
    _scas(x, 1)


@form("scasw", enc="o16 AF addr", bytes="66af", asm="scasw ax, word ptr es:[edi]", cite=_SCAS)
def scasw(x):
    _scas(x, 2)


@form("scasd", enc="o32 AF addr", bytes="af", asm="scasd eax, dword ptr es:[edi]", cite=_SCAS)
def scasd(x):
    _scas(x, 4)


@form("rep_movsb", enc="F3 A4 addr", bytes="f3a4",
      asm="rep movsb byte ptr es:[edi], byte ptr [esi]", cite=_MOVS + _REPC)
def rep_movsb(x):
    _rep(x, _movs, 1)


@form("rep_movsw", enc="o16 F3 A5 addr", bytes="66f3a5",
      asm="rep movsw word ptr es:[edi], word ptr [esi]", cite=_MOVS + _REPC)
def rep_movsw(x):
    _rep(x, _movs, 2)


@form("rep_movsd", enc="o32 F3 A5 addr", bytes="f3a5",
      asm="rep movsd dword ptr es:[edi], dword ptr [esi]", cite=_MOVS + _REPC)
def rep_movsd(x):
    _rep(x, _movs, 4)


@form("rep_stosb", enc="F3 AA addr", bytes="f3aa", asm="rep stosb byte ptr es:[edi], al",
      cite=_STOS + _REPC)
def rep_stosb(x):
    _rep(x, _stos, 1)


@form("rep_stosw", enc="o16 F3 AB addr", bytes="66f3ab", asm="rep stosw word ptr es:[edi], ax",
      cite=_STOS + _REPC)
def rep_stosw(x):
    _rep(x, _stos, 2)


@form("rep_stosd", enc="o32 F3 AB addr", bytes="f3ab", asm="rep stosd dword ptr es:[edi], eax",
      cite=_STOS + _REPC)
def rep_stosd(x):
    _rep(x, _stos, 4)


@form("rep_lodsb", enc="F3 AC addr", bytes="f3ac", asm="rep lodsb al, byte ptr [esi]",
      cite=_LODS + _REPC)
def rep_lodsb(x):
    _rep(x, _lods, 1)


@form("rep_lodsw", enc="o16 F3 AD addr", bytes="66f3ad", asm="rep lodsw ax, word ptr [esi]",
      cite=_LODS + _REPC)
def rep_lodsw(x):
    _rep(x, _lods, 2)


@form("rep_lodsd", enc="o32 F3 AD addr", bytes="f3ad", asm="rep lodsd eax, dword ptr [esi]",
      cite=_LODS + _REPC)
def rep_lodsd(x):
    _rep(x, _lods, 4)


@form("repe_cmpsb", enc="F3 A6 addr", bytes="f3a6",
      asm="repe cmpsb byte ptr [esi], byte ptr es:[edi]", cite=_CMPS + _REPC)
def repe_cmpsb(x):
    _repe(x, _cmps, 1)


@form("repe_cmpsw", enc="o16 F3 A7 addr", bytes="66f3a7",
      asm="repe cmpsw word ptr [esi], word ptr es:[edi]", cite=_CMPS + _REPC)
def repe_cmpsw(x):
    _repe(x, _cmps, 2)


@form("repe_cmpsd", enc="o32 F3 A7 addr", bytes="f3a7",
      asm="repe cmpsd dword ptr [esi], dword ptr es:[edi]", cite=_CMPS + _REPC)
def repe_cmpsd(x):
    _repe(x, _cmps, 4)


@form("repne_cmpsb", enc="F2 A6 addr", bytes="f2a6",
      asm="repne cmpsb byte ptr [esi], byte ptr es:[edi]", cite=_CMPS + _REPC)
def repne_cmpsb(x):
    _repne(x, _cmps, 1)


@form("repne_cmpsw", enc="o16 F2 A7 addr", bytes="66f2a7",
      asm="repne cmpsw word ptr [esi], word ptr es:[edi]", cite=_CMPS + _REPC)
def repne_cmpsw(x):
    _repne(x, _cmps, 2)


@form("repne_cmpsd", enc="o32 F2 A7 addr", bytes="f2a7",
      asm="repne cmpsd dword ptr [esi], dword ptr es:[edi]", cite=_CMPS + _REPC)
def repne_cmpsd(x):
    _repne(x, _cmps, 4)


@form("repe_scasb", enc="F3 AE addr", bytes="f3ae", asm="repe scasb al, byte ptr es:[edi]",
      cite=_SCAS + _REPC)
def repe_scasb(x):
    _repe(x, _scas, 1)


@form("repe_scasw", enc="o16 F3 AF addr", bytes="66f3af", asm="repe scasw ax, word ptr es:[edi]",
      cite=_SCAS + _REPC)
def repe_scasw(x):
    _repe(x, _scas, 2)


@form("repe_scasd", enc="o32 F3 AF addr", bytes="f3af", asm="repe scasd eax, dword ptr es:[edi]",
      cite=_SCAS + _REPC)
def repe_scasd(x):
    _repe(x, _scas, 4)


@form("repne_scasb", enc="F2 AE addr", bytes="f2ae", asm="repne scasb al, byte ptr es:[edi]",
      cite=_SCAS + _REPC)
def repne_scasb(x):
    _repne(x, _scas, 1)


@form("repne_scasw", enc="o16 F2 AF addr", bytes="66f2af", asm="repne scasw ax, word ptr es:[edi]",
      cite=_SCAS + _REPC)
def repne_scasw(x):
    _repne(x, _scas, 2)


@form("repne_scasd", enc="o32 F2 AF addr", bytes="f2af", asm="repne scasd eax, dword ptr es:[edi]",
      cite=_SCAS + _REPC)
def repne_scasd(x):
    _repne(x, _scas, 4)


# --- flag instructions on the user bits -------------------------------------------------------

@form("cld", enc="FC", bytes="fc", asm="cld", cite="SDM Vol. 2A CLD")
def cld(x):
    """CLD: DF := 0 (string instructions count up)."""
    x.set_flag(DF, False)


@form("std", enc="FD", bytes="fd", asm="std", cite="SDM Vol. 2B STD")
def std(x):
    """STD: DF := 1 (string instructions count down)."""
    x.set_flag(DF, True)


@form("clc", enc="F8", bytes="f8", asm="clc", cite="SDM Vol. 2A CLC")
def clc(x):
    """CLC: CF := 0."""
    x.set_flag(CF, False)


@form("stc", enc="F9", bytes="f9", asm="stc", cite="SDM Vol. 2B STC")
def stc(x):
    """STC: CF := 1."""
    x.set_flag(CF, True)


@form("cmc", enc="F5", bytes="f5", asm="cmc", cite="SDM Vol. 2A CMC")
def cmc(x):
    """CMC: CF := NOT CF."""
    x.set_flag(CF, z3.Not(x.flag(CF)))
