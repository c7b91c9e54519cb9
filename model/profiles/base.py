"""What every profile is made of: the processor's features and what a monitor imposes on a
deprivileged guest, the well-formed states, and the mode and relocation the queries read.

A profile is data.  ``features`` are facts of the processor (``umip``: CR4.UMIP exists).
``host`` is the real setting a trap-and-emulate monitor chooses while a guest runs: CPL 3, IOPL 0,
CR4 and CR0 bits, a TSS without an I/O permission bitmap.  The Popek-Goldberg *mode* of a state
is its CPL together with exactly these host-chosen fields.  ``passthrough`` names the SYSTEM bits
the monitor loads with the guest's own values while the guest runs (its FPU/SIMD controls): they
are equal in both states of a mode pair and of a location pair, like USER fields, though writing
them stays privileged.  Every other SYSTEM field is *relocation*.
"""

from __future__ import annotations

from dataclasses import dataclass

import z3

from .. import state as st
from ..features import check as _check_features
from ..state import State


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    features: frozenset[str] = frozenset()
    cr4_set: tuple[int, ...] = ()      # CR4 bits the monitor sets while the guest runs
    cr4_clear: tuple[int, ...] = ()    # CR4 bits the monitor clears
    iopl: int = 0
    io_bitmap: bool = False            # False: the TSS has no I/O permission bitmap
    cr0_set: tuple[int, ...] = ()      # CR0 bits the monitor sets while the guest runs
    cr0_clear: tuple[int, ...] = ()    # CR0 bits the monitor clears
    passthrough: tuple[tuple[str, int], ...] = ()   # (field, mask): the guest's own values
    notes: tuple[str, ...] = ()        # why each host or passed-through setting, with its source
    # VMX non-root operation / an SVM guest: the ``vmx.Controls`` or ``svm.Intercepts`` the guest
    # runs under (``profiles.hardware``); None for a trap-and-emulate monitor's deprivileged guest.
    vm: object = None

    def __post_init__(self) -> None:
        _check_features(self.features)     # every name is one of ``features.FEATURES``

    @property
    def mode_bits(self) -> dict[str, int]:
        """Fields (and bit masks) that make up the *mode* besides CPL."""
        cr4 = sum(1 << b for b in self.cr4_set + self.cr4_clear)
        out = {"sysflags": 3 << st.IOPL_LO, "cr4": cr4}
        cr0 = sum(1 << b for b in self.cr0_set + self.cr0_clear)
        if cr0:
            out["cr0"] = cr0
        return out

    @property
    def guest_bits(self) -> dict[str, int]:
        """SYSTEM bits passed through from the guest (equal in mode and location pairs)."""
        out: dict[str, int] = {}
        for name, mask in self.passthrough:
            out[name] = out.get(name, 0) | mask
        return out

    @property
    def kept_bits(self) -> dict[str, int]:
        """SYSTEM bits a location pair shares: the mode's and the passed-through ones."""
        out = dict(self.mode_bits)
        for name, mask in self.guest_bits.items():
            out[name] = out.get(name, 0) | mask
        return out

    def as_json(self) -> dict:
        return {"name": self.name, "description": self.description,
                "features": sorted(self.features),
                "host": {"cpl": 3, "iopl": self.iopl,
                         "cr4_set": [CR4_NAMES[b] for b in self.cr4_set],
                         "cr4_clear": [CR4_NAMES[b] for b in self.cr4_clear],
                         "cr0_set": [CR0_NAMES[b] for b in self.cr0_set],
                         "cr0_clear": [CR0_NAMES[b] for b in self.cr0_clear],
                         "io_bitmap": self.io_bitmap},
                "guest_passthrough": {f: _bit_names(f, m) for f, m in self.guest_bits.items()},
                "notes": list(self.notes),
                **({"controls": self.vm.as_json()} if self.vm is not None else {})}

    def with_controls(self, vm) -> "Profile":
        """This hardware profile under another configuration (``--controls FILE``, the search)."""
        from dataclasses import replace
        if self.vm is None or type(vm) is not type(self.vm):
            raise ValueError(f"profile {self.name!r} takes no {type(vm).__name__}")
        return replace(self, vm=vm)


CR4_NAMES = {st.CR4_VME: "VME", st.CR4_PVI: "PVI", st.CR4_TSD: "TSD", st.CR4_DE: "DE",
             st.CR4_PSE: "PSE", st.CR4_PAE: "PAE", st.CR4_MCE: "MCE", st.CR4_PGE: "PGE",
             st.CR4_PCE: "PCE", st.CR4_OSFXSR: "OSFXSR", st.CR4_OSXMMEXCPT: "OSXMMEXCPT",
             st.CR4_UMIP: "UMIP", st.CR4_OSXSAVE: "OSXSAVE", st.CR4_PKE: "PKE"}
CR0_NAMES = {st.CR0_PE: "PE", st.CR0_MP: "MP", st.CR0_EM: "EM", st.CR0_TS: "TS", st.CR0_ET: "ET",
             st.CR0_NE: "NE", st.CR0_WP: "WP", st.CR0_AM: "AM", st.CR0_NW: "NW", st.CR0_CD: "CD",
             st.CR0_PG: "PG"}
