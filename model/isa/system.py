"""Control, debug and model-specific registers and other CPL-0 instructions (SDM Vol. 3A 5.9).

MOV to/from CR0, CR2, CR3, CR4 and DR0-DR7, CLTS, INVD, WBINVD, INVLPG, HLT, RDMSR and WRMSR
fault with #GP(0) outside CPL 0.  RDTSC/RDTSCP are gated by CR4.TSD and RDPMC by CR4.PCE; CPUID
never faults on IA-32.  The one-bit ``caches`` and ``tlb`` fields stand for the cache and TLB
contents (see ``state``): the instructions that drop them clear the bit.

Encodings: the CR/DR moves always take a register operand (SDM Vol. 2B MOV: "the 2 bits in the mod
field are ignored"); the forms match mod = 11b only, so a site encoded with mod != 11b is not an
instance of them.  CR1, CR5-CR7 (#UD) have no forms here.
"""

import z3

from .. import checks
from .. import state as st
from ..form import form
from ..outcome import DB, GP, UD

# --- control registers -------------------------------------------------------------------------

MAXPHYADDR = 36  # physical-address width of IA-32 PAE processors (SDM Vol. 3A 4.1.4)

# Reserved bits of a present PAE PDPTE: 2:1, 8:5 and 63:MAXPHYADDR (SDM Vol. 3A 4.4.1).
PDPTE_RESERVED = (0x6 | 0x1E0 | (((1 << 64) - 1) & ~((1 << MAXPHYADDR) - 1)))

CR0_PG_CD_NW = (1 << st.CR0_PG) | (1 << st.CR0_CD) | (1 << st.CR0_NW)
CR4_PAGING = (1 << st.CR4_PAE) | (1 << st.CR4_PGE) | (1 << st.CR4_PSE)


def _pdptes_valid(x, cr3):
    """The four PDPTEs at CR3[31:5] have no reserved bit set where present (SDM Vol. 3A 4.4.1)."""
    table = cr3 & 0xFFFFFFE0
    ok = []
    for i in range(4):
        e = x.load(table + 8 * i, 8)
        ok.append(z3.Or(z3.Extract(0, 0, e) == 0, e & PDPTE_RESERVED == 0))
    return z3.And(ok)


def _require_pdptes(x, cr3) -> None:
    x.require(_pdptes_valid(x, cr3), GP, 0, "a PAE PDPTE has a reserved bit set")


def _changes(old, new, mask: int):
    return (old ^ new) & mask != 0


def _read_cr(x, name: str) -> None:
    what = f"MOV from {name.upper()}"
    checks.require_cpl0(x, what)
    x.set_rm(4, checks.cr_read(x, int(name[2]), x.read(name), what))


@form("mov_r_cr0", enc="0F 20 /0 reg", bytes="0f20c0", asm="mov eax, cr0",
      cite="SDM Vol. 2B MOV (control registers); Vol. 3A 2.5")
def mov_r_cr0(x):
    _read_cr(x, "cr0")


@form("mov_r_cr2", enc="0F 20 /2 reg", bytes="0f20d0", asm="mov eax, cr2",
      cite="SDM Vol. 2B MOV (control registers); Vol. 3A 2.5")
def mov_r_cr2(x):
    _read_cr(x, "cr2")


@form("mov_r_cr3", enc="0F 20 /3 reg", bytes="0f20d8", asm="mov eax, cr3",
      cite="SDM Vol. 2B MOV (control registers); Vol. 3A 2.5")
def mov_r_cr3(x):
    _read_cr(x, "cr3")


@form("mov_r_cr4", enc="0F 20 /4 reg", bytes="0f20e0", asm="mov eax, cr4",
      cite="SDM Vol. 2B MOV (control registers); Vol. 3A 2.5")
def mov_r_cr4(x):
    _read_cr(x, "cr4")


@form("mov_cr0_r", enc="0F 22 /0 reg", bytes="0f22c0", asm="mov cr0, eax",
      cite="SDM Vol. 2B MOV (control registers); Vol. 3A 2.5, 4.4.1, 4.10.4.1")
