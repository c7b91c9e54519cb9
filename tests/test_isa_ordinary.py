"""Ordinary instruction forms: concrete results with flags, Capstone text, and a reference property test."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from pgvirt.model import state as st
from pgvirt.model.isa import FORMS, get
from pgvirt.model.outcome import Next
from pgvirt.model.state import AF, CF, DF, OF, PF, SF, ZF

M32 = 0xFFFFFFFF
ARITH = (CF, PF, AF, ZF, SF, OF)
MINE = [f for f in FORMS if f.theme == "ordinary"]   # ordinary and ordinary16


def run(name: str, code: str | None = None, **values) -> dict:
    out = get(name).execute(values, None if code is None else bytes.fromhex(code))
    assert isinstance(out, Next), out
    return out.state


def flags_of(s: dict) -> dict[int, int]:
    return {b: (s["flags"] >> b) & 1 for b in ARITH + (DF,)}


def fl(*bits: int) -> int:
    return sum(1 << b for b in bits)


def le(mem: dict, addr: int, size: int) -> int:
    return sum(mem[addr + k] << (8 * k) for k in range(size))


def put(addr: int, value: int, size: int) -> dict:
    return {addr + k: (value >> (8 * k)) & 0xFF for k in range(size)}


# --- the catalogue --------------------------------------------------------------------------

def test_at_least_thirty_forms():
    assert len(MINE) >= 30


@pytest.mark.parametrize("f", MINE, ids=lambda f: f.name)
def test_symbolic_run_is_faultless_and_user_only(f):
    out = f.run(st.fresh())
    assert out.checks == ()                       # no ordinary form can fault in this model
    assert set(out.effects) <= set(st.users())    # and none writes what the monitor owns


def test_undefined_flags_are_arithmetic_bits_of_logic_and_shift_forms():
    marked = {f.name: f.undefined_flags for f in FORMS if f.undefined_flags}
    assert len(marked) == 46                      # 23 forms at 32 bits, their 23 o16 siblings
    for name, mask in marked.items():
        assert mask & ~fl(*ARITH) == 0, name
        assert name.split("_")[0] in ("or", "and", "xor", "test", "shl", "shr", "sar"), name
    assert marked["and_rm32_r32"] == fl(AF) == marked["and_rm16_r16"]
    assert marked["shl_rm32_imm8"] == fl(AF, OF)
    assert marked["shl_rm32_1"] == fl(AF)
    assert "add_rm32_r32" not in marked


# --- arithmetic with known results ----------------------------------------------------------

def test_add_wraps_to_zero():
    s = run("add_rm32_r32", eax=M32, ecx=1, eip=0x100)
    assert s["eax"] == 0 and s["eip"] == 0x102
    assert flags_of(s) == {CF: 1, PF: 1, AF: 1, ZF: 1, SF: 0, OF: 0, DF: 0}


def test_add_signed_overflow():
    s = run("add_rm32_r32", eax=0x7FFFFFFF, ecx=1)
    assert s["eax"] == 0x80000000
    assert flags_of(s) == {CF: 0, PF: 1, AF: 1, ZF: 0, SF: 1, OF: 1, DF: 0}


def test_sub_signed_overflow_and_borrow():
    s = run("sub_rm32_r32", eax=0x80000000, ecx=1)
    assert s["eax"] == 0x7FFFFFFF
    assert flags_of(s) == {CF: 0, PF: 1, AF: 1, ZF: 0, SF: 0, OF: 1, DF: 0}
    s = run("sub_rm32_r32", eax=0, ecx=1)
    assert s["eax"] == M32
    assert flags_of(s) == {CF: 1, PF: 1, AF: 1, ZF: 0, SF: 1, OF: 0, DF: 0}


def test_cmp_sets_flags_only():
    s = run("cmp_rm32_r32", eax=5, ecx=5)
    assert s["eax"] == 5 and flags_of(s)[ZF] == 1 and flags_of(s)[CF] == 0
    s = run("cmp_rm32_imm8", "83f8ff", eax=5)     # cmp eax, -1: 5 < 0xFFFFFFFF unsigned
    assert s["eax"] == 5 and flags_of(s)[CF] == 1 and flags_of(s)[ZF] == 0


def test_adc_sbb_use_carry():
    s = run("adc_rm32_r32", eax=1, ecx=2, flags=fl(CF))
    assert s["eax"] == 4 and flags_of(s)[CF] == 0
    s = run("sbb_rm32_r32", eax=0, ecx=0, flags=fl(CF))
    assert s["eax"] == M32 and flags_of(s)[CF] == 1 and flags_of(s)[SF] == 1


def test_imm8_is_sign_extended():
    s = run("add_rm32_imm8", "83c0ff", eax=5)
    assert s["eax"] == 4 and flags_of(s)[CF] == 1
    s = run("and_rm32_imm8", eax=0x12345678)       # and eax, 0xfffffff0
    assert s["eax"] == 0x12345670


def test_logic_clears_cf_of_and_af():
    s = run("xor_rm32_r32", eax=0xFF, ecx=0xFF, flags=fl(CF, OF, AF, SF))
    assert s["eax"] == 0
    assert flags_of(s) == {CF: 0, PF: 1, AF: 0, ZF: 1, SF: 0, OF: 0, DF: 0}
    s = run("test_rm32_r32", eax=0x80000000, ecx=0xF0000000)
    assert s["eax"] == 0x80000000 and flags_of(s)[SF] == 1 and flags_of(s)[ZF] == 0


def test_alu_memory_operand_with_segment_override():
    # add dword ptr fs:[ebx + 4], ecx
    mem = put(0x2014, 0x000000FF, 4)
    s = run("add_rm32_r32", "64014b04", ebx=0x10, ecx=1, fs_base=0x2000, ds_base=0x9000, mem=mem)
    assert le(s["mem"], 0x2014, 4) == 0x100 and s["eip"] == 4
    assert flags_of(s)[AF] == 1 and flags_of(s)[CF] == 0


def test_reverse_direction_writes_register():
    s = run("sub_r32_rm32", "2b13", edx=10, ebx=0x500, mem=put(0x500, 3, 4))  # sub edx, [ebx]
    assert s["edx"] == 7 and s["mem"][0x500] == 3


def test_inc_dec_keep_cf():
    s = run("inc_r32", "43", ebx=0x7FFFFFFF, flags=fl(CF))
    assert s["ebx"] == 0x80000000
    assert flags_of(s) == {CF: 1, PF: 1, AF: 1, ZF: 0, SF: 1, OF: 1, DF: 0}
    s = run("dec_r32", "4e", esi=0)
    assert s["esi"] == M32 and flags_of(s)[CF] == 0 and flags_of(s)[SF] == 1


def test_neg_and_not():
    s = run("neg_rm32", eax=0)
    assert s["eax"] == 0 and flags_of(s)[CF] == 0 and flags_of(s)[ZF] == 1
    s = run("neg_rm32", eax=0x80000000)
    assert s["eax"] == 0x80000000 and flags_of(s)[CF] == 1 and flags_of(s)[OF] == 1
    s = run("not_rm32", eax=0x0F0F0F0F, flags=fl(CF, ZF))
    assert s["eax"] == 0xF0F0F0F0 and s["flags"] == fl(CF, ZF)


def test_shifts():
    s = run("sar_rm32_imm8", eax=0x80000018)           # sar eax, 4
    assert s["eax"] == 0xF8000001 and flags_of(s)[CF] == 1 and flags_of(s)[SF] == 1
    s = run("shr_rm32_imm8", eax=0x80000010)           # shr eax, 4
    assert s["eax"] == 0x08000001 and flags_of(s)[CF] == 0 and flags_of(s)[SF] == 0
    s = run("shl_rm32_imm8", eax=0x10000001)           # shl eax, 4: bit 28 goes to CF
    assert s["eax"] == 0x00000010 and flags_of(s)[CF] == 1
    s = run("shr_rm32_1", eax=0x80000001)
    assert s["eax"] == 0x40000000 and flags_of(s)[CF] == 1 and flags_of(s)[OF] == 1
    s = run("shl_rm32_1", eax=0x40000000)
    assert s["eax"] == 0x80000000 and flags_of(s)[CF] == 0 and flags_of(s)[OF] == 1
    s = run("sar_rm32_1", eax=M32)
    assert s["eax"] == M32 and flags_of(s)[CF] == 1 and flags_of(s)[OF] == 0


def test_shift_count_masking_and_zero_count():
    s = run("shl_rm32_imm8", "c1e000", eax=0x1234, flags=fl(CF, OF, AF))   # count 0: nothing
    assert s["eax"] == 0x1234 and s["flags"] == fl(CF, OF, AF)
    s = run("shl_rm32_imm8", "c1e021", eax=0x1234)                        # 33 & 31 = 1
    assert s["eax"] == 0x2468
    s = run("shr_rm32_cl", "d3e8", eax=0x100, ecx=0xFFFFFF28, flags=fl(CF))  # cl = 0x28 -> 8
    assert s["eax"] == 1 and flags_of(s)[CF] == 0
    s = run("sar_rm32_cl", "d3f8", eax=0x100, ecx=0x20, flags=fl(ZF))       # 32 & 31 = 0
    assert s["eax"] == 0x100 and s["flags"] == fl(ZF)


# --- data movement --------------------------------------------------------------------------

def test_moves_and_extensions():
    assert run("mov_r32_imm32", "bf78563412")["edi"] == 0x12345678
    s = run("mov_rm32_imm32", "c70078563412", eax=0x40)
    assert le(s["mem"], 0x40, 4) == 0x12345678
    assert run("mov_rm32_r32", "89d9", ebx=7, ecx=1)["ecx"] == 7            # mov ecx, ebx
    assert run("mov_r32_rm32", "8b0424", esp=0x80, ss_base=0x1000,
               mem=put(0x1080, 0xCAFE, 4))["eax"] == 0xCAFE                  # mov eax, [esp]
    assert run("mov_rm8_r8", "88e0", eax=0x11223344)["eax"] == 0x11223333   # mov al, ah
    assert run("mov_r8_rm8", "8ae1", eax=0x11223344, ecx=0x55)["eax"] == 0x11225544  # mov ah, cl
    assert run("movzx_r32_rm8", "0fb6c4", eax=0x1234F0AB)["eax"] == 0xF0    # movzx eax, ah
    assert run("movsx_r32_rm8", "0fbe03", ebx=0x10, mem={0x10: 0x80})["eax"] == 0xFFFFFF80
    assert run("movzx_r32_rm16", ecx=0xFFFF8001)["eax"] == 0x8001
    assert run("movsx_r32_rm16", ecx=0xFFFF8001, eax=5)["eax"] == 0xFFFF8001
    assert run("cdq", eax=0x80000000)["edx"] == M32
    assert run("cdq", eax=0x7FFFFFFF, edx=5)["edx"] == 0
    assert run("cwde", eax=0x1234FFFE)["eax"] == 0xFFFFFFFE


def test_lea_uses_offset_not_segment():
    s = run("lea_r32_m", "8d448b08", ebx=0x100, ecx=3, ds_base=0x5000)  # lea eax, [ebx+ecx*4+8]
    assert s["eax"] == 0x114 and s["mem"] == {}


def test_xchg():
    s = run("xchg_rm32_r32", eax=1, ecx=2)
    assert (s["eax"], s["ecx"]) == (2, 1)
    s = run("xchg_rm32_r32", "8713", ebx=0x20, edx=0xAABBCCDD, mem=put(0x20, 0x11223344, 4))
    assert s["edx"] == 0x11223344 and le(s["mem"], 0x20, 4) == 0xAABBCCDD


def test_nop_changes_only_eip():
    s = run("nop", eax=9, flags=fl(ZF), eip=7)
    assert s["eip"] == 8 and s["eax"] == 9 and s["flags"] == fl(ZF)


# --- stack and near transfers ---------------------------------------------------------------

def test_push_pop():
    s = run("push_r32", "53", ebx=0xDEADBEEF, esp=0x100, ss_base=0x1000)
    assert s["esp"] == 0xFC and le(s["mem"], 0x10FC, 4) == 0xDEADBEEF
    s = run("push_r32", "54", esp=0x100)                      # PUSH ESP stores the old ESP
    assert s["esp"] == 0xFC and le(s["mem"], 0xFC, 4) == 0x100
    s = run("pop_r32", "5a", esp=0xFC, mem=put(0xFC, 0x55, 4))
    assert s["edx"] == 0x55 and s["esp"] == 0x100
    s = run("pop_r32", "5c", esp=0xFC, mem=put(0xFC, 0x777, 4))  # POP ESP keeps the loaded value
    assert s["esp"] == 0x777
    s = run("push_imm8", esp=0x100)
    assert le(s["mem"], 0xFC, 4) == M32
    s = run("push_imm32", esp=0x100)
    assert le(s["mem"], 0xFC, 4) == 0x12345678


def test_call_pushes_return_address_and_jumps():
    s = run("call_rel32", "e810000000", eip=0x1000, esp=0x200, ss_base=0x8000)
    assert s["eip"] == 0x1015 and s["esp"] == 0x1FC and le(s["mem"], 0x81FC, 4) == 0x1005
    s = run("call_rel32", "e8f6ffffff", eip=0x1000, esp=0x200)   # rel32 = -10
    assert s["eip"] == 0xFFB


def test_ret_and_ret_imm16():
    s = run("ret_near", esp=0x1FC, mem=put(0x1FC, 0x1005, 4), eip=0x3000)
    assert s["eip"] == 0x1005 and s["esp"] == 0x200
    s = run("ret_near_imm16", "c20c00", esp=0x1FC, mem=put(0x1FC, 0x1005, 4))
    assert s["eip"] == 0x1005 and s["esp"] == 0x200 + 12


def test_jmp():
    assert run("jmp_rel8", "ebfe", eip=0x40)["eip"] == 0x40
    assert run("jmp_rel8", "eb10", eip=0x40)["eip"] == 0x52
    assert run("jmp_rel32", "e900010000", eip=0x40)["eip"] == 0x145


JCC = {
    "jo_rel8": lambda f: f[OF], "jno_rel8": lambda f: not f[OF],
    "jb_rel8": lambda f: f[CF], "jae_rel8": lambda f: not f[CF],
    "je_rel8": lambda f: f[ZF], "jne_rel8": lambda f: not f[ZF],
    "jbe_rel8": lambda f: f[CF] or f[ZF], "ja_rel8": lambda f: not (f[CF] or f[ZF]),
    "js_rel8": lambda f: f[SF], "jns_rel8": lambda f: not f[SF],
    "jp_rel8": lambda f: f[PF], "jnp_rel8": lambda f: not f[PF],
    "jl_rel8": lambda f: f[SF] != f[OF], "jge_rel8": lambda f: f[SF] == f[OF],
    "jle_rel8": lambda f: f[ZF] or f[SF] != f[OF], "jg_rel8": lambda f: not f[ZF] and f[SF] == f[OF],
}


@pytest.mark.parametrize("name", sorted(JCC))
def test_jcc_taken_and_not_taken(name):
    opcode = get(name).bytes[0]
    seen = set()
    for combo in range(32):
        bits = dict(zip((CF, PF, ZF, SF, OF), ((combo >> k) & 1 for k in range(5))))
        taken = bool(JCC[name](bits))
        s = run(name, f"{opcode:02x}f0", eip=0x100, flags=fl(*(b for b, v in bits.items() if v)))
        assert s["eip"] == (0x100 + 2 - 0x10 if taken else 0x102)
        seen.add(taken)
    assert seen == {True, False}


# --- string instructions --------------------------------------------------------------------

def test_movs_forward_and_backward():
    mem = put(0x1100, 0x44332211, 4)
    s = run("movsd", esi=0x100, edi=0x200, ds_base=0x1000, es_base=0x3000, mem=mem)
    assert le(s["mem"], 0x3200, 4) == 0x44332211 and (s["esi"], s["edi"]) == (0x104, 0x204)
    s = run("movsd", esi=0x100, edi=0x200, ds_base=0x1000, es_base=0x3000, mem=mem, flags=fl(DF))
    assert le(s["mem"], 0x3200, 4) == 0x44332211 and (s["esi"], s["edi"]) == (0xFC, 0x1FC)
    s = run("movsb", esi=0x100, edi=0x200, mem={0x100: 0xAB}, flags=fl(DF))
    assert s["mem"][0x200] == 0xAB and (s["esi"], s["edi"]) == (0xFF, 0x1FF)


def test_string_source_segment_override():
    s = run("movsb", "64a4", esi=0x10, edi=0x20, fs_base=0x500, ds_base=0x900, es_base=0x700,
            mem={0x510: 0x5A, 0x910: 0x11})
    assert s["mem"][0x720] == 0x5A
    s = run("lodsd", "64ad", esi=0x10, fs_base=0x500, mem=put(0x510, 0xCAFEBABE, 4))
    assert s["eax"] == 0xCAFEBABE and s["esi"] == 0x14


def test_stos_and_lods():
    s = run("stosd", eax=0x01020304, edi=0x40, es_base=0x100)
    assert le(s["mem"], 0x140, 4) == 0x01020304 and s["edi"] == 0x44
    s = run("stosb", eax=0x77, edi=0x40, flags=fl(DF))
    assert s["mem"][0x40] == 0x77 and s["edi"] == 0x3F
    s = run("lodsd", esi=0x10, mem=put(0x10, 0x99887766, 4), flags=fl(DF))
    assert s["eax"] == 0x99887766 and s["esi"] == 0x0C
    s = run("lodsb", eax=0x11223344, esi=0x10, mem={0x10: 0xEE})
    assert s["eax"] == 0x112233EE and s["esi"] == 0x11


def test_rep_string_is_not_an_instance_of_the_one_step_form():
    from pgvirt.model.encoding import EncodingError, matches
    assert matches(get("movsb").enc, bytes.fromhex("f3a4")) is None
    with pytest.raises(EncodingError):
        get("movsb").execute({}, bytes.fromhex("f3a4"))
    assert matches(get("nop").enc, bytes.fromhex("f390")) is None  # PAUSE is not NOP


# --- flag instructions ----------------------------------------------------------------------

def test_flag_instructions():
    assert run("cld", flags=fl(DF, CF))["flags"] == fl(CF)
    assert run("std", flags=fl(CF))["flags"] == fl(DF, CF)
    assert run("clc", flags=fl(CF, ZF))["flags"] == fl(ZF)
    assert run("stc")["flags"] == fl(CF)
    assert run("cmc", flags=fl(CF))["flags"] == 0
    assert run("cmc", flags=fl(ZF))["flags"] == fl(CF, ZF)
    assert run("cld", sysflags=1 << st.IF)["sysflags"] == 1 << st.IF


# --- property test against an independent Python reference ----------------------------------

def _signed(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _szp(r: int) -> dict:
    return {ZF: int(r == 0), SF: r >> 31, PF: int(bin(r & 0xFF).count("1") % 2 == 0)}


def ref(op: str, a: int, b: int, flags: dict) -> tuple[int, dict]:
    """Result and flags after ``op`` on 32-bit a, b (b = count for shifts), from first principles."""
    out = dict(flags)
    if op in ("add", "adc", "inc"):
        c = flags[CF] if op == "adc" else 0
        full = a + b + c
        r = full & M32
        out.update(_szp(r))
        out[AF] = int((a & 0xF) + (b & 0xF) + c > 0xF)
        out[OF] = int(not -2**31 <= _signed(a) + _signed(b) + c < 2**31)
        if op != "inc":
            out[CF] = int(full > M32)
    elif op in ("sub", "sbb", "cmp", "dec", "neg"):
        if op == "neg":
            a, b = 0, a
        c = flags[CF] if op == "sbb" else 0
        r = (a - b - c) & M32
        out.update(_szp(r))
        out[AF] = int((a & 0xF) < (b & 0xF) + c)
        out[OF] = int(not -2**31 <= _signed(a) - _signed(b) - c < 2**31)
        if op != "dec":
            out[CF] = int(a < b + c)
        if op == "cmp":
            r = a
    elif op in ("and", "or", "xor"):
        r = {"and": a & b, "or": a | b, "xor": a ^ b}[op]
        out.update(_szp(r))
        out[CF] = out[OF] = 0
    elif op in ("shl", "shr", "sar"):
        n = b & 31
        r = a
        if n == 0:
            return a, out
        for _ in range(n):
            if op == "shl":
                out[CF], r = r >> 31, (r << 1) & M32
            else:
                out[CF], r = r & 1, (r >> 1) | (r & 0x80000000 if op == "sar" else 0)
        out.update(_szp(r))
        if n == 1:
            out[OF] = {"shl": (r >> 31) ^ out[CF], "shr": a >> 31, "sar": 0}[op]
    else:
        raise AssertionError(op)
    return r, out


# op -> (form, how to build code from (dst, src) register numbers)
BINARY = {
    "add": ("add_rm32_r32", 0x01), "adc": ("adc_rm32_r32", 0x11), "sub": ("sub_rm32_r32", 0x29),
    "sbb": ("sbb_rm32_r32", 0x19), "and": ("and_rm32_r32", 0x21), "or": ("or_rm32_r32", 0x09),
    "xor": ("xor_rm32_r32", 0x31), "cmp": ("cmp_rm32_r32", 0x39),
}
u32 = hs.integers(0, M32)
edge32 = hs.one_of(u32, hs.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, M32, 0xF, 0x10]))
user_flags = hs.integers(0, 0xFFF).map(lambda v: v & st.USER_FLAGS_MASK)
REGS = list(range(8))


def _compare(form_name: str, code: bytes, regs: dict, flags_in: int, reg_out: str, op: str,
             a: int, b: int) -> None:
    fin = {bit: (flags_in >> bit) & 1 for bit in ARITH}
    want_r, want_flags = ref(op, a, b, fin)
    got = get(form_name).execute({**regs, "flags": flags_in}, code)
    assert isinstance(got, Next)
    s = got.state
    assert s[reg_out] == want_r, (op, hex(a), hex(b))
    mask = get(form_name).undefined_flags
    if op in ("shl", "shr", "sar") and (b & 31) == 1:
        mask &= ~(1 << OF)      # OF is defined for a count of 1
    if op in ("shl", "shr", "sar") and (b & 31) == 0:
        mask = 0                # a zero count leaves every flag as it was
    want = sum(v << bit for bit, v in want_flags.items()) | (flags_in & (1 << DF))
    assert s["flags"] & ~mask == want & ~mask, (op, hex(a), hex(b), hex(s["flags"]), hex(want))


@settings(max_examples=60, deadline=None)
@given(op=hs.sampled_from(sorted(BINARY)), a=edge32, b=edge32, dst=hs.sampled_from(REGS),
       src=hs.sampled_from(REGS), flags_in=user_flags)
def test_binary_ops_match_reference(op, a, b, dst, src, flags_in):
    name, opcode = BINARY[op]
    regs = {st.GPRS[src]: b, st.GPRS[dst]: a}     # the same register for both means b = a
    a, b = regs[st.GPRS[dst]], regs[st.GPRS[src]]
    code = bytes([opcode, 0xC0 | src << 3 | dst])
    _compare(name, code, regs, flags_in, st.GPRS[dst], op, a, b)


@settings(max_examples=60, deadline=None)
@given(op=hs.sampled_from(["inc", "dec", "neg"]), a=edge32, r=hs.sampled_from(REGS),
       flags_in=user_flags)
def test_unary_ops_match_reference(op, a, r, flags_in):
    name, code = {"inc": ("inc_r32", bytes([0x40 + r])), "dec": ("dec_r32", bytes([0x48 + r])),
                  "neg": ("neg_rm32", bytes([0xF7, 0xD8 | r]))}[op]
    _compare(name, code, {st.GPRS[r]: a}, flags_in, st.GPRS[r], op, a, 1)


@settings(max_examples=80, deadline=None)
@given(op=hs.sampled_from(["shl", "shr", "sar"]), a=edge32, count=hs.integers(0, 255),
       how=hs.sampled_from(["imm8", "1", "cl"]), flags_in=user_flags)
def test_shifts_match_reference(op, a, count, how, flags_in):
    ext = {"shl": 4, "shr": 5, "sar": 7}[op]
    modrm = 0xC0 | ext << 3 | 3            # operand EBX; CL lives in ECX
    regs = {"ebx": a, "ecx": 0xABCDEF00}
    if how == "imm8":
        code = bytes([0xC1, modrm, count])
    elif how == "1":
        code, count = bytes([0xD1, modrm]), 1
    else:
        code = bytes([0xD3, modrm])
        regs["ecx"] = 0xABCDEF00 | count
    _compare(f"{op}_rm32_{how}", code, regs, flags_in, "ebx", op, a, count)
