"""CI artefacts: JUnit XML and SARIF 2.1.0 of theorem verdicts, and SMT-LIB 2 proof obligations.

JUnit has one test case per profile x theorem x form: a ``failure`` for a violation (with the
witness), an ``error`` for an undecided form (unknown fails closed; ``skipped`` would read as
green), otherwise a pass.  SARIF has one rule per form that violates a theorem (or is undecided)
and one result per profile x theorem.  ``export_smt`` writes each query of
``popek_goldberg.Engine.queries()`` as a self-contained SMT-LIB 2 script with Z3's answer.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import Counter
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from pgvirt.model import isa, profiles

from . import report
from .popek_goldberg import Classification, Engine, theorem
from .solver import DEFAULT_TIMEOUT_MS, Verdict, smtlib

THEOREMS = ("1", "3")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_ROOT = Path(__file__).resolve().parent.parent   # the repository: model/ and verify/ live here


def pgvirt_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pgvirt")
    except PackageNotFoundError:
        return "0"


def fingerprint(*parts) -> str:
    """A SARIF partial fingerprint: stable across runs for the same parts."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:32]


def sarif_log(rules: list, results: list, **run) -> dict:
    """A SARIF 2.1.0 log of one pgvirt run: its rules and results, and ``run``'s further
    members (artifacts, invocations, properties, ...)."""
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0",
            "runs": [{"tool": {"driver": {"name": "pgvirt", "version": pgvirt_version(),
                                          "rules": rules}},
                      **run, "results": results}]}


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

