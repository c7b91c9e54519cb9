"""Where Bochs 2.7's SVM (``ryzen``, the test kernel's SVM mode) and the svm profile's model part:
what the replay of the intercepts (``emulator.vmxreplay`` with ``BochsSVM``) found so far.

Each entry: what it affects, the APM, what Bochs does, a reproduction on ``BochsSVM`` and an
``explains`` predicate on the replay's observation, as in ``bochs_vmx``.
"""

from __future__ import annotations

from dataclasses import replace

from pgvirt.model import concrete, isa, profiles, svm
from pgvirt.model.outcome import Next

from .. import states as S
from ..oracles.protocol import model_case
from .base import Deviation, Repro


def state(cpl: int = 0, **fields) -> dict:
    """``states.flat_state`` as VMRUN takes it (EFER.SVME set: APM Vol. 2 15.5.1)."""
    s = S.flat_state(cpl, **fields)
    s["efer"] |= svm.EFER_SVME
    return s


def case(form: str, s: dict, controls=None):
    p = profiles.get("svm")
    c = controls if controls is not None else p.vm
    f = isa.get(form)
    comp = concrete.compiled(f, p.features, f.bytes, c)
    return replace(model_case(f, s, comp.evaluate(s)), controls=c)


def _cr2_cases():
    return [case("nop", state(0, cr2=0x1234))]


def _x_cr2(o, d):
    return d.kind == "reg" and d.key == "cr2" and d.emu == 0


def _cr4_cases():
    return [case("nop", state(0, cr4=1 << k)) for k in (11, 22, 23)]


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "svm-cr2-not-switched", "every guest run (CR2 as the guest leaves it)",
        "VMRUN loads CR2 from the VMCB save area and #VMEXIT saves it there (APM Vol. 2 15.5.1, "
        "15.6, Table B-2 offset 640h)",
        "the VMCB's CR2 reads 0 after #VMEXIT whatever the guest's was",
        Repro(_cr2_cases, lambda rs: isinstance(rs[0].outcome, Next) and rs[0].outcome.state["cr2"] == 0),
        explains=_x_cr2),
    Deviation(
        "cpu-lacks-cr4-bits", "guest states with CR4.UMIP, PKE or CET",
        "they run: the svm profile's processor is the umip one with SVM (profiles.svm)",
        "Bochs's ryzen lacks the three: VMRUN's consistency check refuses the guest CR4 "
        "(VMEXIT_INVALID, 'Guest CR4 reserved bits set'); the replay draws states without them",
        Repro(_cr4_cases, lambda rs: all("CR4 reserved bits" in r.refused for r in rs)), kind="api"),
)

BY_ID = {d.id: d for d in DEVIATIONS}
