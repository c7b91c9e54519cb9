"""VMX, SVM and SMX instructions as a processor outside VMX, SVM-guest and SMX operation runs them.

VMX (SDM Vol. 3C ch. 31, "VMX Instruction Reference"): every VMX instruction but VMXON is #UD
outside VMX operation, and VMXON cannot enter it in the model's states: it needs the CR0 bits
IA32_VMX_CR0_FIXED0 fixes to 1 (PE, NE and PG on every processor, SDM Vol. 3D A.7), and the
states have no paging (``profiles.ASSUMPTIONS``).  So VMXON's checks are modelled in their order
and end, at CPL 0 with CR4.VMXE = 1, in #GP(0).  VM exits of these instructions in VMX non-root
operation belong to the VT-x profile (issue 13), not to these definitions' present states.

SVM (AMD APM Vol. 3, each instruction; Vol. 2 ch. 15): gated by IA32_EFER.SVME (#UD when 0) and
CPL 0 (#GP(0)).  STGI/CLGI set and clear the global interrupt flag ``gif``; INVLPGA drops TLB
entries.  What VMRUN, VMLOAD, VMSAVE and SKINIT do once their checks pass (enter a guest, move
hidden state through the VMCB, reinitialise the processor) is assumed away and listed.

SMX (SDM Vol. 2D, Safer Mode Extensions Reference): GETSEC with CR4.SMXE; CAPABILITIES and
PARAMETERS answer from fixed properties of the processor (uninterpreted functions, as CPUID's);
the states are outside authenticated-code mode and the measured environment, so EXITAC, SEXIT,
SMCTRL and WAKEUP are #GP(0), and ENTERACCS/SENTER's launch is assumed away.
"""

from __future__ import annotations

import z3

from .. import checks
from .. import state as st
from ..form import form
from ..outcome import GP, UD

_VMX = "SDM Vol. 3C ch. 31 (VMX Instruction Reference)"


def _outside_vmx(x, what: str) -> None:
    """#UD outside VMX operation; in VMX non-root operation a VM exit, unconditionally and before
    the CPL check (SDM Vol. 3C 25.1.2; the instructions' Operation sections)."""
    checks.vmexit(x, vmx=(None, what.lower()), what=what)
    x.fault(UD, None, f"{what} outside VMX operation")


# --- VMX ------------------------------------------------------------------------------------------

# CR0 bits VMX operation fixes to 1 (IA32_VMX_CR0_FIXED0: PE, NE, PG; SDM Vol. 3D A.7).
_CR0_FIXED1 = (1 << st.CR0_PE) | (1 << st.CR0_NE) | (1 << st.CR0_PG)


@form("vmxon", enc="F3 0F C7 /6 mem", bytes="f30fc730", asm="vmxon qword ptr [eax]",
      cite=_VMX + " VMXON; Vol. 3D A.7")
def vmxon(x):
    """#UD without VMX or with CR4.VMXE = 0; #GP(0) at CPL > 0 or when CR0 is not as VMX
    operation requires (PE, NE, PG set) - always so here, where CR0.PG = 0.  A state that passed
    would go on to read the VMXON pointer and enter VMX operation: assumed away."""
    x.require(x.has("vmx"), UD, None, "VMXON: the processor lacks VMX")
    if "vmx" not in x.features:
        return
    x.require(st.bit(x.cr4, st.CR4_VMXE), UD, None, "VMXON with CR4.VMXE = 0")
    checks.vmexit(x, vmx=(None, "vmxon"), what="VMXON")
    checks.require_cpl0(x, "VMXON")
    fixed = x.cr0 & _CR0_FIXED1 == _CR0_FIXED1
    x.require(fixed, GP, 0, "VMXON with CR0 bits VMX operation fixes to 1 clear (PG, PE or NE)")
    x.assume(z3.Not(z3.And(st.bit(x.cr4, st.CR4_VMXE), checks.cpl0(x), fixed)),
             "VMXON entering VMX operation (it needs paging): not modelled")


@form("vmxoff", enc="NP 0F 01 C4", bytes="0f01c4", asm="vmxoff", cite=_VMX + " VMXOFF")
def vmxoff(x):
    _outside_vmx(x, "VMXOFF")


@form("vmclear", enc="66 0F C7 /6 mem", bytes="660fc730", asm="vmclear qword ptr [eax]",
      cite=_VMX + " VMCLEAR")
