"""The state-component forms (model/isa/xstate.py): FXSAVE/FXRSTOR, the XSAVE family, protection
keys, RTM/TSXLDTRK, the user wait instructions, MONITORX/MWAITX and MPX, run concretely under each
condition, and the solver's classes on every profile checked against what the SDM and the APM say
(the literature answers appear here only, as oracles)."""

import dataclasses

import pytest
import z3

from pgvirt.model import isa, profiles, state as st, svm, vmx
from pgvirt.model.outcome import GP, NM, UD, Exit, Fault, Next
from pgvirt.emulator import states as S
from helpers import fault, gp0, ok

ALL = profiles.PENTIUM.features
OSFXSR, OSXSAVE, PKE = 1 << st.CR4_OSFXSR, 1 << st.CR4_OSXSAVE, 1 << st.CR4_PKE
A = S.DATA                                     # 64-byte aligned: [eax] in every canonical form


def run(name, cpl=0, feats=ALL, code=None, vm=None, **fields):
    return isa.get(name).execute(S.flat_state(cpl, **fields), code, features=frozenset(feats), vm=vm)


def ud(out):
    assert isinstance(out, Fault) and out.vector == UD, out


def nm(out):
    assert isinstance(out, Fault) and out.vector == NM, out


def image(state, at, n):
    return bytes(state["mem"].get(at + k, 0) for k in range(n))


def mem_of(data: bytes, at=A):
    return {**S.flat_state(0)["mem"], **{at + k: b for k, b in enumerate(data)}}


def le(v, n):
    return v.to_bytes(n, "little")


# --- FXSAVE / FXRSTOR --------------------------------------------------------------------------------

X87 = dict(fcw=0x37F, fsw=0x3800 | 0x81, ftw=0x81, fop=0x123, fip=0x1234, fcs=8, fdp=0x5678, fds=0x10,
           fpr0=0x11, fpr7=0x77, mxcsr=0x1F80, zmm0=(5 << 300) | 0xAB, zmm7=0xCD)


def test_fxsave_layout_st_order_and_the_osfxsr_choice():
    s = ok(run("fxsave", 3, cr4=OSFXSR, **X87))
    img = image(s, A, 512)
    assert img[0:2] == le(0x37F, 2) and img[2:4] == le(0x3881, 2) and img[4] == 0x81
    assert img[6:8] == le(0x123, 2) and img[8:12] == le(0x1234, 4) and img[12:14] == le(8, 2)
    assert img[16:20] == le(0x5678, 4) and img[20:22] == le(0x10, 2)
    assert img[24:28] == le(0x1F80, 4) and img[28:32] == le(0xFFFF, 4)
    # TOP = 7: ST(0) is R7, ST(1) is R0 (SDM Vol. 1 8.1.2)
    assert img[32:42] == le(0x77, 10) and img[48:58] == le(0x11, 10)
    assert img[160:176] == le(0xAB, 16) and img[160 + 7 * 16:176 + 7 * 16] == le(0xCD, 16)
    without = ok(run("fxsave", 3, cr4=0, **X87))               # CR4.OSFXSR = 0: no MXCSR, no XMM
    assert all(a not in without["mem"] or without["mem"][a] == 0 for a in range(A + 24, A + 32))
    assert A + 160 not in without["mem"] or without["mem"][A + 160] == 0


def test_fxsave_faults():
    ud(run("fxsave", 0, feats=ALL - {"fxsr"}))
    for bit in (st.CR0_EM, st.CR0_TS):
        nm(run("fxsave", 3, cr0=S.flat_state(3)["cr0"] | 1 << bit))
    gp0(run("fxsave", 3, eax=A + 8))                               # 16-byte alignment, never #AC
    gp0(run("fxsave", 3, eax=A + 8, cr0=S.flat_state(3)["cr0"] | 1 << st.CR0_AM, sysflags=1 << st.AC))


