"""A derived form's user-mode and relocated twins are its run on s with the twin's terms
substituted (``Outcome.substituted``, used by the classifier): checked here to be the very
formulas running the definition again gives, by the solver, on forms of every family."""

import pytest
import z3

from pgvirt.model import profiles, state as st
from pgvirt.model.derived import registry
from pgvirt.verify.popek_goldberg import frame


def _sample(step: int = 97) -> list[str]:
    names = registry.derived_names()
    # every 97th, and x87 forms whose twins differ (CR0.EM/TS, the pointers FLDENV/FRSTOR load)
    return list(names[::step]) + ["fdiv_m64fp", "fldenv_m28byte", "frstor_m108byte", "cmovs_r32_rm32"]


def _equivalent(a, b) -> bool:
    s = z3.Solver()
    s.set("timeout", 20_000)
    s.add(a != b)
    return s.check() == z3.unsat


@pytest.mark.parametrize("profile", ["pentium", "umip"])
def test_substituted_twins_are_the_runs_on_the_twins(profile):
    p = profiles.get(profile)
    fr = frame(p)
    for name in _sample():
        f = registry.get(name)
        o = f.run(fr.s, features=p.features)
        for twin, sub in ((fr.u, fr.to_u), (fr.r, fr.to_r)):
            got, want = o.substituted(twin, sub), f.run(twin, features=p.features)
            assert got.pre is twin and got.effects == want.effects, name
            assert _equivalent(got.faults, want.faults), name
            assert _equivalent(got.assumed, want.assumed), name
            runs = z3.Not(want.faults)
            assert _equivalent(z3.If(want.faults, got.vector, 0), z3.If(want.faults, want.vector, 0)), name
            for k in want.effects:
                x, y = got.post[k], want.post[k]
                assert _equivalent(z3.If(runs, x, twin[k]), z3.If(runs, y, twin[k])), (name, k)
            for (arr, a), (arr2, b) in zip(got.stores, want.stores):
                assert arr == arr2 and _equivalent(a, b), name
            assert len(got.stores) == len(want.stores) and len(got.loads) == len(want.loads), name


def test_substitution_replaces_only_constants():
    s = st.fresh("q")
    bent = s.replace(eax=s.eax + 1)
    with pytest.raises(ValueError):
        st.substitution(bent, s)
    sub = st.substitution(s, s.replace(ebx=s.ecx))
    assert sub(s.ebx + s.eax).eq(s.ecx + s.eax)
