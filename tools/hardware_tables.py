"""Regenerate the README's hardware-virtualization tables from the tool's own answers.

    .venv/bin/python tools/hardware_tables.py [README.md]

Writes, between ``<!-- hardware-tables:begin -->`` and ``<!-- hardware-tables:end -->``: what the
monitor owns under each default configuration (``profiles.hardware.ownership``), the controls
search of ``pgvirt controls --profile vtx|svm`` and the VT-x/SVM comparison (``--compare``).
Nothing in the tables is typed by hand.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pgvirt.model import profiles
from pgvirt.model.profiles.hardware import ownership
from pgvirt.report.theorems import witness_line
from pgvirt.verify import controls

BEGIN, END = "<!-- hardware-tables:begin -->", "<!-- hardware-tables:end -->"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(head, rows) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def generate() -> str:
    lines = []
    for name in ("vtx", "svm"):
        p = profiles.get(name)
        own = ownership(p.vm).as_json()
        rows = [[o["field"], o["mask"], o["why"]] for o in own["owned"]]
        rows += [[s["field"], f"{s['mask']} (reads {s['shadow']})", s["why"]] for s in own["shadowed"]]
        rows.append(["io", own["io_ports_owned"], "ports whose devices the monitor emulates"])
        if not own["tsc"].startswith("owned"):
            rows.append(["tsc", "", own["tsc"]])
        lines += [f"**What the monitor owns under `{name}`'s default** (everything else is the guest's "
                  "own, duplicated state):", ""] + _table(["field", "bits", "why"], rows) + [""]
    for name in ("vtx", "svm"):
        s = controls.search(profiles.get(name))
        rows = [[r.control, r.verdict, r.form or "", (r.why + ("; " + witness_line(r.witness) if r.witness else ""))]
                for r in s.results]
        lines += [f"**`pgvirt controls --profile {name}`** (Theorem 1 {s.baseline} under the default; "
                  f"minimal sufficient set: {', '.join(f'`{m}`' for m in s.minimal)}):", ""]
        lines += _table(["control", "switched off", "form", "why / witness"], rows) + [""]
    rows = []
    for r in controls.compare():
        def cell(x):
            return f"yes ({x['exit_reason']})" if x["can_exit"] == "exits" else \
                ("no (proved)" if x["can_exit"] == "never" else "unknown")
        rows.append([r["paper"], f"`{r['asm']}`", cell(r["vtx"]), r["vtx"]["default"], cell(r["svm"]),
                     r["svm"]["default"], r["difference"]])
    lines += ["**VT-x and SVM on Robin and Irvine's instructions** (`pgvirt controls --compare`: can "
              "the architecture make it exit at all, under every exiting control or intercept; is it "
              "root-mode privileged under the default):", ""]
    lines += _table(["instruction", "form", "VT-x can exit", "VT-x default", "SVM can exit",
                     "SVM default", "difference"], rows)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "README.md")
    text = path.read_text()
    if BEGIN not in text or END not in text:
        print(f"{path}: no {BEGIN} ... {END} section", file=sys.stderr)
        return 2
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: f"{BEGIN}\n{generate()}\n{END}", text,
                 flags=re.S)
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