_NAMES = {"cr0": CR0_NAMES, "cr4": CR4_NAMES, "sysflags": {st.AC: "AC", st.IF: "IF"}}


def _bit_names(field: str, mask: int) -> list[str] | str:
    names = _NAMES.get(field)
    if names is None or mask & ~sum(1 << b for b in names):
        return f"{mask:#x}"
    return [names[b] for b in sorted(names) if mask >> b & 1]


PROFILES: dict[str, Profile] = {}


def register(p: Profile) -> Profile:
    if p.name in PROFILES:
        raise ValueError(f"profile {p.name!r} defined twice")
    PROFILES[p.name] = p
    return p


class UnknownProfile(KeyError):
    def __str__(self) -> str:
        return f"unknown profile {self.args[0]!r} (known: {', '.join(PROFILES)})"


class NotTrapAndEmulate(KeyError):
    """A hardware profile where a trap-and-emulate mode pair is asked for (one line, exit 2)."""

    def __str__(self) -> str:
        return (f"profile {self.args[0]!r} runs its guest in VMX non-root operation / SVM guest mode: "
                "its mode is root versus non-root (profiles.hardware), not a deprivileged CPL-3 twin; "
                "classify, verify, controls and scan take it, the site prover does not")


def _trap_and_emulate(profile: Profile) -> None:
    if profile.vm is not None:
        raise NotTrapAndEmulate(profile.name)


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(name) from None


# --- well-formed states ------------------------------------------------------------------------

ASSUMPTIONS = (
    "32-bit protected mode without paging: CR0.PE = 1, CR0.ET = 1, CR0.PG = 0, EFLAGS.VM = 0, CS.D = SS.B = 1",
    "no single-step or resume in flight: EFLAGS.TF = 0, EFLAGS.RF = 0 before the instruction",
    "no debug breakpoints armed: DR7 enables none of DR0-DR3",
    "CS.RPL = SS.RPL = SS.DPL = CPL; CS holds code (DPL = CPL unless conforming), SS writable data",
    "loaded segment caches have the accessed bit set; a null LDTR has an empty cache",
    "TR holds a busy 32-bit TSS; reserved EFLAGS/CR0/CR4/EFER/XCR0 bits are clear; the CPU is not halted",
    "not in SMM, VMX operation, SMX operation, an SGX enclave or an SVM guest; CET disabled (CR4.CET = 0 where it exists)",
    "memory accesses are inside their segments: limit and paging faults (Popek-Goldberg's memory traps) are out of scope",
)


def seg_attr_type(attr):
    return z3.Extract(3, 0, attr)


def seg_attr_s(attr):
    return z3.Extract(4, 4, attr) == 1


def seg_attr_dpl(attr):
    return z3.Extract(6, 5, attr)


def seg_attr_p(attr):
    return z3.Extract(7, 7, attr) == 1


def wellformed(s: State, profile: Profile) -> z3.BoolRef:
    """The states the model speaks about (``ASSUMPTIONS`` in words)."""
    # CS.D = 1 and SS.B = 1: the forms are 32-bit code pushing through ESP (SDM 3A 3.4.5).
    cs_code = z3.And(seg_attr_s(s.cs_attr), z3.Extract(3, 3, s.cs_attr) == 1, seg_attr_p(s.cs_attr),
                     z3.Extract(14, 14, s.cs_attr) == 1)
    cs_conf = z3.Extract(2, 2, s.cs_attr) == 1
    ss_data = z3.And(seg_attr_s(s.ss_attr), z3.Extract(3, 3, s.ss_attr) == 0,
                     z3.Extract(1, 1, s.ss_attr) == 1, seg_attr_p(s.ss_attr),
                     z3.Extract(14, 14, s.ss_attr) == 1)
    cr4_ok = st.cr4_defined(profile.features)
    attrs_ok = [z3.Extract(11, 8, s[f"{r}_attr"]) == 0 for r in st.SREGS] + [
        z3.Extract(11, 8, s.tr_attr) == 0]
    # A loaded segment's cache has its accessed bit: the load itself set it (SDM 3A 3.4.5.1).
    accessed = [z3.Implies(seg_attr_p(s[f"{r}_attr"]), z3.Extract(0, 0, s[f"{r}_attr"]) == 1)
                for r in st.SREGS]
    null_ldt = z3.Implies(z3.Extract(15, 2, s.ldtr) == 0, z3.And(s.ldtr_base == 0, s.ldtr_limit == 0))
    return z3.And(
        # ET is hard-wired to 1 from the P6 on (SDM 3A 2.5); MOV CR0 keeps it set.
        st.bit(s.cr0, st.CR0_PE), st.bit(s.cr0, st.CR0_ET), z3.Not(st.bit(s.cr0, st.CR0_PG)),
        s.cr0 & ~st.CR0_DEFINED == 0, s.cr4 & ~cr4_ok == 0,
        s.flags & ~st.USER_FLAGS_MASK == 0, s.sysflags & ~st.SYS_FLAGS_MASK == 0,
        z3.Not(st.bit(s.sysflags, st.VM)), z3.Not(st.bit(s.sysflags, st.TF)),
        z3.Not(st.bit(s.sysflags, st.RF)),
        s.dr7 & 0xFF == 0,
        z3.Extract(1, 0, s.cs) == s.cpl, z3.Extract(1, 0, s.ss) == s.cpl,
        seg_attr_dpl(s.ss_attr) == s.cpl, ss_data, cs_code,
        z3.If(cs_conf, z3.ULE(seg_attr_dpl(s.cs_attr), s.cpl), seg_attr_dpl(s.cs_attr) == s.cpl),
        z3.Extract(7, 0, s.tr_attr) & 0x9F == 0x8B,
        z3.ULE(z3.BitVecVal(0x67, 32), s.tr_limit),
        s.halted == 0, s.xss & ~st.XSS_SUPPORTED == 0, *attrs_ok, *accessed, null_ldt, *xstate_ok(s, profile),
        # IA32_EFER with only the bits the processor defines, GIF = 1 where there is no SVM to clear it
        s.efer & ~st.efer_defined(profile.features) == 0,
        *(() if "svm" in profile.features else (s.gif == 1,)),
    )


