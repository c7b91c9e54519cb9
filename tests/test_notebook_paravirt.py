"""Notebook 04 and its helpers (notebook/paravirt.py): functions named from call targets,
the patch, the proof of the patched guest and the failing proof of the unpatched one.

A synthetic raw guest covers the helpers everywhere; grub-invaders (tests/setup-guests.sh) is
marked ``guests`` and skips with the reason when it is missing."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from pgvirt.notebook import paravirt as pv

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "04_paravirt.ipynb"
INVADERS = Path("/boot/invaders.exec")
BASE = 0x1000
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def need_invaders() -> None:
    if not INVADERS.is_file():
        pytest.skip(f"{INVADERS} missing: run tests/setup-guests.sh (installs grub-invaders)")


def call(at: int, target: int) -> bytes:
    return b"\xe8" + ((target - at - 5) & 0xFFFFFFFF).to_bytes(4, "little")


def synthetic(tmp_path: Path) -> Path:
    """A raw guest at BASE: the entry calls two functions; one site in each of the three."""
    code = bytearray(b"\x90" * 0x40)
    code[0x00:0x05] = call(BASE + 0x00, BASE + 0x10)
    code[0x05:0x0A] = call(BASE + 0x05, BASE + 0x20)
    code[0x0A:0x0C] = b"\x9d\xc3"                     # popfd; ret         (in the entry function)
    code[0x10:0x13] = b"\x90\x9c\xc3"                 # nop; pushfd; ret   (sub_1010)
    code[0x20:0x24] = b"\x0f\x01\x00\xc3"             # sgdt [eax]; ret    (sub_1020)
    code[0x30:0x35] = call(BASE + 0x30, BASE + 0x21)  # into the middle of sgdt: no function there
    path = tmp_path / "guest.bin"
    path.write_bytes(bytes(code))
    return path


# --- helpers on a synthetic guest ------------------------------------------------------------------

def test_functions_start_at_the_entry_and_call_targets(tmp_path):
    path = synthetic(tmp_path)
    view = pv.scan(str(path), "pentium", raw=True, base=BASE)
    starts = {(f.name, f.why) for f in view.functions.starts}
    assert starts == {("sub_1000", "entry point"), ("sub_1010", "call target"), ("sub_1020", "call target")}
    groups = {name: [(s.address, s.form) for s in sites] for name, sites in view.by_function.items()}
    assert groups == {"sub_1000": [(0x100A, "popfd")], "sub_1010": [(0x1011, "pushfd")],
                      "sub_1020": [(0x1020, "sgdt_m")]}
    html = view._repr_html_()
    for name in groups:
        assert f'data-function="{name}"' in html
    assert "0x1011" in html and "pushfd" in html and "not privileged under pentium" in html
    assert "unmodelled" in html


def test_patch_prove_and_the_unpatched_guest_on_a_synthetic_guest(tmp_path):
    path = synthetic(tmp_path)
    p = pv.patch(str(path), "pentium", raw=True, base=BASE)
    assert Path(p.out).is_relative_to(tempfile.gettempdir()) and not Path(p.out).is_relative_to(tmp_path)
    assert [(s["hypercall"], s["address"], s["original"], s["replacement"]) for s in p.sites] == \
        [(0, 0x100A, "9d", "f4"), (1, 0x1011, "9c", "f4"), (2, 0x1020, "0f0100", "f49090")]
    assert pv.patch(str(path), "pentium", raw=True, base=BASE) is p     # once per guest and profile
    ok = pv.prove(str(path), "pentium", raw=True, base=BASE)
    assert ok.report.verdict == "holds"
    assert [pr.status for pr in ok.report.proofs] == ["holds"] * 3
    bad = pv.prove_unpatched(str(path), "pentium", raw=True, base=BASE)
    assert bad.report.verdict == "fails"
    named = {(o.claim, o.address) for o in bad.report.failures()}
    assert named == {(c, a) for c in ("bytes", "remaining") for a in (0x100A, 0x1011, 0x1020)}
    html = bad._repr_html_()
    assert "FAILS" in html and "0x1020 (sub_1020)" in html and "is still there" in html


def test_site_explorer_updates_its_html_and_the_handler_gives_the_native_result(tmp_path):
    path = synthetic(tmp_path)
    e = pv.site_explorer(str(path), "pentium", raw=True, base=BASE)
    assert 'data-site="0"' in e.html.value and "popfd" in e.html.value
    e.site.value = 2
    assert 'data-site="2"' in e.html.value and "sgdt" in e.html.value and "the native result" in e.html.value
    for ms in e.view.report.sites:
        site = pv.monitor.Site(ms.hypercall, ms.address, ms.original, pv.isa.get(ms.form))
        x = pv.sample(site, "pentium")
        assert isinstance(x, pv.Sample), x
        assert x.guest["eip"] == ms.address
        assert not pv._same(x.unpatched, x.native), ms.form     # why the site is patched
        assert pv._same(x.patched, x.native), ms.form           # what the handler proves


def test_a_missing_guest_says_how_to_install_it(tmp_path):
    gone = str(tmp_path / "invaders.exec")
    for f in (pv.scan, pv.patch, pv.prove, pv.prove_unpatched, pv.site_explorer):
        html = f(gone)._repr_html_()
        assert "is missing" in html and "setup-guests.sh" in html


# --- grub-invaders -------------------------------------------------------------------------------

@pytest.mark.guests
def test_invaders_site_is_in_the_entry_function():
    need_invaders()
    view = pv.scan(str(INVADERS), "pentium")
    assert {n: [s.address for s in v] for n, v in view.by_function.items()} == {"sub_100000": [0x10002B]}
    names = {f.name: f.why for f in view.functions.starts}
    assert names["sub_100000"] == "entry point"
    assert {"sub_100040", "sub_100063", "sub_100280"} <= set(names)     # call targets at the entry
    assert sum(w == "call target" for w in names.values()) == len(names) - 1
    html = view._repr_html_()
    assert 'data-function="sub_100000"' in html and "0x10002b" in html and "popfd" in html
    assert f"{view.report.result.unmodelled_count} unmodelled instructions" in html


@pytest.mark.guests
def test_invaders_patched_holds_and_unpatched_fails_naming_its_site():
    need_invaders()
    p = pv.patch(str(INVADERS), "pentium")
    assert [(s["address"], s["original"], s["replacement"], s["form"]) for s in p.sites] == \
        [(0x10002B, "9d", "f4", "popfd")]
    assert not Path(p.out).is_relative_to(ROOT) and Path(p.out).is_relative_to(tempfile.gettempdir())
    ok = pv.prove(str(INVADERS), "pentium")
    assert ok.report.verdict == "holds"
    assert [(pr.status, "UNSAT" in pr.note) for pr in ok.report.proofs] == [("holds", True)]
    assert {o.status for o in ok.report.obligations if o.claim == "trap"} == {"holds"}
    html = ok._repr_html_()
    assert "HOLDS" in html and "proved (UNSAT)" in html and "0x10002b (sub_100000)" in html
    bad = pv.prove_unpatched(str(INVADERS), "pentium")
    assert bad.report.verdict == "fails"
    assert {(o.claim, o.address) for o in bad.report.failures()} == {("bytes", 0x10002B), ("remaining", 0x10002B)}
    html = bad._repr_html_()
    assert "FAILS" in html and "holds the original bytes" in html and "popfd (popfd) at 0x10002b is still there" in html


@pytest.mark.guests
def test_invaders_site_explorer_shows_popfd_losing_the_system_flags():
    need_invaders()
    e = pv.site_explorer(str(INVADERS), "pentium")
    assert 'data-site="0" data-address="0x10002b"' in e.html.value and "sysflags" in e.html.value
    x = pv.sample(pv.monitor.Site(0, 0x10002B, b"\x9d", pv.isa.get("popfd")), "pentium")
    # Deprivileged, POPFD leaves IF and IOPL alone; the handler sets them as the native run does.
    assert x.unpatched["sysflags"] == x.guest["sysflags"] != x.native["sysflags"] == x.patched["sysflags"]


@pytest.mark.guests
def test_notebook_executes():
    need_invaders()
    from nbclient import NotebookClient

    before = sorted(p.name for p in NOTEBOOK.parent.iterdir())
    doc = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(doc, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    t0 = time.perf_counter()
    asyncio.run(client.async_execute())
    print(f"{NOTEBOOK.name}: executed in {time.perf_counter() - t0:.1f} s")
    code = [c for c in doc.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    html = [o["data"].get("text/html", "") for c in code for o in c.outputs if "data" in o]
    text = "\n".join(html)
    assert 'data-function="sub_100000"' in text and "0x10002b" in text
    assert "HOLDS" in text and "FAILS" in text and "holds the original bytes" in text
    patched = next(h for h in html if "patched guest:" in h)
    assert tempfile.gettempdir() in patched and str(ROOT) not in patched
    assert WIDGET_VIEW in json.dumps([o for c in code for o in c.outputs])
    state = doc.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    values = [m["state"].get("value") for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any('data-site="0"' in v and "the native result" in v for v in values if isinstance(v, str))
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == before    # nothing written there
