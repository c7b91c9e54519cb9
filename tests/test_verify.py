"""The verifier against the literature (oracles only here, never in a verdict) and its own rules."""

import dataclasses
import json
import subprocess
import sys

import pytest
import z3

from pgvirt.model import isa, state as st
from pgvirt.model.encoding import matches
from pgvirt.model.outcome import GP
from pgvirt.verify import literature
from pgvirt.verify.popek_goldberg import CLASSES, classify, recheck, theorem
from pgvirt.report.documents import departures

UMIP_FIVE = {"SGDT", "SIDT", "SLDT", "SMSW", "STR"}


def violations(results, number="1"):
    return theorem(number, results).violations


def test_pentium_violations_cover_every_robin_irvine_mnemonic(classified):
    found = {literature.robin_irvine_entry(c.form.mnemonic, c.form.asm)
             for c in violations(classified("pentium"))}
    wanted = {e[2] for e in literature.ROBIN_IRVINE}
    assert wanted <= found, f"not derived: {sorted(wanted - found)}"


def test_pentium_violations_include_every_16_bit_robin_irvine_form(classified):
    """The 66-prefixed forms of the paper's instructions: every paper entry (INT n has no 16-bit
    form) has 16-bit forms among the violations, and each 16-bit form is a violation exactly
    when its 32-bit sibling is (the sibling is iced-x86's code of the bytes without the 66)."""
    iced = pytest.importorskip("iced_x86")
    bad = {c.form.name for c in violations(classified("pentium"))}
    forms16 = [f for f in isa.FORMS if f.enc.osize == 16
               and literature.robin_irvine_entry(f.mnemonic, f.asm)]
    words = {literature.robin_irvine_entry(f.mnemonic, f.asm) for f in forms16 if f.name in bad}
    assert words == {e[2] for e in literature.ROBIN_IRVINE} - {"INT n"}

    def code(raw):
        return iced.Decoder(32, raw + bytes(8)).decode().code

    for f in forms16:
        rest = f.bytes[1:] + bytes(8)
        (sib,) = [g.name for g in isa.FORMS if g.enc.osize == 32 and code(g.bytes) == code(rest)
                  and matches(g.enc, rest) is not None]
        assert (f.name in bad) == (sib in bad), (f.name, sib)


def test_pentium_theorem1_fails_and_theorem3_fails(classified):
    r = classified("pentium")
    assert theorem("1", r).verdict == "fails"
    assert theorem("3", r).verdict == "fails"


@pytest.mark.parametrize("profile", ["pentium", "umip"])
def test_every_sdm_cpl0_instruction_is_privileged_and_no_violation(classified, profile):
    r = classified(profile)
    bad = {c.form.name for c in violations(r)}
    seen = set()
    for c in r:
        entry = literature.sdm_cpl0_entry(c.form.mnemonic, c.form.asm)
        if entry is None:
            continue
        seen.add(entry)
        assert c["privileged"] is True, f"{c.form.name} not privileged under {profile}"
        assert c.form.name not in bad
    assert seen == {mn if p is None else f"{mn} {p}" for mn, p in literature.SDM_CPL0}


def test_umip_privileges_exactly_the_five_store_instructions(classified):
    pent = {c.form.name for c in violations(classified("pentium"))}
    umip = {c.form.name for c in violations(classified("umip"))}
    gone = pent - umip
    assert {isa.get(n).mnemonic for n in gone} == UMIP_FIVE
    assert umip <= pent
    # the 16-bit operand-size forms move with their 32-bit siblings
    assert {"sgdt_m_o16", "sidt_m_o16", "sldt_r16", "sldt_m_o16", "str_r16", "str_m_o16",
            "smsw_r16", "smsw_m_o16"} <= gone
    for c in classified("umip"):
        if c.form.mnemonic in UMIP_FIVE:
            assert c["privileged"] is True


