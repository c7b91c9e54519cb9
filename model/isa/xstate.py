"""State-component instructions: FXSAVE/FXRSTOR, the XSAVE family, protection keys (RDPKRU,
WRPKRU), RTM and TSXLDTRK, the user wait instructions (UMONITOR, UMWAIT, TPAUSE), AMD's
MONITORX/MWAITX, and MPX (SDM Vol. 1 ch. 10, 13, 16, 17; Vol. 2 each instruction; AMD APM Vol. 3).

Memory images are written byte for byte in the layouts the SDM fixes (FXSAVE: Vol. 2A Table
3-53, non-64-bit format; XSAVE: Vol. 1 13.4-13.5 with the offsets of CPUID leaf 0DH every
processor reports), so the save and restore forms need no uninterpreted function: what is read
is exactly the state components the requested-feature bitmap selects.  Where the SDM lets the
processor choose, the model's processor is one the SDM permits, and the docstrings say which:

* FXSAVE/FXRSTOR with CR4.OSFXSR = 0 neither save nor restore XMM0-7 and MXCSR (Vol. 2A FXSAVE:
  "implementation dependent"); a misaligned operand is #GP(0), never #AC (ibid.: "signaling of
  #AC is not guaranteed"); reserved bytes are not written.
* XINUSE (Vol. 1 13.6): a component not in its initial configuration is in use; one that is may
  still be, as the USER field ``xinuse`` says (the processor's choice, an input of the state).
* XSAVEOPT, XSAVEC and XSAVES use no modified optimization (Vol. 1 13.9: "may"); XSAVEOPT uses no
  init optimization either, so it stores what XSAVE stores.
* Every RTM transaction aborts at XBEGIN (Vol. 1 16.3.5: a transaction may abort at any time for
  implementation-specific reasons, EAX then holding none of the listed causes: 0), so no state
  is ever inside a transaction: XEND is #GP(0), XTEST sets ZF, XABORT, XSUSLDTRK and XRESLDTRK
  are NOPs.
* UMWAIT and TPAUSE wake at once for an implementation-specific event (Vol. 2B UMWAIT: CF = 0
  unless the OS time limit of IA32_UMWAIT_CONTROL ended the wait), so the limit is never read.

Outside 64-bit mode XMM8-15, YMM8-15 and ZMM8-31 do not exist: their bytes of an image are neither
written nor read.  The MPX components (XCR0 bits 3-4) and MPX with BNDCFGx.EN = 1 are assumed away
(bounds registers are not modelled); with EN = 0 the MPX instructions are NOPs (Vol. 1 17.3.3).
PKRU is not an XSAVE component of the model (its XCR0 has no bit 9).
"""

from __future__ import annotations

import z3

from .. import checks
from .. import state as st
from ..form import form
from ..outcome import GP, NM, UD
from .extensions import _need

# --- the x87 and SSE legacy region (SDM Vol. 2A FXSAVE, Table 3-53) --------------------------------

MXCSR_MASK = 0xFFFF        # DAZ supported: every MXCSR bit 15:0 writable (SDM Vol. 1 11.6.6)
MXCSR_INIT = 0x1F80
FCW_INIT = 0x037F
# x87 fields of the legacy region: (offset, field, bytes)
_X87_FIELDS = ((0, "fcw", 2), (2, "fsw", 2), (4, "ftw", 1), (6, "fop", 2), (8, "fip", 4),
               (12, "fcs", 2), (16, "fdp", 4), (20, "fds", 2))
_ST, _XMM = 32, 160       # ST0-7 / MM0-7 at 32 + 16 i (10 bytes), XMM0-7 at 160 + 16 i


def _top(fsw):
    return z3.Extract(st.FSW_TOP_LO + 2, st.FSW_TOP_LO, fsw)


def _st_reg(x, top, i: int):
    """ST(i) = R[(TOP + i) mod 8] (SDM Vol. 1 8.1.2)."""
    v = x.read(st.FPRS[0])
    for r in range(1, 8):
        v = z3.If(top + i == r, x.read(st.FPRS[r]), v)   # 3-bit arithmetic wraps
    return v


def _set_st_regs(x, top, values: list) -> None:
    """R[(TOP + i) mod 8] := values[i]."""
    for r in range(8):
        v = values[0]
        for i in range(1, 8):
            v = z3.If(top + i == r, values[i], v)
        x.write(st.FPRS[r], z3.If(top == r, values[0], v))


