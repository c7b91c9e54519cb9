"""The JSON documents of every command (``--format json``): classifications, theorem verdicts,
guest scans and check-patch reports."""

from __future__ import annotations

from pgvirt.guest.paravirt import CheckReport, ScanReport, violation
from pgvirt.verify.literature import robin_irvine_entry
from pgvirt.verify.popek_goldberg import Classification, Theorem, theorem


def classify_json(profile: str, results: list[Classification]) -> dict:
    return {"profile": profile, "instructions": [c.row() for c in results]}


def departures(results: list[Classification], t1: Theorem) -> dict:
    """Where the derived Theorem-1 violations depart from Robin & Irvine's list."""
    violating = {c.form.name for c in t1.violations}
    beyond, not_derived = [], []
    for c in results:
        entry = robin_irvine_entry(c.form.mnemonic, c.form.asm)
        if c.form.name in violating and entry is None:
            a = c.answers["sensitive"]
            beyond.append({"name": c.form.name, "mnemonic": c.form.mnemonic, "asm": c.form.asm, "why": a.note,
                           "witness": a.witness})
        elif c.form.name not in violating and entry is not None:
            why = ("privileged under this profile" if c["privileged"] else
                   "not sensitive under the definitions" if c["sensitive"] is False else "undecided")
            not_derived.append({"name": c.form.name, "asm": c.form.asm, "paper": entry, "why": why})
    return {"beyond_the_paper": beyond, "listed_but_not_violations": not_derived}


def verify_json(per_profile: list[tuple[str, list[Classification]]]) -> dict:
    out = []
    for pname, results in per_profile:
        t1, t3 = theorem("1", results), theorem("3", results)
        out.append({"profile": pname, "forms": t1.forms,
                    "theorems": {"1": t1.as_json(), "3": t3.as_json()},
                    "robin_irvine": departures(results, t1),
                    "assumptions": sorted({a for c in results for a in c.assumptions})})
        vm = results[0].profile.vm if results else None
        if vm is not None:     # a hardware profile: the configuration the verdicts hold for
            out[-1]["controls"] = vm.as_json()
    return {"profiles": out}


def scan_json(rep: ScanReport) -> dict:
    r = rep.result
    return {
        "guest": rep.guest.path,
        "profile": rep.profile.name,
        "sites": [dict(s.row(), reason=rep.reason(s.form)) for s in r.sites],
        "violating": sum(s.classes != ("undecided",) for s in r.sites),
        "undecided": sum(s.classes == ("undecided",) for s in r.sites),
        "executable_data": [{"section": s.name, "address": s.addr, "size": len(s.data)}
                            for s in rep.guest.exec_data],
        "data_sites": None if rep.data_result is None else
        [dict(s.row(), reason=rep.reason(s.form)) for s in rep.data_sites],
        "notes": list(rep.guest.notes),
        "unmodelled": [{"mnemonic": u.mnemonic, "count": u.count, "first": list(u.first),
                        "example": u.example} for u in r.unmodelled],
        "instructions": r.instructions,
        "undecodable": r.undecodable,
        "violating_forms": {f: {"count": n, "classes": list(violation(rep.verdicts[f])),
                                "reason": rep.reason(f)}
                            for f, n in r.forms.items() if violation(rep.verdicts[f])},
        "symbols": rep.guest.symbol_source,
        "classified_now": rep.derived,
        "seconds": round(rep.seconds, 4),
    }


def check_json(rep: CheckReport) -> dict:
    return {
        "verdict": rep.verdict, "patched": rep.patched, "manifest": rep.manifest, "original": rep.original,
        "profile": rep.profile, "allow": list(rep.allow),
        "obligations": [o.as_json() for o in rep.obligations],
        "sites": [{"hypercall": p.site.number, "address": p.site.address, "form": p.site.form.name,
                   "original": p.site.code.hex(), "proof": p.status, "note": p.note,
                   "seconds": round(p.seconds, 4), "counterexample": p.counterexample} for p in rep.proofs],
        "remaining": [s.row() for s in rep.remaining],
        "allowed": [s.row() for s in rep.allowed],
        "unmodelled": [{"mnemonic": u.mnemonic, "count": u.count, "first": list(u.first)} for u in rep.unmodelled],
        "instructions": rep.instructions,
        "coverage": {"unmodelled": rep.unmodelled_count, "undecodable": rep.undecodable,
                     "undecodable_first": list(rep.undecodable_first), "strict": rep.strict,
                     "note": "unmodelled instructions and undecodable bytes are outside claim (1); "
                             "--strict makes them unknown"},
        "seconds": round(rep.seconds, 4),
    }
