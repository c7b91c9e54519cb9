"""The vtx monitor: VT-x non-root operation simulated on Unicorn, held to native and to the proofs."""

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from helpers import INVADERS, need, tiny_guest, triple_fault_body
from pgvirt import api as joins
from pgvirt.emulator import strategies
from pgvirt.model import events, isa, monitor as mon, profiles, state as st, vmx
from pgvirt.model.concrete import compiled
from pgvirt.model.outcome import BP, BR, DB, DF, GP, OF, UD, Exit
from pgvirt.monitor import api, demo
from pgvirt.monitor.native import Native
from pgvirt.monitor.vtx import ControlsUnsupported, Vtx, exit_predicate
from pgvirt.report import monitor as report

NO_IO_EXITS = {"base": "default", "primary": {"use_io_bitmaps": False}}
DESCRIPTOR_TABLES = {"base": "default", "secondary": {"descriptor_table_exiting": True}}


def _controls(tmp_path, doc, name="c.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


class _CountingNative(Native):
    """Native, counting the HLTs the guest executes (Unicorn stops at each)."""

    halts = 0

    def handle(self, stop):
        if stop.kind == "halt":
            self.halts += 1
        super().handle(stop)


# --- the model: exits as values of the compiled forms ------------------------------------------
def test_compiled_forms_give_exits_under_controls_and_none_on_bare_hardware():
    s = {n: st.FIELD[n].default for n in st.SCALARS}
    s.update(cr0=0x11, eip=0x1000, cs_limit=0xFFFFFFFF, cs_attr=0xC09B)
    out = isa.get("out_imm8_al")
    run = compiled(out, frozenset(), bytes.fromhex("e6e9"), vmx.DEFAULT).evaluate({**s, "mem": {}, "io": {}})
    assert run.fault is None and isinstance(run.exit, Exit)
    assert (run.exit.exit_reason, run.exit.code) == ("io", 30)
    assert compiled(out, frozenset(), bytes.fromhex("e6e9")).evaluate({**s, "mem": {}, "io": {}}).exit is None
    step = mon.emulate(isa.get("hlt"), b"\xf4", {**s, "mem": {}, "io": {}}, vm=vmx.DEFAULT)
    assert step.exit.exit_reason == "hlt" and step.real["eip"] == 0x1000 and not step.mem
    assert not compiled("smsw_r", frozenset(), None, vmx.DEFAULT).may_exit
    assert compiled("cpuid", frozenset(), None, vmx.DEFAULT).may_exit


# Half the ports exit, so IN/OUT DX meet both outcomes; CR0.TS and CR4.PSE owned as well.
HALF = replace(vmx.DEFAULT, io_exits=frozenset(range(0x8000)), cr0_mask=vmx.DEFAULT.cr0_mask | 8,
               cr4_mask=vmx.DEFAULT.cr4_mask | 16, cr4_shadow=16)
EXITING = ["out_imm8_al", "in_al_dx", "out_dx_eax", "outsb", "hlt", "cpuid", "mov_cr0_r",
           "mov_cr4_r", "lmsw_r", "clts", "mov_r_cr0", "smsw_r", "mov_r_dr7", "rdmsr", "wrmsr",
           "rdtsc", "invlpg_m", "vmcall"]


@pytest.mark.parametrize("name", EXITING)
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hst.data())
def test_compiled_forms_under_controls_equal_form_execute(name, data):
    """The compiled form under ``vm`` gives what ``Form.execute(vm=)`` gives: exit, fault or state."""
    form = isa.get(name)
    s = strategies.generate(strategies.DataDraw(data), form, profiles.PENTIUM)
    for ctl in (vmx.DEFAULT, HALF):
        assert compiled(form, frozenset(), None, ctl).run(s) == form.execute(s, vm=ctl)


def test_the_exit_predicate_is_the_forms_exit_conditions():
    exits = exit_predicate(vmx.DEFAULT)
    assert exits(bytes.fromhex("e6e9")) == "out_imm8_al"
    assert exits(b"\xf4") == "hlt" and exits(bytes.fromhex("0fa2")) == "cpuid"
    assert exits(bytes.fromhex("0f01e0")) is None                 # SMSW: the CR0 read shadow
    assert exits(bytes.fromhex("0f010500104000")) is None         # SGDT: the guest's own GDTR
    assert exits(bytes.fromhex("8cc8")) is None                   # MOV from CS
    dt = exit_predicate(vmx.from_json(DESCRIPTOR_TABLES))
    assert dt(bytes.fromhex("0f010500104000")) == "sgdt_m"
    # An immediate port outside the I/O bitmap has no exit condition in that instance.
    few = exit_predicate(replace(vmx.DEFAULT, io_exits=frozenset({0x60})))
    assert few(bytes.fromhex("e460")) == "in_al_imm8" and few(bytes.fromhex("e440")) is None


