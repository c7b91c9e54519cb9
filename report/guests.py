"""Rich text of ``scan``, ``patch`` and ``check-patch``: the sites by function, the instructions no
form models, the check-patch claims and counterexamples, and the one-line summaries."""

from __future__ import annotations

import json
import os
from collections import Counter

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pgvirt.guest.paravirt import group_by_function

SHORT = {"control_sensitive": "control", "mode_sensitive": "mode", "location_sensitive": "location",
         "user_sensitive": "user", "undecided": "undecided"}
STATUS_STYLE = {"holds": "bold green", "fails": "bold red", "unknown": "bold yellow", "outside": "yellow"}


def _classes(cls) -> str:
    return " + ".join(SHORT.get(c, c) for c in cls)


def scan_table(rep) -> Table:
    """The sites by function, with the violated classes; undecided sites (the solver gave no
    answer) in a column of their own, and with ``--strict`` the sites in executable data."""
    t = Table(title=Text(f"{rep.guest.path}: sites that violate Theorem 1 under {rep.profile.name}"),
              header_style="bold", title_justify="left")
    for col, kw in (("function", {}), ("address", {"justify": "right"}), ("offset", {}),
                    ("bytes", {}), ("asm", {}), ("form", {}), ("sensitive", {}), ("undecided", {})):
        t.add_column(col, **kw)
    groups = list(group_by_function(rep.result.sites).items())
    groups += [(f"{name} (executable data)", sites) for name, sites in group_by_function(rep.data_sites).items()]
    for func, sites in groups:
        for k, s in enumerate(sites):
            off = s.symbol.split("+", 1)[1] if s.symbol and "+" in s.symbol else ("+0" if s.symbol else "")
            undecided = s.classes == ("undecided",)
            t.add_row(func if k == 0 else "", f"{s.address:#x}", off, s.bytes, Text(s.asm), s.form,
                      Text("" if undecided else _classes(s.classes), style="red"),
                      Text("undecided" if undecided else "", style="yellow"),
                      end_section=k == len(sites) - 1)
    return t


def unmodelled_table(unmodelled, limit: int = 12) -> Table:
    t = Table(title="instructions no form models (outside the proof, not counted harmless)",
              header_style="bold", title_justify="left", box=None, padding=(0, 1))
    for col in ("mnemonic", "count", "first at", "example"):
        t.add_column(col)
    for u in unmodelled[:limit]:
        t.add_row(u.mnemonic, str(u.count), " ".join(f"{a:#x}" for a in u.first[:3]), Text(u.example))
    if len(unmodelled) > limit:
        rest = unmodelled[limit:]
        t.add_row(f"... {len(rest)} more", str(sum(u.count for u in rest)), "", "")
    return t


def scan_summary(rep) -> str:
    r = rep.result
    bad = [s for s in r.sites if s.classes != ("undecided",)]
    forms = Counter(s.form for s in bad)
    funcs = {s.symbol.split("+", 1)[0] if s.symbol else s.section for s in bad}
    listing = ", ".join(f"{f} x{n}" for f, n in forms.most_common())
    head = (f"{os.path.basename(rep.guest.path)} [{rep.profile.name}]: {len(bad)} violating site(s)"
            + (f" in {len(funcs)} function(s) ({listing})" if bad else ""))
    undecided = len(r.sites) - len(bad)
    if undecided:
        head += f", {undecided} undecided (the solver gave no answer: not counted either way)"
    if rep.data_result is not None:
        head += (f"; executable data swept as code: {len(rep.data_sites)} site(s) in "
                 f"{rep.data_result.instructions} instructions")
    elif rep.guest.exec_data:
        head += (f"; {sum(len(s.data) for s in rep.guest.exec_data)} bytes of executable data "
                 "not swept (--strict sweeps them)")
    return (f"{head}; {r.instructions} instructions, {r.unmodelled_count} unmodelled "
            f"({len(r.unmodelled)} mnemonics), {r.undecodable} undecodable bytes  "
            f"[{rep.seconds:.2f} s; {len(rep.derived)} form(s) classified now, "
            f"{len(rep.verdicts) - len(rep.derived)} from the cache]")


