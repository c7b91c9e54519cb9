"""Notebook views of paravirtualizing a real guest: its sites by function, the patch, the proofs.

Each view wraps an answer of ``guest.paravirt`` (``scan_guest``, ``patch_guest``,
``check_patch``) and renders it with ``_repr_html_``.  The only thing computed here is the
function a site belongs to, named as a disassembler names functions in a guest without symbols:
a function starts at the entry point and at every near-CALL target (E8 rel32) of the linear
sweep, a site belongs to the nearest start before it, and a start is ``sub_<address>`` unless a
symbol names it.  Patches go to a temporary directory, never next to the guest or the notebook.
"""

from __future__ import annotations

import atexit
import bisect
import hashlib
import os
import shutil
import struct
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import z3

from pgvirt.model import isa, monitor, profiles
from pgvirt.model import state as st
from pgvirt.model.outcome import Fault, vector_name

from pgvirt.guest import decode as G
from pgvirt.guest import paravirt as P
from pgvirt.guest.scan import Site
from .classification import HTML, _TABLE, _e, _fmt, _mem, _td

__all__ = ["GUEST", "Function", "Functions", "find_functions", "entry_point", "ScanView", "scan",
           "PatchView", "patch", "ProofView", "prove", "prove_unpatched", "deprivileged", "Sample",
           "sample", "site_report", "SiteExplorer", "site_explorer"]

GUEST = "/boot/invaders.exec"
SETUP = "tests/setup-guests.sh"
SAMPLE_TIMEOUT_MS = 10_000
_CALL_REL32 = 0xE8


# --- functions, as a disassembler finds them --------------------------------------------------------

@dataclass(frozen=True)
class Function:
    name: str
    section: str
    address: int
    why: str            # "symbol", "entry point" or "call target"


class Functions:
    """Function starts per section; ``at`` finds the nearest one at or before an address."""

    def __init__(self, starts: Iterable[Function]):
        by_sec: dict[str, dict[int, Function]] = defaultdict(dict)
        for f in starts:
            by_sec[f.section].setdefault(f.address, f)
        self._index = {s: (sorted(m), [m[a] for a in sorted(m)]) for s, m in by_sec.items()}
        self.starts = [f for _, fs in self._index.values() for f in fs]

    def __len__(self) -> int:
        return len(self.starts)

    def count(self, why: str) -> int:
        return sum(f.why == why for f in self.starts)

    def at(self, section: str | None, address: int) -> Function | None:
        addrs, fs = self._index.get(section, ([], []))
        i = bisect.bisect_right(addrs, address) - 1
        return fs[i] if i >= 0 else None

    def name(self, section: str | None, address: int) -> str:
        f = self.at(section, address)
        return f.name if f else f"({section})"

    def group(self, sites: Iterable[Site]) -> dict[str, list[Site]]:
        """Sites by function, functions in address order."""
        out: dict[str, list[Site]] = {}
        for s in sorted(sites, key=lambda s: (s.section, s.address)):
            out.setdefault(self.name(s.section, s.address), []).append(s)
        return out


def entry_point(gf: P.GuestFile) -> int | None:
    """The ELF header's e_entry (a raw blob starts at its base); None for a relocatable object,
    whose addresses are section-relative, or an entry outside the executable sections."""
    g = gf.guest
    if g.kind == "raw":
        return g.sections[0].addr
    if g.kind == "rel":
        return None
    (e,) = struct.unpack_from("<I", gf.image, 24)   # e_entry of an ELF32 header (the loader checked it)
    return e if g.section_at(e) is not None else None


def find_functions(gf: P.GuestFile) -> Functions:
    """Symbols, the entry point and the E8 rel32 targets that start an instruction of the sweep.

    A call target in the middle of an instruction is data decoded as code, not a function.
    """
    g = gf.guest
    insns = list(G.decode(g, text=False))
    starts = {(i.section, i.address) for i in insns}
    found: dict[tuple[str, int], Function] = {}
    for s in g.symbols:
        if s.sync:      # not a data object inside code
            found.setdefault((s.section, s.addr), Function(g.symbolize(s.addr, s.section) or s.name,
                                                           s.section, s.addr, "symbol"))
    e = entry_point(gf)
    if e is not None:
        sec = g.section_at(e).name
        found.setdefault((sec, e), Function(f"sub_{e:x}", sec, e, "entry point"))
    for i in insns:
        if len(i.bytes) == 5 and i.bytes[0] == _CALL_REL32:
            t = (i.address + 5 + int.from_bytes(i.bytes[1:], "little", signed=True)) & 0xFFFFFFFF
            if (i.section, t) in starts:
                found.setdefault((i.section, t), Function(f"sub_{t:x}", i.section, t, "call target"))
    return Functions(found.values())


