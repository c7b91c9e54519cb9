"""Runs and comparisons as text (for people) and JSON (for programs).

JSON of a run: the guest, monitor, budget, instructions retired, virtual time, how it ended, the
counters, every port access (``time`` in PIT clocks, ``port``, ``dir``, ``value``; wider
accesses appear as consecutive byte accesses, as the ISA bus makes them), every distinct VGA
frame (its tick and its 25 rows of text), the console (port 0xE9) text, and the monitor entries
with the guest's virtual CPU at each.  JSON of a comparison: the native run's summary, one
verdict per monitor (``match`` or ``diverged`` with the first divergence and its explanation)
and the slowdown table.
"""

from __future__ import annotations

from pgvirt.monitor.compare import Comparison, Verdict
from pgvirt.monitor.core import RunResult, TICK
from pgvirt.monitor.devices import HZ

SLOWDOWN_COLUMNS = ("monitor", "instructions", "traps", "hypercalls", "patched", "pages",
                    "rescans", "interrupts", "exits", "wall_s", "slowdown", "exit_reasons")
_LEFT = ("monitor", "exit_reasons")


def run_summary(r: RunResult) -> dict:
    return {"monitor": r.monitor, "guest": r.guest, "steps": r.steps, "instructions": r.retired,
            "virtual_seconds": round((r.retired + r.idle) / HZ, 6), "end": r.end.as_json(),
            "counts": r.counts, "wall_seconds": round(r.wall, 4),
            "ports": len(r.record.ports), "frames": len(r.record.frames),
            "unsupported": sorted(set(r.unsupported))}


def run_json(r: RunResult, trace: bool = True) -> dict:
    out = run_summary(r)
    if trace:
        out["trace"] = {
            "ports": [{"time": t, "port": p, "dir": "out" if o else "in", "value": v}
                      for t, p, o, v in r.record.ports],
            "frames": [{"tick": tick, "time": f.time, "rows": f.rows(), "cursor": f.cursor}
                       for tick, f in r.record.frames],
            "console": bytes(r.record.console).decode("latin-1"),
            "entries": [e.as_json() for e in r.record.entries],
            "entries_total": dict(r.record.counts),
        }
    return out


def _end_line(r: RunResult) -> str:
    e = r.end
    if e.reason == "halted":
        return f"halted after {r.retired} instructions: {e.message}"
    if e.reason == "reset":
        return f"reset after {r.retired} instructions: {e.message}"
    return f"{e.reason}: {e.line()}"


def run_text(r: RunResult, screen=None) -> str:
    c = r.counts
    lines = [f"{r.guest} under {r.monitor}: {r.retired} instructions, "
             f"{(r.retired + r.idle) / HZ:.3f} virtual s, {r.wall:.2f} s wall "
             f"({r.rate / 1e6:.2f} M instructions/s)",
             f"  {_end_line(r)}",
             f"  traps {c['traps']}, hypercalls {c['hypercalls']}, patched traps {c['patched']}, "
             f"interrupts {c['interrupts']}, exceptions {c['exceptions']}, scanned pages "
             f"{c['scanned_pages']} (rescans {c['rescans']})"
             + (f", VM exits {c['exits']} ({exit_reasons(r)})" if c.get("exits") else ""),
             f"  port accesses {len(r.record.ports)}, distinct frames {len(r.record.frames)} "
             f"(one taken every {TICK} PIT clocks)"]
    if r.unsupported:
        lines.append("  devices asked for what is not modelled: " + "; ".join(sorted(set(r.unsupported))))
    console = bytes(r.record.console).decode("latin-1").rstrip("\n")
    if console:
        lines.append("  console (port 0xE9):")
        lines += ["    " + ln for ln in console.splitlines()[-20:]]
    if screen is not None:
        lines.append("  screen:")
        rows = screen.rows()
        while rows and not rows[-1].strip():
            rows.pop()
        lines += ["    |" + row.rstrip() for row in rows]
    return "\n".join(lines)


