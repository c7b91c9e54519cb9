"""CI artefacts: JUnit XML, SARIF 2.1.0, and SMT-LIB export re-checked by cvc5."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pgvirt.model import isa
from pgvirt.report import files, junit, sarif
from helpers import assert_valid_sarif
from pgvirt.cli.main import main
from pgvirt.verify.popek_goldberg import Answer, classify_all, theorem

# Violations under pentium only (sgdt_m, smsw_r, str_r), under both (mov_r_cs), never
# (lgdt_m, lmsw_r privileged; add/nop innocuous).
FORMS = ["sgdt_m", "smsw_r", "str_r", "mov_r_cs", "lgdt_m", "lmsw_r", "add_rm32_r32", "nop"]
PROFILES = ["pentium", "umip"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def per():
    return [(p, classify_all(p, FORMS)) for p in PROFILES]


def _violating(per) -> set[tuple[str, str, str]]:
    return {(p, n, c.form.name) for p, r in per for n in ("1", "3") for c in theorem(n, r).violations}


# --- JUnit ---------------------------------------------------------------------------------------

def test_junit_one_case_per_profile_theorem_form(per, tmp_path):
    path = tmp_path / "r.xml"
    files.write_verify_reports(per, str(path), None)
    root = ET.parse(path).getroot()
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(PROFILES) * 2 * len(FORMS)
    assert int(root.get("tests")) == len(cases)
    failed = {(tc.get("classname").split(".")[1], tc.get("classname")[-1], tc.get("name"))
              for tc in cases if tc.find("failure") is not None}
    assert failed == _violating(per)
    assert ("pentium", "1", "sgdt_m") in failed and ("umip", "1", "sgdt_m") not in failed
    assert not any(name == "lgdt_m" for _, _, name in failed)
    assert int(root.get("failures")) == len(failed) and root.get("errors") == "0"
    for suite in root.findall("testsuite"):
        assert int(suite.get("tests")) == len(suite.findall("testcase"))
        assert int(suite.get("failures")) == len(suite.findall("testcase/failure"))
    sgdt = root.find("./testsuite[@name='pentium.theorem1']/testcase[@name='sgdt_m']/failure")
    assert "location" in sgdt.get("message") and "runs without a trap" in sgdt.text


def test_junit_time_is_wall_time(per, tmp_path):
    """The root's time is the run's wall clock, not the forms' summed solver time (they were
    solved in parallel); suites carry no invented sum."""
    path = tmp_path / "r.xml"
    files.write_verify_reports(per, str(path), None, wall=1.25)
    root = ET.parse(path).getroot()
    solver = sum(c.seconds for _, r in per for c in r)
    assert root.get("time") == "1.250" and abs(solver - 1.25) > 0.01
    assert all(s.get("time") is None for s in root.findall("testsuite"))


def _with_unknown(per):
    """``per`` with umip's nop left undecided, as a timed-out solver would leave it."""
    out = copy.deepcopy(per)
    nop = next(c for c in out[1][1] if c.form.name == "nop")
    for cls in ("sensitive", "user_sensitive"):
        nop.answers[cls] = Answer(cls, None, "derived", note="a part is unknown")
    nop.answers["privileged"] = Answer("privileged", None, "unknown", note="timeout")
    return out


def test_unknown_is_an_error_never_a_pass(per):
    root = junit.junit(_with_unknown(per)).getroot()
    errors = root.findall("./testsuite[@name='umip.theorem1']/testcase[@name='nop']/error")
    assert len(errors) == 1 and "no answer" in errors[0].get("message")
    assert root.get("errors") == "2"   # theorems 1 and 3
    doc = sarif.sarif(_with_unknown(per))
    opened = [r for r in doc["runs"][0]["results"] if r["kind"] == "open"]
    assert {(r["properties"]["theorem"], r["level"]) for r in opened} == {("1", "none"), ("3", "none")}


# --- SARIF ---------------------------------------------------------------------------------------

def test_sarif_structure(per, tmp_path):
    path = tmp_path / "r.sarif"
    files.write_verify_reports(per, None, str(path))
    doc = assert_valid_sarif(json.loads(path.read_text()))
    assert doc["version"] == "2.1.0" and "sarif" in doc["$schema"]
    (run,) = doc["runs"]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids))
    assert set(ids) == {f"pgvirt/{f}" for _, _, f in _violating(per)}
    assert len(run["results"]) == len(_violating(per))
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["kind"] == "fail" and res["level"] == "error" and res["message"]["text"]
        loc = res["locations"][0]["physicalLocation"]
        src = ROOT / loc["artifactLocation"]["uri"]
        # The region points at the form's definition in the model source.
        lines = src.read_text().splitlines()
        name = res["ruleId"].split("/")[1]
        near = "\n".join(lines[max(0, loc["region"]["startLine"] - 8):loc["region"]["startLine"]])
        assert f'"{name}"' in near
        assert res["properties"]["witness"]["sensitive"]
    fps = [r["partialFingerprints"]["pgvirtCase/v1"] for r in run["results"]]
    assert len(fps) == len(set(fps))


