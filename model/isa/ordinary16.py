"""The 16-bit operand-size (66-prefixed) variants of the ordinary forms in ``ordinary`` (SDM Vol. 2).

Each is the ``o16`` sibling of an ``o32`` form there, with the same semantics at 16 bits: a
16-bit register destination keeps the upper half of its register (SDM Vol. 1 3.4.1.1), flags come
from the 16-bit result, and a near transfer truncates EIP to 16 bits ("IF OperandSize = 16 THEN
EIP := tempEIP AND 0000FFFFH", SDM Vol. 2A CALL/JMP/Jcc, Vol. 2B RET).  They are ordinary in
the same sense: the verifier proves them innocuous, nothing here says so.
"""

from __future__ import annotations

import z3

from ..form import form
from ..state import AF, CF, OF, PF, SF, ZF
from .ordinary import (_LOGIC, _SHIFT, _SHIFT_BY_1, _add, _alu_into_reg, _alu_into_rm, _imm,
                       _logic, _msb, _rel8, _set_flags, _shift, _simm8, _sub, enter_frame)


def _ip(v):
    """EIP := v AND 0000FFFFH."""
    return z3.ZeroExt(16, z3.Extract(15, 0, v))


def _simm16(x):
    """A rel16 sign-extended to 32 bits."""
    return z3.BitVecVal(x.d.imm - 0x10000 if x.d.imm & 0x8000 else x.d.imm, 32)


def _jcc16(x, cond) -> None:
    with x.when(cond):
        x.jump(_ip(_rel8(x)))


# --- data movement ---------------------------------------------------------------------------

@form("nop_o16", enc="o16 90", bytes="6690", asm="nop",
      cite="SDM Vol. 2B NOP", theme="ordinary")
def nop_o16(x):
    """NOP with 16-bit operand size (66 90): no operation."""
    pass

@form("mov_rm16_r16", enc="o16 89 /r", bytes="6689c8", asm="mov ax, cx",
      cite="SDM Vol. 2B MOV", theme="ordinary")
def mov_rm16_r16(x):
    """MOV r/m16, r16: DEST := SRC; the upper half of a register destination is kept."""
    x.set_rm(2, x.reg(2))

@form("mov_r16_rm16", enc="o16 8B /r", bytes="668bc1", asm="mov ax, cx",
      cite="SDM Vol. 2B MOV", theme="ordinary")
def mov_r16_rm16(x):
    """MOV r16, r/m16: DEST := SRC."""
    x.set_reg(2, x.rm(2))

@form("mov_r16_imm16", enc="o16 B8+r iw", bytes="66b87856", asm="mov ax, 0x5678",
      cite="SDM Vol. 2B MOV", theme="ordinary")
def mov_r16_imm16(x):
    """MOV r16, imm16."""
    x.set_gpr(x.d.reg, 2, _imm(x, 2))

@form("mov_rm16_imm16", enc="o16 C7 /0 iw", bytes="66c7007856", asm="mov word ptr [eax], 0x5678",
      cite="SDM Vol. 2B MOV", theme="ordinary")
def mov_rm16_imm16(x):
    """MOV r/m16, imm16."""
    x.set_rm(2, _imm(x, 2))

@form("movzx_r16_rm8", enc="o16 0F B6 /r", bytes="660fb6c1", asm="movzx ax, cl",
      cite="SDM Vol. 2B MOVZX", theme="ordinary")
def movzx_r16_rm8(x):
    """MOVZX r16, r/m8: DEST := ZeroExtend(SRC)."""
    x.set_reg(2, z3.ZeroExt(8, x.rm(1)))

@form("movzx_r16_rm16", enc="o16 0F B7 /r", bytes="660fb7c1", asm="movzx ax, cx",
      cite="SDM Vol. 2B MOVZX", theme="ordinary")
def movzx_r16_rm16(x):
    """MOVZX r16, r/m16: a 16-bit move (no extension to do)."""
    x.set_reg(2, x.rm(2))

@form("movsx_r16_rm8", enc="o16 0F BE /r", bytes="660fbec1", asm="movsx ax, cl",
      cite="SDM Vol. 2B MOVSX", theme="ordinary")
def movsx_r16_rm8(x):
    """MOVSX r16, r/m8: DEST := SignExtend(SRC)."""
    x.set_reg(2, z3.SignExt(8, x.rm(1)))

