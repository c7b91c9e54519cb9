"""Decoding guest code with iced-x86 (``pgvirt.decoder``), the decoder whose tables the model's
codes come from: a linear sweep of the executable sections, restarting at every code symbol as
``objdump -d`` does; undecodable bytes come one by one as ``UNDECODABLE``, each with its address."""

from __future__ import annotations

from operator import attrgetter
from typing import Iterator, NamedTuple

import numpy as np

from pgvirt.decoder import (INVALID, MAX_INSN, OPTIONS, UNDECODABLE, asm, code_name, code_names, decoder,
                            mnemonic, one as _one, text, text_of as _text_of)  # noqa: F401 (re-exported)

from .image import Guest, Section

__all__ = ["Insn", "decode", "asm", "text", "mnemonic", "code_name", "UNDECODABLE", "MAX_INSN", "INVALID"]

_LEN, _CODE = attrgetter("len"), attrgetter("code")


class Insn(NamedTuple):
    address: int
    section: str
    bytes: bytes
    mnemonic: str       # UNDECODABLE for a byte the decoder cannot decode
    op_str: str
    code: int = INVALID  # the iced-x86 Code


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
    insns = list(decoder(code, addr))
    sizes = np.fromiter(map(_LEN, insns), np.int64, len(insns))
    codes = np.fromiter(map(_CODE, insns), np.int64, len(insns))
    bad = np.flatnonzero((codes == INVALID) & (sizes > 1))
    if not len(bad):
        return _Run(sizes, codes)
    offs = _offsets(sizes, 0)
    dec = decoder(code, addr)
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