def test_cli_verify_writes_both_reports(tmp_path, capsys):
    j, s = tmp_path / "v.xml", tmp_path / "v.sarif"
    rc = main(["verify", "--profile", "umip", "--format", "json", "--forms", "hand", "--junit", str(j),
               "--sarif", str(s)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1   # x86 fails Theorem 1 even with UMIP
    root = ET.parse(j).getroot()
    assert len(root.findall("./testsuite/testcase")) == 2 * len(isa.FORMS)
    th = doc["profiles"][0]["theorems"]
    assert int(root.get("failures")) == len(th["1"]["violations"]) + len(th["3"]["violations"])
    results = assert_valid_sarif(json.loads(s.read_text()))["runs"][0]["results"]
    assert len(results) == int(root.get("failures"))


def test_cli_report_into_missing_directory_is_bad_input(tmp_path, capsys):
    rc = main(["verify", "--profile", "pentium", "--sarif", str(tmp_path / "no" / "x.sarif")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no such directory" in err


# --- SMT-LIB export ---------------------------------------------------------------------------------

QUERIES = ("user_runs", "supervisor_runs", "control", "control_user", "mode", "location", "location_user")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("smt")
    assert main(["export-smt", str(out), "--all-profiles", *FORMS]) == 0
    return out


def _status(path: Path) -> str:
    (st,) = re.findall(r"^\(set-info :status (\w+)\)$", path.read_text(), re.M)
    return st


def _legacy(exported: Path) -> list[Path]:
    """The trap-and-emulate profiles' files (``--all-profiles`` writes vtx/svm too:
    tests/test_hw_reports.py checks theirs)."""
    return sorted(f for p in PROFILES for f in (exported / p).glob("*.smt2"))


def test_export_writes_every_obligation(exported):
    files = _legacy(exported)
    assert len(files) == len(PROFILES) * len(FORMS) * len(QUERIES)
    assert {f.relative_to(exported).as_posix() for f in files} == {
        f"{p}/{f}.{q}.smt2" for p in PROFILES for f in FORMS for q in QUERIES}
    for f in files:
        text = f.read_text()
        assert text.count("(set-logic QF_ABV)") == 1 and text.count("(check-sat)") == 1
        assert _status(f) in ("sat", "unsat")
    # Z3's answers are the classification's: SGDT runs in user mode unless UMIP stops it.
    assert _status(exported / "pentium/sgdt_m.user_runs.smt2") == "sat"
    assert _status(exported / "umip/sgdt_m.user_runs.smt2") == "unsat"
    assert _status(exported / "pentium/lgdt_m.user_runs.smt2") == "unsat"
    assert _status(exported / "pentium/mov_r_cs.mode.smt2") == "sat"
    assert _status(exported / "pentium/nop.control.smt2") == "unsat"


def _cvc5(path: Path) -> str:
    cvc5 = pytest.importorskip("cvc5")
    tm = cvc5.TermManager()
    solver = cvc5.Solver(tm)
    solver.setOption("tlimit-per", "120000")
    sm = cvc5.SymbolManager(tm)
    parser = cvc5.InputParser(solver, sm)
    parser.setFileInput(cvc5.InputLanguage.SMT_LIB_2_6, str(path))
    answers = []
    while True:
        cmd = parser.nextCommand()
        if cmd.isNull():
            break
        out = cmd.invoke(solver, sm)
        if out.strip():
            answers.append(out.strip())
    assert solver.getLogic() == "QF_ABV"
    (answer,) = answers
    return answer


def _sample(files: list[Path], status: str, n: int) -> list[Path]:
    """``n`` files of ``status``, chosen by a hash of their names (deterministic, spread out)."""
    pick = [f for f in files if _status(f) == status]
    pick.sort(key=lambda f: hashlib.sha256(f.name.encode() + f.parent.name.encode()).hexdigest())
    assert len(pick) >= n
    return pick[:n]


def test_cvc5_agrees_on_a_sample(exported):
    files = _legacy(exported)
    sample = _sample(files, "sat", 15) + _sample(files, "unsat", 15)
    answers = {f.relative_to(exported).as_posix(): (_status(f), _cvc5(f)) for f in sample}
    assert all(z3 == cvc for z3, cvc in answers.values()), answers


def test_export_bad_input(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    assert main(["export-smt", str(f), "--profile", "pentium", "nop"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["export-smt", str(tmp_path / "o"), "--profile", "pentium", "no_such_form"]) == 2
    assert "unknown instruction form" in capsys.readouterr().err
    assert main(["export-smt", str(tmp_path / "o"), "--profile", "nosuch", "nop"]) == 2
    assert "unknown profile 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # the one default rule of every command: --profile pentium
    assert main(["export-smt", str(tmp_path / "o"), "nop"]) == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["pentium"]


@pytest.mark.guests
def test_check_patch_writes_junit_and_sarif(tmp_path):
    """check-patch's CI reports: one test case per claim; the unpatched guest's become failures."""
    from pathlib import Path

    from pgvirt.cli.main import main

    invaders = Path("/boot/invaders.exec")
    if not invaders.exists():
        pytest.skip("grub-invaders not installed (tests/setup-guests.sh)")
    out, man = tmp_path / "inv.patched", tmp_path / "inv.json"
    assert main(["patch", str(invaders), "-o", str(out), "--manifest", str(man)]) == 1 or out.exists()
    j, s = tmp_path / "ok.xml", tmp_path / "ok.sarif"
    assert main(["check-patch", str(out), "--manifest", str(man), "--junit", str(j), "--sarif", str(s)]) == 0
    root = ET.parse(j).getroot()
    names = {tc.get("name") for tc in root.iter("testcase")}
    assert int(root.get("tests")) == len(names) >= 4 and root.get("failures") == "0"
    assert any(n.startswith("equivalence.site0") for n in names)
    assert assert_valid_sarif(json.loads(s.read_text()))["version"] == "2.1.0"
    bad = tmp_path / "bad.xml"
    assert main(["check-patch", str(invaders), "--manifest", str(man), "--junit", str(bad)]) == 1
    assert int(ET.parse(bad).getroot().get("failures")) >= 1
