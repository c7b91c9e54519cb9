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
import os
import re
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

import capstone
import numpy as np
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from pgvirt.model.encoding import LEGACY_PREFIXES, REP_PREFIX, instance_length
from pgvirt.model.form import REGISTRY, Form

__all__ = ["GuestError", "FormConflict", "Section", "Symbol", "Guest", "Insn", "load_guest",
           "decode", "asm", "match_form", "scan", "ScanResult", "Site", "Unmodelled", "UNDECODABLE"]

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
        return None if sec is None else self.label(sec.name, addr)

    def label(self, section: str, addr: int) -> str | None:
        """``symbolize`` for an address known to lie in ``section``."""
        addrs, syms = self._index.get(section, ([], []))
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


# --- matching instances to forms -----------------------------------------------------------------

_PASS_PREFIX = LEGACY_PREFIXES   # segment, REP, 66, 67 and LOCK: the encodings judge them
_PASS_T = np.zeros(256, bool)
_PASS_T[list(_PASS_PREFIX)] = True
_SIB_T = np.zeros(256, bool)
_SIB_T[[m for m in range(256) if m & 0xC7 in (0x04, 0x44, 0x84)]] = True   # mod != 3, rm = 4
_MASK = np.array([(1 << 8 * k) - 1 for k in range(8)], np.uint64)
_MISS = object()
_MNEMONIC_PREFIXES = frozenset({"rep", "repe", "repz", "repne", "repnz", "lock", "bnd", "notrack"})


def _key(op: bytes) -> bytes:
    # Two-byte key for the 0F map (and prefix-led opcodes), one byte otherwise.
    return op[:2] if op[:1] in (b"\x0f", b"\x66", b"\xf2", b"\xf3") else op[:1]