def vmclear(x):
    _outside_vmx(x, "VMCLEAR")


@form("vmptrld", enc="NP 0F C7 /6 mem", bytes="0fc730", asm="vmptrld qword ptr [eax]",
      cite=_VMX + " VMPTRLD")
def vmptrld(x):
    _outside_vmx(x, "VMPTRLD")


@form("vmptrst", enc="NP 0F C7 /7 mem", bytes="0fc738", asm="vmptrst qword ptr [eax]",
      cite=_VMX + " VMPTRST")
def vmptrst(x):
    _outside_vmx(x, "VMPTRST")


@form("vmread", enc="NP 0F 78 /r", bytes="0f78c0", asm="vmread eax, eax", cite=_VMX + " VMREAD")
def vmread(x):
    _outside_vmx(x, "VMREAD")


@form("vmwrite", enc="NP 0F 79 /r", bytes="0f79c0", asm="vmwrite eax, eax", cite=_VMX + " VMWRITE")
def vmwrite(x):
    _outside_vmx(x, "VMWRITE")


@form("vmlaunch", enc="NP 0F 01 C2", bytes="0f01c2", asm="vmlaunch", cite=_VMX + " VMLAUNCH/VMRESUME")
def vmlaunch(x):
    _outside_vmx(x, "VMLAUNCH")


@form("vmresume", enc="NP 0F 01 C3", bytes="0f01c3", asm="vmresume", cite=_VMX + " VMLAUNCH/VMRESUME")
def vmresume(x):
    _outside_vmx(x, "VMRESUME")


@form("vmcall", enc="NP 0F 01 C1", bytes="0f01c1", asm="vmcall", cite=_VMX + " VMCALL")
def vmcall(x):
    _outside_vmx(x, "VMCALL")


@form("invept", enc="66 0F 38 80 /r mem", bytes="660f388000", asm="invept eax, xmmword ptr [eax]",
      cite=_VMX + " INVEPT")
def invept(x):
    _outside_vmx(x, "INVEPT")


@form("invvpid", enc="66 0F 38 81 /r mem", bytes="660f388100", asm="invvpid eax, xmmword ptr [eax]",
      cite=_VMX + " INVVPID")
def invvpid(x):
    _outside_vmx(x, "INVVPID")


@form("vmfunc", enc="NP 0F 01 D4", bytes="0f01d4", asm="vmfunc", cite=_VMX + " VMFUNC")
def vmfunc(x):
    """#UD outside VMX non-root operation, and inside it while 'enable VM functions' is 0; with it
    set, a function the VM-function controls do not enable exits (SDM Vol. 3C 25.5.6; none is)."""
    checks.require_enabled(x, "enable_vm_functions", "VMFUNC")
    _outside_vmx(x, "VMFUNC")


@form("enclv", enc="NP 0F 01 C0", bytes="0f01c0", asm="enclv",
      cite="SDM Vol. 3D, SGX Instruction References (ENCLV)")
def enclv(x):
    """ENCLV (the VMM's SGX leaves) is #UD on a processor without SGX, whose CPUID leaf 12H
    cannot report it, in any operation and before any VM exit (SDM Vol. 3D ENCLV, exceptions:
    the feature check; Vol. 3C 25.1.1: #UD has priority over VM exits); with SGX, #UD outside VMX
    operation."""
    x.require(x.has("sgx"), UD, None, "ENCLV: the processor lacks SGX")
    if "sgx" not in x.features:
        return
    _outside_vmx(x, "ENCLV")


# --- SVM (AMD APM Vol. 3 VMRUN ... INVLPGA; Vol. 2 15) --------------------------------------------

def _svme(x, what: str, skinit: bool = False) -> bool:
    """#UD unless IA32_EFER.SVME = 1 (or, for SKINIT/STGI, the processor has SKINIT)."""
    ok = z3.And(x.has("svm"), st.bit(x.efer, st.EFER_SVME))
    if skinit:
        ok = z3.Or(ok, x.has("skinit"))
    x.require(ok, UD, None, f"{what} with EFER.SVME = 0")
    return "svm" in x.features or (skinit and "skinit" in x.features)


def _vmcb_address(x):
    """rAX by the address size: EAX, or AX with a 67 prefix (the a16 forms)."""
    return z3.ZeroExt(16, z3.Extract(15, 0, x.eax)) if x.d.asize == 16 else x.eax