def exit_reasons(r: RunResult) -> str:
    """The VM exits of a ``vtx`` run by basic exit reason ("io 444, hlt 103"), exception exits
    with their vectors ("exception 2 (#BP 1, #UD 1)"), "-" for none."""
    got = r.counts.get("exit_reasons") or {}
    vectors = r.counts.get("exit_vectors") or {}

    def one(k, n):
        if k == "exception" and vectors:
            return f"{k} {n} ({', '.join(f'{v} {m}' for v, m in sorted(vectors.items()))})"
        return f"{k} {n}"
    return ", ".join(one(k, n) for k, n in sorted(got.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def slowdown(c: Comparison) -> list[dict]:
    """Per monitor, against native: the counts and the wall time (Adams and Agesen's table)."""
    base = c.reference.wall or 1e-9
    out = []
    for r in [c.reference] + [v.result for v in c.verdicts]:
        k = r.counts
        out.append({"monitor": r.monitor, "instructions": r.retired, "traps": k["traps"],
                    "hypercalls": k["hypercalls"], "patched": k["patched"],
                    "pages": k["scanned_pages"], "rescans": k["rescans"],
                    "interrupts": k["interrupts"], "exits": k.get("exits", 0),
                    "exit_reasons": exit_reasons(r), "wall_s": round(r.wall, 4),
                    "slowdown": round(r.wall / base, 2)})
    return out


def _verdict_json(v: Verdict) -> dict:
    out = {"monitor": v.monitor, "verdict": "match" if v.matches else "diverged",
           "run": run_summary(v.result)}
    if v.divergence is not None:
        out["divergence"] = v.divergence.as_json()
        out["explained"] = v.divergence.explanation is not None
    return out


def compare_json(c: Comparison) -> dict:
    return {"guest": c.guest, "steps": c.steps, "input": getattr(c, "input", ""),
            "native": run_summary(c.reference), "monitors": [_verdict_json(v) for v in c.verdicts],
            "slowdown": slowdown(c), "unexplained": [v.monitor for v in c.unexplained]}


_BEFORE = ("eip", "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "flags", "sysflags",
           "cpl", "cs", "ss", "ds")


def _hex(v) -> str:
    return f"{v:#x}" if isinstance(v, int) else str(v)


def divergence_text(v: Verdict) -> list[str]:
    d = v.divergence
    out = [f"  {v.monitor:9} FIRST DIVERGENCE at instruction {d.retired}: {d.eip:#x}: {d.asm} "
           f"({d.code.hex()}), form {d.form or '(none)'}"]
    if d.before:
        out.append("            state before: " + " ".join(f"{n}={_hex(d.before[n])}" for n in _BEFORE))
    diff = d.differs
    for f in diff.get("fields", []):
        out.append(f"            differs: {f['field']}: native {_hex(f['native'])}, "
                   f"{v.monitor} {_hex(f[v.monitor])}")
    for m in diff.get("memory", []):
        if m.get("address") is None:
            out.append(f"            differs: memory ({m.get('note')})")
        else:
            out.append(f"            differs: mem[{m['address']:#x}]: native {m['native']:#04x}, "
                       f"{v.monitor} {m[v.monitor]:#04x}")
    for key in ("ports", "frames", "console", "end"):
        if key in diff:
            out.append(f"            differs: {key}: {diff[key]}")
    if "note" in diff:
        out.append(f"            {diff['note']}")
    e = d.explanation
    if e is None:
        out.append("            UNEXPLAINED: no Theorem-1 verdict covers it (a bug in a monitor "
                   "or in the model)")
    else:
        out.append(f"            explained: {e['form']} is {' + '.join(e['classes'])} under "
                   f"{e['profile']}: {e['reason']}")
        w = e.get("witness")
        if w:
            out.append(f"            witness ({w['class']}): see --format json")
    return out


def compare_text(c: Comparison) -> str:
    r = c.reference
    lines = [f"{c.guest}: {', '.join(v.monitor for v in c.verdicts)} against native, in lock step "
             f"(--steps {c.steps}" + (f", --input {getattr(c, 'input', '')!r}" if getattr(c, 'input', '') else "") + ")",
             f"  {'native':9} {_end_line(r)}"]
    for v in c.verdicts:
        if v.matches:
            lines.append(f"  {v.monitor:9} match: {len(v.result.record.ports)} port accesses and "
                         f"{len(v.result.record.frames)} frames as native; {_end_line(v.result)}")
        else:
            lines += divergence_text(v)
    lines.append("  slowdown against native:")
    rows = slowdown(c)
    widths = {k: max(len(k), *(len(str(row[k])) for row in rows)) for k in SLOWDOWN_COLUMNS}
    lines.append(("    " + "  ".join(k.rjust(widths[k]) if k not in _LEFT else k.ljust(widths[k])
                                     for k in SLOWDOWN_COLUMNS)).rstrip())
    for row in rows:
        lines.append(("    " + "  ".join(str(row[k]).rjust(widths[k]) if k not in _LEFT
                                         else str(row[k]).ljust(widths[k])
                                         for k in SLOWDOWN_COLUMNS)).rstrip())
    return "\n".join(lines)


__all__ = ["run_json", "run_text", "run_summary", "compare_json", "compare_text", "slowdown",
           "exit_reasons",
           "divergence_text"]