@form("movsx_r16_rm16", enc="o16 0F BF /r", bytes="660fbfc1", asm="movsx ax, cx",
      cite="SDM Vol. 2B MOVSX", theme="ordinary")
def movsx_r16_rm16(x):
    """MOVSX r16, r/m16: a 16-bit move."""
    x.set_reg(2, x.rm(2))

@form("lea_r16_m", enc="o16 8D /r mem", bytes="668d4304", asm="lea ax, [ebx + 4]",
      cite="SDM Vol. 2A LEA", theme="ordinary")
def lea_r16_m(x):
    """LEA r16, m: the low 16 bits of the effective offset (SDM LEA: operand size 16, address size 32 or 16)."""
    x.set_reg(2, x.offset())

@form("xchg_rm16_r16", enc="o16 87 /r lock", bytes="6687c8", asm="xchg ax, cx",
      cite="SDM Vol. 2D XCHG", theme="ordinary")
def xchg_rm16_r16(x):
    """XCHG r/m16, r16: swap the operands."""
    a, b = x.rm(2), x.reg(2)
    x.set_rm(2, b)
    x.set_reg(2, a)

@form("cwd", enc="o16 99", bytes="6699", asm="cwd",
      cite="SDM Vol. 2A CWD/CDQ/CQO", theme="ordinary")
def cwd(x):
    """CWD: DX := every bit a copy of AX[15]."""
    x.set_gpr(2, 2, z3.If(_msb(x.gpr(0, 2)), z3.BitVecVal(0xFFFF, 16), z3.BitVecVal(0, 16)))

@form("cbw", enc="o16 98", bytes="6698", asm="cbw",
      cite="SDM Vol. 2A CBW/CWDE/CDQE", theme="ordinary")
def cbw(x):
    """CBW: AX := SignExtend(AL)."""
    x.set_gpr(0, 2, z3.SignExt(8, x.gpr(0, 1)))

# --- group-1 arithmetic ----------------------------------------------------------------------

@form("add_rm16_r16", enc="o16 01 /r lock", bytes="6601c8", asm="add ax, cx",
      cite="SDM Vol. 2A ADD", theme="ordinary")
def add_rm16_r16(x):
    """ADD r/m16, r16 (16-bit flags as for r/m32)."""
    _alu_into_rm(x, "add", x.reg(2), 2)

@form("or_rm16_r16", undefined_flags=_SHIFT_BY_1, enc="o16 09 /r lock", bytes="6609c8", asm="or ax, cx",
      cite="SDM Vol. 2B OR", theme="ordinary")
def or_rm16_r16(x):
    """OR r/m16, r16 (16-bit flags as for r/m32)."""
    _alu_into_rm(x, "or", x.reg(2), 2)

@form("adc_rm16_r16", enc="o16 11 /r lock", bytes="6611c8", asm="adc ax, cx",
      cite="SDM Vol. 2A ADC", theme="ordinary")
def adc_rm16_r16(x):
    """ADC r/m16, r16 (16-bit flags as for r/m32)."""
    _alu_into_rm(x, "adc", x.reg(2), 2)

@form("sbb_rm16_r16", enc="o16 19 /r lock", bytes="6619c8", asm="sbb ax, cx",
      cite="SDM Vol. 2B SBB", theme="ordinary")
def sbb_rm16_r16(x):
    """SBB r/m16, r16 (16-bit flags as for r/m32)."""
    _alu_into_rm(x, "sbb", x.reg(2), 2)

@form("and_rm16_r16", undefined_flags=_SHIFT_BY_1, enc="o16 21 /r lock", bytes="6621c8", asm="and ax, cx",
      cite="SDM Vol. 2A AND", theme="ordinary")
def and_rm16_r16(x):
    """AND r/m16, r16 (16-bit flags as for r/m32)."""
    _alu_into_rm(x, "and", x.reg(2), 2)

@form("sub_rm16_r16", enc="o16 29 /r lock", bytes="6629c8", asm="sub ax, cx",
      cite="SDM Vol. 2B SUB", theme="ordinary")
def sub_rm16_r16(x):
    """SUB r/m16, r16 (16-bit flags as for r/m32)."""
    _alu_into_rm(x, "sub", x.reg(2), 2)

@form("xor_rm16_r16", undefined_flags=_SHIFT_BY_1, enc="o16 31 /r lock", bytes="6631c8", asm="xor ax, cx",
      cite="SDM Vol. 2D XOR", theme="ordinary")
