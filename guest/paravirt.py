"""Paravirtualization of real guests: scan them, patch them, and prove the patched guest sound.

``scan_guest``   every instruction of a guest whose form the profile's classification calls a
                 Theorem-1 violation (sensitive but not privileged), with the classes and reason.
                 Only the forms that occur in the guest are classified; the solver's answers are
                 cached on disk per profile (``ClassificationCache``), keyed by a hash of the
                 model's sources and the Z3 version, so a changed model is derived afresh.
``patch_guest``  rewrites each violating site (not allow-listed) into a hypercall: HLT + NOPs
                 (``pgvirt.model.monitor``; docs/paravirt.md), and writes a manifest.
``check_patch``  proves, with Z3, that (1) no violating instruction is left in the patched code
                 but allow-listed ones, (2) every replacement traps to the monitor and each site's
                 handler gives the guest exactly what its original instruction gives on a real
                 machine, and (3) every byte outside the sites is the original's.

Problems with the input are ``GuestError`` (the guest), ``ManifestError`` (the manifest) or
``PatchError`` (a guest that cannot be patched), each with a one-line message.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import z3

from pgvirt.model import monitor, profiles, state as st
from pgvirt.model.derived import registry
from pgvirt.model.manifest import (MANIFEST_FORMAT, MANIFEST_VERSION, Manifest, ManifestError,
                                   ManifestSite, load_manifest)
from pgvirt.model.outcome import GP, Fault
from pgvirt.model.files import atomic_write as _atomic_write
from pgvirt.model.profiles import Profile

from . import decode as D, image as G, scan as S
from .image import Guest, GuestError, load_guest
from .scan import ScanResult, Site, scan
from pgvirt.verify.cache import ClassificationCache, classifications
from pgvirt.verify.popek_goldberg import Classification, Engine, classify_all, differences
from pgvirt.verify.solver import DEFAULT_TIMEOUT_MS, Result, Session, Verdict, decide

__all__ = ["ClassificationCache", "classifications", "violation", "reason", "ScanReport",
           "scan_guest", "PatchResult", "patch_guest", "Manifest",
           "load_manifest", "ManifestError", "PatchError", "GuestError", "equivalence_query",
           "prove_site", "prove_trap", "check_patch", "CheckReport", "Obligation", "SiteProof"]

DEFAULT_PROFILE = "pentium"
UNDECIDED = "undecided"
VIOLATED = ("control_sensitive", "mode_sensitive", "location_sensitive", "user_sensitive")


class PatchError(ValueError):
    """The guest cannot be patched as asked (the message says why, in one line)."""


def violation(c: Classification) -> tuple[str, ...]:
    """The classes by which ``c`` violates Theorem 1 under its profile: sensitive (control, mode
    or location) but not privileged, and user sensitive when Theorem 3 fails too.  Empty when
    it does not; ``(UNDECIDED,)`` when the solver left a deciding answer open (never harmless)."""
    priv, sens = c["privileged"], c["sensitive"]
    if priv is True or sens is False:
        return ()
    if priv is None or sens is None:
        return (UNDECIDED,)
    return tuple(k for k in VIOLATED if c[k])


def reason(c: Classification) -> str:
    """One line: why ``c``'s instances are reported."""
    cls = violation(c)
    if cls == (UNDECIDED,):
        open_ = [k for k in ("privileged", "sensitive") if c[k] is None]
        return f"the solver gave no answer for {' and '.join(open_)} (unknown is never harmless)"
    kinds = " + ".join(k.replace("_sensitive", "") for k in cls if k != "user_sensitive")
    th = "Theorems 1 and 3" if "user_sensitive" in cls else "Theorem 1"
    if c.profile.vm is not None:
        return (f"{kinds} sensitive but not root-mode privileged under {c.profile.name}'s controls "
                f"'{c.profile.vm.name}': it runs in non-root operation without a VM exit, so the "
                f"monitor never sees it (hardware {th})")
    return (f"{kinds} sensitive but not privileged under {c.profile.name}: it completes at CPL 3 "
            f"without a trap, so a trap-and-emulate monitor never sees it ({th})")


# --- scanning ----------------------------------------------------------------------------------

@dataclass
class ScanReport:
    guest: Guest
    profile: Profile
    result: ScanResult
    verdicts: dict[str, Classification]     # the forms that occur in the guest
    derived: list[str]                      # of those, the ones the solver classified now
    seconds: float
    cache_note: str = ""
    data_result: ScanResult | None = None   # --strict: the executable data swept as code

    def __repr__(self) -> str:
        return (f"<ScanReport {self.guest.path} [{self.profile.name}]: {len(self.sites)} sites, "
                f"{self.result.instructions} instructions>")

    @property
    def sites(self) -> tuple[Site, ...]:
        return self.result.sites

    @property
    def data_sites(self) -> tuple[Site, ...]:
        """Violating instructions that decode in executable data (only with ``strict``)."""
        return self.data_result.sites if self.data_result is not None else ()

    @property
    def undecided(self) -> list[Site]:
        return [s for s in self.sites + self.data_sites if s.classes == (UNDECIDED,)]

    @property
    def violating(self) -> list[Site]:
        """Sites proved to violate (undecided ones are not: they are their own kind)."""
        return [s for s in self.sites + self.data_sites if s.classes != (UNDECIDED,)]

    def reason(self, form: str) -> str:
        return reason(self.verdicts[form])