def junit(per_profile: list[tuple[str, list[Classification]]]) -> ET.ElementTree:
    all_cases = cases(per_profile)
    root = ET.Element("testsuites", name="pgvirt verify")
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
    for pname, _ in per_profile:
        for num in THEOREMS:
            mine = [k for k in all_cases if k.profile == pname and k.theorem == num]
            secs = sum(k.c.seconds for k in mine)
            counts = {"tests": len(mine), "failures": sum(k.status == "violation" for k in mine),
                      "errors": sum(k.status == "unknown" for k in mine)}
            suite = ET.SubElement(root, "testsuite", name=f"{pname}.theorem{num}",
                                  skipped="0", time=f"{secs:.3f}",
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
            totals["time"] += secs
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", str(totals["errors"]))
    root.set("time", f"{totals['time']:.3f}")
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


def write_check_patch_reports(rep, sarif_doc: dict, junit_path: str | None, sarif_path: str | None) -> None:
    if junit_path:
        check_patch_junit(rep).write(junit_path, encoding="utf-8", xml_declaration=True)
    if sarif_path:
        with open(sarif_path, "w", encoding="utf-8") as fh:
            json.dump(sarif_doc, fh, indent=2, default=str)
            fh.write("\n")


# --- SARIF ---------------------------------------------------------------------------------------

def form_location(form) -> dict:
    """Where the form is defined in the model, relative to the pgvirt source tree."""
    fn = inspect.unwrap(form.semantics)
    try:
        path = Path(inspect.getsourcefile(fn)).resolve()
        line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        path, line = None, 1
    try:
        uri = path.relative_to(_ROOT).as_posix() if path else "model/isa"
    except ValueError:
        uri = path.name
    return {"physicalLocation": {"artifactLocation": {"uri": uri, "uriBaseId": "PGVIRTROOT"},
                                 "region": {"startLine": line}},
            "logicalLocations": [{"name": form.name, "fullyQualifiedName": f"pgvirt.model.isa.{form.name}",
                                  "kind": "function"}]}


def sarif(per_profile: list[tuple[str, list[Classification]]]) -> dict:
    rules, index, results = [], {}, []
    for k in cases(per_profile):
        if k.status == "pass":
            continue
        f = k.c.form
        if f.name not in index:
            index[f.name] = len(rules)
            rules.append({
                "id": f"pgvirt/{f.name}",
                "name": f.name,
                "shortDescription": {"text": f"{f.asm} must trap in user mode if it is sensitive"},
                "fullDescription": {"text": f"A trap-and-emulate monitor can intercept {f.asm} "
                                            f"({f.bytes.hex()}) only if the guest's run of it traps; "
                                            f"pgvirt proves or refutes that with Z3. Semantics: {f.cite}"},
                "help": {"text": "Popek-Goldberg Theorem 1 needs every sensitive instruction to be "
                                 "privileged, Theorem 3 every user-sensitive one. Patch the site "
                                 "(paravirtualize or binary-translate it) or run under a profile "
                                 "that makes it trap."},
                "defaultConfiguration": {"level": "error"},
                "properties": {"tags": ["popek-goldberg", "virtualization"], "mnemonic": f.mnemonic},
            })
        fp = fingerprint(k.profile, k.theorem, f.name)
        res = {
            "ruleId": f"pgvirt/{f.name}",
            "ruleIndex": index[f.name],
            "message": {"text": f"[{k.profile}] Theorem {k.theorem}: {k.message}"},
            "locations": [form_location(f)],
            "partialFingerprints": {"pgvirtCase/v1": fp},
            "properties": {"profile": k.profile, "theorem": k.theorem, "status": k.status},
        }
        if k.status == "violation":
            res.update(kind="fail", level="error")
            res["properties"]["witness"] = violation_witness(k.c, k.cls)
        else:  # SARIF: a result the tool could not decide is "open", and its level must be "none"
            res.update(kind="open", level="none")
        results.append(res)
    return sarif_log(rules, results,
                     originalUriBaseIds={"PGVIRTROOT": {"uri": _ROOT.as_uri() + "/"}},
                     invocations=[{"executionSuccessful": True}],
                     properties={"profiles": [p for p, _ in per_profile]})


def write_verify_reports(per_profile, junit_path: str | None, sarif_path: str | None) -> None:
    """The ``pgvirt verify --junit/--sarif`` files."""
    if junit_path:
        with open(junit_path, "wb") as fh:
            junit(per_profile).write(fh, encoding="utf-8", xml_declaration=True)
    if sarif_path:
        with open(sarif_path, "w", encoding="utf-8") as fh:
            json.dump(sarif(per_profile), fh, indent=2)
            fh.write("\n")


# --- SMT-LIB export --------------------------------------------------------------------------------

STATUS = {Verdict.PROVED: "unsat", Verdict.REFUTED: "sat", Verdict.UNKNOWN: "unknown"}


def _export_one(job) -> list[tuple[str, str, float]]:
    form_name, pname, timeout_ms, outdir = job
    eng = Engine(isa.get(form_name), profiles.get(pname), timeout_ms)
    out = []
    for key, q in eng.queries().items():
        r = eng.solve(q)[0]   # the answer classify uses, so the file and the verdicts agree
        rel = f"{pname}/{form_name}.{key}.smt2"
        text = smtlib(q.formula, STATUS[r.verdict], f"{pname}/{form_name}/{q.name}")
        Path(outdir, rel).write_text(text, encoding="utf-8")
        out.append((rel, STATUS[r.verdict], r.seconds))
    return out


def export_smt(outdir: str | os.PathLike, profile_names: list[str], forms: list[str] | None = None,
               timeout_ms: int = DEFAULT_TIMEOUT_MS, jobs: int | None = None,
               progress=None) -> list[tuple[str, str, float]]:
    """Write ``<profile>/<form>.<query>.smt2`` under ``outdir``; return (path, status, seconds)."""
    import multiprocessing as mp

    names = forms or [f.name for f in isa.FORMS]
    for n in names:
        isa.get(n)
    for p in profile_names:
        profiles.get(p)
        Path(outdir, p).mkdir(parents=True, exist_ok=True)
    work = [(n, p, timeout_ms, str(outdir)) for p in profile_names for n in names]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    done = []
    if jobs <= 1:
        results = map(_export_one, work)
    else:
        pool = mp.get_context("fork").Pool(jobs)
        results = pool.imap(_export_one, work)
    try:
        for item in results:
            done.extend(item)
            if progress:
                progress(item[0][0] if item else "")
    finally:
        if jobs > 1:
            pool.close()
            pool.join()
    return done
