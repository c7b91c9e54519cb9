"""The guest loader, decoder and form matcher (pgvirt.guest.image).

Real guests come from Debian packages (tests/setup-guests.sh, run by ``make test``); their tests
are marked ``guests`` and skip with the reason when a file is missing.  Malformed-input tests build
their ELF files here, so they always run.
"""

from __future__ import annotations

import collections
import gzip

import random
import re
import signal
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgvirt.model import isa
from pgvirt.model.encoding import matches
from pgvirt.guest import decode as D, scan as S
from pgvirt.guest.decode import decode
from pgvirt.guest.image import GuestError, load_guest
from pgvirt.guest.scan import match_form, scan
from helpers import INVADERS, TBOOT, TBOOT_SYMS, need, need_objdump

GRUB = Path("/usr/lib/grub/i386-pc")
CPUID = GRUB / "cpuid.mod"
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")


# --- a tiny ELF32 writer for the malformed-input tests ------------------------------------------

def elf32(text: bytes = b"\x55\x89\xe5\xfa\x9c\x5d\xc3", *, etype: int = 2, addr: int = 0x100000,
          symbols: tuple = (("entry", 0, 2), ("helper", 4, 2)), segments=None,
          extra: tuple = ()) -> bytes:
    """An i386 ELF32 with .text, optional .symtab and ``extra`` sections; segments (vaddr, memsz)
    become PT_LOADs (default: one covering .text)."""
    shstr = bytearray(b"\0")

    def name(s: str) -> int:
        shstr.extend(s.encode() + b"\0")
        return len(shstr) - len(s) - 1

    secs = [dict(name=name(".text"), type=1, flags=6, addr=0 if etype == 1 else addr, data=text,
                 link=0, info=0, entsize=0)]
    for (nm, flags, a, data) in extra:
        secs.append(dict(name=name(nm), type=1, flags=flags, addr=a, data=data, link=0, info=0,
                         entsize=0))
    if symbols:
        strtab = bytearray(b"\0")
        syms = bytearray(16)
        for nm, off, kind in symbols:
            syms += struct.pack("<IIIBBH", len(strtab), (0 if etype == 1 else addr) + off, 0,
                                (1 << 4) | kind, 0, 1)
            strtab += nm.encode() + b"\0"
        n = len(secs) + 1
        secs.append(dict(name=name(".symtab"), type=2, flags=0, addr=0, data=bytes(syms),
                         link=n + 1, info=1, entsize=16))
        secs.append(dict(name=name(".strtab"), type=3, flags=0, addr=0, data=bytes(strtab),
                         link=0, info=0, entsize=0))
    secs.append(dict(name=name(".shstrtab"), type=3, flags=0, addr=0, data=None, link=0, info=0,
                     entsize=0))
    secs[-1]["data"] = bytes(shstr)
    if segments is None:
        segments = [] if etype == 1 else [(addr, len(text))]
    phoff = 52
    off = phoff + 32 * len(segments)
    body = bytearray()
    for s in secs:
        s["offset"] = off + len(body)
        body += s["data"]
    shoff = off + len(body)
    shoff += -shoff % 4
    body += b"\0" * (shoff - off - len(body))
    ident = b"\x7fELF\x01\x01\x01" + b"\0" * 9
    hdr = ident + struct.pack("<HHIIIIIHHHHHH", etype, 3, 1, addr, phoff if segments else 0,
                              shoff, 0, 52, 32, len(segments), 40, len(secs) + 1, len(secs))
    ph = b"".join(struct.pack("<IIIIIIII", 1, secs[0]["offset"], va, va, min(sz, len(text)), sz,
                              5, 0x1000) for va, sz in segments)
    sh = bytes(40) + b"".join(struct.pack("<IIIIIIIIII", s["name"], s["type"], s["flags"],
                                          s["addr"], s["offset"], len(s["data"]), s["link"],
                                          s["info"], 1, s["entsize"]) for s in secs)
    return hdr + ph + bytes(body) + sh