def test_rdtsc_and_rdpmc_privileged_because_of_the_profile(classified):
    by = {c.form.name: c for c in classified("pentium")}
    for name in ("rdtsc", "rdpmc"):
        assert by[name]["privileged"] is True
    # The same instruction without the monitor's CR4.TSD runs at CPL 3: the witness says so.
    assert isa.get("rdtsc").execute({"cpl": 3, "cr4": 0})


def test_iretd_is_found_beyond_the_paper(classified):
    r = classified("pentium")
    dep = departures(r, theorem("1", r))
    beyond = {d["name"] for d in dep["beyond_the_paper"]}
    assert "iretd" in beyond


def test_ordinary_instructions_are_innocuous(classified):
    ordinary = [c for c in classified("pentium") if c.form.theme == "ordinary"]
    assert len(ordinary) >= 25
    for c in ordinary:
        assert c["innocuous"] is True, (c.form.name, {k: c[k] for k in CLASSES})


@pytest.mark.parametrize("profile", ["pentium", "umip"])
def test_every_witness_replays_on_the_semantics(classified, profile):
    checked = 0
    for c in classified(profile):
        for cls in ("privileged", "control_sensitive", "mode_sensitive", "location_sensitive"):
            a = c.answers[cls]
            if a.witness is not None:
                assert recheck(c, cls), f"{c.form.name} {cls} witness does not hold concretely"
                checked += 1
    assert checked > 50


def test_no_class_is_unknown(classified):
    for p in ("pentium", "umip"):
        for c in classified(p):
            assert all(c[k] is not None for k in CLASSES), c.form.name


def test_an_altered_definition_changes_the_derived_classification():
    """SGDT made to fault at CPL > 0 must become privileged: nothing is looked up."""
    real = isa.get("sgdt_m")

    def sgdt_faulting(x):
        x.require(x.cpl == 0, GP, 0, "altered: SGDT needs CPL 0")
        real.semantics(x)

    altered = dataclasses.replace(real, semantics=sgdt_faulting)
    before, after = classify(real, "pentium"), classify(altered, "pentium")
    assert before["privileged"] is False and before["sensitive"] is True
    assert after["privileged"] is True
    assert theorem("1", [after]).verdict == "holds"
    assert theorem("1", [before]).verdict == "fails"


def test_an_altered_innocuous_instruction_becomes_sensitive():
    """NOP that leaks CPL into EAX must be found mode sensitive."""
    nop = isa.get("nop")

    def leaky(x):
        x.write("eax", z3.ZeroExt(30, x.cpl))

    c = classify(dataclasses.replace(nop, semantics=leaky), "pentium")
    assert c["mode_sensitive"] is True and c["privileged"] is False


def test_witnesses_are_complete_states():
    c = classify("sgdt_m", "pentium")
    w = c.answers["location_sensitive"].witness
    for label in ("a", "b"):
        s = w[label]
        assert set(s) == {f.name for f in st.FIELDS}
        assert s["mem"], "the bytes the form touches are listed"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pgvirt", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_version_names_the_solver_and_the_tools():
    from importlib.metadata import version
    p = run_cli("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"pgvirt {version('pgvirt')} ") and version("z3-solver") in p.stdout


def test_cli_classify_json_shape():
    p = run_cli("classify", "--profile", "pentium", "--format", "json", "sgdt_m", "lgdt_m")
    assert p.returncode == 1, p.stderr      # the exit-code table: SGDT makes Theorem 1 fail
    doc = json.loads(p.stdout)
    assert doc["profile"] == "pentium"
    rows = {r["name"]: r for r in doc["instructions"]}
    assert rows["sgdt_m"]["mnemonic"] == "SGDT" and rows["sgdt_m"]["bytes"] == "0f0100"
    assert rows["sgdt_m"]["privileged"] is False and rows["lgdt_m"]["privileged"] is True
    assert set(rows["sgdt_m"]) == {"name", "mnemonic", "asm", "bytes", "code", *CLASSES}
    assert rows["sgdt_m"]["code"] == "SGDT_M1632"


def test_cli_classify_json_lists_derived_forms_with_their_code():
    """A derived form by name: its bytes, asm and the iced-x86 Code they decode to."""
    import iced_x86 as iced
    from pgvirt.guest import decode as D

    p = run_cli("classify", "--format", "json", "add_rm8_r8", "fld1", "popfd")
    assert p.returncode == 1, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)["instructions"]}
    for name, code in (("add_rm8_r8", "ADD_RM8_R8"), ("fld1", "FLD1"), ("popfd", "POPFD")):
        assert rows[name]["code"] == code
        assert D.code_name(iced.Decoder(32, bytes.fromhex(rows[name]["bytes"])).decode().code) == code
    assert rows["add_rm8_r8"]["innocuous"] is True


