"""``pgvirt classify`` and ``pgvirt verify``: every Popek-Goldberg class of every form, and the
Theorem 1 and 3 verdicts."""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console

from .common import add_profile, output_file, positive_int, profile_names, progress
from .errors import EXIT_BAD, EXIT_FAIL, EXIT_OK, UsageError


def load_controls(name: str, path: str):
    """The hardware profile ``name`` under the VMCS controls / VMCB intercepts in ``path``; a file
    VM entry or VMRUN would refuse is one line naming the rule (exit 2)."""
    from pgvirt.model import profiles, svm, vmx

    prof = profiles.get(name)
    if prof.vm is None:
        raise UsageError(f"--controls applies to the hardware profiles (vtx, svm), not {name!r}")
    loader = vmx.load if isinstance(prof.vm, vmx.Controls) else svm.load
    try:
        return prof.with_controls(loader(path))
    except (vmx.ControlsError, svm.InterceptsError) as e:
        raise UsageError(f"controls file refused: {e}") from None


def _profiles_of(args) -> list:
    names = profile_names(args)
    path = getattr(args, "controls", None)
    if path is None:
        return names
    if len(names) != 1:
        raise UsageError("--controls takes one --profile (vtx or svm)")
    return [load_controls(names[0], path)]


def _classify_profiles(names: list, args, err: Console, every: bool = True, witnesses: bool = True):
    """Classifications per profile: of the FORMs named, else of every form (hand-written and
    derived), or without ``every`` of the hand-written forms only."""
    from pgvirt.model import isa
    from pgvirt.model.derived import registry
    from pgvirt.verify.popek_goldberg import classify_many

    forms = getattr(args, "forms", None) or None
    if forms:
        for f in forms:
            try:
                registry.get(f)
            except KeyError as e:
                raise UsageError(str(e.args[0])) from None
    elif every:
        forms = list(registry.names())
    total = len(forms or isa.FORMS) * len(names)
    advance, close = progress(err, total, "solving", args.format == "text" and err.is_terminal)
    try:
        res = classify_many(names, forms, jobs=args.jobs, timeout_ms=args.timeout_ms, progress=advance,
                            witnesses=witnesses)
        return [(p, res[p]) for p in (n if isinstance(n, str) else n.name for n in names)]
    finally:
        close()


def cmd_classify(args, out: Console, err: Console) -> int:
    from pgvirt.report import documents, theorems as report

    names = _profiles_of(args)
    t0 = time.perf_counter()
    per = _classify_profiles(names, args, err)
    if args.format == "json":
        doc = documents.classify_json(per[0][0], per[0][1]) if len(per) == 1 else \
            {"profiles": [documents.classify_json(p, r) for p, r in per]}
        print(json.dumps(doc, indent=2))
    else:
        out.print(report.summary(per, time.perf_counter() - t0))   # the answer first
        for p, r in per:
            out.print(report.classify_table(p, r))
    return _exit(per)


def cmd_verify(args, out: Console, err: Console) -> int:
    from pgvirt.report import documents, theorems as report

    names = _profiles_of(args)
    t0 = time.perf_counter()
    # The theorems report the witnesses of violations alone: no other is read out of a model.
    per = _classify_profiles(names, args, err, every=args.form_set == "all", witnesses=False)
    if args.format == "json":
        print(json.dumps(documents.verify_json(per), indent=2))
    else:
        out.print(report.summary(per, time.perf_counter() - t0))   # the answer first
        report.verify_text(out, per)
    if args.junit or args.sarif:
        from pgvirt.report.files import write_verify_reports
        try:
            write_verify_reports(per, args.junit, args.sarif, time.perf_counter() - t0)
        except OSError as e:
            raise UsageError(f"cannot write report {e.filename}: {e.strerror}") from None
    return _exit(per)


def _exit(per) -> int:
    """As everywhere: 2 if a theorem is unknown, 1 if one fails, else 0 (both commands print the
    verdicts of Theorems 1 and 3)."""
    from pgvirt.verify.popek_goldberg import theorem

    verdicts = [theorem(n, r).verdict for _, r in per for n in ("1", "3")]
    if "unknown" in verdicts:
        return EXIT_BAD
    return EXIT_FAIL if "fails" in verdicts else EXIT_OK


def _add_solver_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--timeout-ms", type=positive_int, default=20_000,
                   help="per solver query; an answer past it is UNKNOWN (default 20000)")
    p.add_argument("--jobs", type=positive_int, default=None, help="worker processes (default: cores)")
    p.add_argument("--controls", metavar="FILE",
                   help="vtx/svm: the VMCS controls or VMCB intercepts as JSON (default: the documented "
                        "default; see model/vmx.py, model/svm.py)")


def register(sub, commands) -> None:
    c = sub.add_parser("classify", help="every Popek-Goldberg class of every instruction form")
    add_profile(c, all_profiles=True)
    c.add_argument("forms", nargs="*", metavar="FORM", help="only these forms")
    _add_solver_opts(c)
    commands["classify"] = cmd_classify

    v = sub.add_parser("verify", help="Theorem 1 and 3 verdicts with violations and witnesses")
    add_profile(v, all_profiles=True)
    _add_solver_opts(v)
    v.add_argument("--forms", dest="form_set", choices=("all", "hand"), default="all",
                   help="the theorems over every form, hand-written and derived (all, the default), "
                        "or over the hand-written forms only (hand)")
    v.add_argument("--junit", metavar="FILE", type=output_file,
                   help="also write JUnit XML: one test case per profile x theorem x form")
    v.add_argument("--sarif", metavar="FILE", type=output_file,
                   help="also write SARIF 2.1.0: one rule per violating form")
    commands["verify"] = cmd_verify
