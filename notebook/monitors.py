"""Notebook 06's helpers: guests under the monitors, in lock step against native, side by side.

Every call returns something Jupyter shows (HTML, a PIL image, a widget); the runs come from
``pgvirt.compare`` / ``pgvirt.run`` (``monitor/`` on Unicorn, the verdicts from the verifier).
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from functools import lru_cache

from pgvirt import api
from pgvirt.report import html as H
from pgvirt.report import monitor as R
from pgvirt.report import screens as S
from pgvirt.report.html import HTML

DEMO_STEPS = 200_000


DEMO = "demo"       # as a guest name: pgvirt's demonstration guest, written once per process


def demo_guest(directory: str | None = None) -> str:
    """pgvirt's demonstration guest (a multiboot ELF written from the forms' bytes): its path."""
    from pgvirt.monitor import demo

    directory = directory or tempfile.mkdtemp(prefix="pgvirt-demo-")
    return str(demo.write(os.path.join(directory, "demo.elf")))


@lru_cache(maxsize=1)
def _demo_path() -> str:
    return demo_guest()


def demo_keys() -> str:
    from pgvirt.monitor import demo
    return demo.KEYS


def _guest(guest: str, input: str | None) -> tuple[str, str]:
    """The path and the scripted keys: ``DEMO`` is the demonstration guest with its own keys."""
    if guest == DEMO:
        return _demo_path(), demo_keys() if input is None else input
    return os.fspath(guest), input or ""


def _png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Lockstep:
    """A comparison of monitors against native: the verdict per monitor (match, or the first
    divergence with the Theorem-1 verdict explaining it), the slowdown table, the screens."""

    def __init__(self, comparison):
        self.comparison = comparison

    @property
    def verdicts(self) -> dict[str, str]:
        return {v.monitor: "match" if v.matches else "diverged" for v in self.comparison.verdicts}

    def finals(self) -> dict:
        c = self.comparison
        return {r.monitor: r.record.frames[-1][1] for r in [c.reference] + [v.result for v in c.verdicts]
                if r.record.frames}

    def marks(self) -> dict[str, str]:
        return {v.monitor: f"first divergence: {v.divergence.eip:#x} {v.divergence.asm}"
                for v in self.comparison.verdicts if v.divergence is not None}

    def screens(self):
        """The last VGA frame of native and of each monitor, side by side, divergences marked."""
        marks = self.marks()
        return S.side_by_side([(m, f, marks.get(m)) for m, f in self.finals().items()])

    def _repr_html_(self) -> str:
        c = self.comparison
        rows = []
        for v in c.verdicts:
            if v.matches:
                rows.append([v.monitor, "match", f"{len(v.result.record.ports)} port accesses and "
                             f"{len(v.result.record.frames)} frames as native", ""])
                continue
            d = v.divergence
            e = d.explanation
            why = ("UNEXPLAINED: no Theorem-1 verdict covers it" if e is None else
                   f"{e['form']} is {' + '.join(e['classes'])} under {e['profile']}: {e['reason']}")
            rows.append([v.monitor, "diverged", f"instruction {d.retired}: {d.eip:#x} {d.asm} "
                         f"({d.code.hex()})", why])
        slow = R.slowdown(c)
        return (f"<p><b>{H._e(os.path.basename(c.guest))}</b> against native in lock step, "
                f"{c.steps:,} instructions</p>"
                + H.table(["monitor", "verdict", "first divergence", "explained by"], rows)
                + "<p>slowdown against native</p>"
                + H.table(list(R.SLOWDOWN_COLUMNS), [[r[k] for k in R.SLOWDOWN_COLUMNS] for r in slow])
                + f'<img src="data:image/png;base64,{_png(self.screens())}"/>')


def _controls(controls):
    """``vtx``'s VMCS controls: None (the default), a controls file, a ``vmx.Controls``, or the
    file's JSON as a dict (``{"base": "default", "primary": {"use_io_bitmaps": False}}``)."""
    from pgvirt.model import vmx

    if isinstance(controls, dict):
        return vmx.from_json(controls)
    return api.monitor_controls(controls)


def compare(guest: str = DEMO, monitors=("trap", "paravirt", "scan", "vtx"), steps: int = DEMO_STEPS,
            input: str | None = None, profile: str = "pentium", controls=None) -> Lockstep:
    """Run ``monitors`` against native in lock step on ``guest`` (runs are deterministic, so
    one comparison per set of arguments is kept and shared by ``screens`` and ``divergence``);
    ``controls`` are the VMCS controls of ``vtx`` (``_controls``)."""
    path, keys = _guest(guest, input)
    return _compare(path, tuple(monitors), steps, keys, profile, _controls(controls))


@lru_cache(maxsize=8)
def _compare(path: str, monitors: tuple, steps: int, keys: str, profile: str, controls) -> Lockstep:
    return Lockstep(api.compare(path, monitors, profile=profile, steps=steps, input=keys,
                                controls=controls).value)


def screens(guest: str = DEMO, **kw):
    """The last frames of ``compare(guest, **kw)`` side by side, divergences marked."""
    return compare(guest, **kw).screens()


def frames(guest: str = DEMO, monitor: str = "native", steps: int = DEMO_STEPS,
           input: str | None = None, profile: str = "pentium", controls=None):
    """One run's VGA frames under a slider (one frame per PIT tick that changed the screen)."""
    import ipywidgets as W

    path, keys = _guest(guest, input)
    res = api.run(path, monitor, profile=profile, steps=steps, input=keys,
                  controls=_controls(controls) if monitor == "vtx" else None).value
    shots = res.record.frames
    if not shots:
        return HTML(f"<p>{H._e(monitor)}: the guest drew no frame in {steps:,} instructions</p>")
    pngs = []
    for tick, frame in shots:
        buf = io.BytesIO()
        S.render(frame).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    image = W.Image(value=pngs[-1], format="png")
    slider = W.IntSlider(value=len(pngs) - 1, min=0, max=len(pngs) - 1, description="frame")
    slider.observe(lambda ch: setattr(image, "value", pngs[ch["new"]]), names="value")
    caption = W.HTML(f"<b>{H._e(monitor)}</b>: {len(pngs)} frames in {res.retired:,} instructions")
    box = W.VBox([caption, slider, image])
    box.pngs, box.slider, box.image = pngs, slider, image      # for tests and callers
    return box


def divergence(guest: str | Lockstep = DEMO, monitor: str = "trap", **kw) -> HTML:
    """The first divergence of ``monitor`` in full: the state before, what differs, the verdict."""
    view = guest if isinstance(guest, Lockstep) else compare(guest, **kw)
    v = next((v for v in view.comparison.verdicts if v.monitor == monitor), None)
    if v is None:
        return HTML(f"<p>{H._e(monitor)} was not compared</p>")
    if v.matches:
        return HTML(f"<p>{H._e(monitor)}: no divergence from native</p>")
    return HTML(H.pre("\n".join(R.divergence_text(v))))


__all__ = ["DEMO", "demo_guest", "demo_keys", "compare", "screens", "frames", "divergence", "Lockstep",
           "DEMO_STEPS"]
