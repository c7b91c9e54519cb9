"""Paravirtualization: scan, patch, the monitor's handlers and check-patch (guest/paravirt.py,
cli/paravirt.py, model/monitor.py).

Synthetic ELF files built here cover every path and always run.  Tests of real Debian guests
(tests/setup-guests.sh) are marked ``guests`` and skip with the reason when a file is missing.
Classifications come from Z3 through the on-disk cache, pointed at one temporary directory for
the session: the first scan derives the forms it needs, later ones read them.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import random
import re
import struct
import subprocess
import signal
import sys
from pathlib import Path

import pytest
import z3

from pgvirt.model import isa, monitor, profiles, state as st
from pgvirt.guest import paravirt as P
from pgvirt.verify import cache as C
from pgvirt.cli.main import main
from pgvirt.guest.image import load_guest
from helpers import INVADERS, TBOOT, TBOOT_SYMS, assert_valid_sarif, need, need_objdump



@pytest.fixture(scope="session")
def cache_root() -> Path:
    """The run's classification cache (tests/conftest.py: XDG_CACHE_HOME for every test and
    the CLI runs in it; the tests that damage a cache make their own)."""
    return Path(os.environ["PGVIRT_TEST_CACHE"])


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()         # drop what earlier calls (a patch, say) printed
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(rc: int, err: str) -> None:
    assert rc == 2, err
    assert err.startswith("pgvirt: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


# --- a small ELF32 writer ---------------------------------------------------------------------------

def elf32(text: bytes, symbols=(("entry", 0, 2),), etype: int = 2, addr: int = 0x100000,
          rel: tuple = ()) -> bytes:
    """An i386 ELF32: .text at ``addr`` (0 for ET_REL), .rel.text with R_386 (offset, type)
    entries against symbol 1, .symtab (symbols: (name, offset, STT type)), .strtab, .shstrtab;
    one PT_LOAD for an executable."""
    shstr = bytearray(b"\0")

    def nm(s: str) -> int:
        shstr.extend(s.encode() + b"\0")
        return len(shstr) - len(s) - 1

    base = 0 if etype == 1 else addr
    secs = [dict(name=nm(".text"), type=1, flags=6, addr=base, data=text, link=0, info=0, entsize=0)]
    if rel:
        secs.append(dict(name=nm(".rel.text"), type=9, flags=0, addr=0, link=3, info=1, entsize=8,
                         data=b"".join(struct.pack("<II", o, (1 << 8) | t) for o, t in rel)))
    strtab, syms = bytearray(b"\0"), bytearray(16)
    for name, off, kind in symbols:
        syms += struct.pack("<IIIBBH", len(strtab), base + off, 0, (1 << 4) | kind, 0, 1)
        strtab += name.encode() + b"\0"
    symtab = len(secs) + 1
    secs.append(dict(name=nm(".symtab"), type=2, flags=0, addr=0, data=bytes(syms), link=symtab + 1,
                     info=1, entsize=16))
    secs.append(dict(name=nm(".strtab"), type=3, flags=0, addr=0, data=bytes(strtab), link=0, info=0,
                     entsize=0))
    secs.append(dict(name=nm(".shstrtab"), type=3, flags=0, addr=0, data=b"", link=0, info=0, entsize=0))
    secs[-1]["data"] = bytes(shstr)
    nph = 0 if etype == 1 else 1
    off = 52 + 32 * nph
    body = bytearray()
    for s in secs:
        s["offset"] = off + len(body)
        body += s["data"]
    shoff = off + len(body)
    body += bytes(-shoff % 4)
    shoff += -shoff % 4
    hdr = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack(
        "<HHIIIIIHHHHHH", etype, 3, 1, addr, 52 if nph else 0, shoff, 0, 52, 32, nph, 40, len(secs) + 1,
        len(secs))
    ph = struct.pack("<IIIIIIII", 1, secs[0]["offset"], addr, addr, len(text), len(text), 5, 0x1000) \
        if nph else b""
    sh = bytes(40) + b"".join(struct.pack("<IIIIIIIIII", s["name"], s["type"], s["flags"], s["addr"],
                                          s["offset"], len(s["data"]), s["link"], s["info"], 1,
                                          s["entsize"]) for s in secs)
    return hdr + ph + bytes(body) + sh


# entry: push ebp; mov ebp,esp; sgdt [eax]; sidt [eax]; pushfd; cli; popfd; mov eax,cs;
#        sgdt [0x12345678]; pop ebp; ret        helper: nop; ret
TEXT = bytes.fromhex("5589e5" "0f0100" "0f0108" "9c" "fa" "9d" "8cc8" "0f010578563412" "5dc3" "90c3")
SYMS = (("entry", 0, 2), ("helper", len(TEXT) - 2, 2))
BASE = 0x100000
# Derived under pentium: CLI is privileged (IOPL 0, no PVI); the rest are violations.
EXPECTED = [(BASE + 3, "sgdt_m"), (BASE + 6, "sidt_m"), (BASE + 9, "pushfd"), (BASE + 11, "popfd"),
            (BASE + 12, "mov_r_cs"), (BASE + 14, "sgdt_m")]


@pytest.fixture
def guest(tmp_path) -> Path:
    p = tmp_path / "guest.elf"
    p.write_bytes(elf32(TEXT, SYMS))
    return p


def patched(tmp_path: Path, src: Path, *extra) -> tuple[Path, Path]:
    out, man = tmp_path / (src.name + ".patched"), tmp_path / (src.name + ".manifest.json")
    rc = main(["patch", str(src), "-o", str(out), "--manifest", str(man), *map(str, extra)])
    assert rc == 0
    return out, man


def check_json(capsys, *argv) -> tuple[int, dict]:
    rc, out, err = cli(capsys, "check-patch", *argv, "--format", "json")
    assert "Traceback" not in err
    return rc, json.loads(out)


def failing(doc: dict) -> list[str]:
    return [o["message"] for o in doc["obligations"] if o["status"] == "fails"]


# --- the ABI and the handlers -------------------------------------------------------------------------

def test_hypercall_bytes():
    assert monitor.replacement(1) == b"\xf4"
    assert monitor.replacement(7) == b"\xf4" + b"\x90" * 6
    for bad in (0, 16):
        with pytest.raises(ValueError):
            monitor.replacement(bad)
    from pgvirt.guest.scan import match_form
    assert match_form(b"\xf4").name == "hlt" and match_form(b"\x90").name == "nop"


def _concrete_guest(**kw) -> dict:
    """A plain-integer guest view: flat segments, busy TSS, protected mode, CPL 0."""
    s = {"cr0": 1, "cpl": 0, "esp": 0x8000, "eip": 0x100009, "cs": 0x08, "ss": 0x10, "ds": 0x10,
         "cs_attr": 0x9B | (1 << 14), "ss_attr": 0x93 | (1 << 14), "tr_attr": 0x8B, "tr_limit": 0x67,
         "sysflags": 1 << st.IF}
    for r in st.SREGS:
        s[f"{r}_limit"] = 0xFFFFFFFF
    s.update(kw)
    return s


def _split(s: dict, profile) -> tuple[dict, dict]:
    """R and C for guest view ``s``: R has s's USER fields (CS/SS RPL 3) and host settings."""
    real = {k: v for k, v in s.items() if st.FIELD[k].owner == st.USER}
    real.update({k: s[k] for k in monitor.ADDRESS_SPACE if k in s})
    real.update(cpl=3, cs=s["cs"] | 3, ss=s["ss"] | 3, cr0=1, cr4=1 << st.CR4_TSD,
                sysflags=1 << st.IF, cs_attr=0xFB, ss_attr=0xF3)
    vcpu = {k: v for k, v in s.items() if st.FIELD[k].owner == st.SYSTEM}
    return real, vcpu


