"""The controls search (verify/controls.py), the VT-x/SVM comparison, and the CLI around them:
what a control's absence breaks (with a witness), what it leaves proved, refusals of bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pgvirt.model import profiles, svm, vmx
from pgvirt.verify import controls

FORMS = ["hlt", "cpuid", "in_al_dx", "rdtsc", "mov_r_cr3", "wbinvd", "invlpg_m", "add_rm32_r32",
         "pushfd", "popfd", "mov_r_dr0", "vmload_a32"]


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pgvirt", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def vtx_search():
    return controls.search(profiles.VTX, jobs=1, forms=FORMS)


@pytest.fixture(scope="module")
def svm_search():
    return controls.search(profiles.SVM, jobs=1, forms=FORMS)


def _by(s):
    return {r.control: r for r in s.results}


def test_vtx_necessary_controls_come_with_witnesses(vtx_search):
    r = _by(vtx_search)
    assert vtx_search.baseline == "holds"
    for name, form in (("hlt_exiting", "hlt"), ("rdtsc_exiting", "rdtsc"), ("wbinvd_exiting", "wbinvd")):
        assert r[name].verdict == "necessary" and r[name].form == form, name
        assert r[name].witness and "guest" in r[name].witness
    assert r["use_io_bitmaps"].verdict == "necessary"


def test_vtx_harmless_controls_are_proofs(vtx_search):
    """With EPT the guest owns CR3 and its TLB: INVLPG need not exit; the monitor loads the
    guest's debug registers: MOV DR need not exit."""
    r = _by(vtx_search)
    for name in ("invlpg_exiting", "mov_dr_exiting"):
        assert r[name].verdict == "harmless" and r[name].reasked > 0, name
    assert r["enable_ept"].verdict == "refused" and "unrestricted guest" in r["enable_ept"].why


def test_minimal_set_is_sufficient_and_drops_the_harmless(vtx_search):
    m = vtx_search.minimal
    assert "hlt_exiting" in m and "invlpg_exiting" not in m and "mov_dr_exiting" not in m
    c = vmx.DEFAULT
    for n in controls.candidates(c):
        if n not in m:
            c = c.without(n)
    from pgvirt.verify.popek_goldberg import classify_all, theorem
    assert theorem("1", classify_all(profiles.VTX.with_controls(vmx.check(c)), FORMS, jobs=1)).verdict == "holds"


def test_svm_intercepts(svm_search):
    r = _by(svm_search)
    assert r["cpuid"].verdict == "necessary" and r["hlt"].verdict == "necessary"
    assert r["vmrun"].verdict == "refused"
    # SVM always offsets the TSC: the guest's TSC is its own, RDTSC need not exit
    assert r["rdtsc"].verdict == "harmless"
    # without the VMLOAD intercept the guest reaches what the model assumes away: no proof
    assert r["vmload"].verdict == "unknown"
    assert "vmload" in svm_search.minimal


def test_comparison_pushf_and_smsw():
    rows = {r["form"]: r for r in controls.compare()}
    assert rows["pushfd"]["vtx"]["can_exit"] == "never" and rows["pushfd"]["svm"]["can_exit"] == "exits"
    assert rows["pushfd"]["svm"]["exit_reason"] == "pushf"
    assert rows["smsw_r"]["vtx"]["can_exit"] == "never" and rows["smsw_r"]["vtx"]["default"] == "proved"
    assert rows["smsw_r"]["svm"]["exit_reason"] == "read_cr0"
    assert rows["sgdt_m"]["vtx"]["exit_reason"] == "gdtr_idtr"


@pytest.mark.parametrize("doc, words", [
    ({"base": "default", "primary": {"hlt_exitting": False}}, "unknown control 'hlt_exitting'"),
    ({"base": "default", "secondary": {"enable_ept": False}}, "'unrestricted guest' needs 'enable EPT'"),
    ({"primary": 0x80000000}, "default1 class"),
    ({"base": "default", "pin": 0x100}, "reserved bit(s) 8 of the pin controls"),
])
def test_bad_vtx_controls_files_are_refused_in_one_line(tmp_path, doc, words):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(doc))
    p = _run("verify", "--profile", "vtx", "--controls", f)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and words in p.stderr, p.stderr


@pytest.mark.parametrize("doc, words", [
    ({"base": "default", "intercepts": {"pushff": True}}, "unknown intercept 'pushff'"),
    ({"base": "default", "intercepts": {"vmrun": False}}, "VMRUN intercept is clear"),
])
def test_bad_svm_controls_files_are_refused_in_one_line(tmp_path, doc, words):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(doc))
    p = _run("controls", "--profile", "svm", "--controls", f)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and words in p.stderr, p.stderr


def test_controls_on_a_legacy_profile_is_refused(tmp_path):
    f = tmp_path / "c.json"
    f.write_text("{}")
    p = _run("verify", "--profile", "pentium", "--controls", f)
    assert p.returncode == 2 and "hardware profiles" in p.stderr


def test_verify_with_a_hole_exits_1_with_the_form(tmp_path):
    f = tmp_path / "nohlt.json"
    f.write_text(json.dumps({"base": "default", "primary": {"hlt_exiting": False}}))
    p = _run("verify", "--profile", "vtx", "--controls", f, "--format", "json", "--jobs", "2", "--forms", "hand")
    assert p.returncode == 1
    doc = json.loads(p.stdout)["profiles"][0]
    bad = doc["theorems"]["1"]["violations"]
    assert [v["name"] for v in bad] == ["hlt"]
    assert bad[0]["witness"]["runs_unprivileged"]["guest_outcome"]["changed"]["halted"] == 1
    assert doc["controls"]["primary"]["hlt_exiting"] is False


def test_exception_bitmap_bits_and_the_pfec_filter_are_searched():
    """Set bits of the exception bitmap and a page-fault error-code filter are switched off like
    any control: #GP to the guest's IDT instead of an exit is harmless for INT n and HLT (proved), and
    no form of the model raises #PF, so neither bit 14 nor the filter is read by any definition."""
    c = vmx.from_json({"base": "default", "exception_bitmap": (1 << 13) | (1 << 14),
                       "pfec_mask": 1, "pfec_match": 1})
    assert {"exception_13", "exception_14", "pfec_filter"} <= set(controls.candidates(c))
    s = controls.search(profiles.VTX.with_controls(c), jobs=1, forms=["int_imm", "hlt"])
    r = _by(s)
    assert s.baseline == "holds"
    assert r["exception_13"].verdict == "harmless" and r["exception_13"].reasked == 2   # both #GP
    for n in ("exception_14", "pfec_filter"):
        assert r[n].verdict == "harmless" and r[n].reasked == 0 and "no form" in r[n].why


def test_window_exiting_is_searched_over_every_form():
    """Interrupt- and NMI-window exits come before any instruction: switching them off re-asks
    every form and is harmless for Theorem 1 (proved: the theorem is about what instructions do,
    and a window exit only adds exits); 'NMI exiting' cannot go while 'virtual NMIs' is set."""
    c = vmx.from_json({"base": "default", "pin": {"virtual_nmis": True},
                       "primary": {"interrupt_window_exiting": True, "nmi_window_exiting": True}})
    s = controls.search(profiles.VTX.with_controls(c), jobs=1, forms=["hlt", "popfd", "sti"])
    r = _by(s)
    for n in ("interrupt_window_exiting", "nmi_window_exiting"):
        assert r[n].verdict == "harmless" and r[n].reasked == 3, r[n]
    assert r["nmi_exiting"].verdict == "refused" and "virtual NMIs" in r["nmi_exiting"].why
