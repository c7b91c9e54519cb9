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

from helpers import desc, gate, le, nonroot_machine, nonroot_run

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


# --- the exit priorities the Bochs VMX replay found wrong (issue 13/14; regressions) -------------
def _exit(out, reason):
    assert isinstance(out, Exit) and out.exit_reason == reason, str(out)


def _fault(out, vector, code=None):
    assert isinstance(out, Fault) and out.vector == vector, str(out)
    assert code is None or out.code == code, str(out)


@pytest.mark.parametrize("name, regs, vector", [
    ("mov_r_dr0", dict(cpl=3), GP),                              # the CPL #GP
    ("mov_dr0_r", dict(cpl=3), GP),
    ("mov_r_dr4", dict(cr4=vmx.CR4_VMXE | 1 << 3), 6),           # DR4 with CR4.DE = 1: #UD
    ("mov_dr5_r", dict(cr4=vmx.CR4_VMXE | 1 << 3), 6),
    ("mov_r_dr7", dict(dr7=0x400 | 1 << 13), 1),                 # DR7.GD: #DB
])
def test_mov_dr_exiting_comes_before_mov_drs_faults(name, regs, vector):
    """SDM Vol. 3C 25.1.3: MOV-DR exits take priority over the CPL #GP and DR4/DR5's #UD, and
    as fault-like exits over the general-detect #DB (25.1.1); without the control they fault."""
    _exit(run(name, **regs), "mov_dr")
    _fault(run(name, vm=D.without("mov_dr_exiting"), **regs), vector)


def test_enclv_is_ud_without_sgx():
    """SDM Vol. 3D ENCLV: #UD where the processor has no SGX, before any VM exit (25.1.1)."""
    assert "sgx" not in VTX.features
    _fault(run("enclv"), 6)
    _fault(run("enclv", cpl=3), 6)


GDT, TSS2 = 0x1000, 0x4000
NEW_TSS = 0x30          # GDT slot 6: the task switch's target TSS
TASK_GATE_SEL = 0x38    # GDT slot 7: a task gate to NEW_TSS


def _words(at, pair):
    lo, hi = pair
    return {at + k: b for k, b in {**le(lo, 4), **{4 + j: v for j, v in le(hi, 4).items()}}.items()}


def _task_machine(tss_type=0x9, tss_limit=0x67, tss_p=1, gate_to=NEW_TSS, gate_p=1, **regs):
    """A guest at CPL 0 with a GDT holding a TSS (type ``tss_type``) at NEW_TSS and a task gate
    to ``gate_to`` at TASK_GATE_SEL; the current TSS's previous-task link names NEW_TSS."""
    mem = {}
    mem.update(_words(GDT + NEW_TSS, desc(TSS2, tss_limit, tss_type, s=0, p=tss_p, g=0, db=0)))
    mem.update(_words(GDT + TASK_GATE_SEL, gate(gate_to, 0, 0x5, 0, p=gate_p)))
    mem.update({0x3000 + k: v for k, v in le(NEW_TSS, 2).items()})          # the link field
    mem.update(regs.pop("mem", {}))
    return dict(gdtr_base=GDT, gdtr_limit=0xFF, tr=0x28, tr_base=0x3000, mem=mem, **regs)


def _far(name, sel, **kw):
    code = bytes.fromhex("ea78563412") + sel.to_bytes(2, "little")
    return REGISTRY[name].execute(machine(**_task_machine(**kw)), code, VTX.features, D)


@pytest.mark.parametrize("target, kw, vector, code", [
    (TASK_GATE_SEL, dict(gate_to=NEW_TSS | 4), GP, NEW_TSS | 4),   # the gate's TSS in the LDT
    (TASK_GATE_SEL, dict(gate_to=0x100), GP, 0x100),               # beyond the GDT limit
    (TASK_GATE_SEL, dict(tss_type=0xB), GP, NEW_TSS),              # the TSS busy
    (TASK_GATE_SEL, dict(tss_type=0x2), GP, NEW_TSS),              # an LDT, not a TSS
    (TASK_GATE_SEL, dict(tss_p=0), 11, NEW_TSS),                   # the TSS not present: #NP
    (TASK_GATE_SEL, dict(tss_limit=0x40), 10, NEW_TSS),            # below 67H: #TS
    (NEW_TSS, dict(tss_limit=0x40), 10, NEW_TSS),                  # straight to the TSS
    (NEW_TSS, dict(tss_type=0x1, tss_limit=0x20), 10, NEW_TSS),    # a 16-bit TSS below 2BH
])
def test_task_switch_exits_only_after_the_new_tss_checks(target, kw, vector, code):
    """SDM Vol. 3C 25.4.2: the gate's checks, the new TSS selector's, then the TSS descriptor's
    type, P and limit, and only then the task-switch VM exit."""
    _fault(_far("jmp_far_ptr", target, **kw), vector, code)


