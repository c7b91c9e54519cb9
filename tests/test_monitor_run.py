"""pgvirt run: the loader, the monitors on real and generated guests, lock step, the CLI."""

import json
import struct

import pytest

from helpers import INVADERS, need, tiny_guest, tiny_program, triple_fault_body
from pgvirt import api as joins
from pgvirt.monitor import api, demo, multiboot
from pgvirt.cli import run as mcli
from pgvirt.monitor.demo import EAX, ECX, EDX, ESI

@pytest.fixture(scope="module")
def predicate():
    return joins.monitor_sensitive("pentium")


def _write(tmp_path, body, name="t.elf"):
    return tiny_guest(tmp_path / name, body)


# --- the loader --------------------------------------------------------------------------------
@pytest.mark.guests
def test_loader_reads_grub_invaders_address_fields():
    need(INVADERS)
    img = multiboot.load(INVADERS, 8 << 20)
    assert img.entry == 0x100024 and img.flags & 0x10000
    (seg,) = img.segments
    assert (seg.address, len(seg.data), seg.size) == (0x100000, 0x19D8, 0x5B50)
    assert img.state["eax"] == multiboot.BOOTLOADER_MAGIC and img.state["ebx"] == multiboot.INFO_AT
    assert img.state["cpl"] == 0 and not img.state["sysflags"] & 0x200


def test_loader_reads_elf_program_headers(demo_guest):
    img = multiboot.load(demo_guest, 8 << 20)
    assert not img.flags & 0x10000 and img.entry == demo.TEXT
    assert [s.address for s in img.segments] == [demo.LOAD, demo.TEXT, demo.DATA]
    info = img.boot[multiboot.INFO_AT]
    flags, lower, upper = struct.unpack_from("<III", info)
    assert flags & 1 and (lower, upper) == (639, 7 * 1024)


def test_loader_refuses_bad_guests(tmp_path, demo_guest):
    with pytest.raises(multiboot.LoadError, match="not a multiboot kernel"):
        multiboot.load("/etc/passwd", 8 << 20)
    data = open(demo_guest, "rb").read()
    cut = tmp_path / "cut.elf"
    cut.write_bytes(data[:0x2100])
    with pytest.raises(multiboot.LoadError, match="truncated"):
        multiboot.load(cut, 8 << 20)
    bad = bytearray(data)
    bad[0x1008] ^= 1                                   # the checksum no longer adds up
    (tmp_path / "bad.elf").write_bytes(bad)
    with pytest.raises(multiboot.LoadError, match="not a multiboot kernel"):
        multiboot.load(tmp_path / "bad.elf", 8 << 20)
    with pytest.raises(multiboot.LoadError, match="beyond"):
        multiboot.load(demo_guest, 1 << 20)


# --- grub-invaders ------------------------------------------------------------------------------
@pytest.mark.guests
def test_native_grub_invaders_draws_the_invaders_and_reads_the_keys():
    need(INVADERS)
    r = api.run(INVADERS, "native", steps=2_500_000, input="left*4 space")
    rows = r.record.frames[-1][1].rows()
    assert sum(row.count("-*-") for row in rows) >= 20             # the invaders
    assert any("/ \\" in row for row in rows)                      # the ship
    assert any("|" in row for row in rows[10:23])                  # its shot
    assert r.end.reason == "steps" and r.end.error                 # it plays forever
    ports = {p for _t, p, _o, _v in r.record.ports}
    assert {0x40, 0x43, 0x60, 0x64, 0x3D4}.issubset(ports)


@pytest.mark.guests
def test_grub_invaders_matches_native_under_every_monitor(predicate, tmp_path):
    need(INVADERS)
    c = api.compare(INVADERS, ("trap", "paravirt", "scan"), steps=60_000, input="left space",
                    sensitive=predicate, paravirt=joins.monitor_patch(str(INVADERS), str(tmp_path)))
    assert [(v.monitor, v.matches) for v in c.verdicts] == [("trap", True), ("paravirt", True),
                                                            ("scan", True)]
    traps = {v.monitor: v.result.counts for v in c.verdicts}
    assert traps["paravirt"]["hypercalls"] == 1 and traps["scan"]["patched"] == 1
    assert traps["trap"]["traps"] == len(c.reference.record.ports)   # every port access traps


# --- the demonstration guest --------------------------------------------------------------------
def test_demo_finishes_natively(demo_guest):
    r = api.run(demo_guest, "native", steps=200_000, input=demo.KEYS)
    assert (r.end.reason, r.end.error) == ("halted", False)
    rows = r.record.frames[-1][1].rows()
    assert rows[2].startswith("CS.RPL  = 0") and "done: every tick arrived" in rows[13]
    assert "19 22 2F 17 13 14" in rows[11]                          # p g v i r t
    assert r.counts["interrupts"] == demo.TICKS_WANTED + 12          # a press and a release each
    assert b"done: every tick arrived" in bytes(r.record.console)


