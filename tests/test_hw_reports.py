"""The existing reports under the hardware profiles: JUnit and SARIF of a configuration with a
hole, and the hole queries exported as SMT-LIB with cvc5 agreeing with Z3 on a sample."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pgvirt.model import profiles, svm
from pgvirt.model.derived import registry
from pgvirt.verify.hardware import OBLIGATIONS, HwEngine
from pgvirt.verify.smtlib import export_smt
from pgvirt.verify.solver import smtlib

from helpers import sarif_problems
from test_ci_reports import _cvc5, _status


def test_junit_and_sarif_name_the_hole(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"base": "default", "intercepts": {"cpuid": False}}))
    junit, sarif = tmp_path / "v.xml", tmp_path / "v.sarif"
    p = subprocess.run([sys.executable, "-m", "pgvirt", "verify", "--profile", "svm", "--controls", f,
                        "--jobs", "2", "--forms", "hand", "--junit", junit, "--sarif", sarif], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 1
    failed = [c.get("name") for c in ET.parse(junit).iter("testcase") if c.find("failure") is not None]
    assert failed and all("cpuid" in n for n in failed)
    doc = json.loads(sarif.read_text())
    assert not sarif_problems(doc)
    assert {r["message"]["text"].split(":")[1].split()[0] for r in doc["runs"][0]["results"]} == {"cpuid"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("hwsmt")
    export_smt(out, ["vtx", "svm"], ["cpuid", "hlt", "in_al_dx", "mov_r_cr0", "smsw_r", "pushfd", "rdtsc"],
               jobs=1)
    # and holes: the same obligations without the HLT and IOIO intercepts
    c = profiles.SVM.with_controls(svm.DEFAULT.without("ioio_prot").without("hlt"))
    for name in ("in_al_dx", "hlt"):
        eng = HwEngine(registry.get(name), c)
        for key, q in eng.queries().items():
            if key in OBLIGATIONS:
                r, _ = eng.solve(q)
                status = {"PROVED": "unsat", "REFUTED": "sat"}.get(r.verdict.name, "unknown")
                (out / "holes").mkdir(exist_ok=True)
                (out / "holes" / f"{name}.{key}.smt2").write_text(smtlib(q.formula, status, key))
    return out


def test_export_writes_the_hole_queries(exported):
    names = sorted(p.name for p in (exported / "vtx").glob("*.smt2"))
    assert names[:4] == [f"cpuid.{k}.smt2" for k in sorted(OBLIGATIONS)]
    assert all(_status(p) == "unsat" for p in (exported / "vtx").glob("*.smt2"))
    assert _status(exported / "holes" / "in_al_dx.mode.smt2") == "sat"
    assert _status(exported / "holes" / "hlt.control.smt2") == "sat"


def test_cvc5_agrees_on_a_sample(exported):
    """CPUID's answer is an uninterpreted function, outside the exported QF_ABV logic: left out."""
    def pick(pattern, n):
        return [f for f in sorted(exported.glob(pattern)) if not f.name.startswith("cpuid")][:n]
    files = pick("vtx/*.mode.smt2", 4) + pick("svm/*.control.smt2", 3) + pick("holes/*.smt2", 8)
    answers = {f.relative_to(exported).as_posix(): (_status(f), _cvc5(f)) for f in files}
    assert any(z == "sat" for z, _ in answers.values())
    assert all(z == c for z, c in answers.values()), answers


# --- replay of a configuration's holes on Unicorn (pgvirt replay --profile vtx|svm --controls) ------
HOLES = {"base": "default", "name": "holes", "primary": {"hlt_exiting": False, "use_io_bitmaps": False},
         "secondary": {"wbinvd_exiting": False, "enable_rdtscp": False}}


