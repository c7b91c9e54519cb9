"""AMD SVM: intercepts as exits of the forms' own definitions, and the hardware Theorem 1 over the
whole ISA under the documented default VMCB (verify/hardware.py)."""

from __future__ import annotations

import pytest

from pgvirt.model import profiles, svm
from pgvirt.model.outcome import GP, Exit, Fault, Next
from pgvirt.verify.popek_goldberg import classify, classify_all, theorem

from helpers import nonroot_run

SVM = profiles.SVM
D = svm.DEFAULT


EXTRA = dict(efer=svm.EFER_SVME, gif=1)     # VMRUN needs EFER.SVME; it sets GIF (APM Vol. 2 15.5.1)


def run(name, vm=D, cpl=0, **regs):
    return nonroot_run(SVM, EXTRA, name, vm, cpl, **regs)


@pytest.mark.parametrize("name, reason, code", [
    ("cpuid", "cpuid", 0x72), ("hlt", "hlt", 0x78), ("in_al_dx", "ioio", 0x7B),
    ("vmrun_a32", "vmrun", 0x80), ("vmmcall", "vmmcall", 0x81), ("rdtsc", "rdtsc", 0x6E)])
def test_exit_codes_under_the_default(name, reason, code):
    out = run(name, edx=0x3F8)
    assert isinstance(out, Exit) and out.kind == "svm" and (out.exit_reason, out.code) == (reason, code)


def test_pushf_popf_iret_intn_exit_only_when_intercepted():
    on = svm.from_json({"base": "default", "intercepts": {"pushf": True, "popf": True, "iret": True,
                                                         "intn": True}})
    for name in ("pushfd", "popfd", "iretd", "int_imm"):
        assert isinstance(run(name, vm=on), Exit), name
    assert isinstance(run("pushfd"), Next)


def test_vmrun_at_cpl3_faults_before_its_intercept():
    out = run("vmrun_a32", cpl=3)
    assert isinstance(out, Fault) and out.vector == GP


def test_smsw_exits_under_the_cr0_read_intercept():
    c = svm.from_json({"base": "default", "cr_read": 1})
    out = run("smsw_r", vm=c)
    assert isinstance(out, Exit) and out.exit_reason == "read_cr0"
    assert isinstance(run("smsw_r"), Next)


@pytest.mark.slow
def test_theorem_1_holds_over_the_whole_isa():
    res = classify_all(SVM, jobs=2)
    for n in ("1", "3"):
        th = theorem(n, res)
        assert th.verdict == "holds", [c.form.name for c in th.violations + th.undecided]
    assert all(c.answers["privileged"].verdict == "proved" for c in res)


def test_switching_the_cpuid_intercept_off_shows_the_host_processor():
    c = D.without("cpuid")
    r = classify("cpuid", SVM.with_controls(c))
    assert r["privileged"] is False and r["mode_sensitive"] is True


def test_without_nested_paging_cr3_reads_must_be_intercepted():
    c = svm.from_json({"base": "default", "nested_paging": False})
    assert classify("mov_r_cr3", SVM.with_controls(c))["privileged"] is False
    c = svm.from_json({"base": "default", "nested_paging": False, "cr_read": 0x9, "cr_write": 0x9})
    assert classify("mov_r_cr3", SVM.with_controls(c))["privileged"] is True
    assert classify("smsw_r", SVM.with_controls(c))["privileged"] is True