def _state_brief(d: dict, keys) -> str:
    return ", ".join(f"{k}={d[k]:#x}" for k in keys if k in d and not isinstance(d[k], dict))


def counterexample_lines(cx: dict) -> list[str]:
    lines = [f"    differs in: {', '.join(cx['differs']) or '(see the states)'}"
             f"{'  (replayed concretely)' if cx.get('replayed') else ''}"]
    s = cx["guest_state"]
    keys = ["eip", "esp", "cpl", "sysflags", "flags", "cs", "ss"]
    lines.append(f"    guest view: {_state_brief(s, keys)}")
    lines.append(f"    host state: {_state_brief(cx['host_state'], ['cpl', 'sysflags', 'cr4', 'cs', 'ss'])}")
    o, h = cx["original"], cx["handler"]
    lines.append(f"    original:   {'fault ' + str(o['vector']) if o.get('fault') else json.dumps(o.get('changed'), default=str)[:200]}")
    lines.append(f"    handler:    {'fault ' + str(h['vector']) if h.get('fault') else json.dumps(h.get('guest_view_changed'), default=str)[:200]}")
    return lines


def check_text(out: Console, rep) -> None:
    t = Table(title=Text(f"check-patch {rep.patched} against {rep.original} [{rep.profile}]"),
              header_style="bold", title_justify="left")
    t.add_column("claim")
    t.add_column("status")
    t.add_column("detail")
    eq = [o for o in rep.obligations if o.claim == "equivalence"]
    for o in rep.obligations:
        if o.claim == "equivalence" and o.status == "holds" and len(eq) > 8:
            continue   # many sites: the proved ones are summed up below
        t.add_row(o.claim, Text(o.status, style=STATUS_STYLE[o.status]), Text(o.message))
    proved = sum(o.status == "holds" for o in eq)
    if len(eq) > 8:
        t.add_row("equivalence", Text("holds" if proved == len(eq) else f"{proved}/{len(eq)}",
                                      style=STATUS_STYLE["holds" if proved == len(eq) else "fails"]),
                  f"{proved} of {len(eq)} site handlers proved equal to their original instruction")
    out.print(t)
    for o in rep.obligations:
        if o.claim == "equivalence" and o.status == "fails" and o.detail:
            out.print(Text(f"  counterexample for site #{o.site} at {o.address:#x}:", style="red"))
            for line in counterexample_lines(o.detail):
                out.print(Text(line))


def check_summary(rep) -> str:
    eq = [o for o in rep.obligations if o.claim == "equivalence"]
    fails = rep.failures()
    head = f"{os.path.basename(rep.patched)} [{rep.profile}]: {rep.verdict.upper()}"
    if rep.verdict == "holds" and rep.unmodelled_count:
        head += " for every modelled instruction"
    elif rep.verdict == "holds" and rep.undecodable:
        head += f" ({rep.undecodable} undecodable byte(s) reported)"
    if rep.verdict == "holds" and any(o.claim == "executable-data" and o.status == "outside"
                                      for o in rep.obligations):
        head += " of the code (executable data not swept: --strict)"
    parts = [f"{len(rep.sites)} hypercall site(s)", f"{sum(o.status == 'holds' for o in eq)} proved equivalent",
             f"{len(rep.remaining)} violation(s) remain", f"{len(rep.allowed)} allow-listed",
             f"{rep.unmodelled_count} unmodelled"]
    if fails:
        parts.append(f"{len(fails)} failing claim(s), first: {fails[0].message[:120]}")
    return f"{head}: " + "; ".join(parts) + f"  [{rep.seconds:.2f} s]"
