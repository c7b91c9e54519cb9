"""Reports of classifications and theorem verdicts: JSON documents and rich text tables."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pgvirt.verify.popek_goldberg import CLASSES, Classification, kind, kind_counts, theorem

from .documents import departures

SHORT = {"privileged": "priv", "control_sensitive": "ctrl", "mode_sensitive": "mode",
         "location_sensitive": "loc", "behavior_sensitive": "behav", "sensitive": "sens",
         "user_sensitive": "user", "innocuous": "innoc"}


# --- text ---------------------------------------------------------------------------------------

def _cell(c: Classification, cls: str) -> Text:
    v = c[cls]
    a = c.answers[cls]
    if v is None:
        return Text("?", style="bold yellow")
    mark = "yes" if v else "no"
    style = {"privileged": "green" if v else "red"}.get(cls, ("red" if v else "dim"))
    if cls == "innocuous":
        style = "green" if v else "dim"
    if a.verdict == "unknown":
        style = "yellow"
    return Text(mark, style=style)


def classify_table(profile: str, results: list[Classification]) -> Table:
    t = Table(title=f"Popek-Goldberg classification, profile {profile}", header_style="bold")
    t.add_column("form")
    t.add_column("asm")
    for cls in CLASSES:
        t.add_column(SHORT[cls], justify="center")
    for c in results:
        t.add_row(c.form.name, Text(c.form.asm), *(_cell(c, cls) for cls in CLASSES))
    return t


def verify_text(console: Console, per_profile: list[tuple[str, list[Classification]]]) -> None:
    for pname, results in per_profile:
        for num in ("1", "3"):
            th = theorem(num, results)
            style = {"holds": "bold green", "fails": "bold red", "unknown": "bold yellow"}[th.verdict]
            console.print(Text.assemble(f"[{pname}] Theorem {num}: {th.statement}: ",
                                        (th.verdict.upper(), style)))
            if th.violations:
                t = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
                t.add_column("form")
                t.add_column("asm")
                t.add_column("sensitive because")
                t.add_column("witness")
                for c in th.violations:
                    why, evidence = explain(c, th.cls)
                    t.add_row(c.form.name, Text(c.form.asm), why, Text(evidence))
                console.print(t)
            if th.undecided:
                console.print(Text(f"  undecided (solver gave no answer): "
                                   f"{', '.join(c.form.name for c in th.undecided)}", style="yellow"))
        dep = departures(results, theorem("1", results))
        derived: dict[str, list[str]] = {}
        for d in dep["beyond_the_paper"]:
            if kind(d["name"]) == "derived":    # hundreds of them: one line by mnemonic and reason
                derived.setdefault(d["why"], []).append(d["mnemonic"])
                continue
            console.print(Text(f"  beyond Robin & Irvine: {d['name']} ({d['asm']}): {d['why']}",
                               style="magenta"))
        for why, mns in derived.items():
            counts = Counter(mns)
            console.print(Text(f"  beyond Robin & Irvine, {len(mns)} derived forms {why}: "
                               + ", ".join(f"{m} x{n}" if n > 1 else m for m, n in sorted(counts.items())),
                               style="magenta"))
        for d in dep["listed_but_not_violations"]:
            console.print(Text(f"  Robin & Irvine list {d['paper']}; {d['name']} ({d['asm']}) is {d['why']}",
                               style="cyan"))


COMPONENTS = {"sensitive": ("control_sensitive", "mode_sensitive", "location_sensitive"),
              "user_sensitive": ("control_sensitive", "location_sensitive")}


def explain(c: Classification, cls: str) -> tuple[str, str]:
    """Which definitions make ``c`` sensitive, and the witness in one line."""
    parts = [p for p in COMPONENTS[cls] if c[p]]
    why = " + ".join(p.replace("_sensitive", "") for p in parts)
    w = c.answers[cls].witness or {}
    return why, witness_line(w)


def _res_line(o: dict) -> str:
    if o.get("exit"):
        return f"exit {o['exit_reason']}"
    if o.get("fault"):
        return f"fault {o['vector']}"
    ch = o.get("changed", {})
    regs = [f"{k}={v:#x}" for k, v in ch.items() if k not in ("mem", "io", "eip")][:2]
    if "mem" in ch:
        regs.append("mem " + " ".join(f"{b:02x}" for _, b in sorted(ch["mem"].items())[:6]))
    return ", ".join(regs) or "no change"


def witness_line(w: dict) -> str:
    if "guest" in w:      # a hardware profile's hole: the non-root run against the guest's machine
        return (f"non-root, CPL {w['guest']['cpl']}: {_res_line(w['guest_outcome'])} | "
                f"guest's own machine: {_res_line(w['native_outcome'])}")
    if "native" in w:
        return (f"CPL 0: {_res_line(w['native_outcome'])} | CPL 3: "
                f"{_res_line(w['deprivileged_outcome'])}")
    if "a" in w:
        return f"{_res_line(w['a_outcome'])} | relocated: {_res_line(w['b_outcome'])}"
    if "state" in w:
        return f"CPL {w['state']['cpl']}: {_res_line(w['state_outcome'])}"
    return ""


def _by_kind(results) -> str:
    """``n hand-written + m derived`` (only the hand-written count when nothing is derived)."""
    k = kind_counts(results)
    return f"{k['hand_written']:,} hand-written" + (f" + {k['derived']:,} derived" if k["derived"] else "")


def _kinds_of(violations) -> str:
    return f": {_by_kind(violations)}" if violations else ""


def summary(per_profile: Iterable[tuple[str, list[Classification]]], seconds: float) -> str:
    """One line per run: each profile's verdicts with their violations by kind, then the forms
    the theorems ranged over."""
    parts, forms = [], None
    for pname, results in per_profile:
        t1, t3 = theorem("1", results), theorem("3", results)
        parts.append(f"{pname}: Theorem 1 {t1.verdict} ({len(t1.violations)} violations"
                     f"{_kinds_of(t1.violations)}), Theorem 3 {t3.verdict} ({len(t3.violations)}"
                     f"{_kinds_of(t3.violations)})")
        forms = results
    over = f" over {len(forms):,} forms ({_by_kind(forms)})" if forms else ""
    return "; ".join(parts) + over + f"  [{seconds:.1f} s]"
