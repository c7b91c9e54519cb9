"""Scan-and-trap, VMware's way before VT-x: the guest file unchanged, its code rewritten in memory.

Before code first runs, the monitor decodes it (with the scan's decoder, ``pgvirt.decoder``) by
recursive descent from the entry point the guest reached: fall-through, direct jumps, branches and calls are followed, indirect transfers,
returns and undecodable bytes end a path.  Data that no path reaches (the multiboot header, a
switch table inside .text) is never taken for code, unlike a linear sweep.  Each instruction the
injected ``sensitive`` predicate names (sensitive but unprivileged under the profile: the top
layer builds it from the verifier's classification) gets a faulting byte in place of its first
byte: HLT (F4), which raises #GP(0) at CPL 3 (SDM Vol. 2A HLT), so the trap reports the site's
own EIP.  The original bytes are kept; the trap is served by emulating the original instruction
with its form, as ``trap`` emulates any trapped instruction.

How the monitor sees what the guest does (all through ``emulator.vm``):

* new entry points: every guest address that is not the start of a decoded run of instructions
  is watched (a block hook stops before a translated block starting there runs), so a jump
  through a table or a function pointer into unscanned code is caught before it executes;
* self-modifying code: pages holding decoded instructions are write-protected; a guest write
  there (or a store the monitor makes for the guest) restores the page's original bytes, drops
  its decoded instructions and unprotects it, and the write is retried; the page is decoded
  again when its code next runs ("rescans");
* reads of patched bytes: a read hook on each site's byte stops before the read; the original
  byte is put back for exactly that one instruction, so the guest reads its own code.

Not caught: a jump into the middle of a decoded instruction (its bytes decode differently there).

The machinery is ``Scanner``, shared with the ``vtx`` monitor, which finds the instructions whose
definitions exit under its controls the same way; ``TRAP_BYTE`` is each monitor's own.
"""

from __future__ import annotations

import bisect
from typing import Callable

from pgvirt.decoder import MAX_INSN, flow
from pgvirt.emulator.vm import Stop
from pgvirt.model import isa

from .core import GuestEnded
from .trap import Trap

PAGE = 0x1000
TRAP_BYTE = 0xF4          # HLT: #GP(0) at CPL 3, with EIP at the site

Sensitive = Callable[[bytes], "str | None"]

