"""Where Unicorn 2.1.4 (QEMU 5.0 TCG) departs from the SDM: its table, each entry reproducible.

Every ``Deviation`` names what it affects, what the SDM says, what Unicorn does, and a
``reproduce(machine)`` that runs a minimal case on a ``Machine`` and returns True while Unicorn
still behaves so.  ``tests/test_emulator_machine.py`` asserts every one is still present, so the
table goes stale loudly when Unicorn changes.  ``kind`` is "semantics" (an instruction computes
something else) or "api" (the harness cannot observe or set something through Unicorn's API).

The table is machine-usable: an entry's ``explains(observation, diff)`` says whether it accounts
for one observed difference between the model and Unicorn (``Diff``) when a given form runs on a
given state (``Observation``: the form, the state before, the model's result and Unicorn's).  A
cross-check or replay calls ``explain(observation)``: a disagreement is *explained* only when
every one of its differences is accounted for by some entry; the entries used are reported.  The
predicates never change what the model says: they only name where Unicorn is known to differ.
``fields`` names state fields whose Unicorn value is not the architectural one.
"""

from __future__ import annotations

from pgvirt.model import concrete
from pgvirt.model import state as st
from pgvirt.model.features import KNOWN
from pgvirt.model.outcome import BP, DB, DF, GP, NM, NP, OF, SS, UD, Fault, Next

from .. import states as S
from ..machine import NOT_HELD, Machine, error_codes_observable
from .base import Deviation, Diff, Observation
from .base import explain as _explain


def _vector(outcome, vector: int) -> bool:
    return isinstance(outcome, Fault) and outcome.vector == vector


def _completes(outcome) -> bool:
    return isinstance(outcome, Next)


# --- reproductions (each a minimal state from ``states.flat_state`` and one instruction) --------
SGDT_EAX = bytes.fromhex("0f0100")
MOV_EAX_MEM = bytes.fromhex("a100200000")     # mov eax, [0x2000]
MOV_EAX_PEAX = bytes.fromhex("8b00")          # mov eax, [eax]
MOV_PEAX_EAX = bytes.fromhex("8900")          # mov [eax], eax
UNKNOWN_MSR = 0x12345678
UMIP = 1 << st.CR4_UMIP


def _umip(m: Machine) -> bool:
    return _completes(m.run(S.flat_state(3, cr4=UMIP), SGDT_EAX))


def _io_bitmap(m: Machine) -> bool:
    # flat_state's TSS puts the I/O map base (0x68) beyond the limit (0x67): no bitmap at all.
    return _completes(m.run(S.flat_state(3, iopl=0), bytes.fromhex("e460")))   # in al, 0x60


def _idt(m: Machine) -> bool:
    # Gate 0x81 has DPL 0: INT 0x81 at CPL 3 is #GP(0x81*8+2) on hardware.
    return _vector(m.run(S.flat_state(3), bytes.fromhex("cd81")), 0x81)


def _int_no_transfer(m: Machine) -> bool:
    # INT3 through a DPL-3 interrupt gate: the SDM enters the ring-0 handler (a Next state).
    return _vector(m.run(S.flat_state(3), bytes.fromhex("cc")), BP)


def _rdpmc(m: Machine) -> bool:
    rdpmc = bytes.fromhex("0f33")
    pce = 1 << st.CR4_PCE
    return (_vector(m.run(S.flat_state(3, cr4=pce, ecx=0), rdpmc), GP)
            and _vector(m.run(S.flat_state(3, cr4=0, ecx=0), rdpmc), UD)
            and _vector(m.run(S.flat_state(0, cr4=0, ecx=0), rdpmc), UD))


def _sysenter(m: Machine) -> bool:
    s = S.flat_state(3)
    out = m.run(s, bytes.fromhex("0f34"))
    return _completes(out) and out.state["cpl"] == 3 and out.state["eip"] == s["eip"] + 2


def _syscall(m: Machine) -> bool:
    s = S.flat_state(3)     # IA32_EFER.SCE = 0 (Unicorn's reset value): SYSCALL is #UD
    out = m.run(s, bytes.fromhex("0f05"))
    return _completes(out) and out.state["eip"] == s["eip"] + 2


def _rdmsr_unknown(m: Machine) -> bool:
    out = m.run(S.flat_state(0, ecx=UNKNOWN_MSR, eax=0x1111, edx=0x2222), bytes.fromhex("0f32"))
    return _completes(out) and out.state["eax"] == 0 and out.state["edx"] == 0


def _wrmsr_unknown(m: Machine) -> bool:
    return _completes(m.run(S.flat_state(0, ecx=UNKNOWN_MSR), bytes.fromhex("0f30")))


def _smsw_r32(m: Machine) -> bool:
    out = m.run(S.flat_state(3, eax=0xFFFF0000), bytes.fromhex("0f01e0"))   # smsw eax
    return _completes(out) and out.state["eax"] == 0xFFFF0000 | S.flat_state(3)["cr0"]


def _rdtsc(m: Machine) -> bool:
    # Two RDTSCs on the same state: on the SDM's machine both read the state's IA32_TSC.
    s = S.flat_state(0, tsc=0x1234)
    a, b = m.run(s, bytes.fromhex("0f31")), m.run(s, bytes.fromhex("0f31"))
    values = [o.state["edx"] << 32 | o.state["eax"] for o in (a, b) if _completes(o)]
    return len(values) == 2 and values[0] != values[1] and 0x1234 not in values


def _tsc_msr(m: Machine) -> bool:
    api = m.msr_roundtrip(st.MSR_TSC, 0x1234)
    out = m.run(S.flat_state(0, ecx=st.MSR_TSC, eax=0x1111, edx=0x2222), bytes.fromhex("0f32"))
    return api == 0 and _completes(out) and out.state["eax"] == 0 and out.state["edx"] == 0


def _sysenter_cs(m: Machine) -> bool:
    s = S.flat_state(0, ecx=st.MSR_SYSENTER_CS, eax=0x12345678, edx=0)
    out = m.run(s, bytes.fromhex("0f30"))                                  # wrmsr
    return _completes(out) and out.state["sysenter_cs"] == 0x5678


def _sticky(m: Machine) -> bool:
    m.load(S.flat_state(3), bytes.fromhex("fa"))      # CLI at CPL 3, IOPL 0: #GP
    first, second = m.step(), m.step()                # no context restore in between
    return _vector(first, GP) and _vector(second, DF)


def _error_codes(m: Machine) -> bool:
    # A #GP from a selector check (#GP(0x10) on hardware) arrives as a bare vector.
    out = m.run(S.flat_state(3, eax=0x0013), bytes.fromhex("8ed8"))   # mov ds, ax
    return not error_codes_observable() and _vector(out, GP) and out.code is None


def _data_limit(m: Machine) -> bool:
    s = S.flat_state(3, ds_limit=0xFFF, ds_attr=S.data_attr(3) & ~S.G_BIT)
    return _completes(m.run(s, MOV_EAX_MEM))


def _code_limit(m: Machine) -> bool:
    # SGDT's 3 bytes at 0x4000..0x4002 cross a CS limit of 0x4000: the fetch is #GP(0).
    s = S.flat_state(3, cs_limit=0x4000, cs_attr=S.code_attr(3) & ~S.G_BIT)
    return _completes(m.run(s, SGDT_EAX))


def _segment_type(m: Machine) -> bool:
    ro = S.flat_state(3, ds_attr=S.data_attr(3) & ~0x2)                    # read-only data
    return (_completes(m.run(ro, MOV_PEAX_EAX))
            and _completes(m.run(S.flat_state(3), b"\x2e" + MOV_PEAX_EAX)))  # via CS (code)


def _null_segment(m: Machine) -> bool:
    s = S.flat_state(3, ds=0, ds_base=0, ds_limit=0, ds_attr=0)
    return _completes(m.run(s, MOV_EAX_PEAX))


def _alignment(m: Machine) -> bool:
    s = S.flat_state(3, cr0=S.flat_state(3)["cr0"] | (1 << st.CR0_AM),
                     sysflags=(1 << st.AC) | (1 << st.IF), eax=S.DATA + 1)
    return _completes(m.run(s, MOV_EAX_PEAX))


def _cr0_reserved(m: Machine) -> bool:
    s = S.flat_state(0, eax=S.flat_state(0)["cr0"] | 0x40)                 # bit 6 is reserved
    out = m.run(s, bytes.fromhex("0f22c0"))                              # mov cr0, eax
    return _completes(out) and out.state["cr0"] & 0x40 != 0