class _Matcher:
    """Forms indexed by leading opcode byte(s), with answers remembered.

    ``encoding.decode`` looks only at the prefixes, the opcode, ModRM and SIB; displacement and
    immediate values merely have to be present.  So those bytes plus the total length decide a
    match, and ``shapes`` gives instructions that differ only in displacements or immediates one
    key.
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
        self.by_code: dict[bytes, Form | None] = {}     # answers by whole instruction (match_form)
        self.by_shape: dict[int, Form | None] = {}      # ... and by a key of ``shapes`` (scan)
        self._tables: tuple[np.ndarray, np.ndarray] | None = None

    def shapes(self, blob: np.ndarray, starts: np.ndarray, sizes: np.ndarray):
        """The shape of every instruction at once, as one integer each, for grouping.

        Instructions with equal keys get the same answer from ``decide``: a key keeps the bytes
        that can change it (REP and segment prefixes, opcode, ModRM, the SIB byte a ModRM calls
        for; ``span`` and ``sib_at``) and the length.  ``blob`` holds the instructions (and 8 bytes of padding);
        an instruction whose shape runs into its 8th byte has no key (``exact`` is True) and
        must be matched on its own bytes.
        """
        if self._tables is None:
            # Rows: one-byte keys, then 0F xx, then 66 xx (the only bytes _key reads two of
            # once REP and segment prefixes are skipped).
            span = np.empty(768, np.int64)
            sib_last = np.zeros(768, bool)
            for t in range(768):
                k = bytes([t]) if t < 256 else bytes([0x0F if t < 512 else 0x66, t & 0xFF])
                span[t] = self.span.get(k, len(k))   # no candidates: unmodelled whatever follows
                sib_last[t] = k in self.index and self.span[k] - 1 in self.sib_at[k]
            self._tables = span, sib_last
        span_t, sib_last_t = self._tables
        n = len(starts)
        first8 = np.ndarray((len(blob) - 7,), "<u8", buffer=blob, strides=(1,))[starts]
        b = first8.view(np.uint8).reshape(n, 8)
        i = np.zeros(n, np.int64)                   # leading REP and segment prefixes
        more = np.flatnonzero(_PASS_T[b[:, 0]])
        for j in range(1, 9):                       # few instructions have any: narrow each round
            i[more] += 1
            more = more[(sizes[more] > j) & _PASS_T[b[more, min(j, 7)]]] if j < 8 else more[:0]
            if not len(more):
                break
        b0, b1 = b[:, 0].astype(np.int64), b[:, 1].astype(np.int64)
        pre = np.flatnonzero(i)
        if len(pre):
            ic = np.minimum(i[pre], 6)
            b0[pre], b1[pre] = b[pre, ic], b[pre, ic + 1]
        two = (b0 == 0x0F) | (b0 == 0x66)
        t = np.where(two, np.where(b0 == 0x66, 512, 256) + b1, b0)
        end = i + span_t[t]
        modrm = (first8 >> (np.minimum(end - 1, 7) * 8).astype(np.uint64)).astype(np.uint8)
        sib = sib_last_t[t] & (end < sizes) & _SIB_T[modrm]
        exact = (end + sib > 7) | (i + two >= sizes)
        keep = np.minimum(end + sib, sizes).clip(0, 7)
        keys = (first8 & _MASK[keep]) | (sizes.astype(np.uint64) << np.uint64(56))
        return keys, exact

    def remember(self, shape: int, f: Form | None) -> Form | None:
        if len(self.by_shape) >= 1 << 20:
            self.by_shape.clear()
        self.by_shape[shape] = f
        return f

    def decide(self, code: bytes) -> Form | None:
        """What ``self(code)`` answers, worked out afresh (``scan`` remembers answers by shape)."""
        i, n = 0, len(code)
        while i < n and code[i] in _PASS_PREFIX:
            i += 1
        cands = self.index.get(_key(code[i:i + 2]))
        return None if cands is None else self._match(code, cands, any(c in REP_PREFIX for c in code[:i]))

    def __call__(self, code: bytes) -> Form | None:
        f = self.by_code.get(code, _MISS)
        if f is _MISS:
            f = self.decide(code)
            if len(self.by_code) >= 1 << 20:
                self.by_code.clear()
            self.by_code[code] = f
        return f

    def _match(self, code: bytes, cands: tuple[Form, ...], rep: bool) -> Form | None:
        hits = [f for f in cands if instance_length(f.enc, code) == len(code)]
        if len(hits) > 1:
            raise FormConflict(f"{code.hex()} matches forms {', '.join(f.name for f in hits)}")
        if not hits:
            return None
        f = hits[0]
        if rep and f.enc.opcode[0] not in REP_PREFIX:
            # F2/F3 select another instruction for many opcodes (F3 90 PAUSE, F3 0F B8 POPCNT,
            # F3 0F 1E FB ENDBR32); encoding.decode would read them as a REP prefix.
            md = _handle()
            try:
                got = [m for _, _, m, _ in md.disasm_lite(code, 0)]
            finally:
                _IDLE.append(md)
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

    Every legacy prefix passes through ``encoding.decode``, which decides what it means for the
    form (``o16``/``o32``, 16-bit addressing, mandatory and REP prefixes, LOCK); bytes with a
    prefix a form does not admit are no instance of it.  A REP prefix that turns the bytes into
    another instruction no form describes is caught by asking Capstone.
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

    Per instruction the work is array arithmetic (``_Matcher.shapes``): matching, Capstone's
    mnemonic and the classification are computed once per instruction shape, and Python runs
    per instruction only for those reported.
    """
    matcher = _current()
    starts, sizes, ids, addrs, secs, mnems = [], [], [], [], [], []
    blob, at = [], 0
    for k, sec in enumerate(guest.sections):
        for st, lo, hi in _sweep(guest, sec, fast, jobs):
            offs = st.offs[lo:hi]
            starts.append(offs + at)
            addrs.append(offs + sec.addr)
            sizes.append(st.sizes[lo:hi])
            ids.append(st.ids[lo:hi])
            mnems.append(st.mnems[lo:hi])
            secs.append(np.full(hi - lo, k, np.int64))
        blob += [sec.data, bytes(8)]
        at += len(sec.data) + 8
    data = b"".join(blob)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    starts, sizes, ids, addrs, secs = cat(starts), cat(sizes), cat(ids), cat(addrs), cat(secs)

    def text(k: int) -> tuple[str, str]:
        return _text_at(data[starts[k]:starts[k] + sizes[k]], int(addrs[k]))

    ok = ids != 0
    bad_at = np.flatnonzero(~ok)
    keys, exact = matcher.shapes(np.frombuffer(data, np.uint8), starts, sizes)
    # A label per shape, then one per distinct encoding too long for a shape (matched alone).
    label = np.full(len(starts), -1, np.int64)
    grouped = np.flatnonzero(ok & ~exact)
    inv, rep = _group(keys[grouped])
    label[grouped] = inv
    reps = grouped[rep].tolist()
    shapes = keys[grouped[rep]].tolist()
    found = [matcher.by_shape.get(key, _MISS) for key in shapes]
    for u, f in enumerate(found):
        if f is _MISS:
            k = reps[u]
            found[u] = matcher.remember(shapes[u], matcher.decide(data[starts[k]:starts[k] + sizes[k]]))
    lone: dict[bytes, int] = {}
    for k in np.flatnonzero(ok & exact).tolist():
        code = data[starts[k]:starts[k] + sizes[k]]
        if code not in lone:
            lone[code] = len(reps)
            reps.append(k)
            found.append(matcher.decide(code))
        label[k] = lone[code]
    verdict: dict[str, tuple[str, ...]] = {}
    entries = [(None, None) if f is None else (f.name, _judge(f.name, classify, verdict))
               for f in found]
    counts = np.bincount(label[ok], minlength=len(entries)).tolist()
    forms: dict[str, int] = defaultdict(int)
    for (fname, cls), c in zip(entries, counts):
        if cls is not None:
            forms[fname] += c
    hit = np.array([bool(cls) for _, cls in entries] + [False], bool)
    sites = []
    for k in np.flatnonzero(hit[label]).tolist():
        code, (fname, cls) = data[starts[k]:starts[k] + sizes[k]], entries[label[k]]
        mnem, op = text(k)
        addr, name = int(addrs[k]), guest.sections[secs[k]].name
        sites.append(Site(addr, name, guest.label(name, addr), code.hex(),
                          f"{mnem} {op}".rstrip(), mnem, fname, cls))
    none = np.array([cls is None for _, cls in entries] + [False], bool)
    unmodelled = _unmodelled(np.flatnonzero(none[label]), label, ids, np.concatenate(mnems),
                             starts, sizes, addrs, data, text)
    return ScanResult(guest.path, int(ok.sum()), len(bad_at),
                      tuple(addrs[bad_at[:5]].tolist()), tuple(sites), unmodelled,
                      dict(sorted(forms.items())))


