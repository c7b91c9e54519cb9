"""Instructions of later processor features, and the undefined-opcode instructions (SDM Vol. 2).

Each feature-gated form first asks ``x.has(feature)`` (``model/features.py``): a processor without
it raises #UD, and the form then builds nothing else (``_need``).  The profiles' processors
(pentium, umip) have none of these features, so under them every gated form is #UD in every mode;
a profile that lists a feature gets the semantics below.  System state the forms read or write:
``xcr0`` (XGETBV/XSETBV), ``tsc_aux`` (RDPID), ``caches`` and ``tlb`` (WBNOINVD, INVPCID), EFLAGS.AC
(CLAC/STAC).  What is assumed of every state: not in SMM (RSM), CET disabled (CR4.CET = 0).
"""

from __future__ import annotations

import z3

from .. import checks
from .. import state as st
from ..form import form
from ..outcome import BR, DB, GP, UD


def _need(x, feature: str, what: str) -> bool:
    """#UD unless the processor has ``feature``; whether the rest of the form is to be built."""
    x.require(x.has(feature), UD, None, f"{what}: the processor lacks {feature}")
    return feature in x.features


def _cpl0_ud(x, what: str) -> None:
    x.require(checks.cpl0(x), UD, None, f"{what} at CPL > 0 is #UD")


# --- always #UD, and the undefined-opcode instructions --------------------------------------------

@form("rsm", enc="0F AA", bytes="0faa", asm="rsm", cite="SDM Vol. 2B RSM; Vol. 3C (System Management Mode)")
def rsm(x):
    """RSM outside SMM is #UD; the model's states are never in SMM (``profiles.ASSUMPTIONS``)."""
    x.fault(UD, None, "RSM outside system-management mode")


@form("ud2", enc="0F 0B", bytes="0f0b", asm="ud2", cite="SDM Vol. 2B UD")
def ud2(x):
    x.fault(UD, None, "UD2")


# Capstone 5 decodes 0F FF and 0F B9 without the ModRM byte that the SDM gives UD0 and UD1 (older
# processors did so for UD0); iced-x86 and the SDM read it, so the forms do.
@form("ud0_r32", enc="o32 0F FF /r", bytes="0fffc0", asm="ud0",
      cite="SDM Vol. 2B UD (UD0 r32, r/m32)")
def ud0_r32(x):
    x.fault(UD, None, "UD0")


@form("ud0_r16", enc="o16 0F FF /r", bytes="660fffc0", asm="ud0",
      cite="SDM Vol. 2B UD (UD0 r32, r/m32)")
def ud0_r16(x):
    x.fault(UD, None, "UD0")


@form("ud1_r32", enc="o32 0F B9 /r", bytes="0fb9c0", asm="ud1",
      cite="SDM Vol. 2B UD (UD1 r32, r/m32)")
def ud1_r32(x):
    x.fault(UD, None, "UD1")


@form("ud1_r16", enc="o16 0F B9 /r", bytes="660fb9c0", asm="ud1",
      cite="SDM Vol. 2B UD (UD1 r32, r/m32)")
def ud1_r16(x):
    x.fault(UD, None, "UD1")


@form("int1", enc="F1", bytes="f1", asm="int1",
      cite="SDM Vol. 2A INT n/INTO/INT3/INT1")
def int1(x):
    """INT1 (ICEBP) raises #DB as a trap-class debug exception: delivered like a hardware event,
    without the gate-DPL check of INT n, so at every CPL it is an exception into the monitor."""
    checks.vmexit(x, svm="icebp", what="INT1")
    x.fault(DB, None, "INT1 raises a debug exception (#DB)")


@form("salc", enc="D6", bytes="d6", asm="salc",
      cite="SDM Vol. 2 Appendix A (D6: no documented instruction); behaviour as Bochs and QEMU "
           "implement it")
def salc(x):
    """SALC: AL := FFH if CF = 1, else 00H; no flag changes.  Intel does not document it (the
    opcode map leaves D6 blank); iced-x86 decodes it in 32-bit mode, and processors run it."""
    x.set_gpr(0, 1, z3.If(x.flag(st.CF), z3.BitVecVal(0xFF, 8), z3.BitVecVal(0, 8)))


# --- random numbers (SDM Vol. 2B RDRAND, RDSEED) ----------------------------------------------------

