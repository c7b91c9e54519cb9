"""Coverage of the 32-bit instruction set: every iced code valid in 32-bit mode is hand-written,
derived, or unsupported with a one-line reason; totals by encoding kind.

``coverage(unicorn)`` is plain data (the CLI's JSON); ``text(doc)`` its table.  ``unicorn`` maps
derived codes to the frame test's status on Unicorn ("ran" or why not; the emulator layer has
it: ``pgvirt.emulator.frame.load_status()``), so that this module stays in model/.
"""

from __future__ import annotations

from typing import Mapping

from . import registry, table

ENCODINGS = ("legacy", "vex", "evex", "xop", "3dnow")
STATUSES = ("hand-written", "derived", "two forms", "unsupported")
_WAIT_PAIR = "WAIT + no-wait form"


def wait_pair(code: str) -> tuple[str, str] | None:
    """The two codes a decoder yields for a WAIT-prefixed x87 code (FSTENV is 9B D9 /6: WAIT,
    then FNSTENV; SDM Vol. 1 8.3.11), or None for any other code."""
    rec = table.codes().get(code)
    nowait = "FN" + code[1:]
    if rec is None or not rec["decision"]["reason"].startswith(_WAIT_PAIR) or nowait not in table.codes():
        return None
    return "WAIT", nowait


def rows(unicorn: Mapping[str, str] | None = None) -> list[dict]:
    """One row per instruction code (the decoder's pseudo-codes, db/dw/..., are left out).  A
    WAIT-prefixed x87 code is "two forms" when both codes the decoder yields for it have one."""
    hand = table.hand_codes()
    derived = set(registry.derived_codes())

    def forms_of(code: str) -> list[str]:
        return hand[code] if code in hand else [registry.dforms.form_name(code)] if code in derived else []

    out = []
    for code, rec in table.codes().items():
        if rec["decision"]["reason"].startswith("not an instruction"):
            continue
        row = {"code": code, "encoding": rec["encoding"], "op_code": rec["op_code"],
               "instruction": rec["instruction"], "bytes": rec.get("bytes")}
        if code in hand:
            row.update(status="hand-written", forms=hand[code], reason="")
        elif code in derived:
            row.update(status="derived", forms=[registry.dforms.form_name(code)], reason="")
            if unicorn is not None:
                row["unicorn"] = unicorn.get(code, "not swept")
        elif (pair := wait_pair(code)) and all(forms_of(c) for c in pair):
            row.update(status="two forms", forms=[f for c in pair for f in forms_of(c)],
                       reason=f"decoded as {pair[0]} then {pair[1]}: covered by their forms")
        else:
            reason = rec["decision"]["reason"]
            if pair:
                reason += f"; {pair[1]} has no form"
            row.update(status="unsupported", forms=[], reason=reason)
        out.append(row)
    return out


def coverage(unicorn: Mapping[str, str] | None = None) -> dict:
    """Rows, totals by encoding kind and status, and the unsupported fraction."""
    rs = rows(unicorn)
    totals = {e: dict.fromkeys(STATUSES + ("total",), 0) for e in ENCODINGS}
    for r in rs:
        t = totals[r["encoding"]]
        t[r["status"]] += 1
        t["total"] += 1
    all_ = {k: sum(t[k] for t in totals.values()) for k in STATUSES + ("total",)}
    doc = {"iced_x86": table.load()["iced_x86"], "codes": rs, "totals": totals, "all": all_,
           "unsupported_fraction": all_["unsupported"] / all_["total"] if all_["total"] else 0.0}
    if unicorn is not None:
        ran = sum(1 for r in rs if r.get("unicorn") == "ran")
        doc["unicorn"] = {"ran": ran, "not_run": all_["derived"] - ran}
    return doc


def unsupported_by_reason(doc: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in doc["codes"]:
        if r["status"] == "unsupported":
            out.setdefault(r["reason"], []).append(r["code"])
    return dict(sorted(out.items(), key=lambda kv: -len(kv[1])))


def text(doc: dict) -> str:
    """The totals as a table, then the unsupported codes grouped by reason."""
    lines = [f"{'encoding':10} {'hand-written':>12} {'derived':>8} {'two forms':>9} {'unsupported':>11} {'total':>6}"]

    def line(name: str, t: dict) -> str:
        return (f"{name:10} {t['hand-written']:>12} {t['derived']:>8} {t['two forms']:>9} "
                f"{t['unsupported']:>11} {t['total']:>6}")
    for e in ENCODINGS:
        lines.append(line(e, doc["totals"][e]))
    a = doc["all"]
    lines.append(line("all", a))
    lines.append(f"unsupported: {100 * doc['unsupported_fraction']:.1f} % of {a['total']} codes")
    if "unicorn" in doc:
        u = doc["unicorn"]
        lines.append(f"frame test on Unicorn: {u['ran']} derived forms ran, {u['not_run']} could not")
    for why, codes in unsupported_by_reason(doc).items():
        lines.append(f"  {len(codes):4}  {why}: {', '.join(codes[:6])}{' ...' if len(codes) > 6 else ''}")
    return "\n".join(lines)