def _cr4_reserved(m: Machine) -> bool:
    out = m.run(S.flat_state(0, eax=1 << 15), bytes.fromhex("0f22e0"))   # mov cr4, eax
    return _completes(out) and out.state["cr4"] == 1 << 15


def _dr_reserved(m: Machine) -> bool:
    out6 = m.run(S.flat_state(0, eax=1 << 12), bytes.fromhex("0f23f0"))  # mov dr6, eax
    out7 = m.run(S.flat_state(0, eax=0x400 | 1 << 12), bytes.fromhex("0f23f8"))   # mov dr7, eax
    return (_completes(out6) and out6.state["dr6"] & 1 << 12 != 0
            and _completes(out7) and out7.state["dr7"] & 1 << 12 != 0)


def _ltr_null(m: Machine) -> bool:
    out = m.run(S.flat_state(0, eax=0), bytes.fromhex("0f00d8"))        # ltr ax, AX = 0
    return _completes(out) and out.state["tr"] == 0 and out.state["tr_limit"] == 0


def _ltr_cache(m: Machine) -> bool:
    # QEMU's own TR register (read raw, without the Machine's translation) after LTR.
    from unicorn import x86_const as X
    s = S.flat_state(0, eax=S.TSS_SEL)
    S.put(s["mem"], S.GDT_BASE + S.TSS_SEL, S.descriptor(S.TSS_BASE, S.TSS_LIMIT, S.TSS_AVAIL_ATTR))
    out = m.run(s, bytes.fromhex("0f00d8"))                              # ltr ax
    raw = (m.uc.reg_read(X.UC_X86_REG_TR)[3] >> 8) & 0xF
    return (_completes(out) and raw == 0x9 and out.state["tr_attr"] & 0xF == 0xB
            and out.state["mem"][S.GDT_BASE + S.TSS_SEL + 5] & 0xF == 0xB)



# --- new reproductions (found by ``pgvirt crosscheck``) -----------------------------------------
def _gdt_entry(s: dict, selector: int, data: bytes) -> dict:
    """Put ``data`` at GDT entry ``selector`` of a flat_state, growing the GDT limit to hold it."""
    S.put(s["mem"], S.GDT_BASE + (selector & ~7), data)
    s["gdtr_limit"] = max(s["gdtr_limit"], (selector | 7))
    return s


def _push_sreg(m: Machine) -> bool:
    s = S.flat_state(3)
    S.put(s["mem"], s["esp"] - 4, b"\xaa\xbb\xcc\xdd")
    out = m.run(s, bytes.fromhex("1e"))                                    # push ds
    return (_completes(out) and out.state["esp"] == s["esp"] - 4
            and [out.state["mem"][s["esp"] - 4 + k] for k in range(4)] == [S.data_selector(3), 0, 0, 0])


def _pvi(m: Machine) -> bool:
    s = S.flat_state(3, iopl=0, cr4=1 << st.CR4_PVI)
    return _vector(m.run(s, bytes.fromhex("fa")), GP) and _vector(m.run(s, bytes.fromhex("fb")), GP)


def _mov_dr_cpl_first(m: Machine) -> bool:
    de = S.flat_state(3, cr4=1 << st.CR4_DE)
    gd = S.flat_state(3, dr7=0x400 | 1 << 13)
    return (_vector(m.run(de, bytes.fromhex("0f21e0")), GP)                # mov eax, dr4
            and _vector(m.run(gd, bytes.fromhex("0f21c0")), GP))           # mov eax, dr0


def _gd_ignored(m: Machine) -> bool:
    s = S.flat_state(0, dr7=0x400 | 1 << 13, dr0=0x1234)
    out = m.run(s, bytes.fromhex("0f21c0"))                                # mov eax, dr0
    return _completes(out) and out.state["eax"] == 0x1234


def _transfer_accessed(m: Machine) -> bool:
    s = S.flat_state(3)
    sel = 0x60
    _gdt_entry(s, sel, S.descriptor(0, 0xFFFFFFFF, S.code_attr(3, accessed=False)))
    out = m.run(s, bytes.fromhex("ea") + S.CODE.to_bytes(4, "little") + (sel | 3).to_bytes(2, "little"))
    return (_completes(out) and out.state["cs"] == sel | 3 and not out.state["cs_attr"] & 1
            and not out.state["mem"][S.GDT_BASE + sel + 5] & 1)


def _gate_offset(m: Machine) -> bool:
    s = S.flat_state(3)
    small = 0x60                                   # ring-0 code with a 4 KiB limit
    _gdt_entry(s, small, S.descriptor(0, 0xFFF, S.code_attr(0) & ~S.G_BIT))
    _gdt_entry(s, 0x68, S.gate(small, 0x5000, 0xC, 3))                    # offset beyond it
    out = m.run(s, bytes.fromhex("9a00000000") + (0x68 | 3).to_bytes(2, "little"))
    return _completes(out) and out.state["eip"] == 0x5000 and out.state["cpl"] == 0


def _iret_vm86(m: Machine) -> bool:
    s = S.flat_state(3, iopl=3)
    frame = (0x100, 0x1234, (1 << st.VM) | 0x202, 0x200, 0x4321, 0, 0, 0, 0)
    S.put(s["mem"], s["esp"], b"".join(v.to_bytes(4, "little") for v in frame))
    out = m.run(s, bytes.fromhex("cf"))
    return _completes(out) and out.state["sysflags"] >> st.VM & 1 == 1


def _sysexit_cs(m: Machine) -> bool:
    s = S.flat_state(0, sysenter_cs=3, ecx=0x7000, edx=0x4100)
    out = m.run(s, bytes.fromhex("0f35"))
    return _completes(out) and out.state["cpl"] == 3


def _tsc_aux(m: Machine) -> bool:
    s = S.flat_state(0, ecx=0xC0000103, edx=1, eax=5)
    return _completes(m.run(s, bytes.fromhex("0f30")))


def _pg_without_pe(m: Machine) -> bool:
    # MOV CR0, EAX with PG = 1, PE = 0: Unicorn loads it; the next fetch then faults (#PF).
    out = m.run(S.flat_state(0, eax=1 << st.CR0_PG), bytes.fromhex("0f22c0"))
    return _vector(out, 14)


def _paging_fetch(m: Machine) -> bool:
    # MOV CR0 turning paging on with empty page tables: the run ends in the next fetch's #PF.
    cr0 = S.flat_state(0)["cr0"] | 1 << st.CR0_PG
    out = m.run(S.flat_state(0, eax=cr0), bytes.fromhex("0f22c0"))
    return _vector(out, 14) and m.uc.reg_read(_X.UC_X86_REG_EIP) == S.CODE + 3


def _iret_vip(m: Machine) -> bool:
    s = S.flat_state(0)
    vif_vip = (1 << st.VIF) | (1 << st.VIP)
    frame = (S.CODE + 0x10, S.code_selector(0), vif_vip | 0x202)
    S.put(s["mem"], s["esp"], b"".join(v.to_bytes(4, "little") for v in frame))
    out = m.run(s, bytes.fromhex("cf"))
    return _completes(out) and out.state["eip"] == S.CODE + 0x10 and not out.state["sysflags"] & vif_vip


def _gate_conforming(m: Machine) -> bool:
    s = S.flat_state(1)
    _gdt_entry(s, 0x60, S.descriptor(0, 0xFFFFFFFF, S.code_attr(0, conforming=True)))
    _gdt_entry(s, 0x68, S.gate(0x60, 0x4100, 0xC, 3))
    out = m.run(s, bytes.fromhex("9a00000000") + (0x6B).to_bytes(2, "little"))
    return _completes(out) and out.state["cpl"] == 1 and out.state["cs"] == 0x60


def _return_ss_np(m: Machine) -> bool:
    s = S.flat_state(0)
    _gdt_entry(s, 0x60, S.descriptor(0, 0xFFFFFFFF, S.data_attr(3) & ~0x80))   # not present
    frame = (S.CODE, S.code_selector(3), 0x7000, 0x63)
    S.put(s["mem"], s["esp"], b"".join(v.to_bytes(4, "little") for v in frame))
    return _vector(m.run(s, bytes.fromhex("cb")), NP)                          # retf


def _nw_without_cd(m: Machine) -> bool:
    s = S.flat_state(0)
    out = m.run(dict(s, eax=s["cr0"] | 1 << st.CR0_NW), bytes.fromhex("0f22c0"))
    return _completes(out) and out.state["cr0"] >> st.CR0_NW & 1 == 1