# The numbers come from outside the state: one uninterpreted function per instruction and size,
# the same answer in every state and at every CPL (as CPUID's, isa.system._CPUID).  Bit w of the
# answer is CF: a number was available.
_RANDOM = {(n, w): z3.Function(f"{n}{8 * w}", z3.BitVecSort(8), z3.BitVecSort(8 * w + 1))
           for n in ("rdrand", "rdseed") for w in (2, 4)}


def _random(x, name: str, size: int) -> None:
    """DEST := a random number and CF := 1, or DEST := 0 and CF := 0 when none is ready; OF, SF,
    ZF, AF, PF := 0 (SDM Vol. 2B RDRAND/RDSEED, Flags Affected).  Any CPL."""
    if not _need(x, name, name.upper()):
        return
    checks.vmexit(x, vmx=(f"{name}_exiting", name), what=name.upper())
    r = _RANDOM[(name, size)](z3.BitVecVal(0, 8))
    ok = z3.Extract(8 * size, 8 * size, r) == 1
    x.set_rm(size, z3.If(ok, z3.Extract(8 * size - 1, 0, r), z3.BitVecVal(0, 8 * size)))
    arith = (1 << st.CF) | (1 << st.PF) | (1 << st.AF) | (1 << st.ZF) | (1 << st.SF) | (1 << st.OF)
    x.write("flags", (x.flags & ~arith) | z3.If(ok, z3.BitVecVal(1, 32), z3.BitVecVal(0, 32)))


@form("rdrand_r32", enc="o32 0F C7 /6 reg", bytes="0fc7f0", asm="rdrand eax", cite="SDM Vol. 2B RDRAND")
def rdrand_r32(x):
    _random(x, "rdrand", 4)


@form("rdrand_r16", enc="o16 0F C7 /6 reg", bytes="660fc7f0", asm="rdrand ax", cite="SDM Vol. 2B RDRAND")
def rdrand_r16(x):
    _random(x, "rdrand", 2)


@form("rdseed_r32", enc="o32 0F C7 /7 reg", bytes="0fc7f8", asm="rdseed eax", cite="SDM Vol. 2B RDSEED")
def rdseed_r32(x):
    _random(x, "rdseed", 4)


@form("rdseed_r16", enc="o16 0F C7 /7 reg", bytes="660fc7f8", asm="rdseed ax", cite="SDM Vol. 2B RDSEED")
def rdseed_r16(x):
    _random(x, "rdseed", 2)


@form("rdpid_r32", enc="F3 0F C7 /7 reg", bytes="f30fc7f8", asm="rdpid eax", cite="SDM Vol. 2B RDPID")
def rdpid_r32(x):
    """RDPID: r32 := IA32_TSC_AUX at any CPL; CR4.TSD does not gate it (unlike RDTSCP)."""
    if _need(x, "rdpid", "RDPID"):
        checks.require_enabled(x, "enable_rdtscp", "RDPID")
        x.set_rm(4, x.tsc_aux)


# --- caches and TLBs -------------------------------------------------------------------------------

@form("wbnoinvd", enc="F3 0F 09", bytes="f30f09", asm="wbnoinvd", cite="SDM Vol. 2B WBNOINVD")
def wbnoinvd(x):
    """Writes modified lines back and keeps them valid; a processor without WBNOINVD ignores the
    F3 prefix and runs WBINVD (SDM Vol. 2B WBNOINVD lists no #UD).  Either way no line holds data
    memory lacks afterwards: ``caches`` := 0, as for WBINVD."""
    checks.require_cpl0(x, "WBNOINVD")
    checks.vmexit(x, vmx=("wbinvd_exiting", "wbinvd"), svm="wbinvd", what="WBNOINVD")
    x.write("caches", 0)


@form("invpcid", enc="66 0F 38 82 /r mem", bytes="660f388200", asm="invpcid eax, xmmword ptr [eax]",
      cite="SDM Vol. 2A INVPCID; Vol. 3A 4.10.4.1")