# --- shared pieces ---------------------------------------------------------------------------------

_STATUS = {"holds": "#e5f5e0", "fails": "#fcbba1", "unknown": "#bdbdbd", "outside": "#f0f0f0"}


def _status(s: str, text: str | None = None, title: str = "") -> str:
    return _td(_e(text or s), f"background:{_STATUS.get(s, '')}", title=title)


def _head(*names: str) -> str:
    return "<tr>" + "".join(_td(_e(n), tag="th") for n in names) + "</tr>"


def _table(head: str, rows: list[str]) -> str:
    return f"<table {_TABLE}>{head}{''.join(rows)}</table>"


def _missing(path: str) -> HTML | None:
    if os.path.isfile(path):
        return None
    return HTML(f'<p class="pgvirt-missing"><b>{_e(path)} is missing.</b> <code>sh {SETUP}</code> '
                f"installs the Debian guest packages (grub-invaders provides {GUEST}); then run the "
                "notebook again.</p>")


_GUESTS: dict[tuple, tuple[P.GuestFile, Functions]] = {}


def _open(path: str, raw: bool, base: int | None) -> tuple[P.GuestFile, Functions]:
    """The guest and its functions, once per process and file contents."""
    key = (os.path.abspath(path), raw, base, P.sha256_file(path))
    if key not in _GUESTS:
        gf = P.open_guest(path, raw, base)
        _GUESTS[key] = (gf, find_functions(gf))
    return _GUESTS[key]


# --- scan ------------------------------------------------------------------------------------------

@dataclass(repr=False)
class ScanView:
    report: P.ScanReport
    functions: Functions

    def __repr__(self) -> str:   # the report holds the guest's bytes: keep text/plain short
        return f"<ScanView {self.report.guest.path} {self.report.profile.name}: {len(self.report.sites)} site(s)>"

    @property
    def by_function(self) -> dict[str, list[Site]]:
        return self.functions.group(self.report.sites)

    def _repr_html_(self) -> str:
        rep, fns, r = self.report, self.functions, self.report.result
        parts = [f"<h4>{_e(rep.guest.path)} under {_e(rep.profile.name)}: {len(rep.sites)} site(s) in "
                 f"{len(self.by_function)} function(s), {r.instructions} instructions</h4>",
                 f"<p>{len(fns)} function starts: {fns.count('entry point')} entry point, "
                 f"{fns.count('call target')} near-call targets, {fns.count('symbol')} symbols "
                 f"(symbol table: {_e(rep.guest.symbol_source)}). "
                 f"{len(rep.verdicts)} forms occur in the guest; the solver classified "
                 f"{len(rep.derived)} of them now, the rest came from the cache.</p>"]
        rows = []
        for m, n in P.mnemonic_counts(rep.sites).most_common():
            fs = sorted({s.form for s in rep.sites if s.mnemonic == m})
            cls = sorted({c for s in rep.sites if s.mnemonic == m for c in s.classes})
            rows.append("<tr>" + _td(_e(m)) + _td(n) + _td(_e(", ".join(fs))) + _td(_e(", ".join(cls))) + "</tr>")
        parts.append("<h5>by mnemonic</h5>" + _table(_head("mnemonic", "sites", "forms", "violated classes"), rows))
        for name, sites in self.by_function.items():
            f = fns.at(sites[0].section, sites[0].address)
            where = f"{f.address:#x}, {f.why}" if f else "before every function start"
            rows = ["<tr>" + _td(f"{s.address:#x}") + _td(_e(s.bytes)) + _td(_e(s.asm)) + _td(_e(s.form))
                    + _td(_e(", ".join(s.classes))) + _td(_e(rep.reason(s.form))) + "</tr>" for s in sites]
            parts.append(f'<div class="pgvirt-function" data-function="{_e(name)}"><h5>{_e(name)} '
                         f"({_e(where)}): {len(sites)} site(s)</h5>"
                         + _table(_head("address", "bytes", "asm", "form", "violated classes", "reason"), rows)
                         + "</div>")
        if r.unmodelled_count:
            top = ", ".join(f"{u.mnemonic} x{u.count}" for u in r.unmodelled[:8])
            more = ", ..." if len(r.unmodelled) > 8 else ""
            parts.append(f"<p><b>{r.unmodelled_count} unmodelled instructions</b> ({len(r.unmodelled)} "
                         f"mnemonics: {_e(top)}{more}): no form describes them, so nothing is proved about "
                         "them; they are never counted harmless.</p>")
        else:
            parts.append("<p>0 unmodelled instructions: every instruction is an instance of a form.</p>")
        return "".join(parts)