def _jmp_gate_np(m: Machine) -> bool:
    s = S.flat_state(0)
    _gdt_entry(s, 0x60, S.descriptor(0, 0xFFFFFFFF, S.code_attr(0) & ~0x80))  # not present
    _gdt_entry(s, 0x68, S.gate(0x60, 0x4100, 0xC, 0))
    return _vector(m.run(s, bytes.fromhex("ea00000000") + (0x68).to_bytes(2, "little")), GP)


def _pdpte(m: Machine) -> bool:
    # PAE paging turned on with CR3 -> a PDPTE that is present with reserved bits 2:1 set.
    s = S.flat_state(0, cr4=1 << st.CR4_PAE, cr3=0x20000)
    S.put(s["mem"], 0x20000, (0x7).to_bytes(8, "little"))
    s["eax"] = s["cr0"] | 1 << st.CR0_PG
    out = m.run(s, bytes.fromhex("0f22c0"))                                   # mov cr0, eax
    return not _vector(out, GP)


def _own_bytes(m: Machine) -> bool:
    # mov [eax], eax where EAX is the instruction's own address: the store rewrites it.
    s = S.flat_state(0, eax=S.CODE)
    out = m.run(s, bytes.fromhex("8900"))
    return _completes(out) and out.state["eip"] == S.CODE


def _fs_gs_null(m: Machine) -> bool:
    s = S.flat_state(0, gs=2, gs_base=0, gs_limit=0, gs_attr=0)          # null selector, RPL 2
    frame = (S.CODE, S.code_selector(3), 0x7000, S.data_selector(3))
    S.put(s["mem"], s["esp"], b"".join(v.to_bytes(4, "little") for v in frame))
    out = m.run(s, bytes.fromhex("cb"))                                    # retf to ring 3
    return _completes(out) and out.state["cpl"] == 3 and out.state["gs"] == 2


def _esp_high(m: Machine) -> bool:
    # A call gate to ring 0 whose stack (from the TSS) is a 16-bit segment (B = 0).
    s = S.flat_state(3)
    s["esp"] = 0x48000
    _gdt_entry(s, 0x60, S.descriptor(0, 0xFFFFFFFF, S.data_attr(0) & ~S.DB_BIT))
    _gdt_entry(s, 0x68, S.gate(S.code_selector(0), 0x4100, 0xC, 3))
    S.put(s["mem"], S.TSS_BASE + 4, (0x9000).to_bytes(4, "little") + (0x60).to_bytes(2, "little"))
    out = m.run(s, bytes.fromhex("9a00000000") + (0x6B).to_bytes(2, "little"))
    return _completes(out) and out.state["esp"] == 0x40000 | (0x9000 - 16)


def _sxdt16(m: Machine) -> bool:
    """66 0F 01 00 (sgdt [eax], 16-bit operand size) with GDTR.base = 12345678H."""
    s = S.flat_state(0, eax=S.DATA, gdtr_base=0x12345678)
    out = m.run(s, bytes.fromhex("660f0100"), mem=range(S.DATA, S.DATA + 6))
    return _completes(out) and out.state["mem"][S.DATA + 5] == 0 and out.state["mem"][S.DATA + 4] == 0x34


def _int1(m: Machine) -> bool:
    """INT1 (F1) at CPL 3: #DB on the SDM's processor."""
    return _vector(m.run(S.flat_state(3), b"\xf1"), UD)


# Features every profile's processor has and Unicorn's default CPU model lacks (its CPUID clears
# them and TCG raises #UD), with one instruction that needs each.
UNICORN_LACKS = {"rdpid": "f30fc7f8", "smap": "0f01ca", "monitor": "0f01c8", "invpcid": "660f388200",
                 "clzero": "0f01fc", "movdir64b": "660f38f800", "xsavec": "0fc720", "xsaves": "0fc728",
                 "pku": "0f01ee", "rtm": "0f01d5", "hle_or_rtm": "0f01d6", "tsxldtrk": "f20f01e8",
                 "monitorx": "0f01fa"}


def _cpu_lacks(m: Machine) -> bool:
    """One instruction of each feature in ``UNICORN_LACKS`` at CPL 0 raises #UD on Unicorn."""
    return all(_vector(m.run(S.flat_state(0, eax=S.DATA), bytes.fromhex(h)), UD)
               for h in UNICORN_LACKS.values())


def _pcide(m: Machine) -> bool:
    """MOV CR4, EAX setting CR4.PCIDE in 32-bit protected mode completes on Unicorn."""
    s = S.flat_state(0)
    return _completes(m.run(dict(s, eax=s["cr4"] | 1 << st.CR4_PCIDE), bytes.fromhex("0f22e0")))


def _ts_before_ud(m: Machine) -> bool:
    """INVEPT outside VMX operation with CR0.TS = 1: #UD on the SDM's processor, #NM here."""
    s = S.flat_state(0, cr0=S.flat_state(0)["cr0"] | 1 << st.CR0_TS)
    return _vector(m.run(s, bytes.fromhex("660f388000")), NM)


def _vendor_reused(m: Machine) -> bool:
    """The 80286's LOADALL (0F 05): #UD on the profiles' processors; Unicorn runs it as SYSCALL."""
    return not _vector(m.run(S.flat_state(0), bytes.fromhex("0f05")), UD)


def _xsetbv_cpl(m: Machine) -> bool:
    """XSETBV at CPL 3 with CR4.OSXSAVE = 0: #UD (CR4 first), Unicorn #GP (CPL first)."""
    return _vector(m.run(S.flat_state(3, ecx=0, eax=1, edx=0), bytes.fromhex("0f01d1")), GP)


def _incssp(m: Machine) -> bool:
    """INCSSPD EAX with CR4.CET = 0: #UD; Unicorn runs F3 0F AE E8 as LFENCE."""
    return _completes(m.run(S.flat_state(3), bytes.fromhex("f30faee8")))


def _tsx_as_mov(m: Machine) -> bool:
    """XABORT 0x55 (C6 F8 55) outside a transaction: a NOP; Unicorn stores 0x55 in AL."""
    return (m.run(S.flat_state(3, eax=0x12345600), bytes.fromhex("c6f855")).state["eax"]
            == 0x12345655)


def _waitpkg_fence(m: Machine) -> bool:
    """UMWAIT EAX with EAX = 2 (a reserved bit): #GP(0); Unicorn completes, flags untouched."""
    out = m.run(S.flat_state(0, eax=2, flags=1 << st.CF), bytes.fromhex("f20faef0"))
    return _completes(out) and out.state["flags"] == 1 << st.CF


def _xsave_ts(m: Machine) -> bool:
    """XSAVE [EAX] with CR0.TS = 1 and CR4.OSXSAVE = 1: #NM; Unicorn completes."""
    s = S.flat_state(0, cr4=1 << st.CR4_OSXSAVE, edx=0)
    s["cr0"] |= 1 << st.CR0_TS
    return _completes(m.run(s, bytes.fromhex("0fae20"), mem=range(S.DATA, S.DATA + 576)))


def _fxsave_pointers(m: Machine) -> bool:
    """FXSAVE [EAX] stores FOP, FCS, FDP and FDS; Unicorn writes zeros there."""
    out = m.run(S.flat_state(0, fop=0x123, fcs=8, fdp=0x5678, fds=0x10), bytes.fromhex("0fae00"),
                mem=range(S.DATA, S.DATA + 512))
    mem = out.state["mem"]
    return _completes(out) and all(mem.get(S.DATA + k, 0) == 0 for k in (6, 7, 12, 16, 17, 20))


def _restore_mxcsr(m: Machine) -> bool:
    """FXRSTOR [EAX] of an image whose MXCSR has bit 16 set, CR4.OSFXSR = 1: #GP(0); Unicorn
    completes."""
    s = S.flat_state(0, cr4=1 << st.CR4_OSFXSR)
    s["mem"] = {**s["mem"], S.DATA + 24: 0x80, S.DATA + 25: 0x1F, S.DATA + 26: 1}
    return _completes(m.run(s, bytes.fromhex("0fae08"), mem=range(S.DATA, S.DATA + 512)))


from unicorn import x86_const as _X  # noqa: E402  (for the raw EIP read above)


# --- predicates: does an entry account for one observed difference? ------------------------------
_UMIP_MN = ("SGDT", "SIDT", "SLDT", "SMSW", "STR")
_IO_MN = ("IN", "OUT", "INSB", "INSW", "INSD", "OUTSB", "OUTSW", "OUTSD")
_PUSH_SREG = ("push_cs", "push_ss", "push_ds", "push_es", "push_fs", "push_gs")
_DR_WRITE = tuple(f"mov_dr{n}_r" for n in range(8))
_DR_ALL = _DR_WRITE + tuple(f"mov_r_dr{n}" for n in range(8))