def mov_cr0_r(x):
    """PG without PE and NW without CD are #GP(0).  Reserved bits of CR0[31:0] do not fault:
    the write ignores them (Vol. 2B MOV lists no such #GP outside 64-bit mode), and ET reads 1
    (hard-wired on P6 and later, Vol. 3A 2.5)."""
    checks.require_cpl0(x, "MOV to CR0")
    v = x.rm(4)
    old = x.cr0
    # In non-root operation the write exits (or keeps the host-owned bits) first: the exit is
    # conditioned on the operand, before the checks of the value (SDM Vol. 3C 25.1.1, 25.1.3).
    if x.vm is not None:
        checks.cr_write(x, 0, old, (v & st.CR0_DEFINED) | (1 << st.CR0_ET), "MOV to CR0")
    x.require(z3.Not(z3.And(st.bit(v, st.CR0_PG), z3.Not(st.bit(v, st.CR0_PE)))),
              GP, 0, "CR0.PG = 1 with CR0.PE = 0")
    x.require(z3.Not(z3.And(st.bit(v, st.CR0_NW), z3.Not(st.bit(v, st.CR0_CD)))),
              GP, 0, "CR0.NW = 1 with CR0.CD = 0")
    if "cet_ss" in x.features:
        x.require(z3.Not(z3.And(st.bit(x.cr4, st.CR4_CET), z3.Not(st.bit(v, st.CR0_WP)))),
                  GP, 0, "CR0.WP = 0 with CR4.CET = 1")
    new = checks.cr_keep(x, 0, old, (v & st.CR0_DEFINED) | (1 << st.CR0_ET))
    # PAE paging in use afterwards and PG/CD/NW changed: the PDPTEs are reloaded from CR3.
    with x.when(z3.And(st.bit(new, st.CR0_PG), st.bit(x.cr4, st.CR4_PAE),
                       _changes(old, new, CR0_PG_CD_NW))):
        _require_pdptes(x, x.cr3)
    with x.when(z3.And(st.bit(old, st.CR0_PG), z3.Not(st.bit(new, st.CR0_PG)))):
        x.write("tlb", 0)  # clearing PG invalidates every TLB entry, global ones too
    x.write("cr0", new)


@form("mov_cr2_r", enc="0F 22 /2 reg", bytes="0f22d0", asm="mov cr2, eax",
      cite="SDM Vol. 2B MOV (control registers); Vol. 3A 2.5")
def mov_cr2_r(x):
    checks.require_cpl0(x, "MOV to CR2")
    x.write("cr2", checks.cr_write(x, 2, x.cr2, x.rm(4), "MOV to CR2"))


@form("mov_cr3_r", enc="0F 22 /3 reg", bytes="0f22d8", asm="mov cr3, eax",
      cite="SDM Vol. 2B MOV (control registers); Vol. 3A 2.5, 4.4.1, 4.10.4.1")
def mov_cr3_r(x):
    """CR3 has no reserved bits outside IA-32e mode (the low bits are ignored, and kept)."""
    checks.require_cpl0(x, "MOV to CR3")
    v = checks.cr_write(x, 3, x.cr3, x.rm(4), "MOV to CR3")
    with x.when(z3.And(st.bit(x.cr0, st.CR0_PG), st.bit(x.cr4, st.CR4_PAE))):
        _require_pdptes(x, v)
    # Global translations survive a CR3 load while CR4.PGE = 1.
    with x.when(z3.Not(st.bit(x.cr4, st.CR4_PGE))):
        x.write("tlb", 0)
    x.write("cr3", v)


@form("mov_cr4_r", enc="0F 22 /4 reg", bytes="0f22e0", asm="mov cr4, eax",
      cite="SDM Vol. 2B MOV (control registers); Vol. 3A 2.5, 4.4.1, 4.10.4.1")
