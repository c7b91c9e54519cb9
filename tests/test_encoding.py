"""The encoding notation and decoder: operand size, address size, mandatory prefixes, REP, LOCK.

iced-x86 is the oracle here (never in model/): it says which code a byte string is, so the tests
check that every form's canonical bytes are the code the form means, and that every form with a
16-bit operand-size sibling in iced's tables has its own o16 form.
"""

from __future__ import annotations

import pytest
import z3

from pgvirt.model import isa, state as st
from pgvirt.model.encoding import Encoding, EncodingError, decode, matches
from pgvirt.model.outcome import UD, Fault, Next

iced = pytest.importorskip("iced_x86")
CODE_NAMES = {v: k for k, v in vars(iced.Code).items() if not k.startswith("_") and isinstance(v, int)}


def iced_code(raw: bytes) -> str:
    return CODE_NAMES[iced.Decoder(32, raw).decode().code]


def iced_instr(raw: bytes):
    return iced.Decoder(32, raw + bytes(8)).decode()


# --- the notation -------------------------------------------------------------------------------

def test_tokens_parse():
    e = Encoding.parse("o16 0F 01 /0 mem")
    assert (e.opcode, e.modrm, e.mod, e.osize) == (b"\x0f\x01", "0", "mem", 16)
    e = Encoding.parse("66 0F C7 /6 mem")
    assert e.mandatory == 0x66 and e.opcode == b"\x0f\xc7" and e.osize is None
    e = Encoding.parse("o32 F3 A5 addr")
    assert e.mandatory == 0xF3 and e.osize == 32 and e.implicit_mem
    e = Encoding.parse("a16 NP 0F 01 C8")
    assert e.asize == 16 and e.no_prefix and e.opcode == b"\x0f\x01\xc8"
    e = Encoding.parse("o16 B8+rw iw")
    assert e.plus_r and e.immediates == ("iw",)
    assert Encoding.parse("o32 01 /r lock").lockable
    for bad in ("0F /9", "zz", "NP F3 90", "o16 66 0F 10 /r"):
        with pytest.raises(EncodingError):
            Encoding.parse(bad)


def test_operand_size_prefix():
    o16, o32, none = (Encoding.parse(t) for t in ("o16 9C", "o32 9C", "FA"))
    assert matches(o16, b"\x66\x9c") and not matches(o16, b"\x9c")
    assert matches(o32, b"\x9c") and not matches(o32, b"\x66\x9c")
    # no operand size: a 66 prefix has no effect
    assert matches(none, b"\x66\xfa").osize == 16 and matches(none, b"\xfa").osize == 32


def test_mandatory_prefixes_and_precedence():
    vmxon, vmclear = Encoding.parse("F3 0F C7 /6 mem"), Encoding.parse("66 0F C7 /6 mem")
    assert matches(vmclear, bytes.fromhex("660fc730"))
    assert not matches(vmclear, bytes.fromhex("0fc730"))
    assert not matches(vmclear, bytes.fromhex("66f30fc730"))       # F3 wins over 66
    assert matches(vmxon, bytes.fromhex("66f30fc730"))
    assert matches(vmxon, bytes.fromhex("f2f30fc730"))             # the last of F2/F3 counts
    assert not matches(vmxon, bytes.fromhex("f3f20fc730"))
    np = Encoding.parse("NP 0F 01 D0")
    assert matches(np, bytes.fromhex("0f01d0")) and not matches(np, bytes.fromhex("660f01d0"))
    for h in ("660fc730", "66f30fc730", "f2f30fc730", "0f01d0"):   # as iced decodes them
        code = iced_code(bytes.fromhex(h))
        assert code in ("VMCLEAR_M64", "VMXON_M64", "XGETBV"), (h, code)


def test_rep_prefix_is_reserved_outside_string_forms():
    ret = Encoding.parse("o32 C3")
    assert matches(ret, b"\xc3") and not matches(ret, b"\xf3\xc3") and not matches(ret, b"\xf2\xc3")


def test_longer_than_15_bytes_is_no_instance():
    nop = Encoding.parse("o32 90")
    assert matches(nop, b"\x2e" * 14 + b"\x90")
    assert not matches(nop, b"\x2e" * 15 + b"\x90")


# --- 16-bit addressing (SDM Vol. 2A Table 2-1) ------------------------------------------------------

MODES16 = {0: ("ebx", "esi"), 1: ("ebx", "edi"), 2: ("ebp", "esi"), 3: ("ebp", "edi"),
           4: ("esi", None), 5: ("edi", None), 6: ("ebp", None), 7: ("ebx", None)}


def _sgdt_address(code: bytes, **regs) -> int:
    """Where SGDT stores the limit word, read from a concrete run."""
    f = isa.get("sgdt_m")
    values = {"ds_base": 0x100000, "ss_base": 0x200000, "cr0": 0x11, **regs}
    assert isinstance(f.execute(values, code), Next)
    return z3.simplify(f.run(st.concrete(values), code).stores[0][1]).as_long()


@pytest.mark.parametrize("rm", range(8))
@pytest.mark.parametrize("mod", [0, 1, 2])
def test_modrm16_every_mode(mod, rm):
    regs = {"ebx": 0xAAAA1000, "ebp": 0xBBBB0200, "esi": 0xCCCC0030, "edi": 0xDDDD0004}
    disp = {0: b"", 1: b"\x80", 2: b"\x34\x12"}[mod]
    code = bytes([0x67, 0x0F, 0x01, (mod << 6) | rm]) + disp
    if mod == 0 and rm == 6:
        code += b"\x78\x56"                    # [disp16]
    d = decode(isa.get("sgdt_m").enc, code)
    assert d.asize == 16 and d.length == len(code)
    if mod == 0 and rm == 6:
        off, seg = 0x5678, "ds"
    else:
        b, i = MODES16[rm]
        off = regs[b] & 0xFFFF
        if i:
            off += regs[i] & 0xFFFF
        off += {0: 0, 1: -0x80, 2: 0x1234}[mod]
        seg = "ss" if b == "ebp" else "ds"
    want = {"ds": 0x100000, "ss": 0x200000}[seg] + (off & 0xFFFF)
    assert _sgdt_address(code, **regs) == want
    # iced reads the same memory operand
    ins = iced_instr(code)
    assert ins.memory_displ_size in (0, 1, 2) and iced_code(code + bytes(4)) == "SGDT_M1632"


