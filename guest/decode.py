"""Decoding guest code with Capstone: a linear sweep of the executable sections, restarting at
every code symbol as ``objdump -d`` does; undecodable bytes come one by one as ``UNDECODABLE``."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

import capstone
import numpy as np

from .image import Guest, Section

__all__ = ["Insn", "decode", "asm", "UNDECODABLE", "MAX_INSN"]

MAX_INSN = 15               # longest legal x86 instruction
UNDECODABLE = "(bad)"       # mnemonic of a byte Capstone cannot decode (objdump's spelling)
_MISS = object()

class Insn(NamedTuple):
    address: int
    section: str
    bytes: bytes
    mnemonic: str       # UNDECODABLE for a byte Capstone cannot decode
    op_str: str


def _capstone() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    md.detail = False
    # Skipdata makes Capstone step over an undecodable byte (one at a time on x86) and go on,
    # reporting it with instruction id 0; without it, disassembly stops at the first bad byte.
    md.skipdata = True
    return md


_IDLE: list[capstone.Cs] = []   # handles not in use: opening one costs more than a small section


def _handle() -> capstone.Cs:
    try:
        return _IDLE.pop()
    except IndexError:
        return _capstone()


def _layout():
    """Capstone's C entry points and where its cs_insn array keeps id, size and mnemonic, to read
    them in place: the Python binding builds a ctypes object per instruction, which costs more
    than decoding it."""
    try:
        import ctypes
        from capstone import _cs, _cs_insn
        size = ctypes.sizeof(_cs_insn)
        f = {n: (getattr(_cs_insn, n).offset, getattr(_cs_insn, n).size)
             for n in ("id", "size", "mnemonic")}
    except (ImportError, AttributeError):
        return None
    if (size % 4 or f["id"] != (0, 4) or f["size"][1] != 2 or f["size"][0] % 2
            or f["mnemonic"][1] < 8 * _MNEMONIC_WORDS):
        return None  # another binding layout: use the public API
    return _cs, _cs_insn, ctypes, size, f["size"][0], f["mnemonic"]


_MNEMONIC_WORDS = 3         # 24 bytes: "xrelease lock cmpxchg8b" and its NUL (Capstone keeps 32)
_LAYOUT = _layout()
# Instructions per cs_disasm call.  One call over a whole section grows its result array by
# realloc, copying it again and again; chunks, each freed at once, decode tboot in half the time.
_CHUNK = 4096


class _Run(NamedTuple):
    """One Capstone pass: each instruction's size, Capstone id (0: an undecodable byte) and the
    first ``_MNEMONIC_WORDS`` words of its mnemonic's C string (bytes after the NUL are junk)."""

    sizes: np.ndarray
    ids: np.ndarray
    mnems: np.ndarray