def invpcid(x):
    """INVPCID r32, m128: the type in r32 (0-3), the descriptor's PCID in bits 11:0 and bits 63:12
    reserved; with CR4.PCIDE = 0 (always here: PCIDE needs IA-32e mode) types 0 and 1 need PCID 0.
    Any invalidation drops the one-bit TLB."""
    if not _need(x, "invpcid", "INVPCID"):
        return
    checks.require_enabled(x, "enable_invpcid", "INVPCID")
    checks.require_cpl0(x, "INVPCID")
    checks.vmexit(x, vmx=("invlpg_exiting", "invpcid"), svm="invpcid", what="INVPCID")
    kind = x.reg(4)
    desc = x.load(x.ea(), 8)
    pcid = z3.Extract(11, 0, desc)
    x.require(z3.ULE(kind, 3), GP, 0, "INVPCID type above 3")
    x.require(z3.Extract(63, 12, desc) == 0, GP, 0, "INVPCID descriptor bits 63:12 not zero")
    x.require(z3.Or(z3.UGE(kind, 2), pcid == 0), GP, 0, "INVPCID with CR4.PCIDE = 0 and PCID != 0")
    x.write("tlb", 0)


# --- SMAP (SDM Vol. 2A CLAC, Vol. 2B STAC) ---------------------------------------------------------

@form("clac", enc="NP 0F 01 CA", bytes="0f01ca", asm="clac", cite="SDM Vol. 2A CLAC; Vol. 3A 4.6")
def clac(x):
    """EFLAGS.AC := 0; #UD at CPL > 0 (not #GP)."""
    if _need(x, "smap", "CLAC"):
        _cpl0_ud(x, "CLAC")
        x.set_flag(st.AC, False)


@form("stac", enc="NP 0F 01 CB", bytes="0f01cb", asm="stac", cite="SDM Vol. 2B STAC; Vol. 3A 4.6")
def stac(x):
    """EFLAGS.AC := 1; #UD at CPL > 0 (not #GP)."""
    if _need(x, "smap", "STAC"):
        _cpl0_ud(x, "STAC")
        x.set_flag(st.AC, True)


# --- XSAVE feature control (SDM Vol. 2C XGETBV, XSETBV; Vol. 1 13.3) --------------------------------

def _osxsave(x, what: str) -> bool:
    if not _need(x, "xsave", what):
        return False
    x.require(st.bit(x.cr4, st.CR4_OSXSAVE), UD, None, f"{what} with CR4.OSXSAVE = 0")
    return True


@form("xgetbv", enc="NP 0F 01 D0", bytes="0f01d0", asm="xgetbv", cite="SDM Vol. 2C XGETBV")
def xgetbv(x):
    """EDX:EAX := XCR0 (ECX = 0) at any CPL; another ECX is #GP(0) (XCR 1 needs XINUSE, which
    the model's XSAVE processors do not report)."""
    if _osxsave(x, "XGETBV"):
        x.require(x.ecx == 0, GP, 0, "XGETBV of an XCR other than XCR0")
        x.write("eax", z3.Extract(31, 0, x.xcr0))
        x.write("edx", z3.Extract(63, 32, x.xcr0))


@form("xsetbv", enc="NP 0F 01 D1", bytes="0f01d1", asm="xsetbv", cite="SDM Vol. 2C XSETBV; Vol. 1 13.3")
def xsetbv(x):
    """XCR0 := EDX:EAX at CPL 0 with ECX = 0; #GP(0) when bit 0 (x87) is clear, AVX is set
    without SSE, or a bit the processor does not support is set."""
    if not _osxsave(x, "XSETBV"):
        return
    checks.require_cpl0(x, "XSETBV")
    checks.vmexit(x, vmx=(None, "xsetbv"), svm="xsetbv", what="XSETBV")
    v = z3.Concat(x.edx, x.eax)
    x.require(x.ecx == 0, GP, 0, "XSETBV of an XCR other than XCR0")
    x.require(st.bit(v, st.XCR0_X87), GP, 0, "XCR0 bit 0 (x87) cleared")
    x.require(z3.Implies(st.bit(v, st.XCR0_AVX), st.bit(v, st.XCR0_SSE)), GP, 0,
              "XCR0.AVX set without XCR0.SSE")
    avx512 = z3.Extract(st.XCR0_HI16_ZMM, st.XCR0_OPMASK, v)
    x.require(z3.Or(avx512 == 0, z3.And(avx512 == 7, st.bit(v, st.XCR0_AVX))), GP, 0,
              "XCR0's AVX-512 bits set apart or without AVX")
    x.require(st.bit(v, st.XCR0_BNDREGS) == st.bit(v, st.XCR0_BNDCSR), GP, 0,
              "XCR0's MPX bits set apart")
    x.require(v & ~st.xcr0_supported(x.features) == 0, GP, 0, "XCR0 bit the processor does not support")
    x.write("xcr0", v)