def test_handler_runs_concretely_and_keeps_the_real_if():
    """POPFD at virtual CPL 0 clears the guest's IF; the real IF stays on and the real CPL 3."""
    site = monitor.Site(0, 0x10000b, b"\x9d", isa.get("popfd"))
    s = _concrete_guest(eip=0x10000b, mem={0x8000: 0x02, 0x8001: 0x00, 0x8002: 0, 0x8003: 0})
    real, vcpu = _split(s, profiles.PENTIUM)
    res = monitor.run(site, real, vcpu, profiles.PENTIUM.features)
    assert isinstance(res, monitor.Resumed)
    assert res.real["eip"] == 0x10000c and res.real["esp"] == 0x8004
    assert res.real["sysflags"] & (1 << st.IF) and res.real["cpl"] == 3 and res.real["cs"] & 3 == 3
    assert not res.vcpu["sysflags"] & (1 << st.IF) and res.vcpu["cpl"] == 0
    ref = isa.get("popfd").execute(s)
    assert ref.state["sysflags"] == res.vcpu["sysflags"] and ref.state["eip"] == res.real["eip"]


def test_monitor_dispatch_by_eip():
    sites = [monitor.Site(0, 0x100009, b"\x9c", isa.get("pushfd")),
             monitor.Site(1, 0x10000c, b"\x8c\xc8", isa.get("mov_r_cs"))]
    mon = monitor.Monitor(sites, profiles.PENTIUM.features)
    s = _concrete_guest(eip=0x10000c)
    real, vcpu = _split(s, profiles.PENTIUM)
    res = mon.on_trap(real, vcpu)
    assert isinstance(res, monitor.Resumed)
    assert res.real["eax"] == 0x08 and res.real["eip"] == 0x10000e   # the guest sees RPL 0 = virtual CPL
    assert mon.on_trap(dict(real, eip=0x100020), vcpu) is None       # the guest's own HLT
    with pytest.raises(ValueError):
        monitor.Monitor(list(reversed(sites)))

def test_a_fault_of_the_original_is_injected():
    """MOV DS with a selector beyond the (virtual) GDT limit: #GP(selector), as on hardware."""
    site = monitor.Site(0, 0x100000, b"\x8e\xd8", isa.get("mov_ds_r"))
    s = _concrete_guest(eip=0x100000, eax=0x28, gdtr_limit=0x17, gdtr_base=0x2000)
    res = monitor.run(site, *_split(s, profiles.PENTIUM))
    ref = isa.get("mov_ds_r").execute(s)
    assert isinstance(res, monitor.Injected) and (res.fault.vector, res.fault.code) == (13, 0x28)
    assert (ref.vector, ref.code) == (res.fault.vector, res.fault.code)


def _prove_handlers(every: bool) -> None:
    forms = [f.name for f in isa.FORMS]
    cs, _ = P.classifications("pentium", forms)
    violating = [n for n, c in cs.items() if P.violation(c)]
    assert {"sgdt_m", "pushfd", "popfd", "iretd", "int_imm", "mov_ds_r", "call_far_m"} <= set(violating)
    if not every:       # one form of each mnemonic (its other sizes and operands share the handler)
        first = {}
        for n in violating:
            first.setdefault(isa.get(n).mnemonic, n)
        violating = list(first.values())
    for n in violating:
        f = isa.get(n)
        p = P.prove_site(monitor.Site(0, 0x401000, f.bytes, f), "pentium")
        assert p.status == "holds", (n, p.note, p.counterexample and p.counterexample["differs"])


def test_each_violating_mnemonic_has_a_proved_handler():
    """The handler of a Theorem-1 violation under pentium (canonical bytes) is proved equal to
    the instruction, one form of each violating mnemonic here; every form in the slow run."""
    _prove_handlers(every=False)


@pytest.mark.slow
def test_every_violating_form_has_a_proved_handler():
    """UNSAT for the handler of every Theorem-1 violation under pentium."""
    _prove_handlers(every=True)


# Deliberately wrong handlers: the proof must be able to fail.

def resume_after_hlt(site, real, vcpu, features):
    h = monitor.handle(site, real, vcpu, features)
    return monitor.HandlerOutcome(h.emulated, h.real.replace(eip=real.eip + 1), h.vcpu)


