"""Concrete runs of the feature-gated and undefined-opcode forms (model/isa/extensions.py,
virtualization.py), with and without the features, and what the solver derives from them."""

import pytest
import z3

from pgvirt.model import concrete, features, isa, profiles, state as st
from pgvirt.model.form import ModelError
from pgvirt.model.outcome import DB, GP, UD, Fault, Next
from pgvirt.emulator import states as S
from helpers import fault, gp0, ok

GATED = [f for f in isa.FORMS if f.theme in ("extensions", "virtualization")]
ALL = frozenset(features.FEATURES)


def run(name, cpl=0, feats=frozenset(), code=None, **fields):
    return isa.get(name).execute(S.flat_state(cpl, **fields), code, features=frozenset(feats))


def ud(out):
    assert isinstance(out, Fault) and out.vector == UD, out


def assumed(name, cpl=0, feats=frozenset(), **fields) -> bool:
    out = isa.get(name).run(st.concrete(S.flat_state(cpl, **fields)), features=frozenset(feats))
    return z3.is_true(z3.simplify(out.assumed))


@pytest.mark.parametrize("form", [f for f in GATED if f.name not in ("salc", "wbnoinvd", "rdsspd",
                                                                      "endbr32", "endbr64", "int1",
                                                                      "pause", "bound_r32",
                                                                      "bound_r16")],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("cpl", [0, 3])
def test_without_the_features_every_gated_form_is_ud(form, cpl):
    """The profiles' processors: nothing but #UD, in every mode."""
    ud(form.execute(S.flat_state(cpl)))


@pytest.mark.parametrize("name", ["endbr32", "endbr64", "rdsspd"])
def test_cet_hint_space_is_a_nop(name):
    s = S.flat_state(3)
    out = ok(run(name, 3))
    assert out["eip"] == s["eip"] + 4 and out["eax"] == s["eax"]
    cet = 1 << st.CR4_CET
    assert not assumed(name, 0, {"cet_ss"}, cr4=cet, cr0=S.flat_state(0)["cr0"] | 1 << st.CR0_WP)
    assert assumed(name, 0, {"cet_ss"})


def test_undefined_opcodes_and_int1():
    for name in ("rsm", "ud2", "ud0_r32", "ud1_r16", "swapgs", "vmmcall"):
        ud(run(name, 0, ALL))
    fault(run("int1", 3), DB, None)
    assert ok(run("salc", 3, flags=1 << st.CF, eax=0x12345600))["eax"] == 0x123456FF
    assert ok(run("salc", 3, flags=0, eax=0x123456AA))["eax"] == 0x12345600


def test_rdrand_answers_from_outside_the_state():
    c = concrete.compiled("rdrand_r32", frozenset({"rdrand"}))
    assert c.ufs == {"rdrand32"}
    s = S.flat_state(3, flags=st.USER_FLAGS_MASK)
    none = c.run(s).state                           # the default answer: no number ready
    assert none["eax"] == 0 and none["flags"] == 1 << st.DF      # DF kept, the rest cleared
    got = c.run(s, lambda name, *a: (1 << 32) | 0xCAFEBABE).state
    assert got["eax"] == 0xCAFEBABE and got["flags"] == (1 << st.DF) | (1 << st.CF)


def test_rdpid_reads_tsc_aux_at_cpl3():
    assert ok(run("rdpid_r32", 3, {"rdpid"}, tsc_aux=0x42, cr4=1 << st.CR4_TSD))["eax"] == 0x42


def test_wbnoinvd_is_cpl0_with_or_without_the_feature():
    for feats in (set(), {"wbnoinvd"}):
        gp0(run("wbnoinvd", 3, feats))
        assert ok(run("wbnoinvd", 0, feats))["caches"] == 0


def test_invpcid():
    f = {"invpcid"}
    gp0(run("invpcid", 3, f))
    ebx_type = bytes.fromhex("660f388218")                         # invpcid ebx, [eax]
    assert ok(run("invpcid", 0, f, code=ebx_type, ebx=1, eax=S.DATA, tlb=1))["tlb"] == 0
    gp0(run("invpcid", 0, f, code=bytes.fromhex("660f388218"), ebx=4))          # type 4
    mem = {S.DATA: 5}                                                              # PCID 5
    gp0(run("invpcid", 0, f, code=bytes.fromhex("660f388218"), ebx=0, eax=S.DATA, mem=mem))


def test_clac_stac():
    f = {"smap"}
    ud(run("clac", 3, f))
    s = ok(run("stac", 0, f))
    assert s["sysflags"] & (1 << st.AC)
    assert not ok(run("clac", 0, f, sysflags=1 << st.AC))["sysflags"] & (1 << st.AC)


OSXSAVE = 1 << st.CR4_OSXSAVE


def test_xgetbv_xsetbv():
    f = {"xsave"}
    ud(run("xgetbv", 3, f))                                       # CR4.OSXSAVE = 0
    s = ok(run("xgetbv", 3, f, cr4=OSXSAVE, ecx=0, xcr0=3))
    assert (s["eax"], s["edx"]) == (3, 0)
    gp0(run("xgetbv", 3, f, cr4=OSXSAVE, ecx=1))
    gp0(run("xsetbv", 3, f, cr4=OSXSAVE, ecx=0, eax=3, edx=0))
    assert ok(run("xsetbv", 0, f, cr4=OSXSAVE, ecx=0, eax=3, edx=0))["xcr0"] == 3
    for eax, edx in ((2, 0), (5, 0), (7, 0), (1, 1)):            # no x87; AVX w/o SSE; unsupported
        gp0(run("xsetbv", 0, f, cr4=OSXSAVE, ecx=0, eax=eax, edx=edx))


def test_monitor_mwait():
    f = {"monitor"}
    ud(run("monitor_a32", 3, f))
    ud(run("mwait", 3, f))
    gp0(run("monitor_a32", 0, f, ecx=1))
    assert isinstance(run("mwait", 0, f, ecx=1), Next)
    gp0(run("mwait", 0, f, ecx=2))


def test_cet_instructions_are_ud_with_cet_off():
    for name in ("incsspd", "saveprevssp", "rstorssp", "wrssd", "wrussd", "setssbsy", "clrssbsy"):
        ud(run(name, 0, {"cet_ss"}))
        ud(run(name, 3))


# --- VMX, SVM, SMX ------------------------------------------------------------------------------

VMXE, SMXE = 1 << st.CR4_VMXE, 1 << st.CR4_SMXE
PAGING = (1 << st.CR0_PE) | (1 << st.CR0_NE) | (1 << st.CR0_PG) | (1 << st.CR0_ET)


def test_vmxon_checks_and_never_enters_vmx_operation_without_paging():
    f = {"vmx"}
    ud(run("vmxon", 0, f))                                         # CR4.VMXE = 0
    gp0(run("vmxon", 3, f, cr4=VMXE))
    gp0(run("vmxon", 0, f, cr4=VMXE))                              # CR0.PG = 0
    assert assumed("vmxon", 0, f, cr4=VMXE)
    assert not assumed("vmxon", 0, f, cr4=VMXE, cr0=PAGING)        # beyond the model


@pytest.mark.parametrize("name", ["vmxoff", "vmclear", "vmptrld", "vmptrst", "vmread", "vmwrite",
                                  "vmlaunch", "vmresume", "vmcall", "invept", "invvpid", "vmfunc",
                                  "enclv"])
def test_vmx_instructions_outside_vmx_operation_are_ud(name):
    ud(run(name, 0, {"vmx"}, cr4=VMXE))


SVME = 1 << st.EFER_SVME


def test_svm_gates():
    f = {"svm"}
    for name in ("vmrun_a32", "vmload_a16", "vmsave_a32", "clgi", "invlpga_a32"):
        ud(run(name, 0, f))                                        # EFER.SVME = 0
        gp0(run(name, 3, f, efer=SVME))
    assert ok(run("clgi", 0, f, efer=SVME, gif=1))["gif"] == 0
    assert ok(run("stgi", 0, f, efer=SVME, gif=0))["gif"] == 1
    assert ok(run("invlpga_a32", 0, f, efer=SVME, tlb=1))["tlb"] == 0
    gp0(run("vmrun_a32", 0, f, efer=SVME, eax=0x1234))             # not 4-KByte aligned
    assert not assumed("vmrun_a32", 0, f, efer=SVME, eax=0x2000)   # entering a guest: not modelled
    # a16: AX is the address
    gp0(run("vmrun_a16", 0, f, efer=SVME, eax=0x12341001))
    assert not assumed("vmrun_a16", 0, f, efer=SVME, eax=0x12340000)
    ok(run("stgi", 0, {"skinit"}, gif=0))                          # SKINIT alone enables STGI


def test_getsec():
    f = {"smx"}
    ud(run("getsec", 3, f))                                         # CR4.SMXE = 0
    c = concrete.compiled("getsec", frozenset(f))
    assert c.ufs == {"getsec_capabilities", "getsec_parameters"}
    caps = (1 << 3) | (1 << 6)                                      # EXITAC, PARAMETERS

    def uf(name, *args):
        return caps if name == "getsec_capabilities" else (0xAA << 64) | (0xBB << 32) | 1

    s = S.flat_state(3, cr4=SMXE, eax=0, ebx=0)
    assert c.run(s, uf).state["eax"] == caps                        # CAPABILITIES at CPL 3
    s = c.run(S.flat_state(3, cr4=SMXE, eax=6, ebx=0), uf).state    # PARAMETERS type 1
    assert (s["eax"], s["ebx"], s["ecx"]) == (1, 0xBB, 0xAA)
    assert c.run(S.flat_state(0, cr4=SMXE, eax=3), uf).vector == GP  # EXITAC outside ACM
    assert c.run(S.flat_state(0, cr4=SMXE, eax=4), uf).vector == UD  # SENTER not reported
    assert c.run(S.flat_state(0, cr4=SMXE, eax=9), uf).vector == UD


# --- SYSCALL/SYSRET, MSRs, CR4 --------------------------------------------------------------------

SCE = 1 << st.EFER_SCE


def test_syscall_sysret():
    ud(run("syscall", 3))                                           # Intel: not outside 64-bit mode
    f = {"syscall"}
    ud(run("syscall", 3, f))                                        # EFER.SCE = 0
    star = (0x1B << 48) | (0x08 << 32) | 0x5000
    s = ok(run("syscall", 3, f, efer=SCE, star=star))
    assert (s["cpl"], s["cs"], s["ss"], s["eip"]) == (0, 0x08, 0x10, 0x5000)
    assert s["ecx"] == S.flat_state(3)["eip"] + 2
    gp0(run("sysret", 3, f, efer=SCE, star=star))
    s = ok(run("sysret", 0, f, efer=SCE, star=star, ecx=0x4444))
    assert (s["cpl"], s["cs"], s["ss"], s["eip"]) == (3, 0x1B, 0x23, 0x4444)
    assert s["ss_attr"] == S.flat_state(0)["ss_attr"]               # AMD: SS attributes kept


def test_efer_and_star_msrs_exist_with_their_features():
    gp0(run("rdmsr", 0, ecx=st.MSR_EFER))
    assert ok(run("wrmsr", 0, {"svm"}, ecx=st.MSR_EFER, eax=SVME, edx=0))["efer"] == SVME
    gp0(run("wrmsr", 0, {"svm"}, ecx=st.MSR_EFER, eax=SCE, edx=0))   # SCE: not with svm alone
    s = ok(run("rdmsr", 0, {"syscall"}, ecx=st.MSR_STAR, star=0x1122334455667788))
    assert (s["edx"], s["eax"]) == (0x11223344, 0x55667788)


def test_cr4_bits_follow_the_features():
    for bit, feat in st.CR4_FEATURE_BITS.items():
        v = S.flat_state(0)["cr0"] | 1 << st.CR0_WP
        if feat != "umip":
            gp0(run("mov_cr4_r", 0, eax=1 << bit, cr0=v))
        out = run("mov_cr4_r", 0, {feat}, eax=1 << bit, cr0=v)
        if feat == "pcid":
            gp0(out)                                                # PCIDE needs IA-32e mode
        else:
            assert ok(out)["cr4"] == 1 << bit, feat
    gp0(run("mov_cr4_r", 0, {"cet_ss"}, eax=1 << st.CR4_CET))       # CET with WP = 0


def test_unknown_feature_names_are_refused():
    with pytest.raises(features.UnknownFeature):
        profiles.Profile("x", "x", frozenset({"vmxx"}))
    import dataclasses
    typo = dataclasses.replace(isa.get("nop"), semantics=lambda x: x.has("vmxx"))
    with pytest.raises(ModelError):
        typo.run(st.fresh())


# --- what the solver derives on a processor that has the features -----------------------------------

MODERN = profiles.Profile(
    "modern-test", "pentium host settings on a processor with XSAVE, RDPID, SMAP, VMX and SVM",
    frozenset({"xsave", "rdpid", "smap", "vmx", "svm", "monitor"}), cr4_set=(st.CR4_TSD,),
    cr4_clear=(st.CR4_PCE, st.CR4_PVI, st.CR4_VME))


def test_xgetbv_and_rdpid_are_violations_on_a_modern_processor():
    """XGETBV shows XCR0 and RDPID IA32_TSC_AUX at CPL 3: location sensitive, not privileged."""
    from pgvirt.verify.popek_goldberg import classify, theorem
    for name in ("xgetbv", "rdpid_r32"):
        c = classify(name, MODERN)
        assert c["location_sensitive"] is True and c["privileged"] is False, name
        assert theorem("1", [c]).verdict == "fails"
    for name in ("xsetbv", "clac", "stgi"):
        c = classify(name, MODERN)
        assert c["privileged"] is True and theorem("1", [c]).verdict == "holds", name


def test_pause_and_bound():
    s = S.flat_state(3)
    assert ok(run("pause", 3))["eip"] == s["eip"] + 2
    mem = {S.DATA + k: b for k, b in enumerate((0xF6, 0xFF, 0xFF, 0xFF, 10, 0, 0, 0))}  # -10..10
    for idx, inside in ((0, True), (10, True), (0xFFFFFFF6, True), (11, False), (0xFFFFFFF5, False)):
        out = run("bound_r32", 3, code=bytes.fromhex("6208"), ecx=idx, eax=S.DATA, mem=mem)
        assert isinstance(out, Next) == inside, idx
        if not inside:
            assert out.vector == 5


@pytest.mark.parametrize("name, eax, line", [("clzero_a32", 0x12345, 0x12340),
                                             ("clzero_a16", 0x7654ABCD, 0xAB00 + 0xC0)])
def test_clzero_zeroes_the_line_holding_ds_rax(name, eax, line):
    """AMD APM Vol. 3 CLZERO: the 64 bytes of the line holding DS:rAX (AX with a 67 prefix),
    nothing else; #UD without the feature."""
    base = 0x100000
    mem = {a: 0xA5 for a in range(base + line - 8, base + line + 72)}
    fields = dict(eax=eax, ds_base=base, mem=mem)
    ud(run(name, 3, **fields))
    out = ok(run(name, 3, {"clzero"}, **fields))
    assert out["eip"] == S.flat_state(3)["eip"] + len(isa.get(name).bytes)
    changed = {a: v for a, v in out["mem"].items() if mem.get(a) != v}
    assert changed == {base + line + k: 0 for k in range(64)}
    assert out["eax"] == eax


def test_ud0_without_modrm():
    ud(run("ud0", 0, ALL))


@pytest.mark.parametrize("name, src_reg, dst_reg, asize", [("movdir64b_a32", "eax", "esi", 32),
                                                            ("movdir64b_a16", "ebx", "esi", 16)])
def test_movdir64b_moves_64_bytes_to_es_and_checks_alignment(name, src_reg, dst_reg, asize):
    """SDM Vol. 2B MOVDIR64B: 64 bytes from DS:[m] to ES:r (r by the address size), #GP(0)
    unless r is 64-byte aligned; #UD without the feature."""
    ds, es = 0x100000, 0x200000
    src, dst = 0x1234, 0x5640
    mem = {ds + src + k: (k * 7 + 3) & 0xFF for k in range(64)}
    high = 0xABCD0000 if asize == 16 else 0      # ignored above 16-bit addressing
    fields = {src_reg: high | src, dst_reg: high | dst, "ds_base": ds, "es_base": es, "mem": mem}
    ud(run(name, 3, **fields))
    out = ok(run(name, 3, {"movdir64b"}, **fields))
    changed = {a: v for a, v in out["mem"].items() if mem.get(a) != v}
    assert changed == {es + dst + k: (k * 7 + 3) & 0xFF for k in range(64)}
    gp0(run(name, 3, {"movdir64b"}, **{**fields, dst_reg: high | (dst + 8)}))