def _vmcb_checks(x, what: str) -> z3.BoolRef:
    """#GP(0) at CPL > 0 or for a VMCB address that is not 4-KByte aligned; whether they pass."""
    checks.require_cpl0(x, what)
    checks.vmexit(x, svm=what.lower(), what=what)
    aligned = _vmcb_address(x) & 0xFFF == 0
    x.require(aligned, GP, 0, f"{what}: the VMCB address in rAX is not 4-KByte aligned")
    return z3.And(st.bit(x.efer, st.EFER_SVME), checks.cpl0(x), aligned)


def _vmrun(x):
    if _svme(x, "VMRUN"):
        x.assume(z3.Not(_vmcb_checks(x, "VMRUN")), "VMRUN entering an SVM guest: not modelled")


def _vmload(x):
    if _svme(x, "VMLOAD"):
        x.assume(z3.Not(_vmcb_checks(x, "VMLOAD")),
                 "VMLOAD of FS, GS, TR, LDTR and the SYSCALL/SYSENTER MSRs from the VMCB: not modelled")


def _vmsave(x):
    if _svme(x, "VMSAVE"):
        x.assume(z3.Not(_vmcb_checks(x, "VMSAVE")),
                 "VMSAVE of FS, GS, TR, LDTR and the SYSCALL/SYSENTER MSRs to the VMCB: not modelled")


@form("vmrun_a32", enc="a32 0F 01 D8", bytes="0f01d8", asm="vmrun eax", cite="AMD APM Vol. 3 VMRUN; Vol. 2 15.5")
def vmrun_a32(x):
    _vmrun(x)


@form("vmrun_a16", enc="a16 0F 01 D8", bytes="670f01d8", asm="vmrun eax", cite="AMD APM Vol. 3 VMRUN; Vol. 2 15.5")
def vmrun_a16(x):
    _vmrun(x)


@form("vmload_a32", enc="a32 0F 01 DA", bytes="0f01da", asm="vmload eax", cite="AMD APM Vol. 3 VMLOAD")
def vmload_a32(x):
    _vmload(x)


@form("vmload_a16", enc="a16 0F 01 DA", bytes="670f01da", asm="vmload eax", cite="AMD APM Vol. 3 VMLOAD")
def vmload_a16(x):
    _vmload(x)


@form("vmsave_a32", enc="a32 0F 01 DB", bytes="0f01db", asm="vmsave eax", cite="AMD APM Vol. 3 VMSAVE")
def vmsave_a32(x):
    _vmsave(x)


@form("vmsave_a16", enc="a16 0F 01 DB", bytes="670f01db", asm="vmsave eax", cite="AMD APM Vol. 3 VMSAVE")
def vmsave_a16(x):
    _vmsave(x)


@form("vmmcall", enc="0F 01 D9", bytes="0f01d9", asm="vmmcall", cite="AMD APM Vol. 3 VMMCALL")
def vmmcall(x):
    """Outside an SVM guest (where it is intercepted) VMMCALL is #UD."""
    checks.vmexit(x, svm="vmmcall", what="VMMCALL")
    x.fault(UD, None, "VMMCALL outside an SVM guest")


@form("stgi", enc="0F 01 DC", bytes="0f01dc", asm="stgi", cite="AMD APM Vol. 3 STGI; Vol. 2 15.17")
def stgi(x):
    if _svme(x, "STGI", skinit=True):
        checks.require_cpl0(x, "STGI")
        checks.vmexit(x, svm="stgi", what="STGI")
        x.write("gif", 1)


@form("clgi", enc="0F 01 DD", bytes="0f01dd", asm="clgi", cite="AMD APM Vol. 3 CLGI; Vol. 2 15.17")
def clgi(x):
    if _svme(x, "CLGI"):
        checks.require_cpl0(x, "CLGI")
        checks.vmexit(x, svm="clgi", what="CLGI")
        x.write("gif", 0)


@form("skinit", enc="0F 01 DE", bytes="0f01de", asm="skinit eax", cite="AMD APM Vol. 3 SKINIT; Vol. 2 15.27")
def skinit(x):
    """#GP(0) at CPL > 0; otherwise the processor reinitialises and launches the secure loader
    at EAX: assumed away."""
    if _svme(x, "SKINIT", skinit=True):
        checks.require_cpl0(x, "SKINIT")
        checks.vmexit(x, svm="skinit", what="SKINIT")
        x.assume(z3.Not(checks.cpl0(x)), "SKINIT launching a secure loader: not modelled")


