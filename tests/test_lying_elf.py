"""Guests whose section headers lie cannot hide code: the scan covers what the loader maps
executable (PT_LOAD with PF_X) and the entry point, and says where headers and segments disagree.

grub-invaders has one RWE segment holding .text (with the one violating ``popfd``) and the
read-only data behind it; the tests shrink .text or move its SHF_EXECINSTR flag, and require
the same sites as the original.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pgvirt.cli.main import main
from pgvirt.guest.image import load_guest
from pgvirt.guest.paravirt import scan_guest

from helpers import INVADERS, need

SHF_EXECINSTR = 4


def _headers(data: bytes):
    """(offset of each section header, its name, flags and size) of an ELF32."""
    shoff, = struct.unpack_from("<I", data, 0x20)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x30)
    strtab_off = struct.unpack_from("<I", data, shoff + 40 * shstrndx + 16)[0]
    out = {}
    for i in range(shnum):
        at = shoff + 40 * i
        name_off, _, flags, _, _, size = struct.unpack_from("<IIIIII", data, at)
        name = data[strtab_off + name_off:data.index(b"\0", strtab_off + name_off)].decode()
        out[name] = (at, flags, size)
    return out


def _edit(data: bytes, name: str, flags: int | None = None, size: int | None = None) -> bytes:
    at, f, s = _headers(data)[name]
    out = bytearray(data)
    struct.pack_into("<I", out, at + 8, f if flags is None else flags)
    struct.pack_into("<I", out, at + 20, s if size is None else size)
    return bytes(out)


def _sites(path: Path):
    return [(s.address, s.form, s.bytes) for s in scan_guest(load_guest(path)).sites]


@pytest.fixture(scope="module")
def original():
    need(INVADERS)
    return INVADERS.read_bytes()


def _lying(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_shrunk_text_hides_nothing(tmp_path, original):
    want = _sites(INVADERS)
    assert [f for _, f, _ in want] == ["popfd"]
    p = _lying(tmp_path, "shrunk", _edit(original, ".text", size=16))
    g = load_guest(p)
    got = _sites(p)
    # The bytes past the shrunk .text are swept from 0x100010 on, so the multiboot header's data
    # decodes at other boundaries there: an x87 FCOMP (a derived form, #NM with CR0.EM/TS) more.
    assert set(want) <= set(got) and all(a < 0x100020 for a, _, _ in set(got) - set(want))
    assert any("belong to no section: scanned as code" in n for n in g.notes)


def test_moved_exec_flag_hides_nothing(tmp_path, original):
    h = _headers(original)
    data = _edit(original, ".text", flags=h[".text"][1] & ~SHF_EXECINSTR)
    data = _edit(data, ".interp", flags=h[".interp"][1] | SHF_EXECINSTR)
    p = _lying(tmp_path, "moved", data)
    assert [(a, f) for a, f, _ in _sites(p)] == [(a, f) for a, f, _ in _sites(INVADERS)]
    assert any("holds the entry point" in n for n in load_guest(p).notes)


def test_no_exec_flag_at_all_still_scans_the_entry(tmp_path, original):
    data = _edit(original, ".text", flags=_headers(original)[".text"][1] & ~SHF_EXECINSTR)
    p = _lying(tmp_path, "noexec", data)
    assert _sites(p) == _sites(INVADERS)


def test_cli_on_lying_elfs_exits_1_and_warns_in_one_line(tmp_path, original, capsys):
    p = _lying(tmp_path, "shrunk", _edit(original, ".text", size=16))
    capsys.readouterr()
    assert main(["scan", str(p), "--format", "json"]) == 1
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert "popfd" in [s["form"] for s in doc["sites"]] and doc["notes"]
    warnings = [ln for ln in cap.err.splitlines() if ln]
    assert warnings and all(ln.startswith("pgvirt: warning: ") for ln in warnings)


def test_executable_data_is_listed_and_strict_sweeps_it(tmp_path, original, capsys):
    """Bytes an executable segment maps that the headers call data (.eh_frame, ...) are not
    code to patch, but never silently dropped: listed, and with --strict swept as code."""
    g = load_guest(INVADERS)
    assert {".eh_frame", ".interp"} <= {s.name for s in g.exec_data}
    rep = scan_guest(g, strict=True)
    assert rep.data_sites and all(s.section.startswith((".eh_frame", ".dynsym", ".interp", ".gnu.hash",
                                                         ".rel.dyn", ".dynstr", "(padding)"))
                                  for s in rep.data_sites)
    assert main(["scan", str(INVADERS), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["data_sites"] is None and {e["section"] for e in doc["executable_data"]} >= {".eh_frame"}
    assert main(["scan", str(INVADERS), "--format", "json", "--strict"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["data_sites"]) == len(rep.data_sites)