def test_cli_classify_exit_code_follows_the_theorems():
    """classify prints the theorem verdicts of the forms it classified and exits by them, as the
    README's exit-code table says: privileged and innocuous forms alone hold."""
    assert run_cli("classify", "--format", "json", "lgdt_m", "nop").returncode == 0
    p = run_cli("classify", "popfd")
    assert p.returncode == 1 and p.stdout.startswith("pentium: Theorem 1 fails (1 violations: 1 hand-written)")
    assert "over 1 forms (1 hand-written)" in p.stdout


def test_cli_verify_json_and_exit_code():
    p = run_cli("verify", "--profile", "umip", "--format", "json", "--forms", "hand")
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    t1 = doc["profiles"][0]["theorems"]["1"]
    assert t1["verdict"] == "fails"
    v = t1["violations"][0]
    assert {"name", "mnemonic", "asm", "bytes", "witness"} <= set(v)


class _Asked(Exception):
    pass


@pytest.mark.parametrize("flag, kinds", [([], ("hand_written", "derived")), (["--forms", "hand"], ("hand_written",))])
def test_cli_verify_ranges_over_every_form(monkeypatch, flag, kinds):
    """``verify`` asks for every form, hand-written then derived; ``--forms hand`` for the
    hand-written ones (what is asked is checked, not solved: the whole ISA is a slow test)."""
    from pgvirt.cli import main as cli
    from pgvirt.model.derived import registry
    from pgvirt.verify import popek_goldberg as pg

    asked = []

    def record(profiles, forms, **kw):
        asked.append(list(forms) if forms else [f.name for f in isa.FORMS])   # None: the hand-written
        raise _Asked
    monkeypatch.setattr(pg, "classify_many", record)
    with pytest.raises(_Asked):
        cli.main(["verify", "--profile", "pentium", *flag])
    want = list(registry.names()) if "derived" in kinds else [f.name for f in isa.FORMS]
    assert asked == [want] and {pg.kind(n) for n in asked[0]} == set(kinds)
    assert len(registry.derived_names()) > 3000


def test_cli_a_derived_form_left_undecided_makes_the_theorem_unknown(monkeypatch, capsys):
    """A solver that answers nothing on a derived form: that form is undecided, the theorem
    unknown, exit 2 (a hand-written form decided without the solver stays decided)."""
    from pgvirt.cli import main as cli
    from pgvirt.model.derived import registry
    from pgvirt.verify.solver import Result, Session, Verdict

    assert registry.is_derived("fdiv_m64fp")
    monkeypatch.setattr(registry, "names", lambda: ("add_rm32_r32", "fdiv_m64fp"))
    monkeypatch.setattr(Session, "check", lambda self, c, t, rlimit=0: Result(Verdict.UNKNOWN, None, 0.0, "timeout"))
    rc = cli.main(["verify", "--profile", "pentium", "--format", "json", "--jobs", "1"])
    assert rc == 2
    doc = json.loads(capsys.readouterr().out)["profiles"][0]
    assert doc["forms"] == {"hand_written": 1, "derived": 1}
    t1 = doc["theorems"]["1"]
    assert t1["verdict"] == "unknown" and t1["undecided"] == ["fdiv_m64fp"] and not t1["violations"]