# --- the demonstration guest ---------------------------------------------------------------------
def test_demo_matches_native_and_its_exits_are_what_its_code_implies(demo_guest):
    c = api.compare(demo_guest, ("vtx",), steps=200_000, input=demo.KEYS)
    (v,) = c.verdicts
    assert v.matches and v.result.end.reason == "halted"
    s = api.Setup(demo_guest, input=demo.KEYS)
    native = _CountingNative(s.image, keys=s.keys, ram_size=s.ram_size)
    ref = native.run(200_000)
    reasons = v.result.counts["exit_reasons"]
    # Every port access is one byte-wide IN/OUT, each an I/O exit under the default's full bitmap;
    # every HLT exits (HLT exiting); every delivered interrupt is an external-interrupt exit.
    assert reasons == {"io": len(ref.record.ports), "hlt": native.halts,
                       "external_interrupt": ref.counts["interrupts"]}
    assert ref.counts["interrupts"] == demo.TICKS_WANTED + 12
    assert native.halts == ref.counts["interrupts"] + 1           # each wait woken, then cli; hlt
    assert v.result.counts["exits"] == sum(reasons.values())
    assert v.result.counts["traps"] == 0 and v.result.counts["patched"] == 0
    exits = [e for e in v.result.record.entries if e.kind == "exit"]
    assert exits and all(e.vcpu["cpl"] == 0 for e in exits)
    assert {e.form for e in exits} == {"out_imm8_al", "in_al_imm8", "hlt", None}
    assert any("qualification 0xe90000" in e.detail for e in exits)      # port 0xE9, OUT, 1 byte


def test_descriptor_table_exiting_adds_its_exits_and_still_matches(demo_guest):
    c = api.compare(demo_guest, ("vtx",), steps=200_000, input=demo.KEYS,
                    controls=vmx.from_json(DESCRIPTOR_TABLES))
    (v,) = c.verdicts
    assert v.matches
    assert v.result.counts["exit_reasons"]["gdtr_idtr"] == 3       # its LGDT, SGDT and LIDT


def test_the_exits_follow_the_controls(demo_guest):
    """Without HLT exiting the HLTs halt the processor (Unicorn) and without external-interrupt
    exiting the interrupts come straight through the guest's IDT: only the I/O exits remain."""
    ctl = vmx.DEFAULT.without("hlt_exiting").without("external_interrupt_exiting")
    c = api.compare(demo_guest, ("vtx",), steps=200_000, input=demo.KEYS, controls=ctl)
    (v,) = c.verdicts
    assert v.matches
    assert v.result.counts["exit_reasons"] == {"io": len(c.reference.record.ports)}


def test_io_exiting_switched_off_diverges_and_the_verdict_names_the_control(demo_guest):
    ctl = vmx.from_json(NO_IO_EXITS)
    c = api.compare(demo_guest, ("vtx",), steps=200_000, input=demo.KEYS, controls=ctl,
                    explain=lambda d: joins.explain_divergence(d, witness=False, controls=ctl))
    (v,) = c.verdicts
    d = v.divergence
    assert d is not None and (d.form, d.code) == ("out_imm8_al", bytes.fromhex("e6e9"))
    assert d.differs["ports"]["vtx"] is None          # the OUT reached the physical port instead
    e = d.explanation
    assert e is not None and not c.unexplained
    assert "use_io_bitmaps" in e["controls"] and "use_io_bitmaps" in e["reason"]
    assert e["classes"] and e["profile"].startswith("vtx")


def test_a_root_privileged_form_leaves_a_vtx_divergence_unexplained():
    """Under the default every OUT exits: a divergence there is a bug, not a verdict."""
    div = {"monitor": "vtx", "form": "out_imm8_al"}
    assert joins.explain_divergence(div, witness=False, controls=vmx.DEFAULT) is None


# --- the exception bitmap: the guest's own exceptions ---------------------------------------------
def _bitmap(*vectors):
    return replace(vmx.DEFAULT, exception_bitmap=sum(1 << v for v in vectors))


@pytest.mark.parametrize("vectors, want", [
    ((), {}),
    ((BP,), {"#BP": 1}),                                   # INT3 only: INT 3 is INT n
    ((OF,), {"#OF": 1}),                                   # the INTO with OF = 1 only
    ((DB, BP, OF, BR, UD), {"#DB": 1, "#BP": 1, "#OF": 1, "#BR": 1, "#UD": 1}),
])
def test_the_exception_bitmap_decides_the_guests_exception_exits(exceptions_guest, vectors, want):
    c = api.compare(exceptions_guest, ("vtx",), steps=10_000, controls=_bitmap(*vectors))
    (v,) = c.verdicts
    assert v.matches, v.divergence and v.divergence.as_json()   # re-injected: the guest sees native
    k = v.result.counts
    assert k["exit_vectors"] == want
    assert k["exit_reasons"].get("exception", 0) == sum(want.values())
    exits = [e for e in v.result.record.entries if e.kind == "exit" and e.detail.startswith("exception")]
    assert len(exits) == sum(want.values())
    if BP in vectors:
        (bp,) = [e for e in exits if "qualification 0x3:" in e.detail]
        assert bp.form == "int3" and "interruption information 0x80000603" in bp.detail
        assert report.exit_reasons(v.result).count("#BP 1") == 1
    if DB in vectors:                                      # a privileged software exception, at INT1
        (db,) = [e for e in exits if "0x80000501" in e.detail]
        assert db.eip == next(e.eip for e in exits if "0x80000604" in e.detail) + 1


