"""VT-x claims replayed on Bochs's VMX (``oracles.bochs.BochsVMX``): the forms' VM-exit conditions
under the vtx profile's controls, and the controls table's witnesses.

``replay_forms``: for each form, concrete non-root states are drawn (``guest_state``), the
compiled model runs each under the controls (``concrete.compiled(..., vm=controls)``) and Bochs
runs it as the guest.  A state agrees when both exit with the same basic exit reason (and the
qualification bits the model defines, ``QUAL_MASKS``), or both raise the same fault, or both
complete with the same observed state (``crosscheck.compare_result``).  So a form the model makes
exit must exit on Bochs for the same reason, and a state the model runs without an exit must
not exit.

``replay_witnesses``: each witness of ``pgvirt controls`` (a non-root state on which a form,
with one control switched off, does not exit where it is sensitive) runs twice: with the
control off it must not exit (the hole is real on Bochs), with the default controls it must
exit as the model says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from pgvirt.model import concrete, isa, profiles, vmx
from pgvirt.model import state as st
from pgvirt.model.outcome import Exit, Fault, Next

from . import strategies
from .crosscheck import compare_result, describe, io_dependent
from .oracles.protocol import model_case

# The exit-qualification bits the model's definitions give (SDM Vol. 3C 27.2.1): I/O - the port
# and the access size (Table 27-5; direction, string and REP are not modelled); control-register
# accesses - the CR number and access type (Table 27-3; the register is not modelled).
QUAL_MASKS = {"io": 0xFFFF0007, "cr_access": 0x3F}


def guest_state(rng: random.Random, form, profile: profiles.Profile) -> dict:
    """A non-root state for ``form``: a state of the profile's processor (``strategies``, the
    umip generator: the vtx processor is the umip one with VMX) as VM entry requires it - CR0.NE
    and CR4.VMXE set (SDM Vol. 3C 26.3.1.1, fixed bits), CR4.PCIDE clear (26.3.1.1: 0 unless the
    guest is in IA-32e mode)."""
    s = strategies.generate(strategies.RandomDraw(rng), form, profiles.get("umip"))
    s["cr0"] |= vmx.CR0_NE
    s["cr4"] = (s["cr4"] | vmx.CR4_VMXE) & ~(1 << st.CR4_PCIDE)
    return s


def short(o) -> str:
    if isinstance(o, Exit):
        q = "" if o.qualification is None else f"({o.qualification:#x})"
        return f"exit {o.exit_reason}{q}"
    if o is None:
        return "-"
    return describe(o)


def compare(form, state: Mapping, comp, run, res) -> list[str]:
    """The differences between the model's ``run`` and the oracle's ``res`` (one line each)."""
    mine, got = run.outcome(), res.outcome
    if isinstance(mine, Exit) or isinstance(got, Exit):
        if not (isinstance(mine, Exit) and isinstance(got, Exit)):
            return [f"model: {short(mine)}; bochs: {short(got)}"]
        if mine.code != got.code:
            return [f"exit reason: model {mine.exit_reason} ({mine.code}), bochs {got.exit_reason} ({got.code})"]
        mask = QUAL_MASKS.get(mine.exit_reason)
        if mine.exit_reason == "exception" and mine.qualification != got.qualification:
            return [f"exception exit: model vector {mine.qualification}, bochs {got.qualification}"]
        if mask and mine.qualification is not None and got.qualification is not None \
                and (mine.qualification ^ got.qualification) & mask:
            return [f"exit qualification: model {mine.qualification:#x}, bochs {got.qualification:#x} "
                    f"(bits {mask:#x} compared)"]
        return []
    return [str(d) for d in compare_result(form, state, run, res, io_dependent(comp, state, run), "Bochs")]


@dataclass
class FormResult:
    form: str
    may_exit: bool                  # the definition builds an exit condition under the controls
    agree: int = 0
    disagree: list = field(default_factory=list)       # (state, model, bochs, differences)
    refused: list = field(default_factory=list)         # reasons
    errors: list = field(default_factory=list)
    exits: int = 0                  # states the model makes exit (and Bochs agreed)
    no_exit: int = 0                # states the model runs without an exit (and Bochs agreed)

    def as_json(self) -> dict:
        return {"form": self.form, "may_exit": self.may_exit, "agree": self.agree,
                "exits_agreed": self.exits, "no_exit_agreed": self.no_exit,
                "disagree": [{"model": m, "bochs": b, "differences": d} for _, m, b, d in self.disagree],
                "refused": len(self.refused), "errors": self.errors}


def _cases(names: Sequence[str], samples: int, seed: int, controls, profile):
    out = []
    for name in names:
        f = isa.get(name)
        comp = concrete.compiled(f, profile.features, f.bytes, controls)
        rng = random.Random(f"{seed}:{name}")
        got = tries = 0
        while got < samples and tries < 20 * samples:
            tries += 1
            s = guest_state(rng, f, profile)
            run = comp.evaluate(s)
            # a memory trap (an access beyond its segment, ...) is outside the model (README):
            # such states are not compared, as in the full-system cross-check
            if not run.assumed or not run.in_segments:
                continue
            out.append((name, f, comp, s, run, replace(model_case(f, s, run), controls=controls)))
            got += 1
    return out


def replay_forms(oracle, names: Sequence[str], samples: int = 20, seed: int = 0, controls=None,
                 profile: profiles.Profile | None = None) -> list[FormResult]:
    """Each form of ``names`` on ``samples`` drawn non-root states, model against ``oracle``."""
    profile = profile or profiles.get("vtx")
    controls = controls if controls is not None else profile.vm
    items = _cases(names, samples, seed, controls, profile)
    results = oracle.run([it[5] for it in items])
    out: dict[str, FormResult] = {}
    for (name, f, comp, s, run, _), res in zip(items, results):
        fr = out.get(name)
        if fr is None:
            fr = out[name] = FormResult(name, comp.may_exit)
        if res.error:
            fr.errors.append(res.error)
            continue
        if res.outcome is None:
            fr.refused.append(res.refused)
            continue
        diffs = compare(f, s, comp, run, res)
        if diffs:
            fr.disagree.append((s, short(run.outcome()), short(res.outcome), diffs))
        else:
            fr.agree += 1
            if isinstance(run.outcome(), Exit):
                fr.exits += 1
            elif not isinstance(run.outcome(), Fault):
                fr.no_exit += 1
    return [out.get(n) or FormResult(n, False) for n in names]


def exiting_forms(controls=None, profile: profiles.Profile | None = None) -> list[str]:
    """The hand-written forms whose definitions build a VM-exit condition under ``controls``
    (the "root-mode privileged" ones the profile makes exit)."""
    profile = profile or profiles.get("vtx")
    controls = controls if controls is not None else profile.vm
    return [f.name for f in isa.FORMS
            if concrete.compiled(f, profile.features, f.bytes, controls).may_exit]


@dataclass
class WitnessResult:
    control: str
    form: str
    off: str            # Bochs's outcome with the control off
    on: str             # ... with the default controls
    model_off: str
    model_on: str
    confirmed: bool
    why: str = ""

    def as_json(self) -> dict:
        return dict(self.__dict__)


def witness_state(w: Mapping) -> dict:
    """The non-root state of a controls witness (``verify.controls``: its ``guest`` state)."""
    from .replay import _normalise
    s = w.get("guest") or w.get("states", {}).get("guest")
    if s is None:
        raise ValueError("the witness has no guest state")
    return _normalise(s, "witness guest state")


def replay_witnesses(oracle, rows: Sequence[Mapping], profile: profiles.Profile | None = None
                     ) -> list[WitnessResult]:
    """Each necessary control's witness, with the control off and with the default controls."""
    profile = profile or profiles.get("vtx")
    base = profile.vm
    items, cases = [], []
    for row in rows:
        if row.get("verdict") != "necessary" or not row.get("witness"):
            continue
        f = isa.get(row["form"])
        s = witness_state(row["witness"])
        off = base.without(row["control"])
        for ctl in (off, base):
            comp = concrete.compiled(f, profile.features, f.bytes, ctl)
            run = comp.evaluate(s)
            cases.append(replace(model_case(f, s, run), controls=ctl))
        items.append((row, f, s, off))
    results = oracle.run(cases)
    out = []
    for k, (row, f, s, off) in enumerate(items):
        runs = []
        for ctl, res in ((off, results[2 * k]), (base, results[2 * k + 1])):
            comp = concrete.compiled(f, profile.features, f.bytes, ctl)
            runs.append((comp, comp.evaluate(s), res))
        (c_off, m_off, r_off), (c_on, m_on, r_on) = runs
        why = next((r.refused or r.error for r in (r_off, r_on) if r.outcome is None), "")
        ok = False
        if not why:
            d_off = compare(f, s, c_off, m_off, r_off)
            d_on = compare(f, s, c_on, m_on, r_on)
            ok = not d_off and not d_on and not isinstance(r_off.outcome, Exit)
            if not ok:
                why = "; ".join([f"{row['control']} off: {d}" for d in d_off]
                                + [f"default: {d}" for d in d_on]) or "bochs exits with the control off"
        out.append(WitnessResult(row["control"], f.name, short(r_off.outcome), short(r_on.outcome),
                                 short(m_off.outcome()), short(m_on.outcome()), ok, why))
    return out
