"""Which exiting controls a monitor needs: for every VM-execution control (VT-x) or intercept (SVM)
the configuration sets, whether switching it off breaks the hardware Theorem 1 (a form with a
witness) or is harmless (every form re-asked proved), and a minimal sufficient set.

Switching a control off changes two things only: the exit conditions of the forms whose
definitions consulted it (``Outcome.consulted``, recorded by the vocabulary in model/checks.py),
and, for a few controls, what the monitor owns (``profiles.hardware.ownership``: EPT, external-
interrupt exiting, the I/O bitmaps, nested paging, the INTR intercept...).  Only those forms are
re-asked: the consulting ones, and for an ownership change every hand-written form (a derived
form reads no SYSTEM field but the FPU/SIMD controls, issue 12's refusal rule, and no control
changes who owns those).  Everything else keeps its proof from the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgvirt.model import isa, svm, vmx
from pgvirt.model.derived import registry
from pgvirt.model.profiles import Profile
from pgvirt.model.profiles.hardware import ownership

from .popek_goldberg import Classification, classify_many, theorem
from .solver import DEFAULT_TIMEOUT_MS

# Ownership of these fields' bits can change with a control; derived forms read none of them.
_DERIVED_READS = {"cr0", "cr4", "xcr0"}
# Controls whose exits come before any instruction (checks.event_windows): every form reads them.
_AT_THE_BOUNDARY = {"interrupt_window_exiting", "nmi_window_exiting"}


@dataclass
class ControlResult:
    control: str
    verdict: str                 # "necessary", "harmless", "refused" (VM entry), "unknown"
                                 # (no answer, or only behaviour the model assumes away)
    reasked: int = 0
    form: str = ""
    asm: str = ""
    why: str = ""
    witness: dict | None = None

    def as_json(self) -> dict:
        return {"control": self.control, "verdict": self.verdict, "forms_reasked": self.reasked,
                "form": self.form or None, "asm": self.asm or None, "why": self.why,
                "witness": self.witness}


@dataclass
class Search:
    profile: str
    configuration: str
    baseline: str                                   # the theorem's verdict with every control on
    results: list[ControlResult] = field(default_factory=list)
    minimal: list[str] = field(default_factory=list)
    seconds: float = 0.0
    classifications: list = field(default_factory=list, repr=False)   # the baseline, every form

    def as_json(self) -> dict:
        return {"profile": self.profile, "configuration": self.configuration,
                "baseline": self.baseline, "controls": [r.as_json() for r in self.results],
                "minimal_sufficient_set": self.minimal}


def candidates(c) -> list[str]:
    """The exiting controls / intercepts ``c`` sets (those the search may switch off): the
    VM-execution controls, the exception bitmap's bits (``exception_V``) and the page-fault
    error-code filter (``pfec_filter``, when the mask or match is not 0); SVM's instruction,
    CR, DR and exception intercepts."""
    if isinstance(c, vmx.Controls):
        out = [n for n, k in vmx.CONTROLS.items()
               if c.on(n) and not (k.group != "secondary" and vmx.DEFAULT1[k.group] >> k.bit & 1)]
        out += [f"exception_{v}" for v in range(32) if c.exception_bitmap >> v & 1]
        if c.pfec_mask or c.pfec_match:
            out.append(vmx.PFEC_FILTER)
        return out
    out = [n for n in svm.INTERCEPTS if c.on(n)]
    out += [f"cr{n}_{rw}" for rw in ("read", "write") for n in range(16) if c.cr(n, rw == "write")]
    out += [f"dr{n}_{rw}" for rw in ("read", "write") for n in range(16) if c.dr(n, rw == "write")]
    out += [f"exception_{v}" for v in range(32) if c.exceptions >> v & 1]
    return out


def _without(c, names):
    for n in names:
        c = c.without(n)
    if isinstance(c, vmx.Controls):
        return vmx.check(c)
    return svm.check(c)


def _unmodelled(c: Classification) -> bool:
    a = c.answers.get("unmodelled")
    return a is not None and a.value is not False


def _owner_changes(a, b) -> set[str]:
    oa, ob = ownership(a), ownership(b)
    names = {f for f, _, _ in oa.fields + ob.fields} | {f for f, _, _, _ in oa.shadows + ob.shadows}
    out = {n for n in names if oa.mask(n) != ob.mask(n) or oa.shadow(n) != ob.shadow(n)}
    if oa.io_ports != ob.io_ports:
        out.add("io")
    if oa.tsc_offset != ob.tsc_offset:
        out.add("tsc")
    return out


def _dependents(names, consulted: dict[str, frozenset], secondary: bool) -> set[str]:
    keys = set(names)
    if secondary:   # 'activate secondary controls' gates every secondary control
        keys |= {n for n, k in vmx.CONTROLS.items() if k.group == "secondary"}
    return {f for f, used in consulted.items() if used & keys}


class Searcher:
    """Classifies under one configuration at a time, re-asking only what a change can affect."""

    def __init__(self, profile: Profile, jobs: int | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 forms=None):
        self.profile, self.jobs, self.timeout = profile, jobs, timeout_ms
        self.names = [f if isinstance(f, str) else f.name for f in (forms or isa.FORMS)]
        self.hand = [n for n in self.names if not registry.is_derived(n)]
        self.base = classify_many([profile], self.names, jobs, timeout_ms)[profile.name]
        self.by_name = {c.form.name: c for c in self.base}
        self.consulted = self._consulted(profile)

    def _consulted(self, profile: Profile) -> dict[str, frozenset]:
        from pgvirt.model import state as st
        s = st.fresh("s")
        return {n: registry.get(n).run(s, features=profile.features, vm=profile.vm).consulted
                for n in self.hand}

    def verdict(self, removed: list[str]) -> tuple[str, Classification | None, int]:
        """The theorem's verdict with ``removed`` off: ("holds" | "fails" | "unknown" |
        "refused: rule"), a violating (or undecided) classification, the number re-asked."""
        c0 = self.profile.vm
        try:
            c = _without(c0, removed)
        except (vmx.ControlsError, svm.InterceptsError) as e:
            return f"refused: {e}", None, 0
        changed = _owner_changes(c0, c)
        secondary = "activate_secondary_controls" in removed
        forms = _dependents(removed, self.consulted, secondary)
        if changed or "unrestricted_guest" in removed or "enable_ept" in removed or secondary:
            forms |= set(self.hand)
            if changed & _DERIVED_READS:
                forms = set(self.names)
        if set(removed) & _AT_THE_BOUNDARY:
            forms = set(self.names)
        if not forms:
            return "holds", None, 0
        order = [n for n in self.names if n in forms]
        res = classify_many([self.profile.with_controls(c)], order, self.jobs, self.timeout)[self.profile.name]
        th = theorem("1", res)
        bad = (th.violations or th.undecided or [None])[0]
        if th.verdict == "holds":
            # Reaching what a form assumes away, where the baseline did not: no proof of harmlessness.
            new = [r for r in res if _unmodelled(r) and not _unmodelled(self.by_name[r.form.name])]
            if new:
                return "unmodelled", new[0], len(order)
        return th.verdict, bad, len(order)

    def run(self) -> list[ControlResult]:
        out = []
        for name in candidates(self.profile.vm):
            v, bad, k = self.verdict([name])
            if v.startswith("refused"):
                out.append(ControlResult(name, "refused", 0, why=v[len("refused: "):]))
            elif v == "holds":
                out.append(ControlResult(name, "harmless", k, why=f"every form re-asked proved ({k})"
                                         if k else "no form's definition reads it"))
            elif v == "fails":
                a = bad.answers["privileged"]
                why = ("without an exit it changes state the monitor owns" if bad["control_sensitive"]
                       else "without an exit it differs from the guest's own machine")
                out.append(ControlResult(name, "necessary", k, bad.form.name, bad.form.asm, why, a.witness))
            elif v == "unmodelled":
                out.append(ControlResult(name, "unknown", k, bad.form.name, bad.form.asm,
                                         "without it a run reaches behaviour the model assumes away: "
                                         + bad.answers["unmodelled"].note))
            else:
                out.append(ControlResult(name, "unknown", k, bad.form.name if bad else "",
                                         bad.form.asm if bad else "",
                                         bad.answers["privileged"].note if bad else "no answer"))
        return out

    def minimal(self, results: list[ControlResult]) -> list[str]:
        """Greedy: drop the harmless controls one after another while the theorem still holds;
        the rest is a sufficient set none of whose members the greedy order could drop."""
        removed: list[str] = []
        for r in results:
            if r.verdict != "harmless":
                continue
            v, _, _ = self.verdict(removed + [r.control])
            if v == "holds":
                removed.append(r.control)
        return [n for n in candidates(self.profile.vm) if n not in removed]


def search(profile: Profile, jobs: int | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
           forms=None) -> Search:
    import time
    t0 = time.perf_counter()
    s = Searcher(profile, jobs, timeout_ms, forms)
    base = theorem("1", s.base).verdict
    out = Search(profile.name, profile.vm.name, base, classifications=s.base)
    out.results = s.run()
    out.minimal = s.minimal(out.results) if base == "holds" else []
    out.seconds = time.perf_counter() - t0
    return out


# --- VT-x and SVM side by side -------------------------------------------------------------------

def strongest(kind: str):
    """Every instruction-exiting control (VT-x) or instruction, CR and DR intercept (SVM) on top of
    the default: what each architecture can make exit at all (exceptions left to the guest)."""
    if kind == "vmx":
        return vmx.from_json({"base": "default", "name": "every exiting control", "primary": {
            n: True for n in ("hlt_exiting", "invlpg_exiting", "mwait_exiting", "rdpmc_exiting",
                              "rdtsc_exiting", "cr3_load_exiting", "cr3_store_exiting", "mov_dr_exiting",
                              "use_io_bitmaps", "use_msr_bitmaps", "monitor_exiting", "pause_exiting")},
            "secondary": {n: True for n in ("descriptor_table_exiting", "wbinvd_exiting", "rdrand_exiting",
                                            "rdseed_exiting")}})
    return svm.from_json({"base": "default", "name": "every intercept", "intercepts": {
        n: True for n in svm.INTERCEPTS}, "cr_read": 0x1D, "cr_write": 0x1D, "dr_read": 0xFF, "dr_write": 0xFF})


def can_exit(form: str, profile: Profile, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> tuple[str, dict | None]:
    """Whether ``form`` exits in some non-root state under ``profile``: ("exits", the exit and
    state) by a witness, ("never", None) by UNSAT, or ("unknown", None)."""
    from .hardware import HwEngine
    from .queries import Query, tidy_memory
    from .solver import Verdict

    from .queries import _witness
    from .solver import check

    eng = HwEngine(registry.get(form), profile, timeout_ms)
    # Only the non-root run's own assumptions: the guest's machine plays no part here.
    base = [eng.frame.wf_s, eng.o.assumed, eng.o.exits]
    r = check(base, timeout_ms)
    if r.verdict is Verdict.REFUTED:
        nice = check(base + eng.frame.tidy + tidy_memory(eng.o), min(timeout_ms, 2000))
        q = Query("exits", [], [eng.o.exits], {"guest": eng.s}, {"guest": eng.o}, {}, [], base)
        return "exits", _witness(q, (nice if nice.verdict is Verdict.REFUTED else r).model)
    return ("never", None) if r.verdict is Verdict.PROVED else ("unknown", None)


# Robin and Irvine's instructions (verify/literature.py), each by one 32-bit form.
COMPARED = (("SGDT", "sgdt_m"), ("SIDT", "sidt_m"), ("SLDT", "sldt_r"), ("STR", "str_r"),
            ("SMSW", "smsw_r"), ("PUSHF", "pushfd"), ("POPF", "popfd"), ("IRET", "iretd"),
            ("INT n", "int_imm"), ("LAR", "lar_r"), ("LSL", "lsl_r"), ("VERR", "verr_r"),
            ("VERW", "verw_r"), ("PUSH (segment register)", "push_cs"),
            ("POP (segment register)", "pop_ds"), ("MOV (segment register)", "mov_r_cs"),
            ("CALL (far)", "call_far_ptr"), ("JMP (far)", "jmp_far_ptr"), ("RET (far)", "retf"))


def compare(timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[dict]:
    """For each instruction: can VT-x / SVM make it exit (witness or proof, under the strongest
    configuration), and is it root-mode privileged under each default (proof or witness)."""
    from pgvirt.model import profiles
    from .popek_goldberg import classify

    rows = []
    hw = {"vtx": profiles.VTX, "svm": profiles.SVM}
    strong = {"vtx": profiles.VTX.with_controls(strongest("vmx")),
              "svm": profiles.SVM.with_controls(strongest("svm"))}
    for paper, name in COMPARED:
        row: dict = {"paper": paper, "form": name, "asm": registry.get(name).asm}
        for p in ("vtx", "svm"):
            ex, w = can_exit(name, strong[p], timeout_ms)
            c = classify(name, hw[p], timeout_ms)
            reason = None
            if w:
                reason = w["guest_outcome"].get("exit_reason")
            row[p] = {"can_exit": ex, "exit_reason": reason, "exit_witness": w,
                      "default": c.answers["privileged"].verdict,
                      "default_witness": c.answers["privileged"].witness}
        a, b = row["vtx"], row["svm"]
        if a["can_exit"] != b["can_exit"]:
            who = "SVM" if b["can_exit"] == "exits" else "VT-x"
            row["difference"] = f"only {who} can make it exit ({(b if who == 'SVM' else a)['exit_reason']})"
            if name.startswith("smsw") and a["default"] == "proved":
                row["difference"] = ("VT-x needs no exit: SMSW reads the CR0 read shadow (proved); SVM can "
                                     f"only intercept the CR0 read ({b['exit_reason']})")
        elif "task_switch" in (a["exit_reason"], b["exit_reason"]) and a["exit_reason"] != b["exit_reason"]:
            row["difference"] = (f"VT-x exits for {a['exit_reason']} only, SVM for {b['exit_reason']}"
                                 if a["exit_reason"] == "task_switch" else
                                 f"SVM exits for {b['exit_reason']} only, VT-x for {a['exit_reason']}")
        else:
            row["difference"] = ""
        rows.append(row)
    return rows