def _outcome(o: Observation, d: Diff) -> bool:
    return d.kind == "outcome"


def _model_reason(o: Observation, *words: str) -> bool:
    return o.model is not None and all(w in o.model.reason for w in words)


def x_msr_beyond_model(o: Observation, d: Diff) -> bool:
    """RDMSR/WRMSR of an MSR outside the model: the model's #GP, the emulator's completion."""
    return _outcome(o, d) and _model_reason(o, "no implemented MSR") and o.emu_post is not None


def _int_vector(o: Observation) -> int:
    return {"int3": BP, "into": OF}.get(o.name, o.form.decode().imm)


def _x_umip(o, d):
    return (o.form.mnemonic in _UMIP_MN and _outcome(o, d) and o.model_faults(GP)
            and isinstance(o.emu, Next) and o.cpl > 0 and o.cr4(st.CR4_UMIP))


def _x_io(o, d):
    return (o.form.mnemonic in _IO_MN and _outcome(o, d) and o.model_faults(GP)
            and isinstance(o.emu, Next) and o.cpl > o.iopl)


def _x_idt(o, d):
    return (o.form.flow == "interrupt" and _outcome(o, d) and o.model is not None
            and o.emu_faults(_int_vector(o)))


def _x_int_transfer(o, d):
    return (o.form.flow == "interrupt" and _outcome(o, d) and o.model is None
            and o.emu_faults(_int_vector(o)))


def _x_rdpmc(o, d):
    return o.name == "rdpmc" and _outcome(o, d) and o.emu_faults(GP, UD)


def _x_sysenter(o, d):
    post = o.emu_post
    if o.name != "sysenter" or post is None:
        return False
    same = all(post[n] == o.state[n] for n in st.SCALARS if n != "eip" and n not in NOT_HELD)
    return same and post["eip"] == (o.state["eip"] + 2) & 0xFFFFFFFF


def _x_rdmsr_unknown(o, d):
    post = o.emu_post
    return (o.name == "rdmsr" and _outcome(o, d) and _model_reason(o, "no implemented MSR")
            and post is not None and post["eax"] == post["edx"] == 0)


def _x_wrmsr_unknown(o, d):
    return (o.name == "wrmsr" and _outcome(o, d) and _model_reason(o, "no implemented MSR")
            and isinstance(o.emu, Next))


def _x_smsw(o, d):
    return (o.name == "smsw_r" and d.kind == "reg" and d.key == "eax"
            and d.emu == (o.state["eax"] & 0xFFFF0000) | (o.state["cr0"] & 0xFFFF))


def _x_rdtsc(o, d):
    return o.name in ("rdtsc", "rdtscp") and d.kind == "reg" and d.key in ("eax", "edx")


def _x_tsc_msr(o, d):
    return (o.name == "rdmsr" and o.state["ecx"] == st.MSR_TSC and d.kind == "reg"
            and d.key in ("eax", "edx") and d.emu == 0)


def _x_sysenter_cs(o, d):
    return (o.name == "wrmsr" and o.state["ecx"] == st.MSR_SYSENTER_CS and d.kind == "reg"
            and d.key == "sysenter_cs" and d.emu == d.model & 0xFFFF)


def _x_cr0_reserved(o, d):
    return (o.name == "mov_cr0_r" and d.kind == "reg" and d.key == "cr0"
            and (d.model ^ d.emu) & st.CR0_DEFINED == 0)


def _x_cr4_reserved(o, d):
    return (o.name == "mov_cr4_r" and _outcome(o, d) and _model_reason(o, "reserved CR4 bit")
            and isinstance(o.emu, Next))


_DR_RESERVED = {"dr6": 1 << 12, "dr7": 0xD800}


def _x_dr_reserved(o, d):
    return (o.name in _DR_WRITE and d.kind == "reg" and d.key in _DR_RESERVED
            and (d.model ^ d.emu) & ~_DR_RESERVED[d.key] == 0)


def _x_ltr_null(o, d):
    return (o.name in ("ltr_r", "ltr_r_o16") and _outcome(o, d) and _model_reason(o, "null selector")
            and isinstance(o.emu, Next))


def _x_push_sreg(o, d):
    if o.name not in _PUSH_SREG or d.kind != "mem" or d.emu != 0:
        return False
    top = (o.state["ss_base"] + o.state["esp"]) & 0xFFFFFFFF
    return d.key in ((top - 2) & 0xFFFFFFFF, (top - 1) & 0xFFFFFFFF)


def _x_pvi(o, d):
    return (o.name in ("cli", "sti") and _outcome(o, d) and o.emu_faults(GP) and o.cpl == 3
            and o.cr4(st.CR4_PVI) and o.cpl > o.iopl)


def _x_mov_dr_cpl_first(o, d):
    return (o.name in _DR_ALL and _outcome(o, d) and o.cpl > 0 and o.model_faults(UD, DB)
            and o.emu_faults(GP))


def _x_gd_ignored(o, d):
    return (o.name in _DR_ALL and _outcome(o, d) and o.cpl == 0 and o.model_faults(DB)
            and o.state["dr7"] >> 13 & 1 and isinstance(o.emu, Next))


def _descriptor_byte5(o: Observation, address: int) -> bool:
    for base, limit in ((o.state["gdtr_base"], o.state["gdtr_limit"]),
                        (o.state["ldtr_base"], o.state["ldtr_limit"])):
        off = (address - base) & 0xFFFFFFFF
        if off <= limit and off % 8 == 5:
            return True
    return False


def _x_transfer_accessed(o, d):
    # (an outcome difference carries texts, not bytes: found by steered witnesses)
    if not o.form.far or o.model is not None or d.kind not in ("reg", "mem") \
            or d.model != d.emu | 1 or d.emu & 1:
        return False
    if d.kind == "reg":
        return d.key in ("cs_attr", "ss_attr")
    return d.kind == "mem" and _descriptor_byte5(o, d.key)


def _x_transfer_offset(o, d):
    return (o.form.far and _outcome(o, d) and o.model_faults(GP)
            and _model_reason(o, "offset beyond the code segment limit") and isinstance(o.emu, Next))


def _x_iret_vm86(o, d):
    post = o.emu_post
    if o.name != "iretd" or o.cpl == 0 or post is None or not post["sysflags"] >> st.VM & 1:
        return False
    popped = o.dword((o.state["ss_base"] + o.state["esp"] + 8) & 0xFFFFFFFF)
    return bool(popped >> st.VM & 1)


def _x_iret_vip(o, d):
    if o.name != "iretd" or o.cpl != 0 or d.kind != "reg" or d.key != "sysflags":
        return False
    vif_vip = (1 << st.VIF) | (1 << st.VIP)
    return (d.model ^ d.emu) & ~vif_vip == 0 and d.emu & vif_vip == o.state["sysflags"] & vif_vip


def _x_gate_conforming(o, d):
    return (o.form.flow == "far_call" and o.model is None and d.kind == "reg"
            and d.key == "cs" and (d.model ^ d.emu) & ~3 == 0 and d.model & 3 == o.cpl
            and d.emu & 3 < o.cpl)


def _x_return_ss_np(o, d):
    return (o.form.flow == "far_return" and _outcome(o, d) and o.model_faults(SS)
            and _model_reason(o, "return stack segment not present") and o.emu_faults(NP))


def _x_nw_without_cd(o, d):
    return (o.name == "mov_cr0_r" and _outcome(o, d) and _model_reason(o, "NW = 1 with CR0.CD = 0")
            and (isinstance(o.emu, Next) or o.emu_faults(14)))


def _x_jmp_gate_np(o, d):
    return (o.form.flow == "far_jump" and _outcome(o, d) and o.model_faults(NP)
            and _model_reason(o, "call gate target not present") and o.emu_faults(GP))


def _x_pdpte(o, d):
    return (o.name in ("mov_cr0_r", "mov_cr3_r", "mov_cr4_r") and _outcome(o, d)
            and _model_reason(o, "PDPTE has a reserved bit") and (isinstance(o.emu, Next) or o.emu_faults(14)))


def _x_own_bytes(o, d):
    """The model stored into the instruction's own bytes and Unicorn's run ended at its start."""
    post = o.emu_post
    if o.model is not None or post is None or post["eip"] != o.state["eip"]:
        return False
    at = (o.state["cs_base"] + o.state["eip"]) & 0xFFFFFFFF
    own = {(at + k) & 0xFFFFFFFF for k in range(len(o.form.bytes))}
    return bool(own & o.model_stores)