def xstate_ok(s: State, profile: Profile) -> list:
    """XCR0 as XSETBV leaves it (SDM Vol. 2D XSETBV: bit 0 set, AVX needs SSE, the AVX-512 bits
    together and with AVX), MXCSR without reserved bits (LDMXCSR #GP), an 11-bit FOP."""
    x = s.xcr0
    avx512 = z3.Extract(st.XCR0_HI16_ZMM, st.XCR0_OPMASK, x)
    return [x & ~st.xcr0_supported(profile.features) == 0, z3.Extract(0, 0, x) == 1,
            z3.Implies(st.bit(x, st.XCR0_AVX), st.bit(x, st.XCR0_SSE)),
            z3.Or(avx512 == 0, z3.And(avx512 == 7, st.bit(x, st.XCR0_AVX))),
            st.bit(x, st.XCR0_BNDREGS) == st.bit(x, st.XCR0_BNDCSR),
            s.mxcsr & ~0xFFFF == 0, s.fop & ~0x7FF == 0]


def io_map_base(s: State):
    """The TSS's I/O map base field at offset 0x66, and the two addresses it occupies."""
    a = s.tr_base + 0x66
    v = z3.Concat(z3.Select(s.mem, a + 1), z3.Select(s.mem, a))
    return v, [("mem", a), ("mem", a + 1)]


def host_settings(profile: Profile) -> list[tuple[str, int, int]]:
    """What the monitor imposes on a deprivileged guest, as (field, mask, value): IOPL and the
    CR4 and CR0 bits of the profile (the CPL is the mode itself).  ``host_constraints``,
    ``with_mode`` and the check-patch proofs all read this one list."""
    out = [("sysflags", 3 << st.IOPL_LO, profile.iopl << st.IOPL_LO)]
    for name, sets, clears in (("cr4", profile.cr4_set, profile.cr4_clear),
                               ("cr0", profile.cr0_set, profile.cr0_clear)):
        mask = sum(1 << b for b in sets + clears)
        if mask:
            out.append((name, mask, sum(1 << b for b in sets)))
    return out


def host_constraints(s: State, profile: Profile) -> z3.BoolRef:
    """``s`` runs as the monitor runs its guest: CPL 3 and every host setting."""
    return z3.And([s.cpl == 3] + [s[f] & m == v for f, m, v in host_settings(profile)])


def deprivileged(s: State, profile: Profile):
    """Constraints that ``s`` is a guest state as the monitor really runs it, and the memory read:
    the host settings and, without an I/O permission bitmap, a TSS whose map base lies past its
    limit.  Returns (constraint, addresses) so witnesses carry the TSS bytes it reads.
    """
    _trap_and_emulate(profile)
    conds = [host_constraints(s, profile)]
    addrs = []
    if not profile.io_bitmap:
        base, addrs = io_map_base(s)
        conds.append(z3.UGT(z3.ZeroExt(16, base), s.tr_limit))
    return z3.And(conds), addrs


def with_mode(s: State, cpl, profile: Profile, host: bool) -> State:
    """``s`` moved to privilege ``cpl``: CPL, CS/SS RPL and DPL follow; with ``host`` the
    profile's host settings (IOPL, CR4 bits) are imposed, as a monitor does for its guest."""
    _trap_and_emulate(profile)
    cpl = z3.BitVecVal(cpl, 2) if isinstance(cpl, int) else cpl
    c16 = z3.ZeroExt(14, cpl)
    conf = z3.Extract(2, 2, s.cs_attr) == 1
    cs_attr = z3.If(conf, s.cs_attr, (s.cs_attr & ~0x60) | (z3.ZeroExt(14, cpl) << 5))
    new = dict(cpl=cpl, cs=(s.cs & ~3) | c16, ss=(s.ss & ~3) | c16,
               ss_attr=(s.ss_attr & ~0x60) | (c16 << 5), cs_attr=cs_attr)
    if host:
        for f, m, v in host_settings(profile):
            new[f] = (s[f] & ~m) | v
    return s.replace(**new)