def scan(path: str = GUEST, profile: str = "pentium", raw: bool = False,
         base: int | None = None) -> ScanView | HTML:
    """The guest's sites under ``profile``, grouped by function."""
    miss = _missing(path)
    if miss is not None:
        return miss
    gf, fns = _open(path, raw, base)
    return ScanView(P.scan_guest(gf.guest, profile), fns)


# --- patch -----------------------------------------------------------------------------------------

_TMP: list[str] = []


def _tmpdir() -> str:
    """One temporary directory per process for the patched guests, removed at exit."""
    if not _TMP:
        d = tempfile.mkdtemp(prefix="pgvirt-notebook-")
        atexit.register(shutil.rmtree, d, True)
        _TMP.append(d)
    return _TMP[0]


@dataclass(repr=False)
class PatchView:
    result: P.PatchResult
    original: str
    functions: Functions

    def __repr__(self) -> str:
        return f"<PatchView {self.original} -> {self.out}: {len(self.sites)} site(s)>"

    @property
    def out(self) -> str:
        return self.result.out

    @property
    def manifest_path(self) -> str:
        return self.result.manifest_path

    @property
    def sites(self) -> list[dict]:
        return self.result.manifest["sites"]

    def _repr_html_(self) -> str:
        rows = ["<tr>" + _td(s["hypercall"]) + _td(f"{s['address']:#x}")
                + _td(_e(self.functions.name(s["section"], s["address"])))
                + _td(f"{_e(s['original'])} &rarr; {_e(s['replacement'])}") + _td(_e(s["asm"]))
                + _td(_e(s["form"])) + _td(s["file_offset"]) + "</tr>" for s in self.sites]
        allowed = (f"<p>left in place (allow-listed): {len(self.result.allowed)}</p>"
                   if self.result.allowed else "")
        return (f"<h4>patched {len(self.sites)} site(s) of {_e(self.original)}</h4>"
                f"<p>patched guest: <code>{_e(self.out)}</code><br>manifest: <code>{_e(self.manifest_path)}"
                f"</code><br>(a temporary directory: nothing is written next to the guest or the notebook)</p>"
                + _table(_head("hypercall", "address", "function", "bytes: original → replacement",
                               "original asm", "form", "file offset"), rows) + allowed)


_PATCHES: dict[tuple, PatchView] = {}


def patch(path: str = GUEST, profile: str = "pentium", raw: bool = False,
          base: int | None = None) -> PatchView | HTML:
    """Patch the guest into the process's temporary directory (once per guest contents and profile)."""
    miss = _missing(path)
    if miss is not None:
        return miss
    gf, fns = _open(path, raw, base)
    key = (os.path.abspath(path), raw, base, hashlib.sha256(gf.raw).hexdigest(), profile)
    if key not in _PATCHES:
        d = tempfile.mkdtemp(prefix=f"{profile}-", dir=_tmpdir())
        out = os.path.join(d, os.path.basename(path) + ".patched")
        res = P.patch_guest(path, out, profile=profile, raw=raw, base=base)
        _PATCHES[key] = PatchView(res, os.path.abspath(path), fns)
    return _PATCHES[key]


# --- prove -----------------------------------------------------------------------------------------