def _invlpga(x):
    """Drops the TLB entry of the address in rAX for the ASID in ECX: the one-bit TLB goes."""
    if _svme(x, "INVLPGA"):
        checks.require_cpl0(x, "INVLPGA")
        checks.vmexit(x, svm="invlpga", what="INVLPGA")
        x.write("tlb", 0)


@form("invlpga_a32", enc="a32 0F 01 DF", bytes="0f01df", asm="invlpga eax, ecx", cite="AMD APM Vol. 3 INVLPGA")
def invlpga_a32(x):
    _invlpga(x)


@form("invlpga_a16", enc="a16 0F 01 DF", bytes="670f01df", asm="invlpga eax, ecx", cite="AMD APM Vol. 3 INVLPGA")
def invlpga_a16(x):
    _invlpga(x)


# --- SMX: GETSEC ----------------------------------------------------------------------------------

# Fixed properties of the processor: the capability vector of CAPABILITIES (by EBX) and the
# EAX/EBX/ECX answer of PARAMETERS (by EBX).
_CAPS = z3.Function("getsec_capabilities", z3.BitVecSort(32), z3.BitVecSort(32))
_PARAMS = z3.Function("getsec_parameters", z3.BitVecSort(32), z3.BitVecSort(96))
CAPABILITIES, ENTERACCS, EXITAC, SENTER, SEXIT, PARAMETERS, SMCTRL, WAKEUP = 0, 2, 3, 4, 5, 6, 7, 8


@form("getsec", enc="NP 0F 37", bytes="0f37", asm="getsec",
      cite="SDM Vol. 2D Safer Mode Extensions Reference (GETSEC leaves)")
def getsec(x):
    """#UD without SMX or with CR4.SMXE = 0, and for a leaf CAPABILITIES does not report
    (bits 2-8 of its EBX = 0 answer; leaf 1 and leaves above 8 are undefined).  CAPABILITIES and
    PARAMETERS run at any CPL; PARAMETERS writes EBX and ECX only for parameter type 1
    (EAX[4:0]).  ENTERACCS and SENTER are #GP(0) at CPL > 0, and launch authenticated code
    otherwise (assumed away); EXITAC, SEXIT, SMCTRL and WAKEUP are #GP(0) outside authenticated
    code and the measured environment, where every modelled state is."""
    x.require(x.has("smx"), UD, None, "GETSEC: the processor lacks SMX")
    if "smx" not in x.features:
        return
    x.require(st.bit(x.cr4, st.CR4_SMXE), UD, None, "GETSEC with CR4.SMXE = 0")
    checks.vmexit(x, vmx=(None, "getsec"), what="GETSEC")
    leaf = x.eax
    caps = _CAPS(z3.BitVecVal(0, 32))
    reported = z3.Or(leaf == CAPABILITIES, z3.And(
        z3.ULE(2, leaf), z3.ULE(leaf, 8), z3.LShR(caps, leaf) & 1 == 1))
    x.require(reported, UD, None, "GETSEC leaf not supported")
    with x.when(leaf == CAPABILITIES):
        x.write("eax", _CAPS(x.ebx))
    with x.when(leaf == PARAMETERS):
        p = _PARAMS(x.ebx)
        x.write("eax", z3.Extract(31, 0, p))
        with x.when(z3.Extract(4, 0, p) == 1):
            x.write("ebx", z3.Extract(63, 32, p))
            x.write("ecx", z3.Extract(95, 64, p))
    launch = z3.Or(leaf == ENTERACCS, leaf == SENTER)
    with x.when(launch):
        checks.require_cpl0(x, "GETSEC[ENTERACCS/SENTER]")
        x.assume(z3.Not(z3.And(st.bit(x.cr4, st.CR4_SMXE), reported, checks.cpl0(x))),
                 "GETSEC[ENTERACCS/SENTER] launching authenticated code: not modelled")
    with x.when(z3.Or(leaf == EXITAC, leaf == SEXIT, leaf == SMCTRL, leaf == WAKEUP)):
        x.fault(GP, 0, "GETSEC leaf outside authenticated code or the measured environment")