def _replay(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pgvirt", "replay", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def vtx_holes(tmp_path_factory):
    f = tmp_path_factory.mktemp("hw") / "holes.json"
    f.write_text(json.dumps(HOLES))
    p = _replay("--profile", "vtx", "--controls", f, "--format", "json", "--jobs", "1",
                "hlt", "out_imm8_al", "in_al_imm8", "wbinvd", "rdtscp")
    assert p.returncode == 0, p.stderr
    return {r["name"]: r for r in json.loads(p.stdout)["replays"]}, json.loads(p.stdout)["counts"]


def test_vtx_holes_replay_on_unicorn(vtx_holes):
    """The non-root state and the guest's own machine, each run on Unicorn as bare hardware runs
    it: HLT halts the physical processor, OUT reaches a port the monitor owns, IN reads the
    physical device instead of the guest's - each confirmed on the emulator's own results."""
    reps, counts = vtx_holes
    assert reps["hlt"]["outcome"] == "confirmed" and reps["hlt"]["emulator_criterion"] == [
        "changes monitor-owned halted"]
    assert reps["out_imm8_al"]["outcome"] == "confirmed"
    assert reps["out_imm8_al"]["emulator_criterion"][0].startswith("changes monitor-owned io[")
    assert reps["in_al_imm8"]["emulator_criterion"] == ["visible result differs from the guest's own machine"]
    assert reps["hlt"]["runs"] == {"native": "guest's own machine", "deprivileged": "non-root"}
    assert counts == {"confirmed": 3, "emulator-deviation": 0, "mismatch": 0, "model-only": 2}


def test_what_unicorn_cannot_show_is_said(vtx_holes):
    """WBINVD's hole is in the caches, which the Machine does not hold; RDTSCP's #UD with 'enable
    RDTSCP' clear is VMX changing the instruction without an exit, which an emulator without VMX
    does not do: both model-only, each saying why."""
    reps, _ = vtx_holes
    assert reps["wbinvd"]["outcome"] == "model-only" and "does not hold" in reps["wbinvd"]["note"]
    assert reps["rdtscp"]["outcome"] == "model-only" and "not the bare run" in reps["rdtscp"]["note"]
    assert "enable_rdtscp" in reps["rdtscp"]["note"]


def test_svm_cpuid_hole_is_model_only(tmp_path):
    """Without the CPUID intercept the guest reads the host's identity: one emulator is one
    processor, so the replay cannot show two; the solver proves the non-root run is not a bare run."""
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"base": "default", "intercepts": {"cpuid": False}}))
    p = _replay("--profile", "svm", "--controls", f, "--format", "json", "--jobs", "1", "cpuid")
    assert p.returncode == 0, p.stderr
    (r,) = json.loads(p.stdout)["replays"]
    assert r["outcome"] == "model-only" and "host processor" in r["note"]


def test_a_lying_hole_prediction_is_a_mismatch():
    """The hole's pair with the model's non-root prediction edited (HLT not halting): the replay
    notices (the model's own predictions then meet no hole criterion)."""
    from pgvirt.emulator import replay as R
    from pgvirt.model import vmx
    from pgvirt.model.profiles.hardware import ownership
    from pgvirt.verify import counterexample as cx
    c = vmx.from_json(HOLES)
    found = cx.hole_witness("hlt", profiles.VTX.with_controls(c))
    w = found["witness"]
    assert found["verdict"] == "found" and w["as_bare"] and w["criterion"] == ["changes monitor-owned halted"]
    w["model"]["deprivileged"] = {"fault": False, "changed": {"eip": w["deprivileged"]["eip"] + 1}}
    rep = R.Replayer().replay("hlt", w, cx.hole_criterion(ownership(c)), "vtx")
    assert rep.outcome == "mismatch"


@pytest.mark.parametrize("args, words", [
    (["--profile", "vtx", "hlt"], "root-mode privileged under the controls 'default'"),
    (["--profile", "vtx", "--state", "{f}"], "--state takes trap-and-emulate pairs"),
    (["--profile", "pentium", "--controls", "{f}"], "--controls applies to the hardware profiles"),
    (["--profile", "vtx", "--controls", "{f}", "--oracle", "qemu"], "give --oracle bochs"),
])
def test_bad_hardware_replays_are_one_line(tmp_path, args, words):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(HOLES))
    p = _replay(*[a.format(f=f) for a in args])
    assert p.returncode == 2 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert words in p.stderr, p.stderr


