"""Intel VT-x: the VM-execution controls a monitor sets for a 32-bit guest, as data, with the checks
VM entry makes on them.

Citations are to the Intel SDM Vol. 3C in the chapter numbering of its 2016-2022 editions:
24.6 (VM-execution control fields: 24.6.1 pin-based, 24.6.2 primary and secondary processor-based,
24.6.3 exception bitmap, 24.6.4 I/O bitmaps, 24.6.5 TSC offset, 24.6.6 CR0/CR4 guest/host masks
and read shadows, 24.6.7 CR3-target controls, 24.6.9 MSR bitmaps), 25.1 (instructions that
cause VM exits), 26.2.1.1 (VM-entry checks on the VM-execution controls), 26.3.1.1 (checks on
guest control registers), Appendix A (the capability MSRs: allowed settings, CR0/CR4 fixed bits)
and Appendix C (basic exit reasons).

``Controls`` is one configuration; ``load`` reads one from JSON and refuses, in one line naming
the rule, an unknown control, a reserved bit or a combination VM entry rejects.  The forms ask
the configuration through ``pgvirt.model.checks`` (one vocabulary), never through a table of
which instruction exits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

# --- the controls ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Control:
    name: str
    group: str        # "pin", "primary" or "secondary"
    bit: int
    cite: str
    doc: str


def _c(group: str, bit: int, name: str, cite: str, doc: str) -> Control:
    return Control(name, group, bit, cite, doc)


_PIN, _PRI, _SEC = "SDM Vol. 3C 24.6.1, Table 24-5", "SDM Vol. 3C 24.6.2, Table 24-6", \
    "SDM Vol. 3C 24.6.2, Table 24-7"

CONTROLS: dict[str, Control] = {c.name: c for c in (
    _c("pin", 0, "external_interrupt_exiting", _PIN, "external interrupts cause VM exits"),
    _c("pin", 3, "nmi_exiting", _PIN, "NMIs cause VM exits"),
    _c("pin", 5, "virtual_nmis", _PIN, "NMIs are never blocked; virtual-NMI blocking is tracked"),
    _c("pin", 6, "vmx_preemption_timer", _PIN, "the VMX-preemption timer counts down in non-root operation"),
    _c("pin", 7, "process_posted_interrupts", _PIN, "posted-interrupt processing"),
    _c("primary", 2, "interrupt_window_exiting", _PRI, "a VM exit at any instruction with RFLAGS.IF = 1 and no blocking"),
    _c("primary", 3, "use_tsc_offsetting", _PRI, "RDTSC, RDTSCP and RDMSR of IA32_TIME_STAMP_COUNTER add the TSC offset"),
    _c("primary", 7, "hlt_exiting", _PRI, "HLT causes a VM exit"),
    _c("primary", 9, "invlpg_exiting", _PRI, "INVLPG causes a VM exit"),
    _c("primary", 10, "mwait_exiting", _PRI, "MWAIT causes a VM exit"),
    _c("primary", 11, "rdpmc_exiting", _PRI, "RDPMC causes a VM exit"),
    _c("primary", 12, "rdtsc_exiting", _PRI, "RDTSC and RDTSCP cause VM exits"),
    _c("primary", 15, "cr3_load_exiting", _PRI, "MOV to CR3 exits unless the value is in the CR3-target list"),
    _c("primary", 16, "cr3_store_exiting", _PRI, "MOV from CR3 causes a VM exit"),
    _c("primary", 19, "cr8_load_exiting", _PRI, "MOV to CR8 exits (64-bit only; must be 0 here)"),
    _c("primary", 20, "cr8_store_exiting", _PRI, "MOV from CR8 exits (64-bit only; must be 0 here)"),
    _c("primary", 21, "use_tpr_shadow", _PRI, "the TPR shadow (64-bit only; must be 0 here)"),
    _c("primary", 22, "nmi_window_exiting", _PRI, "a VM exit when there is no virtual-NMI blocking"),
    _c("primary", 23, "mov_dr_exiting", _PRI, "MOV to/from DRn causes a VM exit"),
    _c("primary", 24, "unconditional_io_exiting", _PRI, "IN, INS, OUT, OUTS cause VM exits (ignored with I/O bitmaps)"),
    _c("primary", 25, "use_io_bitmaps", _PRI, "the I/O bitmaps decide which ports exit"),
    _c("primary", 27, "monitor_trap_flag", _PRI, "a VM exit after each instruction"),
    _c("primary", 28, "use_msr_bitmaps", _PRI, "the MSR bitmaps decide which RDMSR/WRMSR exit (else all do)"),
    _c("primary", 29, "monitor_exiting", _PRI, "MONITOR causes a VM exit"),
    _c("primary", 30, "pause_exiting", _PRI, "PAUSE causes a VM exit"),
    _c("primary", 31, "activate_secondary_controls", _PRI, "the secondary controls apply (else all 0)"),
    _c("secondary", 0, "virtualize_apic_accesses", _SEC, "accesses to the APIC-access page are virtualized"),
    _c("secondary", 1, "enable_ept", _SEC, "extended page tables: guest-physical memory is the monitor's mapping"),
    _c("secondary", 2, "descriptor_table_exiting", _SEC, "LGDT, LIDT, LLDT, LTR, SGDT, SIDT, SLDT and STR cause VM exits"),
    _c("secondary", 3, "enable_rdtscp", _SEC, "RDTSCP is available (else #UD)"),
    _c("secondary", 5, "enable_vpid", _SEC, "cached translations are tagged with a VPID"),
    _c("secondary", 6, "wbinvd_exiting", _SEC, "WBINVD and WBNOINVD cause VM exits"),
    _c("secondary", 7, "unrestricted_guest", _SEC, "the guest may run unpaged or in real mode (needs EPT)"),
    _c("secondary", 10, "pause_loop_exiting", _SEC, "PAUSE loops beyond a window exit"),
    _c("secondary", 11, "rdrand_exiting", _SEC, "RDRAND causes a VM exit"),
    _c("secondary", 12, "enable_invpcid", _SEC, "INVPCID is available (else #UD)"),
    _c("secondary", 13, "enable_vm_functions", _SEC, "VMFUNC is available (else #UD)"),
    _c("secondary", 14, "vmcs_shadowing", _SEC, "VMREAD/VMWRITE may use a shadow VMCS"),
    _c("secondary", 15, "encls_exiting", _SEC, "ENCLS exits per the ENCLS-exiting bitmap"),
    _c("secondary", 16, "rdseed_exiting", _SEC, "RDSEED causes a VM exit"),
    _c("secondary", 17, "enable_pml", _SEC, "page-modification logging (needs EPT)"),
    _c("secondary", 20, "enable_xsaves_xrstors", _SEC, "XSAVES/XRSTORS are available (else #UD)"),
    _c("secondary", 26, "enable_user_wait_and_pause", _SEC, "TPAUSE, UMONITOR, UMWAIT are available (else #UD)"),
    _c("secondary", 27, "enable_pconfig", _SEC, "PCONFIG is available (else #UD)"),
    _c("secondary", 28, "enable_encls_exiting", _SEC, "ENCLV exits per the ENCLV-exiting bitmap"),
)}
GROUPS = ("pin", "primary", "secondary")

# The default1 class: bits the first VMX processors fixed to 1; the TRUE capability MSRs allow
# the 0-setting of some of them (SDM Vol. 3C A.2, A.3.1-A.3.2).  pgvirt's processor has the
# TRUE MSRs and allows the 0-setting of CR3-load/store exiting (bits 15, 16), as every processor
# with EPT does; the others stay 1.
DEFAULT1 = {"pin": (1 << 1) | (1 << 2) | (1 << 4),
            "primary": (1 << 1) | (0b111 << 4) | (1 << 8) | (1 << 13) | (1 << 14) | (1 << 26),
            "secondary": 0}
ALLOWED1 = {g: DEFAULT1[g] | sum(1 << c.bit for c in CONTROLS.values() if c.group == g) for g in GROUPS}
# Controls a 32-bit processor cannot set (Table 24-6: 64-bit only) and those that need them
# (26.2.1.1: posted interrupts need virtual-interrupt delivery, which needs a TPR shadow).
NOT_HERE = {"cr8_load_exiting": "it must be 0 on a processor without Intel 64 architecture (Table 24-6)",
            "cr8_store_exiting": "it must be 0 on a processor without Intel 64 architecture (Table 24-6)",
            "use_tpr_shadow": "it must be 0 on a processor without Intel 64 architecture (Table 24-6)",
            "process_posted_interrupts": "it needs virtual-interrupt delivery, which needs 'use TPR "
                                         "shadow', 64-bit only (26.2.1.1)"}

# CR0/CR4 bits fixed in VMX operation (SDM Vol. 3C A.7, A.8; 23.8): PE, NE and PG must be 1,
# CR4.VMXE must be 1; "unrestricted guest" lets guest PE and PG be 0 (26.3.1.1).
CR0_FIXED0, CR0_FIXED1 = 0x80000021, 0xFFFFFFFF
CR4_FIXED0 = 1 << 13
CR0_PE, CR0_NE, CR0_PG, CR0_TS, CR0_MP, CR0_EM = 1 << 0, 1 << 5, 1 << 31, 1 << 3, 1 << 1, 1 << 2
CR4_VMXE = 1 << 13

# Appendix C: the basic exit reasons of the exits a 32-bit guest can cause.
EXIT_REASONS = {
    "exception": 0, "external_interrupt": 1, "triple_fault": 2, "interrupt_window": 7,
    "nmi_window": 8, "task_switch": 9, "cpuid": 10, "getsec": 11, "hlt": 12, "invd": 13,
    "invlpg": 14, "rdpmc": 15, "rdtsc": 16, "rsm": 17, "vmcall": 18, "vmclear": 19,
    "vmlaunch": 20, "vmptrld": 21, "vmptrst": 22, "vmread": 23, "vmresume": 24, "vmwrite": 25,
    "vmxoff": 26, "vmxon": 27, "cr_access": 28, "mov_dr": 29, "io": 30, "rdmsr": 31, "wrmsr": 32,
    "mwait": 36, "monitor_trap_flag": 37, "monitor": 39, "pause": 40,
    "gdtr_idtr": 46, "ldtr_tr": 47, "ept_violation": 48, "invept": 50, "rdtscp": 51,
    "invvpid": 53, "wbinvd": 54, "xsetbv": 55, "rdrand": 57, "invpcid": 58, "vmfunc": 59,
    "encls": 60, "rdseed": 61, "xsaves": 63, "xrstors": 64, "pconfig": 65, "umwait": 67,
    "tpause": 68, "enclv": 70,
}


# The page-fault error-code filter as the controls search names it (``Controls.without``).
PFEC_FILTER = "pfec_filter"


class ControlsError(ValueError):
    """A controls file VM entry would reject, or one this tool cannot read (one line: the rule)."""


@dataclass(frozen=True)
class Controls:
    """One VMCS configuration: the three control vectors, the exception bitmap with the
    page-fault error-code mask and match, the CR0/CR4
    guest/host masks and read shadows, the CR3-target values, the I/O bitmap (ports whose
    accesses exit), the MSR bitmaps (MSRs whose RDMSR/WRMSR exit) and the TSC offset."""

    pin: int
    primary: int
    secondary: int
    exception_bitmap: int = 0
    pfec_mask: int = 0          # page-fault error-code mask and match (SDM Vol. 3C 24.6.3)
    pfec_match: int = 0
    cr0_mask: int = 0
    cr0_shadow: int = 0
    cr4_mask: int = 0
    cr4_shadow: int = 0
    cr3_targets: tuple[int, ...] = ()
    io_exits: frozenset[int] = frozenset()          # with use_io_bitmaps: ports set in bitmap A/B
    msr_read_exits: frozenset[int] = frozenset()    # with use_msr_bitmaps: MSRs set in the bitmaps
    msr_write_exits: frozenset[int] = frozenset()
    tsc_offset: int = 0
    # XSAVES/XRSTORS exit when EDX:EAX AND IA32_XSS AND this bitmap is not 0 (SDM Vol. 3C 24.6.20,
    # 25.1.3); used only with 'enable XSAVES/XRSTORS'.
    xss_exiting_bitmap: int = 0
    name: str = "custom"

    def on(self, control: str) -> bool:
        """Whether ``control`` is 1 in effect (secondary controls count only when activated)."""
        c = CONTROLS[control]
        if c.group == "secondary" and not self.primary >> 31 & 1:
            return False
        return bool(getattr(self, c.group) >> c.bit & 1)

    def without(self, control: str) -> "Controls":
        """This configuration with ``control`` set to 0 (for the controls search): a VM-execution
        control by name, ``exception_V`` for bit V of the exception bitmap, or ``pfec_filter``
        for the page-fault error-code mask and match (both 0: bit 14 alone decides)."""
        if control == PFEC_FILTER:
            return replace(self, pfec_mask=0, pfec_match=0, name=f"{self.name} without {control}")
        kind, _, v = control.rpartition("_")
        if kind == "exception" and v.isdigit():
            return replace(self, exception_bitmap=self.exception_bitmap & ~(1 << int(v)),
                           name=f"{self.name} without {control}")
        c = CONTROLS[control]
        return replace(self, **{c.group: getattr(self, c.group) & ~(1 << c.bit)},
                       name=f"{self.name} without {control}")

    def exception_exit(self, vector: int, reason: str, code=None):
        """(the VM exit a fault with ``vector`` and error code ``code`` becomes, the condition on
        ``code`` under which it does) by the exception bitmap (SDM Vol. 3C 24.6.3, 25.2), or
        (None, False): the fault is delivered through the guest's IDT.  A #PF exits iff bit 14 of
        the bitmap XOR (PFEC AND PFEC_MASK != PFEC_MATCH): with bit 14 set, the error codes the
        mask and match select exit; with it clear, exactly the others do."""
        from .outcome import PF, Exit
        bit = bool(self.exception_bitmap >> vector & 1)
        if vector == PF and code is not None:
            selected = code & self.pfec_mask == self.pfec_match
            import z3
            cond = selected if bit else z3.Not(selected)
            why = (f"{reason}; bit 14 of the exception bitmap is {int(bit)} and the error code "
                   f"{'matches' if bit else 'does not match'} PFEC_MASK {self.pfec_mask:#x} / "
                   f"PFEC_MATCH {self.pfec_match:#x}")
            return Exit("vmx", "exception", EXIT_REASONS["exception"], None, why), cond
        if not bit:
            return None, False
        return Exit("vmx", "exception", EXIT_REASONS["exception"], None,
                    f"{reason}; vector {vector} is set in the exception bitmap"), True

    def io_port_exits(self, port: int) -> bool:
        if self.on("use_io_bitmaps"):
            return port in self.io_exits
        return self.on("unconditional_io_exiting")

    def as_json(self) -> dict:
        return {"name": self.name,
                **{g: {c.name: self.on(c.name) for c in CONTROLS.values() if c.group == g} for g in GROUPS},
                "raw": {g: f"{getattr(self, g):#010x}" for g in GROUPS},
                "exception_bitmap": f"{self.exception_bitmap:#010x}",
                "pfec_mask": f"{self.pfec_mask:#010x}", "pfec_match": f"{self.pfec_match:#010x}",
                "cr0_mask": f"{self.cr0_mask:#010x}", "cr0_shadow": f"{self.cr0_shadow:#010x}",
                "cr4_mask": f"{self.cr4_mask:#010x}", "cr4_shadow": f"{self.cr4_shadow:#010x}",
                "cr3_targets": [f"{v:#x}" for v in self.cr3_targets],
                "io_bitmap_ports": _ranges(self.io_exits),
                "msr_read_exits": [f"{m:#x}" for m in sorted(self.msr_read_exits)],
                "msr_write_exits": [f"{m:#x}" for m in sorted(self.msr_write_exits)],
                "tsc_offset": f"{self.tsc_offset:#x}",
                "xss_exiting_bitmap": f"{self.xss_exiting_bitmap:#x}"}


def _ranges(ports: frozenset[int]) -> list[str]:
    out, run = [], None
    for p in sorted(ports):
        if run and p == run[1] + 1:
            run[1] = p
        else:
            if run:
                out.append(f"{run[0]:#x}-{run[1]:#x}" if run[1] > run[0] else f"{run[0]:#x}")
            run = [p, p]
    if run:
        out.append(f"{run[0]:#x}-{run[1]:#x}" if run[1] > run[0] else f"{run[0]:#x}")
    return out


def _vector(group: str, names: list[str]) -> int:
    v = DEFAULT1[group]
    for n in names:
        v |= 1 << CONTROLS[n].bit
    return v


ALL_MSRS_OF_THE_MODEL = (0x10, 0x174, 0x175, 0x176, 0xC0000103)   # TSC, SYSENTER_*, TSC_AUX

# The documented default: what a monitor for a 32-bit unpaged guest needs, with EPT and
# unrestricted guest so that the guest's own CR0.PG = 0 runs as is (26.3.1.1).
DEFAULT = Controls(
    pin=_vector("pin", ["external_interrupt_exiting", "nmi_exiting"]),
    primary=_vector("primary", ["hlt_exiting", "invlpg_exiting", "mwait_exiting", "rdpmc_exiting",
                                "rdtsc_exiting", "mov_dr_exiting", "use_io_bitmaps", "use_msr_bitmaps",
                                "monitor_exiting", "activate_secondary_controls"]),
    secondary=_vector("secondary", ["enable_ept", "unrestricted_guest", "wbinvd_exiting",
                                    "rdrand_exiting", "rdseed_exiting", "enable_rdtscp",
                                    "enable_invpcid", "enable_xsaves_xrstors",
                                    "enable_user_wait_and_pause"]),
    # The guest believes it runs unpaged protected mode with native x87 error reporting: it reads
    # PE = NE = 1, PG = 0 whatever VMX fixes in the real CR0 (23.8, 24.6.6).
    cr0_mask=CR0_NE | CR0_PG | CR0_PE, cr0_shadow=CR0_PE | CR0_NE,
    cr4_mask=CR4_VMXE, cr4_shadow=0,
    io_exits=frozenset(range(1 << 16)),
    msr_read_exits=frozenset(ALL_MSRS_OF_THE_MODEL), msr_write_exits=frozenset(ALL_MSRS_OF_THE_MODEL),
    name="default")


def check(c: Controls) -> Controls:
    """``c`` if VM entry accepts it; else ControlsError naming the rule (SDM Vol. 3C 26.2.1.1)."""
    for g in GROUPS:
        v = getattr(c, g)
        if not 0 <= v < 1 << 32:
            raise ControlsError(f"{g}-based controls {v:#x} are not a 32-bit value")
        bad = v & ~ALLOWED1[g]
        if bad:
            raise ControlsError(f"reserved bit(s) {_bits(bad)} of the {g} controls set: they must be 0 "
                                "(allowed 1-settings, SDM Vol. 3C A.3; VM entry fails, 26.2.1.1)")
        missing = DEFAULT1[g] & ~v
        if missing:
            raise ControlsError(f"bit(s) {_bits(missing)} of the {g} controls cleared: they are in the "
                                "default1 class and must be 1 (SDM Vol. 3C A.2)")
    for n, why in NOT_HERE.items():
        if c.on(n):
            raise ControlsError(f"{n} set: {why}; pgvirt's processor and guests are 32-bit")
    rules = [
        ("virtual_nmis", "nmi_exiting", "'virtual NMIs' needs 'NMI exiting' (SDM Vol. 3C 26.2.1.1)"),
        ("nmi_window_exiting", "virtual_nmis", "'NMI-window exiting' needs 'virtual NMIs' (26.2.1.1)"),
        ("unrestricted_guest", "enable_ept", "'unrestricted guest' needs 'enable EPT' (26.2.1.1)"),
        ("enable_pml", "enable_ept", "'enable PML' needs 'enable EPT' (26.2.1.1)"),
    ]
    for a, b, why in rules:
        if c.on(a) and not c.on(b):
            raise ControlsError(why)
    if len(c.cr3_targets) > 4:
        raise ControlsError(f"{len(c.cr3_targets)} CR3-target values: at most 4 (IA32_VMX_MISC bits "
                            "24:16, SDM Vol. 3C 24.6.7, A.6; 26.2.1.1)")
    for name in ("exception_bitmap", "pfec_mask", "pfec_match", "cr0_mask", "cr0_shadow", "cr4_mask",
                 "cr4_shadow"):
        v = getattr(c, name)
        if not 0 <= v < 1 << 32:
            raise ControlsError(f"{name} {v:#x} is not a 32-bit value")
    if not 0 <= c.xss_exiting_bitmap < 1 << 64:
        raise ControlsError(f"xss_exiting_bitmap {c.xss_exiting_bitmap:#x} is not a 64-bit value")
    if any(not 0 <= p < 1 << 16 for p in c.io_exits):
        raise ControlsError("the I/O bitmaps cover ports 0-0xFFFF only (SDM Vol. 3C 24.6.4)")
    for what, msrs in (("read", c.msr_read_exits), ("write", c.msr_write_exits)):
        for m in msrs:
            if not (0 <= m <= 0x1FFF or 0xC0000000 <= m <= 0xC0001FFF):
                raise ControlsError(f"MSR {m:#x} is outside the MSR bitmaps' ranges 0-0x1FFF and "
                                    f"0xC0000000-0xC0001FFF: its {what}s always exit (SDM Vol. 3C 24.6.9)")
    return c


def guest_cr0_ok(c: Controls, cr0: int) -> bool:
    """Whether VM entry accepts a guest CR0 (SDM Vol. 3C 26.3.1.1): the fixed bits, relaxed for
    PE and PG by unrestricted guest; PG without PE is never valid."""
    fixed0 = CR0_FIXED0 & ~((CR0_PE | CR0_PG) if c.on("unrestricted_guest") else 0)
    return cr0 & fixed0 == fixed0 and not (cr0 & CR0_PG and not cr0 & CR0_PE)


def _bits(v: int) -> str:
    return ", ".join(str(b) for b in range(32) if v >> b & 1)


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ControlsError(f"{where}: expected a number, got {v!r}")
    try:
        return int(v, 0) if isinstance(v, str) else v
    except ValueError:
        raise ControlsError(f"{where}: {v!r} is not a number") from None


def _ports(v: Any, where: str) -> frozenset[int]:
    """A port set written as numbers and "lo-hi" ranges, or "all" / "none"."""
    if v == "all":
        return frozenset(range(1 << 16))
    if v == "none":
        return frozenset()
    if not isinstance(v, list):
        raise ControlsError(f"{where}: expected a list of ports and ranges, \"all\" or \"none\"")
    out: set[int] = set()
    for k, item in enumerate(v):
        if isinstance(item, str) and "-" in item:
            lo, hi = (_int(x.strip(), f"{where}[{k}]") for x in item.split("-", 1))
            if hi < lo:
                raise ControlsError(f"{where}[{k}]: range {item!r} ends before it starts")
            out.update(range(lo, hi + 1))
        else:
            out.add(_int(item, f"{where}[{k}]"))
    return frozenset(out)


KEYS = ("name", "pin", "primary", "secondary", "exception_bitmap", "pfec_mask", "pfec_match",
        "cr0_mask", "cr0_shadow",
        "cr4_mask", "cr4_shadow", "cr3_targets", "io_bitmap_ports", "msr_read_exits",
        "msr_write_exits", "tsc_offset", "xss_exiting_bitmap", "base")


def from_json(doc: Mapping, where: str = "controls") -> Controls:
    """A configuration from JSON: each control group either ``{"control_name": true, ...}`` (on top
    of the default1 bits) or a raw 32-bit value; ``"base": "default"`` starts from ``DEFAULT`` and
    changes only what the file names.  Checked with ``check``."""
    if not isinstance(doc, Mapping):
        raise ControlsError(f"{where}: expected a JSON object")
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise ControlsError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    base = doc.get("base")
    if base not in (None, "default"):
        raise ControlsError(f"{where}: base {base!r}: the only base is \"default\"")
    c = DEFAULT if base == "default" else Controls(DEFAULT1["pin"], DEFAULT1["primary"], 0)
    changes: dict[str, Any] = {"name": str(doc.get("name", "custom"))}
    for g in GROUPS:
        if g not in doc:
            continue
        v = doc[g]
        if isinstance(v, Mapping):
            cur = getattr(c, g)
            for n, on in v.items():
                ctl = CONTROLS.get(n)
                if ctl is None:
                    close = [k for k in CONTROLS if n.split("_")[0] in k][:3]
                    raise ControlsError(f"{where}: unknown control {n!r}"
                                        + (f" (did you mean {', '.join(close)}?)" if close else ""))
                if ctl.group != g:
                    raise ControlsError(f"{where}: {n} is a {ctl.group} control, not a {g} one")
                if not isinstance(on, bool):
                    raise ControlsError(f"{where}: {g}.{n} must be true or false")
                cur = cur | (1 << ctl.bit) if on else cur & ~(1 << ctl.bit)
            changes[g] = cur
        else:
            changes[g] = _int(v, f"{where}: {g}")
    for k in ("exception_bitmap", "pfec_mask", "pfec_match", "cr0_mask", "cr0_shadow", "cr4_mask",
              "cr4_shadow", "tsc_offset", "xss_exiting_bitmap"):
        if k in doc:
            changes[k] = _int(doc[k], f"{where}: {k}")
    if "cr3_targets" in doc:
        if not isinstance(doc["cr3_targets"], list):
            raise ControlsError(f"{where}: cr3_targets must be a list")
        changes["cr3_targets"] = tuple(_int(v, f"{where}: cr3_targets") for v in doc["cr3_targets"])
    if "io_bitmap_ports" in doc:
        changes["io_exits"] = _ports(doc["io_bitmap_ports"], f"{where}: io_bitmap_ports")
    for k in ("msr_read_exits", "msr_write_exits"):
        if k in doc:
            if not isinstance(doc[k], list):
                raise ControlsError(f"{where}: {k} must be a list of MSR numbers")
            changes[k] = frozenset(_int(v, f"{where}: {k}") for v in doc[k])
    return check(replace(c, **changes))


def load(path: str) -> Controls:
    """``from_json`` of a file (a regular file, at most 1 MiB)."""
    from .files import InputError, read_regular

    try:
        text = read_regular(path, "controls file", 1 << 20)
        doc = json.loads(text)
    except InputError as e:
        raise ControlsError(str(e)) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ControlsError(f"{path}: not JSON ({str(e).splitlines()[0][:100]})") from None
    return from_json(doc, path)


check(DEFAULT)
