"""The paravirtual monitor: the guest after ``pgvirt patch``, its hypercalls served as
docs/paravirt.md specifies; everything else as ``trap``.

A hypercall is the #GP(0) of a site's HLT at CPL 3 (the deprivileged guest's HLT faults, SDM
Vol. 2A HLT), with EIP at the site (Vol. 3A 6.5).  The site table is the manifest's (read by
``pgvirt.model.manifest``, which ``pgvirt check-patch`` proves against the guest), the hypercall
number the site's index.  The handler emulates the site's ORIGINAL instruction with its form and
its own bytes and resumes after the original length (``monitor.emulate``, the concrete run of
``monitor.handle``).  An HLT at an address that names no site is the guest's own HLT, emulated
as trap-and-emulate emulates it.
"""

from __future__ import annotations

from pgvirt.model.manifest import Manifest

from .trap import Trap


class Paravirt(Trap):
    name = "paravirt"

    def __init__(self, image, manifest: Manifest, **kw):
        self.sites = {s.address: s for s in manifest.monitor_sites()}
        self.manifest = manifest
        super().__init__(image, **kw)

    def site(self, eip: int):
        s = self.sites.get(eip)
        if s is None:
            return None
        return "hypercall", s.form, s.code

    def compare_overlay(self) -> dict:
        return {s.address + k: b for s in self.sites.values() for k, b in enumerate(s.code)}

    def patched_ranges(self) -> list[tuple[int, int]]:
        """Where the patched guest's bytes differ from the original's (the sites)."""
        return [(s.address, s.address + s.length) for s in self.sites.values()]


__all__ = ["Paravirt"]