def shows_real_if(site, real, vcpu, features):
    v = monitor.view(real, vcpu)
    v = v.replace(sysflags=(v.sysflags & ~(1 << st.IF)) | (real.sysflags & (1 << st.IF)))
    o = site.form.run(v, code=site.code, features=features)
    return monitor.HandlerOutcome(o, *monitor.write_back(real, vcpu, o.post))


def reads_registers_from_vcpu(site, real, vcpu, features):
    o = site.form.run(vcpu.replace(eip=real.eip), code=site.code, features=features)
    return monitor.HandlerOutcome(o, *monitor.write_back(real, vcpu, o.post))


def forgets_virtual_rpl(site, real, vcpu, features):
    v = vcpu.replace(**{n: real[n] for n in st.users()})
    o = site.form.run(v, code=site.code, features=features)
    return monitor.HandlerOutcome(o, *monitor.write_back(real, vcpu, o.post))


@pytest.mark.parametrize("handler, code, form, differs", [
    (resume_after_hlt, "0f010578563412", "sgdt_m", "eip"),
    (shows_real_if, "9c", "pushfd", None),
    (shows_real_if, "9d", "popfd", "sysflags"),
    (reads_registers_from_vcpu, "0f0100", "sgdt_m", None),
    (forgets_virtual_rpl, "0e", "push_cs", "mem"),
    (forgets_virtual_rpl, "8cc8", "mov_r_cs", "eax"),
])
def test_wrong_handlers_give_counterexamples(handler, code, form, differs):
    site = monitor.Site(0, 0x100000, bytes.fromhex(code), isa.get(form))
    p = P.prove_site(site, "pentium", handler)
    assert p.status == "fails", p.note
    cx = p.counterexample
    assert cx["replayed"] and cx["differs"], cx["differs"]
    if differs:
        assert differs in cx["differs"]
    assert cx["guest_state"]["eip"] == 0x100000 and cx["host_state"]["cpl"] == 3
    json.dumps(cx)   # a report can carry it


def test_a_one_byte_site_cannot_tell_site_plus_one_from_site_plus_length():
    """Resuming at EIP + 1 is wrong in general but right for a one-byte site: the proof says so."""
    site = monitor.Site(0, 0x100000, b"\x9d", isa.get("popfd"))
    assert P.prove_site(site, "pentium", resume_after_hlt).status == "holds"


def test_check_patch_reports_a_wrong_handler(tmp_path, guest):
    out, man = patched(tmp_path, guest)
    rep = P.check_patch(out, man, handler=resume_after_hlt)
    assert rep.verdict == "fails"
    bad = [o for o in rep.obligations if o.claim == "equivalence" and o.status == "fails"]
    # Only the multi-byte sites: sgdt, sidt, mov eax,cs, sgdt [abs]
    assert sorted(o.address for o in bad) == [BASE + 3, BASE + 6, BASE + 12, BASE + 14]
    assert all("eip" in o.detail["differs"] for o in bad)


# --- scan --------------------------------------------------------------------------------------------

def test_scan_synthetic(capsys, guest):
    rc, out, err = cli(capsys, "scan", guest, "--format", "json")
    assert rc == 1, err
    doc = json.loads(out)
    assert set(doc) >= {"guest", "profile", "sites", "unmodelled", "instructions"}
    assert doc["profile"] == "pentium" and doc["instructions"] == 13 and doc["unmodelled"] == []
    assert [(s["address"], s["form"]) for s in doc["sites"]] == EXPECTED
    by = {s["address"]: s for s in doc["sites"]}
    assert by[BASE + 11]["classes"] == ["control_sensitive", "user_sensitive"]
    assert by[BASE + 12]["classes"] == ["mode_sensitive"] and by[BASE + 12]["symbol"] == "entry+0xc"
    assert by[BASE + 3]["bytes"] == "0f0100" and by[BASE + 3]["asm"] == "sgdt fword ptr [eax]"
    assert all(s["section"] == ".text" and "not privileged under pentium" in s["reason"]
               for s in doc["sites"])


def test_scan_text_and_umip(capsys, guest):
    rc, out, err = cli(capsys, "scan", guest)
    assert rc == 1 and "entry" in out and "popfd" in out
    assert "[pentium]: 6 violating site(s) in 1 function(s)" in out.replace("\n", " ")
    # UMIP makes SGDT/SIDT trap at CPL 3: derived, so the sites go.
    rc, out, _ = cli(capsys, "scan", guest, "--profile", "umip", "--format", "json")
    assert rc == 1
    assert {s["form"] for s in json.loads(out)["sites"]} == {"pushfd", "popfd", "mov_r_cs"}


def test_scan_clean_guest_exits_0(capsys, tmp_path):
    p = tmp_path / "clean.elf"
    p.write_bytes(elf32(bytes.fromhex("5589e55dc3")))
    rc, out, _ = cli(capsys, "scan", p, "--format", "json")
    assert rc == 0 and json.loads(out)["sites"] == []


def test_scan_raw_blob_and_unmodelled(capsys, tmp_path):
    p = tmp_path / "blob.bin"
    p.write_bytes(bytes.fromhex("9c" "668ed8" "d9e8" "f30f0100" "c3"))  # pushfd; mov ds, ax; fld1; rep sgdt; ret
    rc, out, _ = cli(capsys, "scan", p, "--raw", "--base", "0x7c00", "--format", "json")
    doc = json.loads(out)
    assert rc == 1 and [(s["address"], s["form"]) for s in doc["sites"]] == \
        [(0x7c00, "pushfd"), (0x7c01, "mov_ds_r16"),              # the 16-bit MOV DS has a form
         (0x7c04, "fld1")]                                         # derived: #NM with CR0.EM/TS
    # REP SGDT decodes, but no form admits the prefix: reported, not counted harmless.
    assert [(u["mnemonic"], u["count"], u["first"]) for u in doc["unmodelled"]] == [("sgdt", 1, [0x7c06])]


