"""Guest binaries as the loader sees them: executable sections and symbols.

``load_guest`` reads an ELF32 i386 file (ET_EXEC, ET_DYN or ET_REL, optionally gzip-compressed)
or a flat blob and keeps only its executable sections and their symbols.  Every problem with the
input is one ``GuestError`` with a one-line message.
"""

from __future__ import annotations

import bisect
import io
import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from pgvirt.model.files import InputError, read_regular

__all__ = ["GuestError", "Section", "Symbol", "Guest", "load_guest"]

MAX_FILE = 1 << 30          # bigger inputs (or gzip bombs) are refused, not read
_GZIP_MAGIC = b"\x1f\x8b"
_ELF_MAGIC = b"\x7fELF"
_ET = {"ET_REL": "rel", "ET_EXEC": "exec", "ET_DYN": "dyn"}


class GuestError(ValueError):
    """The input is not a guest this loader can read (the message says why, in one line).

    ``cli`` is the same message in the command line's words (``--raw`` where the library says
    ``raw=True``)."""

    def __init__(self, message: str, cli: str | None = None):
        super().__init__(message)
        self.cli = cli or message


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
    """The code of a guest (units swept linearly: executable sections, or for an executable the
    bytes its executable segments map, ``_code_by_segments``), the symbols that lie in it, and
    the executable bytes that are data."""

    path: str
    kind: str                               # "exec", "dyn", "rel" or "raw"
    sections: tuple[Section, ...]
    symbols: tuple[Symbol, ...] = ()
    symbol_source: str = "none"             # ".symtab", ".dynsym", a symbol file, or "none"
    notes: tuple[str, ...] = ()             # where headers and segments disagree, and what was done
    exec_data: tuple[Section, ...] = ()     # executable segments' bytes outside the code
    starts: tuple[int, ...] = ()            # section starts inside merged code units: restarts
    _index: dict = field(init=False, repr=False, compare=False)
    _sync: dict = field(init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        return (f"<Guest {self.path} ({self.kind}): {len(self.sections)} executable sections, "
                f"{sum(len(s.data) for s in self.sections)} bytes, {len(self.symbols)} symbols>")

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
        for a in self.starts:
            sec = next((u for u in self.sections if u.addr <= a < u.end), None)
            if sec is not None:
                sync[sec.name].add(a)
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

def read_file(path: str, what: str = "guest", cap: int = MAX_FILE) -> bytes:
    """The bytes of a regular file (never a FIFO or a device, never more than ``cap``)."""
    try:
        return read_regular(path, what, cap)
    except InputError as e:
        raise GuestError(str(e)) from None


def _read(path: str) -> bytes:
    data = read_file(path)
    return _gunzip(data, path) if data[:2] == _GZIP_MAGIC else data


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
        loads = _check_segments(path, elf, len(data)) if kind != "rel" else []
        sections, notes, exec_idx = _exec_sections(path, elf, data, kind)
        exec_data: list[Section] = []
        starts: list[int] = []
        if kind != "rel":
            sections, exec_data, more, starts = _code_by_segments(path, elf, data, sections, loads)
            notes += more
        symbols, source = _elf_symbols(path, elf, data, kind, exec_idx, sections)
    except GuestError:
        raise
    except Exception as e:  # pyelftools reports corrupt input with many exception types
        msg = str(e).splitlines()[0] if str(e) else ""
        raise GuestError(f"{path}: corrupt ELF: {type(e).__name__}: {msg}"[:300]) from None
    return kind, sections, symbols, notes, source, exec_data, starts


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


def _check_segments(path: str, elf: ELFFile, size: int) -> list[tuple[int, int, int, int, bool]]:
    """The PT_LOAD segments as (vaddr, filesz, offset, index, executable), checked."""
    loads, out = [], []
    for i in range(elf.num_segments()):
        h = elf._get_segment_header(i)
        if h.p_type != "PT_LOAD":
            continue
        _check_range(path, f"segment {i}", h.p_offset, h.p_filesz, size)
        if h.p_filesz > h.p_memsz or h.p_vaddr + h.p_memsz > 1 << 32:
            raise GuestError(f"{path}: segment {i} has bad sizes (filesz {h.p_filesz:#x}, "
                             f"memsz {h.p_memsz:#x} at {h.p_vaddr:#x})")
        loads.append((h.p_vaddr, h.p_vaddr + h.p_memsz, i))
        out.append((h.p_vaddr, h.p_filesz, h.p_offset, i, bool(h.p_flags & 1)))   # PF_X
    loads.sort()
    for (a0, a1, i), (b0, b1, j) in zip(loads, loads[1:]):
        if b0 < a1:
            raise GuestError(f"{path}: overlapping segments {i} [{a0:#x},{a1:#x}) and "
                             f"{j} [{b0:#x},{b1:#x})")
    return out


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
    if not sections and kind == "rel":
        raise GuestError(f"{path}: no executable bytes (no non-empty SHF_EXECINSTR section)")
    if len({s.name for s in sections}) != len(sections):
        raise GuestError(f"{path}: two executable sections share a name")
    if kind != "rel":
        ordered = sorted(sections, key=lambda s: s.addr)
        for a, b in zip(ordered, ordered[1:]):
            if b.addr < a.end:
                raise GuestError(f"{path}: overlapping executable sections {a.name} and {b.name}")
    return sections, notes, exec_idx


def _code_by_segments(path: str, elf: ELFFile, data: bytes, marked: list[Section], loads):
    """The code an executable or shared object is scanned for: what the loader maps executable,
    not what the section headers say (a guest that clears SHF_EXECINSTR or shrinks .text must
    not hide its code).  Returns (code units, executable data, notes).

    Code is every SHF_EXECINSTR section, every byte of an executable segment (PT_LOAD with PF_X)
    that no section header claims, and the section holding the entry point; abutting code in one
    segment is swept as one unit (named by its first section), so a lie about a section's size
    changes no instruction boundary.  The rest of an executable segment's file bytes (data
    sections in an RWX or R-X segment, such as .eh_frame) is *executable data*: listed, decoded
    only on request (``scan --strict``).  Where headers and segments disagree, a note says so.
    """
    xsegs = [(v, v + fs, off, i) for v, fs, off, i, x in loads if x and fs]
    notes: list[str] = []
    if not xsegs:
        if not marked:
            raise GuestError(f"{path}: no executable bytes (no executable segment and no "
                             "non-empty SHF_EXECINSTR section)")
        notes.append("no PT_LOAD segment is executable: the SHF_EXECINSTR sections are scanned")
        return marked, [], notes, []
    headers, align = [], {}
    for i in range(elf.num_sections()):
        h = elf._get_section_header(i)
        if h.sh_type in ("SHT_NULL", "SHT_NOBITS") or not h.sh_size or not h.sh_flags & SH_FLAGS.SHF_ALLOC:
            continue
        headers.append((h.sh_addr, h.sh_addr + h.sh_size, elf._get_section_name(h) or f"section{i}"))
        align[h.sh_addr] = max(align.get(h.sh_addr, 1), h.sh_addralign or 1)
    # The ELF header and program header table a segment maps are the loader's own data.
    hdr = elf.header
    for name, off, size in (("(ELF header)", 0, hdr.e_ehsize),
                            ("(program headers)", hdr.e_phoff, hdr.e_phnum * hdr.e_phentsize)):
        for v0, v1, seg_off, _ in xsegs:
            if size and seg_off <= off and off + size <= seg_off + (v1 - v0):
                headers.append((v0 + off - seg_off, v0 + off - seg_off + size, name))
    entry = elf.header.e_entry
    inside = lambda a, b: next((x for x in xsegs if x[0] <= a and b <= x[1]), None)  # noqa: E731
    code: list[tuple[int, int, str]] = []          # [start, end) address ranges and their names
    for sec in marked:
        if inside(sec.addr, sec.end) is None:
            notes.append(f"{sec.name}: marked executable, but no executable segment maps it: "
                         "scanned as code all the same")
        code.append((sec.addr, sec.end, sec.name))
    for v0, v1, _, i in xsegs:
        cuts = sorted((max(a, v0), min(b, v1)) for a, b, _ in list(headers) if a < v1 and b > v0)
        at = v0
        for a, b in cuts + [(v1, v1)]:
            if a > at:
                # Padding up to the next section's alignment is what linkers leave (data);
                # any other bytes no header explains are code.
                if a - at < align.get(a, 1) and a % align.get(a, 1) == 0:
                    headers.append((at, a, "(padding)"))
                else:
                    code.append((at, a, f"segment{i}+{at - v0:#x}"))
                    notes.append(f"executable segment {i}: bytes [{at:#x}, {a:#x}) belong to no "
                                 "section: scanned as code")
            at = max(at, b)
    if not any(a <= entry < b for a, b, _ in code):
        holder = next(((a, b, n) for a, b, n in headers if a <= entry < b), None)
        if holder is not None and inside(holder[0], holder[1]) is not None:
            code.append(holder)
            notes.append(f"{holder[2]}: holds the entry point {entry:#x} but is not marked "
                         "executable: scanned as code")
        elif inside(entry, entry + 1) is None:
            notes.append(f"the entry point {entry:#x} lies outside every executable segment")
    units = _units(code, xsegs, marked, data)
    # Each section of a merged unit starts a sweep of its own, as objdump -d sweeps sections.
    starts = sorted({a for a, _, _ in code})
    covered = sorted((u.addr, u.end) for u in units)
    exec_data = []
    for a, b, name in sorted(headers):
        seg = inside(a, b) or next((x for x in xsegs if x[0] < b and a < x[1]), None)
        if seg is None:
            continue
        for lo, hi in _minus((max(a, seg[0]), min(b, seg[1])), covered):
            off = seg[2] + lo - seg[0]
            exec_data.append(Section(name, lo, data[off:off + hi - lo], off))
    return units, exec_data, notes, starts


def _minus(rng: tuple[int, int], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, at = [], rng[0]
    for a, b in cut:
        if b <= at or a >= rng[1]:
            continue
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < rng[1]:
        out.append((at, rng[1]))
    return out


def _units(code, xsegs, marked: list[Section], data: bytes) -> list[Section]:
    """Code ranges as sweep units: abutting or overlapping ranges inside one executable segment
    merge (file offsets follow addresses there); a marked section outside every segment stays
    as it is."""
    by_name = {s.name: s for s in marked}
    units: list[Section] = []
    loose = []
    for seg in xsegs:
        mine = sorted((a, b, n) for a, b, n in code if seg[0] <= a and b <= seg[1])
        cur = None
        for a, b, n in mine:
            if cur is not None and a <= cur[1]:
                cur = (cur[0], max(cur[1], b), cur[2])
            else:
                if cur is not None:
                    units.append(cur + (seg,))
                cur = (a, b, n)
        if cur is not None:
            units.append(cur + (seg,))
    in_seg = {n for a, b, n, _ in units}
    for a, b, n in code:
        if not any(s[0] <= a and b <= s[1] for s in xsegs) and n not in in_seg:
            loose.append(by_name[n])
    def name(a: int, b: int, first: str) -> str:
        # A unit is named by the biggest marked section in it (not by padding in front of it).
        inner = [x for x in marked if a <= x.addr and x.end <= b]
        return max(inner, key=lambda x: (len(x.data), -x.addr)).name if inner else first

    out = [Section(name(a, b, n), a, data[seg[2] + a - seg[0]:seg[2] + b - seg[0]], seg[2] + a - seg[0])
           for a, b, n, seg in units]
    names = [s.name for s in out + loose]
    if len(set(names)) != len(names):   # two units named alike: number them
        seen: dict[str, int] = {}
        renamed = []
        for s in out + loose:
            k = seen.get(s.name, 0)
            seen[s.name] = k + 1
            renamed.append(s if not k else Section(f"{s.name}#{k}", s.addr, s.data, s.offset))
        return renamed
    return out + loose


def _elf_symbols(path: str, elf: ELFFile, data: bytes, kind: str, exec_idx: dict[int, str],
                 units: list[Section]):
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
        if e.st_info.type in ("STT_SECTION", "STT_FILE") or not sym.name or sym.name.startswith(".L"):
            continue
        if kind != "rel":
            # An executable's symbols name addresses: they label whichever code unit holds them,
            # whatever their section header says (it may lie about its size or flags).
            if not isinstance(e.st_shndx, int) or e.st_shndx == 0:
                continue
            unit = next((u for u in units if u.addr <= e.st_value < u.end), None)
            if unit is not None:
                out.append(Symbol(sym.name, e.st_value, unit.name, e.st_info.bind != "STB_LOCAL",
                                  e.st_info.type != "STT_OBJECT"))
            continue
        if not isinstance(e.st_shndx, int) or e.st_shndx not in exec_idx:
            continue
        lo, n = bounds[e.st_shndx]
        addr = e.st_value + lo
        if lo <= addr < lo + n:  # a symbol at the very end of a section labels nothing
            out.append(Symbol(sym.name, addr, exec_idx[e.st_shndx], e.st_info.bind != "STB_LOCAL",
                              e.st_info.type != "STT_OBJECT"))
    return out, table.name if out else "none"


_NM_LINE = re.compile(r"([0-9A-Fa-f]{1,16})\s+([A-Za-z?\-])\s+(\S+)")


def _symbol_file(path: str, sections: list[Section]) -> list[Symbol]:
    """Symbols from ``nm`` output ("addr type name"), e.g. tboot's /boot/tboot-syms or a System.map."""
    text = read_file(path, "symbol file", 64 << 20).decode("utf-8", "replace")
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
        exec_data, starts = [], []
    else:
        if base is not None:
            raise GuestError(f"{path}: base applies only to raw blobs (raw=True)",
                             f"{path}: --base applies only to raw blobs (--raw)")
        if data[:4] != _ELF_MAGIC:
            what = f"{path}: not an ELF file (no \\x7fELF magic); "
            raise GuestError(what + "use raw=True for a flat binary",
                             what + "give --raw (and --base ADDR) for a flat binary")
        kind, sections, syms, notes, source, exec_data, starts = _load_elf(path, data)
    if symbols is not None:
        spath = os.fspath(symbols)
        if kind == "rel":
            raise GuestError(f"{spath}: a symbol file cannot place symbols in a relocatable object")
        syms = syms + _symbol_file(spath, sections)
        source = spath if source == "none" else f"{source} + {spath}"
    return Guest(path, kind, tuple(sections), tuple(syms), source, tuple(notes), tuple(exec_data),
                 tuple(starts))


ZERO_RUN = 16     # zero runs this long split executable data into pieces swept on their own


def exec_data_view(g: Guest) -> Guest:
    """``g``'s executable data as a guest of its own, for a linear sweep that takes it for code
    (``scan --strict``).  Long runs of zero bytes (tboot's 29 MB .data holds 37 other bytes) are
    left out: each piece between them is swept from its own start, as arbitrary a start as any
    other for bytes that are data."""
    pieces: list[Section] = []
    zeros = re.compile(b"\0{%d,}" % ZERO_RUN)
    for sec in g.exec_data:
        at = 0
        for m in list(zeros.finditer(sec.data)) + [None]:
            end = m.start() if m else len(sec.data)
            if end > at:
                pieces.append(Section(f"{sec.name}@{sec.addr + at:#x}" if at or m else sec.name,
                                      sec.addr + at, sec.data[at:end], sec.offset + at))
            if m:
                at = m.end()
    return Guest(g.path, g.kind, tuple(pieces), (), "none", (), (), ())
