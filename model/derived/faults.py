"""Architectural faults that depend on system state, written once for every derived form.

Each check names its source.  The order is the SDM's priority (Vol. 3A 6.9, Table 6-2): faults
from decoding (#UD: LOCK, a missing CPUID feature, CR0.EM / CR4.OSFXSR / OSXSAVE and XCR0),
then #NM (CR0.TS, and EM for x87), then those of executing: #GP(0) for a misaligned SSE
operand, #AC, and last the faults of the data (#DE, #MF, #XM) which are uninterpreted functions
of what the instruction reads (``data_faults``).
"""

from __future__ import annotations

import z3

from .. import state as st
from ..outcome import AC, BR, DE, GP, MF, NM, UD
from .uf import function

XM = 19   # SIMD floating-point exception (SDM Vol. 3A 6.15, interrupt 19)

X87_FEATURES = frozenset(("fpu", "fpu287", "fpu387", "fpu287xl_only", "fpu387sl_only", "cyrix_fpu"))
# Legacy SSE instructions whose 16-byte memory operand need not be aligned (SDM Vol. 1 11.4.1,
# Vol. 2 MOVUPS/MOVUPD/MOVDQU/LDDQU; PCMPxSTRx "do not require alignment").
SSE_UNALIGNED = frozenset(("MOVUPS", "MOVUPD", "MOVDQU", "LDDQU", "PCMPESTRI", "PCMPESTRM",
                           "PCMPISTRI", "PCMPISTRM"))
# VEX/EVEX instructions that still require full alignment (SDM Vol. 2A 2.5 / 2.7, Table 2-4).
AVX_ALIGNED = frozenset(("VMOVAPS", "VMOVAPD", "VMOVDQA", "VMOVDQA32", "VMOVDQA64", "VMOVNTPS",
                         "VMOVNTPD", "VMOVNTDQ", "VMOVNTDQA"))
# x87 instructions that leave the last-instruction pointers alone (SDM Vol. 1 8.1.8: FCLEX,
# FLDCW, FSTCW, FSTSW, FSTENV and WAIT; FINIT, FLDENV, FRSTOR and FSAVE set them).  Every other
# x87 instruction records CS:EIP and its operand's DS:offset there; the frame test saw QEMU do
# so for FINCSTP and FNDISI too, which the SDM's list of control instructions would exclude.
X87_CONTROL = frozenset(("FLDCW", "FNSTCW", "FSTCW", "FNSTSW", "FSTSW", "FNCLEX", "FCLEX",
                         "FNSTENV", "FSTENV", "WAIT"))


def classes(rec: dict) -> frozenset[str]:
    """Which register files and so which CR0/CR4/XCR0 rules apply (SDM Vol. 3A 2.5 Table 2-2,
    12.1, 13.1; Vol. 2A 2.8 exception classes)."""
    kinds = [op["kind"] for op in rec["footprint"]["operands"]]
    imp = [r["reg"] for r in rec["footprint"]["implicit"]]
    enc, mn = rec["encoding"], rec["mnemonic"]
    layout = rec["layout"]
    out = set()
    vector = any(k.startswith(("xmm", "ymm", "zmm")) for k in kinds) or \
        any(r.startswith(("xmm", "ymm", "zmm")) for r in imp)
    opmask = any(k.startswith(("k_", "kp1")) for k in kinds) or any(r.startswith("k") for r in imp)
    if enc in ("legacy", "3dnow"):
        if mn == "WAIT":
            out.add("wait")
        elif enc == "legacy" and layout["map"] == 0 and 0xD8 <= int(layout["opcode"][:2], 16) <= 0xDF:
            out.add("x87")
        if any(k.startswith("mm_") for k in kinds) or enc == "3dnow" or mn in ("EMMS", "FEMMS") \
                or any(r.startswith("mm") for r in imp):
            out.add("mmx")
        if vector or mn in ("LDMXCSR", "STMXCSR"):
            out.add("sse")
    else:
        if vector or opmask or mn in ("VLDMXCSR", "VSTMXCSR", "VZEROALL", "VZEROUPPER"):
            out.add("avx")
        if enc == "evex" or opmask:
            out.add("avx512")
    return frozenset(out)


def check_lock(x, rec: dict, mem_dest: bool) -> None:
    """LOCK is #UD unless the instruction is lockable and its destination is memory
    (SDM Vol. 2B LOCK)."""
    if x.d.lock:
        x.require(rec["lock"] and mem_dest, UD, None,
                  "LOCK prefix on an instruction or operand that cannot be locked")


def check_features(x, rec: dict) -> None:
    """#UD when the processor lacks a CPUID feature the instruction needs."""
    for f in rec["cpuid"]:
        x.require(x.has(f), UD, None, f"the processor lacks CPUID feature {f}")


