"""JUnit XML of theorem verdicts and of check-patch.

JUnit has one test case per profile x theorem x form: a ``failure`` for a violation (with the
witness), an ``error`` for an undecided form (unknown fails closed; ``skipped`` would read as
green), otherwise a pass.  ``cases`` judges each case exactly as ``popek_goldberg.theorem`` does;
the SARIF log reports the same cases.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass

from pgvirt.verify.popek_goldberg import Classification, theorem

from . import theorems as report

THEOREMS = ("1", "3")


# --- what each test case says -------------------------------------------------------------------

@dataclass
class Case:
    profile: str
    theorem: str
    cls: str             # the class the theorem asks about: sensitive or user_sensitive
    c: Classification
    status: str          # "pass" | "violation" | "unknown"
    message: str
    detail: str


def cases(per_profile: list[tuple[str, list[Classification]]]) -> list[Case]:
    """One case per profile x theorem x form, judged exactly as ``popek_goldberg.theorem`` does."""
    out = []
    for pname, results in per_profile:
        for num in THEOREMS:
            th = theorem(num, results)
            bad = {c.form.name for c in th.violations}
            open_ = {c.form.name for c in th.undecided}
            for c in results:
                name = c.form.name
                if name in bad:
                    why, evidence = report.explain(c, th.cls)
                    msg = (f"{name} ({c.form.asm}) is {th.cls.replace('_', ' ')} ({why}) "
                           f"but not privileged under {pname}")
                    runs = report.witness_line(c.answers["privileged"].witness or {})
                    detail = (f"Theorem {num}: {th.statement}\nsensitive witness: {evidence}\n"
                              f"runs without a trap: {runs}\n"
                              f"{json.dumps(violation_witness(c, th.cls), sort_keys=True)}")
                    out.append(Case(pname, num, th.cls, c, "violation", msg, detail))
                elif name in open_:
                    reasons = "; ".join(f"{k}: {c.answers[k].note}" for k in ("privileged", th.cls)
                                        if c[k] is None)
                    out.append(Case(pname, num, th.cls, c, "unknown",
                                    f"{name}: the solver gave no answer ({reasons})",
                                    "unknown never counts as proved; raise --timeout-ms or simplify the form"))
                else:
                    how = ("privileged" if c["privileged"] else f"not {th.cls.replace('_', ' ')}")
                    out.append(Case(pname, num, th.cls, c, "pass", f"{name}: {how}", ""))
    return out


def violation_witness(c: Classification, cls: str) -> dict:
    return {"sensitive": c.answers[cls].witness, "runs_unprivileged": c.answers["privileged"].witness}


# --- JUnit ---------------------------------------------------------------------------------------

def junit(per_profile: list[tuple[str, list[Classification]]], wall: float | None = None) -> ET.ElementTree:
    """``time`` is wall-clock: the run's ``wall`` seconds on the root; a test case's time is its
    form's solver time (the forms of a run are solved in parallel, so suites carry no sum)."""
    all_cases = cases(per_profile)
    root = ET.Element("testsuites", name="pgvirt verify")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for pname, _ in per_profile:
        for num in THEOREMS:
            mine = [k for k in all_cases if k.profile == pname and k.theorem == num]
            counts = {"tests": len(mine), "failures": sum(k.status == "violation" for k in mine),
                      "errors": sum(k.status == "unknown" for k in mine)}
            suite = ET.SubElement(root, "testsuite", name=f"{pname}.theorem{num}", skipped="0",
                                  **{k: str(v) for k, v in counts.items()})
            props = ET.SubElement(suite, "properties")
            ET.SubElement(props, "property", name="statement", value=theorem(num, []).statement)
            ET.SubElement(props, "property", name="profile", value=pname)
            for k in mine:
                tc = ET.SubElement(suite, "testcase", classname=f"pgvirt.{pname}.theorem{num}",
                                   name=k.c.form.name, time=f"{k.c.seconds:.3f}")
                if k.status == "violation":
                    el = ET.SubElement(tc, "failure", message=k.message, type="TheoremViolation")
                    el.text = k.detail
                elif k.status == "unknown":
                    el = ET.SubElement(tc, "error", message=k.message, type="SolverUnknown")
                    el.text = k.detail
            for key, v in counts.items():
                totals[key] += v
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", str(totals["errors"]))
    if wall is not None:
        root.set("time", f"{wall:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def check_patch_junit(rep) -> ET.ElementTree:
    """JUnit for ``pgvirt check-patch``: one test case per claim (manifest, bytes, remaining
    instructions, and per site the trap and the equivalence proof); fails are failures, unknowns
    errors, so a dashboard never shows an undecided claim as passed."""
    root = ET.Element("testsuites", name="pgvirt check-patch")
    suite = ET.SubElement(root, "testsuite", name=f"check-patch.{rep.profile}", skipped="0",
                          time=f"{rep.seconds:.3f}")
    props = ET.SubElement(suite, "properties")
    for k, v in (("patched", rep.patched), ("manifest", rep.manifest), ("original", rep.original),
                 ("profile", rep.profile), ("verdict", rep.verdict)):
        ET.SubElement(props, "property", name=k, value=str(v))
    counts = {"tests": 0, "failures": 0, "errors": 0}
    used: Counter = Counter()
    for o in rep.obligations:
        where = "" if o.site is None else f".site{o.site}"
        name = f"{o.claim}{where}" + ("" if o.address is None else f"@{o.address:#x}")
        used[name] += 1
        if used[name] > 1:  # several proofs of one claim (the trap: privileged, and #GP(0))
            name += f"#{used[name]}"
        tc = ET.SubElement(suite, "testcase", classname=f"pgvirt.check_patch.{o.claim}", name=name,
                           time=f"{o.seconds:.3f}")
        counts["tests"] += 1
        if o.status == "fails":
            counts["failures"] += 1
            el = ET.SubElement(tc, "failure", message=o.message, type="CheckPatchFailure")
            el.text = json.dumps(o.detail, default=str) if o.detail else o.message
        elif o.status == "unknown":
            counts["errors"] += 1
            ET.SubElement(tc, "error", message=o.message, type="SolverUnknown").text = o.message
    for el in (suite, root):
        for k, v in counts.items():
            el.set(k, str(v))
    root.set("time", f"{rep.seconds:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)