def test_the_raised_vector_is_the_definitions():
    s = {n: st.FIELD[n].default for n in st.SCALARS}
    s.update(cr0=0x11, eip=0x1000, cs_limit=0xFFFFFFFF, cs_attr=0xC09B, idtr_limit=0xFF,
             mem={}, io={})
    of = {**s, "flags": s["flags"] | 1 << st.OF}
    assert events.raised_vector(isa.get("int3"), b"\xcc", s) == BP
    assert events.raised_vector(isa.get("into"), b"\xce", s) is None
    assert events.raised_vector(isa.get("into"), b"\xce", of) == OF
    assert events.raised_vector(isa.get("int_imm"), b"\xcd\x80", s) == 0x80
    assert events.raised_vector(isa.get("int1"), b"\xf1", s) == DB
    assert "int_imm" not in events.SOFTWARE_EXCEPTIONS     # INT n never consults the bitmap


def test_a_triple_fault_is_an_exit_and_ends_the_run_as_native(tmp_path):
    guest = tiny_guest(tmp_path / "tf.elf", triple_fault_body)
    for ctl, want in ((vmx.DEFAULT, ({"triple_fault": 1}, {})),
                      (_bitmap(BP, GP, DF), ({"triple_fault": 1, "exception": 3},
                                             {"#BP": 1, "#GP": 1, "#DF": 1}))):
        c = api.compare(guest, ("vtx",), steps=1000, controls=ctl)
        (v,) = c.verdicts
        assert v.matches and v.result.end.reason == c.reference.end.reason == "triple fault"
        assert (v.result.counts["exit_reasons"], v.result.counts["exit_vectors"]) == want


# --- grub-invaders ----------------------------------------------------------------------------------
@pytest.mark.guests
def test_grub_invaders_matches_native_under_vtx():
    need(INVADERS)
    c = api.compare(INVADERS, ("vtx",), steps=120_000, input="left space")
    (v,) = c.verdicts
    assert v.matches
    assert v.result.counts["exit_reasons"] == {"io": len(c.reference.record.ports)}
    assert len(c.reference.record.ports) > 1000


# --- the command --------------------------------------------------------------------------------
def test_cli_compare_all_five_monitors(demo_guest, capsys, run_cli):
    rc = run_cli(["run", demo_guest, "--compare", "native,trap,paravirt,scan,vtx", "--steps",
               "200000", "--input", demo.KEYS, "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["unexplained"] == []
    verdicts = {m["monitor"]: m["verdict"] for m in doc["monitors"]}
    assert verdicts == {"trap": "diverged", "paravirt": "match", "scan": "match", "vtx": "match"}
    row = next(r for r in doc["slowdown"] if r["monitor"] == "vtx")
    assert row["exits"] > 0 and row["exit_reasons"].startswith("io ")


def test_cli_switched_off_control_is_named(demo_guest, tmp_path, capsys, run_cli):
    path = _controls(tmp_path, NO_IO_EXITS)
    rc = run_cli(["run", demo_guest, "--compare", "vtx", "--controls", path, "--steps", "200000",
               "--input", demo.KEYS])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "FIRST DIVERGENCE" in out and "'use_io_bitmaps'" in out and "UNEXPLAINED" not in out


def test_cli_bad_controls_are_one_line_exit_2(demo_guest, tmp_path, capsys, run_cli):
    bad = [
        {"primary": {"nosuch_exiting": True}},                       # an unknown control
        {"primary": 1 << 0},                                        # reserved bit, default1 cleared
        {"base": "default", "secondary": {"unrestricted_guest": False}},   # paging would be forced
        {"base": "default", "cr0_mask": 0},                         # CR0.NE would show
        {"base": "default", "primary": {"monitor_trap_flag": True}},
    ]
    for k, doc in enumerate(bad):
        argv = ["run", demo_guest, "--monitor", "vtx", "--controls", _controls(tmp_path, doc, f"b{k}.json")]
        assert run_cli(argv) == 2, doc
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("pgvirt") and "Traceback" not in err, err
    notjson = tmp_path / "x.json"
    notjson.write_text("{")
    for argv in (["run", demo_guest, "--monitor", "vtx", "--controls", str(notjson)],
                 ["run", demo_guest, "--monitor", "vtx", "--controls", str(tmp_path / "missing")],
                 ["run", demo_guest, "--monitor", "native", "--controls", _controls(tmp_path, NO_IO_EXITS)]):
        assert run_cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err


def test_vtx_refuses_what_it_cannot_simulate(demo_guest):
    s = api.Setup(demo_guest)
    with pytest.raises(ControlsUnsupported, match="unrestricted guest"):
        Vtx(s.image, vmx.DEFAULT.without("unrestricted_guest"))