@dataclass(repr=False)
class ProofView:
    report: P.CheckReport
    functions: Functions
    title: str

    def __repr__(self) -> str:
        return f"<ProofView {self.title}: {self.report.verdict}>"

    def where(self, address: int | None, section: str | None) -> str:
        if address is None:
            return ""
        return f"{address:#x} ({self.functions.name(section, address)})"

    def _repr_html_(self) -> str:
        rep = self.report
        colour = {"holds": "green", "fails": "#b2182b", "unknown": "#b8860b"}[rep.verdict]
        parts = [f"<h4>{_e(self.title)}: <span style=\"color:{colour}\">{rep.verdict.upper()}</span></h4>",
                 f"<p>check-patch of <code>{_e(rep.patched)}</code> against the manifest "
                 f"<code>{_e(rep.manifest)}</code> and the original <code>{_e(rep.original)}</code>, "
                 f"profile {_e(rep.profile)}</p>"]
        fails = rep.failures()
        if fails:
            items = "".join(f"<li><b>{_e(o.claim)}</b>"
                            + (f" at {_e(self.where(o.address, o.section))}" if o.address is not None else "")
                            + f": {_e(o.message)}</li>" for o in fails)
            parts.append(f'<div class="pgvirt-failures"><p>{len(fails)} claim(s) fail:</p><ul>{items}</ul></div>')
        rows = ["<tr>" + _td(_e(o.claim)) + _status(o.status) + _td(_e(self.where(o.address, o.section)))
                + _td(_e(o.message)) + "</tr>" for o in rep.obligations]
        parts.append("<h5>obligations</h5>" + _table(_head("claim", "status", "site", "why"), rows))
        trap = [o for o in rep.obligations if o.claim == "trap"]
        trap_status = next((v for v in ("fails", "unknown") if any(o.status == v for o in trap)),
                           "holds" if trap else "unknown")
        trap_text = "proved (UNSAT)" if trap_status == "holds" else trap_status
        trap_why = "; ".join(o.message for o in trap)
        by_number = {p.site.number: p for p in rep.proofs}
        rows = []
        for s in rep.sites:
            p = by_number.get(s.hypercall)
            eq = ("proved (UNSAT)" if p.status == "holds" else p.status) if p else "fails"
            how = p.note if p else "not proved: the manifest does not describe it"
            rows.append("<tr>" + _td(s.hypercall) + _td(_e(self.where(s.address, s.section))) + _td(_e(s.asm))
                        + _td(_e(s.form)) + _status(trap_status, trap_text, trap_why)
                        + _status(p.status if p else "fails", eq) + _td(_e(how))
                        + _td(f"{p.seconds:.3f}" if p else "") + "</tr>")
        if rows:
            parts.append("<h5>per site</h5>" + _table(
                _head("hypercall", "site", "original", "form", "trap (HLT)", "equivalence", "how", "seconds"),
                rows))
        return "".join(parts)


def prove(path: str = GUEST, profile: str = "pentium", raw: bool = False,
          base: int | None = None) -> ProofView | HTML:
    """check-patch of the patched guest (``patch``) against its manifest."""
    pv = patch(path, profile, raw, base)
    if isinstance(pv, HTML):
        return pv
    return ProofView(P.check_patch(pv.out, pv.manifest_path), pv.functions, "the patched guest")


def prove_unpatched(path: str = GUEST, profile: str = "pentium", raw: bool = False,
                    base: int | None = None) -> ProofView | HTML:
    """check-patch of the ORIGINAL guest against the same manifest: it must fail, naming the sites."""
    pv = patch(path, profile, raw, base)
    if isinstance(pv, HTML):
        return pv
    return ProofView(P.check_patch(path, pv.manifest_path), pv.functions, "the unpatched guest")


# --- one site, concretely -------------------------------------------------------------------------

def deprivileged(site: monitor.Site, real: st.State, vcpu: st.State,
                 features: frozenset = frozenset()) -> monitor.HandlerOutcome:
    """What an unpatched guest gets: the original instruction runs on the real processor at
    CPL 3 and the monitor never sees it, so the virtual CPU stays as it was."""
    o = site.form.run(real, code=site.code, features=features)
    return monitor.HandlerOutcome(o, o.post, vcpu)