def test_sarif_structure(capsys, guest):
    rc, out, _ = cli(capsys, "scan", guest, "--format", "sarif")
    assert rc == 1
    doc = assert_valid_sarif(json.loads(out))
    assert doc["version"] == "2.1.0" and "sarif-2.1.0" in doc["$schema"]
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)) == 5                         # one per violating form
    assert run["artifacts"][0]["location"]["uri"] == guest.resolve().as_uri()
    assert len(run["results"]) == 6
    data = guest.read_bytes()
    for res, (addr, form) in zip(run["results"], EXPECTED):
        assert res["ruleId"] == f"pgvirt/{form}" and rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] == "error" and res["kind"] == "fail" and res["message"]["text"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"] == {"uri": guest.resolve().as_uri(), "index": 0}
        assert loc["address"]["absoluteAddress"] == addr and loc["address"]["kind"] == "instruction"
        assert loc["address"]["name"] == f"entry+{addr - BASE:#x}"
        r = loc["region"]
        assert set(r) == {"byteOffset", "byteLength"}          # a binary region: no lines
        assert data[r["byteOffset"]:r["byteOffset"] + r["byteLength"]].hex() == \
            next(s for s in load_guest(guest).sections).data[addr - BASE:addr - BASE + r["byteLength"]].hex()
        assert res["partialFingerprints"]
    fps = [next(iter(r["partialFingerprints"].values())) for r in run["results"]]
    assert len(set(fps)) == len(fps)


def test_sarif_unmodelled_is_a_review(capsys, tmp_path):
    """Instructions outside the model need a human's review, not a failure: kind review, whose
    level SARIF 3.27.10 makes none."""
    p = tmp_path / "blob.bin"
    p.write_bytes(bytes.fromhex("f30f0100c3"))                  # rep sgdt (no form admits REP); ret
    rc, out, _ = cli(capsys, "scan", p, "--raw", "--format", "sarif")
    run = assert_valid_sarif(json.loads(out))["runs"][0]
    assert rc == 0
    assert [(r["ruleId"], r["kind"], r["level"]) for r in run["results"]] == \
        [("pgvirt/unmodelled", "review", "none")]


# --- the classification cache --------------------------------------------------------------------------

def test_cache_is_derived_then_read(tmp_path, guest):
    cache = P.ClassificationCache(tmp_path / "c")
    g = load_guest(guest)
    first = P.scan_guest(g, "pentium", cache)
    assert sorted(first.derived) == sorted(first.result.forms)       # only the guest's forms
    assert len(first.derived) == 11 < len(isa.FORMS)
    again = P.scan_guest(g, "pentium", cache)
    assert again.derived == [] and again.sites == first.sites
    path = cache.path("pentium")
    assert path.parent.name == C.model_key() and path.is_file()
    assert cache.path("pentium", ".witnesses").is_file()
    # The cached answers are the solver's: the same values and verdicts as a fresh derivation.
    from pgvirt.verify.popek_goldberg import classify
    fresh = classify("popfd", "pentium")
    cached = cache.load("pentium")["popfd"]
    assert {k: (a.value, a.verdict) for k, a in fresh.answers.items()} == \
        {k: (a.value, a.verdict) for k, a in cached.answers.items()}
    # Witness states round-trip (integer memory addresses included).
    cache.store("pentium", [fresh])
    back = cache.load("pentium", witnesses=True)["popfd"]
    assert all(back.answers[k].witness == a.witness for k, a in fresh.answers.items())


def test_damaged_or_stale_cache_is_derived_again(tmp_path, guest, monkeypatch):
    cache = P.ClassificationCache(tmp_path / "c")
    g = load_guest(guest)
    P.scan_guest(g, "pentium", cache)
    cache.path("pentium").write_text("{not json")
    assert len(P.scan_guest(g, "pentium", cache).derived) == 11
    doc = json.loads(cache.path("pentium").read_text())
    key = C.form_key("popfd", profiles.PENTIUM)
    entry = doc["entries"][key]
    entry["answers"]["privileged"]["value"] = None     # an unknown is not an answer
    entry["digest"] = C._entry_digest(entry)
    cache.path("pentium").write_text(json.dumps(doc))
    assert P.scan_guest(g, "pentium", cache).derived == ["popfd"]
    # Another Z3 (or model source) gives another key, so another, empty cache.
    old = C.model_key()
    monkeypatch.setattr(C, "_KEY", None)
    monkeypatch.setattr(z3, "get_version_string", lambda: "0.0.0-test")
    assert C.model_key() != old
    assert len(P.scan_guest(g, "pentium", cache).derived) == 11
    monkeypatch.setattr(C, "_KEY", old)


def test_no_cache_writes_nothing(tmp_path, guest):
    cache = P.ClassificationCache(tmp_path / "c", enabled=False)
    rep = P.scan_guest(load_guest(guest), "pentium", cache)
    assert len(rep.derived) == 11 and not (tmp_path / "c").exists()


def test_cache_write_failure_is_reported_not_fatal(tmp_path, guest):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = P.ClassificationCache(blocker / "sub")      # a file where a directory should be
    rep = P.scan_guest(load_guest(guest), "pentium", cache)
    assert len(rep.sites) == 6 and "not written" in rep.cache_note


# --- patch and check-patch on synthetic guests -----------------------------------------------------------

def test_patch_and_check(capsys, tmp_path, guest):
    out, man = patched(tmp_path, guest)
    a, b = guest.read_bytes(), out.read_bytes()
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    m = json.loads(man.read_text())
    text_off = load_guest(guest).sections[0].offset
    spans = [(s["file_offset"], s["length"]) for s in m["sites"]]
    assert [(s["address"], s["form"]) for s in m["sites"]] == EXPECTED
    assert [s["hypercall"] for s in m["sites"]] == list(range(6))
    assert all(s["file_offset"] == text_off + s["address"] - BASE for s in m["sites"])
    assert all(set(range(o + 1, o + n)) <= set(range(len(b))) and b[o] == 0xF4 and b[o + 1:o + n] == b"\x90" * (n - 1)
               for o, n in spans)
    assert set(diff) <= {i for o, n in spans for i in range(o, o + n)}
    assert m["original"]["sha256"] == __import__("hashlib").sha256(a).hexdigest()
    assert m["sites"][0]["original"] == "0f0100" and m["sites"][0]["replacement"] == "f49090"
    # The patched file is still a valid ELF with the same instruction boundaries.
    g = load_guest(out)
    from pgvirt.guest.decode import decode
    assert [i.address for i in decode(g) if i.address not in {x for o, n in spans for x in
                                                               range(BASE + o - text_off + 1, BASE + o - text_off + n)}] == \
        [i.address for i in decode(load_guest(guest))]
    rc, doc = check_json(capsys, out, "--manifest", man)
    assert rc == 0 and doc["verdict"] == "holds", failing(doc)
    claims = {o["claim"] for o in doc["obligations"] if o["status"] == "holds"}
    assert claims == {"manifest", "bytes", "remaining", "executable-data", "trap", "equivalence"}
    assert [s["proof"] for s in doc["sites"]] == ["holds"] * 6


def test_gzip_guest_is_written_back_compressed(capsys, tmp_path):
    src = tmp_path / "guest.elf.gz"
    src.write_bytes(gzip.compress(elf32(TEXT, SYMS)))
    out, man = patched(tmp_path, src)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    img = gzip.decompress(out.read_bytes())
    assert len(img) == len(gzip.decompress(src.read_bytes())) and load_guest(out).kind == "exec"
    assert json.loads(man.read_text())["original"]["gzip"] is True
    rc, doc = check_json(capsys, out, "--manifest", man)
    assert rc == 0, failing(doc)


def test_allow_list(capsys, tmp_path, guest):
    """Xen PV leaves SGDT/SIDT native: allow-listed sites stay, and check-patch holds only when
    told the same (the allow-list is never taken from the manifest)."""
    out, man = patched(tmp_path, guest, "--allow", "sgdt_m", "sidt_m")
    m = json.loads(man.read_text())
    assert [s["form"] for s in m["sites"]] == ["pushfd", "popfd", "mov_r_cs"] and m["allow"] == ["sgdt_m", "sidt_m"]
    rc, doc = check_json(capsys, out, "--manifest", man, "--allow", "sgdt_m", "sidt_m")
    assert rc == 0, failing(doc)
    assert sorted(s["address"] for s in doc["allowed"]) == [BASE + 3, BASE + 6, BASE + 14]
    rc, doc = check_json(capsys, out, "--manifest", man)
    assert rc == 1
    msgs = failing(doc)
    assert len(msgs) == 3 and all("still there" in x and "--allow sgdt_m,sidt_m" in x for x in msgs)
    assert {o["address"] for o in doc["obligations"] if o["claim"] == "remaining"} == {BASE + 3, BASE + 6, BASE + 14}
    rc, doc = check_json(capsys, out, "--manifest", man, "--allow", "sgdt_m,sidt_m")   # comma form
    assert rc == 0


def test_unpatched_guest_fails_naming_its_sites(capsys, tmp_path, guest):
    out, man = patched(tmp_path, guest)
    rc, doc = check_json(capsys, guest, "--manifest", man)
    assert rc == 1 and doc["verdict"] == "fails"
    remaining = sorted(o["address"] for o in doc["obligations"]
                       if o["claim"] == "remaining" and o["status"] == "fails")
    unpatched = sorted(o["address"] for o in doc["obligations"]
                       if o["claim"] == "bytes" and o["status"] == "fails")
    assert remaining == unpatched == [a for a, _ in EXPECTED]
    assert all("holds the original bytes" in m for m in failing(doc) if "site #" in m)
    rc, out, _ = cli(capsys, "check-patch", guest, "--manifest", man, "--format", "sarif")
    run = assert_valid_sarif(json.loads(out))["runs"][0]
    assert rc == 1 and run["properties"]["verdict"] == "fails"
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    errs = [r for r in run["results"] if r["level"] == "error"]
    assert {rules[r["ruleIndex"]] for r in errs} == {"pgvirt/check-patch/bytes", "pgvirt/check-patch/remaining"}
    assert sorted({r["locations"][0]["physicalLocation"]["address"]["absoluteAddress"] for r in errs}) == \
        [a for a, _ in EXPECTED]


def _tamper(man: Path, tmp_path: Path, edit) -> Path:
    doc = json.loads(man.read_text())
    edit(doc)
    p = tmp_path / "tampered.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.parametrize("edit, reason", [
    (lambda d: d["sites"][2].update(form="popfd"), "the manifest says form popfd, but the original bytes 9c are an instance of pushfd"),
    (lambda d: d["sites"][0].update(form="no_such_form"), "is no form of the model"),
    (lambda d: d["sites"][0].update(length=2, replacement="f490"), "length 2 disagrees"),
    (lambda d: d["sites"][0].update(original="0f01", length=2, replacement="f490"), "no instruction of the original's decoding starts there"),
    (lambda d: d["sites"][0].update(address=0x200000), "site outside code"),
    (lambda d: d["sites"][0].update(section=".data"), "site outside code"),
    (lambda d: d["sites"][0].update(file_offset=3), "is not where"),
    (lambda d: d["sites"][1].update(hypercall=7), "is not its index"),
    (lambda d: d["sites"][0].update(replacement="cc9090"), "is not the hypercall"),
    (lambda d: d["original"].update(sha256="0" * 64), "not the guest it was made from"),
    (lambda d: d["sites"].pop(3), "differs outside every site"),
    (lambda d: d["sites"].append(dict(d["sites"][0])), "a second site at the same address"),
])
def test_tampered_manifest_fails_with_a_reason(capsys, tmp_path, guest, edit, reason):
    out, man = patched(tmp_path, guest)
    rc, doc = check_json(capsys, out, "--manifest", _tamper(man, tmp_path, edit))
    assert rc == 1 and doc["verdict"] == "fails"
    assert any(reason in m for m in failing(doc)), failing(doc)


