"""HTML fragments for Jupyter: the table style the notebooks share and the ``_repr_html_`` of the
public API's results."""

from __future__ import annotations

import html


class HTML:
    """A fragment of HTML that Jupyter and Voila render."""

    def __init__(self, text: str):
        self.text = text

    def _repr_html_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


def _e(x) -> str:
    return html.escape(str(x))


def pre(text: str) -> str:
    """Preformatted text (a monitor run's report) as it prints."""
    return f'<pre style="font-size:12px">{_e(text)}</pre>'


_TABLE = 'style="border-collapse:collapse;font-family:monospace;font-size:12px"'
_TD = 'style="border:1px solid #ccc;padding:2px 6px;text-align:left;{}"'


def _td(text, style: str = "", tag: str = "td", title: str = "") -> str:
    t = f' title="{_e(title)}"' if title else ""
    return f"<{tag} {_TD.format(style)}{t}>{text}</{tag}>"


def table(head: list[str], rows: list[list], limit: int = 500) -> str:
    """A plain table of escaped cells; beyond ``limit`` rows, a line says how many more."""
    out = [f"<table {_TABLE}><tr>" + "".join(_td(_e(h), tag="th") for h in head) + "</tr>"]
    for r in rows[:limit]:
        out.append("<tr>" + "".join(_td(_e(c)) for c in r) + "</tr>")
    out.append("</table>")
    if len(rows) > limit:
        out.append(f"<p><i>... {len(rows) - limit} more rows</i></p>")
    return "".join(out)


def _yes(v) -> str:
    return "?" if v is None else ("yes" if v else "no")


# --- the API's results (pgvirt/api.py) -------------------------------------------------------------

def classifications(results) -> str:
    from pgvirt.verify.popek_goldberg import CLASSES

    from .theorems import SHORT

    return table(["form", "asm", *(SHORT[k] for k in CLASSES)],
                 [[c.form.name, c.form.asm, *(_yes(c[k]) for k in CLASSES)] for c in results])


def theorems(profile: str, ths: dict, forms: int) -> str:
    from .theorems import explain

    parts = []
    for num, th in ths.items():
        parts.append(f"<h4>[{_e(profile)}] Theorem {num}: {_e(th.statement)}: {th.verdict.upper()} "
                     f"({len(th.violations)} violations, {len(th.undecided)} undecided, {forms} forms)</h4>")
        if th.violations:
            parts.append(table(["form", "asm", "sensitive because", "witness"],
                               [[c.form.name, c.form.asm, *explain(c, th.cls)] for c in th.violations]))
    return "".join(parts)


def scan(rep) -> str:
    from .guests import SHORT

    sites = table(["address", "symbol", "bytes", "asm", "form", "classes"],
                  [[f"{s.address:#x}", s.symbol or s.section, s.bytes, s.asm, s.form,
                    " + ".join(SHORT.get(c, c) for c in s.classes)] for s in rep.sites])
    unm = rep.result.unmodelled
    if unm:
        sites += "<p>instructions no form models (outside the proof, not counted harmless):</p>"
        sites += table(["mnemonic", "count", "first at", "example"],
                       [[u.mnemonic, u.count, " ".join(f"{a:#x}" for a in u.first[:3]), u.example] for u in unm])
    return sites


def patch(res) -> str:
    return table(["hypercall", "address", "original", "form"],
                 [[k, f"{s.address:#x}", s.bytes, s.form] for k, s in enumerate(res.patched)])


def check(rep) -> str:
    return table(["claim", "status", "detail"], [[o.claim, o.status, o.message] for o in rep.obligations])


def replays(run) -> str:
    rows = []
    for r in run.replays:
        if isinstance(r, dict):
            rows.append([r["name"], r["asm"], r["outcome"], r["note"]])
        else:
            rows.append([r.form.name, r.form.asm, r.outcome, r.deviation or r.note])
    return table(["form", "asm", "outcome", "why"], rows)


def crosscheck(rep) -> str:
    return table(["form", "tried", "checked", "agree", "explained", "unexplained"],
                 [[f.form, f.tried, f.checks, f.agree, f.explained, f.unexplained] for f in rep.forms])
