"""``pgvirt controls``: which VT-x controls / SVM intercepts the hardware Theorem 1 needs
(verify/controls.py), and VT-x and SVM side by side on Robin and Irvine's instructions."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .common import positive_int
from .errors import EXIT_BAD, EXIT_FAIL, EXIT_OK, UsageError


def _witness(w: dict | None) -> str:
    from pgvirt.report.theorems import witness_line
    return witness_line(w) if w else ""


def controls_text(out: Console, s) -> None:
    out.print(Text.assemble(f"[{s.profile}] controls of '{s.configuration}': Theorem 1 ",
                            (s.baseline.upper(), "bold green" if s.baseline == "holds" else "bold red")))
    t = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for col in ("control", "switched off", "re-asked", "form", "why / witness"):
        t.add_column(col)
    style = {"necessary": "red", "harmless": "green", "refused": "cyan", "unknown": "yellow"}
    for r in s.results:
        detail = r.why + (f"; {_witness(r.witness)}" if r.witness else "")
        t.add_row(r.control, Text(r.verdict, style=style[r.verdict]), str(r.reasked), r.form, Text(detail))
    out.print(t)
    out.print(f"minimal sufficient set ({len(s.minimal)}): {', '.join(s.minimal)}")


def compare_text(out: Console, rows: list[dict]) -> None:
    t = Table(title="VT-x and SVM on Robin and Irvine's instructions", header_style="bold")
    for col in ("instruction", "form", "VT-x can exit", "VT-x default", "SVM can exit", "SVM default",
                "difference"):
        t.add_column(col)

    def cell(r):
        return f"yes ({r['exit_reason']})" if r["can_exit"] == "exits" else \
            ("no (proved)" if r["can_exit"] == "never" else "unknown")
    for r in rows:
        t.add_row(r["paper"], r["form"], cell(r["vtx"]), r["vtx"]["default"], cell(r["svm"]),
                  r["svm"]["default"], r["difference"])
    out.print(t)


def cmd_controls(args, out: Console, err: Console) -> int:
    from pgvirt.model import profiles
    from pgvirt.verify import controls

    from .theorems import load_controls

    prof = profiles.get(args.profile)
    if prof.vm is None:
        raise UsageError(f"controls: --profile must be vtx or svm, not {args.profile!r}")
    if args.controls:
        prof = load_controls(args.profile, args.controls)
    s = controls.search(prof, jobs=args.jobs, timeout_ms=args.timeout_ms)
    rows = controls.compare(args.timeout_ms) if args.compare else None
    if args.format == "json":
        doc = s.as_json()
        if rows is not None:
            doc["comparison"] = rows
        print(json.dumps(doc, indent=2, default=str))
    else:
        controls_text(out, s)
        if rows is not None:
            compare_text(out, rows)
    return {"holds": EXIT_OK, "fails": EXIT_FAIL}.get(s.baseline, EXIT_BAD)


def register(sub, commands) -> None:
    c = sub.add_parser("controls", help="VT-x controls / SVM intercepts the hardware Theorem 1 needs, "
                                        "and a minimal sufficient set")
    c.add_argument("--profile", choices=("vtx", "svm"), required=True)
    c.add_argument("--controls", metavar="FILE", help="start from this configuration (JSON)")
    c.add_argument("--compare", action="store_true",
                   help="also VT-x and SVM side by side on Robin and Irvine's instructions")
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.add_argument("--timeout-ms", type=positive_int, default=20_000)
    c.add_argument("--jobs", type=positive_int, default=None)
    commands["controls"] = cmd_controls
