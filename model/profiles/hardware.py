"""Mode and relocation under hardware virtualization, written once for VT-x and SVM.

Under the ``vtx`` and ``svm`` profiles the Popek-Goldberg *mode* is root versus non-root (SVM:
host versus guest): the guest runs at its own CPL on the duplicated state (the VMCS guest-state
area, the VMCB save area), and the monitor owns only what that duplicate does not cover.
``ownership`` says what that is, as a function of the configuration; ``guest_view`` builds the
guest's own machine from a non-root state (the monitor-owned fields free, the masked CR0/CR4
bits as their read shadows present them, the TSC as offset), and ``entry_ok`` what VM entry /
VMRUN requires of the real state.  The queries (``verify.popek_goldberg``) read these and
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import z3

from .. import state as st
from .. import svm, vmx

ALL = (1 << 64) - 1


@dataclass(frozen=True)
class Ownership:
    """What the monitor owns while the guest runs in non-root operation / guest mode."""

    fields: tuple[tuple[str, int, str], ...]       # (field, bits the monitor owns, why)
    shadows: tuple[tuple[str, int, int, str], ...]  # (field, mask, shadow): the guest reads shadow
    io_ports: frozenset[int]                        # ports whose devices the monitor emulates
    tsc_offset: int | None                          # guest TSC = real + offset (None: owned)

    def mask(self, name: str) -> int:
        return sum(m for f, m, _ in self.fields if f == name)

    def shadow(self, name: str) -> tuple[int, int]:
        for f, m, v, _ in self.shadows:
            if f == name:
                return m, v
        return 0, 0

    def guest_part(self, name: str) -> tuple[int, int, int]:
        """(the bits of system field ``name`` that are the guest's own, neither owned by the
        monitor nor read through a shadow; the shadowed bits; the value they read as)."""
        sm, sv = self.shadow(name)
        return ((1 << st.FIELD[name].width) - 1) & ~self.mask(name) & ~sm, sm, sv

    def io_owned(self, port):
        """Whether ``port`` (a 16-bit term) is a port the monitor owns."""
        if len(self.io_ports) == 1 << 16:
            return z3.BoolVal(True)
        from ..checks import _ports
        return _ports(port, 1, self.io_ports)

    def as_json(self) -> dict:
        return {"owned": [{"field": f, "mask": f"{m & ((1 << st.FIELD[f].width) - 1):#x}", "why": w}
                          for f, m, w in self.fields],
                "shadowed": [{"field": f, "mask": f"{m:#x}", "shadow": f"{v:#x}", "why": w}
                             for f, m, v, w in self.shadows],
                "io_ports_owned": "all" if len(self.io_ports) == 1 << 16 else vmx._ranges(self.io_ports),
                "tsc": "owned by the monitor" if self.tsc_offset is None
                       else f"the guest's: real TSC + {self.tsc_offset:#x}"}


def ownership(c) -> Ownership:
    """The monitor-owned state under ``c`` (``vmx.Controls`` or ``svm.Intercepts``)."""
    return _vmx_ownership(c) if isinstance(c, vmx.Controls) else _svm_ownership(c)


def _common(io_ports: frozenset[int]) -> list[tuple[str, int, str]]:
    return [
        ("caches", ALL, "the physical caches hold every guest's data: INVD/WBINVD act on all of them"),
        ("halted", ALL, "the physical processor: a guest HLT without an exit idles it"),
        ("pmc0", ALL, "the performance counters count for the host"),
        ("pmc1", ALL, "the performance counters count for the host"),
    ]


def _vmx_ownership(c: vmx.Controls) -> Ownership:
    f = _common(frozenset())
    if not c.on("enable_ept"):
        f += [("cr3", ALL, "without EPT the real CR3 is the monitor's shadow page table (SDM Vol. 3C 28.3)"),
              ("tlb", ALL, "without EPT the TLB holds the shadow page table's translations")]
    if not c.on("external_interrupt_exiting"):
        f.append(("sysflags", 1 << st.IF, "without external-interrupt exiting the guest's IF masks "
                                          "the physical interrupts (SDM Vol. 3C 25.2)"))
    ports = c.io_exits if c.on("use_io_bitmaps") else frozenset(range(1 << 16))
    shadows = []
    if c.cr0_mask:
        shadows.append(("cr0", c.cr0_mask, c.cr0_shadow & c.cr0_mask,
                        "CR0 guest/host mask: host-owned bits, the guest reads the shadow (SDM Vol. 3C 24.6.6)"))
    if c.cr4_mask:
        shadows.append(("cr4", c.cr4_mask, c.cr4_shadow & c.cr4_mask,
                        "CR4 guest/host mask: host-owned bits, the guest reads the shadow (SDM Vol. 3C 24.6.6)"))
    off = c.tsc_offset if c.on("use_tsc_offsetting") else None
    if off is None:
        f.append(("tsc", ALL, "without TSC offsetting the guest reads the host's TSC"))
    return Ownership(tuple(f), tuple(shadows), ports, off)


def _svm_ownership(c: svm.Intercepts) -> Ownership:
    f = _common(frozenset())
    if not c.nested_paging:
        f += [("cr3", ALL, "without nested paging the real CR3 is the monitor's shadow page table "
                           "(APM Vol. 2 15.25)"),
              ("tlb", ALL, "without nested paging the TLB holds the shadow page table's translations"),
              ("cr0", (1 << st.CR0_PG) | (1 << st.CR0_WP),
               "without nested paging the monitor forces paging on (CR0.PG, WP): SVM has no read shadow")]
    if not c.on("intr"):
        f.append(("sysflags", 1 << st.IF, "without the INTR intercept the guest's IF masks the "
                                          "physical interrupts (APM Vol. 2 15.21)"))
    f.append(("gif", ALL, "GIF gates the host's interrupts; the guest runs with GIF = 1 (APM Vol. 2 15.17)"))
    # EFER.SVME must be 1 in guest mode (15.5.1), and no intercept hides it: at CPL 3 the SVM
    # instructions raise #GP, not #UD, before their intercepts are checked.  So the guest's own
    # machine is one with SVME set, and a guest write that clears it must exit (the MSRPM).
    shadows = (("efer", svm.EFER_SVME, svm.EFER_SVME,
                "EFER.SVME is 1 in guest mode and shows (APM Vol. 2 15.5.1): the guest's machine has it set"),)
    ports = c.io_exits if c.on("ioio_prot") else frozenset(range(1 << 16))
    return Ownership(tuple(f), shadows, ports, c.tsc_offset)


def guest_view(s, own: Ownership, tag: str = "n"):
    """The guest's own machine for the non-root state ``s``: equal in every field the guest owns,
    free (fresh) in the monitor-owned bits, the read shadows in the masked CR0/CR4 bits, and the
    TSC plus the offset.  A run there is what the guest would see on bare hardware."""
    changes = {}
    for name in {f for f, _, _ in own.fields}:
        m = own.mask(name) & ((1 << st.FIELD[name].width) - 1)
        fresh = z3.Const(f"{tag}.{name}", st.sort_of(st.FIELD[name]))
        changes[name] = fresh if m == (1 << st.FIELD[name].width) - 1 else (s[name] & ~m) | (fresh & m)
    for name, m, v, _ in own.shadows:
        changes[name] = (changes.get(name, s[name]) & ~m) | v
    if own.tsc_offset is not None:
        changes["tsc"] = s.tsc + own.tsc_offset
    devices = z3.Const(f"{tag}.io", st.sort_of(st.FIELD["io"]))
    if len(own.io_ports) == 1 << 16:
        changes["io"] = devices
    elif own.io_ports:
        p = z3.BitVec(f"{tag}.port", 16)
        changes["io"] = z3.Lambda([p], z3.If(own.io_owned(p), devices[p], s.io[p]))
    return s.replace(**changes)


def _g_consistent(limit, g) -> z3.BoolRef:
    """A segment's limit and G as VM entry checks them (SDM Vol. 3C 26.3.1.2): G = 0 when a bit of
    limit[11:0] is 0, G = 1 when a bit of limit[31:20] is 1."""
    return z3.And(z3.Implies(limit & 0xFFF != 0xFFF, z3.Not(g)),
                  z3.Implies(z3.UGT(limit, 0xFFFFF), g))


def vmx_segments_ok(s, c: vmx.Controls) -> z3.BoolRef:
    """VM entry's checks on the guest segment registers (SDM Vol. 3C 26.3.1.2) that the model's
    state can express and its well-formedness (``profiles.wellformed``: CS code, SS writable
    data, CPL = SS.DPL = CS.RPL = SS.RPL, TR a busy 32-bit TSS, accessed bits, attr[11:8] = 0)
    does not already state, for a guest outside IA-32e and virtual-8086 mode.  The VMCS reads a
    segment as unusable (24.4.1) where the state's cache is not present, a data register's
    selector is null, or LDTR is null; LDTR's access rights are those of an LDT (type 2, S = 0,
    P = 1) with G as its limit needs, the state keeping no attributes of its own for it.  Every
    one of these is what loading the register leaves (Vol. 3A 3.4.5, 5.4, 7.2.4; LLDT), so no
    state a guest can reach from one VM entry accepts is left out."""
    def g_bit(attr):
        return z3.Extract(15, 15, attr) == 1
    out = [z3.Extract(2, 2, s.tr) == 0, _g_consistent(s.tr_limit, g_bit(s.tr_attr))]
    for r in ("cs", "ss"):
        out.append(_g_consistent(s[f"{r}_limit"], g_bit(s[f"{r}_attr"])))
    for r in ("ds", "es", "fs", "gs"):
        attr = s[f"{r}_attr"]
        usable = z3.And(z3.Extract(7, 7, attr) == 1, z3.Extract(15, 2, s[r]) != 0)
        code = z3.Extract(3, 3, attr) == 1
        rules = [z3.Extract(4, 4, attr) == 1, z3.Extract(0, 0, attr) == 1,
                 z3.Implies(code, z3.Extract(1, 1, attr) == 1),
                 _g_consistent(s[f"{r}_limit"], g_bit(attr))]
        if not c.on("unrestricted_guest"):
            # DPL >= RPL unless conforming code (types 12-15)
            rules.append(z3.Implies(z3.ULE(z3.Extract(3, 0, attr), 11),
                                    z3.UGE(z3.Extract(6, 5, attr), z3.Extract(1, 0, s[r]))))
        out.append(z3.Implies(usable, z3.And(rules)))
    ldt_usable = z3.Extract(15, 2, s.ldtr) != 0
    out.append(z3.Implies(ldt_usable, z3.And(
        z3.Extract(2, 2, s.ldtr) == 0,
        z3.Or(z3.ULE(s.ldtr_limit, 0xFFFFF), s.ldtr_limit & 0xFFF == 0xFFF))))
    return z3.And(out)


def entry_ok(s, c) -> z3.BoolRef:
    """What VM entry (SDM Vol. 3C 26.3.1.1: CR0/CR4 fixed bits, unrestricted guest relaxing PE and
    PG, CR4.PCIDE = 0 in a guest outside IA-32e mode; 26.3.1.2: ``vmx_segments_ok``) or VMRUN
    (APM Vol. 2 15.5.1: EFER.SVME = 1, GIF set by VMRUN) requires of the real state."""
    if isinstance(c, vmx.Controls):
        fixed0 = vmx.CR0_FIXED0 & ~((vmx.CR0_PE | vmx.CR0_PG) if c.on("unrestricted_guest") else 0)
        return z3.And(s.cr0 & fixed0 == fixed0, s.cr4 & vmx.CR4_FIXED0 == vmx.CR4_FIXED0,
                      z3.Not(st.bit(s.cr4, st.CR4_PCIDE)), vmx_segments_ok(s, c))
    return z3.And(s.efer & svm.EFER_SVME != 0, s.gif == 1)