def _save_x87(x, a) -> None:
    for off, f, n in _X87_FIELDS:
        x.store(a + off, n, z3.Extract(8 * n - 1, 0, x.read(f)))
    top = _top(x.fsw)
    for i in range(8):
        x.store(a + _ST + 16 * i, 10, _st_reg(x, top, i))


def _load_x87(x, a) -> None:
    vals = {f: x.load(a + off, n) for off, f, n in _X87_FIELDS}
    regs = [x.load(a + _ST + 16 * i, 10) for i in range(8)]
    # FSW.B (bit 15) reflects FSW.ES (bit 7), whatever the image says (SDM Vol. 1 8.1.3.1)
    vals["fsw"] = (vals["fsw"] & 0x7FFF) | ((vals["fsw"] & 0x80) << 8)
    for f, v in vals.items():
        x.write(f, v & 0x7FF if f == "fop" else v)
    _set_st_regs(x, _top(vals["fsw"]), regs)


def _x87_init(x) -> None:
    """The x87 initial configuration (SDM Vol. 1 13.6; FINIT's values, registers zero)."""
    for f, v in (("fcw", FCW_INIT), ("fsw", 0), ("ftw", 0), ("fop", 0), ("fip", 0), ("fcs", 0),
                 ("fdp", 0), ("fds", 0)):
        x.write(f, v)
    for r in st.FPRS:
        x.write(r, 0)


def _x87_is_init(x):
    return z3.And([x.read(f) == v for f, v in (("fcw", FCW_INIT), ("fsw", 0), ("ftw", 0), ("fop", 0),
                                               ("fip", 0), ("fcs", 0), ("fdp", 0), ("fds", 0))]
                  + [x.read(r) == 0 for r in st.FPRS])


def _xmm(x, i: int):
    return z3.Extract(127, 0, x.read(st.ZMMS[i]))


def _set_bits(x, field: str, lo: int, value) -> None:
    old = x.read(field)
    w, full = value.size(), old.size()
    parts = ([z3.Extract(full - 1, lo + w, old)] if lo + w < full else []) + [value] + \
        ([z3.Extract(lo - 1, 0, old)] if lo else [])
    x.write(field, z3.Concat(*parts) if len(parts) > 1 else value)


def _save_mxcsr(x, a) -> None:
    x.store(a + 24, 4, x.mxcsr)
    x.store(a + 28, 4, MXCSR_MASK)


def _load_mxcsr(x, a) -> None:
    v = x.load(a + 24, 4)
    x.require(v & ~MXCSR_MASK == 0, GP, 0, "MXCSR image with reserved bits set")
    x.write("mxcsr", v)


def _save_xmm(x, a) -> None:
    for i in range(8):
        x.store(a + _XMM + 16 * i, 16, _xmm(x, i))


def _load_xmm(x, a) -> None:
    for i in range(8):
        _set_bits(x, st.ZMMS[i], 0, x.load(a + _XMM + 16 * i, 16))


def _fpu_checks(x, what: str) -> None:
    """#NM when CR0.TS or CR0.EM is set (SDM Vol. 2A FXSAVE, FXRSTOR: Protected Mode Exceptions)."""
    x.require(z3.Not(st.bit(x.cr0, st.CR0_EM)), NM, None, f"{what} with CR0.EM = 1")
    x.require(z3.Not(st.bit(x.cr0, st.CR0_TS)), NM, None, f"{what} with CR0.TS = 1")


def _aligned(x, a, n: int, what: str) -> None:
    x.require(a & (n - 1) == 0, GP, 0, f"{what} memory operand not {n}-byte aligned")


@form("fxsave", enc="NP 0F AE /0 mem", bytes="0fae00", asm="fxsave [eax]",
      cite="SDM Vol. 2A FXSAVE; Vol. 1 10.5")
def fxsave(x):
    """Stores the x87 state (ST(i) in stack order, the abridged tag word) and, with CR4.OSFXSR,
    MXCSR, MXCSR_MASK and XMM0-7 to the 512-byte area; any CPL."""
    if not _need(x, "fxsr", "FXSAVE"):
        return
    _fpu_checks(x, "FXSAVE")
    a = x.ea()
    _aligned(x, a, 16, "FXSAVE")
    _save_x87(x, a)
    with x.when(st.bit(x.cr4, st.CR4_OSFXSR)):
        _save_mxcsr(x, a)
        _save_xmm(x, a)


