"""Derived forms under Popek-Goldberg: ordinary x87/SSE/AVX forms are innocuous when the monitor
passes the guest's FPU/SIMD controls through, and location sensitive when they are relocation."""

from __future__ import annotations

import dataclasses

import pytest

from pgvirt.model import profiles, state as st
from pgvirt.model.derived import registry, table
from pgvirt.verify.popek_goldberg import classify

ALL = frozenset(table.features()) | {"xsave"}


def with_all_features(p: profiles.Profile) -> profiles.Profile:
    return dataclasses.replace(p, name=f"{p.name}+all", features=p.features | ALL)


PENTIUM, UMIP = with_all_features(profiles.PENTIUM), with_all_features(profiles.UMIP)
SIMD = ["addps_xmm_xmmm128", "paddb_mm_mmm64", "vex_vaddps_ymm_ymm_ymmm256",
        "evex_vaddps_zmm_k1z_zmm_zmmm512b32_er", "movaps_xmm_xmmm128", "ldmxcsr_m32",
        "fnstcw_m2byte", "emms"]


@pytest.mark.parametrize("profile", [PENTIUM, UMIP], ids=lambda p: p.name)
@pytest.mark.parametrize("name", SIMD + ["add_rm8_r8", "cmovle_r32_rm32", "xadd_rm32_r32",
                                         "cmpxchg8b_m64", "imul_r32_rm32_imm8", "bswap_r32"])
def test_ordinary_forms_are_innocuous(name, profile):
    c = classify(name, profile)
    assert c["innocuous"] is True, (name, {k: a.note for k, a in c.answers.items()})
    assert c["privileged"] is False


def _ts_as_relocation(p: profiles.Profile) -> profiles.Profile:
    ts = 1 << st.CR0_TS
    through = tuple((f, m & ~ts if f == "cr0" else m) for f, m in p.passthrough)
    return dataclasses.replace(p, name=f"{p.name}-ts-relocated", passthrough=through)


@pytest.mark.parametrize("name", SIMD[:5])
def test_ts_as_relocation_makes_simd_forms_location_sensitive(name):
    """If CR0.TS were relocation, one state of a location pair would take #NM and the other not."""
    c = classify(name, _ts_as_relocation(PENTIUM))
    assert c["location_sensitive"] is True
    w = c.answers["location_sensitive"].witness
    ts = [(w[k]["cr0"] >> st.CR0_TS) & 1 for k in ("a", "b")]
    assert ts[0] != ts[1]


def test_osfxsr_as_relocation_makes_sse_location_sensitive():
    m = 1 << st.CR4_OSFXSR
    p = dataclasses.replace(PENTIUM, name="pentium-osfxsr-relocated", passthrough=tuple(
        (f, v & ~m if f == "cr4" else v) for f, v in PENTIUM.passthrough))
    assert classify("addps_xmm_xmmm128", p)["location_sensitive"] is True


def test_imposed_am_keeps_misaligned_accesses_innocuous_and_passed_through_am_does_not():
    """#AC needs CPL 3: with the guest's CR0.AM in the deprivileged run, a misaligned access
    with EFLAGS.AC = 1 traps there and not natively - mode sensitive."""
    name = "movbe_r32_m32"      # a derived form whose operand is memory (4 bytes)
    assert classify(name, PENTIUM)["sensitive"] is False
    p = dataclasses.replace(PENTIUM, name="pentium-am-guest", cr0_clear=(),
                            passthrough=PENTIUM.passthrough + (("cr0", 1 << st.CR0_AM),))
    c = classify(name, p)
    assert c["mode_sensitive"] is True


def test_x87_forms_record_cs_and_so_the_cpl():
    """A non-control x87 instruction stores CS (RPL = CPL) in FCS (SDM Vol. 1 8.1.8): the
    solver finds it mode sensitive, as PUSH CS."""
    c = classify("fadd_st0_sti", PENTIUM)
    assert c["mode_sensitive"] is True and c["privileged"] is False
    assert c["location_sensitive"] is False
    w = c.answers["mode_sensitive"].witness
    assert w["native"]["cs"] & 3 == 0 and w["deprivileged"]["cs"] & 3 == 3
    # a control instruction leaves the pointers alone: innocuous
    assert classify("fnstcw_m2byte", PENTIUM)["innocuous"] is True


def test_missing_feature_is_ud_in_every_mode():
    bare = dataclasses.replace(profiles.PENTIUM, name="pentium-bare", features=frozenset())
    c = classify("vex_vaddps_ymm_ymm_ymmm256", bare)
    assert c["privileged"] is False and c["sensitive"] is False
    assert c.answers["privileged"].note == "traps in every mode"


def test_no_refused_code_is_derived():
    derived = set(registry.derived_codes())
    for code, rec in table.codes().items():
        if not rec["decision"]["derive"]:
            assert code not in derived
    for code in table.hand_codes():
        assert code not in derived


def test_registry_lookup_and_iteration():
    assert registry.get("sgdt_m").name == "sgdt_m"
    f = registry.get("addps_xmm_xmmm128")
    assert f.code == "ADDPS_XMM_XMMM128" and registry.is_derived(f.name)
    with pytest.raises(KeyError):
        registry.get("no_such_form")
    names = registry.names()
    assert len(names) == len(set(names)) > 3500


def _outcome_text(name: str) -> str:
    f = registry.get(name)
    o = f.run(st.fresh("s"), features=PENTIUM.features)
    terms = [c.fails for c in o.checks] + [o.post[n] for n in o.effects] + \
        [a for _, a in o.loads + o.stores] + [a for a, _ in o.assumptions]
    text = "\n".join(t.sexpr() for t in terms) + "\n" + "\n".join(c.reason for c in o.checks)
    # sexpr wraps lines by width, which the names change: compare token by token
    return " ".join(text.replace(f.code, "CODE").split()) + repr(o.effects)


def test_forms_of_one_shape_have_alpha_equivalent_outcomes():
    """The classification cache shares one classification among the forms of a shape: their
    outcomes must be the same terms up to the names of their uninterpreted functions."""
    from collections import defaultdict

    from pgvirt.model.derived import forms as dforms
    groups = defaultdict(list)
    for code in registry.derived_codes():
        groups[dforms.shape(code, PENTIUM.features)].append(dforms.form_name(code))
    multi = [g for g in groups.values() if len(g) > 1]
    assert len(multi) > 100
    for g in multi[::7]:
        first = _outcome_text(g[0])
        for other in g[1:4]:
            assert _outcome_text(other) == first, (g[0], other)


def test_forms_of_different_shapes_differ():
    a, b = _outcome_text("add_rm8_r8"), _outcome_text("adc_rm8_r8")
    assert a != b


def test_code_of_names_the_decoders_code_for_every_form():
    assert registry.code_of("sgdt_m") == "SGDT_M1632"
    assert registry.code_of("addps_xmm_xmmm128") == "ADDPS_XMM_XMMM128"
    assert registry.code_of("no_such_form") is None


def test_a_processor_that_zeroes_fcs_fds_makes_x87_forms_innocuous():
    """With FCS/FDS deprecated (CPUID.(EAX=07H,ECX=0):EBX[13]) nothing an x87 instruction
    leaves shows the CPL: the same forms are innocuous."""
    p = dataclasses.replace(PENTIUM, name="pentium-zero-fcs-fds",
                            features=PENTIUM.features | {"zero_fcs_fds"})
    for name in ("fadd_st0_sti", "fld_m80fp", "fistp_m64int"):
        assert classify(name, p)["innocuous"] is True, name
        assert classify(name, PENTIUM)["mode_sensitive"] is True, name