def test_fxrstor_restores_what_fxsave_saved_and_checks_mxcsr():
    saved = ok(run("fxsave", 0, cr4=OSFXSR, **X87))
    img = image(saved, A, 512)
    back = ok(run("fxrstor", 0, cr4=OSFXSR, mem=mem_of(img)))
    for f in ("fcw", "fsw", "ftw", "fop", "fip", "fcs", "fdp", "fds", "fpr0", "fpr7", "mxcsr"):
        assert back[f] == X87[f] | (0x8000 if f == "fsw" else 0), f      # FSW.B reflects ES
    assert back["zmm0"] == 0xAB and back["zmm7"] == 0xCD             # the upper bits are kept: 0
    bad = bytearray(img)
    bad[26] = 1                                                      # MXCSR bit 16
    gp0(run("fxrstor", 0, cr4=OSFXSR, mem=mem_of(bytes(bad))))
    assert ok(run("fxrstor", 0, cr4=0, mem=mem_of(bytes(bad))))["mxcsr"] == 0   # not loaded


# --- XSAVE family ---------------------------------------------------------------------------------------

XCR0 = 0b1100111                                  # x87, SSE, AVX, opmask, ZMM_Hi256


def xs(cpl=0, **kw):
    d = dict(cr4=OSXSAVE | OSFXSR, xcr0=XCR0, edx=0)
    d.update(kw)
    return d


def test_xsave_needs_osxsave_and_is_64_byte_aligned():
    ud(run("xsave", 3, cr4=OSFXSR))
    ud(run("xsave", 3, feats=ALL - {"xsave"}, **xs()))
    gp0(run("xsave", 3, **xs(eax=A + 16)))
    nm(run("xsave", 3, **xs(cr0=S.flat_state(3)["cr0"] | 1 << st.CR0_TS)))


def test_xsave_writes_exactly_the_requested_components_and_xstate_bv():
    # EAX names the area and RFBM at once: A = 0x5000 selects no component, A | 6 would not be
    # aligned; so the area is [ebx] (0F AE /4 with ModRM 23) and EAX the bitmap.
    code = bytes.fromhex("0fae23")
    regs = dict(ebx=A, k3=0x77, zmm1=(0x99 << 128) | (0x55 << 256) | 0x44, fcw=0x37F)
    s = ok(run("xsave", 3, code=code, **xs(eax=0b100110, **regs)))     # SSE, AVX, opmask
    img = image(s, A, 1200)
    assert img[0:2] == b"\0\0"                                          # x87 not requested
    assert img[24:28] == le(0, 4) and img[176:192] == le(0x44, 16)       # MXCSR (RFBM[1]), XMM1
    assert img[576 + 16:576 + 32] == le(0x99, 16)                        # YMM1[255:128]
    assert img[1088 + 24:1088 + 32] == le(0x77, 8)                       # k3
    assert A + 1152 + 32 not in s["mem"] or s["mem"][A + 1152 + 32] == 0  # ZMM_Hi256 not requested
    # XSTATE_BV[i] := XINUSE[i] for i in RFBM: SSE and AVX and opmask are not in their initial
    # configuration, so in use
    assert int.from_bytes(img[512:520], "little") == 0b100110
    # an all-zero opmask file is in its initial configuration: XINUSE[5] is the processor's choice
    zero = dict(regs, k3=0)
    s = ok(run("xsave", 3, code=code, **xs(eax=0b100000, **zero)))
    assert int.from_bytes(image(s, A + 512, 8), "little") == 0
    s = ok(run("xsave", 3, code=code, **xs(eax=0b100000, xinuse=1 << 5, **zero)))
    assert int.from_bytes(image(s, A + 512, 8), "little") == 0b100000


def test_xsaveopt_stores_what_xsave_stores():
    code_opt, code = bytes.fromhex("0fae33"), bytes.fromhex("0fae23")
    regs = xs(ebx=A, eax=0b111, fcw=0x27F, zmm2=7, mxcsr=0x1F80)
    assert ok(run("xsaveopt", 0, code=code_opt, **regs))["mem"] == ok(run("xsave", 0, code=code, **regs))["mem"]


