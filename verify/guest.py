"""Real guest code: load 32-bit x86 binaries, decode them with Capstone, find the model's forms.

``load_guest`` reads an ELF32 i386 file (ET_EXEC, ET_DYN or ET_REL, optionally gzip-compressed)
or a flat blob and keeps only its executable sections and their symbols.  ``decode`` sweeps those
sections linearly, restarting at every code symbol as ``objdump -d`` does.  ``scan`` matches each
instruction against the forms in ``pgvirt.model.isa`` and reports the sites whose form a
classifier calls a violation; instructions no form describes are ``unmodelled``, never harmless.
Every problem with the input is one ``GuestError`` with a one-line message.
"""

from __future__ import annotations

import bisect
import io
import operator
import os
import re
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, compress
from typing import Callable, Iterable, Iterator, NamedTuple

import capstone
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from pgvirt.model.encoding import REP_PREFIX, SEG_PREFIX, matches
from pgvirt.model.form import REGISTRY, Form

__all__ = ["GuestError", "FormConflict", "Section", "Symbol", "Guest", "Insn", "load_guest",
           "decode", "match_form", "scan", "ScanResult", "Site", "Unmodelled", "UNDECODABLE"]

MAX_FILE = 1 << 30          # bigger inputs (or gzip bombs) are refused, not read
MAX_INSN = 15               # longest legal x86 instruction
UNDECODABLE = "(bad)"       # mnemonic of a byte Capstone cannot decode (objdump's spelling)
_GZIP_MAGIC = b"\x1f\x8b"
_ELF_MAGIC = b"\x7fELF"
_ET = {"ET_REL": "rel", "ET_EXEC": "exec", "ET_DYN": "dyn"}


class GuestError(ValueError):
    """The input is not a guest this loader can read (the message says why, in one line)."""


@dataclass(frozen=True)
class Section:
    name: str
    addr: int          # load address (ET_REL: 0-based within the section)
    data: bytes
    offset: int        # file offset of the first byte (in the decompressed image)

    @property
    def end(self) -> int:
        return self.addr + len(self.data)


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    section: str
    is_global: bool = False
    sync: bool = True   # decoding restarts here (not at STT_OBJECT: data inside code, often
                        # a patch point inside an instruction, e.g. GRUB's relocator variables)


def _preference(s: Symbol) -> tuple:
    # Deterministic choice among aliases at one address: global, fewest leading underscores.
    return (not s.is_global, len(s.name) - len(s.name.lstrip("_")), s.name)


@dataclass
class Guest:
    """Executable sections of a guest and the symbols that lie in them."""

    path: str
    kind: str                               # "exec", "dyn", "rel" or "raw"
    sections: tuple[Section, ...]
    symbols: tuple[Symbol, ...] = ()
    symbol_source: str = "none"             # ".symtab", ".dynsym", a symbol file, or "none"
    notes: tuple[str, ...] = ()             # executable sections that hold no bytes to scan
    _index: dict = field(init=False, repr=False, compare=False)
    _sync: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_sec: dict[str, dict[int, Symbol]] = defaultdict(dict)
        for s in self.symbols:
            cur = by_sec[s.section].get(s.addr)
            if cur is None or _preference(s) < _preference(cur):
                by_sec[s.section][s.addr] = s
        self._index = {name: (sorted(m), [m[a] for a in sorted(m)]) for name, m in by_sec.items()}
        sync: dict[str, set[int]] = defaultdict(set)
        for s in self.symbols:
            if s.sync:
                sync[s.section].add(s.addr)
        self._sync = {name: sorted(a) for name, a in sync.items()}

    def section_at(self, addr: int, section: str | None = None) -> Section | None:
        hits = [s for s in self.sections if s.addr <= addr < s.end
                and (section is None or s.name == section)]
        if len(hits) > 1:
            raise ValueError(f"address {addr:#x} is in {len(hits)} sections of a relocatable "
                             "object; name the section")
        return hits[0] if hits else None

    def sync_points(self, section: Section) -> list[int]:
        """Addresses in ``section`` where decoding restarts (its symbols, less data objects)."""
        return self._sync.get(section.name, [])

    def symbolize(self, addr: int, section: str | None = None) -> str | None:
        """``"func+0x12"`` for the nearest symbol at or before ``addr`` in its section, else None."""
        sec = self.section_at(addr, section)
        if sec is None:
            return None
        addrs, syms = self._index.get(sec.name, ([], []))
        i = bisect.bisect_right(addrs, addr) - 1
        if i < 0:
            return None
        off = addr - addrs[i]
        return syms[i].name if off == 0 else f"{syms[i].name}+{off:#x}"


