"""Decoding guest code with iced-x86, the decoder whose tables the model's codes come from: a
linear sweep of the executable sections, restarting at every code symbol as ``objdump -d``
does; undecodable bytes come one by one as ``UNDECODABLE``, each with its address."""

from __future__ import annotations

from functools import lru_cache
from operator import attrgetter
from typing import Iterator, NamedTuple

import iced_x86 as iced
import numpy as np

from .image import Guest, Section

__all__ = ["Insn", "decode", "asm", "code_name", "UNDECODABLE", "MAX_INSN", "INVALID"]

MAX_INSN = 15               # longest legal x86 instruction
UNDECODABLE = "(bad)"       # mnemonic of a byte the decoder cannot decode (objdump's spelling)
INVALID = iced.Code.INVALID
# Prefixes the instruction does not admit (LOCK on CLI, REP on SGDT) are decoded, not refused:
# what they mean is the model's to say (a form accepts them and faults, or no form does and the
# instruction is unmodelled), and the sweep then meets objdump's instruction boundaries.
OPTIONS = iced.DecoderOptions.NO_INVALID_CHECK
_LEN, _CODE = attrgetter("len"), attrgetter("code")


class Insn(NamedTuple):
    address: int
    section: str
    bytes: bytes
    mnemonic: str       # UNDECODABLE for a byte the decoder cannot decode
    op_str: str
    code: int = INVALID  # the iced-x86 Code


@lru_cache(maxsize=1)
def _code_names() -> dict[int, str]:
    return {v: k for k, v in vars(iced.Code).items() if not k.startswith("_") and isinstance(v, int)}


def code_name(code: int) -> str:
    """The iced-x86 Code's name (``ADD_R8_RM8``), as model/derived's table spells it."""
    return _code_names()[code]


class _Run(NamedTuple):
    """One sweep: each instruction's size and iced Code (INVALID: one undecodable byte)."""

    sizes: np.ndarray
    codes: np.ndarray


def _run(code: bytes, addr: int) -> _Run:
    """The linear sweep of ``code`` at ``addr``.

    iced-x86 reports an undecodable instruction with the bytes it read before giving up; objdump
    (and this sweep) skip one byte and go on.  The whole run is decoded at once, then only the
    stretch after each such byte is decoded again, until it meets a boundary of the first run
    (from there on both are the same bytes decoded the same way).
    """
    insns = list(iced.Decoder(32, code, OPTIONS, ip=addr))
    sizes = np.fromiter(map(_LEN, insns), np.int64, len(insns))
    codes = np.fromiter(map(_CODE, insns), np.int64, len(insns))
    bad = np.flatnonzero((codes == INVALID) & (sizes > 1))
    if not len(bad):
        return _Run(sizes, codes)
    offs = _offsets(sizes, 0)
    dec = iced.Decoder(32, code, OPTIONS, ip=addr)
    out_s, out_c = [], []
    i = 0                                   # the first run is kept from instruction i on
    n = len(code)
    for k in bad.tolist():
        if k < i:
            continue                        # re-decoding went past it
        out_s.append(sizes[i:k])
        out_c.append(codes[i:k])
        pos, extra_s, extra_c = int(offs[k]), [1], [INVALID]
        pos += 1
        i = len(sizes)
        while pos < n:
            j = int(np.searchsorted(offs, pos))
            if offs[j] == pos:
                i = j
                break
            dec.position, dec.ip = pos, addr + pos
            ins = dec.decode()
            step = ins.len if ins.code != INVALID else 1
            extra_s.append(step)
            extra_c.append(ins.code)
            pos += step
        out_s.append(np.array(extra_s, np.int64))
        out_c.append(np.array(extra_c, np.int64))
    out_s.append(sizes[i:])
    out_c.append(codes[i:])
    return _Run(np.concatenate(out_s), np.concatenate(out_c))


def _formatter() -> iced.Formatter:
    """Intel syntax spelled as Capstone and objdump -M intel spell it."""
    f = iced.Formatter(iced.FormatterSyntax.INTEL)
    f.space_after_operand_separator = True
    f.space_between_memory_add_operators = True
    f.memory_size_options = iced.MemorySizeOptions.ALWAYS
    f.hex_prefix, f.hex_suffix, f.uppercase_hex = "0x", "", False
    f.show_branch_size = False
    f.leading_zeros = f.branch_leading_zeros = False
    return f


_FMT = _formatter()


_FAR = (iced.OpKind.FAR_BRANCH16, iced.OpKind.FAR_BRANCH32)


