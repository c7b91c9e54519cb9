"""Derived forms: the operand decoder against iced-x86, the forms' semantics and their faults."""

from __future__ import annotations

import random

import pytest
import z3

from pgvirt.model import state as st
from pgvirt.model.derived import faults, forms, operands, table
from pgvirt.model.derived.forms import operand_loc, reg_loc

iced = pytest.importorskip("iced_x86")
REG = {getattr(iced.Register, n): n.lower() for n in dir(iced.Register)
       if not n.startswith("_") and isinstance(getattr(iced.Register, n), int)}
DERIVED = sorted(c for c, r in table.codes().items() if r["decision"]["derive"])


def _variants(rec: dict, rng: random.Random, n: int = 6) -> list[bytes]:
    """The table's instances and random ModRM/SIB/displacement/prefix variants iced decodes to
    the same code."""
    out = [bytes.fromhex(h) for h in [rec["bytes"], *rec["alt_bytes"]]]
    opt = getattr(iced.DecoderOptions, rec["decoder_option"]) if rec["decoder_option"] else 0
    code = getattr(iced.Code, rec["code"])
    base = out[-1]
    offs = iced.Decoder(32, base, opt)
    co = offs.get_constant_offsets(offs.decode())
    if not rec["layout"]["modrm"]:
        return out
    # the ModRM byte sits just before the SIB/displacement/immediates
    tail = co.displacement_offset if co.has_displacement else (
        co.immediate_offset if co.has_immediate else len(base))
    for _ in range(40):
        if len(out) >= n:
            break
        # ModRM (and SIB) lie in the few bytes before the displacement/immediates
        for pos in range(max(0, tail - 3), tail):
            cand = bytearray(base)
            cand[pos] = rng.randrange(256)
            extra = bytes(rng.randrange(256) for _ in range(6))
            pre = bytes(rng.choice([[], [0x2E], [0x64], [0x67]]))
            for b in (bytes(cand) + extra, pre + bytes(cand) + extra):
                i2 = iced.Decoder(32, b, opt).decode()
                if i2.code == code and not i2.is_invalid:
                    out.append(b[:i2.len])
    return out


def _iced_operands(b: bytes, rec: dict):
    opt = getattr(iced.DecoderOptions, rec["decoder_option"]) if rec["decoder_option"] else 0
    return iced.Decoder(32, b, opt).decode()


@pytest.mark.parametrize("chunk", range(8))
def test_operand_decoder_agrees_with_iced(chunk):
    rng = random.Random(chunk)
    for code in DERIVED[chunk::8]:
        rec = table.codes()[code]
        for b in _variants(rec, rng):
            ins = _iced_operands(b, rec)
            d = operands.decode(rec["layout"], rec["encoding"], b)
            assert not isinstance(d, str), (code, b.hex(), d)
            assert d.length == ins.len == len(b), (code, b.hex())
            for i in range(ins.op_count):
                kind = rec["footprint"]["operands"][i]["kind"]
                if ins.op_kind(i) == iced.OpKind.REGISTER:
                    name = REG[ins.op_register(i)]
                    if name.startswith("st") or kind.endswith(("p3_vvvv",)) or kind == "kp1_reg":
                        continue
                    assert operand_loc(kind, 0, d) == reg_loc(name), (code, b.hex(), i, kind, name)
                elif ins.op_kind(i) == iced.OpKind.MEMORY and kind not in ("seg_rbx_al",):
                    assert d.is_mem or d.moffs is not None, (code, b.hex())
                    if d.moffs is not None:
                        assert d.moffs == ins.memory_displacement, (code, b.hex())
                        continue
                    want_base = REG[ins.memory_base]
                    want_index = REG[ins.memory_index]
                    if kind.startswith("mem_vsib"):
                        assert d.sib_index == iced.RegisterInfo(ins.memory_index).number & 7, (code, b.hex())
                        want_index = "none" if d.index is None else st.GPRS[d.index]
                    got_base = "none" if d.base is None else (st.GPRS[d.base] if not d.addr16 else forms.GPR16[d.base])
                    got_index = "none" if d.index is None else (st.GPRS[d.index] if not d.addr16 else forms.GPR16[d.index])
                    assert (got_base, got_index) == (want_base, want_index), (code, b.hex())
                    assert d.scale == ins.memory_index_scale or d.index is None, (code, b.hex())
                    mask = 0xFFFF if d.addr16 else 0xFFFFFFFF
                    assert d.disp & mask == ins.memory_displacement & mask, (code, b.hex())
                    seg = REG[ins.memory_segment]
                    assert d.default_seg == seg or (d.addr16 and d.base == 5 and seg == "ss") or \
                        (d.addr16 and seg == "ds" and d.default_seg == "ss" and d.base != 5), (code, b.hex(), seg)


def test_operand_decoder_says_why_bytes_are_not_an_instance():
    rec = table.codes()["ADD_RM8_R8"]
    assert operands.decode(rec["layout"], "legacy", bytes.fromhex("02c1")) == "opcode does not match"
    assert operands.decode(rec["layout"], "legacy", bytes.fromhex("00")) == "truncated ModRM"
    assert "left over" in operands.decode(rec["layout"], "legacy", bytes.fromhex("00c190"))


def test_every_derived_form_builds_and_runs_on_each_instance():
    s = st.fresh("s")
    feats = frozenset(table.features())
    for code in DERIVED[::7]:
        rec = table.codes()[code]
        f = forms.build(code)
        assert f.code == code and f.bytes.hex() == rec["bytes"]
        for h in [rec["bytes"], *rec["alt_bytes"]]:
            out = f.run(s, bytes.fromhex(h), features=feats)
            assert set(out.effects) <= set(st.users()) | {"eip"}, code   # never a SYSTEM write