class Scanner:
    """Recursive-descent scanning, trap bytes, watched gaps, write-protected code pages and
    reads of patched bytes answered with the originals; mixed into a monitor (``Scan`` on
    ``Trap``, ``Vtx`` on ``Native``), which says what a site's trap byte is and serves it.
    ``sensitive`` names the form of an instruction to patch (bytes -> form name | None)."""

    TRAP_BYTE = TRAP_BYTE

    def __init__(self, image, sensitive: Sensitive, **kw):
        self.sensitive = sensitive
        self.decoded: dict[int, int] = {}          # instruction start -> length
        self.patches: dict[int, tuple[str, bytes]] = {}   # site -> (form, original instruction)
        self.code_pages: dict[int, set[int]] = {}  # page -> decoded instruction starts in it
        self.ever_scanned: set[int] = set()
        super().__init__(image, **kw)

    def setup(self) -> None:
        super().setup()
        self._rewatch()

    # --- what the guest sees ------------------------------------------------------------------
    def overlay(self) -> dict:
        return {a: orig[0] for a, (_f, orig) in self.patches.items()}

    # --- decoding -------------------------------------------------------------------------------
    def _original(self, a: int, n: int) -> bytes:
        n = max(0, min(n, self.ram_size - a))
        return self.guest_read(a, n) if n else b""

    def _scan(self, entry: int) -> None:
        """Recursive descent from ``entry``; patch what ``sensitive`` names; protect and watch."""
        work = [entry]
        touched: set[int] = set()
        while work:
            a = work.pop()
            while 0 <= a < self.ram_size and a not in self.decoded:
                code = self._original(a, MAX_INSN)
                f = flow(code, a)
                if f is None:
                    break                              # undecodable: the CPU will say #UD
                n = f.length
                self.decoded[a] = n
                for p in range(a // PAGE, (a + n - 1) // PAGE + 1):
                    self.code_pages.setdefault(p, set()).add(a)
                    touched.add(p)
                form = self.sensitive(code[:n])
                if form is not None:
                    self.patches[a] = (form, code[:n])
                    self.vm.write(a, bytes([self.TRAP_BYTE]))
                if f.target is not None:               # a direct near jump, branch or call
                    work.append(f.target)
                if not f.falls_through:                # JMP, RET, IRET, UD2 ...
                    break
                a += n
        for p in touched:
            self.vm.protect(p, False)
            self.vm.forget_code(p * PAGE, (p + 1) * PAGE)
        new = touched - self.ever_scanned
        self.ever_scanned |= touched
        self.counts["scanned_pages"] += len(new)
        self._rewatch()

    def _intervals(self) -> list[tuple[int, int]]:
        out: list[list[int]] = []
        for a in sorted(self.decoded):
            end = a + self.decoded[a]
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], end)
            else:
                out.append([a, end])
        return [(a, b) for a, b in out]

    def _rewatch(self) -> None:
        gaps, at = [], 0
        for a, b in self._intervals():
            if a > at:
                gaps.append((at, a))
            at = max(at, b)
        if at < self.ram_size:
            gaps.append((at, self.ram_size))
        # A block starting inside a decoded instruction is not a new entry we can tell apart
        # from one starting at it; only the gaps between decoded runs are watched.
        self.vm.watch(gaps)
        self.vm.watch_reads(self.patches)

    def _invalidate(self, page: int) -> None:
        """Self-modifying code: the page goes back to its original bytes, undecoded, writable."""
        starts = self.code_pages.pop(page, set())
        for a in starts:
            self.decoded.pop(a, None)
            p = self.patches.pop(a, None)
            if p is not None:
                self.vm.write(a, p[1][:1])
            for q in range(a // PAGE, (a + 16) // PAGE + 1):
                if q != page and q in self.code_pages:
                    self.code_pages[q].discard(a)
        self.vm.protect(page, True)
        self.vm.forget_code(page * PAGE, (page + 1) * PAGE)
        self.counts["rescans"] += 1
        self._rewatch()

    # --- stops of the scan machinery ----------------------------------------------------------
    def write_guest(self, stores: dict) -> None:
        for a in stores:
            if a // PAGE in self.code_pages:
                self._invalidate(a // PAGE)
        super().write_guest(stores)

    def scan_stop(self, stop: Stop) -> bool:
        """Serve a stop of the scan machinery; False: the stop is not one of its."""
        if stop.kind == "watch":
            self._scan(stop.address)
            return True
        if stop.kind == "write-protect":
            page = stop.address // PAGE
            if page not in self.code_pages:
                return False
            self._invalidate(page)
            self._retry_write()
            return True
        if stop.kind == "read-watch":
            self._read_original(stop.address)
            return True
        return False

    def _retry_write(self) -> None:
        """Run the writing instruction once more, now that its target page is writable.

        It may lie in the page it writes (then undecoded since the invalidation, and watched):
        the watch is lifted for that one instruction, unless the instruction is itself one to
        patch - then it is left to the scan, and its store is emulated (``write_guest``)."""
        real = self._real_state()
        code = self._original(real["cs_base"] + real["eip"], MAX_INSN)
        f = flow(code, real["eip"])
        if f is None or self.sensitive(code[:f.length]) is not None:
            return
        self.vm.watch([])
        try:
            stop = self.vm.run(1)
        finally:
            self._rewatch()
        self.handle(stop)

    def _read_original(self, site: int) -> None:
        """Run the one instruction that reads ``site`` with the original byte in place."""
        form, orig = self.patches[site]
        others = {a: v for a, v in self.patches.items() if a != site}
        self.vm.watch_reads(others)
        self.vm.write(site, orig[:1])
        self.vm.forget_code(site, site + 1)
        try:
            stop = self.vm.run(1)
        finally:
            if site in self.patches:
                self.vm.write(site, bytes([self.TRAP_BYTE]))
                self.vm.forget_code(site, site + 1)
            self.vm.watch_reads(self.patches)
        self.handle(stop)




class Scan(Scanner, Trap):
    name = "scan"

    def site(self, eip: int):
        p = self.patches.get(eip)
        if p is None:
            return None
        form, orig = p
        return "patched", isa.get(form), orig

    def other_stop(self, stop: Stop) -> None:
        if not self.scan_stop(stop):
            super().other_stop(stop)


__all__ = ["Scan", "Scanner", "Sensitive", "TRAP_BYTE"]