def xor_rm16_r16(x):
    """XOR r/m16, r16 (16-bit flags as for r/m32)."""
    _alu_into_rm(x, "xor", x.reg(2), 2)

@form("cmp_rm16_r16", enc="o16 39 /r", bytes="6639c8", asm="cmp ax, cx",
      cite="SDM Vol. 2A CMP", theme="ordinary")
def cmp_rm16_r16(x):
    """CMP r/m16, r16 (16-bit flags as for r/m32)."""
    _alu_into_rm(x, "cmp", x.reg(2), 2)

@form("add_r16_rm16", enc="o16 03 /r", bytes="6603c1", asm="add ax, cx",
      cite="SDM Vol. 2A ADD", theme="ordinary")
def add_r16_rm16(x):
    """ADD r16, r/m16."""
    _alu_into_reg(x, "add", 2)

@form("or_r16_rm16", undefined_flags=_SHIFT_BY_1, enc="o16 0B /r", bytes="660bc1", asm="or ax, cx",
      cite="SDM Vol. 2B OR", theme="ordinary")
def or_r16_rm16(x):
    """OR r16, r/m16."""
    _alu_into_reg(x, "or", 2)

@form("adc_r16_rm16", enc="o16 13 /r", bytes="6613c1", asm="adc ax, cx",
      cite="SDM Vol. 2A ADC", theme="ordinary")
def adc_r16_rm16(x):
    """ADC r16, r/m16."""
    _alu_into_reg(x, "adc", 2)

@form("sbb_r16_rm16", enc="o16 1B /r", bytes="661bc1", asm="sbb ax, cx",
      cite="SDM Vol. 2B SBB", theme="ordinary")
def sbb_r16_rm16(x):
    """SBB r16, r/m16."""
    _alu_into_reg(x, "sbb", 2)

@form("and_r16_rm16", undefined_flags=_SHIFT_BY_1, enc="o16 23 /r", bytes="6623c1", asm="and ax, cx",
      cite="SDM Vol. 2A AND", theme="ordinary")
def and_r16_rm16(x):
    """AND r16, r/m16."""
    _alu_into_reg(x, "and", 2)

@form("sub_r16_rm16", enc="o16 2B /r", bytes="662bc1", asm="sub ax, cx",
      cite="SDM Vol. 2B SUB", theme="ordinary")
def sub_r16_rm16(x):
    """SUB r16, r/m16."""
    _alu_into_reg(x, "sub", 2)

@form("xor_r16_rm16", undefined_flags=_SHIFT_BY_1, enc="o16 33 /r", bytes="6633c1", asm="xor ax, cx",
      cite="SDM Vol. 2D XOR", theme="ordinary")
def xor_r16_rm16(x):
    """XOR r16, r/m16."""
    _alu_into_reg(x, "xor", 2)

@form("cmp_r16_rm16", enc="o16 3B /r", bytes="663bc1", asm="cmp ax, cx",
      cite="SDM Vol. 2A CMP", theme="ordinary")
def cmp_r16_rm16(x):
    """CMP r16, r/m16."""
    _alu_into_reg(x, "cmp", 2)

@form("add_rm16_imm16", enc="o16 81 /0 iw lock", bytes="6681c07856", asm="add ax, 0x5678",
      cite="SDM Vol. 2A ADD", theme="ordinary")
def add_rm16_imm16(x):
    """ADD r/m16, imm16."""
    _alu_into_rm(x, "add", _imm(x, 2), 2)

@form("or_rm16_imm16", undefined_flags=_SHIFT_BY_1, enc="o16 81 /1 iw lock", bytes="6681c87856", asm="or ax, 0x5678",
      cite="SDM Vol. 2B OR", theme="ordinary")
def or_rm16_imm16(x):
    """OR r/m16, imm16."""
    _alu_into_rm(x, "or", _imm(x, 2), 2)

@form("adc_rm16_imm16", enc="o16 81 /2 iw lock", bytes="6681d07856", asm="adc ax, 0x5678",
      cite="SDM Vol. 2A ADC", theme="ordinary")
def adc_rm16_imm16(x):
    """ADC r/m16, imm16."""
    _alu_into_rm(x, "adc", _imm(x, 2), 2)

@form("sbb_rm16_imm16", enc="o16 81 /3 iw lock", bytes="6681d87856", asm="sbb ax, 0x5678",
      cite="SDM Vol. 2B SBB", theme="ordinary")