def test_demo_trap_diverges_at_the_first_robin_irvine_instruction(demo_guest, predicate, tmp_path):
    c = api.compare(demo_guest, ("trap", "paravirt", "scan"), steps=200_000, input=demo.KEYS,
                    sensitive=predicate, paravirt=joins.monitor_patch(demo_guest, str(tmp_path)),
                    explain=lambda d: joins.explain_divergence(d, witness=False))
    trap, para, scan = c.verdicts
    assert para.matches and scan.matches
    d = trap.divergence
    assert (d.form, d.asm, d.code) == ("mov_r_cs", "mov eax, cs", b"\x8c\xc8")
    assert d.differs["fields"] == [{"field": "eax", "native": 0x08, "trap": 0x0B}]
    assert d.before["eax"] != 0x0B and d.before["cs"] == 0x08
    assert d.explanation["classes"] == ["mode_sensitive"]
    assert not c.unexplained
    # and POPFD's lost IF: the trap monitor never sees the ticks the kernel waits for
    assert trap.result.counts["interrupts"] == 0 and trap.result.end.reason == "halted"


def test_the_guests_own_exceptions_natively(exceptions_guest):
    """Native delivers each through the guest's IDT: INT1 as the #DB trap it is (Unicorn's #UD
    is the deviation int1-as-ud), INT 3 as INT n, INTO only with OF = 1."""
    r = api.run(exceptions_guest, "native", steps=10_000)
    assert (r.end.reason, r.end.error) == ("halted", False)
    assert bytes(r.record.console) == b"BBODURE"
    assert r.record.frames[-1][1].rows()[0].startswith("BBODUR")


def test_the_deprivileged_monitors_deliver_the_guests_exceptions_as_native(exceptions_guest,
                                                                            predicate, tmp_path):
    """Unicorn's #UD for INT1 at CPL 3 is judged by the form there too (it had stayed #UD)."""
    c = api.compare(exceptions_guest, ("trap", "paravirt", "scan"), steps=10_000,
                    sensitive=predicate,
                    paravirt=joins.monitor_patch(exceptions_guest, str(tmp_path)))
    for v in c.verdicts:
        assert v.matches, (v.monitor, v.divergence and v.divergence.as_json())
        assert bytes(v.result.record.console) == b"BBODURE"


def test_unexplained_divergence_is_reported(demo_guest):
    c = api.compare(demo_guest, ("trap",), steps=100_000, explain=lambda d: None)
    assert [v.monitor for v in c.unexplained] == ["trap"]


# --- the scan monitor's machinery, on a generated guest ---------------------------------------
def _tricky(a, i, d):
    """Reads the bytes of a function holding PUSHFD (a site scan patches), rewrites the
    immediate of a MOV in its own code page and runs it, and reaches SMSW only through RET."""
    i("mov_r32_imm32", reg=ESI, imm="flags_fn")
    i("mov_r32_imm32", reg=ECX, imm=4)
    i("xor_rm32_r32", reg=EAX, rm=EAX)
    a.label("sum")
    i("movzx_r32_rm8", reg=EDX, mem=(ESI, 0))
    i("add_rm32_r32", reg=EDX, rm=EAX)
    i("inc_r32", reg=ESI)
    i("dec_r32", reg=ECX)
    i("jne_rel8", imm="sum")
    i("out_imm8_al", imm=0xE9)
    i("call_rel32", imm="flags_fn")
    i("mov_r32_imm32", reg=EAX, imm=0x41)
    i("mov_rm32_r32", reg=EAX, mem="smc_imm")          # self-modifying code
    i("call_rel32", imm="smc_fn")
    i("push_imm32", imm="back")
    i("push_imm32", imm="hidden_fn")
    i("ret_near")                                      # an indirect transfer scan cannot follow
    a.label("back")
    i("jmp_rel32", imm="done")
    a.label("flags_fn")
    i("pushfd")
    i("pop_r32", reg=EAX)
    i("out_imm8_al", imm=0xE9)
    i("ret_near")
    a.label("smc_fn")
    a.here("smc_imm", 1)
    i("mov_r32_imm32", reg=EAX, imm=0x30)
    i("out_imm8_al", imm=0xE9)
    i("ret_near")
    a.label("hidden_fn")
    i("smsw_r", rm=EAX)
    i("out_imm8_al", imm=0xE9)
    i("ret_near")
    a.label("done")


def test_scan_sees_self_modifying_code_reads_of_its_patches_and_hidden_entries(tmp_path, predicate):
    guest = _write(tmp_path, _tricky)
    native = api.run(guest, "native", steps=10_000)
    assert native.end.reason == "halted"
    out = bytes(native.record.console)
    assert out[2:] == bytes([0x41, 0x11])              # the rewritten MOV; SMSW's PE|ET
    c = api.compare(guest, ("scan",), steps=10_000, sensitive=predicate)
    (scan,) = c.verdicts
    assert scan.matches, scan.divergence and scan.divergence.as_json()
    k = scan.result.counts
    assert k["rescans"] >= 1 and k["patched"] >= 2      # PUSHFD and SMSW trapped, page rescanned


def test_triple_fault_ends_the_run_with_the_address(tmp_path):
    guest = _write(tmp_path, triple_fault_body)
    r = api.run(guest, "native", steps=1000)
    assert r.end.reason == "triple fault" and r.end.error
    assert "int3 (cc)" in r.end.line() and "#DF" in r.end.line()


