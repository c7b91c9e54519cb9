"""Loading a guest as a multiboot loader does (Multiboot Specification 0.6.96).

``load(path)`` finds the multiboot header in the first 8192 bytes (magic 0x1BADB002, flags,
checksum; 4-byte aligned), refuses requirement bits it cannot honour (bits 3-15), and loads the
image: with flag bit 16 from the header's address fields (the "a.out kludge": load_addr to
load_end_addr from the file, zeros to bss_end_addr), otherwise from the ELF32 program headers
(every PT_LOAD segment at its physical address, zero-filled to p_memsz).  It builds the
multiboot information structure (memory sizes, the BIOS-style memory map, the command line and
the boot loader's name) and the machine state of section 3.2: EAX = 0x2BADB002, EBX = the
information structure, CS and DS/ES/FS/GS/SS flat 4 GiB segments at CPL 0 (from a GDT of the
loader's, in low memory, as GRUB leaves one), CR0.PE = 1 with paging off, EFLAGS.IF = 0.
A video mode request (flag bit 2) is answered with the VGA text mode the devices provide.

Bad input is a ``LoadError`` with a one-line message.  The result is plain data (``Image``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass, field

from pgvirt.emulator import states as layout
from pgvirt.model import state as st

MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH = 8192
SUPPORTED_FLAGS = 0x0000_0007 | 0x0001_0000     # page-align, memory info, video mode, address fields
MAX_FILE = 64 << 20

# The loader's own structures, below the 640 KiB conventional-memory top (where GRUB keeps its).
GDT_AT = 0x800
INFO_AT = 0x1000
MMAP_AT = 0x1100
STRINGS_AT = 0x1200
LOADER_TOP = 0x2000        # a kernel must not load below this
BOOT_ESP = 0x7FF0          # "the OS image must create its own stack"; this one is usable until then
CODE_SEL, DATA_SEL = 0x08, 0x10
LOADER_NAME = "pgvirt"


class LoadError(ValueError):
    """The file is not a guest this loader can load (one line)."""


@dataclass(frozen=True)
class Segment:
    address: int
    data: bytes             # bytes from the file
    size: int               # bytes in memory (the rest is zero)


@dataclass
class Image:
    """A loaded guest: what goes into RAM and the state the CPU starts in."""

    path: str
    name: str
    sha256: str
    entry: int
    segments: list[Segment]
    boot: dict[int, bytes]              # the loader's structures: address -> bytes
    state: dict                          # every scalar field, in the model's concrete format
    header_at: int                       # file offset of the multiboot header
    flags: int
    notes: list[str] = field(default_factory=list)

    def extent(self) -> tuple[int, int]:
        lo = min(s.address for s in self.segments)
        hi = max(s.address + s.size for s in self.segments)
        return lo, hi


def _read(path: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE:
            raise LoadError(f"{path}: {size} bytes is too large for a guest kernel")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LoadError(f"{path}: cannot read: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise LoadError(f"{path}: broken gzip data ({e})") from None
        if len(data) > MAX_FILE:
            raise LoadError(f"{path}: decompresses to more than {MAX_FILE} bytes")
    return data


def _find_header(path: str, data: bytes) -> tuple[int, int]:
    for off in range(0, min(len(data), SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    raise LoadError(f"{path}: not a multiboot kernel (no valid header in the first {SEARCH} bytes)")


def _kludge(path: str, data: bytes, off: int) -> tuple[list[Segment], int]:
    if off + 32 > len(data):
        raise LoadError(f"{path}: multiboot header at {off:#x} is cut short (address fields missing)")
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<5I", data, off + 12)
    if load_addr > header_addr:
        raise LoadError(f"{path}: load_addr {load_addr:#x} lies above header_addr {header_addr:#x}")
    start = off - (header_addr - load_addr)
    if start < 0:
        raise LoadError(f"{path}: header_addr/load_addr put the load start before the file")
    end = len(data) if load_end == 0 else start + (load_end - load_addr)
    if load_end and load_end < load_addr:
        raise LoadError(f"{path}: load_end_addr {load_end:#x} below load_addr {load_addr:#x}")
    if end > len(data):
        raise LoadError(f"{path}: truncated: the header asks for bytes up to file offset "
                        f"{end:#x}, the file has {len(data):#x}")
    body = data[start:end]
    size = len(body)
    if bss_end:
        if bss_end < load_addr + size:
            raise LoadError(f"{path}: bss_end_addr {bss_end:#x} lies inside the loaded image")
        size = bss_end - load_addr
    return [Segment(load_addr, body, size)], entry


def _elf(path: str, data: bytes) -> tuple[list[Segment], int]:
    if data[:4] != b"\x7fELF":
        raise LoadError(f"{path}: no address fields in the multiboot header and not an ELF file")
    if len(data) < 52:
        raise LoadError(f"{path}: truncated ELF header ({len(data)} bytes)")
    if data[4] != 1 or data[5] != 1:
        raise LoadError(f"{path}: not a little-endian ELF32 file")
    (e_type, e_machine, _v, entry, phoff, _sh, _fl, _eh, phentsize, phnum) = struct.unpack_from(
        "<HHIIIIIHHH", data, 16)
    if e_machine != 3:
        raise LoadError(f"{path}: ELF machine {e_machine}, not i386")
    if e_type != 2:
        raise LoadError(f"{path}: ELF type {e_type}, not an executable")
    if phnum == 0 or phentsize < 32:
        raise LoadError(f"{path}: no program headers to load")
    if phoff + phnum * phentsize > len(data):
        raise LoadError(f"{path}: truncated: program headers end at {phoff + phnum * phentsize:#x}, "
                        f"the file has {len(data):#x} bytes")
    segs = []
    for i in range(phnum):
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _flags, _align = struct.unpack_from(
            "<8I", data, phoff + i * phentsize)
        if p_type != 1:
            continue
        if p_offset + p_filesz > len(data):
            raise LoadError(f"{path}: truncated: segment {i} needs file bytes up to "
                            f"{p_offset + p_filesz:#x}, the file has {len(data):#x}")
        if p_memsz < p_filesz:
            raise LoadError(f"{path}: segment {i} has p_memsz < p_filesz")
        if p_memsz:
            segs.append(Segment(p_paddr, data[p_offset:p_offset + p_filesz], p_memsz))
    if not segs:
        raise LoadError(f"{path}: no PT_LOAD segment")
    return segs, entry


def _info(ram_size: int, cmdline: str) -> dict[int, bytes]:
    mmap = b""
    for base, length, typ in ((0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
                              (0x100000, ram_size - 0x100000, 1)):
        mmap += struct.pack("<IQQI", 20, base, length, typ)
    name_at = STRINGS_AT
    cmd_at = STRINGS_AT + 0x40
    flags = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    info = struct.pack("<IIIIIIIIIIIIIIIIIII",
                       flags, 639, ram_size // 1024 - 1024, 0xFFFFFFFF, cmd_at, 0, 0,
                       0, 0, 0, 0, len(mmap), MMAP_AT, 0, 0, 0, name_at, 0, 0)
    return {INFO_AT: info, MMAP_AT: mmap, name_at: LOADER_NAME.encode() + b"\0",
            cmd_at: cmdline.encode()[:0x3F0] + b"\0"}


def initial_state(info_at: int, entry: int) -> dict:
    """The CPU as section 3.2 of the specification leaves it for the kernel."""
    s = {n: 0 for n in st.SCALARS}
    code, data = layout.code_attr(0), layout.data_attr(0)
    s.update(eax=BOOTLOADER_MAGIC, ebx=info_at, esp=BOOT_ESP, eip=entry, cpl=0,
             cs=CODE_SEL, cs_limit=0xFFFFFFFF, cs_attr=code,
             gdtr_base=GDT_AT, gdtr_limit=3 * 8 - 1, idtr_base=0, idtr_limit=0x3FF,
             cr0=(1 << st.CR0_PE) | (1 << st.CR0_ET), sysflags=0, flags=0)
    for r in ("ss", "ds", "es", "fs", "gs"):
        s.update({r: DATA_SEL, f"{r}_limit": 0xFFFFFFFF, f"{r}_attr": data})
    return s


def gdt_bytes() -> bytes:
    return (bytes(8) + layout.descriptor(0, 0xFFFFFFFF, layout.code_attr(0))
            + layout.descriptor(0, 0xFFFFFFFF, layout.data_attr(0)))


def load(path: str | os.PathLike, ram_size: int, cmdline: str | None = None) -> Image:
    """``cmdline`` is the command line the kernel receives (default: the file's name; a
    patched guest is given its original's, so that the two boot alike)."""
    path = os.fspath(path)
    data = _read(path)
    off, flags = _find_header(path, data)
    unsupported = flags & 0xFFFF & ~SUPPORTED_FLAGS
    if unsupported:
        raise LoadError(f"{path}: the multiboot header requires features this loader does not "
                        f"provide (flags {unsupported:#06x})")
    if flags & 0x10000:
        segs, entry = _kludge(path, data, off)
    else:
        segs, entry = _elf(path, data)
    notes = []
    if flags & 4:
        notes.append("video mode request answered with VGA text mode 80x25")
    for s in segs:
        if s.address < LOADER_TOP:
            raise LoadError(f"{path}: a segment loads at {s.address:#x}, over the loader's "
                            f"structures below {LOADER_TOP:#x}")
        if s.address + s.size > ram_size:
            raise LoadError(f"{path}: a segment ends at {s.address + s.size:#x}, beyond the "
                            f"{ram_size >> 20} MiB of guest RAM")
        if s.address < 0x100000 <= s.address + s.size or 0xA0000 <= s.address < 0x100000:
            raise LoadError(f"{path}: a segment at {s.address:#x} overlaps video memory and ROM "
                            "(0xA0000-0xFFFFF)")
    if not any(s.address <= entry < s.address + len(s.data) for s in segs):
        raise LoadError(f"{path}: the entry point {entry:#x} lies outside the loaded bytes")
    boot = {GDT_AT: gdt_bytes(), **_info(ram_size, os.path.basename(path) if cmdline is None
                                         else cmdline)}
    return Image(path, os.path.basename(path), hashlib.sha256(data).hexdigest(), entry, segs, boot,
                 initial_state(INFO_AT, entry), off, flags, notes)


__all__ = ["load", "Image", "Segment", "LoadError", "MAGIC", "BOOTLOADER_MAGIC", "initial_state",
           "gdt_bytes"]
