"""Where Unicorn 2.1.4 (QEMU 5.0 TCG) departs from the SDM: ONE table, each entry reproducible.

Every ``Deviation`` names what it affects, what the SDM says, what Unicorn does, and a
``reproduce(machine)`` that runs a minimal case on a ``Machine`` and returns True while Unicorn
still behaves so.  ``tests/test_emulator_machine.py`` asserts every one is still present, so the
table goes stale loudly when Unicorn changes.  ``kind`` is "semantics" (an instruction computes
something else) or "api" (the harness cannot observe or set something through Unicorn's API).

A cross-check that meets a difference listed here should report the entry's id, not a model bug.
``fields`` names state fields whose Unicorn value is not the architectural one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pgvirt.model import state as st
from pgvirt.model.outcome import BP, DF, GP, UD, Fault, Next

from . import states as S
from .machine import Machine, error_codes_observable


@dataclass(frozen=True)
class Deviation:
    id: str
    affects: str           # instructions / conditions
    sdm: str               # what the SDM specifies (with the citation)
    unicorn: str           # what Unicorn 2.1.4 does instead
    reproduce: Callable[[Machine], bool]
    kind: str = "semantics"
    fields: tuple[str, ...] = ()

    def present(self, machine: Machine | None = None) -> bool:
        return self.reproduce(machine or Machine())


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
    s = S.flat_state(0, eax=S.TSS_SEL)
    S.put(s["mem"], S.GDT_BASE + S.TSS_SEL, S.descriptor(S.TSS_BASE, S.TSS_LIMIT, S.TSS_AVAIL_ATTR))
    out = m.run(s, bytes.fromhex("0f00d8"))                              # ltr ax
    return (_completes(out) and out.state["tr_attr"] & 0xF == 0x9
            and out.state["mem"][S.GDT_BASE + S.TSS_SEL + 5] & 0xF == 0xB)


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "umip-not-implemented", "SGDT, SIDT, SLDT, SMSW, STR at CPL > 0 with CR4.UMIP = 1",
        "#GP(0) (SDM Vol. 3A 2.5, Vol. 2B SGDT)",
        "CR4.UMIP is stored but ignored: the instructions complete", _umip),
    Deviation(
        "io-permission-unchecked", "IN, OUT, INS, OUTS with CPL > IOPL",
        "consult the TSS I/O permission bitmap; #GP(0) if a port bit is 1 or the bitmap lies "
        "beyond the TSS limit (SDM Vol. 1 19.5)",
        "no IOPL or bitmap test: the port is always accessed", _io_bitmap),
    Deviation(
        "idt-not-consulted", "INT n (and every exception) in protected mode",
        "INT n checks the gate: #GP(n*8+2) if gate DPL < CPL; otherwise transfers through the "
        "gate (SDM Vol. 2A INT n, Vol. 3A 6.12)",
        "the IDT is never read: INT n is reported as vector n (EIP after the instruction), "
        "whatever the gate", _idt),
    Deviation(
        "int-no-transfer", "INT n, INT3, INTO through a permitted gate",
        "a Next state in the handler: CS:EIP from the gate, stack switched from the TSS, "
        "EFLAGS/CS/EIP (and SS/ESP) pushed (SDM Vol. 3A 6.12.1)",
        "reported as a fault with the vector; no handler is entered, nothing is pushed",
        _int_no_transfer),
    Deviation(
        "rdpmc-inverted", "RDPMC",
        "reads counter ECX at CPL 0 or with CR4.PCE = 1; #GP(0) at CPL > 0 with PCE = 0 "
        "(SDM Vol. 2B RDPMC)",
        "#GP at CPL > 0 with PCE = 1 (the test inverted), #UD in every other case",
        _rdpmc, fields=("pmc0", "pmc1")),
    Deviation(
        "sysenter-only-advances-eip", "SYSENTER",
        "loads CS/SS from IA32_SYSENTER_CS, ESP/EIP from IA32_SYSENTER_ESP/EIP, CPL 0, clears "
        "IF/VM/RF (SDM Vol. 2B SYSENTER)",
        "only EIP advances by 2 (Unicorn hands SYSENTER to its UC_HOOK_INSN hook)", _sysenter),
    Deviation(
        "syscall-only-advances-eip", "SYSCALL in 32-bit protected mode",
        "#UD with IA32_EFER.SCE = 0 (and on Intel outside 64-bit mode) (SDM Vol. 2B SYSCALL)",
        "only EIP advances by 2 (handed to Unicorn's UC_HOOK_INSN hook)", _syscall),
    Deviation(
        "rdmsr-unknown-reads-zero", "RDMSR at CPL 0 of an unimplemented MSR",
        "#GP(0) (SDM Vol. 2B RDMSR)", "EDX:EAX = 0", _rdmsr_unknown),
    Deviation(
        "wrmsr-unknown-ignored", "WRMSR at CPL 0 of an unimplemented MSR",
        "#GP(0) (SDM Vol. 2B WRMSR)", "the write is dropped silently", _wrmsr_unknown),
    Deviation(
        "smsw-r32-keeps-high-half", "SMSW r32",
        "EAX[15:0] = CR0[15:0], EAX[31:16] undefined; P6 and later store CR0[31:16] (the "
        "model's choice) (SDM Vol. 2B SMSW)",
        "EAX[31:16] keeps its old value", _smsw_r32),
    Deviation(
        "rdtsc-host-time", "RDTSC, RDTSCP",
        "EDX:EAX = IA32_TSC, which WRMSR sets (SDM Vol. 3B 17.17)",
        "EDX:EAX is host time (it changes between two runs of one state)", _rdtsc,
        fields=("tsc",)),
    Deviation(
        "tsc-msr-unimplemented", "RDMSR/WRMSR of IA32_TSC (MSR 0x10)",
        "RDMSR reads the TSC, WRMSR sets it (SDM Vol. 3B 17.17, Vol. 4 Table 2-2)",
        "no such MSR: RDMSR reads 0 and WRMSR is dropped; the Machine carries the state's tsc",
        _tsc_msr, fields=("tsc",)),
    Deviation(
        "sysenter-cs-16-bit", "WRMSR/RDMSR of IA32_SYSENTER_CS (MSR 0x174)",
        "a 64-bit MSR whose bits 15:0 name the ring-0 CS; the model keeps bits 31:0 as written "
        "(SDM Vol. 4 Table 2-2, Vol. 2B SYSENTER)",
        "bits 31:16 are dropped (QEMU stores val & 0xffff)", _sysenter_cs, fields=("sysenter_cs",)),
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
        "stored and read back (MOV from CR0, SMSW)", _cr0_reserved, fields=("cr0",)),
    Deviation(
        "cr4-reserved-no-gp", "MOV CR4 with a reserved bit set",
        "#GP(0) (SDM Vol. 2B MOV (control registers))",
        "the value is stored", _cr4_reserved, fields=("cr4",)),
    Deviation(
        "dr-reserved-bits-kept", "MOV DR6, MOV DR7 (and DR4/DR5 aliases) with reserved bits",
        "DR6 bit 12 and DR7 bits 11, 12, 14, 15 read as 0 (SDM Vol. 3B 17.2.3-17.2.4)",
        "written bits are kept", _dr_reserved, fields=("dr6", "dr7")),
    Deviation(
        "ltr-null-accepted", "LTR with a null selector at CPL 0",
        "#GP(0) (SDM Vol. 2A LTR)",
        "TR is loaded with the null selector and an empty cache (base 0, limit 0, attr 0)",
        _ltr_null, fields=("tr", "tr_base", "tr_limit", "tr_attr")),
    Deviation(
        "ltr-cache-not-busy", "LTR of an available TSS",
        "the descriptor is marked busy and TR holds a busy TSS (type 0xB; SDM Vol. 2A LTR, "
        "Vol. 3C 26.3.1.2 requires it of a VM-entry guest TR)",
        "memory is marked busy but the TR cache keeps the available type (0x9)", _ltr_cache,
        fields=("tr_attr",)),
)

BY_ID: dict[str, Deviation] = {d.id: d for d in DEVIATIONS}
assert len(BY_ID) == len(DEVIATIONS), "duplicate deviation id"


def present(machine: Machine | None = None) -> dict[str, bool]:
    """Run every reproduction (on one Machine): id -> still present."""
    m = machine or Machine()
    return {d.id: d.reproduce(m) for d in DEVIATIONS}