def scan_guest(g: "Guest | GuestFile | str | os.PathLike", profile: Profile | str = DEFAULT_PROFILE,
               cache: ClassificationCache | None = None, jobs: int | None = None,
               timeout_ms: int = DEFAULT_TIMEOUT_MS, progress=None, strict: bool = False) -> ScanReport:
    """Scan ``g`` (a loaded Guest, a GuestFile or an ELF's path): its sites are the instances of
    forms that violate Theorem 1 under ``profile``.

    Forms found in the cache are judged at once; the others are collected during the scan,
    classified together (in parallel) and the guest is scanned again, now with every answer.
    With ``strict`` the guest's executable data is swept as code too (``data_sites``).
    """
    t0 = time.perf_counter()
    if isinstance(g, GuestFile):
        g = g.guest
    elif not isinstance(g, Guest):
        g = load_guest(g)
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    cache = cache if cache is not None else ClassificationCache()
    known = cache.lazy(prof)
    pending: set[str] = set()

    def judge(name: str) -> tuple[str, ...]:
        c = known.get(name)
        if c is None:
            pending.add(name)
            return ()
        return violation(c)

    view = G.exec_data_view(g) if strict and g.exec_data else None

    def both():
        return scan(g, judge), (scan(view, judge) if view is not None else None)

    r, d = both()
    derived: list[str] = []
    if pending:
        derived = sorted(pending)
        new = classify_all(prof, derived, jobs=jobs, timeout_ms=timeout_ms, progress=progress)
        cache.store(prof, new)
        known.add(new)
        r, d = both()
    verdicts = {n: known[n] for n in set(r.forms) | set(d.forms if d else ())}
    return ScanReport(g, prof, r, verdicts, derived, time.perf_counter() - t0, cache.note, d)


def _function(s: Site) -> str:
    return s.symbol.split("+", 1)[0] if s.symbol else f"({s.section})"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- guest files ---------------------------------------------------------------------------------

@dataclass
class GuestFile:
    """A guest as stored (``raw``), its image (decompressed when ``gzip``) and its loaded code."""

    path: str
    raw: bytes
    image: bytes
    gzip: bool
    guest: Guest


    def __repr__(self) -> str:
        return f"<GuestFile {self.path}: {len(self.raw)} bytes{' (gzip)' if self.gzip else ''}>"

def open_guest(path: str | os.PathLike, raw: bool = False, base: int | None = None,
               symbols: str | os.PathLike | None = None) -> GuestFile:
    path = os.fspath(path)
    g = load_guest(path, raw=raw, base=base, symbols=symbols)   # every check of the loader
    stored = G.read_file(path)
    zipped = stored[:2] == b"\x1f\x8b"
    image = G._gunzip(stored, path) if zipped else stored
    return GuestFile(path, stored, image, zipped, g)


def _file_offset(g: Guest, section: str, address: int) -> int | None:
    sec = next((s for s in g.sections if s.name == section), None)
    if sec is None or not sec.addr <= address < sec.end:
        return None
    return sec.offset + address - sec.addr


# i386 relocation widths (System V i386 psABI, Table 4.6; R_386_16/PC16/8/PC8 from the GNU ABI).
_REL_WIDTH = {0: 0, 5: 0, 20: 2, 21: 2, 22: 1, 23: 1}


def relocated_ranges(gf: GuestFile) -> list[tuple[str, int, int]]:
    """(section, start, end) address ranges of executable sections that a loader rewrites.

    A site under a relocation cannot be patched: the loader would write into the hypercall's
    padding, and the handler would emulate the unrelocated operand.
    """
    g = gf.guest
    if g.kind == "raw":
        return []
    import io

    from elftools.elf.elffile import ELFFile

    out = []
    try:
        elf = ELFFile(io.BytesIO(gf.image))
        by_index = {i: elf._get_section_name(elf._get_section_header(i)) for i in range(elf.num_sections())}
        names = {s.name for s in g.sections}
        for i in range(elf.num_sections()):
            h = elf._get_section_header(i)
            if h.sh_type not in ("SHT_REL", "SHT_RELA") or h.sh_size == 0:
                continue
            sec = elf.get_section(i)
            target = by_index.get(h.sh_info) if g.kind == "rel" else None
            if g.kind == "rel" and target not in names:
                continue
            for rel in sec.iter_relocations():
                off, typ = rel["r_offset"], rel["r_info_type"]
                width = _REL_WIDTH.get(typ, 4)
                if not width:
                    continue
                if g.kind == "rel":
                    out.append((target, off, off + width))
                else:
                    s = g.section_at(off)
                    if s is not None:
                        out.append((s.name, off, off + width))
    except GuestError:
        raise
    except Exception as e:  # pyelftools reports corrupt tables with many exception types
        raise GuestError(f"{gf.path}: corrupt relocation table: {type(e).__name__}: {e}"[:300]) from None
    return out


def _overlaps(ranges: list[tuple[str, int, int]], section: str, start: int, end: int) -> tuple | None:
    return next((r for r in ranges if r[0] == section and r[1] < end and start < r[2]), None)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


# --- patching ------------------------------------------------------------------------------------

@dataclass
class PatchResult:
    scan: ScanReport
    patched: list[Site]         # in hypercall-number order
    allowed: list[Site]         # violating sites left in place by --allow
    out: str
    manifest_path: str
    manifest: dict


    def __repr__(self) -> str:
        return f"<PatchResult {self.out}: {len(self.patched)} sites patched, {len(self.allowed)} allowed>"

def check_allow(allow: Iterable[str]) -> tuple[str, ...]:
    names = []
    for a in allow:
        for n in filter(None, (x.strip() for x in a.split(","))):
            registry.get(n)  # KeyError with the model's one-line message
            names.append(n)
    return tuple(dict.fromkeys(names))


