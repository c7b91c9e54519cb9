"""The library entry points: ``run`` one monitor, ``compare`` monitors against native.

``run(guest, monitor="native", steps=..., input=...)`` loads a multiboot guest and runs it under
one monitor; ``compare(guest, monitors=[...])`` runs them in lock step against native
(``compare.compare``).  Both return data (``core.RunResult``, ``compare.Comparison``); ``report``
renders it as text or JSON and ``screens`` as PNG pictures.

What the verifier knows comes in as arguments, because this package never imports it:
``sensitive`` (bytes -> the form name of a Theorem-1 violation, for ``scan``), ``paravirt``
(the patched guest and its manifest, from ``pgvirt patch``), ``controls`` (the VMCS controls
of ``vtx``, ``model.vmx``: the default unless given), ``explain`` (a divergence -> its
verdict).  ``pgvirt.api`` builds them from the verifier (``monitor_sensitive``, ``monitor_patch``,
``explain_divergence``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterable

from pgvirt.emulator.machine import StateError
from pgvirt.model import vmx
from pgvirt.model.manifest import ManifestError, load_manifest

from . import compare as C
from .core import DEFAULT_RAM, Monitor, RunResult
from .devices import KeysError, parse_keys
from .multiboot import Image, LoadError, load
from .native import Native
from .paravirt import Paravirt
from .scan import Scan
from .trap import ShadowError, Trap
from .vtx import ControlsUnsupported, Vtx

MONITORS = ("native", "trap", "paravirt", "scan", "vtx")
DEFAULT_STEPS = 2_000_000
# Scripted keys: the first press at KEY_START clocks (0.08 virtual s), each held KEY_HOLD clocks
# (50 ms: long enough for a game that samples its keys once a frame), one every KEY_GAP clocks
# (10 keys a virtual second).
KEY_START, KEY_HOLD, KEY_GAP = 100_000, 60_000, 120_000


class RunError(ValueError):
    """Bad input for a run (one line): not multiboot, a truncated ELF, an unknown key..."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Setup:
    """Everything a monitor of one guest needs, checked once; ``make(name)`` builds monitors."""

    def __init__(self, guest: str | os.PathLike, *, input: str = "", ram_size: int = DEFAULT_RAM,
                 profile: str = "pentium", sensitive: Callable[[bytes], str | None] | None = None,
                 paravirt: tuple[str, str] | None = None, controls: vmx.Controls | None = None):
        self.path = os.fspath(guest)
        self.controls = vmx.DEFAULT if controls is None else controls
        self.ram_size = ram_size
        self.profile = profile
        self.sensitive = sensitive
        try:
            self.image = load(self.path, ram_size)
            self.keys = parse_keys(input or "", KEY_START, KEY_HOLD, KEY_GAP)
        except (LoadError, KeysError) as e:
            raise RunError(str(e)) from None
        self.input = input or ""
        self.paravirt = None
        if paravirt is not None:
            patched, manifest = map(os.fspath, paravirt)
            try:
                m = load_manifest(manifest)
            except ManifestError as e:
                raise RunError(str(e)) from None
            try:
                original = _sha256(self.path)
            except OSError as e:
                raise RunError(f"{self.path}: cannot read: {e.strerror or e}") from None
            if m.original_sha256 != original:
                raise RunError(f"{manifest}: the manifest describes another guest (sha256 "
                               f"{m.original_sha256[:12]}..., {os.path.basename(self.path)} has "
                               f"{original[:12]}...)")
            try:
                image = load(patched, ram_size, cmdline=self.image.name)
            except LoadError as e:
                raise RunError(str(e)) from None
            self.paravirt = (image, m)

    def make(self, name: str) -> Callable[[], Monitor]:
        kw = {"keys": self.keys, "ram_size": self.ram_size}
        if name == "native":
            return lambda: Native(self.image, **kw)
        if name == "trap":
            return lambda: Trap(self.image, profile=self.profile, **kw)
        if name == "paravirt":
            if self.paravirt is None:
                raise RunError("the paravirt monitor needs the patched guest and its manifest "
                               "(pgvirt patch)")
            image, manifest = self.paravirt
            return lambda: Paravirt(image, manifest, profile=self.profile, **kw)
        if name == "scan":
            if self.sensitive is None:
                raise RunError("the scan monitor needs to know which instructions are "
                               "sensitive but unprivileged (the verifier's classification)")
            return lambda: Scan(self.image, self.sensitive, profile=self.profile, **kw)
        if name == "vtx":
            return lambda: Vtx(self.image, self.controls, **kw)
        raise RunError(f"unknown monitor {name!r} (known: {', '.join(MONITORS)})")

    def build(self, name: str) -> Monitor:
        try:
            return self.make(name)()
        except (ShadowError, ControlsUnsupported, StateError) as e:
            raise RunError(f"{name}: {e}") from None
        except ValueError as e:               # a profile the monitor cannot run faithfully
            raise RunError(f"{name}: {e}") from None


def run(guest: str | os.PathLike, monitor: str = "native", *, steps: int = DEFAULT_STEPS,
        input: str = "", **setup) -> RunResult:
    """Run ``guest`` under ``monitor`` for at most ``steps`` instructions."""
    if steps <= 0:
        raise RunError("--steps must be positive")
    s = Setup(guest, input=input, **setup)
    return s.build(monitor).run(steps)


def compare(guest: str | os.PathLike, monitors: Iterable[str] = ("trap", "paravirt", "scan"), *,
            steps: int = DEFAULT_STEPS, input: str = "",
            explain: Callable[[dict], dict | None] | None = None, **setup) -> C.Comparison:
    """Each of ``monitors`` against native in lock step, with the first divergence of each."""
    if steps <= 0:
        raise RunError("--steps must be positive")
    names = [m for m in monitors if m != "native"]
    if not names:
        raise RunError("--compare needs a monitor besides native")
    s = Setup(guest, input=input, **setup)
    makers = {n: s.make(n) for n in names}
    for n in ("native", *names):
        s.build(n)                            # bad input shows before the lock step starts
    comparison = C.compare(s.make("native"), makers, steps)
    comparison.input = s.input
    if explain is not None:
        comparison.explain(explain)
    return comparison


__all__ = ["run", "compare", "Setup", "RunError", "MONITORS", "DEFAULT_STEPS", "KEY_START",
           "KEY_HOLD", "KEY_GAP"]
