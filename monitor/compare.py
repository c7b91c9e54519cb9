"""Lock step: every monitor against ``native`` on the same guest and input, to the first divergence.

Each monitor and a native run advance together in chunks of ``CHUNK`` instructions.  After each
chunk they are compared on what the guest could have seen: the port accesses (time, port,
direction, value), the distinct VGA frames, the console bytes, how the run ended, and the
guest's view of its machine - every scalar field of the model's state as the guest believes it
(for a monitor: the USER fields of the real CPU and the SYSTEM fields of its virtual CPU) and a
digest of guest RAM as the guest reads it.  A paravirtual guest differs from the original in its
site bytes by construction (``pgvirt check-patch`` proves the rest equal), so those are read
with their original bytes for the digest.

The first chunk that differs is replayed from the start (every run is deterministic) up to its
beginning, then both runs step one retired instruction at a time until they differ.  That
instruction is the **first divergence**: its address, bytes, form and assembly, the guest's state
before it (the same in both runs), and what differs after it.  Explaining it by a Theorem-1
verdict is the top layer's work (``explain`` callbacks), since this package never imports the
verifier.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

from pgvirt.model import state as st

from . import decode
from .core import Monitor, RunResult, asm

CHUNK = 1 << 14          # instructions between lock-step checkpoints
MAX_DIFFS = 24


def _digest_ram(m: Monitor) -> int:
    data = bytearray(m.vm.read(0, m.ram_size))
    for a, v in m.compare_overlay().items():
        data[a] = v
    return zlib.crc32(data)


def _view(m: Monitor) -> dict:
    g = m.guest_state()
    return {n: g[n] for n in st.SCALARS}


@dataclass
class Snapshot:
    retired: int
    ports: int
    frames: int
    console: int
    view: dict
    ram: int
    end: str | None


def snapshot(m: Monitor, ram: bool = True) -> Snapshot:
    return Snapshot(m.retired, len(m.bus.trace), len(m.record.frames), len(m.bus.console),
                    _view(m), _digest_ram(m) if ram else 0,
                    None if m.end is None else m.end.reason)


def differences(a: Monitor, b: Monitor, since: tuple[int, int, int] = (0, 0, 0),
                addresses=(), ram: bool = False) -> dict:
    """What differs between the two runs now: ``since`` (ports, frames, console) is where the
    records were known equal; ``addresses`` are memory bytes to compare."""
    out: dict = {}
    va, vb = _view(a), _view(b)
    fields = [{"field": n, a.name: va[n], b.name: vb[n]} for n in st.SCALARS if va[n] != vb[n]]
    if fields:
        out["fields"] = fields[:MAX_DIFFS]
    mem = []
    for addr in sorted(addresses):
        if 0 <= addr < a.ram_size:
            x, y = a.compare_read(addr, 1)[0], b.compare_read(addr, 1)[0]
            if x != y:
                mem.append({"address": addr, a.name: x, b.name: y})
    if mem:
        out["memory"] = mem[:MAX_DIFFS]
    if ram and _digest_ram(a) != _digest_ram(b):
        out.setdefault("memory", []).append({"address": None, "note": "RAM digests differ"})
    pa, pb = a.bus.trace[since[0]:], b.bus.trace[since[0]:]
    if pa != pb:
        k = next((i for i, (x, y) in enumerate(zip(pa, pb)) if x != y), min(len(pa), len(pb)))
        out["ports"] = {"index": since[0] + k,
                        a.name: list(pa[k]) if k < len(pa) else None,
                        b.name: list(pb[k]) if k < len(pb) else None}
    fa = [(t, f.key()) for t, f in a.record.frames[since[1]:]]
    fb = [(t, f.key()) for t, f in b.record.frames[since[1]:]]
    if fa != fb:
        k = next((i for i, (x, y) in enumerate(zip(fa, fb)) if x != y), min(len(fa), len(fb)))
        out["frames"] = {"tick": (fa[k] if k < len(fa) else fb[k])[0]}
    if bytes(a.bus.console[since[2]:]) != bytes(b.bus.console[since[2]:]):
        out["console"] = {a.name: bytes(a.bus.console[since[2]:]).decode("latin-1"),
                          b.name: bytes(b.bus.console[since[2]:]).decode("latin-1")}
    ea = None if a.end is None else a.end.reason
    eb = None if b.end is None else b.end.reason
    if ea != eb:
        out["end"] = {a.name: ea, b.name: eb,
                      "message": (b.end or a.end).message}
    return out


@dataclass
class Divergence:
    monitor: str
    retired: int                 # instructions retired before the diverging one
    eip: int
    code: bytes
    form: str | None
    asm: str
    before: dict                 # the guest's state before it (scalars)
    differs: dict                # what differs after it
    explanation: dict | None = None

    def as_json(self) -> dict:
        return {"monitor": self.monitor, "instruction": self.retired, "eip": self.eip,
                "bytes": self.code.hex(), "form": self.form, "asm": self.asm,
                "before": self.before, "differs": self.differs, "explanation": self.explanation}


@dataclass
class Verdict:
    monitor: str
    result: RunResult
    divergence: Divergence | None = None

    @property
    def matches(self) -> bool:
        return self.divergence is None


@dataclass
class Comparison:
    guest: str
    steps: int
    reference: RunResult
    verdicts: list[Verdict] = field(default_factory=list)

    def explain(self, explainer: Callable[[dict], dict | None]) -> None:
        """Attach the verdict ``explainer`` gives for each divergence (None: unexplained)."""
        for v in self.verdicts:
            if v.divergence is not None:
                v.divergence.explanation = explainer(v.divergence.as_json())

    @property
    def unexplained(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.divergence is not None and v.divergence.explanation is None]


def _localize(make_native: Callable[[], Monitor], make: Callable[[], Monitor], start: int,
              end: int) -> Divergence | None:
    """Replay both runs to ``start`` and step them to the first instruction that differs."""
    a, b = make_native(), make()
    a.advance(start)
    b.advance(start)
    pre = differences(a, b, ram=True)
    if pre:
        # Equal at the checkpoint before, different now: a run is not deterministic.
        raise RuntimeError(f"replaying to instruction {start} does not reproduce the checkpoint "
                           f"({sorted(pre)}): a run is not deterministic")
    a.vm.log_writes(True)
    b.vm.log_writes(True)
    a.mem_log, b.mem_log = set(), set()
    t = start
    while t < end + 1:
        since = (len(a.bus.trace), len(a.record.frames), len(a.bus.console))
        before = _view(a)
        try:
            code = a.code_at(before["eip"], before)
        except Exception:
            code = b""
        a.advance(t + 1)
        b.advance(t + 1)
        written = a.vm.take_writes() | b.vm.take_writes() | a.mem_log | b.mem_log
        a.mem_log, b.mem_log = set(), set()
        d = differences(a, b, since, written)
        if d:
            m = decode.match(code) if code else None
            n = m[1] if m else (len(code) and 1)
            return Divergence(b.name, t, before["eip"], code[:n] if m else code[:1],
                              m[0].name if m else None, asm(code, before["eip"]) if code else "",
                              before, d)
        if a.end is not None and b.end is not None:
            return None
        t += 1
    return None


def compare(make_native: Callable[[], Monitor], makers: dict[str, Callable[[], Monitor]],
            steps: int, chunk: int = CHUNK) -> Comparison:
    """Every monitor of ``makers`` against native, in lock step, for ``steps`` instructions."""
    ref = make_native()
    runs = {name: make() for name, make in makers.items()}
    diverged: dict[str, tuple[int, int]] = {}        # name -> (last equal checkpoint, its end)
    t = 0
    while t < steps and len(diverged) < len(runs):
        nxt = min(steps, t + chunk)
        ref.advance(nxt)
        for name, m in runs.items():
            if name in diverged:
                continue
            m.advance(nxt)
            if differences(ref, m, ram=True):
                diverged[name] = (t, nxt)
        if ref.end is not None and all(m.end is not None for n, m in runs.items()
                                       if n not in diverged):
            break
        t = nxt
    reference = ref.run(steps) if ref.end is None else ref.result(steps)
    comparison = Comparison(ref.image.name, steps, reference)
    for name, m in runs.items():
        if name in diverged:
            start, end = diverged[name]
            div = _localize(make_native, makers[name], start, end)
            if div is None:
                div = Divergence(name, end, 0, b"", None, "", {}, {"note": "the checkpoint "
                                 "differs but no single instruction does"})
            m.advance(steps)
            comparison.verdicts.append(Verdict(name, m.run(steps) if m.end is None else m.result(steps), div))
        else:
            comparison.verdicts.append(Verdict(name, m.run(steps) if m.end is None else m.result(steps)))
    return comparison


__all__ = ["compare", "Comparison", "Verdict", "Divergence", "differences", "CHUNK"]