def sbb_rm16_imm16(x):
    """SBB r/m16, imm16."""
    _alu_into_rm(x, "sbb", _imm(x, 2), 2)

@form("and_rm16_imm16", undefined_flags=_SHIFT_BY_1, enc="o16 81 /4 iw lock", bytes="6681e07856", asm="and ax, 0x5678",
      cite="SDM Vol. 2A AND", theme="ordinary")
def and_rm16_imm16(x):
    """AND r/m16, imm16."""
    _alu_into_rm(x, "and", _imm(x, 2), 2)

@form("sub_rm16_imm16", enc="o16 81 /5 iw lock", bytes="6681e87856", asm="sub ax, 0x5678",
      cite="SDM Vol. 2B SUB", theme="ordinary")
def sub_rm16_imm16(x):
    """SUB r/m16, imm16."""
    _alu_into_rm(x, "sub", _imm(x, 2), 2)

@form("xor_rm16_imm16", undefined_flags=_SHIFT_BY_1, enc="o16 81 /6 iw lock", bytes="6681f07856", asm="xor ax, 0x5678",
      cite="SDM Vol. 2D XOR", theme="ordinary")
def xor_rm16_imm16(x):
    """XOR r/m16, imm16."""
    _alu_into_rm(x, "xor", _imm(x, 2), 2)

@form("cmp_rm16_imm16", enc="o16 81 /7 iw", bytes="6681f87856", asm="cmp ax, 0x5678",
      cite="SDM Vol. 2A CMP", theme="ordinary")
def cmp_rm16_imm16(x):
    """CMP r/m16, imm16."""
    _alu_into_rm(x, "cmp", _imm(x, 2), 2)

@form("add_rm16_imm8", enc="o16 83 /0 ib lock", bytes="6683c001", asm="add ax, 1",
      cite="SDM Vol. 2A ADD", theme="ordinary")
def add_rm16_imm8(x):
    """ADD r/m16, imm8 sign-extended to 16 bits."""
    _alu_into_rm(x, "add", _simm8(x, 2), 2)

@form("or_rm16_imm8", undefined_flags=_SHIFT_BY_1, enc="o16 83 /1 ib lock", bytes="6683c801", asm="or ax, 1",
      cite="SDM Vol. 2B OR", theme="ordinary")
def or_rm16_imm8(x):
    """OR r/m16, imm8 sign-extended to 16 bits."""
    _alu_into_rm(x, "or", _simm8(x, 2), 2)

@form("adc_rm16_imm8", enc="o16 83 /2 ib lock", bytes="6683d001", asm="adc ax, 1",
      cite="SDM Vol. 2A ADC", theme="ordinary")
def adc_rm16_imm8(x):
    """ADC r/m16, imm8 sign-extended to 16 bits."""
    _alu_into_rm(x, "adc", _simm8(x, 2), 2)

@form("sbb_rm16_imm8", enc="o16 83 /3 ib lock", bytes="6683d801", asm="sbb ax, 1",
      cite="SDM Vol. 2B SBB", theme="ordinary")
def sbb_rm16_imm8(x):
    """SBB r/m16, imm8 sign-extended to 16 bits."""
    _alu_into_rm(x, "sbb", _simm8(x, 2), 2)

@form("and_rm16_imm8", undefined_flags=_SHIFT_BY_1, enc="o16 83 /4 ib lock", bytes="6683e0f0", asm="and ax, 0xfff0",
      cite="SDM Vol. 2A AND", theme="ordinary")
def and_rm16_imm8(x):
    """AND r/m16, imm8 sign-extended to 16 bits."""
    _alu_into_rm(x, "and", _simm8(x, 2), 2)

@form("sub_rm16_imm8", enc="o16 83 /5 ib lock", bytes="6683e801", asm="sub ax, 1",
      cite="SDM Vol. 2B SUB", theme="ordinary")
def sub_rm16_imm8(x):
    """SUB r/m16, imm8 sign-extended to 16 bits."""
    _alu_into_rm(x, "sub", _simm8(x, 2), 2)

@form("xor_rm16_imm8", undefined_flags=_SHIFT_BY_1, enc="o16 83 /6 ib lock", bytes="6683f001", asm="xor ax, 1",
      cite="SDM Vol. 2D XOR", theme="ordinary")