def test_task_switch_exits_once_the_checks_pass():
    _exit(_far("jmp_far_ptr", TASK_GATE_SEL), "task_switch")
    _exit(_far("jmp_far_ptr", NEW_TSS), "task_switch")
    _exit(_far("jmp_far_ptr", NEW_TSS, tss_type=0x1, tss_limit=0x2B), "task_switch")


def test_int_through_a_task_gate_checks_the_tss_first():
    idt = 0x2000
    gate_at = {idt + 0x80 * 8 + k: v for k, v in _words(0, gate(NEW_TSS, 0, 0x5, 3)).items()}
    m = dict(idtr_base=idt, idtr_limit=0x7FF)
    _fault(run("int_imm", **_task_machine(tss_limit=0x40, mem=gate_at), **m), 10, NEW_TSS)
    _fault(run("int_imm", **_task_machine(tss_p=0, mem=gate_at), **m), 11, NEW_TSS)
    _exit(run("int_imm", **_task_machine(mem=gate_at), **m), "task_switch")


@pytest.mark.parametrize("kw, vector", [
    (dict(tss_type=0x9), 10),           # the link names an available TSS: #TS
    (dict(tss_type=0xB, tss_p=0), 11),  # not present: #NP
    (dict(tss_type=0xB, tss_limit=0x40), 10),
])
def test_iret_with_nt_checks_the_linked_tss_first(kw, vector):
    """IRET with NT = 1 returns to the task its TSS's link names: that TSS must be busy, present
    and large enough (SDM Vol. 2A IRET, TASK-RETURN) before the VM exit (Vol. 3C 25.4.2)."""
    nt = 1 << 14
    _fault(run("iretd", sysflags=nt, **_task_machine(**kw)), vector, NEW_TSS)
    _exit(run("iretd", sysflags=nt, **_task_machine(tss_type=0xB)), "task_switch")


def test_vm_entry_checks_what_the_state_can_express():
    """entry_ok (SDM Vol. 3C 26.3.1.1-2): CR4.PCIDE, G against the limit, TR and LDTR in the
    GDT, the usable data segments' types and DPL >= RPL; the test machine itself passes."""
    import z3
    from pgvirt.model import state as st
    from pgvirt.model.profiles.hardware import entry_ok

    def ok(**regs):
        return z3.is_true(z3.simplify(entry_ok(st.concrete(machine(**regs)), D)))

    assert ok() and ok(ds=0x10, ds_attr=0xC093, ds_limit=0xFFFFFFFF)
    assert not ok(cr4=vmx.CR4_VMXE | 1 << st.CR4_PCIDE)
    assert not ok(ss_limit=0xFFFFF000)                       # G = 1 but limit[11:0] not all 1s
    assert not ok(tr_limit=0x100000)                         # limit beyond 1 MiB with G = 0
    assert not ok(tr=0x2C)                                   # TR in the LDT
    assert not ok(ldtr=0x54, ldtr_limit=0xFF)                # LDTR in the LDT
    assert ok(ldtr=0x50, ldtr_limit=0xFF)
    assert not ok(ds=0x10, ds_attr=0xC089, ds_limit=0xFFFFFFFF)   # a TSS in DS (S = 0)
    assert not ok(ds=0x10, ds_attr=0xC099, ds_limit=0xFFFFFFFF)  # execute-only code
    # DPL 0 < RPL 3: refused only without unrestricted guest (the default has it)
    assert ok(ds=0x13, ds_attr=0xC093, ds_limit=0xFFFFFFFF)
    plain = D.without("unrestricted_guest")
    assert z3.is_false(z3.simplify(entry_ok(st.concrete(machine(ds=0x13, ds_attr=0xC093,
                                                                ds_limit=0xFFFFFFFF)), plain)))