def test_relocated_site_is_refused(capsys, tmp_path):
    """A far JMP whose offset a relocation fills in (ET_REL) cannot become a hypercall."""
    p = tmp_path / "mod.o"
    p.write_bytes(elf32(bytes.fromhex("5589e5" "ea000000001000" "5dc3"), etype=1, rel=((4, 1),)))
    rc, out, err = cli(capsys, "scan", p, "--format", "json")
    assert rc == 1 and [s["form"] for s in json.loads(out)["sites"]] == ["jmp_far_ptr"]
    rc, _, err = cli(capsys, "patch", p, "-o", tmp_path / "mod.p")
    one_line_error(rc, err)
    assert "overlaps a relocation at 0x4" in err and not (tmp_path / "mod.p").exists()


# --- bad input: one line, exit 2 ---------------------------------------------------------------------------

def _bad_inputs(tmp_path: Path, guest: Path):
    elf64 = tmp_path / "x64.elf"
    elf64.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    trunc = tmp_path / "trunc.elf"
    trunc.write_bytes(elf32(TEXT, SYMS)[:40])
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"\x00\xffnot json")
    nokeys = tmp_path / "nokeys.json"
    nokeys.write_text(json.dumps({"format": P.MANIFEST_FORMAT, "version": 1, "profile": "pentium"}))
    out, man = patched(tmp_path, guest)
    wrongtype = _tamper(man, tmp_path, lambda d: d["sites"][0].update(address="0x100003"))
    missing = tmp_path / "missing.elf"
    return [
        ("scan", missing, "cannot read"),
        ("scan", trunc, "truncated ELF header"),
        ("scan", elf64, "64-bit ELF"),
        ("scan", f"{guest} --profile nosuch", "unknown profile 'nosuch'"),
        ("scan", f"{guest} --base 0x1000", "base applies only to raw blobs"),
        ("patch", f"{missing} -o {tmp_path / 'o'}", "cannot read"),
        ("patch", f"{trunc} -o {tmp_path / 'o'}", "truncated ELF header"),
        ("patch", f"{elf64} -o {tmp_path / 'o'}", "64-bit ELF"),
        ("patch", f"{guest} -o {tmp_path / 'o'} --profile nosuch", "unknown profile"),
        ("patch", f"{guest} -o {tmp_path / 'o'} --allow nosuch_form", "unknown instruction form"),
        ("patch", f"{guest} -o {guest}", "would overwrite the guest itself"),
        ("patch", f"{guest} -o {tmp_path / 'no' / 'o'}", "no such directory"),
        ("check-patch", f"{out} --manifest {junk}", "not JSON"),
        ("check-patch", f"{out} --manifest {nokeys}", "missing key"),
        ("check-patch", f"{out} --manifest {wrongtype}", "wrong type"),
        ("check-patch", f"{out} --manifest {missing}", "cannot read"),
        ("check-patch", f"{missing} --manifest {man}", "cannot read"),
        ("check-patch", f"{trunc} --manifest {man}", "truncated ELF header"),
        ("check-patch", f"{elf64} --manifest {man}", "64-bit ELF"),
        ("check-patch", f"{out} --manifest {man} --original {elf64}", "64-bit ELF"),
        ("check-patch", f"{out} --manifest {man} --profile nosuch", "unknown profile"),
        ("check-patch", f"{out} --manifest {man} --allow nosuch_form", "unknown instruction form"),
        ("check-patch", f"{out}", "--manifest"),
    ]