@pytest.mark.slow
def test_cli_verify_whole_isa_reports_every_form(tmp_path):
    """The default ``verify``: Theorems 1 and 3 over all forms, counted by kind in the text, the
    JSON, the JUnit (one case per theorem and form) and the SARIF log (valid)."""
    import xml.etree.ElementTree as ET

    from pgvirt.model.derived import registry
    from helpers import sarif_problems

    j, s = tmp_path / "v.xml", tmp_path / "v.sarif"
    p = run_cli("verify", "--profile", "pentium", "--format", "json", "--junit", str(j), "--sarif", str(s))
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)["profiles"][0]
    n_hand, n_der = len(isa.FORMS), len(registry.derived_names())
    assert doc["forms"] == {"hand_written": n_hand, "derived": n_der}
    t1 = doc["theorems"]["1"]
    assert t1["verdict"] == "fails" and not t1["undecided"]
    kinds = {v["name"]: v["kind"] for v in t1["violations"]}
    assert kinds["popfd"] == "hand_written" and kinds["fdiv_m64fp"] == "derived"    # CR0.EM/TS
    assert t1["violations_by_kind"]["derived"] == sum(k == "derived" for k in kinds.values()) > 0
    root = ET.parse(j).getroot()
    assert len(root.findall("./testsuite/testcase")) == 2 * (n_hand + n_der)
    assert int(root.get("failures")) == len(t1["violations"]) + len(doc["theorems"]["3"]["violations"])
    log = json.loads(s.read_text())
    assert not sarif_problems(log)
    assert len(log["runs"][0]["results"]) == int(root.get("failures"))


@pytest.mark.parametrize("args", [
    ["verify", "--profile", "nosuch"],
    ["verify", "--profile", "pentium", "--timeout-ms", "0"],
    ["verify", "--bogus"],
    ["verify", "--forms", "some"],
    ["classify", "--profile", "pentium", "nosuchform"],
    ["frobnicate"],
    [],
])
def test_cli_bad_input_is_one_line_exit_2(args):
    p = run_cli(*args)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("pgvirt: error:"), p.stderr
    assert "Traceback" not in p.stderr


def test_tiny_timeout_is_unknown_never_proved():
    """A 1 ms budget leaves queries undecided: each answer is unknown or the one the full budget
    gives, never a different one, and an undecided deciding answer makes the theorem unknown.
    (Which queries Z3 still decides within 1 ms depends on the machine's load and on what the
    process solved before, so the test does not insist on a particular one being unknown.)"""
    quick = classify("call_far_m", "pentium", timeout_ms=1)
    full = classify("call_far_m", "pentium")
    assert all(full[k] is not None for k in CLASSES)
    assert all(quick[k] in (None, full[k]) for k in CLASSES)
    for k in CLASSES:
        if quick[k] is None:
            assert quick.answers[k].verdict in ("unknown", "derived")
    th = theorem("1", [quick])
    assert full["sensitive"] is True and full["privileged"] is False      # a violation
    if quick["sensitive"] is None or quick["privileged"] is None:
        assert th.verdict == "unknown" and th.undecided == [quick]
    else:
        assert th.verdict == "fails"


def test_cli_unknown_verdict_exits_2(monkeypatch, capsys):
    """When the solver answers nothing, the verdict is unknown and the CLI fails closed (2)."""
    from pgvirt.cli import main as cli
    from pgvirt.verify.solver import Result, Session, Verdict

    monkeypatch.setattr(Session, "check",
                        lambda self, c, t, rlimit=0: Result(Verdict.UNKNOWN, None, 0.0, "timeout"))
    rc = cli.main(["verify", "--profile", "pentium", "--format", "json", "--jobs", "1", "--forms", "hand"])
    assert rc == 2
    t1 = json.loads(capsys.readouterr().out)["profiles"][0]["theorems"]["1"]
    assert t1["verdict"] == "unknown" and not t1["violations"]
    # Forms whose results cannot differ by construction (no term depends on mode or relocation)
    # need no solver; every other one is left undecided.
    assert "sgdt_m" in t1["undecided"] and "add_rm32_r32" not in t1["undecided"]