_SPREAD = np.uint64(0x9E3779B97F4A7C15)    # Fibonacci hashing: the top 16 bits of key * this


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label equal keys alike: (label of each key, first index of each label), labels dense from 0.

    What ``np.unique`` returns as inverse and index, without sorting 64-bit keys: a radix sort of
    a 16-bit hash groups them, and only the few hash buckets holding two keys go to np.unique.
    """
    n = len(keys)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    h = ((keys.astype(np.uint64) * _SPREAD) >> np.uint64(48)).astype(np.uint16)
    order = np.argsort(h, kind="stable")       # by bucket, each in index order
    sh, sk = h[order], keys[order]
    start = np.empty(n, bool)
    start[0] = True
    np.not_equal(sh[1:], sh[:-1], out=start[1:])
    bucket = np.cumsum(start) - 1
    firsts = np.flatnonzero(start)
    label = np.empty(n, np.int64)
    shared = np.zeros(len(firsts), bool)        # buckets where two keys collide
    shared[bucket[sk != sk[firsts][bucket]]] = True
    if not shared.any():
        label[order] = bucket
        return label, order[firsts]
    alone, mixed = ~shared[bucket], shared[bucket]
    dense = np.cumsum(~shared) - 1
    label[order[alone]] = dense[bucket[alone]]
    at = order[mixed]
    _, rep, inv = np.unique(keys[at], return_index=True, return_inverse=True)
    label[at] = int((~shared).sum()) + inv
    return label, np.concatenate([order[firsts[~shared]], at[rep]])


_ONES, _HIGHS = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)


def _c_strings(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of little-endian words holding C strings: the rows with every byte after the first NUL
    cleared, masks of the bytes up to and including that NUL, and the rows with no NUL at all (a
    longer string, cut off; their masks take every byte)."""
    out, upto = np.zeros_like(words), np.zeros_like(words)
    open_ = np.ones(len(words), bool)           # no NUL met yet
    every = ~np.uint64(0)
    for w in range(words.shape[1]):
        v = words[:, w]
        zero = (v - _ONES) & ~v & _HIGHS        # its lowest set bit marks the first 0x00 byte
        first = zero & (~zero + np.uint64(1))
        out[:, w] = np.where(open_, v & np.where(zero == 0, every, (first >> np.uint64(7)) - 1), 0)
        upto[:, w] = np.where(open_, np.where(zero == 0, every, (first << np.uint64(1)) - 1), 0)
        open_ &= zero == 0
    upto[open_] = every
    return out, upto, open_