def mov_cr4_r(x):
    """The bits the processor's features define (``state.cr4_defined``); others are reserved.
    CR4.PCIDE cannot be set outside IA-32e mode, CR4.CET not while CR0.WP = 0."""
    checks.require_cpl0(x, "MOV to CR4")
    v = x.rm(4)
    checks.cr_write(x, 4, x.cr4, v, "MOV to CR4")
    x.require(v & ~st.cr4_defined(x.features) == 0, GP, 0, "reserved CR4 bit set")
    if "pcid" in x.features:
        x.require(z3.Not(st.bit(v, st.CR4_PCIDE)), GP, 0, "CR4.PCIDE = 1 outside IA-32e mode")
    if "cet_ss" in x.features:
        x.require(z3.Or(z3.Not(st.bit(v, st.CR4_CET)), st.bit(x.cr0, st.CR0_WP)), GP, 0,
                  "CR4.CET = 1 with CR0.WP = 0")
    old = x.cr4
    with x.when(z3.And(st.bit(x.cr0, st.CR0_PG), st.bit(v, st.CR4_PAE),
                       _changes(old, v, CR4_PAGING))):
        _require_pdptes(x, x.cr3)
    with x.when(_changes(old, v, (1 << st.CR4_PGE) | (1 << st.CR4_PAE))):
        x.write("tlb", 0)
    x.write("cr4", checks.cr_keep(x, 4, old, v))


# --- debug registers ---------------------------------------------------------------------------

DR7_GD = 13
# DR6 (SDM Vol. 3B 17.2.3): B0-B3, BD, BS, BT are writable; bits 4-11 and 16-31 read 1, bit 12 reads 0.
DR6_WRITABLE, DR6_ONES = 0xE00F, 0xFFFF0FF0
# DR7 (SDM Vol. 3B 17.2.4): bits 11, 12, 14, 15 read 0, bit 10 reads 1.
DR7_ZEROS, DR7_ONES = 0xD800, 0x0400


def _dr_gate(x, n: int) -> None:
    """Checks in the order Bochs applies them: the DR4/DR5 #UD, then the general-detect #DB,
    which the SDM raises "prior to any MOV instruction that accesses a debug register"
    (Vol. 3B 17.2.4), then CPL.  DR6.BD and clearing DR7.GD are part of delivering the #DB,
    which the model does not carry out."""
    if n in (4, 5):
        x.require(z3.Not(st.bit(x.cr4, st.CR4_DE)), UD, None, f"DR{n} with CR4.DE = 1")
    x.require(z3.Not(st.bit(x.dr7, DR7_GD)), DB, None, "DR7.GD = 1: debug-register access")
    checks.require_cpl0(x, "MOV DRn")


def _dr_exit(x, n: int, write: bool, *, vmx: bool) -> None:
    """The VT-x exit (``vmx``, before ``_dr_gate``) or the SVM intercept (after it)."""
    exit_ = checks.dr_exit if vmx else checks.dr_intercept
    exit_(x, _DR_ALIAS.get(n, n) if n in (4, 5) else n, write,
          f"MOV {'to' if write else 'from'} DR{n}")


_DR_ALIAS = {4: 6, 5: 7}  # DR4/DR5 name DR6/DR7 while CR4.DE = 0 (SDM Vol. 3B 17.2.2)


def _dr_field(n: int) -> str:
    return f"dr{_DR_ALIAS.get(n, n)}"


def _read_dr(x, n: int) -> None:
    _dr_exit(x, n, False, vmx=True)
    _dr_gate(x, n)
    _dr_exit(x, n, False, vmx=False)
    x.set_rm(4, x.read(_dr_field(n)))


def _write_dr(x, n: int) -> None:
    _dr_exit(x, n, True, vmx=True)
    _dr_gate(x, n)
    _dr_exit(x, n, True, vmx=False)
    v = x.rm(4)
    name = _dr_field(n)
    if name == "dr6":
        v = (v & DR6_WRITABLE) | DR6_ONES
    elif name == "dr7":
        v = (v & ~DR7_ZEROS) | DR7_ONES
    x.write(name, v)