def xor_rm16_imm8(x):
    """XOR r/m16, imm8 sign-extended to 16 bits."""
    _alu_into_rm(x, "xor", _simm8(x, 2), 2)

@form("cmp_rm16_imm8", enc="o16 83 /7 ib", bytes="6683f801", asm="cmp ax, 1",
      cite="SDM Vol. 2A CMP", theme="ordinary")
def cmp_rm16_imm8(x):
    """CMP r/m16, imm8 sign-extended to 16 bits."""
    _alu_into_rm(x, "cmp", _simm8(x, 2), 2)

@form("test_rm16_r16", undefined_flags=_SHIFT_BY_1, enc="o16 85 /r", bytes="6685c8", asm="test ax, cx",
      cite="SDM Vol. 2B TEST", theme="ordinary")
def test_rm16_r16(x):
    """TEST r/m16, r16: flags of the AND; nothing written."""
    _set_flags(x, **_logic(x.rm(2) & x.reg(2))[1])

@form("test_rm16_imm16", undefined_flags=_SHIFT_BY_1, enc="o16 F7 /0 iw", bytes="66f7c07856", asm="test ax, 0x5678",
      cite="SDM Vol. 2B TEST", theme="ordinary")
def test_rm16_imm16(x):
    """TEST r/m16, imm16."""
    _set_flags(x, **_logic(x.rm(2) & _imm(x, 2))[1])

# --- unary arithmetic and shifts ---------------------------------------------------------------

@form("inc_r16", enc="o16 40+r", bytes="6640", asm="inc ax",
      cite="SDM Vol. 2A INC", theme="ordinary")
def inc_r16(x):
    """INC r16: CF unchanged."""
    r, flags = _add(x.gpr(x.d.reg, 2), z3.BitVecVal(1, 16))
    del flags["cf"]
    x.set_gpr(x.d.reg, 2, r)
    _set_flags(x, **flags)

@form("dec_r16", enc="o16 48+r", bytes="6648", asm="dec ax",
      cite="SDM Vol. 2A DEC", theme="ordinary")
def dec_r16(x):
    """DEC r16: CF unchanged."""
    r, flags = _sub(x.gpr(x.d.reg, 2), z3.BitVecVal(1, 16))
    del flags["cf"]
    x.set_gpr(x.d.reg, 2, r)
    _set_flags(x, **flags)

@form("not_rm16", enc="o16 F7 /2 lock", bytes="66f7d0", asm="not ax",
      cite="SDM Vol. 2B NOT", theme="ordinary")
def not_rm16(x):
    """NOT r/m16; no flags."""
    x.set_rm(2, ~x.rm(2))

@form("neg_rm16", enc="o16 F7 /3 lock", bytes="66f7d8", asm="neg ax",
      cite="SDM Vol. 2B NEG", theme="ordinary")
def neg_rm16(x):
    """NEG r/m16: CF = (DEST != 0)."""
    r, flags = _sub(z3.BitVecVal(0, 16), x.rm(2))
    x.set_rm(2, r)
    _set_flags(x, **flags)