def test_bad_inputs_are_one_line_exit_2(capsys, tmp_path, guest):
    for cmd, args, msg in _bad_inputs(tmp_path, guest):
        before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
        rc, _, err = cli(capsys, cmd, *str(args).split())
        one_line_error(rc, err)
        assert msg in err, (cmd, args, err)
        assert {p: p.stat().st_mtime_ns for p in before} == before   # nothing overwritten
    assert guest.read_bytes() == elf32(TEXT, SYMS)


def test_bad_inputs_in_a_fresh_process(tmp_path, guest, cache_root):
    """The installed command, not just main(): no traceback, exit 2."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_root))
    for cmd, args, msg in _bad_inputs(tmp_path, guest)[::4]:
        p = subprocess.run([sys.executable, "-m", "pgvirt", cmd, *str(args).split()],
                           capture_output=True, text=True, env=env, timeout=120)
        one_line_error(p.returncode, p.stderr)
        assert msg in p.stderr


# --- fuzzing manifests and patched guests -------------------------------------------------------------------

SEMANTIC = ("hypercall", "address", "section", "file_offset", "length", "original", "replacement", "form")


def _mutate_manifest(rnd: random.Random, doc: dict) -> tuple[dict | str, bool]:
    """A mutated manifest and whether the mutation must make check-patch fail or reject it."""
    d = json.loads(json.dumps(doc))
    op = rnd.randrange(7)
    site = rnd.choice(d["sites"])
    if op == 0:                                   # drop a key somewhere
        where = rnd.choice([d, d["original"], d["guest"], site])
        k = rnd.choice(sorted(where))
        del where[k]
        return d, k not in ("asm", "symbol", "classes", "abi", "patched", "size", "gzip", "kind", "base",
                            "symbols", "allow") or where is site and k in SEMANTIC
    if op == 1:                                   # a wrong type
        k = rnd.choice(SEMANTIC)
        site[k] = rnd.choice([None, "x", [], {}, 1.5, True, -1])
        return d, True
    if op == 2:                                   # a plausible but wrong value
        k = rnd.choice(("hypercall", "address", "file_offset", "length"))
        site[k] = max(0, site[k] + rnd.choice([-16, -1, 1, 2, 4096, 1 << 20]))
        return d, True
    if op == 3:
        k = rnd.choice(("original", "replacement"))
        b = bytearray.fromhex(site[k])
        b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        site[k] = b.hex()
        return d, True
    if op == 4:
        site["form"] = rnd.choice([f.name for f in isa.FORMS])
        return d, site["form"] != doc["sites"][d["sites"].index(site)]["form"]
    if op == 5:                                   # structural damage to the JSON text
        text = json.dumps(d)
        i = rnd.randrange(len(text))
        return text[:i] + rnd.choice(["", "{", "]", "\"", "\\", "\x00", "9e999"]) + text[i + 1:], False
    d["sites"] = rnd.choice([[], d["sites"][::-1], d["sites"] * 2, "sites", None])
    return d, True


def _mutate_guest(rnd: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rnd.randrange(3)
    if op == 0:
        for _ in range(rnd.randrange(1, 5)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
    elif op == 1:
        del b[rnd.randrange(1, len(b)):]
    else:
        i = rnd.randrange(len(b) - 4)
        struct.pack_into("<I", b, i, rnd.choice([0, 0xFFFFFFFF, rnd.randrange(1 << 32)]))
    if bytes(b) == data:
        b[-1] ^= 0xFF
    return bytes(b)


def test_fuzz_manifests_and_guests(capsys, tmp_path):
    """A few hundred mutated manifests and patched guests: never a traceback or hang; every
    change to a site's description or to the patched bytes is caught (exit 1 or 2)."""
    src = tmp_path / "g.elf"
    src.write_bytes(elf32(bytes.fromhex("5589e5" "9c" "0f010578563412" "5dc3")))
    out, man = patched(tmp_path, src)
    doc, good = json.loads(man.read_text()), out.read_bytes()
    rnd = random.Random(7)
    codes: collections.Counter = collections.Counter()
    mp, gp = tmp_path / "m.json", tmp_path / "p.elf"
    for k in range(300):
        if k % 2:
            mdoc, must = _mutate_manifest(rnd, doc)
            must = must and mdoc != doc         # a clamped value can leave the manifest as it was
            mp.write_text(mdoc if isinstance(mdoc, str) else json.dumps(mdoc))
            args = [out, "--manifest", mp]
        else:
            gp.write_bytes(_mutate_guest(rnd, good))
            args, must = [gp, "--manifest", man], True
        with no_hang(60):
            rc, _, err = cli(capsys, "check-patch", *args, "--format", "json")
        assert rc in (0, 1, 2) and "Traceback" not in err
        if rc == 2:
            assert err.count("\n") == 1, err
        if must:
            assert rc != 0, (k, args)
        codes[rc] += 1
    assert codes[1] > 30 and codes[2] > 30, codes