# --- MONITOR / MWAIT (SDM Vol. 2B MONITOR, MWAIT) -----------------------------------------------------

def _monitor(x) -> None:
    """Arms address monitoring at DS:(E)AX (the segment overridable); ECX holds extensions, none
    of which are defined: ECX != 0 is #GP(0).  #UD at CPL > 0.  The armed range is not modelled
    state: no instruction reads it back (MWAIT only waits on it)."""
    if not _need(x, "monitor", "MONITOR"):
        return
    _cpl0_ud(x, "MONITOR")
    checks.vmexit(x, vmx=("monitor_exiting", "monitor"), svm="monitor", what="MONITOR")
    x.require(x.ecx == 0, GP, 0, "MONITOR with reserved extensions in ECX")


@form("monitor_a32", enc="a32 NP 0F 01 C8", bytes="0f01c8", asm="monitor", cite="SDM Vol. 2B MONITOR")
def monitor_a32(x):
    _monitor(x)


@form("monitor_a16", enc="a16 NP 0F 01 C8", bytes="670f01c8", asm="monitor", cite="SDM Vol. 2B MONITOR")
def monitor_a16(x):
    """MONITOR with a 16-bit address size: DS:AX."""
    _monitor(x)


@form("mwait", enc="NP 0F 01 C9", bytes="0f01c9", asm="mwait", cite="SDM Vol. 2B MWAIT")
def mwait(x):
    """Waits for a store to the monitored range or an interrupt, then continues after the
    instruction: nothing modelled changes but EIP.  #UD at CPL > 0; ECX[31:1] != 0 is #GP(0)
    (ECX[0], interrupts as break events, is the one extension)."""
    if _need(x, "monitor", "MWAIT"):
        _cpl0_ud(x, "MWAIT")
        checks.vmexit(x, vmx=("mwait_exiting", "mwait"), svm="mwait", what="MWAIT")
        x.require(z3.ULE(x.ecx, 1), GP, 0, "MWAIT with reserved extensions in ECX")


# --- SWAPGS (64-bit mode only) ----------------------------------------------------------------------

@form("swapgs", enc="0F 01 F8", bytes="0f01f8", asm="swapgs", cite="SDM Vol. 2B SWAPGS")
def swapgs(x):
    """SWAPGS outside 64-bit mode is #UD (iced-x86 does not even decode it in 32-bit code)."""
    x.fault(UD, None, "SWAPGS outside 64-bit mode")


# --- CET shadow stacks with CR4.CET = 0 (SDM Vol. 1 ch. 17; Vol. 2 each instruction) -----------------
#
# With CET disabled the shadow-stack instructions outside the hint-NOP space are #UD, and those in
# it (RDSSP, ENDBR32/64 in 0F 1E) are NOPs.  A processor without CET has no CR4.CET (always 0
# here); one with it is assumed to run with CR4.CET = 0 (``profiles.ASSUMPTIONS``).

def _cet_off(x) -> None:
    if "cet_ss" in x.features:
        x.assume(z3.Not(st.bit(x.cr4, st.CR4_CET)), "CET enabled (CR4.CET = 1) is not modelled")


def _cet_ud(x, what: str) -> None:
    _cet_off(x)
    x.fault(UD, None, f"{what} with CET shadow stacks disabled (CR4.CET = 0)")


@form("incsspd", enc="F3 0F AE /5 reg", bytes="f30faee8", asm="incsspd eax", cite="SDM Vol. 2A INCSSPD/INCSSPQ")
def incsspd(x):
    _cet_ud(x, "INCSSPD")


@form("rdsspd", enc="F3 0F 1E /1 reg", bytes="f30f1ec8", asm="rdsspd eax", cite="SDM Vol. 2B RDSSPD/RDSSPQ")
def rdsspd(x):
    """A NOP while shadow stacks are disabled (the 0F 1E hint space): the register keeps its value."""
    _cet_off(x)


