"""SARIF 2.1.0 logs: theorem verdicts (``pgvirt verify --sarif``), guest scans and check-patch
results, all in one envelope (``sarif_log``) with one fingerprint scheme."""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

from pgvirt.guest.paravirt import UNDECIDED, CheckReport, ScanReport, sha256_file
from pgvirt.guest.image import Guest
from pgvirt.verify.popek_goldberg import Classification, kind

from .junit import cases, violation_witness

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


# --- theorem verdicts -------------------------------------------------------------------------

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
    layer = "derived" if kind(form.name) == "derived" else "isa"
    return {"physicalLocation": {"artifactLocation": {"uri": uri, "uriBaseId": "PGVIRTROOT"},
                                 "region": {"startLine": line}},
            "logicalLocations": [{"name": form.name, "fullyQualifiedName": f"pgvirt.model.{layer}.{form.name}",
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


# --- guest scans -------------------------------------------------------------------------------

def _is_gzip(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _uri(path: str) -> str:
    p = Path(path)
    return p.resolve().as_uri() if p.is_absolute() else p.as_posix()


def _sarif_location(g: Guest, uri: str, address: int, section: str | None, symbol: str | None,
                    length: int, gzipped: bool) -> dict:
    """An address location (SARIF 2.1.0 3.32) with the artifact, and a binary region (3.30: byte
    offset and length) only where the artifact's bytes are the image's (not for a gzip-compressed
    guest) and the section is known: a binary artifact has no lines."""
    sec = next((s for s in g.sections if s.name == section), None)
    name = symbol or (f"{section}+{address - sec.addr:#x}" if sec else f"{address:#x}")
    phys: dict = {"artifactLocation": {"uri": uri, "index": 0}}
    if sec is not None and not gzipped:
        phys["region"] = {"byteOffset": sec.offset + address - sec.addr, "byteLength": length}
    phys["address"] = {"absoluteAddress": address, "name": name, "kind": "instruction", "length": length}
    loc = {"physicalLocation": phys}
    if symbol:
        loc["logicalLocations"] = [{"name": symbol.split("+", 1)[0], "kind": "function"}]
    return loc


def scan_sarif(rep: ScanReport) -> dict:
    """SARIF 2.1.0 for code scanning: one rule per violating form, one error result per site,
    one review result (level none) per unmodelled mnemonic at its first address."""
    g, r = rep.guest, rep.result
    uri = _uri(g.path)
    gzipped = _is_gzip(g.path)
    rules, index, results = [], {}, []
    data = {id(s) for s in rep.data_sites}
    for s in r.sites + rep.data_sites:
        c = rep.verdicts[s.form]
        f = c.form
        if s.form not in index:
            index[s.form] = len(rules)
            rules.append({
                "id": f"pgvirt/{f.name}",
                "name": f.name,
                "shortDescription": {"text": f"{f.mnemonic} must trap in user mode if it is sensitive"},
                "fullDescription": {"text": rep.reason(s.form)},
                "help": {"text": "Paravirtualize the site (pgvirt patch rewrites it into a hypercall "
                                 "to the monitor) or run under a profile that makes it trap. "
                                 f"Semantics: {f.cite}"},
                "defaultConfiguration": {"level": "error"},
                "properties": {"tags": ["popek-goldberg", "virtualization"], "mnemonic": f.mnemonic,
                               "classes": list(s.classes)},
            })
        where = s.symbol or f"{s.address:#x}"
        if id(s) in data:
            where += f" (executable data in {s.section})"
        # Undecided is no verdict either way: SARIF's "open", whose level is none (3.27.9-10).
        kind = ("fail", "error") if s.classes != (UNDECIDED,) else ("open", "none")
        results.append({
            "ruleId": f"pgvirt/{f.name}", "ruleIndex": index[s.form], "kind": kind[0], "level": kind[1],
            "message": {"text": f"{s.asm} ({s.bytes}) at {s.address:#x} in {where}: {rep.reason(s.form)}"},
            "locations": [_sarif_location(g, uri, s.address, s.section, s.symbol, len(s.bytes) // 2, gzipped)],
            "partialFingerprints": {"pgvirtSite/v1": fingerprint(f.name, s.section, where, s.bytes)},
            "properties": {"profile": rep.profile.name, "form": f.name, "classes": list(s.classes),
                           "section": s.section, "executable_data": id(s) in data},
        })
    if r.unmodelled:
        unm = len(rules)
        rules.append({
            "id": "pgvirt/unmodelled", "name": "unmodelled",
            "shortDescription": {"text": "instruction outside the model"},
            "fullDescription": {"text": "No instruction form of the model describes these bytes, so "
                                        "nothing is proved about them; they are not counted harmless."},
            "defaultConfiguration": {"level": "none"},
            "properties": {"tags": ["popek-goldberg", "coverage"]},
        })
        for u in r.unmodelled:
            a = u.first[0]
            # In a relocatable object every section starts at 0: an address names no section.
            sec = g.section_at(a) if g.kind != "rel" else None
            secname = sec.name if sec else None
            sym = g.symbolize(a, secname) if sec else None
            code_len = len(u.example.split()[0]) // 2
            results.append({
                # A result that needs a human's review, not a failure: SARIF 3.27.10 gives it level none.
                "ruleId": "pgvirt/unmodelled", "ruleIndex": unm, "kind": "review", "level": "none",
                "message": {"text": f"{u.count} instruction(s) '{u.mnemonic}' no form models "
                                    f"(first at {', '.join(f'{x:#x}' for x in u.first)}; e.g. {u.example})"},
                "locations": [_sarif_location(g, uri, a, secname, sym, code_len, gzipped)],
                "partialFingerprints": {"pgvirtUnmodelled/v1": fingerprint(u.mnemonic, g.path)},
                "properties": {"count": u.count, "mnemonic": u.mnemonic},
            })
    return sarif_log(
        rules, results,
        artifacts=[{"location": {"uri": uri}, "length": _size(g.path),
                    "mimeType": "application/gzip" if gzipped else "application/octet-stream",
                    "hashes": {"sha-256": sha256_file(g.path)}}],
        invocations=[{"executionSuccessful": True}],
        properties={"profile": rep.profile.name, "instructions": r.instructions,
                    "undecodable": r.undecodable, "unmodelled": r.unmodelled_count,
                    "undecided": len(rep.undecided), "notes": list(g.notes),
                    "executable_data_bytes": sum(len(x.data) for x in g.exec_data),
                    "executable_data_swept": rep.data_result is not None})


# --- check-patch -------------------------------------------------------------------------------

_CLAIMS = {
    "manifest": "the manifest describes the original guest",
    "bytes": "outside the sites the patched file is the original, byte for byte",
    "remaining": "no sensitive-unprivileged instruction remains but allow-listed forms",
    "coverage": "instructions outside the model",
    "executable-data": "executable bytes that are data are outside claim (1) unless --strict",
    "trap": "the hypercall traps to the monitor",
    "equivalence": "the site's handler is its original instruction",
}


def check_sarif(rep: CheckReport) -> dict:
    """SARIF 2.1.0: one rule per claim; a result per failing or undecided obligation (errors;
    undecided: kind open, level none) and a review result (level none) for the instructions
    outside the model."""
    uri = _uri(rep.patched)
    rules = [{"id": f"pgvirt/check-patch/{k}", "name": k, "shortDescription": {"text": v},
              "defaultConfiguration": {"level": "none" if k in ("coverage", "executable-data") else "error"}}
             for k, v in _CLAIMS.items()]
    index = {k: i for i, k in enumerate(_CLAIMS)}
    results = []
    for o in rep.obligations:
        if o.status == "holds":
            continue
        res: dict = {"ruleId": f"pgvirt/check-patch/{o.claim}", "ruleIndex": index[o.claim],
                     "message": {"text": o.message}}
        if o.status == "outside":
            res.update(kind="review", level="none")   # SARIF 3.27.10: not a failure, so level none
        elif o.status == "fails":
            res.update(kind="fail", level="error")
        else:
            res.update(kind="open", level="none")
        loc: dict = {"physicalLocation": {"artifactLocation": {"uri": uri, "index": 0}}}
        if o.address is not None:
            loc["physicalLocation"]["address"] = {"absoluteAddress": o.address, "kind": "instruction",
                                                  "name": o.symbol or f"{o.address:#x}"}
        res["locations"] = [loc]
        res["partialFingerprints"] = {"pgvirtCheck/v1": fingerprint(o.claim, o.section, o.address, o.site)}
        if o.detail is not None:
            res["properties"] = {"detail": o.detail}
        results.append(res)
    return sarif_log(rules, results, artifacts=[{"location": {"uri": uri}}],
                     invocations=[{"executionSuccessful": True}],
                     properties={"verdict": rep.verdict, "profile": rep.profile,
                                 "manifest": rep.manifest, "original": rep.original})