def test_xrstor_loads_initialises_and_checks_the_header():
    img = bytearray(1200)
    img[24:28] = le(0x1F80, 4)
    img[160:176] = le(0x1234, 16)
    img[512:520] = le(0b10, 8)                                       # XSTATE_BV: SSE from memory
    code = bytes.fromhex("0fae2b")                                   # xrstor [ebx]
    s = ok(run("xrstor", 0, code=code, **xs(ebx=A, eax=0b111, mem=mem_of(bytes(img)), fcw=0x27F,
                                             zmm0=(3 << 200) | 9, fpr1=5)))
    assert s["zmm0"] & ((1 << 128) - 1) == 0x1234                    # XMM0 from the image
    assert s["zmm0"] >> 128 == 0                                     # AVX: XSTATE_BV[2] = 0, init
    assert s["fcw"] == 0x37F and s["fpr1"] == 0                      # x87 initialised
    assert s["xinuse"] == 0b010 and s["mxcsr"] == 0x1F80
    bad = bytearray(img)
    bad[512] = 0b10000000 | 0b10                                     # Hi16_ZMM: not in XCR0 here
    gp0(run("xrstor", 0, code=code, **xs(ebx=A, eax=0b111, xcr0=0b111, mem=mem_of(bytes(bad)))))
    bad = bytearray(img)
    bad[530] = 1                                                     # header bytes 23:8
    gp0(run("xrstor", 0, code=code, **xs(ebx=A, eax=0b111, mem=mem_of(bytes(bad)))))


def test_xsavec_compacts_and_xsaves_is_cpl0():
    code = bytes.fromhex("0fc723")                                   # xsavec [ebx]
    regs = xs(ebx=A, eax=0b100100, k1=0xEE, zmm0=0x1 << 128)         # AVX and opmask, both in use
    s = ok(run("xsavec", 3, code=code, **regs))
    img = image(s, A, 1000)
    assert img[576:592] == le(1, 16)                                  # AVX first after the header
    assert img[576 + 256 + 8:576 + 256 + 16] == le(0xEE, 8)           # opmask right after AVX
    assert int.from_bytes(img[512:520], "little") == 0b100100
    assert int.from_bytes(img[520:528], "little") == (1 << 63) | 0b100100
    gp0(run("xsaves", 3, code=bytes.fromhex("0fc72b"), **regs))
    assert isinstance(run("xsaves", 0, code=bytes.fromhex("0fc72b"), **regs), Next)
    ud(run("xsaves", 0, feats=ALL - {"xsaves"}, code=bytes.fromhex("0fc72b"), **regs))


def test_xrstors_needs_the_compacted_format():
    code = bytes.fromhex("0fc71b")                                   # xrstors [ebx]
    img = bytearray(1200)
    gp0(run("xrstors", 0, code=code, **xs(ebx=A, eax=1, mem=mem_of(bytes(img)))))   # XCOMP_BV[63] = 0
    img[520:528] = le((1 << 63) | 1, 8)
    img[0:2] = le(0x27F, 2)
    img[512:520] = le(1, 8)
    assert ok(run("xrstors", 0, code=code, **xs(ebx=A, eax=1, mem=mem_of(bytes(img)))))["fcw"] == 0x27F
    gp0(run("xrstors", 3, code=code, **xs(ebx=A, eax=1, mem=mem_of(bytes(img)))))


def test_xsaves_under_vtx_controls_and_the_xss_exiting_bitmap():
    code = bytes.fromhex("0fc72b")
    regs = xs(ebx=A, eax=1)
    off = vmx.DEFAULT.without("enable_xsaves_xrstors")
    ud(run("xsaves", 0, code=code, vm=off, **regs))
    every = dataclasses.replace(vmx.DEFAULT, xss_exiting_bitmap=(1 << 64) - 1)
    assert isinstance(run("xsaves", 0, code=code, vm=every, **regs), Next)     # XSS = 0: no exit
    # a supervisor component named in EDX:EAX, IA32_XSS and the bitmap exits (SDM Vol. 3C 25.1.3;
    # the model's processors support none, so this state lies outside their well-formed ones)
    out = run("xsaves", 0, code=code, vm=every, **dict(regs, eax=1 << 8 | 1, xss=1 << 8))
    assert isinstance(out, Exit) and out.exit_reason == "xsaves" and out.code == 63
    out = run("xrstors", 0, code=bytes.fromhex("0fc71b"), vm=every, **dict(regs, eax=1 << 8, xss=1 << 8))
    assert isinstance(out, Exit) and out.exit_reason == "xrstors"
    assert dataclasses.replace(vmx.DEFAULT, xss_exiting_bitmap=4).as_json()["xss_exiting_bitmap"] == "0x4"
    assert vmx.from_json({"base": "default", "xss_exiting_bitmap": "0x100"}).xss_exiting_bitmap == 0x100


def test_xss_is_zero_in_every_wellformed_state():
    s = st.fresh()
    for p in profiles.PROFILES.values():
        solver = z3.Solver()
        solver.add(profiles.wellformed(s, p), s.xss != 0)
        assert solver.check() == z3.unsat, p.name