@form("mov_r_dr0", enc="0F 21 /0 reg", bytes="0f21c0", asm="mov eax, dr0",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2")
def mov_r_dr0(x):
    _read_dr(x, 0)


@form("mov_r_dr1", enc="0F 21 /1 reg", bytes="0f21c8", asm="mov eax, dr1",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2")
def mov_r_dr1(x):
    _read_dr(x, 1)


@form("mov_r_dr2", enc="0F 21 /2 reg", bytes="0f21d0", asm="mov eax, dr2",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2")
def mov_r_dr2(x):
    _read_dr(x, 2)


@form("mov_r_dr3", enc="0F 21 /3 reg", bytes="0f21d8", asm="mov eax, dr3",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2")
def mov_r_dr3(x):
    _read_dr(x, 3)


@form("mov_r_dr4", enc="0F 21 /4 reg", bytes="0f21e0", asm="mov eax, dr4",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2.2")
def mov_r_dr4(x):
    _read_dr(x, 4)


@form("mov_r_dr5", enc="0F 21 /5 reg", bytes="0f21e8", asm="mov eax, dr5",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2.2")
def mov_r_dr5(x):
    _read_dr(x, 5)


@form("mov_r_dr6", enc="0F 21 /6 reg", bytes="0f21f0", asm="mov eax, dr6",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2.3")
def mov_r_dr6(x):
    _read_dr(x, 6)


@form("mov_r_dr7", enc="0F 21 /7 reg", bytes="0f21f8", asm="mov eax, dr7",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2.4")
def mov_r_dr7(x):
    _read_dr(x, 7)


@form("mov_dr0_r", enc="0F 23 /0 reg", bytes="0f23c0", asm="mov dr0, eax",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2")
def mov_dr0_r(x):
    _write_dr(x, 0)


@form("mov_dr1_r", enc="0F 23 /1 reg", bytes="0f23c8", asm="mov dr1, eax",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2")
def mov_dr1_r(x):
    _write_dr(x, 1)


@form("mov_dr2_r", enc="0F 23 /2 reg", bytes="0f23d0", asm="mov dr2, eax",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2")
def mov_dr2_r(x):
    _write_dr(x, 2)


@form("mov_dr3_r", enc="0F 23 /3 reg", bytes="0f23d8", asm="mov dr3, eax",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2")
def mov_dr3_r(x):
    _write_dr(x, 3)


@form("mov_dr4_r", enc="0F 23 /4 reg", bytes="0f23e0", asm="mov dr4, eax",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2.2")
def mov_dr4_r(x):
    _write_dr(x, 4)


@form("mov_dr5_r", enc="0F 23 /5 reg", bytes="0f23e8", asm="mov dr5, eax",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2.2")
def mov_dr5_r(x):
    _write_dr(x, 5)


@form("mov_dr6_r", enc="0F 23 /6 reg", bytes="0f23f0", asm="mov dr6, eax",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2.3")
def mov_dr6_r(x):
    _write_dr(x, 6)


@form("mov_dr7_r", enc="0F 23 /7 reg", bytes="0f23f8", asm="mov dr7, eax",
      cite="SDM Vol. 2B MOV (debug registers); Vol. 3B 17.2.4")
def mov_dr7_r(x):
    _write_dr(x, 7)


# --- other CPL-0 instructions ------------------------------------------------------------------

@form("clts", enc="0F 06", bytes="0f06", asm="clts", cite="SDM Vol. 2A CLTS")
def clts(x):
    checks.require_cpl0(x, "CLTS")
    # VT-x: exits only with TS owned by the host and its shadow 1; owned with shadow 0, TS stays.
    x.write("cr0", checks.cr_write(x, 0, x.cr0, x.cr0 & ~(1 << st.CR0_TS), "CLTS", access=2,
                                   bits=1 << st.CR0_TS))


@form("invd", enc="0F 08", bytes="0f08", asm="invd", cite="SDM Vol. 2A INVD")
def invd(x):
    """Drops the caches without writing them back.  Memory holds the coherent view, so the data
    INVD loses shows only as ``caches`` going to 0, as for WBINVD."""
    checks.require_cpl0(x, "INVD")
    checks.vmexit(x, vmx=(None, "invd"), svm="invd", what="INVD")
    x.write("caches", 0)


@form("wbinvd", enc="0F 09", bytes="0f09", asm="wbinvd", cite="SDM Vol. 2B WBINVD")
def wbinvd(x):
    checks.require_cpl0(x, "WBINVD")
    checks.vmexit(x, vmx=("wbinvd_exiting", "wbinvd"), svm="wbinvd", what="WBINVD")
    x.write("caches", 0)


@form("invlpg_m", enc="0F 01 /7 mem", bytes="0f0138", asm="invlpg byte ptr [eax]",
      cite="SDM Vol. 2A INVLPG; Vol. 3A 4.10.4.1")
def invlpg_m(x):
    """The operand only names a page and is not accessed; a one-bit TLB loses all of it."""
    checks.require_cpl0(x, "INVLPG")
    if x.vm is not None:     # the qualification is the linear address (SDM Vol. 3C Table 27-1)
        checks.vmexit(x, vmx=("invlpg_exiting", "invlpg"), svm="invlpg", what="INVLPG",
                      qualification=x.ea())
    x.write("tlb", 0)


@form("hlt", enc="F4", bytes="f4", asm="hlt", cite="SDM Vol. 2A HLT")
def hlt(x):
    """EIP moves past HLT: an interrupt that wakes the processor returns after it."""
    checks.require_cpl0(x, "HLT")
    checks.vmexit(x, vmx=("hlt_exiting", "hlt"), svm="hlt", what="HLT")
    x.write("halted", 1)


# --- model-specific registers ------------------------------------------------------------------

MSR_TSC_AUX = 0xC0000103
# The state keeps bits 31:0 of the SYSENTER MSRs: RDMSR returns EDX = 0 for them and WRMSR is
# assumed to write EDX = 0 (a stated assumption, below).
_SYSENTER = {st.MSR_SYSENTER_CS: "sysenter_cs", st.MSR_SYSENTER_ESP: "sysenter_esp",
             st.MSR_SYSENTER_EIP: "sysenter_eip"}
_MSR32 = {**_SYSENTER, MSR_TSC_AUX: "tsc_aux"}


def _msr64(x) -> dict[int, str]:
    """The 64-bit MSRs the processor has: the TSC; IA32_EFER and STAR with the features that
    define them (``state.has_efer``)."""
    out = {st.MSR_TSC: "tsc"}
    if st.has_efer(x.features):
        out[st.MSR_EFER] = "efer"
    if "syscall" in x.features:
        out[st.MSR_STAR] = "star"
    return out


def _msr_known(x, ecx):
    return z3.Or([ecx == k for k in (*_msr64(x), *_MSR32)])


def _set_edx_eax(x, value64) -> None:
    x.write("eax", z3.Extract(31, 0, value64))
    x.write("edx", z3.Extract(63, 32, value64))


@form("rdmsr", enc="0F 32", bytes="0f32", asm="rdmsr", cite="SDM Vol. 2B RDMSR; Vol. 4 Table 2-2")
def rdmsr(x):
    checks.require_cpl0(x, "RDMSR")
    ecx = x.ecx
    checks.msr_exit(x, ecx, False, "RDMSR")
    x.require(_msr_known(x, ecx), GP, 0, "ECX names no implemented MSR")
    value = checks.tsc_value(x)
    for k, name in _msr64(x).items():
        if name != "tsc":
            value = z3.If(ecx == k, x.read(name), value)
    for k, name in _MSR32.items():
        value = z3.If(ecx == k, z3.ZeroExt(32, x.read(name)), value)
    _set_edx_eax(x, value)


@form("wrmsr", enc="0F 30", bytes="0f30", asm="wrmsr", cite="SDM Vol. 2B WRMSR; Vol. 4 Table 2-2")
def wrmsr(x):
    """The TSC takes all 64 bits (current processors; the P6 family cleared bits 63:32,
    Vol. 3B 17.17).  IA32_TSC_AUX bits 63:32 are reserved: #GP(0); so are the IA32_EFER bits the
    processor's features do not define (``state.efer_defined``)."""
    checks.require_cpl0(x, "WRMSR")
    ecx, edx, eax = x.ecx, x.edx, x.eax
    checks.msr_exit(x, ecx, True, "WRMSR")
    x.require(_msr_known(x, ecx), GP, 0, "ECX names no implemented MSR")
    x.require(z3.Or(ecx != MSR_TSC_AUX, edx == 0), GP, 0, "reserved bit of IA32_TSC_AUX set")
    value = z3.Concat(edx, eax)
    if st.has_efer(x.features):
        x.require(z3.Or(ecx != st.MSR_EFER, value & ~st.efer_defined(x.features) == 0), GP, 0,
                  "reserved IA32_EFER bit set")
    with x.when(z3.And(x.cpl == 0, z3.Or([ecx == k for k in _SYSENTER]))):
        x.assume(edx == 0, "WRMSR to a SYSENTER MSR writes EDX = 0 (the state keeps bits 31:0)")
    for k, name in _msr64(x).items():
        with x.when(ecx == k):
            x.write(name, value)
    for k, name in _MSR32.items():
        with x.when(ecx == k):
            x.write(name, eax)


# --- counters and CPUID ------------------------------------------------------------------------

def _tsd_blocks(x):
    return z3.And(st.bit(x.cr4, st.CR4_TSD), x.cpl != 0)


@form("rdtsc", enc="0F 31", bytes="0f31", asm="rdtsc", cite="SDM Vol. 2B RDTSC; Vol. 3B 17.17")
def rdtsc(x):
    """Time does not pass inside one modelled instruction: EDX:EAX is the TSC field."""
    x.require(z3.Not(_tsd_blocks(x)), GP, 0, "CR4.TSD = 1 and CPL > 0")
    checks.vmexit(x, vmx=("rdtsc_exiting", "rdtsc"), svm="rdtsc", what="RDTSC")
    _set_edx_eax(x, checks.tsc_value(x))


@form("rdtscp", enc="0F 01 F9", bytes="0f01f9", asm="rdtscp", cite="SDM Vol. 2B RDTSCP")
def rdtscp(x):
    """The processor is taken to have RDTSCP (CPUID.80000001H:EDX[27]); it needs no other gate
    but, in VMX non-root operation, 'enable RDTSCP' (else #UD, SDM Vol. 3C 25.3)."""
    checks.require_enabled(x, "enable_rdtscp", "RDTSCP")
    x.require(z3.Not(_tsd_blocks(x)), GP, 0, "CR4.TSD = 1 and CPL > 0")
    checks.vmexit(x, vmx=("rdtsc_exiting", "rdtscp"), svm="rdtscp", what="RDTSCP")
    _set_edx_eax(x, checks.tsc_value(x))
    x.write("ecx", x.tsc_aux)


@form("rdpmc", enc="0F 33", bytes="0f33", asm="rdpmc", cite="SDM Vol. 2B RDPMC; Vol. 3B ch. 18")
def rdpmc(x):
    """Two counters, selected by ECX = 0 or 1; EDX receives bits 63:32 of the counter field."""
    x.require(z3.Or(x.cpl == 0, st.bit(x.cr4, st.CR4_PCE)), GP, 0, "CPL > 0 and CR4.PCE = 0")
    checks.vmexit(x, vmx=("rdpmc_exiting", "rdpmc"), svm="rdpmc", what="RDPMC")
    ecx = x.ecx
    x.require(z3.ULE(ecx, 1), GP, 0, "ECX names no performance counter")
    _set_edx_eax(x, z3.If(ecx == 0, x.pmc0, x.pmc1))


# CPUID reports fixed properties of the processor.  The states the verifier compares run on one
# processor, and no field of this model changes the answer on IA-32: the CR4 bits CPUID reflects
# (OSXSAVE, OSPKE) and the CPUID-faulting MSR do not exist here.  So the result is one
# uninterpreted function of EAX and ECX, the same in every state and at every CPL.
_CPUID = z3.Function("cpuid", z3.BitVecSort(32), z3.BitVecSort(32), z3.BitVecSort(128))
_HOST: list = []


def _host_cpuid():
    """In VMX non-root operation or an SVM guest the processor that answers is the host's, not
    the one the guest's own machine is: its identity is the monitor's (an answer without an exit).
    Declared on first use: a declaration at import would renumber every later Z3 term, and with
    them the witnesses the solver picks on bare hardware."""
    if not _HOST:
        _HOST.append(z3.Function("host_cpuid", z3.BitVecSort(32), z3.BitVecSort(32), z3.BitVecSort(128)))
    return _HOST[0]


@form("cpuid", enc="0F A2", bytes="0fa2", asm="cpuid",
      cite="SDM Vol. 2A CPUID; Vol. 3C 25.1.2 (unconditional exit); APM Vol. 2 15.10")
def cpuid(x):
    checks.vmexit(x, vmx=(None, "cpuid"), svm="cpuid", what="CPUID")
    r = (_CPUID if x.vm is None else _host_cpuid())(x.eax, x.ecx)
    x.write("eax", z3.Extract(31, 0, r))
    x.write("ebx", z3.Extract(63, 32, r))
    x.write("ecx", z3.Extract(95, 64, r))
    x.write("edx", z3.Extract(127, 96, r))