@form("fxrstor", enc="NP 0F AE /1 mem", bytes="0fae08", asm="fxrstor [eax]",
      cite="SDM Vol. 2A FXRSTOR; Vol. 1 10.5")
def fxrstor(x):
    """Loads what FXSAVE stores; with CR4.OSFXSR an MXCSR image with bits outside MXCSR_MASK set
    is #GP(0).  The upper bits of ZMM0-7 keep their values."""
    if not _need(x, "fxsr", "FXRSTOR"):
        return
    _fpu_checks(x, "FXRSTOR")
    a = x.ea()
    _aligned(x, a, 16, "FXRSTOR")
    osfxsr = st.bit(x.cr4, st.CR4_OSFXSR)
    with x.when(osfxsr):
        _load_mxcsr(x, a)
    _load_x87(x, a)
    with x.when(osfxsr):
        _load_xmm(x, a)


# --- the XSAVE feature set (SDM Vol. 1 ch. 13; Vol. 2C XSAVE...) ------------------------------------

HEADER = 512
EXTENDED = 576
# Extended components: XCR0 bit -> (size of its region, register pieces (field, low bit, width) in
# the order the region holds them; only the registers 32-bit mode has), CPUID.(0DH, i) offsets.
_COMPONENTS = {
    st.XCR0_AVX: (256, [(z, 128, 128) for z in st.ZMMS], 576),
    st.XCR0_BNDREGS: (64, [], 960),
    st.XCR0_BNDCSR: (64, [], 1024),
    st.XCR0_OPMASK: (64, [(k, 0, 64) for k in st.KREGS], 1088),
    st.XCR0_ZMM_HI256: (512, [(z, 256, 256) for z in st.ZMMS], 1152),
    st.XCR0_HI16_ZMM: (1024, [], 1664),
}
_MPX = (1 << st.XCR0_BNDREGS) | (1 << st.XCR0_BNDCSR)
_KNOWN_BITS = (1 << st.XCR0_X87) | (1 << st.XCR0_SSE) | sum(1 << i for i in _COMPONENTS)


def _bit(v, i: int):
    return z3.Extract(i, i, v) == 1


def _piece(x, f: str, lo: int, w: int):
    return z3.Extract(lo + w - 1, lo, x.read(f))


def _in_init(x, i: int):
    """Whether component ``i`` is in its initial configuration (SDM Vol. 1 13.6: zeros; x87: FINIT's)."""
    if i == st.XCR0_X87:
        return _x87_is_init(x)
    if i == st.XCR0_SSE:
        return z3.And([_xmm(x, k) == 0 for k in range(8)])
    return z3.And([_piece(x, *p) == 0 for p in _COMPONENTS[i][1]]) if _COMPONENTS[i][1] else z3.BoolVal(True)


def _xinuse(x):
    """XINUSE as the processor reports it: set for a component not in its initial configuration,
    and wherever ``xinuse`` keeps it set."""
    bits = [z3.If(z3.Or(z3.Not(_in_init(x, i)), _bit(x.xinuse, i)), z3.BitVecVal(1 << i, 64),
                  z3.BitVecVal(0, 64)) for i in sorted({0, 1} | set(_COMPONENTS))]
    return z3.simplify(sum(bits[1:], bits[0]))


def _osxsave(x, feature: str, what: str) -> bool:
    """#UD without the feature or with CR4.OSXSAVE = 0 (SDM Vol. 2C XSAVE, Protected Mode Exceptions)."""
    if not _need(x, "xsave", what) or (feature != "xsave" and not _need(x, feature, what)):
        return False
    x.require(st.bit(x.cr4, st.CR4_OSXSAVE), UD, None, f"{what} with CR4.OSXSAVE = 0")
    return True


def _supervisor(x):
    """IA32_XSS as far as the processor supports it: no supervisor component on the model's
    processors (``state.XSS_SUPPORTED``), so 0 in every well-formed state."""
    return x.xss & st.XSS_SUPPORTED


def _rfbm(x, supervisor: bool):
    mask = x.xcr0 | _supervisor(x) if supervisor else x.xcr0
    rfbm = z3.Concat(x.edx, x.eax) & mask
    x.assume(rfbm & _MPX == 0, "MPX state components (XCR0 bits 3-4) requested: bounds registers "
                               "are not modelled")
    return rfbm