def patch_guest(path: str | os.PathLike, out: str | os.PathLike, manifest_path: str | os.PathLike | None = None,
                profile: Profile | str = DEFAULT_PROFILE, allow: Iterable[str] = (), raw: bool = False,
                base: int | None = None, symbols: str | os.PathLike | None = None,
                cache: ClassificationCache | None = None, jobs: int | None = None,
                timeout_ms: int = DEFAULT_TIMEOUT_MS, progress=None) -> PatchResult:
    """Rewrite every violating site of the guest at ``path`` (forms in ``allow`` excepted) into
    a hypercall and write the patched guest to ``out`` (gzip-compressed if the guest was) and
    the manifest to ``manifest_path`` (default ``out`` + ``.manifest.json``)."""
    path, out = os.fspath(path), os.fspath(out)
    manifest_path = os.fspath(manifest_path) if manifest_path is not None else out + ".manifest.json"
    allow = check_allow(allow)
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    for target in (out, manifest_path):
        if not os.path.isdir(os.path.dirname(os.path.abspath(target))):
            raise PatchError(f"no such directory: {os.path.dirname(os.path.abspath(target))}")
        if _same_file(target, path):
            raise PatchError(f"{target}: would overwrite the guest itself")
    if _same_file(out, manifest_path):
        raise PatchError(f"{out}: the patched guest and the manifest would be the same file")
    if symbols is not None and _same_file(os.fspath(symbols), out):
        raise PatchError(f"{out}: would overwrite the symbol file")
    gf = open_guest(path, raw, base, symbols)
    rep = scan_guest(gf.guest, prof, cache, jobs, timeout_ms, progress)
    relocs = relocated_ranges(gf)
    image = bytearray(gf.image)
    patched, allowed, rows = [], [], []
    for s in rep.sites:
        if s.form in allow:
            allowed.append(s)
            continue
        code = bytes.fromhex(s.bytes)
        off = _file_offset(gf.guest, s.section, s.address)
        if off is None or bytes(image[off:off + len(code)]) != code:
            raise PatchError(f"site {s.address:#x} in {s.section} does not lie in the file's bytes")
        hit = _overlaps(relocs, s.section, s.address, s.address + len(code))
        if hit is not None:
            raise PatchError(f"site {s.address:#x} ({s.asm}) in {s.section} overlaps a relocation at "
                             f"{hit[1]:#x}: the loader would rewrite the hypercall; cannot patch")
        rep_bytes = monitor.replacement(len(code))
        image[off:off + len(code)] = rep_bytes
        rows.append({"hypercall": len(patched), "address": s.address, "section": s.section,
                     "symbol": s.symbol, "file_offset": off, "length": len(code),
                     "original": code.hex(), "replacement": rep_bytes.hex(), "form": s.form,
                     "asm": s.asm, "classes": list(s.classes)})
        patched.append(s)
    data = gzip.compress(bytes(image), compresslevel=9, mtime=0) if gf.gzip else bytes(image)
    doc = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "abi": {"hypercall": f"{monitor.HYPERCALL:02x}", "pad": f"{monitor.PAD:02x}",
                "trap": "#GP(0) at CPL 3 with EIP = the site; hypercall number = index in sites",
                "resume": "site address + original length (or the original instruction's target)"},
        "profile": prof.name,
        "allow": list(allow),
        "original": {"path": os.path.abspath(path), "sha256": hashlib.sha256(gf.raw).hexdigest(),
                     "size": len(gf.raw), "gzip": gf.gzip},
        "patched": {"path": os.path.abspath(out), "sha256": hashlib.sha256(data).hexdigest()},
        "guest": {"kind": gf.guest.kind, "raw": gf.guest.kind == "raw",
                  "base": gf.guest.sections[0].addr if gf.guest.kind == "raw" else None,
                  "symbols": None if symbols is None else {
                      "path": os.path.abspath(os.fspath(symbols)),
                      "sha256": sha256_file(os.fspath(symbols))}},
        "sites": rows,
    }
    try:
        _atomic_write(out, data)
        _atomic_write(manifest_path, (json.dumps(doc, indent=2) + "\n").encode())
    except OSError as e:
        raise PatchError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    return PatchResult(rep, patched, allowed, out, manifest_path, doc)


# --- manifests: read by pgvirt.model.manifest (shared with the monitors) -------------------------

# --- proofs: the hypercall traps -------------------------------------------------------------------

@dataclass
class Obligation:
    """One claim of ``check-patch``: ``status`` holds / fails / unknown, and why.  The coverage
    note (instructions no form models) is ``outside``: it neither holds nor fails, unless
    ``--strict`` makes it unknown."""

    claim: str              # "manifest", "bytes", "remaining", "trap", "equivalence", "coverage"
    status: str
    message: str
    site: int | None = None
    address: int | None = None
    section: str | None = None
    symbol: str | None = None
    detail: dict | None = None
    seconds: float = 0.0

    def as_json(self) -> dict:
        return {"claim": self.claim, "status": self.status, "message": self.message, "site": self.site,
                "address": self.address, "section": self.section, "symbol": self.symbol,
                "detail": self.detail, "seconds": round(self.seconds, 4)}


def _status(r: Result) -> str:
    return {Verdict.PROVED: "holds", Verdict.REFUTED: "fails", Verdict.UNKNOWN: "unknown"}[r.verdict]