def test_modrm16_wraps_at_64k_and_later_parts_wrap_too():
    code = bytes.fromhex("670f0107")               # sgdt [bx]
    o = isa.get("sgdt_m").run(st.concrete({"ebx": 0xFFFE, "gdtr_base": 0x11223344}), code)
    addrs = [z3.simplify(a).as_long() for _, a in o.stores]
    assert addrs[:2] == [0xFFFE, 0xFFFF] and addrs[2:] == [0, 1, 2, 3]   # base at (bx+2) mod 64K


def test_67_without_a_memory_operand_is_no_instance():
    assert not matches(isa.get("mov_rm32_r32").enc, bytes.fromhex("6789c8"))
    assert matches(isa.get("mov_rm32_r32").enc, bytes.fromhex("678907"))       # mov [bx], eax
    assert matches(isa.get("movsb").enc, bytes.fromhex("67a4")).asize == 16    # implicit memory


def test_string_forms_use_si_di_under_a16():
    f = isa.get("movsw")
    s = {"esi": 0x5555FFFF, "edi": 0x66660010, "ds_base": 0x1000, "es_base": 0x2000,
         "mem": {0x1000 + 0xFFFF: 0x34, 0x1000 + 0x10000: 0x12}}
    out = f.execute(s, bytes.fromhex("6766a5"))
    assert isinstance(out, Next)
    assert out.state["esi"] == 0x55550001 and out.state["edi"] == 0x66660012
    assert out.state["mem"][0x2010] == 0x34 and out.state["mem"][0x2011] == 0x12


# --- LOCK: one generic rule -----------------------------------------------------------------------

def test_lock_on_a_lockable_memory_destination_runs():
    out = isa.get("add_rm32_r32").execute({"eax": 0x100, "ecx": 5, "mem": {0x100: 1}},
                                           bytes.fromhex("f00108"))
    assert isinstance(out, Next) and out.state["mem"][0x100] == 6


@pytest.mark.parametrize("name,code", [
    ("add_rm32_r32", "f001c8"),        # register destination
    ("cmp_rm32_r32", "f03908"),        # CMP is not lockable
    ("add_r32_rm32", "f00308"),        # the destination is the register
    ("sgdt_m", "f00f0100"),            # not lockable at all
    ("mov_r_cs", "f08cc8"),
])
def test_lock_elsewhere_is_ud(name, code):
    out = isa.get(name).execute({}, bytes.fromhex(code))
    assert isinstance(out, Fault) and out.vector == UD and "LOCK" in out.reason
    assert iced_code(bytes.fromhex(code)) == "INVALID"       # iced agrees: #UD


def test_lockable_forms_are_those_iced_lets_lock():
    """A form declares lockability; iced's can_use_lock_prefix is the oracle."""
    for f in isa.FORMS:
        oi = iced.OpCodeInfo(iced.Decoder(32, f.bytes).decode().code)
        if f.enc.mod != "reg" and f.enc.modrm is not None:
            assert f.enc.lockable == oi.can_use_lock_prefix, f.name


# --- the forms against iced ------------------------------------------------------------------------

def _options(f) -> int:
    """The decoder option a vendor form's Code needs (``form(..., code=)``), else none."""
    from pgvirt.model.derived import table
    return getattr(iced.DecoderOptions, table.codes()[f.code]["decoder_option"] or "NONE") if f.code else 0


def test_every_canonical_instance_is_one_valid_iced_code():
    for f in isa.FORMS:
        ins = iced.Decoder(32, f.bytes, _options(f)).decode()
        assert ins.len == len(f.bytes), f.name
        if not f.name.startswith(("rdfsbase", "rdgsbase", "wrfsbase", "wrgsbase", "swapgs")):
            assert CODE_NAMES[ins.code] != "INVALID", f.name


def test_o16_and_o32_tokens_agree_with_iced():
    for f in isa.FORMS:
        ocs = iced.OpCodeInfo(iced.Decoder(32, f.bytes, _options(f)).decode().code).op_code_string
        tok = ocs.split()[0]
        want = int(tok[1:]) if tok in ("o16", "o32") else None
        assert f.enc.osize == want, (f.name, ocs)
        atok = [t for t in ocs.split() if t in ("a16", "a32")]
        assert f.enc.asize == (int(atok[0][1:]) if atok else None), (f.name, ocs)


def test_every_o32_form_has_its_o16_sibling():
    """Each form iced calls o32 has a form for the 66-prefixed code (issue 12, item 1)."""
    codes = {}
    for f in isa.FORMS:
        codes.setdefault(iced_code(f.bytes), []).append(f)
    missing = []
    for f in isa.FORMS:
        if f.enc.osize != 32:
            continue
        sib = iced_instr(b"\x66" + f.bytes)
        name = CODE_NAMES[sib.code]
        if not iced.OpCodeInfo(sib.code).op_code_string.startswith("o16"):
            continue
        mem = f.enc.mod
        have = [g for g in codes.get(name, []) if g.enc.mod in (mem, None) or mem is None]
        if not have:
            missing.append((f.name, name))
    assert not missing
