"""Where Bochs 2.7 (``corei7_haswell_4770`` for pentium, ``tigerlake`` for umip) departs from the
SDM or from the model's reading of it.

Each entry: what it affects, the SDM, what Bochs does, a reproduction (``base.Repro``, run
through the test kernel; the whole table in one boot, ``present_all``), the ``explains``
predicate, and where it can affect a witness, a ``trigger`` that steering avoids.  Bochs checks
everything the model checks and more (segment limits and types, alignment): those extra checks
are memory traps the model assumes away (``Outcome.in_segments``), so such states are not
compared at all rather than explained here.
"""

from __future__ import annotations

import z3

from pgvirt.model import state as st
from pgvirt.model.outcome import GP

from . import harness
from . import repro as R
from . import unicorn as U
from .base import Deviation, Repro
from .. import states as S

_VIF_VIP = (1 << st.VIF) | (1 << st.VIP)
_TSC_READS = ("rdtsc", "rdtscp")


def _vip_cases():
    return [R.case("nop", R.state(3, cr4=1 << st.CR4_PVI, sysflags=(1 << st.IF) | _VIF_VIP))]


def _x_vip(o, d):
    return (U._outcome(o, d) and o.emu_faults(GP) and o.emu.code == 0 and o.cpl == 3
            and o.cr4(st.CR4_PVI) and o.state["sysflags"] & _VIF_VIP == _VIF_VIP)


def _t_vip(form, s, o):
    return z3.And(s.cpl == 3, z3.Extract(st.CR4_PVI, st.CR4_PVI, s.cr4) == 1,
                  z3.Extract(st.VIP, st.VIF, s.sysflags) == 3)


def _lar_cases():
    s = R.state(3, eax=0x60 | 3)
    R.gdt(s, 0x60, S.descriptor(0, 0xFFFFF, S.data_attr(3) & ~S.G_BIT))   # limit[19:16] = 0xF
    return [R.case("lar_r", s)]


def _lar_holds(rs):
    return R.completes(rs[0]) and R.post(rs[0])["eax"] >> 16 & 0xF == 0xF


def _x_lar(o, d):
    return (o.name in ("lar_r", "lar_m") and d.kind == "reg" and d.key == "eax"
            and (d.model ^ d.emu) & ~0x000F0000 == 0)


def _tsc_aux_cases():
    return [R.case("wrmsr", R.state(0, ecx=0xC0000103, edx=1, eax=5))]


def _tsc_cases():
    return [R.case("rdtsc", R.state(0, tsc=0x1234))]


def _tsc_holds(rs):
    if not R.completes(rs[0]):
        return False
    v = R.post(rs[0])["edx"] << 32 | R.post(rs[0])["eax"]
    return 0x1234 < v < 0x1234 + (1 << 24)


def _x_tsc(o, d):
    reads = o.name in _TSC_READS or (o.name == "rdmsr" and o.state["ecx"] == st.MSR_TSC)
    if not reads or d.kind != "reg" or d.key not in ("eax", "edx") or o.model_post is None:
        return False
    post = o.emu_post
    model = o.model_post["edx"] << 32 | o.model_post["eax"]
    emu = post["edx"] << 32 | post["eax"]
    return 0 <= (emu - model) % (1 << 64) < 1 << 32          # the counter moved on, a little


def _cr4_cases():
    return [R.case("mov_cr4_r", R.state(0, eax=1 << 18))]              # CR4.OSXSAVE


def _pmc_cases():
    return [R.case("rdpmc", R.state(0, ecx=0, pmc0=0x123456789))]


def _x_pmc(o, d):
    return o.name == "rdpmc" and d.kind == "reg" and d.key in ("eax", "edx") and d.emu == 0


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "vip-vif-prefetch-gp", "any instruction at CPL 3 with CR4.PVI = 1 and EFLAGS.VIF = VIP = 1",
        "only STI and POPF that set VIF while VIP = 1 raise #GP(0) (SDM Vol. 3B 20.4, Vol. 2B STI, "
        "POPF); a state already holding both runs on",
        "#GP(0) on the next instruction fetch ('prefetch: inconsistent VME state')",
        Repro(_vip_cases, lambda rs: R.faults(rs[0], GP, 0)), explains=_x_vip, trigger=_t_vip),
    Deviation(
        "lar-limit-bits", "LAR r32",
        "DEST := access rights AND 00FxFF00H: bits 19:16 are loaded but undefined (SDM Vol. 2A "
        "LAR); the model clears them",
        "bits 19:16 hold the descriptor's limit[19:16]", Repro(_lar_cases, _lar_holds),
        explains=_x_lar),
    Deviation(
        "msrs-beyond-the-model", "RDMSR/WRMSR of an MSR the model does not implement",
        "#GP(0) for an MSR the processor does not implement (SDM Vol. 2B RDMSR); the model "
        "implements IA32_TSC, IA32_SYSENTER_* and IA32_TSC_AUX only",
        "the CPU model implements many more (IA32_APIC_BASE, MTRRs, ...): the access completes",
        Repro(R.msr_cases, lambda rs: R.completes(rs[0])), explains=U.x_msr_beyond_model),
    Deviation(
        "tsc-aux-reserved-no-gp", "WRMSR to IA32_TSC_AUX with EDX != 0",
        "#GP(0): bits 63:32 are reserved (SDM Vol. 4 Table 2-2, Vol. 2B WRMSR)",
        "the write completes", Repro(_tsc_aux_cases, lambda rs: R.completes(rs[0])),
        explains=U._x_tsc_aux),
    Deviation(
        "tsc-counts-instructions", "RDTSC, RDTSCP, RDMSR of IA32_TSC",
        "EDX:EAX = IA32_TSC, the state's counter (the model: it does not advance within one "
        "instruction; SDM Vol. 3B 17.17)",
        "the counter runs with emulated time: it returns the value written plus the cycles since",
        Repro(_tsc_cases, _tsc_holds), fields=("tsc",), explains=_x_tsc),
    Deviation(
        "cr4-bits-beyond-the-model", "MOV CR4 setting a bit above UMIP (OSXSAVE, FSGSBASE, ...)",
        "#GP(0) for a reserved bit (SDM Vol. 2B MOV (control registers)); the model's processor "
        "defines CR4 up to UMIP (bit 11) and reserves the rest",
        "the CPU model (Haswell, Tiger Lake) implements those bits: the write completes",
        Repro(_cr4_cases, lambda rs: R.completes(rs[0])), explains=U._x_cr4_reserved),
    Deviation(
        "pmc-not-emulated", "RDPMC where it is allowed",
        "EDX:EAX = performance counter ECX (SDM Vol. 2B RDPMC)",
        "Bochs emulates no counters: EDX:EAX = 0",
        Repro(_pmc_cases, lambda rs: R.completes(rs[0]) and R.post(rs[0])["eax"] == 0),
        fields=("pmc0", "pmc1"), explains=_x_pmc),
)

DEVIATIONS += harness.entries("bochs")

BY_ID = {d.id: d for d in DEVIATIONS}
assert len(BY_ID) == len(DEVIATIONS), "duplicate deviation id"
