"""``pgvirt coverage``: every iced-x86 code valid in 32-bit mode as hand-written, derived, two
forms (a WAIT-prefixed x87 code) or unsupported with its reason; totals by encoding kind."""

from __future__ import annotations

import json
import sys

from .errors import EXIT_OK


def cmd_coverage(args, out, err) -> int:
    from pgvirt.emulator.frame import load_status
    from pgvirt.model.derived import coverage

    doc = coverage.coverage(load_status())
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    else:
        out.print(coverage.text(doc), markup=False, highlight=False)
    return EXIT_OK


def register(sub, commands) -> None:
    c = sub.add_parser("coverage", help="every 32-bit instruction code: hand-written, derived or unsupported")
    c.add_argument("--format", choices=("text", "json"), default="text")
    commands["coverage"] = cmd_coverage
