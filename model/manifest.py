"""The paravirtualization manifest: what ``pgvirt patch`` wrote, read back (docs/paravirt.md).

The format is the patcher's (``pgvirt.guest.paravirt.patch_guest``); reading it needs only the
standard library, so the monitors (``pgvirt.monitor``) and the proofs (``pgvirt check-patch``)
share this one reader.  Only the shape is checked here: whether the contents describe the guest
is what ``check-patch`` judges (a tampered manifest fails that check, it is not bad input).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from .files import InputError, read_regular

MANIFEST_FORMAT = "pgvirt-paravirt-manifest"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """The manifest is not one this tool wrote (not JSON, a key missing, a wrong type)."""


@dataclass
class ManifestSite:
    hypercall: int
    address: int
    section: str
    file_offset: int
    length: int
    original: bytes
    replacement: bytes
    form: str
    symbol: str | None
    asm: str


@dataclass
class Manifest:
    path: str
    doc: dict
    profile: str
    allow: tuple[str, ...]
    original_path: str
    original_sha256: str
    raw: bool
    base: int | None
    symbols: str | None
    symbols_sha256: str | None
    sites: list[ManifestSite]

    def monitor_sites(self) -> list:
        """The monitor's site table (``pgvirt.model.monitor.Site``), forms looked up by name.

        A form name the model does not know is a ManifestError: the monitor could not emulate it.
        """
        from . import isa
        from .monitor import Site

        out = []
        for s in self.sites:
            try:
                form = isa.get(s.form)
            except KeyError:
                raise ManifestError(f"{self.path}: site {s.hypercall} names the unknown form "
                                    f"{s.form!r}") from None
            out.append(Site(s.hypercall, s.address, s.original, form))
        return out


def _get(d: dict, key: str, types, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ManifestError(f"missing key {where}{key!r}")
    v = d[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
        raise ManifestError(f"{where}{key!r} has the wrong type ({type(v).__name__})")
    return v


def _hex(text: str, where: str) -> bytes:
    if not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", text):
        raise ManifestError(f"{where} is not hex bytes")
    return bytes.fromhex(text)


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Parse a manifest written by ``patch_guest``; anything else is a ManifestError (bad input)."""
    path = os.fspath(path)
    try:
        text = read_regular(path, "manifest", 64 << 20)
    except InputError as e:
        raise ManifestError(str(e)) from None
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ManifestError(f"{path}: not JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: not a manifest (top level is {type(doc).__name__})")
    try:
        if doc.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"not a {MANIFEST_FORMAT} (format {doc.get('format')!r})")
        if doc.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"manifest version {doc.get('version')!r}, expected {MANIFEST_VERSION}")
        prof = _get(doc, "profile", str, "")
        allow = _get(doc, "allow", list, "")
        if not all(isinstance(a, str) for a in allow):
            raise ManifestError("'allow' must list form names")
        orig = _get(doc, "original", dict, "")
        opath = _get(orig, "path", str, "original.")
        osha = _get(orig, "sha256", str, "original.")
        if not re.fullmatch(r"[0-9a-f]{64}", osha):
            raise ManifestError("'original.sha256' is not a sha256 digest")
        gdoc = _get(doc, "guest", dict, "")
        raw = _get(gdoc, "raw", bool, "guest.")
        base = gdoc.get("base")
        if raw and (not isinstance(base, int) or isinstance(base, bool) or base < 0):
            raise ManifestError("'guest.base' must be a non-negative integer for a raw guest")
        syms = gdoc.get("symbols")
        spath = ssha = None
        if syms is not None:
            spath = _get(syms, "path", str, "guest.symbols.")
            ssha = _get(syms, "sha256", str, "guest.symbols.")
        sites = []
        for i, s in enumerate(_get(doc, "sites", list, "")):
            w = f"sites[{i}]."
            ints = {k: _get(s, k, int, w) for k in ("hypercall", "address", "file_offset", "length")}
            for k, v in ints.items():
                if v < 0 or v >= 1 << 40:
                    raise ManifestError(f"{w}{k} = {v} is out of range")
            sym = s.get("symbol") if isinstance(s, dict) else None
            sites.append(ManifestSite(
                ints["hypercall"], ints["address"], _get(s, "section", str, w), ints["file_offset"],
                ints["length"], _hex(_get(s, "original", str, w), f"{w}original"),
                _hex(_get(s, "replacement", str, w), f"{w}replacement"), _get(s, "form", str, w),
                sym if isinstance(sym, str) else None, str(s.get("asm", ""))))
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from None
    if not os.path.isabs(opath):
        opath = os.path.join(os.path.dirname(os.path.abspath(path)), opath)
    return Manifest(path, doc, prof, tuple(allow), opath, osha, raw, base if raw else None,
                    spath, ssha, sites)


__all__ = ["MANIFEST_FORMAT", "MANIFEST_VERSION", "ManifestError", "ManifestSite", "Manifest",
           "load_manifest"]