@form("saveprevssp", enc="F3 0F 01 EA", bytes="f30f01ea", asm="saveprevssp", cite="SDM Vol. 2B SAVEPREVSSP")
def saveprevssp(x):
    _cet_ud(x, "SAVEPREVSSP")


@form("rstorssp", enc="F3 0F 01 /5 mem", bytes="f30f0128", asm="rstorssp dword ptr [eax]",
      cite="SDM Vol. 2B RSTORSSP")
def rstorssp(x):
    _cet_ud(x, "RSTORSSP")


@form("wrssd", enc="NP 0F 38 F6 /r mem", bytes="0f38f600", asm="wrssd dword ptr [eax], eax",
      cite="SDM Vol. 2D WRSSD/WRSSQ")
def wrssd(x):
    _cet_ud(x, "WRSSD")


@form("wrussd", enc="66 0F 38 F5 /r mem", bytes="660f38f500", asm="wrussd dword ptr [eax], eax",
      cite="SDM Vol. 2D WRUSSD/WRUSSQ")
def wrussd(x):
    _cet_ud(x, "WRUSSD")


@form("setssbsy", enc="F3 0F 01 E8", bytes="f30f01e8", asm="setssbsy", cite="SDM Vol. 2B SETSSBSY")
def setssbsy(x):
    _cet_ud(x, "SETSSBSY")


@form("clrssbsy", enc="F3 0F AE /6 mem", bytes="f30fae30", asm="clrssbsy dword ptr [eax]",
      cite="SDM Vol. 2A CLRSSBSY")
def clrssbsy(x):
    _cet_ud(x, "CLRSSBSY")


@form("endbr32", enc="F3 0F 1E FB", bytes="f30f1efb", asm="endbr32", cite="SDM Vol. 2A ENDBR32")
def endbr32(x):
    """A NOP with CET indirect-branch tracking disabled (and on processors without CET)."""
    _cet_off(x)


@form("endbr64", enc="F3 0F 1E FA", bytes="f30f1efa", asm="endbr64", cite="SDM Vol. 2A ENDBR64")
def endbr64(x):
    """A NOP outside 64-bit mode as well (the 0F 1E hint space)."""
    _cet_off(x)


# --- PCONFIG, SGX -------------------------------------------------------------------------------------

@form("pconfig", enc="NP 0F 01 C5", bytes="0f01c5", asm="pconfig", cite="SDM Vol. 2B PCONFIG")
def pconfig(x):
    """#GP(0) at CPL > 0 or for a leaf other than MKTME_KEY_PROGRAM (EAX = 0).  What the leaf
    programs (the memory-encryption key table) is not modelled state: assumed away."""
    if not _need(x, "pconfig", "PCONFIG"):
        return
    checks.require_cpl0(x, "PCONFIG")
    x.require(x.eax == 0, GP, 0, "PCONFIG leaf not supported")
    x.assume(z3.Not(z3.And(checks.cpl0(x), x.eax == 0)),
             "PCONFIG programming a memory-encryption key: the key table is not modelled")


@form("encls", enc="NP 0F 01 CF", bytes="0f01cf", asm="encls", cite="SDM Vol. 3D, SGX Instruction References (ENCLS)")
def encls(x):
    """ENCLS is #UD at CPL > 0; its leaves manage enclave pages (EPC), not modelled: assumed away."""
    if not _need(x, "sgx", "ENCLS"):
        return
    _cpl0_ud(x, "ENCLS")
    x.assume(z3.Not(checks.cpl0(x)), "ENCLS leaves (enclave page management) are not modelled")


@form("enclu", enc="NP 0F 01 D7", bytes="0f01d7", asm="enclu", cite="SDM Vol. 3D, SGX Instruction References (ENCLU)")
def enclu(x):
    """ENCLU is #UD below CPL 3; its leaves (EENTER, EEXIT, ...) enter and leave enclaves, not
    modelled: assumed away."""
    if not _need(x, "sgx", "ENCLU"):
        return
    x.require(x.cpl == 3, UD, None, "ENCLU below CPL 3 is #UD")
    x.assume(x.cpl != 3, "ENCLU leaves (enclave entry and exit) are not modelled")


# --- CLZERO (AMD) ---------------------------------------------------------------------------------

CACHE_LINE = 64   # bytes: the line size every processor with CLZERO reports (CPUID 8000_0005H:ECX[7:0])