def _run(code: bytes, addr: int, fast: bool) -> _Run:
    """Decode ``code`` at ``addr``.  Through ctypes (``fast``) Capstone runs without the GIL, so
    runs over different parts of a section can proceed on several cores."""
    md = _handle()
    try:
        if not fast:
            recs = [(r.size, r.id, r.mnemonic.encode()) for r in md.disasm(code, addr)]
            rows = np.zeros((len(recs), 8 * _MNEMONIC_WORDS), np.uint8)
            for k, r in enumerate(recs):
                m = r[2][:8 * _MNEMONIC_WORDS]
                rows[k, :len(m)] = np.frombuffer(m, np.uint8)
            return _Run(np.array([r[0] for r in recs], np.int64),
                        np.array([r[1] for r in recs], np.int64), rows.view(np.uint64))
        _cs, _cs_insn, ctypes, size, at, (mo, _) = _LAYOUT
        buf = (ctypes.c_char * max(len(code), 1)).from_buffer_copy(code or b"\0")
        start, off = ctypes.addressof(buf), 0
        sizes, ids, mnems = [], [], []
        while off < len(code):
            arr = ctypes.POINTER(_cs_insn)()
            n = _cs.cs_disasm(md.csh, ctypes.cast(start + off, ctypes.POINTER(ctypes.c_char)),
                              len(code) - off, addr + off, _CHUNK, ctypes.byref(arr))
            if n == 0:
                err = _cs.cs_errno(md.csh)
                if err:
                    raise capstone.CsError(err)
                break
            try:
                raw = (ctypes.c_char * (n * size)).from_address(ctypes.addressof(arr.contents))
                a = np.frombuffer(raw, np.uint8)
                sizes.append(a.view(np.uint16)[at // 2::size // 2].astype(np.int64))
                ids.append(a.view(np.uint32)[0::size // 4].astype(np.int64))
                mnems.append(a.reshape(n, size)[:, mo:mo + 8 * _MNEMONIC_WORDS].copy().view(np.uint64))
            finally:
                _cs.cs_free(arr, n)
            off += int(sizes[-1].sum())
            if n < _CHUNK:
                break
        if off != len(code):    # skipdata covers every byte: anything else is a Capstone bug
            raise RuntimeError(f"Capstone stopped at {addr + off:#x}, {len(code) - off} bytes short")
    finally:
        _IDLE.append(md)
    if not sizes:
        return _Run(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, _MNEMONIC_WORDS), np.uint64))
    return _Run(np.concatenate(sizes), np.concatenate(ids), np.concatenate(mnems))


def asm(code: bytes, addr: int) -> str:
    """Capstone's Intel-syntax text of the one instruction ``code`` at ``addr``."""
    mnem, op = _text(code, addr)
    return f"{mnem} {op}".rstrip()


def _text(code: bytes, addr: int) -> tuple[str, str]:
    """Capstone's mnemonic and operands for the one instruction ``code`` at ``addr`` (a scan
    prints again only the instructions it reports)."""
    md = _handle()
    try:
        if _LAYOUT is None:
            for _, _, mnem, op in md.disasm_lite(code, addr, 1):
                return mnem, op
        else:
            _cs, _cs_insn, ctypes = _LAYOUT[:3]
            arr = ctypes.POINTER(_cs_insn)()
            if _cs.cs_disasm(md.csh, code, len(code), addr, 1, ctypes.byref(arr)):
                try:
                    i = arr[0]
                    return i.mnemonic.decode("ascii", "replace"), i.op_str.decode("ascii", "replace")
                finally:
                    _cs.cs_free(arr, 1)
    finally:
        _IDLE.append(md)
    raise RuntimeError(f"Capstone printed nothing for {code.hex()} at {addr:#x}")  # skipdata is on


_TEXTS: dict[bytes, tuple[str, str] | None] = {}  # by bytes; None: the text depends on the address


def _text_at(code: bytes, addr: int) -> tuple[str, str]:
    """``_text``, remembered for instructions that Capstone prints alike at any address (all but
    relative branches, whose targets it prints as addresses): a guest repeats its sites."""
    t = _TEXTS.get(code, _MISS)
    if t is None:
        return _text(code, addr)
    if t is _MISS:
        t = _text(code, addr)
        if len(_TEXTS) >= 1 << 16:
            _TEXTS.clear()
        _TEXTS[code] = t if _text(code, (addr + 0x10000) & 0xFFFFFFFF) == t else None
    return t


def _offsets(sizes: np.ndarray, start: int) -> np.ndarray:
    offs = np.empty(len(sizes) + 1, np.int64)
    offs[0] = start
    np.cumsum(sizes, out=offs[1:])
    offs[1:] += start
    return offs


class _Stream:
    """Consecutive instructions of a section: offs[i] is instruction i's offset in the section,
    offs[i+1] its end; sizes and ids as in ``_Run``."""

    def __init__(self, parts: list[tuple[_Run, int, int]], start: int):
        if len(parts) == 1:        # views, not copies
            run, lo, hi = parts[0]
            self.sizes, self.ids, self.mnems = run.sizes[lo:hi], run.ids[lo:hi], run.mnems[lo:hi]
        else:
            self.sizes = np.concatenate([run.sizes[lo:hi] for run, lo, hi in parts])
            self.ids = np.concatenate([run.ids[lo:hi] for run, lo, hi in parts])
            self.mnems = np.concatenate([run.mnems[lo:hi] for run, lo, hi in parts])
        self.offs = _offsets(self.sizes, start)


_PARALLEL_MIN = 64 << 10    # sections smaller than this are decoded in one call
_JOIN = 4096                # bytes a piece decodes past its end to meet the next piece


def _linear(data: bytes, base: int, fast: bool, jobs: int) -> _Stream:
    """The linear sweep of ``data``, decoded in ``jobs`` pieces at once when it is large.

    Piece k+1 starts at a guessed offset; piece k decodes past it until both meet at a common
    instruction boundary, after which their streams are the same bytes decoded the same way.
    """
    pieces = min(jobs, len(data) // (_PARALLEL_MIN // 2)) if len(data) >= _PARALLEL_MIN else 1
    if pieces > 1:
        cuts = [len(data) * k // pieces for k in range(pieces)] + [len(data)]
        spans = [(cuts[k], min(cuts[k + 1] + _JOIN, len(data))) for k in range(pieces)]
        with ThreadPoolExecutor(pieces) as pool:
            done = list(pool.map(lambda sp: _run(data[sp[0]:sp[1]], base + sp[0], fast), spans))
        parts = _join(done, spans, len(data))
        if parts is not None:
            return _Stream(parts, 0)
    run = _run(data, base, fast)
    return _Stream([(run, 0, len(run.sizes))], 0)


def _join(done: list[_Run], spans: list[tuple[int, int]], total: int):
    """(run, lo, hi) parts forming one seamless sweep, or None if two pieces never meet."""
    parts = []
    lo = 0
    for k, run in enumerate(done):
        offs = _offsets(run.sizes, spans[k][0])
        if k + 1 == len(done):
            parts.append((run, lo, len(run.sizes)))
            break
        nstart, trusted = spans[k + 1][0], spans[k][1] - (MAX_INSN - 1)
        if spans[k][1] == total:
            trusted = total
        # every instruction is at least one byte, so _JOIN instructions cover _JOIN bytes
        nxt = _offsets(done[k + 1].sizes[:_JOIN], nstart)
        i0 = max(int(np.searchsorted(offs, nstart)), lo)
        cand = offs[i0:len(run.sizes)]
        meet = np.flatnonzero(np.isin(cand, nxt))
        if not len(meet) or cand[meet[0]] >= trusted:    # the first common boundary
            return None
        i = i0 + int(meet[0])
        parts.append((run, lo, i))
        lo = int(np.searchsorted(nxt, offs[i]))
    return parts


def _sweep(guest: Guest, sec: Section, fast: bool | None = None, jobs: int | None = None):
    """Decode ``sec`` as ``objdump -d`` does: linearly, restarting at each of its symbols.

    Yields (stream, lo, hi): instructions lo..hi-1 of the stream.  No instruction runs past a
    symbol (bytes that would are undecodable), and decoding restarts at the symbol, so data in
    front of a function cannot shift the function's instruction stream.  The section is swept
    once; only where a symbol falls inside an instruction of that sweep are the bytes up to the
    symbol and the run after it decoded again (decoding restarted at a boundary the sweep
    already reached gives the same stream).
    """
    fast = _LAYOUT is not None if fast is None else fast and _LAYOUT is not None
    jobs = min(os.cpu_count() or 1, 4) if jobs is None else max(1, jobs)
    data, base = sec.data, sec.addr
    syncs = [a - base for a in guest.sync_points(sec) if base < a < sec.end]

    def alone(start: int, stop: int):
        run = _run(data[start:stop], base + start, fast)
        st = _Stream([(run, 0, len(run.sizes))], start)
        return st, 0, len(st.sizes)

    main = _linear(data, base, fast, jobs)
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


def decode(guest: Guest, fast: bool | None = None, jobs: int | None = None,
           text: bool = True) -> Iterator[Insn]:
    """Every instruction of the executable sections; undecodable bytes come one by one as UNDECODABLE.

    ``jobs`` is the number of decoding threads (default: CPUs, at most 4); ``fast=False`` uses
    Capstone's public per-instruction API instead of reading its result array in place.  With
    ``text=False`` the mnemonic and operands of decodable instructions are left empty: printing
    them costs eight times the decoding.
    """
    for sec in guest.sections:
        data, base, name = sec.data, sec.addr, sec.name
        for st, lo, hi in _sweep(guest, sec, fast, jobs):
            if lo == hi:
                continue
            offs, ids = st.offs.tolist(), st.ids.tolist()
            if not text:
                for i in range(lo, hi):
                    yield Insn(base + offs[i], name, data[offs[i]:offs[i + 1]],
                               "" if ids[i] else UNDECODABLE, "")
                continue
            # The text of a whole part at once: decoding its bytes again from its first
            # instruction meets the same boundaries (no instruction reads past its own bytes).
            md = _handle()
            try:
                texts = list(md.disasm_lite(data[offs[lo]:offs[hi]], base + offs[lo]))
            finally:
                _IDLE.append(md)
            if [t[1] for t in texts] != st.sizes[lo:hi].tolist():
                raise RuntimeError(f"Capstone decoded {name} at {base + offs[lo]:#x} differently twice")
            for i, (_, _, mnem, op) in zip(range(lo, hi), texts):
                code = data[offs[i]:offs[i + 1]]
                yield Insn(base + offs[i], name, code, *((mnem, op) if ids[i] else (UNDECODABLE, "")))