@contextlib.contextmanager
def no_hang(seconds: int):
    """Fail (not a timing assertion: a hang guard) when the body runs ``seconds`` or more."""
    def hung(signum, frame):
        pytest.fail(f"check-patch hung for {seconds} s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- real guests ------------------------------------------------------------------------------------------

SREG = {"cs", "ds", "es", "fs", "gs", "ss"}


def signature(text: str) -> str | None:
    """What kind of violating instruction an asm line is, read from its text alone (objdump or
    iced-x86 spelling), so that the two decoders are compared, not the model's matcher."""
    w = text.lower().replace(",", " , ").split()
    while len(w) > 1 and w[0] in ("rep", "repe", "repz", "repne", "repnz", "lock", "data16", "addr16"):
        w = w[1:]
    if not w:
        return None
    m = re.sub(r"^([sl][gil]dt)[dwl]$", r"\1", w[0])
    ops = [o.strip() for o in " ".join(w[1:]).split(" , ")] if len(w) > 1 else []

    def far(o: str) -> bool:
        return "fword" in o or o.startswith("ptr ") or len(ops) == 2 or \
            re.fullmatch(r"0x[0-9a-f]+ ?: ?0x[0-9a-f]+", o) is not None

    if m in ("pushf", "pushfd", "popf", "popfd", "iret", "iretd"):
        return m.rstrip("d")
    if m == "mov" and len(ops) == 2 and (ops[0] in SREG or ops[1] in ("cs", "ss")):
        return "mov sreg"     # a load, or a store showing the CPL (MOV from DS..GS is innocuous)
    if m in ("push", "pop") and ops and ops[0] in SREG:
        return f"{m} {ops[0]}"
    if ops and ops[0].startswith("far ") and m in ("jmp", "call"):
        return f"{m} far"       # the decoder's spelling: "jmp far 0x8:0x1000", "call far fword ptr [eax]"
    if m == "ljmp" or (m == "jmp" and ops and far(ops[0])):
        return "jmp far"
    if m == "lcall" or (m == "call" and ops and far(ops[0])):
        return "call far"
    if m in ("lret", "retf"):
        return "retf"
    if m in ("sgdt", "sidt", "sldt", "str", "smsw", "lar", "lsl", "verr", "verw", "lds", "les", "lfs",
             "lgs", "lss", "int", "int3", "into", "sysenter", "rdpid"):
        return m
    return None


def objdump_violations(path: Path, sections, wanted: set[str], tmp_path: Path):
    """objdump -d's instructions of the wanted signatures: (plain, with a 66/67 size prefix)."""
    if path.suffix == ".gz":
        elf = tmp_path / path.stem
        elf.write_bytes(gzip.decompress(path.read_bytes()))
        path = elf
    args = [need_objdump(), "-d", "-z", "-M", "intel", "--insn-width=16"]
    for s in sections:
        args += ["-j", s]
    out = subprocess.run(args + [str(path)], capture_output=True, text=True, check=True, timeout=120).stdout
    plain, sized = collections.Counter(), collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t?(.*)$", line)
        if not m:
            continue
        code = bytes.fromhex(m.group(1).replace(" ", ""))
        sig = signature(m.group(2))
        if sig is None and code[:1] == b"\x66" and re.match(r"(jmp|call)\s+dword ptr", m.group(2).lower()):
            sig = m.group(2).split()[0] + " far"   # FF /5, /3 with 16-bit operand size: m16:16
        if sig not in wanted:
            continue
        i = 0
        while i < len(code) and code[i] in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF2, 0xF3, 0x66, 0x67):
            i += 1
        (sized if {0x66, 0x67} & set(code[:i]) else plain)[sig] += 1
    return plain, sized