def _clzero(x) -> None:
    """Writes zero to every byte of the cache line holding DS:rAX (the segment overridable): the
    address aligned down to the line, EAX or AX by the address size.  A store to memory, nothing
    else changes (AMD APM Vol. 3 CLZERO)."""
    if not _need(x, "clzero", "CLZERO"):
        return
    seg = x.d.seg or "ds"
    linear = (x.seg_base(seg) + x.areg(0)) & ~(CACHE_LINE - 1)
    x.seg_store(seg, linear, CACHE_LINE, 0)


@form("clzero_a32", enc="a32 0F 01 FC", bytes="0f01fc", asm="clzero", cite="AMD APM Vol. 3 CLZERO")
def clzero_a32(x):
    _clzero(x)


@form("clzero_a16", enc="a16 0F 01 FC", bytes="670f01fc", asm="clzero", cite="AMD APM Vol. 3 CLZERO")
def clzero_a16(x):
    """CLZERO with a 16-bit address size: DS:AX."""
    _clzero(x)


# --- MOVDIR64B ----------------------------------------------------------------------------------------

def _movdir64b(x) -> None:
    """64 bytes from the memory operand to ES:(E)DI-style address ES:r (the register operand, by
    the address size; ES cannot be overridden); #GP(0) unless that offset is 64-byte aligned
    (SDM Vol. 2B MOVDIR64B).  The direct store's write atomicity is no architectural state."""
    if not _need(x, "movdir64b", "MOVDIR64B"):
        return
    dest = x.areg(x.d.reg)
    x.require(z3.Extract(5, 0, dest) == 0, GP, 0, "MOVDIR64B destination not 64-byte aligned")
    data = x.seg_load(x.default_seg(), x.ea(), 64)
    x.seg_store("es", x.seg_base("es") + dest, 64, data)


@form("movdir64b_a32", enc="a32 66 0F 38 F8 /r mem", bytes="660f38f830",
      asm="movdir64b esi, zmmword ptr [eax]", cite="SDM Vol. 2B MOVDIR64B")
def movdir64b_a32(x):
    _movdir64b(x)


@form("movdir64b_a16", enc="a16 66 0F 38 F8 /r mem", bytes="67660f38f837",
      asm="movdir64b si, zmmword ptr [bx]", cite="SDM Vol. 2B MOVDIR64B")
def movdir64b_a16(x):
    """16-bit addressing: the source by BX/BP/SI/DI, the destination ES:r16."""
    _movdir64b(x)


# --- UD0 without ModRM (older processors) -------------------------------------------------------------

@form("ud0", enc="0F FF", bytes="0fff", asm="ud0", cite="SDM Vol. 2B UD (UD0: older processors read no ModRM)",
      code="UD0")
def ud0(x):
    """0F FF as two bytes, as processors before ModRM-reading UD0 decode it: #UD all the same."""
    x.fault(UD, None, "UD0")


# --- PAUSE, BOUND ---------------------------------------------------------------------------------

@form("pause", enc="F3 90", bytes="f390", asm="pause", cite="SDM Vol. 2B PAUSE")
def pause(x):
    """A spin-wait hint: no architectural effect but EIP (what VT-x's PAUSE exiting watches)."""
    checks.vmexit(x, vmx=("pause_exiting", "pause"), svm="pause", what="PAUSE")


def _bound(x, size: int) -> None:
    """#BR unless lower <= index <= upper, signed, with the bounds at m and m + size (SDM Vol. 2A
    BOUND).  A register operand is no instance (62 with mod = 11b begins an EVEX prefix)."""
    index = x.reg(size)
    lower = x.load(x.ea(), size)
    upper = x.load(x.ea(size), size)
    x.require(z3.And(index >= lower, index <= upper), BR, None, "BOUND: index outside the bounds")


@form("bound_r32", enc="o32 62 /r mem", bytes="6200", asm="bound eax, qword ptr [eax]",
      cite="SDM Vol. 2A BOUND")
def bound_r32(x):
    _bound(x, 4)


@form("bound_r16", enc="o16 62 /r mem", bytes="666200", asm="bound ax, dword ptr [eax]",
      cite="SDM Vol. 2A BOUND")
def bound_r16(x):
    _bound(x, 2)