def prove_trap(profile: Profile | str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[Obligation]:
    """The hypercall's first instruction traps to the monitor: its form (matched from the byte,
    not named) is privileged under ``profile`` by the verifier's own query (every CPL-3 run
    faults: UNSAT; a CPL-0 run does not: SAT), and every CPL-3 run raises #GP(0), the trap the
    monitor dispatches on (SDM Vol. 2A HLT; faults report the faulting EIP, Vol. 3A 6.5)."""
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    t0 = time.perf_counter()
    form = S.match_form(bytes([monitor.HYPERCALL]))
    if form is None:
        return [Obligation("trap", "fails", f"the hypercall byte {monitor.HYPERCALL:02x} matches no form")]
    eng = Engine(form, prof, timeout_ms)
    q = eng.queries()
    user, _ = eng.solve(q["user_runs"])
    sup, _ = eng.solve(q["supervisor_runs"])
    out = []
    if user.verdict is Verdict.PROVED and sup.verdict is Verdict.REFUTED:
        out.append(Obligation("trap", "holds", f"{form.name} ({monitor.HYPERCALL:02x}) is privileged under "
                              f"{prof.name}: every CPL-3 run traps (UNSAT), a CPL-0 run does not (SAT)",
                              seconds=time.perf_counter() - t0))
    else:
        st_ = "unknown" if Verdict.UNKNOWN in (user.verdict, sup.verdict) else "fails"
        out.append(Obligation("trap", st_, f"{form.name} is not proved privileged under {prof.name} "
                              f"(user runs: {user.verdict.value}, supervisor runs: {sup.verdict.value})",
                              seconds=time.perf_counter() - t0))
    t1 = time.perf_counter()
    o = eng.o
    gp0 = eng.check([eng.dep_s, z3.Or(z3.Not(o.faults), o.vector != GP, o.code != 0)], timeout_ms)
    msg = {"holds": f"every CPL-3 run of {form.name} raises #GP(0) with EIP at the site (UNSAT)",
           "fails": f"a CPL-3 run of {form.name} does not raise #GP(0)",
           "unknown": f"the solver gave no answer whether {form.name} always raises #GP(0)"}
    out.append(Obligation("trap", _status(gp0), msg[_status(gp0)], seconds=time.perf_counter() - t1))
    return out


# --- proofs: one site's handler is the original instruction --------------------------------------

@dataclass
class EquivalenceQuery:
    """Everything one site's equivalence proof speaks about.

    ``s`` is the guest's view before the instruction (any well-formed state the model speaks
    about, EIP at the site); ``real`` (R) is the processor at the trap: s's USER fields with
    CS/SS RPL 3, and free host SYSTEM fields but for the profile's host mode and the shared
    address space; ``vcpu`` (C) is s's SYSTEM fields (its USER fields are free: never read).
    ``goal`` lists (label, condition) ways the handler and the real instruction can differ.
    """

    site: monitor.Site
    profile: Profile
    s: st.State
    real: st.State
    vcpu: st.State
    original: Any            # Outcome of the original instruction on s
    handled: monitor.HandlerOutcome
    base: list
    goal: list


def host_mode(r: st.State, profile: Profile) -> z3.BoolRef:
    """R is the real processor running a deprivileged guest: well-formed, CPL 3 and the profile's
    host settings (``profiles.host_constraints``, the one list every query reads).  The TSS's
    I/O bitmap (in ``profiles.deprivileged``) is left out: its bytes would constrain the guest's
    memory, and the handler never reads it."""
    return z3.And(profiles.wellformed(r, profile), profiles.host_constraints(r, profile))


def equivalence_query(site: monitor.Site, profile: Profile | str,
                      handler: monitor.Handler = monitor.handle) -> EquivalenceQuery:
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    s = st.fresh("guest")
    host = st.fresh("host")
    junk = st.fresh("vcpu_user")
    real = host.replace(**{n: s[n] for n in st.users()}, **{n: s[n] for n in monitor.ADDRESS_SPACE})
    real = real.replace(cs=(s.cs & ~3) | 3, ss=(s.ss & ~3) | 3)
    vcpu = junk.replace(**{n: s[n] for n in st.systems()})
    o = site.form.run(s, code=site.code, features=prof.features)
    h = handler(site, real, vcpu, prof.features)
    base = [profiles.wellformed(s, prof), o.assumed, host_mode(real, prof)]
    after = monitor.view(h.real, h.vcpu)
    neither = z3.And(z3.Not(o.faults), z3.Not(h.faults))
    stores = o.stores + h.emulated.stores
    arrays = [(f"{what} byte written by either", owner[arr], o.post[arr], [a for k, a in stores if k == arr])
              for arr, owner, what in (("mem", h.real, "memory"), ("io", h.vcpu, "virtual I/O port"))]
    goal: list[tuple[str, Any]] = differences(o, h, o.post, after, monitor.SCALAR_USER, arrays,
                                              label="guest register {}")
    for n in monitor.SCALAR_SYSTEM:
        goal.append((f"virtual system field {n}", z3.And(neither, h.vcpu[n] != o.post[n])))
    # Resource control: the monitor's real state is the monitor's; only the address space follows
    # the guest (and CS/SS keep RPL = real CPL: the guest stays deprivileged).
    for n in monitor.SCALAR_SYSTEM:
        if n in monitor.ADDRESS_SPACE:
            goal.append((f"real {n} (the guest's address space)", z3.And(neither, h.real[n] != o.post[n])))
        else:
            goal.append((f"real {n} (the monitor's)", z3.And(neither, h.real[n] != real[n])))
    goal.append(("real io ports", z3.And(neither, h.real.io != real.io)))
    for n in monitor.RPL_COUPLED:
        goal.append((f"real {n}.RPL (must stay the real CPL)",
                     z3.And(neither, z3.Extract(1, 0, h.real[n]) != z3.Extract(1, 0, real[n]))))
    goal = [(lbl, g) for lbl, g in ((lbl, z3.simplify(g)) for lbl, g in goal) if not z3.is_false(g)]
    return EquivalenceQuery(site, prof, s, real, vcpu, o, h, base, goal)


@dataclass
class SiteProof:
    site: monitor.Site
    status: str                 # holds | fails | unknown
    seconds: float
    note: str = ""
    counterexample: dict | None = None


class _Prover:
    """Proves sites one by one.  A query depends on the site's form and bytes and on its
    address, so it is built once per (form, bytes) for a symbolic site address A, in one
    incremental solver session; each site then asks it with A and the guest's EIP equal to its
    own address.  A handler may use ``site.address``: it is that term."""

    def __init__(self, profile: Profile, handler: monitor.Handler, timeout_ms: int):
        self.profile, self.handler, self.timeout = profile, handler, timeout_ms
        self.queries: dict[tuple[str, bytes], tuple[EquivalenceQuery, Session, z3.BitVecRef]] = {}

    def prove(self, site: monitor.Site) -> SiteProof:
        t0 = time.perf_counter()
        key = (site.form.name, site.code)
        if key not in self.queries:
            a = z3.BitVec("site.address", 32)
            q = equivalence_query(dataclasses.replace(site, address=a), self.profile, self.handler)
            self.queries[key] = (q, Session(q.base, self.timeout), a)
        q, sess, a = self.queries[key]
        q = dataclasses.replace(q, site=site)   # the concrete site, for the counterexample's replay
        at = z3.And(a == site.address, q.s.eip == site.address)
        vac = sess.check([at], self.timeout)
        if vac.verdict is not Verdict.REFUTED:
            note = ("no state reaches the site (the assumptions are contradictory): the proof "
                    "would be vacuous" if vac.verdict is Verdict.PROVED else "vacuity check undecided")
            return SiteProof(site, "unknown", time.perf_counter() - t0, note)
        if not q.goal:
            return SiteProof(site, "holds", time.perf_counter() - t0,
                             "no field can differ (the goal simplifies to false)")
        r, hit = decide(lambda cs, ms, rlimit=0: sess.check([at] + cs, ms, rlimit), [], [g for _, g in q.goal],
                        self.timeout)
        dt = time.perf_counter() - t0
        if r.verdict is Verdict.PROVED:
            return SiteProof(site, "holds", dt, r.reason)
        if r.verdict is Verdict.REFUTED:
            lbl = next((lbl for lbl, g in q.goal if g is hit), None) or next(
                (lbl for lbl, g in q.goal if z3.is_true(r.model.eval(g, model_completion=True))),
                q.goal[0][0])
            return SiteProof(site, "fails", dt, lbl, _counterexample(q, r.model, self.handler))
        return SiteProof(site, "unknown", dt, r.reason or "the solver gave no answer")


def prove_site(site: monitor.Site, profile: Profile | str, handler: monitor.Handler = monitor.handle,
               timeout_ms: int = DEFAULT_TIMEOUT_MS) -> SiteProof:
    """For every well-formed guest view S at the site and every host state: the handler on
    (R, C) and the original instruction on S agree on fault, vector and error code, every USER
    field, every memory byte either writes, every virtual SYSTEM field and port; and the handler
    leaves the monitor's real state but the address space alone.  UNSAT proves it; SAT comes
    with a counterexample (replayed concretely)."""
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    return _Prover(prof, handler, timeout_ms).prove(site)


def _changed(pre: dict, post: dict) -> dict:
    out = {}
    for k, v in post.items():
        if isinstance(v, dict):
            d = {a: b for a, b in v.items() if pre.get(k, {}).get(a, 0) != b}
            if d:
                out[k] = d
        elif pre.get(k) != v:
            out[k] = v
    return out


def _counterexample(q: EquivalenceQuery, model: z3.ModelRef, handler: monitor.Handler) -> dict:
    """The states of a SAT answer, both runs read out, and a concrete replay of both."""
    addrs: dict[str, set[int]] = defaultdict(set)
    for o in (q.original, q.handled.emulated):
        for arr, v in o.addresses(model).items():
            addrs[arr] |= v
    s = st.evaluate(q.s, model, addrs)
    real = st.evaluate(q.real, model, addrs)
    vcpu = st.evaluate(q.vcpu, model, addrs)
    orig = q.original.concrete(model, addrs, s)
    feats = q.profile.features
    # Replay on plain integers: the form's own run and the monitor's concrete handler.
    replay_o = q.site.form.execute(s, code=q.site.code, features=feats)
    replay_h = monitor.run(q.site, real, vcpu, feats, handler)
    if isinstance(replay_h, monitor.Resumed):
        got = st.evaluate(monitor.view(st.concrete(replay_h.real), st.concrete(replay_h.vcpu)),
                          _empty_model(), addrs)
        handler_json = {"fault": False, "guest_view_changed": _changed(s, got),
                        "real_changed": _changed(real, replay_h.real)}
    else:
        got = None
        handler_json = replay_h.fault.as_json()
    orig_json = orig.as_json() if isinstance(orig, Fault) else {"fault": False, "changed": _changed(s, orig.state)}
    differs = []
    if isinstance(replay_o, Fault) or isinstance(replay_h, monitor.Injected):
        fo = (replay_o.vector, replay_o.code) if isinstance(replay_o, Fault) else None
        fh = (replay_h.fault.vector, replay_h.fault.code) if isinstance(replay_h, monitor.Injected) else None
        if fo != fh:
            differs.append("fault")
    else:
        post = replay_o.state
        for n in st.users() + st.systems():
            if st.FIELD[n].index_width:
                if any(post[n].get(a, 0) != got[n].get(a, 0) for a in set(post[n]) | set(got[n])):
                    differs.append(n)
            elif post[n] != got[n]:
                differs.append(n)
        for n in st.systems():
            if not st.FIELD[n].index_width and n not in monitor.ADDRESS_SPACE and \
                    replay_h.real[n] != real[n]:
                differs.append(f"real.{n}")
    return {"guest_state": s, "host_state": real, "original": orig_json, "handler": handler_json,
            "differs": differs, "replayed": bool(differs)}


_MODEL: z3.ModelRef | None = None


def _empty_model() -> z3.ModelRef:
    global _MODEL
    if _MODEL is None:
        s = z3.Solver()
        s.check()
        _MODEL = s.model()
    return _MODEL


# --- check-patch -----------------------------------------------------------------------------------

@dataclass
class CheckReport:
    verdict: str                        # holds | fails | unknown
    patched: str
    manifest: str
    original: str
    profile: str
    allow: tuple[str, ...]
    obligations: list[Obligation]
    proofs: list[SiteProof]
    sites: list[ManifestSite]
    remaining: list[Site] = field(default_factory=list)
    allowed: list[Site] = field(default_factory=list)
    unmodelled: tuple = ()
    unmodelled_count: int = 0
    instructions: int = 0
    seconds: float = 0.0
    cache_note: str = ""
    strict: bool = False
    undecodable: int = 0                # bytes of the patched code the decoder cannot decode
    undecodable_first: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"<CheckReport {self.patched} [{self.profile}]: {self.verdict}, {len(self.obligations)} obligations>"

    def failures(self) -> list[Obligation]:
        return [o for o in self.obligations if o.status == "fails"]


def _verdict(obs: list[Obligation]) -> str:
    if any(o.status == "fails" for o in obs):
        return "fails"
    if any(o.status == "unknown" for o in obs):
        return "unknown"
    return "holds"


def _where(g: Guest, address: int, section: str | None) -> str:
    try:
        sym = g.symbolize(address, section)
    except ValueError:
        sym = None
    return f"{address:#x}" + (f" ({sym})" if sym else "")


def check_patch(patched: str | os.PathLike, manifest: str | os.PathLike | Manifest,
                original: str | os.PathLike | None = None, profile: Profile | str | None = None,
                allow: Iterable[str] = (), strict: bool = False, cache: ClassificationCache | None = None,
                jobs: int | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                handler: monitor.Handler = monitor.handle, progress=None) -> CheckReport:
    """Judge a patched guest against its manifest and original (see the module docstring).

    Bad input (unreadable or malformed guests, a malformed manifest, an unknown profile or
    form) raises; everything a manifest or patched file can get wrong is a failing obligation.
    ``strict`` makes unmodelled instructions in the patched code an unknown verdict, and sweeps
    the executable data as code (its sites count as remaining).
    """
    t0 = time.perf_counter()
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if isinstance(profile, Profile):
        prof = profile
    else:
        prof = profiles.get(profile if profile is not None else m.profile)
    allow = check_allow(allow)
    cache = cache if cache is not None else ClassificationCache()
    opath = os.fspath(original) if original is not None else m.original_path
    patched = os.fspath(patched)
    syms = m.symbols
    if syms is not None and not os.path.isfile(syms):
        raise GuestError(f"{syms}: symbol file named by the manifest is missing")
    pf = open_guest(patched, m.raw, m.base, syms)
    of = open_guest(opath, m.raw, m.base, syms)
    obs: list[Obligation] = []

    # --- the original is the one the manifest was made from
    osha = hashlib.sha256(of.raw).hexdigest()
    if osha != m.original_sha256:
        obs.append(Obligation("manifest", "fails", f"original {opath} has sha256 {osha[:16]}..., the "
                              f"manifest records {m.original_sha256[:16]}...: not the guest it was made from"))
    if syms is not None and m.symbols_sha256 is not None and sha256_file(syms) != m.symbols_sha256:
        obs.append(Obligation("manifest", "fails", f"symbol file {syms} changed since the patch "
                              "(its sha256 differs): the decoding it guides would not be the same"))

    # --- each site is what the manifest says it is
    og = of.guest
    want_at = {s.address for s in m.sites}
    orig_insn = {(i.section, i.address): i for i in D.decode(og, text=False) if i.address in want_at}
    relocs = relocated_ranges(of)
    sites_ok: list[tuple[ManifestSite, monitor.Site]] = []
    spans: list[tuple[int, int, ManifestSite]] = []
    seen_addr: dict[tuple[str, int], int] = {}
    for i, s in enumerate(m.sites):
        def bad(msg: str, s=s) -> None:
            obs.append(Obligation("manifest", "fails", f"site #{s.hypercall} at {s.address:#x}: {msg}",
                                  s.hypercall, s.address, s.section, s.symbol))
        n_before = len(obs)
        if s.hypercall != i:
            bad(f"hypercall number {s.hypercall} is not its index {i} in the site table")
        if (s.section, s.address) in seen_addr:
            bad(f"a second site at the same address (also #{seen_addr[(s.section, s.address)]})")
        seen_addr[(s.section, s.address)] = s.hypercall
        sec = next((x for x in og.sections if x.name == s.section), None)
        if sec is None:
            bad(f"section {s.section!r} is not an executable section of the guest: site outside code")
        elif not (sec.addr <= s.address and s.address + max(s.length, 1) <= sec.end):
            bad(f"[{s.address:#x}, {s.address + s.length:#x}) is not inside {s.section} "
                f"[{sec.addr:#x}, {sec.end:#x}): site outside code")
        if not 1 <= s.length <= 15 or len(s.original) != s.length or len(s.replacement) != s.length:
            bad(f"length {s.length} disagrees with the original ({len(s.original)} bytes) or the "
                f"replacement ({len(s.replacement)} bytes), or is not 1-15")
        elif s.replacement != monitor.replacement(s.length):
            bad(f"replacement {s.replacement.hex()} is not the hypercall {monitor.replacement(s.length).hex()}")
        if sec is not None and len(obs) == n_before:
            want_off = sec.offset + s.address - sec.addr
            if s.file_offset != want_off:
                bad(f"file offset {s.file_offset:#x} is not where {s.address:#x} lies ({want_off:#x})")
            elif of.image[want_off:want_off + s.length] != s.original:
                bad(f"the original file holds {of.image[want_off:want_off + s.length].hex()} there, "
                    f"not the manifest's {s.original.hex()}")
            ins = orig_insn.get((s.section, s.address))
            if ins is None or ins.bytes != s.original:
                bad("no instruction of the original's decoding starts there with these bytes "
                    + (f"(it decodes {ins.bytes.hex()} {ins.mnemonic or D.asm(ins.bytes, ins.address)})"
                       if ins else "(mid-instruction)"))
            hit = _overlaps(relocs, s.section, s.address, s.address + s.length)
            if hit is not None:
                bad(f"a relocation at {hit[1]:#x} rewrites the site when the guest is loaded")
        form = None
        try:
            form = registry.get(s.form)
        except KeyError:
            bad(f"form {s.form!r} is no form of the model")
        if form is not None and len(s.original) == s.length and s.length:
            got = S.match_form(s.original)
            if got is None or got.name != form.name:
                bad(f"the manifest says form {s.form}, but the original bytes {s.original.hex()} are "
                    + (f"an instance of {got.name}" if got else "no form of the model"))
        if len(obs) == n_before and form is not None:
            sites_ok.append((s, monitor.Site(s.hypercall, s.address, s.original, form)))
        if sec is not None and 0 < s.length and sec.addr <= s.address and s.address + s.length <= sec.end:
            spans.append((sec.offset + s.address - sec.addr, s.length, s))

    if not any(o.claim == "manifest" for o in obs):
        obs.append(Obligation("manifest", "holds", f"{len(m.sites)} site(s) agree with the original "
                              "(sha256, sections, file offsets, bytes, lengths, instruction boundaries, "
                              "forms matched from the bytes, numbering, no relocation)"))

    # --- (3) every byte outside the sites is the original's; the sites hold the hypercall
    t3 = time.perf_counter()
    a, b = of.image, pf.image
    byte_fail = False
    if len(a) != len(b):
        obs.append(Obligation("bytes", "fails", f"the patched image has {len(b)} bytes, the original {len(a)}"))
        byte_fail = True
    else:
        pos = 0
        for off, n, s in sorted(spans, key=lambda t: t[0]):
            if off < pos:   # overlapping sites (already a manifest failure); compare from pos
                off, n = pos, max(0, off + n - pos)
            d = _first_difference(a, b, pos, off)
            if d is not None:
                obs.append(_byte_failure(of, d, a, b))
                byte_fail = True
                break
            if b[off:off + n] != s.replacement:
                what = "the original bytes" if b[off:off + n] == a[off:off + n] else b[off:off + n].hex()
                obs.append(Obligation("bytes", "fails", f"site #{s.hypercall} at {s.address:#x} holds {what}, "
                                      f"not the hypercall {s.replacement.hex()}", s.hypercall, s.address,
                                      s.section, s.symbol))
                byte_fail = True
            pos = off + n
        if not byte_fail:
            d = _first_difference(a, b, pos, len(a))
            if d is not None:
                obs.append(_byte_failure(of, d, a, b))
                byte_fail = True
    if not byte_fail:
        obs.append(Obligation("bytes", "holds", f"all {len(a)} bytes outside the {len(m.sites)} site(s) are the "
                              "original's; each site holds its hypercall", seconds=time.perf_counter() - t3))

    # --- (1) nothing violating is left but allow-listed forms
    rep = scan_guest(pf.guest, prof, cache, jobs, timeout_ms, progress, strict=strict)
    found = rep.sites + rep.data_sites
    remaining = [x for x in found if x.form not in allow and x.classes != (UNDECIDED,)]
    undecided = [x for x in found if x.form not in allow and x.classes == (UNDECIDED,)]
    allowed = [x for x in found if x.form in allow]
    for x in remaining:
        hint = f" (the manifest was made with --allow {','.join(m.allow)})" if x.form in m.allow else ""
        obs.append(Obligation("remaining", "fails", f"{x.asm} ({x.form}) at {_where(pf.guest, x.address, x.section)} "
                              f"is still there: {rep.reason(x.form)}{hint}", None, x.address, x.section,
                              x.symbol, {"form": x.form, "bytes": x.bytes, "classes": list(x.classes)}))
    for x in undecided:
        obs.append(Obligation("remaining", "unknown", f"{x.asm} ({x.form}) at {x.address:#x}: "
                              f"{rep.reason(x.form)}", None, x.address, x.section, x.symbol))
    if not remaining and not undecided:
        extra = f"; {len(allowed)} allow-listed ({', '.join(sorted({x.form for x in allowed}))})" if allowed else ""
        qual = "" if not rep.result.unmodelled_count else " of a modelled form"
        if prof.vm is not None:
            # Under VT-x/SVM nothing needs patching where every form occurring is proved
            # root-mode privileged or innocuous (each UNSAT, verify/hardware.py).
            obs.append(Obligation("remaining", "holds", f"every instruction{qual} of the {rep.result.instructions} "
                                  f"is proved root-mode privileged or innocuous under {prof.name}'s controls "
                                  f"'{prof.vm.name}' ({len(rep.verdicts)} forms): no site needs patching{extra}"))
        else:
            obs.append(Obligation("remaining", "holds", f"no sensitive-unprivileged instruction{qual} "
                                  f"remains in {rep.result.instructions} instructions{extra}"))
    r = rep.result
    if r.undecodable:
        at = ", ".join(f"{a:#x}" for a in r.undecodable_first) + (", ..." if r.undecodable > len(r.undecodable_first) else "")
        obs.append(Obligation("coverage", "unknown" if strict else "outside",
                              f"{r.undecodable} undecodable byte(s) (at {at}) are outside claim (1): "
                              f"{'--strict counts them unknown' if strict else 'no instruction the decoder knows, byte-identical to the original'}",
                              detail={"undecodable": r.undecodable, "first": list(r.undecodable_first)}))
    if r.unmodelled_count:
        mn = ", ".join(f"{u.mnemonic} x{u.count}" for u in r.unmodelled[:8])
        more = "" if len(r.unmodelled) <= 8 else f", ... ({len(r.unmodelled)} mnemonics)"
        obs.append(Obligation("coverage", "unknown" if strict else "outside",
                              f"{r.unmodelled_count} instruction(s) no form models ({mn}{more}) are outside "
                              f"claim (1): {'--strict counts them unknown' if strict else 'byte-identical to the original, not proved harmless'}",
                              detail={"unmodelled": [{"mnemonic": u.mnemonic, "count": u.count,
                                                      "first": list(u.first)} for u in r.unmodelled]}))
    obs.append(_executable_data(pf.guest, rep))

    # --- (2) the hypercall traps, and each handler is its original instruction
    proofs: list[SiteProof] = []
    if m.sites:
        obs += prove_trap(prof, timeout_ms)
        prover = _Prover(prof, handler, timeout_ms)
        for ms, site in sites_ok:
            p = prover.prove(site)
            proofs.append(p)
            msg = {"holds": f"handler = {ms.asm or site.form.name} ({site.form.name}) on every guest state "
                            f"and host state ({p.note})",
                   "fails": f"handler differs from {ms.asm or site.form.name} ({site.form.name}): {p.note}",
                   "unknown": f"undecided: {p.note}"}[p.status]
            obs.append(Obligation("equivalence", p.status, f"site #{ms.hypercall} at {ms.address:#x}: {msg}",
                                  ms.hypercall, ms.address, ms.section, ms.symbol, p.counterexample, p.seconds))
        for ms in m.sites:
            if not any(ms is x for x, _ in sites_ok):
                obs.append(Obligation("equivalence", "fails", f"site #{ms.hypercall} at {ms.address:#x}: not "
                                      "proved, the manifest does not describe it (see above)",
                                      ms.hypercall, ms.address, ms.section, ms.symbol))
    return CheckReport(_verdict(obs), patched, m.path, opath, prof.name, allow, obs, proofs, m.sites,
                       remaining, allowed, r.unmodelled, r.unmodelled_count, r.instructions,
                       time.perf_counter() - t0, cache.note, strict, r.undecodable, r.undecodable_first)


def _executable_data(g: Guest, rep: ScanReport) -> Obligation:
    """Claim (1)'s reach: the code (``image._code_by_segments``), and with ``strict`` also the
    executable data swept as code, whose sites are then in ``remaining`` like any other."""
    size = sum(len(s.data) for s in g.exec_data)
    names = sorted({s.name for s in g.exec_data})
    detail = {"sections": names, "bytes": size, "notes": list(g.notes)}
    if not size:
        return Obligation("executable-data", "holds", "every byte the executable segments map is code "
                          "and was swept" + (f" ({'; '.join(g.notes)})" if g.notes else ""), detail=detail)
    if rep.data_result is not None:
        return Obligation("executable-data", "holds", f"{size} bytes of executable data "
                          f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}) swept as code too: "
                          f"{len(rep.data_sites)} site(s) there, judged under 'remaining'", detail=detail)
    return Obligation("executable-data", "outside", f"{size} bytes of executable data ({', '.join(names[:6])}"
                      f"{', ...' if len(names) > 6 else ''}) are outside claim (1): mapped executable but "
                      "data by the headers; --strict sweeps them as code", detail=detail)