def _x_fs_gs_null(o, d):
    return (o.form.flow == "far_return" and o.model is None and d.kind == "reg"
            and d.key in ("fs", "gs") and d.model == 0 and d.emu == o.state[d.key]
            and d.emu & 0xFFFC == 0)


def _x_sysexit_cs(o, d):
    cs = o.state["sysenter_cs"]
    return (o.name == "sysexit" and _outcome(o, d) and o.model_faults(GP) and o.cpl == 0
            and cs & 0xFFFC == 0 and cs != 0 and isinstance(o.emu, Next))


def _x_tsc_aux(o, d):
    return (o.name == "wrmsr" and _outcome(o, d) and _model_reason(o, "IA32_TSC_AUX")
            and isinstance(o.emu, Next))


def _x_pg_without_pe(o, d):
    return (o.name == "mov_cr0_r" and _outcome(o, d) and _model_reason(o, "PG = 1 with CR0.PE = 0")
            and (isinstance(o.emu, Next) or o.emu_faults(14)))


def _x_sxdt16(o, d):
    if o.name not in ("sgdt_m_o16", "sidt_m_o16") or o.model is not None or d.kind != "mem":
        return False
    top = o.state["gdtr_base" if o.name == "sgdt_m_o16" else "idtr_base"] >> 24
    return d.emu == 0 and d.model == top


def _x_int1(o, d):
    return o.name == "int1" and _outcome(o, d) and o.model_faults(DB) and o.emu_faults(UD)


def _lacking_ud(o) -> bool:
    """The model of a processor without Unicorn's missing features raises #UD, for a missing
    feature, on this state."""
    without = concrete.compiled(o.form, KNOWN - set(UNICORN_LACKS)).evaluate(o.state).fault
    return without is not None and without.vector == UD and "lacks" in without.reason


def _x_cpu_lacks(o, d):
    """Unicorn raised #UD where the model, whose processor has the feature, did not."""
    return _outcome(o, d) and o.emu_faults(UD) and not o.model_faults(UD) and _lacking_ud(o)


def _x_pcide(o, d):
    return o.name == "mov_cr4_r" and _outcome(o, d) and _model_reason(o, "PCIDE", "outside IA-32e")


def _in_0f38(f) -> bool:
    """A hand-written form of the 0F 38 opcode map."""
    return f.enc is not None and f.enc.opcode[:2] == b"\x0f\x38"


def _x_ts_before_ud(o, d):
    return (_in_0f38(o.form) and _outcome(o, d) and o.emu_faults(NM)
            and o.state["cr0"] >> st.CR0_TS & 1 and (o.model_faults(UD) or _lacking_ud(o)))


def _x_vendor_reused(o, d):
    """The model's #UD for another vendor's (or an earlier processor's) instruction, where
    Unicorn's CPU gives the bytes a meaning of its own."""
    return (o.form.theme == "vendor" and _outcome(o, d) and o.model_faults(UD)
            and _model_reason(o, "the processor lacks") and not o.emu_faults(UD))


def _x_xsetbv_cpl(o, d):
    return (o.name == "xsetbv" and _outcome(o, d) and o.model_faults(UD) and o.emu_faults(GP)
            and o.cpl > 0)


def _x_tsx_as_mov(o, d):
    """XBEGIN / XABORT run as MOV r/m, imm: the only difference is the register Unicorn wrote."""
    return (o.name in ("xbegin_rel32", "xbegin_rel16", "xabort") and d.kind == "reg"
            and d.key == "eax" and o.emu_post is not None)


def _x_waitpkg_fence(o, d):
    """UMWAIT / TPAUSE run as MFENCE: Unicorn changed nothing but EIP."""
    post = o.emu_post
    return (o.name in ("umwait", "tpause") and post is not None and d.kind in ("outcome", "reg")
            and all(post[n] == o.state[n] for n in ("flags", "eax", "edx", "ecx")))


def _x_restore_mxcsr(o, d):
    return (o.name in ("fxrstor", "xrstor") and _outcome(o, d) and o.model_faults(GP)
            and _model_reason(o, "MXCSR image") and o.emu_post is not None)


def _x_xsave_ts(o, d):
    return (o.name in ("xsave", "xsaveopt", "xrstor") and _outcome(o, d) and o.model_faults(NM)
            and _model_reason(o, "CR0.TS") and (o.emu_post is not None or o.emu_faults(GP)))


# FOP, FCS, FDP, FDS and the reserved bytes beside them (5, 14-15, 22-23), which the model's
# processor leaves and QEMU's 16-bit and 64-bit stores cover.
_X87_PTR_BYTES = frozenset((5, 6, 7) + tuple(range(12, 24)))


def _x_fxsave_pointers(o, d):
    """The x87 operand and opcode pointers: Unicorn stores zeros for FOP, FCS, FDP and FDS and
    restores zeros into FOP, FIP, FCS, FDP and FDS."""
    if o.name in ("fxsave", "xsave", "xsaveopt") and d.kind == "mem" and (d.emu == 0 or d.key - (
            o.state["ds_base"] + o.state["eax"]) & 0xFFFFFFFF in (6, 7)):
        ea = (o.state["ds_base"] + o.state["eax"]) & 0xFFFFFFFF
        return ((d.key - ea) & 0xFFFFFFFF) in _X87_PTR_BYTES
    return (o.name in ("fxrstor", "xrstor") and d.kind == "reg" and d.emu == 0
            and d.key in ("fop", "fip", "fcs", "fdp", "fds"))


def _x_incssp(o, d):
    post = o.emu_post
    return (o.name == "incsspd" and _outcome(o, d) and o.model_faults(UD) and post is not None
            and post["eip"] == (o.state["eip"] + len(o.form.bytes)) & 0xFFFFFFFF)


def _x_syscall(o, d):
    post = o.emu_post
    if o.name not in ("syscall", "sysret") or not o.model_faults(UD) or post is None:
        return False
    same = all(post[n] == o.state[n] for n in st.SCALARS if n != "eip" and n not in NOT_HELD)
    return same and post["eip"] == (o.state["eip"] + 2) & 0xFFFFFFFF


def _x_paging_fetch(o, d):
    return (o.name == "mov_cr0_r" and _outcome(o, d) and o.model is None and o.emu_faults(14)
            and o.model_post is not None and o.model_post["cr0"] >> st.CR0_PG & 1)


# --- found by the frame test of derived forms (emulator/frame.py) ---------------------------------
TINY_X80 = (0x3BCD << 64) | (1 << 63)     # below the double range: rounds to the smallest denormal


def _x87_ftz(m: Machine) -> bool:
    def stored(mxcsr: int) -> bytes:
        s = S.flat_state(3, fpr7=TINY_X80, fsw=7 << st.FSW_TOP_LO, ftw=0x80, fcw=0x37F,
                         mxcsr=mxcsr, cr4=1 << st.CR4_OSFXSR, ebp=S.DATA)
        out = m.run(s, bytes.fromhex("dd5500"))          # fst qword ptr [ebp]
        return bytes(out.state["mem"][S.DATA + k] for k in range(8))
    return stored(0x1F80) != stored(0x9F80)


def _fnstsw_fip(m: Machine) -> bool:
    out = m.run(S.flat_state(3, fcw=0x37F, fip=0x1234), bytes.fromhex("dfe0"))   # fnstsw ax
    return out.state["fip"] != 0x1234


# --- triggers: the same conditions on a symbolic pre-state, for witness steering ----------------------
def _zbit(term, n):
    import z3
    return z3.Extract(n, n, term) == 1


def _t_umip(form, s, o):
    import z3
    return z3.And(s.cpl != 0, _zbit(s.cr4, st.CR4_UMIP)) if form.mnemonic in _UMIP_MN else None


def _t_io(form, s, o):
    import z3
    return z3.UGT(s.cpl, st.iopl(s)) if form.mnemonic in _IO_MN else None


def _t_int(form, s, o):
    import z3
    return z3.BoolVal(True) if form.flow == "interrupt" else None


def _t_sysenter(form, s, o):
    import z3
    return z3.BoolVal(True) if form.name == "sysenter" else None


def _t_accessed(form, s, o):
    from .base import reads_unaccessed_segment
    return reads_unaccessed_segment(s, o) if form.far else None


def _t_iret_vip(form, s, o):
    import z3
    if form.name != "iretd":
        return None
    popped = z3.Select(s.mem, s.ss_base + s.esp + 10)
    return z3.And(s.cpl == 0, z3.Extract(4, 3, popped) != z3.Extract(20, 19, s.sysflags))


def _t_iret_vm86(form, s, o):
    import z3
    if form.name != "iretd":
        return None
    return z3.And(s.cpl != 0, z3.Extract(1, 1, z3.Select(s.mem, s.ss_base + s.esp + 10)) == 1)


