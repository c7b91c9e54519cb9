"""VT-x: exits as outcomes of the forms' own definitions, the fault-before-exit priority, and the
hardware Theorem 1 over the whole ISA under the documented default controls (verify/hardware.py)."""

from __future__ import annotations

import pytest

from pgvirt.model import profiles, vmx
from pgvirt.model.form import REGISTRY
from pgvirt.model.isa import FORMS
from pgvirt.model.outcome import GP, Exit, Fault, Next, changes_json, from_changes_json
from pgvirt.model.profiles.hardware import ownership
from pgvirt.verify.popek_goldberg import classify, classify_all, theorem

from helpers import nonroot_machine, nonroot_run

VTX = profiles.VTX
D = vmx.DEFAULT


EXTRA = dict(cr4=vmx.CR4_VMXE)      # VM entry needs CR4.VMXE = 1 (SDM Vol. 3C 26.3.1.1)


def machine(cpl=0, **regs):
    return nonroot_machine(EXTRA, cpl, **regs)


def run(name, vm=D, cpl=0, **regs):
    return nonroot_run(VTX, EXTRA, name, vm, cpl, **regs)


@pytest.mark.parametrize("name, reason, code", [
    ("cpuid", "cpuid", 10), ("hlt", "hlt", 12), ("in_al_dx", "io", 30), ("invd", "invd", 13),
    ("rdtsc", "rdtsc", 16), ("rdmsr", "rdmsr", 31), ("vmcall", "vmcall", 18), ("wbinvd", "wbinvd", 54)])
def test_exit_reasons_under_the_default(name, reason, code):
    out = run(name, edx=0x3F8, ecx=0x10)
    assert isinstance(out, Exit) and out.kind == "vmx"
    assert (out.exit_reason, out.code) == (reason, code)


def test_io_exit_qualification_names_the_port():
    out = run("in_ax_dx", edx=0x3F8)
    assert isinstance(out, Exit) and out.qualification == (0x3F8 << 16) | 1


def test_faults_before_exits():
    """SDM Vol. 3C 25.1.1: the CPL #GP of HLT and RDMSR and the TSS I/O-bitmap #GP of IN come
    before their exits; with IOPL 3 the same IN exits."""
    for name in ("hlt", "rdmsr"):
        out = run(name, cpl=3)
        assert isinstance(out, Fault) and out.vector == GP
    no_bitmap = {0x66: 0xFF, 0x67: 0xFF}             # the TSS's I/O map base past its limit
    out = run("in_al_dx", cpl=3, edx=0x60, mem=no_bitmap)    # IOPL 0
    assert isinstance(out, Fault) and out.vector == GP
    assert isinstance(run("in_al_dx", cpl=3, edx=0x60, mem=no_bitmap, sysflags=3 << 12), Exit)


def test_exception_bitmap_turns_a_fault_into_an_exit():
    c = vmx.check(vmx.Controls(D.pin, D.primary, D.secondary, exception_bitmap=1 << GP,
                               cr0_mask=D.cr0_mask, cr0_shadow=D.cr0_shadow, cr4_mask=D.cr4_mask,
                               io_exits=D.io_exits, msr_read_exits=D.msr_read_exits,
                               msr_write_exits=D.msr_write_exits))
    out = run("hlt", vm=c, cpl=3)
    assert isinstance(out, Exit) and out.exit_reason == "exception" and out.qualification == GP


def test_cr0_reads_the_shadow_and_writes_keep_host_bits():
    """MOV from CR0 shows the shadow in the masked bits; a write that keeps them exits not and
    leaves the host's bits (SDM Vol. 3C 25.3); one that changes them exits."""
    c = vmx.from_json({"base": "default", "cr0_mask": 0x80000021 | 0x20, "cr0_shadow": 0x21})
    out = run("mov_r_cr0", vm=c, cr0=0x31)
    assert isinstance(out, Next) and out.state["eax"] == 0x31
    out = run("mov_cr0_r", vm=c, eax=0x29)           # TS set, PE/NE as the shadow
    assert isinstance(out, Next) and out.state["cr0"] == 0x39
    out = run("mov_cr0_r", vm=c, eax=0x80000031)     # PG: differs from the shadow
    assert isinstance(out, Exit) and out.exit_reason == "cr_access"


def test_exits_round_trip_through_json():
    pre = machine()
    out = run("cpuid")
    assert from_changes_json(pre, changes_json(pre, out)) == out


