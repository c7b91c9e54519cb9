"""Where Bochs 2.7's VMX (``tigerlake``, the test kernel's VMX mode) and the vtx profile's model
part: what the replay of the exit conditions (``emulator.vmxreplay``) found.

Each entry: what it affects, the SDM, what Bochs does, a reproduction on ``BochsVMX`` (every
entry's cases in one boot, ``base.present_all``) and an ``explains`` predicate on the replay's
observation (``o.model``: the model's Fault or Exit or None, ``o.emu``: Bochs's Fault, Exit or
Next).  ``kind`` "semantics" is Bochs's, "api" the harness's; a model bug a replay finds is not
an entry but a ``MODEL_BUGS`` row until its definition in model/isa is fixed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from pgvirt.model import concrete, isa, profiles, vmx
from pgvirt.model import state as st
from pgvirt.model.outcome import GP, UD, Exit, Fault, Next

from .. import states as S
from ..oracles.protocol import model_case
from .base import Deviation, Repro

def state(cpl: int = 0, **fields) -> dict:
    """``states.flat_state`` as VM entry takes it (CR0.NE, CR4.VMXE set: SDM Vol. 3C 26.3.1.1)."""
    s = S.flat_state(cpl, **fields)
    s["cr0"] |= vmx.CR0_NE
    s["cr4"] |= vmx.CR4_VMXE
    return s


def case(form: str, s: dict, controls=None, code: bytes | None = None):
    """The VMX Case of ``form`` on ``s`` under ``controls`` (default: the vtx profile's, without
    "enable user wait and pause", which no Bochs CPU model can set: ``Caps.fit``)."""
    p = profiles.get("vtx")
    c = controls if controls is not None else p.vm.without("enable_user_wait_and_pause")
    f = isa.get(form)
    comp = concrete.compiled(f, p.features, code or f.bytes, c)
    out = replace(model_case(f, s, comp.evaluate(s)), controls=c)
    return replace(out, code=bytes(code)) if code else out


def _exit(r, reason: str | None = None) -> bool:
    return isinstance(r.outcome, Exit) and (reason is None or r.outcome.exit_reason == reason)


def _fault(r, vector: int) -> bool:
    return isinstance(r.outcome, Fault) and r.outcome.vector == vector


def _completes(r) -> bool:
    return isinstance(r.outcome, Next)


# --- reproductions -------------------------------------------------------------------------------
def _mtf_cases():
    s = state(0)
    at = s["cs_base"] + s["eip"]
    for k in range(1, 8):           # NOPs after the NOP: an MTF exit would stop at the first
        s["mem"][at + k] = 0x90
    c = case("nop", s)              # in the footprint, so the harness leaves them (no INT1 pad)
    return [replace(c, mem=c.mem | {at + k for k in range(1, 8)}, landings=())]


def _mtf_holds(rs):
    return _completes(rs[0]) and rs[0].outcome.state["eip"] == state(0)["eip"] + 8


def _priv_cases():
    return [case("xsetbv", state(3, ecx=0, eax=1, cr4=1 << st.CR4_OSXSAVE)), case("invpcid", state(3))]


# --- what each explains (o: base.Observation with Exit allowed on either side) --------------------
def _x_mtf(o, d):
    return False        # the harness catches completions at the INT1 fill: no difference results


def _x_priv(o, d):
    return (o.name in ("xsetbv", "invpcid") and o.cpl > 0 and isinstance(o.model, Fault)
            and o.model.vector == GP and isinstance(o.emu, Exit) and o.emu.exit_reason == o.name)


def _vendor_cases():
    return [case("svdc_m80_sreg", state(0))]            # 0F 78: VMREAD on an Intel CPU with VMX


def _x_vendor(o, d):
    """The model's #UD for another vendor's instruction whose bytes Bochs's Intel CPU runs as one
    of its own (0F 78/79 as VMREAD/VMWRITE, which exit; UMOV's 0F 10-13 and EMMI's as SSE/MMX)."""
    return (o.form.theme == "vendor" and isinstance(o.model, Fault) and o.model.vector == UD
            and "the processor lacks" in o.model.reason and not (isinstance(o.emu, Fault) and o.emu.vector == UD))


_LACKS = ("clzero_a32", "clzero_a16", "movdir64b_a32", "movdir64b_a16")


def _lacks_cases():
    return [case("clzero_a32", state(0, eax=0x6000))]


def _x_lacks(o, d):
    return o.name in _LACKS and isinstance(o.emu, Fault) and o.emu.vector == UD \
        and not (isinstance(o.model, Fault) and o.model.vector == UD)


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "mtf-no-exit", "every guest instruction that completes, under 'monitor trap flag'",
        "an MTF VM exit (reason 37) on the instruction boundary after the instruction (SDM Vol. 3C "
        "25.5.2)",
        "no MTF exit: the guest runs on (the harness catches at the INT1 bytes instead)",
        Repro(_mtf_cases, _mtf_holds), kind="api", explains=_x_mtf),
    Deviation(
        "privilege-fault-after-exit", "XSETBV and INVPCID at CPL > 0 in VMX non-root operation",
        "faults based on privilege level have priority over VM exits (SDM Vol. 3C 25.1.1): #GP(0)",
        "the VM exit (xsetbv, invpcid) comes first",
        Repro(_priv_cases, lambda rs: _exit(rs[0], "xsetbv") and _exit(rs[1], "invpcid")),
        explains=_x_priv),
    Deviation(
        "vendor-opcodes-reused", "other vendors' instructions (Cyrix SMM/EMMI, UMOV, ...)",
        "#UD: the vtx profile's processor does not implement them (SDM Vol. 2A 2.4)",
        "Bochs's Intel CPU gives the bytes meanings of its own: SVDC/RSDC's 0F 78/79 are VMREAD/"
        "VMWRITE (a VM exit in non-root operation), UMOV's 0F 10-13 and EMMI's SSE/MMX",
        Repro(_vendor_cases, lambda rs: _exit(rs[0], "vmread")), explains=_x_vendor),
    Deviation(
        "cpu-lacks-features", "CLZERO and MOVDIR64B",
        "they run: the vtx profile's processor has the features (profiles.vtx: umip's and VMX)",
        "#UD: Bochs's tigerlake does not report CLZERO (an AMD instruction) or MOVDIR64B",
        Repro(_lacks_cases, lambda rs: _fault(rs[0], UD)), kind="api", explains=_x_lacks),
)

BY_ID = {d.id: d for d in DEVIATIONS}
assert len(BY_ID) == len(DEVIATIONS), "duplicate deviation id"
# Model bugs a replay finds: id -> (the forms, a predicate on the model's and Bochs's results).
# The first replay's three (MOV DR's exit after its CPL/DR4-5/GD checks, task-switch exits
# before the new TSS's checks, ENCLV exiting without SGX) are fixed in their definitions;
# tests/test_oracles_vmx.py keeps their cases as regressions.
MODEL_BUGS: dict[str, tuple[tuple[str, ...], Callable[[Any, Any], bool]]] = {}


def model_bug(form: str, model, emu) -> str | None:
    """The id of the model bug above that a disagreement of ``form`` is, or None."""
    return next((k for k, (forms, hit) in MODEL_BUGS.items() if form in forms and hit(model, emu)),
                None)