def write(tmp_path: Path, data: bytes, name: str = "g.elf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def bad(tmp_path: Path, data: bytes, pattern: str, **kw) -> GuestError:
    with pytest.raises(GuestError, match=pattern) as e:
        load_guest(write(tmp_path, data), **kw)
    assert "\n" not in str(e.value)
    return e.value


# --- loading: synthetic ELF ----------------------------------------------------------------------

def test_synthetic_elf_loads_with_symbols(tmp_path):
    g = load_guest(write(tmp_path, elf32()))
    assert g.kind == "exec" and g.symbol_source == ".symtab"
    [sec] = g.sections
    assert (sec.name, sec.addr, sec.data[:1]) == (".text", 0x100000, b"\x55")
    assert g.symbolize(0x100000) == "entry"
    assert g.symbolize(0x100003) == "entry+0x3"
    assert g.symbolize(0x100005) == "helper+0x1"
    assert g.symbolize(0x100007) is None          # past the end of .text
    assert g.symbolize(0xFFFF) is None
    insns = list(decode(g))
    assert [i.mnemonic for i in insns] == ["push", "mov", "cli", "pushfd", "pop", "ret"]
    assert insns[2].address == 0x100003 and insns[2].bytes == b"\xfa"


def test_synthetic_relocatable_sections_are_zero_based(tmp_path):
    data = elf32(etype=1, extra=((".text.init", 6, 0, b"\x90\xfb\xc3"),))
    g = load_guest(write(tmp_path, data))
    assert g.kind == "rel"
    assert [(s.name, s.addr) for s in g.sections] == [(".text", 0), (".text.init", 0)]
    assert g.symbolize(5, ".text") == "helper+0x1"
    assert g.symbolize(1, ".text.init") is None
    with pytest.raises(ValueError, match="name the section"):
        g.symbolize(1)
    with pytest.raises(GuestError, match="relocatable"):
        load_guest(write(tmp_path, data), symbols=write(tmp_path, b"0 T x\n", "syms"))


def test_data_sections_are_never_decoded(tmp_path):
    data = elf32(extra=((".data", 3, 0x200000, b"\x0f\x01\x00" * 4),))
    g = load_guest(write(tmp_path, data))
    assert [s.name for s in g.sections] == [".text"]


def test_gzip_and_raw(tmp_path):
    p = write(tmp_path, gzip.compress(elf32()), "g.gz")
    assert load_guest(p).sections[0].data[:1] == b"\x55"
    blob = write(tmp_path, b"\xfa\x0f\x01\x08\xf4", "blob.bin")
    g = load_guest(blob, raw=True, base=0x7C00)
    assert g.kind == "raw" and g.sections[0].addr == 0x7C00
    assert [(i.address, i.mnemonic) for i in decode(g)] == [
        (0x7C00, "cli"), (0x7C01, "sidt"), (0x7C04, "hlt")]
    gz = write(tmp_path, gzip.compress(b"\xfa\xf4"), "blob.gz")
    assert load_guest(gz, raw=True).sections[0].data == b"\xfa\xf4"


def test_symbol_file_nm_format(tmp_path):
    syms = write(tmp_path, b"00100000 T start\n00100004 t inner\n         U undefined\n"
                           b"00300000 D data_far_away\n", "syms")
    g = load_guest(write(tmp_path, elf32(symbols=())), symbols=syms)
    assert g.symbol_source.endswith("syms")
    assert [s.name for s in g.symbols] == ["start", "inner"]   # data outside code is dropped
    assert g.symbolize(0x100006) == "inner+0x2"
    bad_syms = write(tmp_path, b"00100000 T start\nthis is not nm output\n", "bad")
    with pytest.raises(GuestError, match=r"bad:2: not an 'address type name'"):
        load_guest(write(tmp_path, elf32()), symbols=bad_syms)
    with pytest.raises(GuestError, match="cannot read symbol file"):
        load_guest(write(tmp_path, elf32()), symbols=tmp_path / "nope")


def test_undecodable_bytes_are_counted_one_by_one(tmp_path):
    # 0F B8 is JMPE (not in IA-32 proper); B8 then lacks its imm32 before the RET
    g = load_guest(write(tmp_path, b"\x90\x0f\xb8\xc3", "b.bin"), raw=True)
    got = [(i.address, i.mnemonic) for i in decode(g)]
    assert got == [(0, "nop"), (1, D.UNDECODABLE), (2, D.UNDECODABLE), (3, "ret")]
    r = scan(g, lambda name: set())
    assert (r.instructions, r.undecodable, r.undecodable_first) == (2, 2, (1, 2))


def test_decoding_restarts_at_symbols(tmp_path):
    # A data byte (B8: the start of "mov eax, imm32") in front of a function would swallow the
    # function's first bytes in a plain sweep; the symbol makes decoding restart there, and the
    # bytes that would run past it are undecodable (as objdump -d shows them).
    text = b"\xb8" + b"\xfa\xfb\x9c\x9d\xc3"
    plain = load_guest(write(tmp_path, elf32(text, symbols=()), "a"))
    synced = load_guest(write(tmp_path, elf32(text, symbols=(("f", 1, 2),)), "b"))
    assert [i.mnemonic for i in decode(plain)] == ["mov", "ret"]
    assert [i.mnemonic for i in decode(synced)] == [D.UNDECODABLE, "cli", "sti", "pushfd",
                                                    "popfd", "ret"]
    # STT_OBJECT symbols label data inside code (patch points): no restart there
    obj = load_guest(write(tmp_path, elf32(text, symbols=(("v", 1, 1),)), "c"))
    assert [i.mnemonic for i in decode(obj)] == ["mov", "ret"]
    assert obj.symbolize(0x100002) == "v+0x1"


# --- loading: malformed input, one exception type -----------------------------------------------

def test_truncated_elf(tmp_path):
    good = elf32()
    for n in (3, 20, 51, 52, 100, len(good) // 2, len(good) - 1):
        bad(tmp_path, good[:n], "truncated|beyond the end|not an ELF")


def test_corrupt_section_headers(tmp_path):
    good = bytearray(elf32())
    shoff = struct.unpack_from("<I", good, 32)[0]

    def patched(fmt: str, at: int, value: int) -> bytes:
        b = bytearray(good)
        struct.pack_into(fmt, b, at, value)
        return bytes(b)

    bad(tmp_path, patched("<I", 32, 0xFFFFFF00), "section header table")
    bad(tmp_path, patched("<H", 46, 7), "section header size 7")
    bad(tmp_path, patched("<H", 50, 99), "name table index")
    bad(tmp_path, patched("<H", 48, 0), "no section headers")
    # .text (section 1) with its bytes beyond the file, or a size that runs past it
    bad(tmp_path, patched("<I", shoff + 40 + 16, 0x7FFFFF00), "beyond the end")
    bad(tmp_path, patched("<I", shoff + 40 + 20, 0x7FFFFFFF), "beyond the end")
    # symbol table with a wrong entry size
    bad(tmp_path, patched("<I", shoff + 2 * 40 + 36, 3), "entry size 3")


def test_zero_length_sections(tmp_path):
    bad(tmp_path, elf32(b"", symbols=()), "no executable bytes")
    g = load_guest(write(tmp_path, elf32(extra=((".init", 6, 0x300000, b""),))))
    assert [s.name for s in g.sections] == [".text"]
    assert g.notes == (".init: executable section with no bytes in the file",)


def test_overlapping_segments_and_sections(tmp_path):
    bad(tmp_path, elf32(segments=[(0x100000, 0x2000), (0x101000, 0x1000)]), "overlapping segments")
    bad(tmp_path, elf32(extra=((".text2", 6, 0x100004, b"\x90\x90\x90\x90"),)),
        "overlapping executable sections")


def test_not_an_elf(tmp_path):
    rnd = random.Random(7).randbytes(4096)
    e = bad(tmp_path, rnd, "not an ELF file")
    assert "raw=True" in str(e)
    assert load_guest(write(tmp_path, rnd), raw=True).sections[0].data == rnd


def test_wrong_kinds_of_elf(tmp_path):
    good = elf32()
    elf64 = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64,
                                                              0, 0, 64, 56, 0, 64, 0, 0)
    bad(tmp_path, elf64, "64-bit ELF")
    bad(tmp_path, good[:4] + b"\x03" + good[5:], "bad ELF class")
    bad(tmp_path, good[:5] + b"\x02" + good[6:], "little-endian")
    bad(tmp_path, good[:18] + struct.pack("<H", 62) + good[20:], "not EM_386")
    bad(tmp_path, good[:16] + struct.pack("<H", 4) + good[18:], "ET_CORE")


def test_unreadable_and_empty(tmp_path):
    bad(tmp_path, b"", "empty file")
    with pytest.raises(GuestError, match="cannot read"):
        load_guest(tmp_path / "missing.elf")
    with pytest.raises(GuestError, match="is a directory"):
        load_guest(tmp_path)
    with pytest.raises(GuestError, match="corrupt gzip"):
        load_guest(write(tmp_path, b"\x1f\x8b" + b"\x00" * 30, "x.gz"))
    with pytest.raises(GuestError, match="truncated gzip"):
        load_guest(write(tmp_path, gzip.compress(elf32())[:-20], "y.gz"))
    with pytest.raises(GuestError, match="do not fit"):
        load_guest(write(tmp_path, b"\x90" * 16, "z.bin"), raw=True, base=0xFFFFFFF8)
    with pytest.raises(GuestError, match="raw=True"):
        load_guest(write(tmp_path, elf32()), base=0x1000)


# --- matching forms -------------------------------------------------------------------------------

def test_every_form_matches_its_canonical_bytes():
    """Hand-written and derived: the decoder's Code of a form's bytes leads back to the form.
    SWAPGS alone does not decode in 32-bit mode (its form says #UD): undecodable bytes."""
    from pgvirt.model.derived import registry
    for f in isa.FORMS:
        if f.name == "swapgs":
            assert match_form(f.bytes) is None and S._number(f.bytes) == D.INVALID
            continue
        if f.code:
            continue    # a vendor form: decoded only with a decoder option the scan does not set
        assert match_form(f.bytes) is f, f.name
    from pgvirt.model.derived import table
    for name in registry.derived_names()[::40]:
        if table.codes()[registry.code_of(name)]["decoder_option"]:
            continue    # decoded only with a decoder option the scan does not set (Cyrix, ...)
        f = registry.get(name)
        assert match_form(f.bytes) is f and D.code_name(S._number(f.bytes)) == registry.code_of(name)


def test_prefixes():
    sgdt = isa.get("sgdt_m")
    assert match_form(bytes.fromhex("0f0100")) is sgdt
    assert match_form(bytes.fromhex("2e0f0100")) is sgdt        # segment override: decoded
    assert match_form(bytes.fromhex("0f01c1")) is isa.get("vmcall")   # not SGDT (mod = 3)
    assert match_form(bytes.fromhex("660f0100")) is isa.get("sgdt_m_o16")   # operand size
    assert match_form(bytes.fromhex("670f0100")) is sgdt        # 16-bit addressing: [bx+si]
    assert match_form(bytes.fromhex("f00f0100")) is sgdt        # LOCK: decoded, then #UD
    assert match_form(bytes.fromhex("f30f0100")) is None        # REP: reserved, no instance
    assert match_form(bytes.fromhex("67fa")) is None            # 67 without memory: reserved
    assert match_form(bytes.fromhex("0f010000")) is None        # one byte too many
    assert match_form(b"") is None
    assert match_form(b"\xf3\x90") is isa.get("pause")          # PAUSE, not a REP NOP


def brute_force(code: bytes):
    """The one form whose encoding reads ``code`` (vendor forms, which the scan's decoder never
    yields, aside: 0F 05 is SYSCALL there, LOADALL only on an 80286)."""
    hits = [f for f in isa.FORMS if not f.code and (d := matches(f.enc, code)) is not None
            and d.length == len(code)]
    assert len(hits) <= 1, (code.hex(), [f.name for f in hits])
    return hits[0] if hits else None


def test_shape_cache_agrees_with_brute_force():
    """Bytes a hand form's encoding accepts are that form to the decoder too, and any form the
    decoder's Code leads to is a form of that Code."""
    from pgvirt.model.derived import registry
    rnd = random.Random(3)
    codes = set()
    for f in isa.FORMS:
        for _ in range(20):  # same opcode and ModRM, random displacement/immediate bytes
            b = bytearray(f.bytes + rnd.randbytes(rnd.randrange(0, 7)))
            for k in range(len(f.bytes) - 1, len(b)):
                if rnd.random() < 0.3:
                    b[k] = rnd.randrange(256)
            codes.add(bytes(b[:rnd.randrange(1, len(b) + 1)]))
    disagree = []
    for code in sorted(codes):
        want, got, number = brute_force(code), match_form(code), S._number(code)
        if got is not None:     # a form's Code is the decoder's
            assert registry.code_of(got.name) == D.code_name(number), code.hex()
        if want is not None and number != D.INVALID and got is not want:
            disagree.append((code.hex(), want.name, got and got.name, D.code_name(number)))
    assert disagree == []


# --- real guests ----------------------------------------------------------------------------------

STRING_OPS = {"movs", "cmps", "scas", "lods", "stos", "ins", "outs"}
PREFIX_WORDS = {"rep", "repe", "repne", "lock"}
SEGMENT_WORDS = {"cs", "ds", "es", "ss", "fs", "gs", "data16", "data32", "addr16", "addr32",
                 "bnd", "notrack"}
# iced-x86 and objdump spell some mnemonics differently; both sides are mapped to one name.
SPELLING = {"pushfd": "pushf", "popfd": "popf", "iretd": "iret", "ljmp": "jmp", "lcall": "call",
            "wait": "fwait", "pushal": "pusha", "pushad": "pusha", "popal": "popa",
            "popad": "popa", "retf": "lret", "lgdtd": "lgdt", "lgdtw": "lgdt", "lidtd": "lidt",
            "lidtw": "lidt", "sgdtd": "sgdt", "sgdtw": "sgdt", "sidtd": "sidt", "sidtw": "sidt",
            "repz": "repe", "repnz": "repne", "cwtl": "cwde", "cltd": "cdq"}


def canonical(words: list[str]) -> str:
    out = []
    for w in words:
        if w in SEGMENT_WORDS:
            continue
        w = SPELLING.get(w, w)
        if w[:-1] in STRING_OPS and w[-1] in "bwd":
            w = w[:-1]
        out.append(w)
        if w not in PREFIX_WORDS:
            break
    return " ".join(out)


def objdump_counts(path: Path, sections: set[str]) -> collections.Counter:
    out = subprocess.run([need_objdump(), "-d", "-z", "-M", "intel", "--insn-width=16", str(path)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    counts: collections.Counter = collections.Counter()
    sec = None
    for line in out.splitlines():
        m = re.match(r"Disassembly of section (\S+):", line)
        if m:
            sec = m.group(1)
            continue
        m = re.match(r"\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t?(.*)$", line)
        if not m or sec not in sections:
            continue
        code, words = bytes.fromhex(m.group(1).replace(" ", "")), m.group(2).split()
        if not words or words[0] == ".byte" or words[0] == "(bad)":
            counts["(bad)"] += len(code) if words and words[0] == ".byte" else 1
            continue
        if code[0] == 0x9B and len(code) > 1 and words[0].startswith("f"):
            counts["fwait"] += 1            # objdump folds FWAIT into FINIT etc.; iced-x86 not
            words = ["fn" + words[0][1:]] + words[1:]
        if words[:2] == ["xchg", "ax,ax"]:  # 66 90 (xchg ax, ax): a nop on both sides
            words = ["nop"]
        counts[canonical(words)] += 1
    return counts


def our_counts(g) -> collections.Counter:
    return collections.Counter("(bad)" if i.mnemonic == D.UNDECODABLE else
                               "nop" if (i.mnemonic, i.op_str) == ("xchg", "ax, ax") else
                               canonical(i.mnemonic.split()) for i in decode(g))


def _marked_sections(path: Path) -> set[str]:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return {sec.name for sec in ELFFile(f).iter_sections()
                if sec["sh_flags"] & 4 and sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"]}


def elf_path(path: Path, tmp_path: Path) -> Path:
    """The ELF objdump can read (tboot ships gzip-compressed)."""
    if path.suffix != ".gz":
        return path
    out = tmp_path / path.stem
    out.write_bytes(gzip.decompress(path.read_bytes()))
    return out


REAL = [INVADERS, TBOOT, CPUID, LDLINUX]


@pytest.mark.guests
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_mnemonic_counts_equal_objdump(path, tmp_path):
    need(path)
    g = load_guest(path)  # objdump sees the same symbols: tboot's are in a separate file
    ours = our_counts(g)
    elf = elf_path(path, tmp_path)
    # objdump sweeps the SHF_EXECINSTR sections, one by one; the loader merges those of one
    # executable segment into one unit and restarts the sweep at every section start.
    theirs = objdump_counts(elf, _marked_sections(elf) if g.kind != "rel" else {s.name for s in g.sections})
    assert sum(ours.values()) > 0
    diff = {k: (ours[k], theirs[k]) for k in set(ours) | set(theirs) if ours[k] != theirs[k]}
    assert diff == {}


@pytest.mark.guests
def test_grub_modules_agree_with_objdump(tmp_path):
    """Every GRUB module whose code symbols are all functions (objdump -d prints the regions of
    STT_OBJECT symbols as data, while the scanner decodes them: they are code blobs)."""
    need(CPUID)
    compared = 0
    for mod in sorted(GRUB.glob("*.mod")):
        try:
            g = load_guest(mod)
        except GuestError as e:
            assert "no executable bytes" in str(e)   # all_video.mod, trig.mod: empty .text
            continue
        if any(not s.sync for s in g.symbols):   # an STT_OBJECT symbol in code
            continue
        ours = our_counts(g)
        theirs = objdump_counts(mod, {s.name for s in g.sections})
        assert ours == theirs, mod.name
        compared += 1
    assert compared > 200


@pytest.mark.guests
def test_real_guests_load(tmp_path):
    need(INVADERS, TBOOT, TBOOT_SYMS, CPUID, LDLINUX)
    inv = load_guest(INVADERS)
    assert (inv.kind, [s.name for s in inv.sections], inv.symbols) == ("exec", [".text"], ())
    assert inv.sections[0].addr == 0x100000

    tb = load_guest(TBOOT, symbols=TBOOT_SYMS)
    assert tb.kind == "exec" and tb.symbol_source == str(TBOOT_SYMS)
    assert tb.sections[0].name == ".text" and tb.sections[0].addr == 0x800000
    assert ".data" not in {s.name for s in tb.sections}
    assert len(tb.symbols) > 400
    assert tb.symbolize(0x804000) == "start"           # also _start, _mle_start: fewest "_"
    assert tb.symbolize(0x804011).startswith("_post_launch_entry+")

    mod = load_guest(CPUID)
    assert mod.kind == "rel" and mod.symbol_source == ".symtab"
    assert mod.symbolize(0x37, ".text") == "grub_mod_init"
    assert mod.symbolize(0x40, ".text") == "grub_mod_init+0x9"

    ld = load_guest(LDLINUX)
    assert ld.kind == "dyn" and ld.symbol_source == ".dynsym"
    # .plt abuts .text in one executable segment: one unit, named by its biggest section, that
    # restarts its sweep at .text's start; .plt.got, behind padding, is a unit of its own
    assert {".text", ".plt.got"} == {s.name for s in ld.sections}
    assert ld.section_at(0x44c0).name == ".text" and 0x5030 in ld.sync_points(ld.section_at(0x5030))
    assert {"(ELF header)", ".rodata", ".dynsym"} <= {s.name for s in ld.exec_data}


def byte_by_byte(data: bytes, addr: int) -> list[tuple[int, int, int]]:
    """The reference sweep: one instruction at a time, one byte past each undecodable one."""
    import iced_x86 as iced
    out, pos = [], 0
    while pos < len(data):
        ins = iced.Decoder(32, data[pos:], D.OPTIONS, ip=addr + pos).decode()
        n = 1 if ins.code == D.INVALID else ins.len
        out.append((pos, n, ins.code))
        pos += n
    return out


def swept(data: bytes, addr: int) -> list[tuple[int, int, int]]:
    run = D._run(data, addr)
    offs = D._offsets(run.sizes, 0)
    return list(zip(offs[:-1].tolist(), run.sizes.tolist(), run.codes.tolist()))


@pytest.mark.guests
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_sweep_is_the_byte_by_byte_sweep(path):
    """Decoding a section at once and re-decoding only after undecodable bytes gives the stream
    that decoding instruction by instruction gives."""
    need(path)
    for sec in load_guest(path).sections:
        assert swept(sec.data, sec.addr) == byte_by_byte(sec.data, sec.addr)


def test_sweep_of_random_bytes():
    """Random bytes: many undecodable runs, instructions cut at the end; text or not, one stream."""
    rnd = random.Random(5)
    for n in (0, 1, 2, 15, 300, 5000):
        blob = rnd.randbytes(n) + b"\x0f"
        assert swept(blob, 0x400000) == byte_by_byte(blob, 0x400000)


SENSITIVE_MNEMONICS = {"CLI", "STI", "PUSHFD", "POPFD", "SGDT", "SIDT", "STR", "LGDT", "LIDT",
                       "LTR", "HLT", "IN", "OUT", "MOV"}


def toy_classify(name: str) -> set[str]:
    from pgvirt.model.derived import registry
    f = registry.get(name)
    if f.mnemonic in SENSITIVE_MNEMONICS and (f.mnemonic != "MOV" or "cr" in f.asm):
        return {"sensitive", "unprivileged"}
    return set()


@pytest.mark.guests
def test_scan_real_guests():
    need(INVADERS, TBOOT, TBOOT_SYMS, LDLINUX, CPUID)
    for path, syms in ((INVADERS, None), (TBOOT, TBOOT_SYMS), (LDLINUX, None), (CPUID, None)):
        g = load_guest(path, symbols=syms)
        insns = [i for i in decode(g)]
        r = scan(g, toy_classify)
        assert r.instructions == sum(i.mnemonic != D.UNDECODABLE for i in insns)
        assert r.undecodable == len(insns) - r.instructions
        assert sum(r.forms.values()) + r.unmodelled_count == r.instructions
        by_addr = {(i.section, i.address): i for i in insns}
        for s in r.sites:
            i = by_addr[(s.section, s.address)]
            assert bytes.fromhex(s.bytes) == i.bytes and match_form(i.bytes).name == s.form
            assert s.classes == ("sensitive", "unprivileged")
            assert s.asm == f"{i.mnemonic} {i.op_str}".rstrip()
        want = sum(n for f, n in r.forms.items() if toy_classify(f))
        assert len(r.sites) == want
        for u in r.unmodelled:
            assert 1 <= len(u.first) <= min(5, u.count)
            assert list(u.first) == sorted(u.first) or len(g.sections) > 1
            for a in u.first:
                i = next(x for x in insns if x.address == a)
                assert match_form(i.bytes) is None and i.mnemonic == u.mnemonic
        if path == TBOOT:
            assert r.instructions > 50_000
            assert all(s.symbol for s in r.sites)      # every site in tboot has a name
            assert {"LGDT", "LIDT", "SGDT", "SIDT", "STR", "LTR", "CLI", "POPFD"} <= {
                isa.get(s.form).mnemonic for s in r.sites}


def reference_scan(g, classify):
    """What ``scan`` must find, computed the slow way: every decoded instruction matched alone."""
    forms, sites = collections.Counter(), []
    unmod: dict[str, list] = {}
    bad = []
    for i in decode(g):
        if i.mnemonic == D.UNDECODABLE:
            bad.append(i.address)
            continue
        f = match_form(i.bytes)
        if f is None:
            unmod.setdefault(i.mnemonic, []).append(i)
            continue
        forms[f.name] += 1
        cls = tuple(sorted(classify(f.name)))
        if cls:
            sites.append((i.address, i.section, i.bytes.hex(), f"{i.mnemonic} {i.op_str}".rstrip(),
                          f.name, cls))
    u = sorted(((m, len(xs), tuple(x.address for x in xs[:5]),
                 f"{xs[0].bytes.hex()}  {xs[0].mnemonic} {xs[0].op_str}".rstrip())
                for m, xs in unmod.items()), key=lambda t: (-t[1], t[0]))
    return dict(sorted(forms.items())), sites, u, len(bad), tuple(bad[:5])


def test_scan_groups_shapes_exactly(tmp_path):
    """Every form's bytes under random prefixes (up to seven: the shape then reaches the 8th byte
    and is matched alone), ModRM, SIB, displacements and immediates: scan() finds what matching
    each instruction alone finds."""
    rnd = random.Random(7)
    prefixes = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF2, 0xF3, 0x66, 0x67, 0xF0]
    blob = bytearray()
    for _ in range(12):
        for f in isa.FORMS:
            code = bytearray(f.bytes)
            n = rnd.choice([0, 0, 0, 1, 1, 2, 3, 5, 6, 7])
            pre = bytes(rnd.choice(prefixes[:8] if rnd.random() < 0.8 else prefixes)
                        for _ in range(n)) if rnd.random() < 0.5 else bytes([0x3E] * n)
            tail = len(f.enc.opcode) + 1 if f.enc.modrm is not None else len(f.enc.opcode)
            if f.enc.modrm is not None and rnd.random() < 0.5:
                code[len(f.enc.opcode)] = rnd.randrange(256)
            for k in range(tail, len(code)):
                code[k] = rnd.randrange(256)
            blob += pre + code
        blob += bytes(rnd.randrange(256) for _ in range(64))
    p = tmp_path / "shapes.bin"
    p.write_bytes(bytes(blob))
    g = load_guest(p, raw=True, base=0x1000)
    r = scan(g, toy_classify)
    forms, sites, unmod, nbad, bad_first = reference_scan(g, toy_classify)
    assert r.forms == forms and sum(forms.values()) > 1000
    assert [(s.address, s.section, s.bytes, s.asm, s.form, s.classes) for s in r.sites] == sites
    assert [(u.mnemonic, u.count, u.first, u.example) for u in r.unmodelled] == unmod
    assert (r.undecodable, r.undecodable_first) == (nbad, bad_first)
    assert sites and unmod


def test_decoding_without_text(tmp_path):
    """decode(text=False) gives the same instructions with their text left out, and asm()
    prints any one of them as decode(text=True) does."""
    blob = b"".join(f.bytes for f in isa.FORMS) + random.Random(9).randbytes(2000)
    g = load_guest(write(tmp_path, blob, "notext.bin"), raw=True, base=0x8000)
    full = list(decode(g))
    bare = list(decode(g, text=False))
    assert [(i.address, i.section, i.bytes) for i in bare] == [(i.address, i.section, i.bytes) for i in full]
    assert [i.mnemonic for i in bare] == ["" if i.mnemonic != D.UNDECODABLE else i.mnemonic for i in full]
    assert D.UNDECODABLE in {i.mnemonic for i in bare} and not any(i.op_str for i in bare)
    for i in full[::7]:
        if i.mnemonic != D.UNDECODABLE:
            assert D.asm(i.bytes, i.address) == f"{i.mnemonic} {i.op_str}".rstrip()


def test_text_of_relative_branches_follows_the_address():
    call = bytes.fromhex("e800000000")
    assert D.text(call, 0x1000) == ("call", "0x1005")
    assert D.text(call, 0x2000) == ("call", "0x2005")
    sgdt = bytes.fromhex("0f0105aabbccdd")
    assert D.text(sgdt, 0x1000) == D.text(sgdt, 0x9000) == ("sgdt", "fword ptr [0xddccbbaa]")


def test_group_is_np_unique():
    """_group (hash buckets, radix-sorted) labels keys as np.unique does, including buckets that
    hold several keys (many keys below 2**17 share one of 2**16 buckets)."""
    rng = np.random.default_rng(3)
    shared = 0
    for trial in range(200):
        pool = (rng.integers(0, 1 << 17, rng.integers(1, 6000)) if trial % 2
                else rng.integers(0, 1 << 62, rng.integers(1, 300)))
        keys = pool[rng.integers(0, len(pool), rng.integers(0, 4000))].astype(np.uint64)
        label, first = S._group(keys)
        uniq, index = np.unique(keys, return_index=True)
        assert len(first) == len(uniq) and sorted(first.tolist()) == sorted(index.tolist())
        assert (keys[first][label] == keys).all()
        hashes = (keys * S._SPREAD) >> np.uint64(48)
        shared += len(np.unique(hashes)) < len(uniq)
    assert shared > 50


def test_scan_names_unmodelled_instructions_by_their_own_text(tmp_path):
    """One Code may print differently (LOCK shown, CMPPS's predicate in the mnemonic): random
    code holds unmodelled instructions of many kinds, grouped as the reference groups them."""
    blob = bytes.fromhex("c8100001" "f0c8100001" "0fc2c103" "0fc2c100") * 3
    blob += random.Random(11).randbytes(1 << 16)
    g = load_guest(write(tmp_path, blob, "lock.bin"), raw=True, base=0x1000)
    r = scan(g, toy_classify)
    forms, sites, unmod, nbad, bad_first = reference_scan(g, toy_classify)
    assert [(u.mnemonic, u.count, u.first, u.example) for u in r.unmodelled] == unmod
    assert r.forms == forms and len(r.sites) == len(sites) and r.undecodable == nbad
    assert len(unmod) > 3


ALL_GUESTS = sorted({*REAL, *GRUB.glob("*.mod"), *Path("/usr/lib/syslinux/modules/bios").glob("*.c32")})


@pytest.mark.guests
def test_scan_equals_instruction_by_instruction_matching():
    """scan() groups instructions by shape in arrays; on every installed guest it must report
    exactly what matching each decoded instruction on its own reports."""
    need(*REAL)
    checked = 0
    for path in ALL_GUESTS:
        try:
            g = load_guest(path, symbols=TBOOT_SYMS if path == TBOOT else None)
        except GuestError:
            continue
        r = scan(g, toy_classify)
        forms, sites, unmod, nbad, bad_first = reference_scan(g, toy_classify)
        assert r.forms == forms, path
        assert [(s.address, s.section, s.bytes, s.asm, s.form, s.classes) for s in r.sites] == sites
        assert [(u.mnemonic, u.count, u.first, u.example) for u in r.unmodelled] == unmod, path
        assert (r.undecodable, r.undecodable_first) == (nbad, bad_first), path
        assert r.instructions == sum(forms.values()) + sum(u[1] for u in unmod)
        checked += 1
    assert checked >= len(REAL)


# --- fuzzing the loader ---------------------------------------------------------------------------

class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def load_within(path: Path, seconds: float):
    """Load and decode ``path``; a GuestError is fine, anything else (or a hang) fails."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    t = time.perf_counter()
    try:
        g = load_guest(path)
        for s in g.sections:
            g.symbolize(s.addr, s.name)
        n = sum(1 for _ in decode(g)) if sum(len(s.data) for s in g.sections) < 1 << 16 \
            else 0
        return "loaded", n, time.perf_counter() - t
    except GuestError as e:
        assert "\n" not in str(e)
        return "rejected", 0, time.perf_counter() - t
    except Timeout:
        pytest.fail(f"loading a mutated ELF took more than {seconds} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def mutate(rnd: random.Random, good: bytes) -> bytes:
    b = bytearray(good)
    op = rnd.randrange(5)
    if op == 0:                                     # bit flips anywhere
        for _ in range(rnd.randrange(1, 9)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
    elif op == 1:                                   # truncation
        del b[rnd.randrange(len(b)):]
    elif op == 2:                                   # a random ELF header field
        at, fmt = rnd.choice([(16, "<H"), (18, "<H"), (24, "<I"), (28, "<I"), (32, "<I"),
                              (40, "<H"), (42, "<H"), (44, "<H"), (46, "<H"), (48, "<H"),
                              (50, "<H"), (4, "<B"), (5, "<B")])
        size = struct.calcsize(fmt)
        struct.pack_into(fmt, b, at, rnd.choice([0, 1, 2, 0xFF, rnd.randrange(1 << (8 * size)),
                                                 (1 << (8 * size)) - 1]))
    else:                                           # a random section/program header field
        shoff, shnum = struct.unpack_from("<I", b, 32)[0], struct.unpack_from("<H", b, 48)[0]
        phoff, phnum = struct.unpack_from("<I", b, 28)[0], struct.unpack_from("<H", b, 44)[0]
        if op == 3 and shnum and shoff + 40 * shnum <= len(b):
            at = shoff + 40 * rnd.randrange(shnum) + 4 * rnd.randrange(10)
        elif phnum and phoff + 32 * phnum <= len(b):
            at = phoff + 32 * rnd.randrange(phnum) + 4 * rnd.randrange(8)
        else:
            at = rnd.randrange(0, len(b) - 4)
        struct.pack_into("<I", b, at, rnd.choice([0, 1, 16, 40, 0x7FFFFFFF, 0xFFFFFFFF,
                                                  rnd.randrange(1 << 32), rnd.randrange(4096)]))
    return bytes(b)


def fuzz(good: bytes, tmp_path: Path, rounds: int, seed: int) -> collections.Counter:
    rnd = random.Random(seed)
    outcomes: collections.Counter = collections.Counter()
    p = tmp_path / "m.elf"
    for _ in range(rounds):
        p.write_bytes(mutate(rnd, good))
        outcome, _, dt = load_within(p, 5.0)  # a hang guard, not a timing
        outcomes[outcome] += 1
    return outcomes


@pytest.mark.guests
def test_fuzz_real_elfs(tmp_path):
    need(CPUID, INVADERS)
    a = fuzz(CPUID.read_bytes(), tmp_path, 2000, seed=1)
    b = fuzz(INVADERS.read_bytes(), tmp_path, 1000, seed=2)
    assert a["loaded"] > 100 and a["rejected"] > 100, a
    assert b["loaded"] > 50 and b["rejected"] > 50, b


def test_fuzz_synthetic_elf(tmp_path):
    out = fuzz(elf32(), tmp_path, 1000, seed=3)
    assert out["loaded"] > 50 and out["rejected"] > 50, out


_BASE = elf32()


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(_BASE) - 1), st.integers(0, 255)), max_size=12),
       st.integers(0, len(_BASE)))
def test_hypothesis_byte_edits(tmp_path, edits, keep):
    b = bytearray(_BASE)
    for at, v in edits:
        b[at] = v
    p = tmp_path / "h.elf"
    p.write_bytes(bytes(b[:keep]))
    load_within(p, 5.0)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_hypothesis_random_blobs(tmp_path, blob):
    p = tmp_path / "r.bin"
    p.write_bytes(blob)
    if blob[:4] != b"\x7fELF" and blob[:2] != b"\x1f\x8b":
        with pytest.raises(GuestError):
            load_guest(p)
    if blob[:2] != b"\x1f\x8b":
        if blob:
            g = load_guest(p, raw=True)
            assert b"".join(i.bytes for i in decode(g)) == blob
        else:
            with pytest.raises(GuestError):
                load_guest(p, raw=True)