def _t_push_sreg(form, s, o):
    import z3
    if form.name not in _PUSH_SREG:
        return None
    top = s.ss_base + s.esp
    return z3.Or(z3.Select(s.mem, top - 2) != 0, z3.Select(s.mem, top - 1) != 0)


def _t_sysexit(form, s, o):
    import z3
    if form.name != "sysexit":
        return None
    return z3.And(z3.Extract(15, 2, s.sysenter_cs) == 0, s.sysenter_cs != 0)



DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "x87-reads-mxcsr", "x87 stores and transcendental instructions (FST m64fp, FSINCOS, ...)",
        "x87 arithmetic rounds by FCW and never reads MXCSR (SDM Vol. 1 8.1.5, 10.2.3)",
        "QEMU's conversions go through a softfloat status that MXCSR.FTZ reaches: a result "
        "that is a double denormal is flushed to zero when MXCSR.FTZ = 1", _x87_ftz),
    Deviation(
        "fnstsw-updates-fip", "FNSTSW AX and other x87 control instructions",
        "control instructions leave the last instruction pointer (SDM Vol. 1 8.1.8)",
        "QEMU records CS:EIP of FNSTSW AX in FCS:FIP", _fnstsw_fip, fields=("fip", "fcs")),
    Deviation(
        "umip-not-implemented", "SGDT, SIDT, SLDT, SMSW, STR at CPL > 0 with CR4.UMIP = 1",
        "#GP(0) (SDM Vol. 3A 2.5, Vol. 2B SGDT)",
        "CR4.UMIP is stored but ignored: the instructions complete", _umip, explains=_x_umip, trigger=_t_umip),
    Deviation(
        "io-permission-unchecked", "IN, OUT, INS, OUTS with CPL > IOPL",
        "consult the TSS I/O permission bitmap; #GP(0) if a port bit is 1 or the bitmap lies "
        "beyond the TSS limit (SDM Vol. 1 19.5)",
        "no IOPL or bitmap test: the port is always accessed", _io_bitmap, explains=_x_io, trigger=_t_io),
    Deviation(
        "idt-not-consulted", "INT n (and every exception) in protected mode",
        "INT n checks the gate: #GP(n*8+2) if gate DPL < CPL; otherwise transfers through the "
        "gate (SDM Vol. 2A INT n, Vol. 3A 6.12)",
        "the IDT is never read: INT n is reported as vector n (EIP after the instruction), "
        "whatever the gate", _idt, explains=_x_idt, trigger=_t_int),
    Deviation(
        "int-no-transfer", "INT n, INT3, INTO through a permitted gate",
        "a Next state in the handler: CS:EIP from the gate, stack switched from the TSS, "
        "EFLAGS/CS/EIP (and SS/ESP) pushed (SDM Vol. 3A 6.12.1)",
        "reported as a fault with the vector; no handler is entered, nothing is pushed",
        _int_no_transfer, explains=_x_int_transfer, trigger=_t_int),
    Deviation(
        "rdpmc-inverted", "RDPMC",
        "reads counter ECX at CPL 0 or with CR4.PCE = 1; #GP(0) at CPL > 0 with PCE = 0 "
        "(SDM Vol. 2B RDPMC)",
        "#GP at CPL > 0 with PCE = 1 (the test inverted), #UD in every other case",
        _rdpmc, fields=("pmc0", "pmc1"), explains=_x_rdpmc),
    Deviation(
        "sysenter-only-advances-eip", "SYSENTER",
        "loads CS/SS from IA32_SYSENTER_CS, ESP/EIP from IA32_SYSENTER_ESP/EIP, CPL 0, clears "
        "IF/VM/RF (SDM Vol. 2B SYSENTER)",
        "only EIP advances by 2 (Unicorn hands SYSENTER to its UC_HOOK_INSN hook)", _sysenter,
        explains=_x_sysenter, trigger=_t_sysenter),
    Deviation(
        "syscall-only-advances-eip", "SYSCALL in 32-bit protected mode",
        "#UD with IA32_EFER.SCE = 0 (and on Intel outside 64-bit mode) (SDM Vol. 2B SYSCALL)",
        "only EIP advances by 2 (handed to Unicorn's UC_HOOK_INSN hook)", _syscall,
        explains=_x_syscall),
    Deviation(
        "rdmsr-unknown-reads-zero", "RDMSR at CPL 0 of an unimplemented MSR",
        "#GP(0) (SDM Vol. 2B RDMSR)", "EDX:EAX = 0", _rdmsr_unknown, explains=_x_rdmsr_unknown),
    Deviation(
        "wrmsr-unknown-ignored", "WRMSR at CPL 0 of an unimplemented MSR",
        "#GP(0) (SDM Vol. 2B WRMSR)", "the write is dropped silently", _wrmsr_unknown,
        explains=_x_wrmsr_unknown),
    Deviation(
        "smsw-r32-keeps-high-half", "SMSW r32",
        "EAX[15:0] = CR0[15:0], EAX[31:16] undefined; P6 and later store CR0[31:16] (the "
        "model's choice) (SDM Vol. 2B SMSW)",
        "EAX[31:16] keeps its old value", _smsw_r32, explains=_x_smsw),
    Deviation(
        "rdtsc-host-time", "RDTSC, RDTSCP",
        "EDX:EAX = IA32_TSC, which WRMSR sets (SDM Vol. 3B 17.17)",
        "EDX:EAX is host time (it changes between two runs of one state)", _rdtsc,
        fields=("tsc",), explains=_x_rdtsc),
    Deviation(
        "tsc-msr-unimplemented", "RDMSR/WRMSR of IA32_TSC (MSR 0x10)",
        "RDMSR reads the TSC, WRMSR sets it (SDM Vol. 3B 17.17, Vol. 4 Table 2-2)",
        "no such MSR: RDMSR reads 0 and WRMSR is dropped; the Machine carries the state's tsc",
        _tsc_msr, fields=("tsc",), explains=_x_tsc_msr),
    Deviation(
        "sysenter-cs-16-bit", "WRMSR/RDMSR of IA32_SYSENTER_CS (MSR 0x174)",
        "a 64-bit MSR whose bits 15:0 name the ring-0 CS; the model keeps bits 31:0 as written "
        "(SDM Vol. 4 Table 2-2, Vol. 2B SYSENTER)",
        "bits 31:16 are dropped (QEMU stores val & 0xffff)", _sysenter_cs, fields=("sysenter_cs",),
        explains=_x_sysenter_cs),
    Deviation(
        "sticky-exception-state", "any fault after a fault in the same Uc",
        "each instruction's fault is independent once delivered (SDM Vol. 3A 6.15 #DF "
        "only for a fault during delivery)",
        "the next fault is reported as #DF, the one after that is a silent triple fault; the "
        "Machine restores a saved context before every run", _sticky, kind="api"),
    Deviation(
        "error-codes-not-exposed", "every fault with an error code (#DF #TS #NP #SS #GP #PF #AC)",
        "the error code is pushed on the handler's stack (SDM Vol. 3A 6.13)",
        "UC_HOOK_INTR gets only the vector: Machine faults carry code=None", _error_codes,
        kind="api"),
    Deviation(
        "segment-limits-unchecked", "every data or stack access beyond DS/ES/FS/GS/SS limits",
        "#GP(0), or #SS(0) for SS (SDM Vol. 3A 5.3)",
        "limits are not checked: the access happens at base + offset", _data_limit),
    Deviation(
        "code-limit-unchecked", "instruction fetch beyond the CS limit",
        "#GP(0) (SDM Vol. 3A 5.3)", "the instruction is fetched and executed", _code_limit),
    Deviation(
        "segment-type-unchecked", "writes through read-only data or code segments",
        "#GP(0) (SDM Vol. 3A 5.5)", "the write happens", _segment_type),
    Deviation(
        "null-segment-unchecked", "memory access through a null DS/ES/FS/GS",
        "#GP(0) (SDM Vol. 3A 5.4.1)", "the access uses the cache (base 0)", _null_segment),
    Deviation(
        "alignment-check-missing", "misaligned access at CPL 3 with CR0.AM = 1, EFLAGS.AC = 1",
        "#AC(0) (SDM Vol. 3A 6.15 interrupt 17)", "the access completes", _alignment),
    Deviation(
        "cr0-reserved-bits-kept", "MOV CR0 with reserved bits set",
        "reserved bits of CR0[31:0] are ignored and read back as 0 (the model; SDM Vol. 3A 2.5)",
        "stored and read back (MOV from CR0, SMSW)", _cr0_reserved, fields=("cr0",),
        explains=_x_cr0_reserved),
    Deviation(
        "cr4-reserved-no-gp", "MOV CR4 with a reserved bit set (UMIP too, on a processor without it)",
        "#GP(0) (SDM Vol. 2B MOV (control registers))",
        "the value is stored", _cr4_reserved, fields=("cr4",), explains=_x_cr4_reserved),
    Deviation(
        "dr-reserved-bits-kept", "MOV DR6, MOV DR7 (and DR4/DR5 aliases) with reserved bits",
        "DR6 bit 12 and DR7 bits 11, 12, 14, 15 read as 0 (SDM Vol. 3B 17.2.3-17.2.4)",
        "written bits are kept", _dr_reserved, fields=("dr6", "dr7"), explains=_x_dr_reserved),
    Deviation(
        "ltr-null-accepted", "LTR with a null selector at CPL 0",
        "#GP(0) (SDM Vol. 2A LTR)",
        "TR is loaded with the null selector and an empty cache (base 0, limit 0, attr 0)",
        _ltr_null, fields=("tr", "tr_base", "tr_limit", "tr_attr"), explains=_x_ltr_null),
    Deviation(
        "ltr-cache-not-busy", "TR's hidden cache (LTR; every inner-ring transfer reads it)",
        "the descriptor is marked busy and TR holds a busy TSS (type 0xB; SDM Vol. 2A LTR, "
        "Vol. 3C 26.3.1.2 requires it of a VM-entry guest TR)",
        "QEMU marks memory busy but keeps the available type (0x9) in TR's cache, and reads TR "
        "with that convention: with the busy type in TR, a call gate to an inner ring calls "
        "cpu_abort() and kills the process.  The Machine writes TR with the busy bit clear and "
        "reads it back with the bit set, so its states show the SDM's TR", _ltr_cache,
        kind="api"),
    # --- found by ``pgvirt crosscheck`` -----------------------------------------------------------
    Deviation(
        "push-sreg-dword", "PUSH CS/SS/DS/ES/FS/GS with 32-bit operand size",
        "ESP drops by 4; recent Core and Atom processors write the selector with a 16-bit move, "
        "leaving the upper two bytes of the slot unmodified - the model's choice (SDM Vol. 2B "
        "PUSH; older processors may zero-extend)",
        "the zero-extended selector is written as a doubleword: the upper two bytes become 0",
        _push_sreg, explains=_x_push_sreg, trigger=_t_push_sreg),
    Deviation(
        "pvi-not-implemented", "CLI/STI at CPL 3 with CR4.PVI = 1 and IOPL < 3",
        "CLI clears and STI sets EFLAGS.VIF instead of faulting (STI: #GP if VIP = 1) "
        "(SDM Vol. 2A CLI, Vol. 2B STI; Vol. 3B 20.4)",
        "#GP(0): protected-mode virtual interrupts are not implemented", _pvi, explains=_x_pvi),
    Deviation(
        "mov-dr-cpl-first", "MOV to/from DRn at CPL > 0 with CR4.DE = 1 and DR4/DR5, or DR7.GD = 1",
        "#UD for DR4/DR5 under CR4.DE and the general-detect #DB come before the CPL test "
        "(SDM Vol. 2B MOV (debug registers), Vol. 3B 17.2.4 'prior to any MOV'; the order "
        "Bochs uses)",
        "#GP(0) from the CPL test comes first", _mov_dr_cpl_first, explains=_x_mov_dr_cpl_first),
    Deviation(
        "dr7-gd-ignored", "MOV to/from DRn at CPL 0 with DR7.GD = 1",
        "#DB (general detect) before the access (SDM Vol. 3B 17.2.4)",
        "DR7.GD is not implemented: the MOV completes", _gd_ignored, explains=_x_gd_ignored),
    Deviation(
        "transfer-accessed-bit", "far CALL/JMP, RETF, IRETD: the CS (and SS) they load",
        "loading a segment register sets the descriptor's accessed bit in memory, and the hidden "
        "cache holds it (SDM Vol. 3A 3.4.5.1)",
        "far transfers load CS and SS without setting the accessed bit, in memory or cache",
        _transfer_accessed, fields=("cs_attr", "ss_attr"), explains=_x_transfer_accessed, trigger=_t_accessed),
    Deviation(
        "transfer-offset-unchecked", "far CALL/JMP through a call gate, RETF, IRETD",
        "#GP(0) when the new EIP lies beyond the new CS limit (SDM Vol. 2A CALL, JMP, RET, IRET)",
        "the transfer completes; the limit is only (not) checked at the next fetch",
        _gate_offset, explains=_x_transfer_offset),
    Deviation(
        "iret-vm86-any-cpl", "IRETD at CPL > 0 with VM = 1 in the popped EFLAGS",
        "a return to virtual-8086 mode happens only at CPL 0; otherwise VM is ignored and the "
        "return is a protected-mode one (SDM Vol. 2A IRET, Operation)",
        "returns to virtual-8086 mode at any CPL", _iret_vm86, explains=_x_iret_vm86, trigger=_t_iret_vm86),
    Deviation(
        "iret-vif-vip-dropped", "IRETD at CPL 0 (protected-mode return)",
        "EFLAGS.VIF and VIP are loaded from the popped image at CPL 0 with a 32-bit operand "
        "size (SDM Vol. 2A IRET, Operation)",
        "VIF and VIP keep their values", _iret_vip, explains=_x_iret_vip, trigger=_t_iret_vip),
    Deviation(
        "sysexit-null-cs-rpl", "SYSEXIT with IA32_SYSENTER_CS = 1, 2 or 3",
        "#GP(0) when IA32_SYSENTER_CS[15:2] = 0 (SDM Vol. 2B SYSEXIT)",
        "only IA32_SYSENTER_CS = 0 faults; the others return to ring 3", _sysexit_cs,
        explains=_x_sysexit_cs, trigger=_t_sysexit),
    Deviation(
        "tsc-aux-reserved-no-gp", "WRMSR to IA32_TSC_AUX with EDX != 0",
        "#GP(0): bits 63:32 are reserved (SDM Vol. 4 Table 2-2, Vol. 2B WRMSR)",
        "the write completes", _tsc_aux, explains=_x_tsc_aux),
    Deviation(
        "mov-cr0-pg-without-pe", "MOV CR0 with PG = 1 and PE = 0",
        "#GP(0) (SDM Vol. 2B MOV (control registers))",
        "CR0 is loaded (the following fetch then page-faults)", _pg_without_pe,
        explains=_x_pg_without_pe),
    Deviation(
        "mov-cr0-nw-without-cd", "MOV CR0 with NW = 1 and CD = 0",
        "#GP(0) (SDM Vol. 2B MOV (control registers))",
        "CR0 is loaded", _nw_without_cd, explains=_x_nw_without_cd),
    Deviation(
        "call-gate-conforming-rpl", "far CALL through a call gate to conforming code of DPL < CPL",
        "the CPL does not change and CS.RPL is set to the CPL (SDM Vol. 2A CALL, Operation: "
        "CS(RPL) := CPL)",
        "CS.RPL is set to the code segment's DPL (the CPL itself stays)", _gate_conforming,
        explains=_x_gate_conforming),
    Deviation(
        "return-ss-not-present-np", "RETF, IRETD to an outer ring whose SS is not present",
        "#SS(SS selector) (SDM Vol. 2A RET and IRET, Operation)",
        "#NP(SS selector)", _return_ss_np, explains=_x_return_ss_np),
    Deviation(
        "jmp-gate-target-np-as-gp", "far JMP through a call gate whose code segment is not present",
        "#NP(code segment selector) (SDM Vol. 2A JMP, Operation)",
        "#GP(code segment selector)", _jmp_gate_np, explains=_x_jmp_gate_np),
    Deviation(
        "pdpte-unchecked", "MOV CR0/CR3/CR4 that loads PAE PDPTEs with reserved bits set",
        "#GP(0) (SDM Vol. 3A 4.4.1)",
        "the PDPTEs are not checked: the load completes (and later translations use them)",
        _pdpte, explains=_x_pdpte),
    Deviation(
        "own-bytes-store-restarts", "an instruction that stores into its own bytes",
        "the instruction completes as fetched; the new bytes are seen by later fetches "
        "(SDM Vol. 3A 11.6)",
        "QEMU abandons the instruction and restarts it from the new bytes; the Machine, which runs "
        "exactly one instruction, stops at that restart, so the run shows the instruction not "
        "executed", _own_bytes, explains=_x_own_bytes),
    Deviation(
        "fs-gs-null-kept-on-return", "RETF, IRETD to an outer ring with a null selector in FS or GS",
        "every one of ES, FS, GS, DS holding a null selector (or data/non-conforming code of DPL "
        "< the new CPL) becomes selector 0 (SDM Vol. 2A IRET and RET, Operation)",
        "FS and GS holding a null selector keep it, RPL included (QEMU's validate_seg skips them "
        "for the sake of x86-64 bases); ES and DS become 0", _fs_gs_null, explains=_x_fs_gs_null),
    Deviation(
        "stack-switch-keeps-esp-high", "a stack switch (call gate, interrupt, outer return) to a "
        "16-bit stack segment (B = 0)",
        "ESP := the new 32-bit stack pointer, then pushes decrement SP (SDM Vol. 2A CALL, "
        "Operation); the model assumes such stacks away",
        "ESP[31:16] keeps the old stack's upper half (QEMU's SET_ESP masks into the old ESP)",
        _esp_high),
    Deviation(
        "paging-enable-fetch-fault", "MOV CR0 that turns paging on (run on the Machine)",
        "the instruction completes; a #PF of the next fetch belongs to the next instruction",
        "Unicorn translates the next instruction through the new page tables before the Machine "
        "can stop it, and reports that fetch's #PF (EIP at the next instruction) in this run",
        _paging_fetch, kind="api", explains=_x_paging_fetch),
    Deviation(
        "sxdt-o16-24-bit-base", "SGDT, SIDT with 16-bit operand size (66 0F 01 /0, /1)",
        "the limit and the full 32-bit base are stored, as with 32-bit operand size (current SDM "
        "Vol. 2B SGDT/SIDT; editions before the 64-bit era stored 24 bits and a zero byte)",
        "the base is masked to 24 bits: the sixth byte is written 0 (QEMU's gen_sxdt, "
        "dflag == MO_16)", _sxdt16, explains=_x_sxdt16),
    Deviation(
        "int1-as-ud", "INT1 (ICEBP, F1)",
        "a debug exception #DB, delivered without the gate-DPL check (SDM Vol. 2A INT1)",
        "#UD (UC_ERR_INSN_INVALID): QEMU's debug exception is taken over by Unicorn", _int1,
        explains=_x_int1),
    Deviation(
        "cpu-lacks-features", "RDPID, CLAC/STAC (SMAP), MONITOR/MWAIT, INVPCID, CLZERO, MOVDIR64B, "
        "XSAVEC, XSAVES/XRSTORS, RDPKRU/WRPKRU, XEND/XTEST (RTM), XSUSLDTRK/XRESLDTRK, MONITORX/MWAITX",
        "the profiles' processors have the features, and the instructions run (SDM Vol. 2B RDPID, "
        "Vol. 2A CLAC, STAC, INVPCID, MONITOR, MWAIT)",
        "#UD: Unicorn's default CPU model does not report the features, and TCG refuses them",
        _cpu_lacks, kind="api", explains=_x_cpu_lacks),
    Deviation(
        "vendor-opcodes-reused", "other vendors' and earlier processors' instructions (PadLock, "
        "Cyrix EMMI/SMM/DDI, UMOV, LOADALL, RDUDBG/WRUDBG, FRSTPM...)",
        "#UD: the profiles' processors do not implement them (SDM Vol. 2A 2.4)",
        "Unicorn's CPU gives the bytes meanings of its own: LOADALL's 0F 05 runs as SYSCALL, "
        "UMOV's 0F 10-13 as SSE moves, Cyrix EMMI's opcodes as MMX/SSE (#NM under CR0.TS/EM)",
        _vendor_reused, explains=_x_vendor_reused),
    Deviation(
        "pcide-outside-ia32e", "MOV CR4 setting CR4.PCIDE outside IA-32e mode",
        "#GP(0) (SDM Vol. 2B MOV-Move to/from Control Registers, Protected Mode Exceptions)",
        "the write completes: QEMU 5.0 checks PCIDE only against the CPUID feature", _pcide,
        explains=_x_pcide),
    Deviation(
        "nm-before-ud-0f38", "undefined 0F 38 opcodes (INVEPT, INVVPID outside VMX operation; "
        "INVPCID, WRSSD, WRUSSD without their features, and INVPCID on Unicorn's CPU, which lacks "
        "it) with CR0.TS = 1",
        "#UD: an opcode the processor does not run raises #UD whatever CR0.TS says (SDM Vol. 3A "
        "6.15, interrupt 7 lists only x87/MMX/SSE instructions)",
        "#NM: QEMU decodes the 0F 38 map as SSE and tests CR0.TS first", _ts_before_ud,
        explains=_x_ts_before_ud),
    Deviation(
        "xsetbv-cpl-before-cr4", "XSETBV at CPL > 0 with CR4.OSXSAVE = 0 (or no XSAVE)",
        "#UD: the CR4.OSXSAVE test (and the feature) come before the CPL test (SDM Vol. 2C "
        "XSETBV, Protected Mode Exceptions)",
        "#GP(0): QEMU tests the CPL first", _xsetbv_cpl, explains=_x_xsetbv_cpl),
    Deviation(
        "incssp-as-lfence", "INCSSPD r32 with CET shadow stacks disabled",
        "#UD (SDM Vol. 2A INCSSPD: CR4.CET = 0 or shadow stacks disabled)",
        "QEMU has no CET and runs F3 0F AE /5 (mod = 11b) as LFENCE", _incssp,
        explains=_x_incssp),
    Deviation(
        "tsx-as-mov", "XBEGIN, XABORT",
        "XBEGIN aborts or begins a transaction, XABORT outside one is a NOP (SDM Vol. 2D XBEGIN, "
        "XABORT); the model's processor aborts at XBEGIN with EAX = 0",
        "QEMU 5.0 ignores ModRM.reg of C6/C7 with mod = 11b: MOV AL/AX/EAX, imm", _tsx_as_mov,
        explains=_x_tsx_as_mov),
    Deviation(
        "waitpkg-as-fence", "UMWAIT, TPAUSE",
        "#GP(0) with source bits 31:1 set or CR4.TSD = 1 above CPL 0; else a wait, CF := 0 and "
        "OF, SF, ZF, AF, PF := 0 (SDM Vol. 2B UMWAIT, TPAUSE)",
        "QEMU 5.0 has no WAITPKG and runs F2/66 0F AE /6 (mod = 11b) as MFENCE", _waitpkg_fence,
        explains=_x_waitpkg_fence),
    Deviation(
        "xsave-ignores-ts", "XSAVE, XSAVEOPT, XRSTOR with CR0.TS = 1",
        "#NM (SDM Vol. 2C XSAVE, XRSTOR: Protected Mode Exceptions)",
        "the instruction runs on (it completes, or raises the #GP(0) of a misaligned area): QEMU 5.0 "
        "checks CR0.TS only for FXSAVE/FXRSTOR", _xsave_ts,
        explains=_x_xsave_ts),
    Deviation(
        "restore-mxcsr-unchecked", "FXRSTOR, XRSTOR of an image whose MXCSR has reserved bits set",
        "#GP(0) (SDM Vol. 2A FXRSTOR, Vol. 2C XRSTOR: bits outside MXCSR_MASK)",
        "the restore completes: QEMU 5.0 loads MXCSR without checking it", _restore_mxcsr,
        explains=_x_restore_mxcsr),
    Deviation(
        "x87-pointers-zero", "FXSAVE, XSAVE, XSAVEOPT, FXRSTOR, XRSTOR (the x87 component)",
        "the image holds FOP, FIP, FCS, FDP and FDS, and the restore loads them (SDM Vol. 2A "
        "FXSAVE Table 3-53)",
        "QEMU 5.0 stores FIP, an FOP of its own, and zeros for FCS, FDP, FDS (and the reserved "
        "bytes 5, 14-15, 22-23); its restores zero all five",
        _fxsave_pointers, fields=("fop", "fip", "fcs", "fdp", "fds"), explains=_x_fxsave_pointers),
)

BY_ID: dict[str, Deviation] = {d.id: d for d in DEVIATIONS}
assert len(BY_ID) == len(DEVIATIONS), "duplicate deviation id"


def present(machine: Machine | None = None) -> dict[str, bool]:
    """Run every reproduction (on one Machine): id -> still present."""
    m = machine or Machine()
    return {d.id: d.reproduce(m) for d in DEVIATIONS}


def explain(obs: Observation) -> tuple[list[str], list[Diff]]:
    """(ids of the entries that account for ``obs.diffs``, the differences none accounts for)."""
    return _explain(DEVIATIONS, obs)