@dataclass
class Sample:
    """A guest state at a site and three runs of it, all replayed on plain integers."""

    site: monitor.Site
    label: str                      # the first way the unpatched run differs (the query's goal)
    guest: dict                     # the guest's view before: virtual CPL, the site's EIP
    host: dict                      # the real processor at the trap (CPL 3)
    native: dict | Fault            # the original on the guest's view (the guest's own CPL)
    unpatched: dict | Fault         # the guest's view after the original ran deprivileged
    patched: dict | Fault           # the guest's view after the monitor's handler

    def fields(self) -> list[str]:
        """CPL, EIP, ESP and every scalar field some run changes or the runs disagree on."""
        keep = {"cpl", "eip", "esp"}
        runs = [r for r in (self.native, self.unpatched, self.patched) if isinstance(r, dict)]
        for r in runs:
            keep |= {n for n in st.SCALARS if r[n] != self.guest[n]}
        return [n for n in st.SCALARS if n in keep]


def _view_after(res: monitor.Injected | monitor.Resumed, addrs: dict) -> dict | Fault:
    if isinstance(res, monitor.Injected):
        return res.fault
    solver = z3.Solver()
    solver.check()
    return st.evaluate(monitor.view(st.concrete(res.real), st.concrete(res.vcpu)), solver.model(), addrs)


def sample(site: monitor.Site, profile: str = "pentium") -> Sample | str:
    """A state where the original run deprivileged differs from its native run, found by Z3 on
    the site's equivalence query with ``deprivileged`` as the handler, and the three runs on it.

    States where both runs complete are asked for first (the Theorem-1 story: no trap, another
    result), then ones where the deprivileged run completes, then any.  A string says why
    there is none.
    """
    prof = profiles.get(profile)
    q = P.equivalence_query(site, prof, deprivileged)
    differ = z3.Or([g for _, g in q.goal]) if q.goal else z3.BoolVal(False)
    at = q.s.eip == site.address
    tiers = [[z3.Not(q.original.faults), z3.Not(q.handled.faults)], [z3.Not(q.handled.faults)], []]
    model = None
    for extra in tiers:
        s = z3.Solver()
        s.set("timeout", SAMPLE_TIMEOUT_MS)
        s.add(*q.base, at, differ, *extra)
        r = s.check()
        if r == z3.sat:
            model = s.model()
            break
        if r == z3.unknown:
            return f"the solver gave no answer ({s.reason_unknown()})"
    if model is None:
        return "no state tells the deprivileged run from the native one (UNSAT)"
    label = next(lbl for lbl, g in q.goal if z3.is_true(model.eval(g, model_completion=True)))
    addrs: dict[str, set[int]] = defaultdict(set)
    for o in (q.original, q.handled.emulated):
        for arr, v in o.addresses(model).items():
            addrs[arr] |= v
    guest = st.evaluate(q.s, model, addrs)
    host = st.evaluate(q.real, model, addrs)
    feats = prof.features
    native = site.form.execute(guest, code=site.code, features=feats)
    native = native if isinstance(native, Fault) else native.state
    # The virtual CPU is the guest's SYSTEM fields; view() reads the USER fields from the host.
    unpatched = _view_after(monitor.run(site, host, guest, feats, deprivileged), addrs)
    patched = _view_after(monitor.run(site, host, guest, feats), addrs)
    return Sample(site, label, guest, host, native, unpatched, patched)


_SYSFLAG_BITS = (("TF", st.TF), ("IF", st.IF), ("NT", st.NT), ("RF", st.RF), ("VM", st.VM),
                 ("AC", st.AC), ("VIF", st.VIF), ("VIP", st.VIP), ("ID", st.ID))


def _value(name: str, v) -> str:
    if name == "sysflags":
        bits = [n for n, b in _SYSFLAG_BITS if v >> b & 1] + [f"IOPL={v >> st.IOPL_LO & 3}"]
        return f"{_fmt(name, v)} ({' '.join(bits)})"
    return _fmt(name, v)


def _outcome(r: dict | Fault) -> str:
    if isinstance(r, Fault):
        code = "" if r.code is None else f"({r.code:#x})"
        return f"{vector_name(r.vector)}{code}: {r.reason}"
    return "completes without a trap"