def test_no_exit_outside_non_root_operation():
    """On bare hardware (vm=None) no form builds an exit condition: today's verdicts stand."""
    from pgvirt.model import state as st
    s = st.fresh("t")
    for f in FORMS:
        if f.theme in ("system", "flags", "tables", "virtualization", "extensions", "transfers"):
            assert all(c.exit is None for c in f.run(s, features=VTX.features).checks), f.name


def test_ownership_follows_the_controls():
    own = ownership(D)
    assert own.mask("cr3") == 0 and own.mask("halted")              # EPT: CR3 is the guest's
    assert ownership(D.without("enable_ept").__class__(
        **{**D.__dict__, "secondary": D.secondary & ~(1 << 1) & ~(1 << 7)})).mask("cr3")
    assert ownership(D.without("external_interrupt_exiting")).mask("sysflags") == 1 << 9


@pytest.mark.slow
def test_theorem_1_holds_over_the_whole_isa():
    res = classify_all(VTX, jobs=2)
    for n in ("1", "3"):
        th = theorem(n, res)
        assert th.verdict == "holds", [c.form.name for c in th.violations + th.undecided]
    assert all(c.answers["privileged"].verdict == "proved" for c in res)


@pytest.mark.parametrize("control, form, kind", [
    ("hlt_exiting", "hlt", "control_sensitive"),
    ("rdtsc_exiting", "rdtsc", "mode_sensitive"),
    ("use_io_bitmaps", "in_al_dx", "mode_sensitive"),
    ("use_msr_bitmaps", "rdmsr", "mode_sensitive"),
    ("wbinvd_exiting", "wbinvd", "control_sensitive"),
])
def test_switching_a_control_off_opens_a_hole(control, form, kind):
    c = D.without(control)
    if control == "use_msr_bitmaps":    # without bitmaps every RDMSR exits: no hole
        assert classify(form, VTX.with_controls(c))["privileged"] is True
        return
    r = classify(form, VTX.with_controls(c))
    assert r["privileged"] is False and r[kind] is True
    w = r.answers["privileged"].witness
    assert "guest" in w and "native" in w and not w["guest_outcome"].get("exit")


def test_cr3_store_exiting_is_needed_without_ept():
    """Without EPT the real CR3 is the shadow page table's: MOV from CR3 must exit (the witness
    shows the guest reading a CR3 other than its own)."""
    no_ept = vmx.from_json({"base": "default", "secondary": {"enable_ept": False, "unrestricted_guest": False}})
    assert classify("mov_r_cr3", VTX.with_controls(no_ept))["privileged"] is False
    with_store = vmx.from_json({"base": "default", "primary": {"cr3_store_exiting": True, "cr3_load_exiting": True},
                                "secondary": {"enable_ept": False, "unrestricted_guest": False}})
    assert classify("mov_r_cr3", VTX.with_controls(with_store))["privileged"] is True


# --- the page-fault error-code mask and match (SDM Vol. 3C 24.6.3, 25.2) -------------------------
def _pf_probe():
    """A form (outside the registry: no form of the model pages, so none raises #PF) that
    faults with #PF, its error code taken from EAX: what the exception bitmap sees of a #PF."""
    import dataclasses

    from pgvirt.model.outcome import PF

    def semantics(x):
        x.fault(PF, x.eax, "a page fault (probe)")
    return dataclasses.replace(REGISTRY["nop"], name="pf_probe", semantics=semantics)


def _pf(bitmap, mask, match, code):
    c = vmx.from_json({"base": "default", "exception_bitmap": bitmap, "pfec_mask": mask, "pfec_match": match})
    return _pf_probe().execute(machine(eax=code), features=VTX.features, vm=c)


@pytest.mark.parametrize("bit14, mask, match, code, exits", [
    (0, 0, 0, 0x3, False),      # bit 14 clear, every error code "matches" 0/0: never an exit
    (1, 0, 0, 0x3, True),       # bit 14 set, 0/0: every #PF exits
    (1, 0x1, 0x1, 0x3, True),   # bit 14 set: exactly the codes with P = 1 exit
    (1, 0x1, 0x1, 0x2, False),
    (0, 0x1, 0x1, 0x3, False),  # bit 14 clear: exactly the codes that do not match exit
    (0, 0x1, 0x1, 0x2, True),
    (0, 0x6, 0x4, 0x6, True),   # U/S = 1, W/R = 1 against a match of U/S only
    (1, 0x6, 0x4, 0x4, True),
])
def test_page_fault_exits_by_the_error_code_filter(bit14, mask, match, code, exits):
    """A #PF exits iff bit 14 of the exception bitmap XOR (PFEC AND PFEC_MASK != PFEC_MATCH)."""
    from pgvirt.model.outcome import PF
    out = _pf(bit14 << PF, mask, match, code)
    if exits:
        assert isinstance(out, Exit) and out.exit_reason == "exception" and out.qualification == PF, out
    else:
        assert isinstance(out, Fault) and (out.vector, out.code) == (PF, code), out