# --- loading -------------------------------------------------------------------------------------

def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == _GZIP_MAGIC:
                return _gunzip(f.read(MAX_FILE + 1), path)
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise GuestError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_FILE:
        raise GuestError(f"{path}: larger than {MAX_FILE >> 20} MiB")
    return data


def _gunzip(raw: bytes, path: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:  # a gzip file may hold several members, one after the other
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = d.decompress(raw, MAX_FILE + 1 - size)
        except zlib.error as e:
            raise GuestError(f"{path}: corrupt gzip data: {e}") from None
        parts.append(part)
        size += len(part)
        if size > MAX_FILE or d.unconsumed_tail:
            raise GuestError(f"{path}: decompresses to more than {MAX_FILE >> 20} MiB")
        if not d.eof:
            raise GuestError(f"{path}: truncated gzip data")
        raw = d.unused_data
        if not raw.strip(b"\0"):  # zero padding after the last member is common
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _check_range(path: str, what: str, off: int, size: int, total: int) -> None:
    if off < 0 or size < 0 or off + size > total:
        raise GuestError(f"{path}: {what} (file bytes {off:#x}+{size:#x}) lies beyond the end "
                         f"of the {total:#x}-byte file")


def _load_elf(path: str, data: bytes) -> tuple[str, list[Section], list[Symbol], list[str], str]:
    if len(data) < 52:
        raise GuestError(f"{path}: truncated ELF header ({len(data)} bytes)")
    if data[4] == 2:
        raise GuestError(f"{path}: 64-bit ELF (ELFCLASS64); only 32-bit IA-32 guests are supported")
    if data[4] != 1:
        raise GuestError(f"{path}: bad ELF class byte {data[4]}")
    if data[5] != 1:
        raise GuestError(f"{path}: not a little-endian ELF (EI_DATA={data[5]})")
    try:
        elf = ELFFile(io.BytesIO(data))
        hdr = elf.header
        kind = _ET.get(hdr.e_type)
        if hdr.e_machine != "EM_386":
            raise GuestError(f"{path}: ELF machine is {hdr.e_machine}, not EM_386")
        if kind is None:
            raise GuestError(f"{path}: ELF type {hdr.e_type} is not ET_EXEC, ET_DYN or ET_REL")
        _check_headers(path, hdr, len(data))
        if kind != "rel":
            _check_segments(path, elf, len(data))
        sections, notes, exec_idx = _exec_sections(path, elf, data, kind)
        symbols, source = _elf_symbols(path, elf, data, kind, exec_idx)
    except GuestError:
        raise
    except Exception as e:  # pyelftools reports corrupt input with many exception types
        msg = str(e).splitlines()[0] if str(e) else ""
        raise GuestError(f"{path}: corrupt ELF: {type(e).__name__}: {msg}"[:300]) from None
    return kind, sections, symbols, notes, source


def _check_headers(path: str, hdr, size: int) -> None:
    if hdr.e_shnum == 0 or hdr.e_shoff == 0:
        raise GuestError(f"{path}: ELF has no section headers")
    if hdr.e_shentsize != 40:
        raise GuestError(f"{path}: section header size {hdr.e_shentsize}, expected 40")
    _check_range(path, "section header table", hdr.e_shoff, hdr.e_shnum * 40, size)
    if not 0 < hdr.e_shstrndx < hdr.e_shnum:
        raise GuestError(f"{path}: section name table index {hdr.e_shstrndx} out of range")
    if hdr.e_phnum:
        if hdr.e_phentsize != 32:
            raise GuestError(f"{path}: program header size {hdr.e_phentsize}, expected 32")
        _check_range(path, "program header table", hdr.e_phoff, hdr.e_phnum * 32, size)


def _check_segments(path: str, elf: ELFFile, size: int) -> None:
    loads = []
    for i in range(elf.num_segments()):
        h = elf._get_segment_header(i)
        if h.p_type != "PT_LOAD":
            continue
        _check_range(path, f"segment {i}", h.p_offset, h.p_filesz, size)
        if h.p_filesz > h.p_memsz or h.p_vaddr + h.p_memsz > 1 << 32:
            raise GuestError(f"{path}: segment {i} has bad sizes (filesz {h.p_filesz:#x}, "
                             f"memsz {h.p_memsz:#x} at {h.p_vaddr:#x})")
        loads.append((h.p_vaddr, h.p_vaddr + h.p_memsz, i))
    loads.sort()
    for (a0, a1, i), (b0, b1, j) in zip(loads, loads[1:]):
        if b0 < a1:
            raise GuestError(f"{path}: overlapping segments {i} [{a0:#x},{a1:#x}) and "
                             f"{j} [{b0:#x},{b1:#x})")


def _exec_sections(path: str, elf: ELFFile, data: bytes, kind: str):
    sections: list[Section] = []
    notes: list[str] = []
    exec_idx: dict[int, str] = {}
    for i in range(elf.num_sections()):
        h = elf._get_section_header(i)
        if not h.sh_flags & SH_FLAGS.SHF_EXECINSTR:
            continue
        name = elf._get_section_name(h) or f"section{i}"
        if h.sh_type == "SHT_NOBITS" or h.sh_size == 0:
            notes.append(f"{name}: executable section with no bytes in the file")
            continue
        _check_range(path, f"section {name}", h.sh_offset, h.sh_size, len(data))
        addr = 0 if kind == "rel" else h.sh_addr
        if addr + h.sh_size > 1 << 32:
            raise GuestError(f"{path}: section {name} runs past 4 GiB")
        exec_idx[i] = name
        sections.append(Section(name, addr, data[h.sh_offset:h.sh_offset + h.sh_size], h.sh_offset))
    if not sections:
        raise GuestError(f"{path}: no executable bytes (no non-empty SHF_EXECINSTR section)")
    if len({s.name for s in sections}) != len(sections):
        raise GuestError(f"{path}: two executable sections share a name")
    if kind != "rel":
        ordered = sorted(sections, key=lambda s: s.addr)
        for a, b in zip(ordered, ordered[1:]):
            if b.addr < a.end:
                raise GuestError(f"{path}: overlapping executable sections {a.name} and {b.name}")
    return sections, notes, exec_idx


def _elf_symbols(path: str, elf: ELFFile, data: bytes, kind: str, exec_idx: dict[int, str]):
    # Found by type, header by header: building every section (as get_section_by_name does)
    # would reject a guest for a corrupt section the scanner never reads, e.g. a relocation table.
    types = [elf._get_section_header(i).sh_type for i in range(elf.num_sections())]
    idx = next((i for want in ("SHT_SYMTAB", "SHT_DYNSYM") for i, t in enumerate(types)
                if t == want), None)
    if idx is None:
        return [], "none"
    h = elf._get_section_header(idx)
    if h.sh_entsize != 16:
        raise GuestError(f"{path}: symbol table (section {idx}) entry size {h.sh_entsize}, "
                         "expected 16")
    table = elf.get_section(idx)
    _check_range(path, f"section {table.name}", h.sh_offset, h.sh_size, len(data))
    if not 0 < h.sh_link < elf.num_sections():
        raise GuestError(f"{path}: {table.name} names a string table {h.sh_link} out of range")
    strtab = elf._get_section_header(h.sh_link)
    _check_range(path, "symbol string table", strtab.sh_offset, strtab.sh_size, len(data))
    bounds = {i: (0 if kind == "rel" else elf._get_section_header(i).sh_addr,
                  elf._get_section_header(i).sh_size) for i in exec_idx}
    out = []
    for sym in table.iter_symbols():
        e = sym.entry
        if e.st_info.type in ("STT_SECTION", "STT_FILE") or not sym.name:
            continue
        if sym.name.startswith(".L") or not isinstance(e.st_shndx, int) or e.st_shndx not in exec_idx:
            continue
        lo, n = bounds[e.st_shndx]
        addr = e.st_value + (0 if kind != "rel" else lo)
        if lo <= addr < lo + n:  # a symbol at the very end of a section labels nothing
            out.append(Symbol(sym.name, addr, exec_idx[e.st_shndx], e.st_info.bind != "STB_LOCAL",
                              e.st_info.type != "STT_OBJECT"))
    return out, table.name if out else "none"


_NM_LINE = re.compile(r"([0-9A-Fa-f]{1,16})\s+([A-Za-z?\-])\s+(\S+)")


def _symbol_file(path: str, sections: list[Section]) -> list[Symbol]:
    """Symbols from ``nm`` output ("addr type name"), e.g. tboot's /boot/tboot-syms or a System.map."""
    try:
        with open(path, "rb") as f:
            text = f.read(64 << 20).decode("utf-8", "replace")
    except OSError as e:
        raise GuestError(f"{path}: cannot read symbol file: {e.strerror or e}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or re.fullmatch(r"[A-Za-z]\s+\S+", line):  # blank, or undefined ("U name")
            continue
        m = _NM_LINE.fullmatch(line)
        if m is None:
            raise GuestError(f"{path}:{n}: not an 'address type name' symbol line: {line[:60]!r}")
        addr = int(m.group(1), 16)
        for s in sections:
            if s.addr <= addr < s.end:  # only symbols that label code are kept
                out.append(Symbol(m.group(3), addr, s.name, m.group(2).isupper()))
                break
    return out


def load_guest(path: str | os.PathLike, raw: bool = False, base: int | None = None,
               symbols: str | os.PathLike | None = None) -> Guest:
    """Load an ELF32 i386 guest (gzip allowed) or, with ``raw=True``, a flat blob at ``base``."""
    path = os.fspath(path)
    data = _read(path)
    if not data:
        raise GuestError(f"{path}: empty file")
    notes: list[str] = []
    if raw:
        base = 0 if base is None else base
        if base < 0 or base + len(data) > 1 << 32:
            raise GuestError(f"{path}: {len(data)} bytes at base {base:#x} do not fit in 4 GiB")
        kind, sections, syms, source = "raw", [Section("raw", base, data, 0)], [], "none"
    else:
        if base is not None:
            raise GuestError(f"{path}: base applies only to raw blobs (raw=True)")
        if data[:4] != _ELF_MAGIC:
            raise GuestError(f"{path}: not an ELF file (no \\x7fELF magic); "
                             "use raw=True for a flat binary")
        kind, sections, syms, notes, source = _load_elf(path, data)
    if symbols is not None:
        spath = os.fspath(symbols)
        if kind == "rel":
            raise GuestError(f"{spath}: a symbol file cannot place symbols in a relocatable object")
        syms = syms + _symbol_file(spath, sections)
        source = spath if source == "none" else f"{source} + {spath}"
    return Guest(path, kind, tuple(sections), tuple(syms), source, tuple(notes))


# --- decoding ------------------------------------------------------------------------------------

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


def _layout():
    """Where Capstone's cs_insn array keeps id, size, mnemonic and op_str, to read it in place:
    the Python binding builds a ctypes object per instruction, which costs more than decoding."""
    try:
        import ctypes
        from capstone import _cs, _cs_insn
        size = ctypes.sizeof(_cs_insn)
        f = {n: (getattr(_cs_insn, n).offset, getattr(_cs_insn, n).size)
             for n in ("id", "size", "mnemonic", "op_str")}
    except (ImportError, AttributeError):
        return None
    if size % 4 or f["id"] != (0, 4) or f["size"][1] != 2 or f["size"][0] % 2:
        return None  # another binding layout: use the public API
    return _cs, _cs_insn, ctypes, size, f


_LAYOUT = _layout()


class _Run:
    """One Capstone pass over ``code`` at ``addr``: sizes, ids (0 = undecodable byte), text(i).

    The constructor does the decoding; through ctypes it runs without the GIL, so runs over
    different parts of a section can proceed on several cores.
    """

    def __init__(self, code: bytes, addr: int, fast: bool):
        md = _capstone()
        self._md = md       # keep the handle open while its results are read
        self._arr = None
        self.n = 0
        if not fast:
            self._recs = recs = list(md.disasm_lite(code, addr))
            self.sizes = [r[1] for r in recs]
            self.ids = [0 if r[2] == ".byte" else 1 for r in recs]
            return
        _cs, _cs_insn, ctypes, size, f = _LAYOUT
        arr = ctypes.POINTER(_cs_insn)()
        n = _cs.cs_disasm(md.csh, code, len(code), addr, 0, ctypes.byref(arr))
        if n == 0:
            err = _cs.cs_errno(md.csh)
            if err:
                raise capstone.CsError(err)
            self.sizes, self.ids = [], []
            return
        self._arr, self.n = arr, n
        raw = (ctypes.c_char * (n * size)).from_address(ctypes.addressof(arr.contents))
        self._mv = mv = memoryview(raw).cast("B")
        self.sizes = mv.cast("H")[f["size"][0] // 2::size // 2].tolist()
        self.ids = mv.cast("I")[0::size // 4].tolist()

    def text(self, i: int) -> tuple[str, str]:
        if self._arr is None:
            r = self._recs[i]
            return r[2], r[3]
        size, f = _LAYOUT[3], _LAYOUT[4]
        (mo, mn), (oo, on) = f["mnemonic"], f["op_str"]
        mv = self._mv
        return _cstr(mv, i * size + mo, mn), _cstr(mv, i * size + oo, on)

    def mnemonic(self, i: int) -> str:
        if self._arr is None:
            return self._recs[i][2]
        mo, mn = _LAYOUT[4]["mnemonic"]
        return _cstr(self._mv, i * _LAYOUT[3] + mo, mn)

    def close(self) -> None:
        if self._arr is not None:
            _LAYOUT[0].cs_free(self._arr, self.n)
            self._arr = None  # text() must not read the freed array


def _cstr(mv: memoryview, start: int, n: int) -> str:
    return bytes(mv[start:start + n]).split(b"\0", 1)[0].decode("ascii", "replace")


class _Stream:
    """Consecutive instructions: offs[i] is instruction i's offset in the section, offs[i+1] its
    end; text(i) reads Capstone's mnemonic and operands from the run that decoded it."""

    def __init__(self, parts: list[tuple[_Run, int, int]], start: int):
        self.sizes: list[int] = []
        self.ids: list[int] = []
        self._parts = []            # (first index here, run, index in run)
        for run, lo, hi in parts:
            self._parts.append((len(self.sizes), run, lo))
            self.sizes += run.sizes[lo:hi]
            self.ids += run.ids[lo:hi]
        self._firsts = [p[0] for p in self._parts]
        self.offs = list(accumulate(self.sizes, initial=start))

    def _at(self, i: int) -> tuple[_Run, int]:
        first, run, lo = self._parts[bisect.bisect_right(self._firsts, i) - 1]
        return run, lo + i - first

    def text(self, i: int) -> tuple[str, str]:
        run, j = self._at(i)
        return run.text(j)

    def mnemonic(self, i: int) -> str:
        run, j = self._at(i)
        return run.mnemonic(j)


_PARALLEL_MIN = 64 << 10    # sections smaller than this are decoded in one call
_JOIN = 4096                # bytes a piece decodes past its end to meet the next piece


def _linear(data: bytes, base: int, fast: bool, jobs: int, runs: list[_Run]) -> _Stream:
    """The linear sweep of ``data``, decoded in ``jobs`` pieces at once when it is large.

    Piece k+1 starts at a guessed offset; piece k decodes past it until both meet at a common
    instruction boundary, after which their streams are the same bytes decoded the same way.
    """
    pieces = min(jobs, len(data) // (_PARALLEL_MIN // 2)) if len(data) >= _PARALLEL_MIN else 1
    if pieces > 1:
        cuts = [len(data) * k // pieces for k in range(pieces)] + [len(data)]
        spans = [(cuts[k], min(cuts[k + 1] + _JOIN, len(data))) for k in range(pieces)]
        with ThreadPoolExecutor(pieces) as pool:
            done = list(pool.map(lambda sp: _Run(data[sp[0]:sp[1]], base + sp[0], fast), spans))
        runs.extend(done)
        parts = _join(done, spans, len(data))
        if parts is not None:
            return _Stream(parts, 0)
    run = _Run(data, base, fast)
    runs.append(run)
    return _Stream([(run, 0, len(run.sizes))], 0)


def _join(done: list[_Run], spans: list[tuple[int, int]], total: int):
    """(run, lo, hi) parts forming one seamless sweep, or None if two pieces never meet."""
    parts = []
    lo = 0
    for k, run in enumerate(done):
        offs = list(accumulate(run.sizes, initial=spans[k][0]))
        if k + 1 == len(done):
            parts.append((run, lo, len(run.sizes)))
            break
        nxt = done[k + 1]
        nstart, trusted = spans[k + 1][0], spans[k][1] - (MAX_INSN - 1)
        if spans[k][1] == total:
            trusted = total
        # every instruction is at least one byte, so _JOIN instructions cover _JOIN bytes
        nxt_list = list(accumulate(nxt.sizes[:_JOIN], initial=nstart))
        nxt_offs = set(nxt_list)
        i = max(bisect.bisect_left(offs, nstart), lo)
        while i < len(run.sizes) and offs[i] < trusted and offs[i] not in nxt_offs:
            i += 1
        if i >= len(run.sizes) or offs[i] >= trusted:
            return None
        parts.append((run, lo, i))
        lo = bisect.bisect_left(nxt_list, offs[i])
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
    runs: list[_Run] = []

    def alone(start: int, stop: int):
        run = _Run(data[start:stop], base + start, fast)
        runs.append(run)
        st = _Stream([(run, 0, len(run.sizes))], start)
        return st, 0, len(st.sizes)

    try:
        main = _linear(data, base, fast, jobs, runs)
        offs, n = main.offs, len(main.sizes)
        aligned = {p for p in syncs if offs[bisect.bisect_left(offs, p, 0, n)] == p}
        bounds = syncs + [len(data)]
        i = 0                                   # main is emitted up to instruction i
        for k, p in enumerate(syncs):
            if p in aligned or p < offs[i]:
                continue
            j = bisect.bisect_right(offs, p, i, n) - 1  # the instruction p falls inside
            yield main, i, j
            yield alone(offs[j], p)
            while True:                          # fresh runs until a symbol the sweep reached
                q = bounds[k + 1]
                yield alone(p, q)
                k += 1
                if q == len(data) or q in aligned:
                    break
                p = q
            i = bisect.bisect_left(offs, q, j, n)
        yield main, i, n
    finally:
        for run in runs:
            run.close()


def decode(guest: Guest, fast: bool | None = None, jobs: int | None = None) -> Iterator[Insn]:
    """Every instruction of the executable sections; undecodable bytes come one by one as UNDECODABLE.

    ``jobs`` is the number of decoding threads (default: CPUs, at most 4); ``fast=False`` uses
    Capstone's public per-instruction API instead of reading its result array in place.
    """
    for sec in guest.sections:
        data, base, name = sec.data, sec.addr, sec.name
        for st, lo, hi in _sweep(guest, sec, fast, jobs):
            offs, ids = st.offs, st.ids
            for i in range(lo, hi):
                code = data[offs[i]:offs[i + 1]]
                if ids[i]:
                    yield Insn(base + offs[i], name, code, *st.text(i))
                else:
                    yield Insn(base + offs[i], name, code, UNDECODABLE, "")


# --- matching instances to forms -----------------------------------------------------------------

_PASS_PREFIX = frozenset(SEG_PREFIX) | frozenset(REP_PREFIX)
_MISS = object()
_MNEMONIC_PREFIXES = frozenset({"rep", "repe", "repz", "repne", "repnz", "lock", "bnd", "notrack"})


def _key(op: bytes) -> bytes:
    # Two-byte key for the 0F map (and prefix-led opcodes), one byte otherwise.
    return op[:2] if op[:1] in (b"\x0f", b"\x66", b"\xf2", b"\xf3") else op[:1]


class _Matcher:
    """Forms indexed by leading opcode byte(s), with results cached by instruction shape.

    ``encoding.decode`` looks only at the prefixes, the opcode, ModRM and SIB; displacement and
    immediate values merely have to be present.  So those bytes plus the total length decide a
    match, and instructions that differ only in displacements or immediates share one entry.
    """

    def __init__(self, forms: Iterable[Form]):
        self.index: dict[bytes, tuple[Form, ...]] = {}
        idx: dict[bytes, list[Form]] = defaultdict(list)
        for f in forms:
            op = f.enc.opcode
            if f.enc.plus_r and len(_key(op)) == len(op):
                for r in range(8):  # the register is in the key byte itself
                    idx[op[:-1] + bytes([op[-1] | r])].append(f)
            else:
                idx[_key(op)].append(f)
        self.index = {k: tuple(v) for k, v in idx.items()}
        # Bytes after the prefixes that can influence a match: the opcode and ModRM (span), and
        # the SIB byte that follows a ModRM at one of the offsets in sib_at when ModRM says so.
        self.span = {k: max(len(f.enc.opcode) + (f.enc.modrm is not None) for f in v)
                     for k, v in self.index.items()}
        self.sib_at = {k: tuple(sorted({len(f.enc.opcode) for f in v if f.enc.modrm is not None}))
                       for k, v in self.index.items()}
        self.cache: dict[tuple[bytes, bytes, int], Form | None] = {}
        self.by_code: dict[bytes, Form | None] = {}     # the same answers, by whole instruction
        self.md: capstone.Cs | None = None

    def __call__(self, code: bytes) -> Form | None:
        f = self.by_code.get(code, _MISS)
        if f is not _MISS:
            return f
        i = 0
        n = len(code)
        while i < n and code[i] in _PASS_PREFIX:
            i += 1
        k = _key(code[i:i + 2])
        cands = self.index.get(k)
        if cands is None:
            f = None
        else:
            sib = bytes(code[i + m + 1] for m in self.sib_at[k] if i + m + 1 < n
                        and code[i + m] & 0xC7 in (0x04, 0x44, 0x84))  # mod != 3, rm = 4
            shape = (code[:i + self.span[k]], sib, n)
            f = self.cache.get(shape, _MISS)
            if f is _MISS:
                rep = any(c in REP_PREFIX for c in code[:i])
                f = self.cache[shape] = self._match(code, cands, rep)
        if len(self.by_code) >= 1 << 20:
            self.by_code.clear()
        self.by_code[code] = f
        return f

    def _match(self, code: bytes, cands: tuple[Form, ...], rep: bool) -> Form | None:
        hits = [f for f in cands if (d := matches(f.enc, code)) is not None and d.length == len(code)]
        if len(hits) > 1:
            raise FormConflict(f"{code.hex()} matches forms {', '.join(f.name for f in hits)}")
        if not hits:
            return None
        f = hits[0]
        if rep and f.enc.opcode[0] not in REP_PREFIX:
            # F2/F3 select another instruction for many opcodes (F3 90 PAUSE, F3 0F B8 POPCNT,
            # F3 0F 1E FB ENDBR32); encoding.decode would read them as a REP prefix.
            if self.md is None:
                self.md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
            got = [m for _, _, m, _ in self.md.disasm_lite(code, 0)]
            if len(got) != 1 or _asm_mnemonic(got[0]) != _asm_mnemonic(f.asm):
                return None
        return f


_matcher: tuple[int, _Matcher] | None = None


def _current() -> _Matcher:
    global _matcher
    if _matcher is None:
        from pgvirt.model import isa  # noqa: F401  (registers every form; builds Z3 terms)
    if _matcher is None or _matcher[0] != len(REGISTRY):
        _matcher = (len(REGISTRY), _Matcher(REGISTRY.values()))  # forms are still being added
    return _matcher[1]


def _asm_mnemonic(text: str) -> str:
    words = [w for w in text.lower().split() if w not in _MNEMONIC_PREFIXES]
    return words[0] if words else ""


class FormConflict(Exception):
    """Two forms accept the same instruction bytes: a bug in the model, not in the guest."""


def match_form(code: bytes) -> Form | None:
    """The model form that ``code`` (exactly one instruction) is an instance of, or None.

    Segment and REP prefixes pass through ``encoding.decode``; any other prefix (0x66, 0x67,
    LOCK) that a form's opcode does not spell out leaves the instance unmodelled.  A REP prefix
    that turns the bytes into another instruction (F3 90 is PAUSE) is caught by asking Capstone.
    """
    return _current()(bytes(code))


# --- scanning ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    address: int
    section: str
    symbol: str | None
    bytes: str          # hex
    asm: str
    mnemonic: str
    form: str
    classes: tuple[str, ...]

    def row(self) -> dict:
        return {"address": self.address, "section": self.section, "symbol": self.symbol,
                "bytes": self.bytes, "asm": self.asm, "mnemonic": self.mnemonic,
                "form": self.form, "classes": list(self.classes)}


@dataclass(frozen=True)
class Unmodelled:
    """Instructions with one Capstone mnemonic that no form describes."""

    mnemonic: str
    count: int
    first: tuple[int, ...]      # up to five addresses, in scan order
    example: str                # bytes (hex) and asm of the first one


@dataclass(frozen=True)
class ScanResult:
    guest: str
    instructions: int
    undecodable: int
    undecodable_first: tuple[int, ...]
    sites: tuple[Site, ...]
    unmodelled: tuple[Unmodelled, ...]     # most frequent first
    forms: dict[str, int]                   # instances per matched form (violating or not)

    @property
    def unmodelled_count(self) -> int:
        return sum(u.count for u in self.unmodelled)


def scan(guest: Guest, classify: Callable[[str], Iterable[str]],
         fast: bool | None = None, jobs: int | None = None) -> ScanResult:
    """Find every instance of a form in ``guest``; those with violated classes are sites.

    The per-instruction work is a dictionary look-up by instruction bytes: matching, Capstone's
    mnemonic and the classification are computed once per distinct byte string.
    """
    matcher = _current()
    # bytes -> [form name or None, classes (None: unmodelled), mnemonic, count]
    seen: dict[bytes, list] = {}
    verdict: dict[str, tuple[str, ...]] = {}
    groups: dict[str, list] = {}            # unmodelled mnemonic -> [first addresses, example]
    sites: list[Site] = []
    bad_first: list[int] = []
    bad = 0
    for sec in guest.sections:
        data, base, name = sec.data, sec.addr, sec.name
        for st, lo, hi in _sweep(guest, sec, fast, jobs):
            # Per-instruction work stays in C (map, Counter, compress); Python runs once per
            # distinct byte string and once per instruction that is reported.
            ids, offs = st.ids, st.offs
            codes = list(map(data.__getitem__, map(slice, offs[lo:hi], offs[lo + 1:hi + 1])))
            counts = Counter(codes)
            for k in compress(range(lo, hi), map(operator.not_, ids[lo:hi])):
                bad += 1
                counts[codes[k - lo]] -= 1
                if len(bad_first) < 5:
                    bad_first.append(base + offs[k])
            interesting = set()
            unmodelled = []
            for code, c in counts.items():
                e = seen.get(code)
                if e is None:
                    if c <= 0:
                        continue
                    e = seen[code] = _entry(matcher, code, classify, verdict)
                e[3] += c
                if e[1] is None:
                    unmodelled.append(code)
                elif e[1]:
                    interesting.add(code)
            if unmodelled:
                # Each distinct unmodelled encoding is reported at its first address; a map from
                # bytes to first index, built in C, spares a Python step per unmodelled instance.
                first_at = dict(zip(reversed(codes), reversed(range(lo, hi))))
                for code in unmodelled:
                    k = first_at[code]
                    if not ids[k]:
                        continue
                    e = seen[code]
                    if e[2] is None:  # Capstone's mnemonic names the group
                        e[2] = st.mnemonic(k)
                    g = groups.get(e[2])
                    if g is None:
                        mnem, op = st.text(k)
                        groups[e[2]] = [[base + offs[k]], f"{code.hex()}  {mnem} {op}".rstrip()]
                    else:
                        g[0].append(base + offs[k])
            if not interesting:
                continue
            for k in compress(range(lo, hi), map(interesting.__contains__, codes)):
                if not ids[k]:
                    continue
                code = codes[k - lo]
                e = seen[code]
                addr = base + offs[k]
                mnem, op = st.text(k)
                sites.append(Site(addr, name, guest.symbolize(addr, name), code.hex(),
                                  f"{mnem} {op}".rstrip(), mnem, e[0], e[1]))
    forms: dict[str, int] = defaultdict(int)
    unmod: dict[str, int] = defaultdict(int)
    for fname, cls, mnem, count in seen.values():
        if cls is None:
            unmod[mnem] += count
        else:
            forms[fname] += count
    out = sorted((Unmodelled(m, c, tuple(sorted(groups[m][0])[:5]), groups[m][1]) for m, c in unmod.items()),
                 key=lambda u: (-u.count, u.mnemonic))
    total = sum(e[3] for e in seen.values())
    return ScanResult(guest.path, total, bad, tuple(bad_first), tuple(sites), tuple(out),
                      dict(sorted(forms.items())))


def _entry(matcher: "_Matcher", code: bytes, classify, verdict: dict) -> list:
    f = matcher(code)
    if f is None:
        return [None, None, None, 0]
    cls = verdict.get(f.name)
    if cls is None:
        cls = verdict[f.name] = tuple(sorted(classify(f.name)))
    return [f.name, cls, "", 0]