def check_state(x, cls: frozenset[str]) -> None:
    """#UD / #NM from CR0.EM/MP/TS, CR4.OSFXSR/OSXSAVE and XCR0 (SDM Vol. 3A 2.5 Table 2-2,
    12.5, 13.2, 13.3; Vol. 2A 2.8 Tables 2-20..2-22)."""
    cr0, cr4, xcr0 = x.cr0, x.cr4, x.xcr0
    em, ts, mp = st.bit(cr0, st.CR0_EM), st.bit(cr0, st.CR0_TS), st.bit(cr0, st.CR0_MP)
    if "avx" in cls:
        need = (1 << st.XCR0_SSE) | (1 << st.XCR0_AVX)
        if "avx512" in cls:
            need |= st.XCR0_AVX512
        x.require(st.bit(cr4, st.CR4_OSXSAVE), UD, None, "CR4.OSXSAVE = 0: AVX state not enabled")
        x.require(xcr0 & need == need, UD, None, "XCR0 does not enable the instruction's state")
    if "mmx" in cls or "sse" in cls:
        x.require(z3.Not(em), UD, None, "CR0.EM = 1: MMX/SSE instructions are #UD")
    if "sse" in cls:
        x.require(st.bit(cr4, st.CR4_OSFXSR), UD, None, "CR4.OSFXSR = 0: SSE state not enabled")
    if "x87" in cls:
        x.require(z3.Not(em), NM, None, "CR0.EM = 1: x87 instructions are emulated (#NM)")
    if "wait" in cls:
        x.require(z3.Not(z3.And(mp, ts)), NM, None, "CR0.MP = CR0.TS = 1: WAIT raises #NM")
    elif cls & {"x87", "mmx", "sse", "avx"}:
        x.require(z3.Not(ts), NM, None, "CR0.TS = 1: FPU/SIMD state not loaded (#NM)")


def check_alignment(x, rec: dict, cls: frozenset[str], linear, size: int) -> None:
    """#GP(0) for a 16-byte (or wider) operand that must be aligned (SDM Vol. 1 11.4.1;
    Vol. 2A 2.5 Table 2-4)."""
    mn = rec["mnemonic"]
    if ("sse" in cls and size >= 16 and mn not in SSE_UNALIGNED) or \
            ("avx" in cls and mn in AVX_ALIGNED and size >= 16):
        x.require(linear & (size - 1) == 0, GP, 0, f"{size}-byte operand not {size}-byte aligned")


def check_ac(x, linear, size: int) -> None:
    """#AC(0): CPL 3, CR0.AM = 1, EFLAGS.AC = 1 and a word/doubleword/quadword access not on its
    natural boundary (SDM Vol. 3A 6.15 interrupt 17, Table 6-7)."""
    if size not in (2, 4, 8):
        return
    on = z3.And(x.cpl == 3, st.bit(x.cr0, st.CR0_AM), st.bit(x.sysflags, st.AC))
    x.require(z3.Not(z3.And(on, linear & (size - 1) != 0)), AC, 0,
              f"alignment check: {size}-byte access misaligned at CPL 3 with CR0.AM = EFLAGS.AC = 1")


def data_faults(x, rec: dict, cls: frozenset[str], name: str, inputs: list) -> None:
    """Faults of the data: whether they happen is an uninterpreted function of the inputs
    (#DE for DIV/IDIV/AAM, #MF for a pending x87 error, #XM for an unmasked SIMD exception);
    which vector an SSE one takes is CR4.OSXMMEXCPT's (SDM Vol. 3A 13.4)."""
    def happens(tag: str):
        if not inputs:
            return z3.Bool(f"{name}.fault.{tag}")
        return function(f"{name}.fault.{tag}", inputs, z3.BoolSort())(*inputs)
    mn = rec["mnemonic"]
    if mn in ("DIV", "IDIV", "AAM"):
        x.require(z3.Not(happens("DE")), DE, None, "divide error (quotient too large or divisor 0)")
    if mn == "BOUND":
        x.require(z3.Not(happens("BR")), BR, None, "BOUND range exceeded")
    if ("x87" in cls and not rec["fpu_no_wait"]) or "wait" in cls or "mmx" in cls:
        # With CR0.NE = 0 the error goes out on FERR# instead (MS-DOS compatibility mode).
        x.assume(st.bit(x.cr0, st.CR0_NE), "x87 errors reported natively: CR0.NE = 1")
        x.require(z3.Not(happens("MF")), MF, None, "pending unmasked x87 floating-point exception")
    if cls & {"sse", "avx"}:
        xm = happens("XM")
        osx = st.bit(x.cr4, st.CR4_OSXMMEXCPT)
        x.require(z3.Not(z3.And(xm, osx)), XM, None, "unmasked SIMD floating-point exception")
        x.require(z3.Not(z3.And(xm, z3.Not(osx))), UD, None,
                  "unmasked SIMD floating-point exception with CR4.OSXMMEXCPT = 0")