def test_page_fault_filter_splits_the_symbolic_fault():
    """On a symbolic error code the one fault becomes an exit where the filter selects the code
    and the #PF elsewhere, and the form is noted as reading the filter (for the controls search)."""
    from pgvirt.model import state as st
    from pgvirt.model.outcome import PF
    c = vmx.from_json({"base": "default", "exception_bitmap": 1 << PF, "pfec_mask": 1, "pfec_match": 1})
    o = _pf_probe().run(st.fresh("p"), features=VTX.features, vm=c)
    assert [(k.vector, k.exit is not None) for k in o.checks] == [(PF, True), (PF, False)]
    assert {"exception_14", "pfec_filter"} <= o.consulted
    # on bare hardware: the plain fault, nothing consulted
    bare = _pf_probe().run(st.fresh("p"), features=VTX.features)
    assert [(k.vector, k.exit) for k in bare.checks] == [(PF, None)] and not bare.consulted


def test_pfec_fields_are_controls_data():
    c = vmx.from_json({"base": "default", "pfec_mask": "0x5", "pfec_match": 4})
    assert (c.pfec_mask, c.pfec_match) == (5, 4)
    assert c.as_json()["pfec_mask"] == "0x00000005" and c.as_json()["pfec_match"] == "0x00000004"
    off = c.without("pfec_filter")
    assert (off.pfec_mask, off.pfec_match) == (0, 0)
    for bad, rule in (({"pfec_mask": 1 << 32}, "pfec_mask 0x100000000 is not a 32-bit value"),
                      ({"pfec_match": "x"}, "is not a number")):
        with pytest.raises(vmx.ControlsError) as e:
            vmx.from_json({"base": "default", **bad})
        assert rule in str(e.value)


# --- interrupt-window and NMI-window exiting (SDM Vol. 3C 25.2) -----------------------------------
WINDOWS = vmx.from_json({"base": "default", "pin": {"virtual_nmis": True},
                         "primary": {"interrupt_window_exiting": True, "nmi_window_exiting": True}})
IRQ_WINDOW = vmx.from_json({"base": "default", "primary": {"interrupt_window_exiting": True}})


def test_interrupt_window_exit_comes_before_the_instruction():
    """IF = 1 (no STI/MOV-SS blocking in a concrete state): the exit comes before anything, even
    before HLT's CPL #GP; IF = 0: the instruction runs (STI opens the window for the next one)."""
    IF = 1 << 9
    for name, cpl in (("nop", 0), ("hlt", 3), ("cli", 0)):
        out = run(name, vm=IRQ_WINDOW, cpl=cpl, sysflags=IF | 2)
        assert isinstance(out, Exit) and (out.exit_reason, out.code) == ("interrupt_window", 7), (name, out)
    out = run("sti", vm=IRQ_WINDOW, sysflags=2)
    assert isinstance(out, Next) and out.state["sysflags"] & IF
    assert isinstance(run("nop", vm=D, sysflags=IF | 2), Next)          # off by default


def test_nmi_window_exit_without_virtual_nmi_blocking():
    out = run("nop", vm=WINDOWS, sysflags=2)
    assert isinstance(out, Exit) and (out.exit_reason, out.code) == ("nmi_window", 8)


def test_window_exits_read_the_interruptibility_state_as_free():
    """The model's state does not hold the interruptibility state: with blocking by STI possible,
    POPF under interrupt-window exiting can still run without an exit, and it is proved root-mode
    privileged (the window only adds exits)."""
    from pgvirt.model import state as st
    from pgvirt.model.checks import blocking
    o = REGISTRY["popfd"].run(st.fresh("w"), features=VTX.features, vm=IRQ_WINDOW)
    first = o.checks[0]
    assert first.exit is not None and first.exit.exit_reason == "interrupt_window"
    assert blocking("sti").get_id() in {a.get_id() for a in _atoms(first.fails)}
    assert "interrupt_window_exiting" in o.consulted
    assert classify("popfd", VTX.with_controls(IRQ_WINDOW))["privileged"] is True


def _atoms(e):
    import z3
    out, todo = [], [e]
    while todo:
        t = todo.pop()
        if z3.is_const(t) and t.decl().kind() == z3.Z3_OP_UNINTERPRETED:
            out.append(t)
        todo.extend(t.children())
    return out