# --- check-patch under a hardware profile -------------------------------------------------------
def _pgvirt(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pgvirt", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def vtx_patched(tmp_path_factory):
    from helpers import INVADERS, need
    need(INVADERS)
    d = tmp_path_factory.mktemp("cp")
    p = _pgvirt("patch", "--profile", "vtx", INVADERS, "-o", d / "inv.vtx")
    assert p.returncode == 0 and "0 site(s)" in p.stdout, p.stdout + p.stderr
    return d


def test_check_patch_under_vtx_needs_no_site(vtx_patched):
    """grub-invaders under VT-x's default controls: every form it contains is proved root-mode
    privileged or innocuous, so nothing needs patching and the unpatched guest is sound."""
    d = vtx_patched
    p = _pgvirt("check-patch", d / "inv.vtx", "--manifest", d / "inv.vtx.manifest.json", "--format", "json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    (rem,) = [o for o in doc["obligations"] if o["claim"] == "remaining"]
    assert doc["profile"] == "vtx" and rem["status"] == "holds" and "root-mode privileged" in rem["message"]
    assert doc["remaining"] == [] and doc["sites"] == []


def test_check_patch_under_controls_with_a_hole_names_the_sites(vtx_patched):
    """Without the I/O bitmaps the same guest's port I/O runs without an exit: its IN/OUT sites
    still need patching, each named with the hardware reason (exit 1)."""
    d = vtx_patched
    f = d / "noio.json"
    f.write_text(json.dumps({"base": "default", "primary": {"use_io_bitmaps": False}}))
    p = _pgvirt("check-patch", d / "inv.vtx", "--manifest", d / "inv.vtx.manifest.json", "--controls", f,
                "--format", "json")
    assert p.returncode == 1, p.stderr
    bad = [o for o in json.loads(p.stdout)["obligations"] if o["claim"] == "remaining" and o["status"] == "fails"]
    assert bad and {o["detail"]["form"] for o in bad} <= {"in_al_imm8", "in_al_dx", "out_dx_al", "out_imm8_al",
                                                          "out_dx_eax", "in_eax_dx", "out_dx_ax", "in_ax_dx"}
    assert all("not root-mode privileged" in o["message"] for o in bad)


def test_check_patch_of_trap_and_emulate_sites_under_vtx_is_refused(tmp_path):
    """A pentium manifest's hypercall sites have no meaning in non-root operation: one line, exit 2."""
    from helpers import INVADERS, need
    need(INVADERS)
    p = _pgvirt("patch", INVADERS, "-o", tmp_path / "inv.p")
    assert p.returncode == 0
    p = _pgvirt("check-patch", "--profile", "vtx", tmp_path / "inv.p", "--manifest", tmp_path / "inv.p.manifest.json")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "site prover" in p.stderr


# --- the README's hardware tables are the tool's current answers --------------------------------
@pytest.mark.slow
def test_readme_hardware_tables_are_current():
    """tools/hardware_tables.py regenerates the ownership, controls and comparison tables (about
    2.5 min): the README must hold what it prints now - every verdict, form, reason, minimal set
    and comparison cell exactly; a witness's values only as a witness (the solver may pick other
    states from run to run: which parallel query answers first)."""
    import re

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        import hardware_tables as T
    finally:
        sys.path.pop(0)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    m = re.search(re.escape(T.BEGIN) + r"\n(.*?)\n" + re.escape(T.END), readme, flags=re.S)
    assert m, "README.md has no hardware-tables section"
    def stable(text):
        return re.sub(r"; non-root, CPL \d: .*?(?= \|$)", "; <witness>", text, flags=re.M)
    got = T.generate()
    assert "; non-root, CPL" in got and stable(got) != got      # the witnesses are there, and masked
    assert stable(m.group(1)) == stable(got), "README tables are stale: run .venv/bin/python tools/hardware_tables.py"