def _unmodelled(at, label, ids, mnems, starts, sizes, addrs, data, text):
    """Instructions ``at`` (no form describes them) grouped by Capstone's mnemonic.  Instructions
    of one shape with one Capstone id mostly share it, so they are grouped so first; a group whose
    members print otherwise (LOCK shown or not, CMPPS's predicate in its name) is split by text."""
    if not len(at):
        return ()
    raw = mnems[at]
    inv, rep = _group((label[at] << 32) | ids[at])
    # A member prints as its group's first if their C strings agree up to the first's NUL.
    strings, upto, long = _c_strings(raw[rep])
    split = np.flatnonzero(((raw & upto[inv]) != strings[inv]).any(axis=1) | long[inv])
    if len(split):
        words, _, cut = _c_strings(raw[split])
        _, again = np.unique(words, axis=0, return_inverse=True)
        again = again.ravel()
        again[cut] = again.max() + 1 + np.arange(cut.sum())     # cut off: each on its own
        _, firsts, again = np.unique(again, return_index=True, return_inverse=True)
        inv[split] = len(rep) + again.ravel()
        rep = np.concatenate([rep, split[firsts]])
        strings = np.concatenate([strings, words[firsts]])
        long = np.concatenate([long, cut[firsts]])
    names = [text(at[r])[0] if cut_ else w.tobytes().rstrip(b"\0").decode("ascii", "replace")
             for r, w, cut_ in zip(rep.tolist(), strings, long.tolist())]
    group_of: dict[str, int] = {}
    group = np.array([group_of.setdefault(m, len(group_of)) for m in names], np.int64)[inv]
    counts = np.bincount(group, minlength=len(group_of))
    order = at[np.argsort(group, kind="stable")]     # by group, each in scan order
    begin = (np.cumsum(counts) - counts).tolist()
    out = []
    for (m, g), c, b in zip(group_of.items(), counts.tolist(), begin):
        if not c:
            continue    # a label whose members all went to other labels above
        head = order[b:b + min(c, 5)]
        k = int(head[0])
        mnem, op = text(k)
        code = data[starts[k]:starts[k] + sizes[k]]
        out.append(Unmodelled(m, c, tuple(addrs[head].tolist()), f"{code.hex()}  {mnem} {op}".rstrip()))
    return tuple(sorted(out, key=lambda u: (-u.count, u.mnemonic)))


def _judge(name: str, classify, verdict: dict) -> tuple[str, ...]:
    """``classify(name)`` once per scan; a set comes back sorted, a sequence in its own order."""
    cls = verdict.get(name)
    if cls is None:
        got = classify(name)
        cls = verdict[name] = tuple(sorted(got) if isinstance(got, (set, frozenset)) else got)
    return cls