# --- the CLI --------------------------------------------------------------------------------------
def test_cli_run_and_compare_exit_codes(demo_guest, tmp_path, capsys, run_cli):
    assert run_cli(["run", demo_guest, "--steps", "200000"]) == 0
    assert "CS.RPL  = 0" in capsys.readouterr().out
    rc = run_cli(["run", demo_guest, "--compare", "trap,paravirt,scan", "--steps", "200000",
                    "--format", "json", "--screens", str(tmp_path / "shots")])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["unexplained"] == []
    verdicts = {m["monitor"]: m["verdict"] for m in doc["monitors"]}
    assert verdicts == {"trap": "diverged", "paravirt": "match", "scan": "match"}
    assert [r["monitor"] for r in doc["slowdown"]] == ["native", "trap", "paravirt", "scan"]
    assert (tmp_path / "shots" / "compare-final.png").is_file()
    assert any(p.name.startswith("native-tick") for p in (tmp_path / "shots").iterdir())
    no_verdicts = mcli.Services(sensitive=joins.monitor_sensitive, patch=joins.monitor_patch,
                                explain=lambda d, p: None)
    assert run_cli(["run", demo_guest, "--compare", "trap", "--steps", "100000"], no_verdicts) == 1


def test_cli_bad_input_is_one_line_exit_2(tmp_path, demo_guest, capsys, run_cli):
    cases = [["run", "/etc/passwd"], ["run", str(tmp_path / "missing.elf")],
             ["run", demo_guest, "--input", "nosuchkey"], ["run", demo_guest, "--steps", "0"],
             ["run", demo_guest, "--monitor", "scan"], ["run", demo_guest, "--steps", "300"],
             ["run", demo_guest, "--monitor", "trap", "--profile", "nosuch"],
             ["run", demo_guest, "--monitor", "trap", "--profile", "umip"]]
    for argv in cases:
        rc = run_cli(argv, mcli.Services()) if "scan" in argv else run_cli(argv)
        assert rc == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("pgvirt") and "Traceback" not in err, err
    # past --steps: the address and the instruction there
    run_cli(["run", demo_guest, "--steps", "300"])
    err = capsys.readouterr().err
    assert "ran past --steps 300; at 0x10" in err


def test_demo_guest_command(tmp_path, capsys, run_cli):
    out = tmp_path / "d.elf"
    assert run_cli(["demo-guest", str(out)]) == 0
    assert multiboot.load(out, 8 << 20).entry == demo.TEXT
    assert run_cli(["demo-guest", str(tmp_path / "no" / "d.elf")]) == 2


def test_the_pgvirt_command_has_run(tmp_path, demo_guest):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "pgvirt", "run", demo_guest, "--steps", "200000",
                        "--format", "json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["end"]["reason"] == "halted"


def test_sensitive_predicate_names_violations_only(predicate):
    assert predicate(b"\x9d") == "popfd" and predicate(b"\x8c\xc8") == "mov_r_cs"
    assert predicate(b"\x90") is None and predicate(b"\xf4") is None    # HLT is privileged


def test_an_ldt_selector_under_trap_ends_the_run_in_one_line(tmp_path):
    from pgvirt.emulator import states as L
    ldt = demo.BSS                                      # the guest writes its LDT there
    entry = L.descriptor(0, 0xFFFFFFFF, L.data_attr(0))

    def body(a, i, d):
        d.align(8)
        d.label("gdt")
        d.bytes(bytes(8) + L.descriptor(0, 0xFFFFFFFF, L.code_attr(0))
                + L.descriptor(0, 0xFFFFFFFF, L.data_attr(0)) + L.descriptor(ldt, 0xF, L.LDT_ATTR))
        d.label("gdtr")
        d.bytes(struct.pack("<HI", 4 * 8 - 1, 0))       # base filled below
        i("mov_r32_imm32", reg=EAX, imm="gdt")
        i("mov_rm32_r32", reg=EAX, mem="gdtr_base_at")
        i("lgdt_m", mem="gdtr")
        for k in range(2):
            i("mov_rm32_imm32", mem=ldt + 8 + 4 * k, imm=int.from_bytes(entry[4 * k:4 * k + 4], "little"))
        i("mov_r32_imm32", reg=EAX, imm=0x18)
        i("lldt_r", rm=EAX)
        i("mov_r32_imm32", reg=EAX, imm=0x0C)          # TI = 1: index 1 of the LDT
        i("mov_ds_r", rm=EAX)
        i("out_imm8_al", imm=0xE9)

    def program(a, d):
        tiny_program(body)(a, d)
        a.labels["gdtr_base_at"] = d.labels["gdtr"] + 2
    guest = demo.write(tmp_path / "ldt.elf", program)
    native = api.run(guest, "native", steps=100)
    assert native.end.reason == "halted" and bytes(native.record.console) == b"\x0c"
    r = api.run(guest, "trap", steps=100)
    assert (r.end.reason, r.end.error) == ("unsupported", True) and "LDT" in r.end.message
    assert "mov" in r.end.where or "out" in r.end.where
