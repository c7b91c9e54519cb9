"""VT-x claims replayed on Bochs's VMX (``oracles.bochs.BochsVMX``): the forms' VM-exit conditions
under the vtx profile's controls, and the controls table's witnesses.  The same functions run the
svm profile on Bochs's SVM (``oracles.bochs.BochsSVM``, the intercepts of ``model/svm.py``).

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

from pgvirt.model import concrete, isa, profiles, svm, vmx
from pgvirt.model import state as st
from pgvirt.model.outcome import Exit, Fault, Next

from . import strategies
from .crosscheck import compare_result, cpuid_uf, describe, io_dependent
from .oracles.protocol import model_case

# The exit-qualification bits the model's definitions give (SDM Vol. 3C 27.2.1): I/O - the port
# and the access size (Table 27-5; direction, string and REP are not modelled); control-register
# accesses - the CR number and access type (Table 27-3; the register is not modelled).
QUAL_MASKS = {"io": 0xFFFF0007, "cr_access": 0x3F}
# SVM's IOIO EXITINFO1 holds the port in bits 31:16 (APM Vol. 2 15.10.2); its size bits are
# one-hot (SZ8/16/32), not the model's size - 1
SVM_QUAL_MASKS = {"ioio": 0xFFFF0000}
_CPUID: dict = {}           # Bochs's CPUID answers in this process, (EAX, ECX) -> registers


def guest_state(rng: random.Random, form, profile: profiles.Profile) -> dict:
    """A non-root state for ``form``: a state of the profile's processor (``strategies``, the
    umip generator: the vtx processor is the umip one with VMX) as VM entry requires it - CR0.NE
    and CR4.VMXE set (SDM Vol. 3C 26.3.1.1, fixed bits), CR4.PCIDE clear (26.3.1.1: 0 unless the
    guest is in IA-32e mode) - ``profiles.hardware.entry_ok``, which the generator does not read."""
    s = strategies.generate(strategies.RandomDraw(rng), form, profiles.get("umip"))
    if isinstance(profile.vm, svm.Intercepts):
        s["efer"] |= svm.EFER_SVME          # guest mode needs EFER.SVME (APM Vol. 2 15.5.1)
        s["cr4"] &= ~(1 << st.CR4_PCIDE)
        return s
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


@dataclass
class Verdict:
    """One state: the differences (one line each), the Bochs entries that explain them, the model
    bug they are (``deviations.bochs_vmx.MODEL_BUGS``), and those nothing accounts for."""

    differences: list
    explained_by: list
    model_bug: str | None
    unexplained: list

    @property
    def agrees(self) -> bool:
        return not self.differences


def compare(form, state: Mapping, comp, run, res) -> Verdict:
    """The model's ``run`` against the oracle's ``res``: exits by basic reason (and the
    qualification bits ``QUAL_MASKS`` names), faults by vector and error code, completions on
    every observed field; differences explained by the Bochs tables (``bochs-vmx``, then the
    protected-mode ``bochs`` one for the instruction's own semantics)."""
    from . import deviations as D
    from .deviations import bochs_vmx
    mine, got = run.outcome(), res.outcome
    diffs: list = []
    if isinstance(mine, Exit) or isinstance(got, Exit):
        if not (isinstance(mine, Exit) and isinstance(got, Exit)):
            diffs = [D.Diff("outcome", "exit", short(mine), short(got), "Bochs")]
        elif mine.code != got.code:
            diffs = [D.Diff("outcome", "exit_reason", mine.exit_reason, got.exit_reason, "Bochs")]
        elif mine.exit_reason == "exception" and mine.qualification != got.qualification:
            diffs = [D.Diff("outcome", "exception vector", mine.qualification, got.qualification, "Bochs")]
        else:
            mask = QUAL_MASKS.get(mine.exit_reason) if mine.kind == "vmx" else SVM_QUAL_MASKS.get(mine.exit_reason)
            if mask and mine.qualification is not None and got.qualification is not None \
                    and (mine.qualification ^ got.qualification) & mask:
                diffs = [D.Diff("outcome", "qualification", mine.qualification & mask,
                                got.qualification & mask, "Bochs")]
    else:
        if comp.ufs & {"cpuid", "host_cpuid"} and isinstance(got, Next):
            # CPUID's answer is the processor's identity, an uninterpreted function in the model:
            # the model is run on Bochs's answer, as the cross-check does (the rest is compared)
            uf = cpuid_uf(_CPUID, state, got)
            if uf is not None:
                run = comp.evaluate(state, uf)
        diffs = compare_result(form, state, run, res, io_dependent(comp, state, run), "Bochs")
    if not diffs:
        return Verdict([], [], None, [])
    bug = None if isinstance(comp.vm, svm.Intercepts) else bochs_vmx.model_bug(form.name, mine, got)
    if bug:
        return Verdict([str(d) for d in diffs], [], bug, [])
    fault = mine if isinstance(mine, Fault) else None
    obs = D.Observation(form, state, mine if isinstance(mine, (Fault, Exit)) else None,
                        None if fault or isinstance(mine, Exit) else run.post, got, list(diffs),
                        {a for arr, a in run.stores if arr == "mem"})
    used, left = D.base.explain(D.table("bochs-svm" if isinstance(mine, Exit) and mine.kind == "svm"
                                        or isinstance(comp.vm, svm.Intercepts) else "bochs-vmx"), obs)
    if left and not isinstance(got, Exit):
        # Bochs's own CPU semantics (a fault it raises where the model exits or completes)
        obs.diffs, obs.model = left, fault
        more, left = D.base.explain(D.table("bochs"), obs)
        used += more
    return Verdict([str(d) for d in diffs], used, None, [str(d) for d in left])


@dataclass
class FormResult:
    form: str
    may_exit: bool                  # the definition builds an exit condition under the controls
    agree: int = 0
    disagree: list = field(default_factory=list)       # (state, model, bochs, Verdict)
    refused: list = field(default_factory=list)         # reasons
    errors: list = field(default_factory=list)
    exits: int = 0                  # states the model makes exit (and Bochs agreed)
    no_exit: int = 0                # states the model runs without an exit (and Bochs agreed)

    def as_json(self) -> dict:
        return {"form": self.form, "may_exit": self.may_exit, "agree": self.agree,
                "exits_agreed": self.exits, "no_exit_agreed": self.no_exit,
                "explained": sum(1 for *_, v in self.disagree if v.explained_by and not v.unexplained),
                "model_bugs": sum(1 for *_, v in self.disagree if v.model_bug),
                "unexplained": sum(1 for *_, v in self.disagree if v.unexplained),
                "disagree": [{"model": m, "bochs": b, "differences": v.differences,
                              "explained_by": v.explained_by, "model_bug": v.model_bug,
                              "unexplained": v.unexplained, "state": s}
                             for s, m, b, v in self.disagree],
                "refused": len(self.refused), "errors": self.errors}


def _cases(names: Sequence[str], samples: int, seed: int, controls, profile, cr4_clear: int = 0):
    out = []
    for name in names:
        f = isa.get(name)
        comp = concrete.compiled(f, profile.features, f.bytes, controls)
        rng = random.Random(f"{seed}:{name}")
        got = tries = 0
        while got < samples and tries < 20 * samples:
            tries += 1
            s = guest_state(rng, f, profile)
            s["cr4"] &= ~cr4_clear
            run = comp.evaluate(s)
            # a memory trap (an access beyond its segment, ...) is outside the model (README):
            # such states are not compared, as in the full-system cross-check
            if not run.assumed or not run.in_segments:
                continue
            out.append((name, f, comp, s, run, replace(model_case(f, s, run), controls=controls)))
            got += 1
    return out


def fitted(oracle, controls):
    """``controls`` as the oracle's CPU can hold them (``Caps.fit``; SVM's intercepts as given)."""
    caps = getattr(oracle, "caps", None)
    if caps is None or not isinstance(controls, vmx.Controls):
        return controls
    return caps().fit(controls)[0]


def replay_forms(oracle, names: Sequence[str], samples: int = 20, seed: int = 0, controls=None,
                 profile: profiles.Profile | None = None) -> list[FormResult]:
    """Each form of ``names`` on ``samples`` drawn non-root states, model against ``oracle``."""
    profile = profile or profiles.get("vtx")
    controls = fitted(oracle, controls if controls is not None else profile.vm)
    # CR4 bits the oracle's CPU lacks (its VMRUN refuses them: bochs-svm cpu-lacks-cr4-bits)
    # stay clear in the drawn states rather than refuse half of them
    items = _cases(names, samples, seed, controls, profile, getattr(oracle, "cr4_lacks", 0))
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
        v = compare(f, s, comp, run, res)
        if not v.agrees:
            fr.disagree.append((s, short(run.outcome()), short(res.outcome), v))
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
    """``status``: confirmed (Bochs agrees with the model on both runs, and does not exit with
    the control off), emulator-deviation (the same, up to entries of the Bochs tables), mismatch,
    or not-run (the harness or VM entry refused the state; ``why`` says which)."""

    control: str
    form: str
    off: str            # Bochs's outcome with the control off
    on: str             # ... with the default controls
    model_off: str
    model_on: str
    status: str
    why: str = ""

    @property
    def confirmed(self) -> bool:
        return self.status == "confirmed"

    def as_json(self) -> dict:
        return dict(self.__dict__)


def witness_state(w: Mapping) -> dict:
    """The non-root state of a controls witness (``verify.controls``: its ``guest`` state)."""
    from .replay import _normalise
    s = w.get("guest") or w.get("states", {}).get("guest")
    if s is None:
        raise ValueError("the witness has no guest state")
    out = _normalise(s, "witness guest state")
    # a null data selector's (and a null LDTR's) cache is unusable in the VMCS whatever it holds
    # (SDM Vol. 3C 24.4.1): cleared, as the harness's validity rules want; the model runs on
    # the same normalised state, so the comparison is unchanged in kind
    for seg in ("es", "ds", "fs", "gs"):
        if out.get(seg, 0) & 0xFFFC == 0:
            out[f"{seg}_base"] = out[f"{seg}_limit"] = out[f"{seg}_attr"] = 0
    if out.get("ldtr", 0) & 0xFFFC == 0:
        out["ldtr_base"] = out["ldtr_limit"] = 0
    # VM entry's guest checks (SDM Vol. 3C 26.3.1.1-2: CR4.PCIDE, G and the limit, TR/LDTR in
    # the GDT, the data segments' types) are the profile's (``profiles.hardware.entry_ok``): the
    # witness meets them as the solver gave it.  DR6/DR7's reserved bits at the values they read
    # as (Vol. 3B 17.2.3-17.2.4) are not a VM-entry check but the registers' own, which the
    # state's well-formedness does not state: the solver leaves them free, no MOV can hold
    # anything else
    from .oracles.testkernel import DR_FIXED
    for name, ones, zeros in DR_FIXED:
        out[name] = (out.get(name, st.FIELD[name].default) | ones) & ~zeros
    return out


def replay_witnesses(oracle, rows: Sequence[Mapping], profile: profiles.Profile | None = None
                     ) -> list[WitnessResult]:
    """Each necessary control's witness, with the control off and with the default controls."""
    profile = profile or profiles.get("vtx")
    base = fitted(oracle, profile.vm)
    items, cases, unset = [], [], []
    for row in rows:
        if row.get("verdict") != "necessary" or not row.get("witness"):
            continue
        f = isa.get(row["form"])
        s = witness_state(row["witness"])
        if not base.on(row["control"]):       # the CPU cannot set it (``fitted``): no "on" run
            unset.append(WitnessResult(row["control"], f.name, "", "", "", "", "not-run",
                                       f"the CPU cannot set {row['control']}"))
            continue
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
        if not m_off.in_segments or not m_on.in_segments:
            why = "a memory trap (an access or fetch beyond its segment), outside the model"
        ok, explained = False, []
        if not why:
            v_off = compare(f, s, c_off, m_off, r_off)
            v_on = compare(f, s, c_on, m_on, r_on)
            # the hole on Bochs: with the control off no exit, and the model still says so on
            # the (normalised) state; every other difference explained
            ok = not v_off.unexplained and not v_on.unexplained and not v_off.model_bug \
                and not v_on.model_bug and not isinstance(r_off.outcome, Exit) \
                and not isinstance(m_off.outcome(), Exit)
            explained = v_off.explained_by + v_on.explained_by
            if not ok:
                why = "; ".join([f"{row['control']} off: {d}" for d in v_off.differences]
                                + [f"default: {d}" for d in v_on.differences]) or "bochs exits with the control off"
            elif explained:
                why = "confirmed up to " + ", ".join(dict.fromkeys(explained))
        status = ("emulator-deviation" if explained else "confirmed") if ok else \
            "not-run" if (r_off.outcome is None or r_on.outcome is None or "memory trap" in why) else "mismatch"
        out.append(WitnessResult(row["control"], f.name, short(r_off.outcome), short(r_on.outcome),
                                 short(m_off.outcome()), short(m_on.outcome()), status, why))
    return out + unset