# --- protection keys --------------------------------------------------------------------------------

def test_rdpkru_wrpkru():
    ud(run("rdpkru", 3, pkru=5))                                     # CR4.PKE = 0
    ud(run("rdpkru", 3, feats=ALL - {"pku"}, cr4=PKE))
    s = ok(run("rdpkru", 3, cr4=PKE, ecx=0, pkru=0xC, edx=7))
    assert (s["eax"], s["edx"]) == (0xC, 0)
    gp0(run("rdpkru", 3, cr4=PKE, ecx=1))
    assert ok(run("wrpkru", 3, cr4=PKE, ecx=0, edx=0, eax=0x30))["pkru"] == 0x30
    gp0(run("wrpkru", 3, cr4=PKE, ecx=0, edx=1))
    gp0(run("wrpkru", 3, cr4=PKE, ecx=2, edx=0))


# --- RTM and TSXLDTRK ------------------------------------------------------------------------------

def test_xbegin_aborts_at_once_to_the_fallback():
    s0 = S.flat_state(3)
    s = ok(run("xbegin_rel32", 3, code=bytes.fromhex("c7f810000000"), eax=0x1234))
    assert s["eax"] == 0 and s["eip"] == s0["eip"] + 6 + 0x10
    s = ok(run("xbegin_rel32", 3, code=bytes.fromhex("c7f8f0ffffff")))     # backwards
    assert s["eip"] == (s0["eip"] + 6 - 0x10) & 0xFFFFFFFF
    s = ok(run("xbegin_rel16", 3, code=bytes.fromhex("66c7f80010")))
    assert s["eip"] == (s0["eip"] + 5 + 0x1000) & 0xFFFF                    # truncated to 16 bits
    ud(run("xbegin_rel32", 3, feats=ALL - {"rtm"}))


def test_outside_a_transaction():
    gp0(run("xend", 3))
    gp0(run("xend", 0))
    s = ok(run("xtest", 3, flags=st.USER_FLAGS_MASK))
    assert s["flags"] == (1 << st.ZF) | (1 << st.DF)
    for name in ("xabort", "xsusldtrk", "xresldtrk"):
        s0 = S.flat_state(3)
        s = ok(run(name, 3))
        assert s["eip"] == s0["eip"] + len(isa.get(name).bytes) and s["eax"] == s0["eax"]
    ud(run("xsusldtrk", 3, feats=ALL - {"tsxldtrk"}))
    ud(run("xtest", 3, feats=ALL - {"hle_or_rtm"}))


# --- user wait, MONITORX/MWAITX ----------------------------------------------------------------------

def test_umwait_tpause():
    for name in ("umwait", "tpause"):
        gp0(run(name, 0, eax=2))                                       # reserved source bits
        gp0(run(name, 3, eax=1, cr4=1 << st.CR4_TSD))                  # CR4.TSD above CPL 0
        s = ok(run(name, 3, eax=1, flags=st.USER_FLAGS_MASK))
        assert s["flags"] == 1 << st.DF                                # CF := 0 (woke at once)
        ud(run(name, 0, eax=0, feats=ALL - {"waitpkg"}))
    assert isinstance(run("umonitor_r32", 3), Next)


def test_user_wait_under_vtx():
    v = profiles.VTX.features
    s = dict(eax=0)
    for name, reason in (("umwait", "umwait"), ("tpause", "tpause")):
        ud(run(name, 0, feats=v, vm=vmx.DEFAULT.without("enable_user_wait_and_pause"), **s))
        out = run(name, 0, feats=v, vm=vmx.DEFAULT, **s)
        assert isinstance(out, Exit) and out.exit_reason == reason, out
        assert isinstance(run(name, 0, feats=v, vm=vmx.DEFAULT.without("rdtsc_exiting"), **s), Next)
    ud(run("umonitor_r32", 0, feats=v, vm=vmx.DEFAULT.without("enable_user_wait_and_pause")))