@pytest.mark.guests
@pytest.mark.parametrize("path, kinds", [
    (INVADERS, {"popf"}),
    (TBOOT, {"pushf", "popf", "iret", "mov sreg", "push cs", "pop ds", "pop ss", "jmp far", "call far", "sgdt",
             "sidt", "str"}),
])
def test_scan_counts_equal_objdump(path, kinds, tmp_path):
    """Per kind, the violating sites equal objdump's instructions of the kinds the profile's
    classification marks as violations (objdump without tboot's separate symbol file, so the
    scan gets none either), the 66/67-prefixed ones included (they have forms of their own)."""
    need(path)
    g = load_guest(path)
    rep = P.scan_guest(g, "pentium")
    cs, _ = P.classifications("pentium", [f.name for f in isa.FORMS])
    wanted = {signature(c.form.asm) for c in cs.values() if P.violation(c)}
    assert None not in wanted
    ours = collections.Counter(signature(s.asm) for s in rep.sites if signature(s.asm))
    # the rest are x87 instructions, sensitive to CR0.EM/TS (FLDZ, FNINIT)
    assert {s.mnemonic for s in rep.sites if not signature(s.asm)} <= {"fldz", "fninit"}
    theirs, sized = objdump_violations(path, [s.name for s in g.sections], wanted, tmp_path)
    assert ours == theirs + sized
    assert set(ours) == kinds
    assert all(s.classes and "undecided" not in s.classes for s in rep.sites)


@pytest.mark.guests
def test_tboot_scan_with_symbols_and_sarif(capsys):
    need(TBOOT, TBOOT_SYMS)
    rc, out, err = cli(capsys, "scan", TBOOT, "--symbols", TBOOT_SYMS, "--format", "sarif")
    assert rc == 1, err
    run = assert_valid_sarif(json.loads(out))["runs"][0]
    errors = [r for r in run["results"] if r["level"] == "error"]
    reviews = [r for r in run["results"] if r["kind"] == "review"]
    # 330 + tboot's 66-prefixed MOV from CS/SS and far JMPs + 9 x87 instructions (derived forms,
    # #NM/#UD from CR0.EM/TS); nothing is unmodelled
    assert len(errors) == 344 and reviews == []
    # gzip: the artifact's bytes are not the image's, so no byte region, only the address
    assert all("region" not in r["locations"][0]["physicalLocation"] for r in errors)
    names = {r["locations"][0]["physicalLocation"]["address"]["name"] for r in errors}
    assert any(n.startswith("idt_table+") for n in names) and all("+" in n or n.isidentifier() for n in names)


@pytest.mark.guests
def test_invaders_patch_and_check_patch_hold(capsys, tmp_path):
    need(INVADERS)
    out, man = patched(tmp_path, INVADERS)                 # its speed: bench/scan.py
    rc, doc = check_json(capsys, out, "--manifest", man)
    assert rc == 0 and doc["verdict"] == "holds", failing(doc)
    m = json.loads(man.read_text())
    assert [(s["address"], s["form"], s["original"], s["replacement"]) for s in m["sites"]] == \
        [(0x10002B, "popfd", "9d", "f4")]
    a, b = INVADERS.read_bytes(), out.read_bytes()
    assert [i for i in range(len(a)) if a[i] != b[i]] == [m["sites"][0]["file_offset"]]
    od = subprocess.run([need_objdump(), "-d", str(out)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"10002b:\s+f4\s+hlt", od)
    rc, text, _ = cli(capsys, "check-patch", out, "--manifest", man)   # text output, same verdict
    assert rc == 0
    assert "[pentium]" in " ".join(text.split())      # regression: the title went through markup


@pytest.mark.guests
def test_invaders_unpatched_fails_naming_its_site(capsys, tmp_path):
    need(INVADERS)
    out, man = patched(tmp_path, INVADERS)
    rc, doc = check_json(capsys, INVADERS, "--manifest", man)
    assert rc == 1
    msgs = failing(doc)
    assert any("0x10002b" in x and "holds the original bytes" in x for x in msgs)
    assert any("popfd" in x and "0x10002b" in x and "still there" in x for x in msgs)
    rc, out_text, _ = cli(capsys, "check-patch", INVADERS, "--manifest", man)
    assert rc == 1 and "FAILS" in out_text


@pytest.mark.guests
def test_tboot_patch_with_xen_allow_list(capsys, tmp_path):
    """tboot (gzip, symbols): patched but for SGDT/SIDT, as Xen PV leaves them; every other site
    proved; the output stays gzip and only site bytes change."""
    need(TBOOT, TBOOT_SYMS)
    out, man = patched(tmp_path, TBOOT, "--symbols", TBOOT_SYMS, "--allow", "sgdt_m", "sidt_m")
    m = json.loads(man.read_text())
    assert len(m["sites"]) == 342 and not {"sgdt_m", "sidt_m"} & {s["form"] for s in m["sites"]}
    assert {"mov_r16_cs", "mov_r16_ss", "jmp_far_ptr16", "jmp_far_m16"} <= {s["form"] for s in m["sites"]}
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    rc, doc = check_json(capsys, out, "--manifest", man, "--allow", "sgdt_m", "sidt_m")
    assert rc == 0, failing(doc)[:3]
    assert sum(s["proof"] == "holds" for s in doc["sites"]) == 342
    assert sorted(s["form"] for s in doc["allowed"]) == ["sgdt_m", "sidt_m"]
    # every decodable instruction is modelled: the undecodable bytes alone are outside, reported
    [cov] = [o for o in doc["obligations"] if o["claim"] == "coverage"]
    assert cov["status"] == "outside" and doc["coverage"]["unmodelled"] == 0 and "undecodable" in cov["message"]
    assert doc["coverage"]["undecodable"] == cov["detail"]["undecodable"] > 0
    rem = next(o for o in doc["obligations"] if o["claim"] == "remaining")
    assert rem["status"] == "holds" and "modelled" not in rem["message"]
    rc, doc = check_json(capsys, out, "--manifest", man, "--allow", "sgdt_m", "sidt_m", "--strict")
    # --strict: unmodelled instructions are unknown, and the executable data (.rodata, .eh_frame,
    # ... in tboot's RWE segment) is swept as code, where data decodes as sensitive instructions
    assert rc == 1 and doc["verdict"] == "fails"
    assert next(o for o in doc["obligations"] if o["claim"] == "coverage")["status"] == "unknown"
    left = [o for o in doc["obligations"] if o["claim"] == "remaining" and o["status"] == "fails"]
    assert left and all(not o["section"].startswith(".text") for o in left)
