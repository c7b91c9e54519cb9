"""The public verbs, re-exported by ``import pgvirt``: each takes names, paths or loaded objects and
returns a result with a one-line ``repr`` and an HTML table for Jupyter.

    >>> import pgvirt
    >>> pgvirt.theorems("pentium")                    # Theorems 1 and 3 over every form
    <pgvirt theorems [pentium]: Theorem 1 fails (55 violations), Theorem 3 fails (49 violations) over 222 forms>
    >>> pgvirt.scan("/boot/invaders.exec").sites      # the guest's violating instructions

(``pgvirt.verify`` is the package of the queries, so the verb that checks both theorems is
``theorems``, the one for a single theorem ``theorem``.)  A result keeps the library's own object
as ``.value`` and answers its attributes (``.sites``,
``.verdict``, ...).  Errors are the library's: ``KeyError`` for an unknown form or profile,
``GuestError`` / ``ManifestError`` / ``PatchError`` for bad input files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable

from pgvirt.report import html as H

DEFAULT_PROFILE = "pentium"

__all__ = ["classify", "theorems", "theorem", "scan", "patch", "check_patch", "replay", "crosscheck",
           "run", "compare", "monitor_sensitive", "monitor_patch", "monitor_controls",
           "explain_divergence", "explain_vtx_divergence", "Result",
           "ReplayRun"]


class Result:
    """A verb's answer: ``value`` (the library's object), a one-line summary and an HTML view."""

    def __init__(self, kind: str, value: Any, summary: str, html: Callable[[], str]):
        self._kind, self.value, self.summary, self._html = kind, value, summary, html

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.value, name)

    def __iter__(self):
        return iter(self.value)

    def __len__(self) -> int:
        return len(self.value)

    def __getitem__(self, key):
        return self.value[key]

    def __repr__(self) -> str:
        return f"<pgvirt {self._kind}: {self.summary}>"

    def _repr_html_(self) -> str:
        return f"<p><b>pgvirt {H._e(self._kind)}</b>: {H._e(self.summary)}</p>" + self._html()


def _profile(p):
    from pgvirt.model import profiles

    return profiles.get(p) if isinstance(p, str) else p


def _names(forms) -> list[str] | None:
    if forms is None:
        return None
    if isinstance(forms, str) or hasattr(forms, "semantics"):
        forms = [forms]
    from pgvirt.model import isa

    names = [f if isinstance(f, str) else f.name for f in forms]
    for n in names:
        isa.get(n)
    return names


# --- the theorems ------------------------------------------------------------------------------

def _verdicts(results) -> str:
    from pgvirt.verify.popek_goldberg import theorem as th

    return ", ".join(f"Theorem {n} {t.verdict} ({len(t.violations)} violations)"
                     for n, t in ((n, th(n, results)) for n in ("1", "3")))


def classify(forms=None, profile=DEFAULT_PROFILE, *, jobs: int | None = None,
             timeout_ms: int | None = None) -> Result:
    """Every Popek-Goldberg class of ``forms`` (names or Forms; default: every form) under
    ``profile``, each derived by Z3; the result is the list of Classifications."""
    from pgvirt.verify.popek_goldberg import classify_all
    from pgvirt.verify.solver import DEFAULT_TIMEOUT_MS

    prof = _profile(profile)
    res = classify_all(prof, _names(forms), jobs=jobs, timeout_ms=timeout_ms or DEFAULT_TIMEOUT_MS)
    return Result(f"classify [{prof.name}]", res, f"{len(res)} forms; {_verdicts(res)}",
                  lambda: H.classifications(res))


def theorems(profile=DEFAULT_PROFILE, forms=None, *, jobs: int | None = None,
             timeout_ms: int | None = None) -> Result:
    """Theorems 1 and 3 under ``profile`` over every form (or ``forms``): the value is
    ``{"1": Theorem, "3": Theorem}``, each with its violations and their witnesses."""
    return _theorems(("1", "3"), profile, forms, jobs, timeout_ms)


def theorem(number: str | int, profile=DEFAULT_PROFILE, forms=None, *, jobs: int | None = None,
            timeout_ms: int | None = None) -> Result:
    """Theorem ``number`` (1 or 3) alone, as ``theorems`` checks it; the value is the Theorem."""
    number = str(number)
    if number not in ("1", "3"):
        raise KeyError(f"no Theorem {number}: pgvirt checks Theorems 1 and 3")
    r = _theorems((number,), profile, forms, jobs, timeout_ms)
    r.value = r.value[number]
    return r


def _theorems(numbers, profile, forms, jobs, timeout_ms) -> Result:
    from pgvirt.verify.popek_goldberg import theorem as th

    prof = _profile(profile)
    res = classify(forms, prof, jobs=jobs, timeout_ms=timeout_ms).value
    ths = {n: th(n, res) for n in numbers}
    summary = ", ".join(f"Theorem {n} {t.verdict} ({len(t.violations)} violations)" for n, t in ths.items())
    kind = "theorems" if len(numbers) > 1 else f"Theorem {numbers[0]}"
    return Result(f"{kind} [{prof.name}]", ths, f"{summary} over {len(res)} forms",
                  lambda: H.theorems(prof.name, ths, len(res)))


# --- guests --------------------------------------------------------------------------------------

def scan(guest, profile=DEFAULT_PROFILE, *, raw: bool = False, base: int | None = None,
         symbols=None, cache: bool = True, jobs: int | None = None) -> Result:
    """The instructions of ``guest`` (a path, a loaded Guest or a GuestFile) that violate
    Theorem 1 under ``profile``: a ScanReport."""
    from pgvirt.guest.paravirt import ClassificationCache, scan_guest

    rep = scan_guest(_guest(guest, raw, base, symbols), profile, ClassificationCache(enabled=cache), jobs)
    r = rep.result
    summary = (f"{os.path.basename(rep.guest.path)} [{rep.profile.name}]: {len(r.sites)} violating "
               f"site(s), {r.instructions} instructions, {r.unmodelled_count} unmodelled")
    return Result("scan", rep, summary, lambda: H.scan(rep))


def _guest(guest, raw, base, symbols):
    from pgvirt.guest.image import Guest, load_guest
    from pgvirt.guest.paravirt import GuestFile

    if isinstance(guest, GuestFile):
        return guest.guest
    if isinstance(guest, Guest):
        return guest
    return load_guest(guest, raw=raw, base=base, symbols=symbols)


def patch(guest, output, *, manifest=None, profile=DEFAULT_PROFILE, allow: Iterable[str] = (),
          raw: bool = False, base: int | None = None, symbols=None, cache: bool = True) -> Result:
    """Paravirtualize ``guest`` (a path) into ``output``: every violating site becomes a hypercall;
    the manifest goes to ``manifest`` (default ``output + ".manifest.json"``)."""
    from pgvirt.guest.paravirt import ClassificationCache, GuestFile, patch_guest

    path = guest.path if isinstance(guest, GuestFile) else getattr(guest, "path", guest)
    res = patch_guest(path, output, manifest, profile, tuple(allow), raw, base, symbols,
                      ClassificationCache(enabled=cache))
    summary = f"{len(res.patched)} site(s) patched -> {res.out} (manifest {res.manifest_path})"
    return Result("patch", res, summary, lambda: H.patch(res))


def check_patch(patched, manifest=None, *, original=None, profile=None, allow: Iterable[str] = (),
                strict: bool = False, cache: bool = True) -> Result:
    """Prove ``patched`` sound against its manifest (default ``patched + ".manifest.json"``) and the
    original guest: a CheckReport whose ``verdict`` is holds, fails or unknown."""
    from pgvirt.guest.paravirt import ClassificationCache, check_patch as run

    path = os.fspath(getattr(patched, "out", patched))
    man = manifest if manifest is not None else getattr(patched, "manifest_path", path + ".manifest.json")
    rep = run(path, man, original, profile, tuple(allow), strict, ClassificationCache(enabled=cache))
    summary = (f"{os.path.basename(rep.patched)} [{rep.profile}]: {rep.verdict}; {len(rep.sites)} "
               f"hypercall site(s), {len(rep.failures())} failing claim(s)")
    return Result("check-patch", rep, summary, lambda: H.check(rep))


# --- the emulator ----------------------------------------------------------------------------------

@dataclass
class ReplayRun:
    """Replays of Theorem-1 witnesses: each a ``Replay`` (or, with no witness, a mismatch dict)."""

    profile: str
    replays: list
    seconds: float
    replay_seconds: float
    counts: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"profile": self.profile, "replays": [r if isinstance(r, dict) else r.as_json()
                                                     for r in self.replays],
                "counts": self.counts, "seconds": {"total": round(self.seconds, 3),
                                                   "replay": round(self.replay_seconds, 3)}}


class ReplayRequestError(ValueError):
    """Nothing to replay as asked (a form that is no violation, a state file without the form)."""


def replay_run(profile=DEFAULT_PROFILE, forms=None, *, state=None, jobs: int | None = None,
               timeout_ms: int | None = None, run_seconds: float = 2.0, progress=None) -> ReplayRun:
    """Solve for a replayable witness of each Theorem-1 violation (or only ``forms``) under
    ``profile``, or read the pairs of the JSON file ``state``, and run each pair on Unicorn.
    Raises ``ReplayInputError`` for a malformed state file, ``ReplayRequestError`` when there is
    nothing to replay as asked."""
    from pgvirt.emulator import replay as R
    from pgvirt.verify import counterexample as cx
    from pgvirt.verify.solver import DEFAULT_TIMEOUT_MS

    prof = _profile(profile)
    names = _names(forms) or []
    timeout_ms = timeout_ms or DEFAULT_TIMEOUT_MS
    t0 = time.perf_counter()
    if prof.vm is not None:
        return _replay_holes(prof, names, state, jobs, timeout_ms, run_seconds, progress, t0)
    if state is not None:
        pairs = R.load_pairs(state, prof, names or None)
        if names:
            pairs = [(n, w) for n, w in pairs if n in names]
            if not pairs:
                raise ReplayRequestError(f"{state} holds no pair for {', '.join(names)}")
        entries, strict = [(n, w, "") for n, w in pairs], True
    else:
        viol, undecided = cx.violations(prof, names or None, jobs, timeout_ms)
        bad = [n for n in names if n not in viol]
        if bad:
            why = "undecided" if set(bad) <= set(undecided) else "not a Theorem-1 violation"
            raise ReplayRequestError(f"{', '.join(bad)}: {why} under {prof.name} (nothing to replay)")
        found = cx.find_many(viol, prof, jobs, timeout_ms, progress)
        entries, strict = [(f["name"], f["witness"], f["note"]) for f in found], False
    replayer = R.Replayer(seconds=run_seconds)
    reps: list = []
    t1 = time.perf_counter()
    for name, w, note in entries:
        if w is None:
            reps.append(_no_witness(name, note))
        else:
            reps.append(replayer.replay(name, w, cx.criterion_concrete, prof.name, strict=strict))
    done = time.perf_counter()
    docs = [r if isinstance(r, dict) else r.as_json() for r in reps]
    counts = {o: sum(d["outcome"] == o for d in docs) for o in R.OUTCOMES}
    return ReplayRun(prof.name, reps, done - t0, done - t1, counts)


# What a hardware replay cannot show on Unicorn (an emulator without VMX/SVM): said, not a mismatch.
MODEL_ONLY = "model-only"


def _replay_holes(prof, names, state, jobs, timeout_ms, run_seconds, progress, t0) -> ReplayRun:
    """``replay_run`` under vtx/svm: each hole of the configuration (a Theorem-1 violation of the
    hardware theorem) solved as a pair the emulator can load (``verify.counterexample.hole_witness``)
    and run on Unicorn as two bare runs, the non-root state and the guest's own machine, judged
    by the hole criterion.  ``model-only`` where Unicorn cannot show the hole: the non-root run
    differs from a bare run (VMX/SVM changes the instruction without exiting), or the hole lies
    only in state the Machine does not hold (caches, TLB, TSC, performance counters...)."""
    from pgvirt.emulator import replay as R
    from pgvirt.emulator.machine import NOT_HELD
    from pgvirt.model.outcome import from_changes_json
    from pgvirt.model.profiles.hardware import ownership
    from pgvirt.verify import counterexample as cx

    if state is not None:
        raise ReplayRequestError(f"--state takes trap-and-emulate pairs (native, deprivileged); under "
                                 f"{prof.name} the pairs are holes the solver finds (give no --state)")
    viol, undecided = cx.violations(prof, names or None, jobs, timeout_ms)
    bad = [n for n in names if n not in viol]
    if bad:
        why = "undecided" if set(bad) <= set(undecided) else \
            f"root-mode privileged under the controls '{prof.vm.name}'"
        raise ReplayRequestError(f"{', '.join(bad)}: {why} under {prof.name} (no hole to replay)")
    crit = cx.hole_criterion(ownership(prof.vm))
    found = []
    for n in viol:
        found.append(cx.hole_witness(n, prof, timeout_ms))
        if progress:
            progress(n)
    replayer = R.Replayer(seconds=run_seconds)
    reps: list = []
    t1 = time.perf_counter()
    for f in found:
        w = f["witness"]
        if w is None:
            reps.append(_no_witness(f["name"], f["note"]))
            continue
        if not w["as_bare"]:
            reps.append(_model_only(f["name"], prof.name, w, w["not_bare"]))
            continue
        rep = replayer.replay(f["name"], w, crit, prof.name)
        rep.labels = cx.REPLAY_LABELS
        n, d = w["native"], w["deprivileged"]
        seen = crit(n, from_changes_json(n, w["model"]["native"]), d,
                    from_changes_json(d, w["model"]["deprivileged"]), ignore=NOT_HELD)
        if rep.outcome == "mismatch" and not seen and w["criterion"] and not (
                rep.native.differences or rep.deprivileged.differences):
            rep.outcome = MODEL_ONLY
            rep.note = (f"the hole ({'; '.join(w['criterion'])}) lies only in state Unicorn does not "
                        "hold; both runs agree with the model on everything it holds")
        reps.append(rep)
    done = time.perf_counter()
    docs = [r if isinstance(r, dict) else r.as_json() for r in reps]
    counts = {o: sum(d["outcome"] == o for d in docs) for o in R.OUTCOMES + (MODEL_ONLY,)}
    return ReplayRun(prof.name, reps, done - t0, done - t1, counts)


def _model_only(name: str, profile: str, w: dict, why: str) -> dict:
    from pgvirt.model import isa

    f = isa.get(name)
    return {"name": name, "mnemonic": f.mnemonic, "asm": f.asm, "outcome": MODEL_ONLY,
            "native": {"state": w["native"]}, "deprivileged": {"state": w["deprivileged"]},
            "model": w["model"] | {"criterion": w["criterion"]}, "emulator_criterion": [],
            "deviation": None, "runs": _runs_json(), "note": f"not run on Unicorn: {why}"}


def _runs_json() -> dict:
    from pgvirt.verify.counterexample import REPLAY_LABELS
    return {"native": REPLAY_LABELS[0], "deprivileged": REPLAY_LABELS[1]}


def _no_witness(name: str, note: str) -> dict:
    from pgvirt.model import isa

    f = isa.get(name)
    return {"name": name, "mnemonic": f.mnemonic, "asm": f.asm, "outcome": "mismatch",
            "native": None, "deprivileged": None, "model": None, "emulator_criterion": [],
            "deviation": None, "note": f"no counterexample to replay: {note}"}


def replay(forms=None, profile=DEFAULT_PROFILE, *, state=None, jobs: int | None = None) -> Result:
    """Each Theorem-1 witness of ``forms`` (default: every violation) replayed on Unicorn,
    native and deprivileged: confirmed, emulator-deviation or mismatch; under vtx/svm (a Profile
    with its controls) each hole, and model-only where Unicorn cannot show it."""
    run = replay_run(profile, forms, state=state, jobs=jobs)
    c = run.counts
    summary = (f"[{run.profile}] {len(run.replays)} replays: {c['confirmed']} confirmed, "
               f"{c['emulator-deviation']} emulator-deviation, {c['mismatch']} mismatch"
               + (f", {c[MODEL_ONLY]} model-only" if MODEL_ONLY in c else ""))
    return Result("replay", run, summary, lambda: H.replays(run))


def crosscheck(forms=None, samples: int = 200, seed: int = 0, *, jobs: int | None = 1) -> Result:
    """The compiled model against Unicorn on ``samples`` random valid states per form."""
    from pgvirt.emulator import crosscheck as C

    rep = C.crosscheck(_names(forms), samples, seed, jobs)
    summary = (f"{rep.checks} checks of {len(rep.forms)} form(s), seed {seed}: "
               f"{rep.unexplained} unexplained")
    return Result("crosscheck", rep, summary, lambda: H.crosscheck(rep))


# --- monitors: the verifier's part handed to pgvirt.monitor (which imports only model/emulator) ----
@lru_cache(maxsize=8)
def _violations(profile_name: str) -> dict:
    """form name -> Classification for every form that violates Theorem 1 under the profile."""
    from pgvirt.guest.paravirt import violation
    from pgvirt.model import isa
    from pgvirt.verify.cache import classifications

    got, _ = classifications(profile_name, [f.name for f in isa.FORMS])
    return {n: c for n, c in got.items() if violation(c)}


def monitor_sensitive(profile=DEFAULT_PROFILE) -> Callable[[bytes], str | None]:
    """The scan monitor's predicate: bytes of one instruction -> its form's name when the form
    violates Theorem 1 under ``profile`` (the scanner's matcher names it, the solver judges)."""
    from pgvirt.guest.scan import match_form

    table = _violations(_profile(profile).name)

    @lru_cache(maxsize=1 << 16)
    def predicate(code: bytes) -> str | None:
        f = match_form(code)
        return f.name if f is not None and f.name in table else None

    return predicate


def monitor_patch(original, directory, profile=DEFAULT_PROFILE) -> tuple[str, str]:
    """``pgvirt patch ORIGINAL`` into ``directory``: (the patched guest, its manifest)."""
    from pgvirt.guest.paravirt import patch_guest

    base = os.path.join(os.fspath(directory), os.path.basename(os.fspath(original)))
    out, manifest = base + ".patched", base + ".manifest.json"
    patch_guest(os.fspath(original), out, manifest, profile=_profile(profile).name)
    return out, manifest


def monitor_controls(controls) -> "object":
    """The VMCS controls of the ``vtx`` monitor: a ``vmx.Controls``, a controls file (the one
    ``pgvirt verify --controls`` takes; a refused file raises ``vmx.ControlsError``), or None
    for the documented default."""
    from pgvirt.model import vmx

    if controls is None:
        return vmx.DEFAULT
    return controls if isinstance(controls, vmx.Controls) else vmx.load(os.fspath(controls))


def _exits_with(form, controls, control: str) -> bool:
    """Whether setting ``control`` gives ``form``'s definition an exit condition it lacks under
    ``controls`` (the forms say when they exit; nothing else is consulted)."""
    from dataclasses import replace

    from pgvirt.model import state as st, vmx

    c = vmx.CONTROLS[control]
    on = replace(controls, **{c.group: getattr(controls, c.group) | 1 << c.bit})
    if c.group == "secondary":
        on = replace(on, primary=on.primary | 1 << vmx.CONTROLS["activate_secondary_controls"].bit)
    s = st.fresh("x")

    def exits(vm) -> int:
        return sum(k.exit is not None and k.exit.exit_reason != "exception"
                   for k in form.run(s, vm=vm).checks)

    return exits(on) > exits(controls)


def explain_vtx_divergence(div: dict, controls=None, witness: bool = True) -> dict | None:
    """A ``vtx`` divergence explained by the hardware Theorem 1 (issue 13's verdict) under the
    run's controls: the diverging form is not root-mode privileged there (a witness), and the
    controls these leave clear whose setting gives its definition a VM-exit condition are named.
    None when the form is root-mode privileged under them (such a divergence is a bug)."""
    from pgvirt.model import isa, profiles, vmx
    from pgvirt.verify.hardware import classify

    name = div.get("form")
    if name is None:
        return None
    c = monitor_controls(controls)
    form = isa.get(name)
    cl = classify(form, profiles.get("vtx").with_controls(c))
    if cl.answers["privileged"].value is not False:
        return None
    classes = [k for k in ("control_sensitive", "mode_sensitive")
               if cl.answers[k].value is True]
    named = [n for n in vmx.CONTROLS if not c.on(n) and _exits_with(form, c, n)]
    reason = ("it runs in VMX non-root operation without a VM exit where it is sensitive "
              "(hardware Theorem 1 fails under these controls)")
    if named:
        reason += f"; it exits with {' or '.join(repr(n) for n in named)} set, which the controls leave clear"
    out = {"form": name, "profile": f"vtx (controls {c.name})", "classes": classes,
           "reason": reason, "controls": named}
    if witness:
        for k in classes:
            a = cl.answers[k]
            if a.witness is not None:
                out["witness"] = {"class": k, "states": a.witness}
                break
    return out


def explain_divergence(div: dict, profile=DEFAULT_PROFILE, witness: bool = True,
                       controls=None) -> dict | None:
    """The Theorem-1 verdict explaining a first divergence (``monitor.compare`` JSON): the
    diverging form's violated classes, the reason ``pgvirt scan`` gives, and a witness; None
    when the form is no violation (such a divergence is a bug).  A ``vtx`` divergence is
    explained under its VMCS ``controls`` (``explain_vtx_divergence``)."""
    from pgvirt.guest.paravirt import reason, violation
    from pgvirt.verify.cache import classifications

    if div.get("monitor") == "vtx":
        return explain_vtx_divergence(div, controls, witness)
    form = div.get("form")
    name = _profile(profile).name
    if form is None or form not in _violations(name):
        return None
    got, _ = classifications(name, [form], witnesses=witness)
    c = got[form]
    out = {"form": form, "profile": name, "classes": list(violation(c)), "reason": reason(c)}
    if witness:
        for cls in ("control_sensitive", "mode_sensitive", "location_sensitive"):
            a = c.answers.get(cls)
            if a is not None and a.value and a.witness is not None:
                out["witness"] = {"class": cls, "states": a.witness}
                break
    return out


def _monitor_setup(guest, monitors: Iterable[str], profile, tmp: str, paravirt, controls=None) -> dict:
    kw: dict = {"profile": _profile(profile).name}
    if "vtx" in monitors:
        kw["controls"] = monitor_controls(controls)
    if "scan" in monitors:
        kw["sensitive"] = monitor_sensitive(profile)
    if "paravirt" in monitors:
        kw["paravirt"] = paravirt if paravirt is not None else monitor_patch(guest, tmp, profile)
    return kw


def run(guest, monitor: str = "native", *, profile=DEFAULT_PROFILE, steps: int | None = None,
        input: str = "", paravirt: tuple[str, str] | None = None, controls=None) -> Result:
    """Run a multiboot guest under ``monitor`` (native, trap, paravirt, scan, vtx) on Unicorn;
    ``paravirt`` = (patched, manifest), else the guest is patched into a temporary directory;
    ``controls`` the VMCS controls of ``vtx`` (``monitor_controls``)."""
    import tempfile

    from pgvirt.monitor import api as M
    from pgvirt.report import monitor as R

    with tempfile.TemporaryDirectory(prefix="pgvirt-run-") as tmp:
        kw = _monitor_setup(guest, [monitor], profile, tmp, paravirt, controls)
        setup = M.Setup(guest, input=input, **kw)
        mon = setup.build(monitor)
        res = mon.run(steps or M.DEFAULT_STEPS)
        final = mon.final_frame()
    text = R.run_text(res, final)
    return Result(f"run [{monitor}]", res, text.splitlines()[-1] if text else monitor,
                  lambda: H.pre(text))


def compare(guest, monitors: Iterable[str] = ("trap", "paravirt", "scan"), *, profile=DEFAULT_PROFILE,
            steps: int | None = None, input: str = "", paravirt: tuple[str, str] | None = None,
            witness: bool = True, controls=None) -> Result:
    """Each monitor against native in lock step: match, or the first divergence and the
    Theorem-1 verdict that explains it; the slowdown table."""
    import tempfile

    from pgvirt.monitor import api as M
    from pgvirt.report import monitor as R

    names = list(monitors)
    with tempfile.TemporaryDirectory(prefix="pgvirt-run-") as tmp:
        kw = _monitor_setup(guest, names, profile, tmp, paravirt, controls)
        c = M.compare(guest, names, steps=steps or M.DEFAULT_STEPS, input=input,
                      explain=lambda d: explain_divergence(d, profile, witness, kw.get("controls")),
                      **kw)
    summary = ", ".join(f"{v.monitor}: {'match' if v.divergence is None else 'diverged'}"
                        for v in c.verdicts) + (f"; {len(c.unexplained)} unexplained" if c.unexplained else "")
    return Result("compare", c, summary, lambda: H.pre(R.compare_text(c)))