def test_monitorx_mwaitx_any_cpl_and_the_svm_intercepts():
    assert isinstance(run("monitorx_a32", 3, ecx=0), Next)
    gp0(run("monitorx_a32", 3, ecx=1))
    assert isinstance(run("mwaitx", 3, ecx=3), Next)
    gp0(run("mwaitx", 3, ecx=4))
    ud(run("mwaitx", 3, feats=ALL - {"monitorx"}))
    assert svm.DEFAULT.on("monitor") and svm.DEFAULT.on("mwait")
    out = run("monitorx_a32", 3, ecx=0, vm=svm.DEFAULT, feats=profiles.SVM.features)
    assert isinstance(out, Exit) and out.exit_reason == "monitor"
    out = run("mwaitx", 3, ecx=0, vm=svm.DEFAULT, feats=profiles.SVM.features)
    assert isinstance(out, Exit) and out.exit_reason == "mwait"


# --- MPX ----------------------------------------------------------------------------------------------

MPX = [f for f in isa.FORMS if f.name.startswith("bnd")]


@pytest.mark.parametrize("form", MPX, ids=lambda f: f.name)
def test_mpx_is_a_nop_while_disabled(form):
    for cpl in (0, 3):
        s0 = S.flat_state(cpl)
        s = ok(form.execute(s0, features=ALL))
        assert s["eip"] == s0["eip"] + len(form.bytes)
        assert {k: v for k, v in s.items() if k not in ("eip", "mem")} == \
            {k: v for k, v in s0.items() if k not in ("eip", "mem")}
    out = form.run(st.concrete(S.flat_state(3, bndcfgu=1)), features=ALL)
    assert z3.is_false(z3.simplify(out.assumed))                     # enabled: assumed away
    out = form.run(st.concrete(S.flat_state(0, bndcfgu=1)), features=ALL)
    assert z3.is_true(z3.simplify(out.assumed))                      # CPL 0 reads IA32_BNDCFGS


# --- the solver's classes against the manuals -------------------------------------------------------

# SDM Vol. 2C XSAVES/XRSTORS: "can be executed only if CPL = 0"; Vol. 2B UMWAIT/TPAUSE: #GP(0)
# at CPL > 0 with CR4.TSD = 1, which both trap-and-emulate profiles set; everything else here
# runs at any CPL and reads only the guest's own state (FPU/SIMD controls pass through).
PRIVILEGED = {"xsaves", "xrstors", "umwait", "tpause"}
SAMPLE = ["fxsave", "fxrstor", "xsave", "xrstor", "xsaves", "xrstors", "rdpkru", "wrpkru",
          "xbegin_rel32", "xend", "xtest", "umwait", "tpause", "umonitor_r32", "mwaitx", "bndmk"]


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["pentium", "umip"])
def test_trap_and_emulate_classes(profile):
    from pgvirt.verify.popek_goldberg import classify
    for name in SAMPLE:
        c = classify(name, profile)
        assert c["privileged"] is (name in PRIVILEGED), name
        if name not in PRIVILEGED:
            assert c["sensitive"] is False, name


@pytest.mark.parametrize("name", ["xsaves", "rdpkru", "umwait", "xsave"])
def test_trap_and_emulate_classes_quick(name):
    """XSAVE's witnesses read over a thousand memory addresses (regression: their evaluation in
    one numeral overflowed Python's 4,300-digit limit)."""
    from pgvirt.verify.popek_goldberg import classify
    c = classify(name, "pentium")
    assert c["privileged"] is (name in PRIVILEGED)
    assert c["sensitive"] is (name in PRIVILEGED)


@pytest.mark.parametrize("name", ["xsaves", "umwait", "rdpkru"])
def test_root_mode_privileged_under_vtx_and_svm(name):
    """No hole under either default (the XSS-exiting bitmap, the user-wait control)."""
    from pgvirt.verify.popek_goldberg import classify, theorem
    for p in ("vtx", "svm"):
        c = classify(name, p)
        assert theorem("1", [c]).verdict == "holds", (p, name)


def test_without_user_wait_control_umwait_is_a_hole_under_vtx():
    from pgvirt.verify.popek_goldberg import classify, theorem
    p = profiles.VTX.with_controls(vmx.DEFAULT.without("enable_user_wait_and_pause"))
    assert theorem("1", [classify("umwait", p)]).verdict == "fails"


def test_eval_many_reads_more_bits_than_one_numeral_holds():
    terms = [z3.BitVec(f"t{k}", 32) for k in range(2000)]
    solver = z3.Solver()
    solver.add([t == k * 7919 for k, t in enumerate(terms)])
    assert solver.check() == z3.sat
    assert st.eval_many(solver.model(), terms) == [(k * 7919) & 0xFFFFFFFF for k in range(2000)]