def _sample_html(x: Sample) -> str:
    cols = ("field", f"before (guest's view, CPL {x.guest['cpl']})", "native",
            "unpatched: run at CPL 3", "patched: monitor's handler")
    rows = ["<tr>" + _td("result") + _td("") + "".join(_td(_e(_outcome(r))) for r in
                                                       (x.native, x.unpatched, x.patched)) + "</tr>"]
    for n in x.fields():
        cells = [_td(_e(n)), _td(_e(_value(n, x.guest[n])))]
        for r, role in ((x.native, "native"), (x.unpatched, "unpatched"), (x.patched, "patched")):
            if isinstance(r, Fault):
                cells.append(_td("-"))
                continue
            same = isinstance(x.native, dict) and r[n] == x.native[n]
            style = ""
            if role == "unpatched" and not same:
                style = "background:#fcbba1"     # what the unpatched guest gets wrong
            elif role == "patched" and same:
                style = "background:#e5f5e0"
            cells.append(_td(_e(_value(n, r[n])), style))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    mems = [x.guest.get("mem", {})] + [r.get("mem", {}) if isinstance(r, dict) else None
                                       for r in (x.native, x.unpatched, x.patched)]
    rows.append("<tr>" + _td("memory") + "".join(_td("-" if m is None else _mem(m)) for m in mems) + "</tr>")
    same = _same(x.patched, x.native)
    return (f"<p>Z3's state where the unpatched instruction, run deprivileged, differs from its native run "
            f"(first difference: <b>{_e(x.label)}</b>); on the same state the monitor's handler gives "
            f"<b>{'the native result' if same else 'a DIFFERENT result'}</b> (replayed concretely).</p>"
            + _table(_head(*cols), rows))


def _same(a: dict | Fault, b: dict | Fault) -> bool:
    if isinstance(a, Fault) or isinstance(b, Fault):
        return a == b
    return all(a[n] == b[n] for n in st.SCALARS) and all(
        a[k].get(i, 0) == b[k].get(i, 0) for k in st.ARRAYS for i in set(a[k]) | set(b[k]))


def site_report(view: ProofView, number: int, profile: str = "pentium") -> str:
    """One site: its equivalence obligation in ``view`` and a sample run (HTML)."""
    ms = next(s for s in view.report.sites if s.hypercall == number)
    where = view.where(ms.address, ms.section)
    obs = [o for o in view.report.obligations if o.claim == "equivalence" and o.site == number]
    trap = [o for o in view.report.obligations if o.claim == "trap"]
    rows = ["<tr>" + _td(_e(o.claim)) + _status(o.status) + _td(_e(o.message)) + "</tr>" for o in trap + obs]
    head = (f'<div class="pgvirt-site" data-site="{number}" data-address="{ms.address:#x}">'
            f"<h4>site #{number} at {_e(where)}: <code>{_e(ms.asm)}</code> ({_e(ms.original.hex())} "
            f"&rarr; {_e(ms.replacement.hex())}), form {_e(ms.form)}</h4>"
            + _table(_head("claim", "status", "why"), rows))
    x = sample(monitor.Site(ms.hypercall, ms.address, ms.original, isa.get(ms.form)), profile)
    body = f"<p>{_e(x)}</p>" if isinstance(x, str) else _sample_html(x)
    return head + body + "</div>"


class SiteExplorer:
    """Pick a site of the patched guest: its proof and a concrete run of the three machines.

    The callback sets ``html.value`` itself (no output-widget printing), so it runs the same
    with or without a front end.
    """

    def __init__(self, view: ProofView, profile: str = "pentium"):
        import ipywidgets as w

        self.view, self.profile = view, profile
        opts = [(f"#{s.hypercall} {view.where(s.address, s.section)} {s.asm}", s.hypercall)
                for s in view.report.sites]
        self.site = w.Dropdown(options=opts, value=opts[0][1] if opts else None, description="site")
        self.html = w.HTML()
        self.site.observe(self.update, names="value")
        self.widget = w.VBox([self.site, self.html])
        self.update()

    def update(self, change=None) -> None:
        if self.site.value is None:
            self.html.value = "<p>The guest has no patched site.</p>"
        else:
            self.html.value = site_report(self.view, self.site.value, self.profile)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def site_explorer(path: str = GUEST, profile: str = "pentium", raw: bool = False,
                  base: int | None = None) -> SiteExplorer | HTML:
    view = prove(path, profile, raw, base)
    return view if isinstance(view, HTML) else SiteExplorer(view, profile)