def _text_of(ins) -> tuple[str, str]:
    if ins.code == INVALID:
        return UNDECODABLE, ""
    if ins.op0_kind in _FAR:    # selector:offset, as the SDM and objdump write a far pointer
        off = ins.far_branch16 if ins.op0_kind == _FAR[0] else ins.far_branch32
        return _FMT.format_mnemonic(ins), f"{ins.far_branch_selector:#x}:{off:#x}"
    return _FMT.format_mnemonic(ins), _FMT.format_all_operands(ins)


def _one(code: bytes, addr: int):
    return iced.Decoder(32, code, OPTIONS, ip=addr).decode()


def asm(code: bytes, addr: int) -> str:
    """The Intel-syntax text of the one instruction ``code`` at ``addr``."""
    mnem, op = _text_of(_one(code, addr))
    return f"{mnem} {op}".rstrip()


def text(code: bytes, addr: int) -> tuple[str, str]:
    """Mnemonic (with its prefixes: ``rep movsb``) and operands of the instruction ``code``."""
    return _text_of(_one(code, addr))


def mnemonic(code: bytes) -> str:
    """The mnemonic alone (it does not depend on the address)."""
    ins = _one(code, 0)
    return UNDECODABLE if ins.code == INVALID else _FMT.format_mnemonic(ins)


def _offsets(sizes: np.ndarray, start: int) -> np.ndarray:
    offs = np.empty(len(sizes) + 1, np.int64)
    offs[0] = start
    np.cumsum(sizes, out=offs[1:])
    offs[1:] += start
    return offs


class _Stream:
    """Consecutive instructions of a section: offs[i] is instruction i's offset in the section,
    offs[i+1] its end; sizes and codes as in ``_Run``."""

    def __init__(self, run: _Run, start: int):
        self.sizes, self.codes = run.sizes, run.codes
        self.offs = _offsets(self.sizes, start)


def _sweep(guest: Guest, sec: Section):
    """Decode ``sec`` as ``objdump -d`` does: linearly, restarting at each of its symbols.

    Yields (stream, lo, hi): instructions lo..hi-1 of the stream.  No instruction runs past a
    symbol (bytes that would are undecodable), and decoding restarts at the symbol, so data in
    front of a function cannot shift the function's instruction stream.  The section is swept
    once; only where a symbol falls inside an instruction of that sweep are the bytes up to the
    symbol and the run after it decoded again (decoding restarted at a boundary the sweep
    already reached gives the same stream).
    """
    data, base = sec.data, sec.addr
    syncs = [a - base for a in guest.sync_points(sec) if base < a < sec.end]

    def alone(start: int, stop: int):
        st = _Stream(_run(data[start:stop], base + start), start)
        return st, 0, len(st.sizes)

    main = _Stream(_run(data, base), 0)
    offs, n = main.offs, len(main.sizes)
    at = np.minimum(np.searchsorted(offs, syncs), n)
    aligned = set(np.asarray(syncs)[offs[at] == syncs].tolist()) if syncs else set()
    bounds = syncs + [len(data)]
    i = 0                                   # main is emitted up to instruction i
    for k, p in enumerate(syncs):
        if p in aligned or p < offs[i]:
            continue
        j = int(np.searchsorted(offs[:n], p, "right")) - 1  # the instruction p falls inside
        yield main, i, j
        yield alone(int(offs[j]), p)
        while True:                          # fresh runs until a symbol the sweep reached
            q = bounds[k + 1]
            yield alone(p, q)
            k += 1
            if q == len(data) or q in aligned:
                break
            p = q
        i = int(np.searchsorted(offs[:n], q))
    yield main, i, n


def decode(guest: Guest, text: bool = True) -> Iterator[Insn]:
    """Every instruction of the executable sections; undecodable bytes come one by one as
    UNDECODABLE.  With ``text=False`` the mnemonic and operands of decodable instructions are
    left empty (printing them costs more than decoding)."""
    for sec in guest.sections:
        data, base, name = sec.data, sec.addr, sec.name
        for st, lo, hi in _sweep(guest, sec):
            offs, codes = st.offs.tolist(), st.codes.tolist()
            for i in range(lo, hi):
                code = data[offs[i]:offs[i + 1]]
                if codes[i] == INVALID:
                    yield Insn(base + offs[i], name, code, UNDECODABLE, "", INVALID)
                elif not text:
                    yield Insn(base + offs[i], name, code, "", "", codes[i])
                else:
                    yield Insn(base + offs[i], name, code, *_text_of(_one(code, base + offs[i])),
                               codes[i])