def _save_extended(x, i: int, at) -> None:
    size, pieces, _ = _COMPONENTS[i]
    off = 0
    for f, lo, w in pieces:
        x.store(at + off, w // 8, _piece(x, f, lo, w))
        off += w // 8


def _load_extended(x, i: int, at, load) -> None:
    """Component ``i`` from the image at ``at`` when ``load`` holds, else its initial
    configuration (zeros)."""
    off = 0
    for f, lo, w in _COMPONENTS[i][1]:
        v = x.load(at + off, w // 8)
        _set_bits(x, f, lo, z3.If(load, v, z3.BitVecVal(0, w)))
        off += w // 8


def _compacted_offset(xcomp, i: int):
    """Where component ``i`` starts in the compacted format: after the header and every lower
    component XCOMP_BV names (SDM Vol. 1 13.4.3; no component of the model asks for 64-byte
    alignment, CPUID.(0DH, i):ECX[1] = 0)."""
    off = z3.BitVecVal(EXTENDED, 32)
    for j in sorted(_COMPONENTS):
        if j < i:
            off = off + z3.If(_bit(xcomp, j), z3.BitVecVal(_COMPONENTS[j][0], 32), z3.BitVecVal(0, 32))
    return off


def _save_standard(x, a, rfbm) -> None:
    """XSAVE's standard format (SDM Vol. 1 13.7): each component RFBM selects at its fixed
    offset, MXCSR when RFBM[1] or RFBM[2], XSTATE_BV[i] := XINUSE[i] for i in RFBM."""
    inuse = _xinuse(x)
    with x.when(_bit(rfbm, st.XCR0_X87)):
        _save_x87(x, a)
    with x.when(z3.Or(_bit(rfbm, st.XCR0_SSE), _bit(rfbm, st.XCR0_AVX))):
        _save_mxcsr(x, a)
    with x.when(_bit(rfbm, st.XCR0_SSE)):
        _save_xmm(x, a)
    for i in sorted(_COMPONENTS):
        with x.when(_bit(rfbm, i)):
            _save_extended(x, i, a + _COMPONENTS[i][2])
    bv = x.load(a + HEADER, 8)
    x.store(a + HEADER, 8, (bv & ~rfbm) | (inuse & rfbm))


def _save_compacted(x, a, rfbm) -> None:
    """XSAVEC/XSAVES (SDM Vol. 1 13.10, 13.11): the components RFBM selects that are in use, in
    the compacted format; XSTATE_BV := RFBM AND XINUSE, XCOMP_BV := RFBM with bit 63 set."""
    saved = rfbm & _xinuse(x)
    with x.when(_bit(saved, st.XCR0_X87)):
        _save_x87(x, a)
    with x.when(_bit(saved, st.XCR0_SSE)):
        _save_mxcsr(x, a)
        _save_xmm(x, a)
    for i in sorted(_COMPONENTS):
        with x.when(_bit(saved, i)):
            _save_extended(x, i, a + _compacted_offset(rfbm, i))
    x.store(a + HEADER, 8, saved)
    x.store(a + HEADER + 8, 8, rfbm | (1 << 63))


def _restore(x, a, rfbm, compacted: bool, allowed) -> None:
    """XRSTOR (standard format, SDM Vol. 1 13.8) or XRSTORS (compacted, 13.12): the header checks,
    then each component RFBM selects from the image if XSTATE_BV has it, else its initial
    configuration; XINUSE follows XSTATE_BV."""
    bv = x.load(a + HEADER, 8)
    xcomp = x.load(a + HEADER + 8, 8)
    rest = x.load(a + HEADER + 16, 8)
    if compacted:
        x.require(_bit(xcomp, 63), GP, 0, "XRSTORS of an image not in the compacted format")
        x.require(xcomp & ~((1 << 63) | allowed) == 0, GP, 0, "XCOMP_BV names a component not enabled")
        x.require(bv & ~xcomp == 0, GP, 0, "XSTATE_BV names a component XCOMP_BV lacks")
        tail = x.load(a + HEADER + 16, 48)
        x.require(tail == 0, GP, 0, "XSAVE header bytes 63:16 not zero")
    else:
        x.assume(z3.Not(_bit(xcomp, 63)), "XRSTOR of a compacted image (XCOMP_BV[63] = 1) is not modelled")
        x.require(bv & ~allowed == 0, GP, 0, "XSTATE_BV names a component XCR0 does not enable")
        x.require(z3.And(xcomp == 0, rest == 0), GP, 0, "XSAVE header bytes 23:8 not zero")
    x.assume(rfbm & _MPX == 0, "MPX state components (XCR0 bits 3-4) requested: not modelled")
    load = rfbm & bv
    sse_img = st.bit(load, st.XCR0_SSE) if compacted else z3.Or(_bit(rfbm, st.XCR0_SSE), _bit(rfbm, st.XCR0_AVX))
    with x.when(sse_img):
        _load_mxcsr(x, a)
    if compacted:
        with x.when(z3.And(_bit(rfbm, st.XCR0_SSE), z3.Not(_bit(bv, st.XCR0_SSE)))):
            x.write("mxcsr", MXCSR_INIT)
    with x.when(_bit(load, st.XCR0_X87)):
        _load_x87(x, a)
    with x.when(z3.And(_bit(rfbm, st.XCR0_X87), z3.Not(_bit(bv, st.XCR0_X87)))):
        _x87_init(x)
    with x.when(_bit(rfbm, st.XCR0_SSE)):
        for i in range(8):
            _set_bits(x, st.ZMMS[i], 0, z3.If(_bit(bv, st.XCR0_SSE), x.load(a + _XMM + 16 * i, 16),
                                              z3.BitVecVal(0, 128)))
    for i in sorted(_COMPONENTS):
        at = a + (_compacted_offset(xcomp, i) if compacted else _COMPONENTS[i][2])
        with x.when(_bit(rfbm, i)):
            _load_extended(x, i, at, _bit(bv, i))
    x.write("xinuse", (x.xinuse & ~rfbm) | (bv & rfbm))


def _xsave_common(x, what: str, feature: str, supervisor: bool = False):
    """The checks every XSAVE-family instruction makes, in priority order (SDM Vol. 2C, each
    instruction's exceptions; Vol. 3C 25.1.1: #UD and CPL faults before VM exits): the 64-byte
    aligned linear address of the area, or None when the form builds no further."""
    if not _osxsave(x, feature, what):
        return None
    if supervisor:
        checks.require_enabled(x, "enable_xsaves_xrstors", what)
        checks.require_cpl0(x, what)
        bits = z3.Concat(x.edx, x.eax) & x.xss
        if x.vm is not None and checks._vmx(x) and checks._on(x, "enable_xsaves_xrstors"):
            checks.vmexit(x, vmx=("enable_xsaves_xrstors", what.lower()),
                          cond=bits & x.vm.xss_exiting_bitmap != 0,
                          what=f"{what} of a component set in the XSS-exiting bitmap")
    x.require(z3.Not(st.bit(x.cr0, st.CR0_TS)), NM, None, f"{what} with CR0.TS = 1")
    a = x.ea()
    _aligned(x, a, 64, what)
    return a


@form("xsave", enc="NP 0F AE /4 mem", bytes="0fae20", asm="xsave ptr [eax]", cite="SDM Vol. 2C XSAVE; Vol. 1 13.7")
def xsave(x):
    """Saves the components XCR0 AND EDX:EAX selects in the standard format; any CPL."""
    a = _xsave_common(x, "XSAVE", "xsave")
    if a is not None:
        _save_standard(x, a, _rfbm(x, False))


@form("xsaveopt", enc="NP 0F AE /6 mem", bytes="0fae30", asm="xsaveopt ptr [eax]",
      cite="SDM Vol. 2C XSAVEOPT; Vol. 1 13.9")
def xsaveopt(x):
    """XSAVE's image without its optimizations (the SDM allows, never requires, them)."""
    a = _xsave_common(x, "XSAVEOPT", "xsaveopt")
    if a is not None:
        _save_standard(x, a, _rfbm(x, False))


@form("xsavec", enc="NP 0F C7 /4 mem", bytes="0fc720", asm="xsavec ptr [eax]", cite="SDM Vol. 2C XSAVEC; Vol. 1 13.10")
def xsavec(x):
    a = _xsave_common(x, "XSAVEC", "xsavec")
    if a is not None:
        _save_compacted(x, a, _rfbm(x, False))


@form("xsaves", enc="NP 0F C7 /5 mem", bytes="0fc728", asm="xsaves ptr [eax]", cite="SDM Vol. 2C XSAVES; Vol. 1 13.11")
def xsaves(x):
    """XSAVEC of the user and supervisor components (XCR0 OR IA32_XSS) at CPL 0; in VMX non-root
    operation #UD without 'enable XSAVES/XRSTORS', and a VM exit when EDX:EAX AND IA32_XSS AND the
    XSS-exiting bitmap is not 0 (SDM Vol. 3C 25.1.3, 25.3).  SVM has no intercept for it."""
    a = _xsave_common(x, "XSAVES", "xsaves", supervisor=True)
    if a is not None:
        _save_compacted(x, a, _rfbm(x, True))


@form("xrstor", enc="NP 0F AE /5 mem", bytes="0fae28", asm="xrstor ptr [eax]", cite="SDM Vol. 2C XRSTOR; Vol. 1 13.8")
def xrstor(x):
    a = _xsave_common(x, "XRSTOR", "xsave")
    if a is not None:
        _restore(x, a, z3.Concat(x.edx, x.eax) & x.xcr0, False, x.xcr0)


@form("xrstors", enc="NP 0F C7 /3 mem", bytes="0fc718", asm="xrstors ptr [eax]",
      cite="SDM Vol. 2C XRSTORS; Vol. 1 13.12; Vol. 3C 25.1.3")
def xrstors(x):
    """XRSTOR of a compacted image of user and supervisor components at CPL 0; VT-x as XSAVES."""
    a = _xsave_common(x, "XRSTORS", "xsaves", supervisor=True)
    if a is not None:
        enabled = x.xcr0 | _supervisor(x)
        _restore(x, a, z3.Concat(x.edx, x.eax) & enabled, True, enabled)


# --- protection keys (SDM Vol. 2B RDPKRU, WRPKRU; Vol. 3A 4.6.2) -------------------------------------

def _pke(x, what: str) -> bool:
    if not _need(x, "pku", what):
        return False
    x.require(st.bit(x.cr4, st.CR4_PKE), UD, None, f"{what} with CR4.PKE = 0")
    return True


@form("rdpkru", enc="NP 0F 01 EE", bytes="0f01ee", asm="rdpkru", cite="SDM Vol. 2B RDPKRU")
def rdpkru(x):
    """EAX := PKRU, EDX := 0 at any CPL; ECX != 0 is #GP(0)."""
    if _pke(x, "RDPKRU"):
        x.require(x.ecx == 0, GP, 0, "RDPKRU with ECX != 0")
        x.write("eax", x.pkru)
        x.write("edx", 0)


@form("wrpkru", enc="NP 0F 01 EF", bytes="0f01ef", asm="wrpkru", cite="SDM Vol. 2D WRPKRU")
def wrpkru(x):
    """PKRU := EAX at any CPL; ECX != 0 or EDX != 0 is #GP(0)."""
    if _pke(x, "WRPKRU"):
        x.require(z3.And(x.ecx == 0, x.edx == 0), GP, 0, "WRPKRU with ECX or EDX not 0")
        x.write("pkru", x.eax)


# --- RTM and TSXLDTRK (SDM Vol. 1 ch. 16; Vol. 2D XBEGIN, XEND, XABORT, XTEST, XSUSLDTRK) ----------

def _xbegin(x, size: int) -> None:
    """The transaction aborts at once: EAX := 0 (no listed cause) and execution resumes at the
    fallback address, EIP of the next instruction plus rel (truncated to 16 bits with a 16-bit
    operand size); nothing else changes."""
    if not _need(x, "rtm", "XBEGIN"):
        return
    rel = x.d.imm if size == 4 else (x.d.imm ^ 0x8000) - 0x8000
    target = x.next_eip + (rel & 0xFFFFFFFF)
    if size == 2:
        target = target & 0xFFFF
    x.write("eax", 0)
    x.jump(target)


@form("xbegin_rel32", enc="o32 C7 F8 cd", bytes="c7f800000000", asm="xbegin 6",
      cite="SDM Vol. 2D XBEGIN; Vol. 1 16.3.5")
def xbegin_rel32(x):
    _xbegin(x, 4)


@form("xbegin_rel16", enc="o16 C7 F8 cw", bytes="66c7f80000", asm="xbegin 5",
      cite="SDM Vol. 2D XBEGIN; Vol. 1 16.3.5")
def xbegin_rel16(x):
    _xbegin(x, 2)


@form("xend", enc="NP 0F 01 D5", bytes="0f01d5", asm="xend", cite="SDM Vol. 2D XEND")
def xend(x):
    """Outside a transaction, always here, #GP(0)."""
    if _need(x, "rtm", "XEND"):
        x.fault(GP, 0, "XEND outside a transactional region")


@form("xabort", enc="C6 F8 ib", bytes="c6f800", asm="xabort 0", cite="SDM Vol. 2D XABORT")
def xabort(x):
    """A NOP outside a transaction."""
    _need(x, "rtm", "XABORT")


@form("xtest", enc="NP 0F 01 D6", bytes="0f01d6", asm="xtest", cite="SDM Vol. 2D XTEST")
def xtest(x):
    """Outside a transactional region ZF := 1; CF, OF, SF, PF, AF := 0."""
    if _need(x, "hle_or_rtm", "XTEST"):
        arith = (1 << st.CF) | (1 << st.PF) | (1 << st.AF) | (1 << st.ZF) | (1 << st.SF) | (1 << st.OF)
        x.write("flags", (x.flags & ~arith) | (1 << st.ZF))


@form("xsusldtrk", enc="F2 0F 01 E8", bytes="f20f01e8", asm="xsusldtrk", cite="SDM Vol. 2D XSUSLDTRK")
def xsusldtrk(x):
    """A NOP outside a transactional region."""
    _need(x, "tsxldtrk", "XSUSLDTRK")


@form("xresldtrk", enc="F2 0F 01 E9", bytes="f20f01e9", asm="xresldtrk", cite="SDM Vol. 2D XRESLDTRK")
def xresldtrk(x):
    """A NOP outside a transactional region."""
    _need(x, "tsxldtrk", "XRESLDTRK")


# --- user wait (SDM Vol. 2B UMONITOR, UMWAIT, TPAUSE; Vol. 3C 25.1.3, 25.3) ----------------------------

def _waitpkg(x, what: str) -> bool:
    if not _need(x, "waitpkg", what):
        return False
    checks.require_enabled(x, "enable_user_wait_and_pause", what)
    return True


@form("umonitor_r32", enc="a32 F3 0F AE /6 reg", bytes="f30faef0", asm="umonitor eax",
      cite="SDM Vol. 2B UMONITOR")
def umonitor_r32(x):
    """Arms address monitoring at DS:r32 (the segment overridable) at any CPL; the armed range is
    not modelled state (only UMWAIT's wait, which the model ends at once, reads it)."""
    _waitpkg(x, "UMONITOR")


@form("umonitor_r16", enc="a16 F3 0F AE /6 reg", bytes="67f30faef0", asm="umonitor ax",
      cite="SDM Vol. 2B UMONITOR")
def umonitor_r16(x):
    _waitpkg(x, "UMONITOR")


def _user_wait(x, what: str) -> None:
    """#GP(0) when bits 31:1 of the source are set, or CR4.TSD = 1 at CPL > 0; a VM exit under
    'RDTSC exiting' with 'enable user wait and pause'; the wait ends at once (CF := 0) and OF,
    SF, ZF, AF, PF := 0."""
    if not _waitpkg(x, what):
        return
    x.require(z3.Extract(31, 1, x.gpr(x.d.rm)) == 0, GP, 0, f"{what} with reserved source bits set")
    x.require(z3.Not(z3.And(st.bit(x.cr4, st.CR4_TSD), x.cpl != 0)), GP, 0,
              f"{what} at CPL > 0 with CR4.TSD = 1")
    if x.vm is not None and checks._vmx(x) and checks._on(x, "enable_user_wait_and_pause"):
        checks.vmexit(x, vmx=("rdtsc_exiting", what.lower()), what=what)
    arith = (1 << st.CF) | (1 << st.PF) | (1 << st.AF) | (1 << st.ZF) | (1 << st.SF) | (1 << st.OF)
    x.write("flags", x.flags & ~arith)


@form("umwait", enc="F2 0F AE /6 reg", bytes="f20faef0", asm="umwait eax", cite="SDM Vol. 2B UMWAIT")
def umwait(x):
    _user_wait(x, "UMWAIT")


@form("tpause", enc="66 0F AE /6 reg", bytes="660faef0", asm="tpause eax", cite="SDM Vol. 2B TPAUSE")
def tpause(x):
    _user_wait(x, "TPAUSE")


# --- MONITORX / MWAITX (AMD APM Vol. 3 MONITORX, MWAITX) ----------------------------------------------

def _monitorx(x) -> None:
    """MONITOR at any CPL: arms monitoring at DS:rAX; ECX != 0 is #GP(0); the SVM MONITOR
    intercept covers it (APM Vol. 2 Table B-1)."""
    if not _need(x, "monitorx", "MONITORX"):
        return
    x.require(x.ecx == 0, GP, 0, "MONITORX with reserved extensions in ECX")
    checks.vmexit(x, svm="monitor", what="MONITORX")


@form("monitorx_a32", enc="a32 NP 0F 01 FA", bytes="0f01fa", asm="monitorx", cite="AMD APM Vol. 3 MONITORX")
def monitorx_a32(x):
    _monitorx(x)


@form("monitorx_a16", enc="a16 NP 0F 01 FA", bytes="670f01fa", asm="monitorx", cite="AMD APM Vol. 3 MONITORX")
def monitorx_a16(x):
    _monitorx(x)


@form("mwaitx", enc="NP 0F 01 FB", bytes="0f01fb", asm="mwaitx", cite="AMD APM Vol. 3 MWAITX")
def mwaitx(x):
    """MWAIT at any CPL with a timer (ECX[1], EBX); ECX[31:2] != 0 is #GP(0); the SVM MWAIT
    intercept covers it.  The wait changes nothing modelled."""
    if _need(x, "monitorx", "MWAITX"):
        x.require(z3.ULE(x.ecx, 3), GP, 0, "MWAITX with reserved extensions in ECX")
        checks.vmexit(x, svm="mwait", what="MWAITX")


# --- MPX (SDM Vol. 1 ch. 17; Vol. 2A BNDCL...) ----------------------------------------------------------

def _mpx(x, what: str) -> None:
    """Without MPX, or with it disabled for the CPL (BNDCFGU.EN at CPL 3, IA32_BNDCFGS.EN below),
    an MPX instruction is a NOP (SDM Vol. 1 17.3.3); enabled MPX is assumed away."""
    if "mpx" not in x.features:
        return
    en = z3.If(x.cpl == 3, z3.Extract(0, 0, x.bndcfgu), z3.Extract(0, 0, x.bndcfgs)) == 1
    x.assume(z3.Not(en), f"{what} with MPX enabled (BNDCFGx.EN = 1): bounds registers are not modelled")


@form("bndcl", enc="F3 0F 1A /r", bytes="f30f1a00", asm="bndcl bnd0, [eax]",
      cite="SDM Vol. 2A BNDCL; Vol. 1 17.3.3", code="BNDCL_BND_RM32")
def bndcl(x):
    _mpx(x, "BNDCL")


@form("bndcu", enc="F2 0F 1A /r", bytes="f20f1a00", asm="bndcu bnd0, [eax]",
      cite="SDM Vol. 2A BNDCU/BNDCN; Vol. 1 17.3.3", code="BNDCU_BND_RM32")
def bndcu(x):
    _mpx(x, "BNDCU")


@form("bndcn", enc="F2 0F 1B /r", bytes="f20f1b00", asm="bndcn bnd0, [eax]",
      cite="SDM Vol. 2A BNDCU/BNDCN; Vol. 1 17.3.3", code="BNDCN_BND_RM32")
def bndcn(x):
    _mpx(x, "BNDCN")


@form("bndmk", enc="F3 0F 1B /r mem", bytes="f30f1b00", asm="bndmk bnd0, [eax]",
      cite="SDM Vol. 2A BNDMK; Vol. 1 17.3.3", code="BNDMK_BND_M32")
def bndmk(x):
    _mpx(x, "BNDMK")


@form("bndmov_bnd_m64", enc="66 0F 1A /r", bytes="660f1a00", asm="bndmov bnd0, qword ptr [eax]",
      cite="SDM Vol. 2A BNDMOV; Vol. 1 17.3.3", code="BNDMOV_BND_BNDM64")
def bndmov_bnd_m64(x):
    _mpx(x, "BNDMOV")


@form("bndmov_m64_bnd", enc="66 0F 1B /r", bytes="660f1b00", asm="bndmov qword ptr [eax], bnd0",
      cite="SDM Vol. 2A BNDMOV; Vol. 1 17.3.3", code="BNDMOV_BNDM64_BND")
def bndmov_m64_bnd(x):
    _mpx(x, "BNDMOV")


@form("bndldx", enc="NP 0F 1A /r mem", bytes="0f1a00", asm="bndldx bnd0, [eax]",
      cite="SDM Vol. 2A BNDLDX; Vol. 1 17.3.3", code="BNDLDX_BND_MIB")
def bndldx(x):
    _mpx(x, "BNDLDX")


@form("bndstx", enc="NP 0F 1B /r mem", bytes="0f1b00", asm="bndstx [eax], bnd0",
      cite="SDM Vol. 2A BNDSTX; Vol. 1 17.3.3", code="BNDSTX_MIB_BND")
def bndstx(x):
    _mpx(x, "BNDSTX")