@form("shl_rm16_imm8", undefined_flags=_SHIFT, enc="o16 C1 /4 ib", bytes="66c1e004", asm="shl ax, 4",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def shl_rm16_imm8(x):
    """SHL r/m16, imm8 (count & 31)."""
    _shift(x, "shl", z3.BitVecVal(x.d.imm, 8), 2)

@form("shr_rm16_imm8", undefined_flags=_SHIFT, enc="o16 C1 /5 ib", bytes="66c1e804", asm="shr ax, 4",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def shr_rm16_imm8(x):
    """SHR r/m16, imm8 (count & 31)."""
    _shift(x, "shr", z3.BitVecVal(x.d.imm, 8), 2)

@form("sar_rm16_imm8", undefined_flags=_SHIFT, enc="o16 C1 /7 ib", bytes="66c1f804", asm="sar ax, 4",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def sar_rm16_imm8(x):
    """SAR r/m16, imm8 (count & 31)."""
    _shift(x, "sar", z3.BitVecVal(x.d.imm, 8), 2)

@form("shl_rm16_1", undefined_flags=_SHIFT_BY_1, enc="o16 D1 /4", bytes="66d1e0", asm="shl ax, 1",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def shl_rm16_1(x):
    """SHL r/m16, 1."""
    _shift(x, "shl", z3.BitVecVal(1, 8), 2)

@form("shr_rm16_1", undefined_flags=_SHIFT_BY_1, enc="o16 D1 /5", bytes="66d1e8", asm="shr ax, 1",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def shr_rm16_1(x):
    """SHR r/m16, 1."""
    _shift(x, "shr", z3.BitVecVal(1, 8), 2)

@form("sar_rm16_1", undefined_flags=_SHIFT_BY_1, enc="o16 D1 /7", bytes="66d1f8", asm="sar ax, 1",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def sar_rm16_1(x):
    """SAR r/m16, 1."""
    _shift(x, "sar", z3.BitVecVal(1, 8), 2)

@form("shl_rm16_cl", undefined_flags=_SHIFT, enc="o16 D3 /4", bytes="66d3e0", asm="shl ax, cl",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def shl_rm16_cl(x):
    """SHL r/m16, CL (count CL & 31)."""
    _shift(x, "shl", x.gpr(1, 1), 2)

@form("shr_rm16_cl", undefined_flags=_SHIFT, enc="o16 D3 /5", bytes="66d3e8", asm="shr ax, cl",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def shr_rm16_cl(x):
    """SHR r/m16, CL (count CL & 31)."""
    _shift(x, "shr", x.gpr(1, 1), 2)

@form("sar_rm16_cl", undefined_flags=_SHIFT, enc="o16 D3 /7", bytes="66d3f8", asm="sar ax, cl",
      cite="SDM Vol. 2B SAL/SAR/SHL/SHR", theme="ordinary")
def sar_rm16_cl(x):
    """SAR r/m16, CL (count CL & 31)."""
    _shift(x, "sar", x.gpr(1, 1), 2)

# --- stack -------------------------------------------------------------------------------------

@form("push_r16", enc="o16 50+r", bytes="6650", asm="push ax",
      cite="SDM Vol. 2B PUSH", theme="ordinary")
def push_r16(x):
    """PUSH r16: ESP -= 2; SS:[ESP] := r16 (PUSH SP stores the value before the decrement)."""
    x.push(x.gpr(x.d.reg, 2), 2)

@form("enter_o16", enc="o16 C8 iw ib", bytes="66c8100002", asm="enter 0x10, 2",
      cite="SDM Vol. 2A ENTER", theme="ordinary")
def enter_o16(x):
    """ENTER imm16, imm8 with 16-bit operand size: the pushes are words (BP, the frame pointers,
    the frame's own SP); on a 32-bit stack EBP := the ESP after the first push, ESP -= imm16."""
    enter_frame(x, 2)

@form("pop_r16", enc="o16 58+r", bytes="6658", asm="pop ax",
      cite="SDM Vol. 2B POP", theme="ordinary")
def pop_r16(x):
    """POP r16: r16 := SS:[ESP]; ESP += 2 (POP SP: SP is the popped word, ESP's upper half as after the increment)."""
    v = x.pop(2)
    x.set_gpr(x.d.reg, 2, v)

@form("push_imm16", enc="o16 68 iw", bytes="66687856", asm="push 0x5678",
      cite="SDM Vol. 2B PUSH", theme="ordinary")
def push_imm16(x):
    """PUSH imm16: ESP -= 2."""
    x.push(_imm(x, 2), 2)

@form("push_imm8_o16", enc="o16 6A ib", bytes="666aff", asm="push -1",
      cite="SDM Vol. 2B PUSH", theme="ordinary")
def push_imm8_o16(x):
    """PUSH imm8 with 16-bit operand size: the sign-extended word, ESP -= 2."""
    x.push(_simm8(x, 2), 2)

# --- near control transfers (EIP := target AND 0000FFFFH with 16-bit operand size) -----------

@form("call_rel16", enc="o16 E8 cw", bytes="66e80000", asm="call 4",
      cite="SDM Vol. 2A CALL", theme="ordinary")
def call_rel16(x):
    """CALL rel16: push IP (the next EIP's low word), then EIP := (next EIP + rel16) AND FFFFH."""
    x.push(z3.Extract(15, 0, x.next_eip), 2)
    x.jump(_ip(x.next_eip + _simm16(x)))

@form("ret_near_o16", enc="o16 C3", bytes="66c3", asm="ret",
      cite="SDM Vol. 2B RET", theme="ordinary")
def ret_near_o16(x):
    """RET with 16-bit operand size: EIP := ZeroExtend(pop16())."""
    x.jump(z3.ZeroExt(16, x.pop(2)))

@form("ret_near_imm16_o16", enc="o16 C2 iw", bytes="66c20800", asm="ret 8",
      cite="SDM Vol. 2B RET", theme="ordinary")
def ret_near_imm16_o16(x):
    """RET imm16 with 16-bit operand size: EIP := ZeroExtend(pop16()); ESP += imm16."""
    target = x.pop(2)
    x.write("esp", x.esp + x.d.imm)
    x.jump(z3.ZeroExt(16, target))

@form("jmp_rel8_o16", enc="o16 EB cb", bytes="66eb00", asm="jmp 3",
      cite="SDM Vol. 2A JMP", theme="ordinary")
def jmp_rel8_o16(x):
    """JMP rel8 with 16-bit operand size: EIP := (next EIP + rel8) AND FFFFH."""
    x.jump(_ip(_rel8(x)))

@form("jmp_rel16", enc="o16 E9 cw", bytes="66e90000", asm="jmp 4",
      cite="SDM Vol. 2A JMP", theme="ordinary")
def jmp_rel16(x):
    """JMP rel16: EIP := (next EIP + rel16) AND FFFFH."""
    x.jump(_ip(x.next_eip + _simm16(x)))

@form("jo_rel8_o16", enc="o16 70 cb", bytes="667000", asm="jo 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jo_rel8_o16(x):
    """JO rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, x.flag(OF))

@form("jno_rel8_o16", enc="o16 71 cb", bytes="667100", asm="jno 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jno_rel8_o16(x):
    """JNO rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.Not(x.flag(OF)))

@form("jb_rel8_o16", enc="o16 72 cb", bytes="667200", asm="jb 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jb_rel8_o16(x):
    """JB rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, x.flag(CF))

@form("jae_rel8_o16", enc="o16 73 cb", bytes="667300", asm="jae 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jae_rel8_o16(x):
    """JAE rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.Not(x.flag(CF)))

@form("je_rel8_o16", enc="o16 74 cb", bytes="667400", asm="je 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def je_rel8_o16(x):
    """JE rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, x.flag(ZF))

@form("jne_rel8_o16", enc="o16 75 cb", bytes="667500", asm="jne 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jne_rel8_o16(x):
    """JNE rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.Not(x.flag(ZF)))

@form("jbe_rel8_o16", enc="o16 76 cb", bytes="667600", asm="jbe 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jbe_rel8_o16(x):
    """JBE rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.Or(x.flag(CF), x.flag(ZF)))

@form("ja_rel8_o16", enc="o16 77 cb", bytes="667700", asm="ja 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def ja_rel8_o16(x):
    """JA rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.Not(z3.Or(x.flag(CF), x.flag(ZF))))

@form("js_rel8_o16", enc="o16 78 cb", bytes="667800", asm="js 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def js_rel8_o16(x):
    """JS rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, x.flag(SF))

@form("jns_rel8_o16", enc="o16 79 cb", bytes="667900", asm="jns 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jns_rel8_o16(x):
    """JNS rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.Not(x.flag(SF)))

@form("jp_rel8_o16", enc="o16 7A cb", bytes="667a00", asm="jp 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jp_rel8_o16(x):
    """JP rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, x.flag(PF))

@form("jnp_rel8_o16", enc="o16 7B cb", bytes="667b00", asm="jnp 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jnp_rel8_o16(x):
    """JNP rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.Not(x.flag(PF)))

@form("jl_rel8_o16", enc="o16 7C cb", bytes="667c00", asm="jl 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jl_rel8_o16(x):
    """JL rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, x.flag(SF) != x.flag(OF))

@form("jge_rel8_o16", enc="o16 7D cb", bytes="667d00", asm="jge 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jge_rel8_o16(x):
    """JGE rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, x.flag(SF) == x.flag(OF))

@form("jle_rel8_o16", enc="o16 7E cb", bytes="667e00", asm="jle 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jle_rel8_o16(x):
    """JLE rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.Or(x.flag(ZF), x.flag(SF) != x.flag(OF)))

@form("jg_rel8_o16", enc="o16 7F cb", bytes="667f00", asm="jg 3",
      cite="SDM Vol. 2A Jcc", theme="ordinary")
def jg_rel8_o16(x):
    """JG rel8 with 16-bit operand size (target AND FFFFH)."""
    _jcc16(x, z3.And(z3.Not(x.flag(ZF)), x.flag(SF) == x.flag(OF)))