def _first_difference(a: bytes, b: bytes, lo: int, hi: int) -> int | None:
    if a[lo:hi] == b[lo:hi]:
        return None
    while hi - lo > 64:   # bisect on memcmp: fast even for tens of MiB
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    return next(i for i in range(lo, hi) if a[i] != b[i])


def _byte_failure(of: GuestFile, off: int, a: bytes, b: bytes) -> Obligation:
    sec = next((s for s in of.guest.sections if s.offset <= off < s.offset + len(s.data)), None)
    where = f"file offset {off:#x}"
    addr = None
    if sec is not None:
        addr = sec.addr + off - sec.offset
        where += f" = {_where(of.guest, addr, sec.name)} in {sec.name}"
    return Obligation("bytes", "fails", f"{where} differs outside every site: {a[off]:02x} became {b[off]:02x}",
                      None, addr, sec.name if sec else None)


def sites_from_manifest(m: Manifest) -> list[monitor.Site]:
    """The monitor's site table for a manifest (forms by name; ``check_patch`` verifies them)."""
    return m.monitor_sites()


def group_by_function(sites: Iterable[Site]) -> dict[str, list[Site]]:
    out: dict[str, list[Site]] = defaultdict(list)
    for s in sites:
        out[_function(s)].append(s)
    return dict(out)


def mnemonic_counts(sites: Iterable[Site]) -> Counter:
    return Counter(s.mnemonic for s in sites)
