"""VT-x and SVM configurations as data (model/vmx.py, model/svm.py): the documented defaults are
accepted, and every rule VM entry / VMRUN applies to the controls refuses a file in one line."""

from __future__ import annotations

import json

import pytest

from pgvirt.model import svm, vmx


def test_defaults_pass_the_entry_checks():
    assert vmx.check(vmx.DEFAULT) is vmx.DEFAULT and svm.check(svm.DEFAULT) is svm.DEFAULT
    d = vmx.DEFAULT
    assert d.on("hlt_exiting") and d.on("enable_ept") and d.on("unrestricted_guest")
    assert not d.on("descriptor_table_exiting")
    # default1 bits are set, nothing reserved
    assert d.primary & vmx.DEFAULT1["primary"] == vmx.DEFAULT1["primary"]
    assert d.pin & ~vmx.ALLOWED1["pin"] == 0
    assert svm.DEFAULT.on("vmrun") and svm.DEFAULT.on("cpuid") and not svm.DEFAULT.on("pushf")


def test_secondary_controls_count_only_when_activated():
    c = vmx.DEFAULT.without("activate_secondary_controls")
    assert c.secondary == vmx.DEFAULT.secondary and not c.on("enable_ept")


def test_guest_cr0_fixed_bits():
    assert vmx.guest_cr0_ok(vmx.DEFAULT, 0x31)          # PE NE ET, unpaged: unrestricted guest
    no_ug = vmx.from_json({"base": "default", "secondary": {"unrestricted_guest": False}})
    assert not vmx.guest_cr0_ok(no_ug, 0x31) and vmx.guest_cr0_ok(no_ug, 0x80000031)
    assert not vmx.guest_cr0_ok(vmx.DEFAULT, 0x80000030)   # PG without PE
    assert not vmx.guest_cr0_ok(vmx.DEFAULT, 0x11)          # NE clear


@pytest.mark.parametrize("doc, rule", [
    ({"primary": {"hlt_exitin": True}}, "unknown control 'hlt_exitin' (did you mean hlt_exiting"),
    ({"pin": {"hlt_exiting": True}}, "hlt_exiting is a primary control"),
    ({"primary": "0x1"}, "reserved bit(s) 0 of the primary controls"),
    ({"primary": 0}, "default1 class and must be 1"),
    ({"base": "default", "secondary": {"enable_ept": False}}, "'unrestricted guest' needs 'enable EPT'"),
    ({"base": "default", "pin": {"nmi_exiting": False, "virtual_nmis": True}}, "'virtual NMIs' needs 'NMI exiting'"),
    ({"base": "default", "primary": {"use_tpr_shadow": True}}, "without Intel 64"),
    ({"base": "default", "cr3_targets": [1, 2, 3, 4, 5]}, "at most 4"),
    ({"base": "default", "msr_read_exits": ["0x40000000"]}, "outside the MSR bitmaps"),
    ({"base": "default", "io_bitmap_ports": ["0x10-0x1"]}, "ends before it starts"),
    ({"base": "nosuch"}, "the only base"),
    ({"cr0_mask": "zz"}, "is not a number"),
    ({"surprise": 1}, "unknown key 'surprise'"),
    ([], "expected a JSON object"),
])
def test_vmx_bad_controls_name_the_rule(doc, rule):
    with pytest.raises(vmx.ControlsError, match=None) as e:
        vmx.from_json(doc)
    assert rule in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("doc, rule", [
    ({"intercepts": {"vmrun": False}}, "the VMRUN intercept is clear"),
    ({"intercepts": {"pushff": True}}, "unknown intercept 'pushff'"),
    ({"asid": 0}, "ASID 0 is the host's"),
    ({"cr_read": "0x10000"}, "16 bits"),
    ({"msr_write_exits": [0x40000000]}, "outside the MSRPM"),
])
def test_svm_bad_intercepts_name_the_rule(doc, rule):
    with pytest.raises(svm.InterceptsError) as e:
        svm.from_json(doc)
    assert rule in str(e.value) and "\n" not in str(e.value)


def test_files_are_read_safely(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"base": "default", "primary": {"rdtsc_exiting": False}}))
    assert not vmx.load(str(p)).on("rdtsc_exiting")
    p.write_text("{not json")
    with pytest.raises(vmx.ControlsError, match="not JSON"):
        vmx.load(str(p))
    with pytest.raises(svm.InterceptsError, match="character device"):
        svm.load("/dev/zero")


def test_without_switches_one_control_off():
    assert not vmx.DEFAULT.without("hlt_exiting").on("hlt_exiting")
    assert vmx.DEFAULT.without("hlt_exiting").on("rdtsc_exiting")
    assert not svm.DEFAULT.without("cpuid").on("cpuid")
    assert not svm.DEFAULT.without("exception_13").exceptions >> 13 & 1
