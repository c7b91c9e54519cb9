"""The notebooks: they run top to bottom, stay thin and stripped, and their helpers work without a
front end; one test drives notebook 02 in headless Chromium through Voila."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from pgvirt.model.derived import registry
from pgvirt.notebook import classification as nb
from pgvirt.verify.popek_goldberg import CLASSES, classify_all

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 600   # whole notebook, wall clock; classifying every form takes well under it
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"01_popek_goldberg.ipynb", "02_x86_classification.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_stripped(path):
    doc = nbformat.read(path, as_version=4)
    nbformat.validate(doc)
    assert doc.cells[0].cell_type == "markdown" and doc.cells[0].source.startswith("# ")
    for cell in doc.cells:
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, "outputs must be stripped in git"
        body = ast.parse(cell.source).body
        assert len(body) == 1, f"one call per cell: {cell.source!r}"


def _execute(path: Path):
    from nbclient import NotebookClient

    doc = nbformat.read(path, as_version=4)
    client = NotebookClient(doc, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    asyncio.run(asyncio.wait_for(client.async_execute(), NOTEBOOK_TIMEOUT_S))
    return doc, time.perf_counter() - t0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path):
    doc, seconds = _execute(path)
    print(f"{path.name}: executed in {seconds:.1f} s")
    code = [c for c in doc.cells if c.cell_type == "code"]
    for c in code:
        assert not [o for o in c.outputs if o.output_type == "error"]
    shown = [c for c in code if "import" not in c.source]
    assert all(c.outputs for c in shown), "every call displays something"
    text = json.dumps([o for c in code for o in c.outputs])
    if path.name.startswith("01"):
        assert "[pentium] Theorem 1" in text and "[umip] Theorem 3" in text
        assert text.count("confirmed") >= 4 and "NOT confirmed" not in text
    if path.name.startswith("02"):
        kinds = [k for c in code for o in c.outputs for k in o.get("data", {})]
        assert kinds.count("image/png") == 2 and WIDGET_VIEW in kinds
        state = doc.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        values = [m["state"].get("value") for m in state.values() if m["model_name"] == "HTMLModel"]
        assert any('data-form="sgdt_m"' in v for v in values if isinstance(v, str))
    if path.name.startswith("05"):
        kinds = [k for c in code for o in c.outputs for k in o.get("data", {})]
        assert WIDGET_VIEW in kinds                                   # the control picker
        for verdict in ("pentium", "umip", "vtx", "svm", "necessary", "harmless", "hlt_exiting",
                        "only SVM can make it exit (pushf)", "CR0 read shadow"):
            assert verdict in text, verdict
    if path.name.startswith("06"):
        kinds = [k for c in code for o in c.outputs for k in o.get("data", {})]
        assert kinds.count("image/png") == 1 and WIDGET_VIEW in kinds      # the screens, the frames
        assert "diverged" in text and "explained:" in text and "UNEXPLAINED" not in text
        assert "use_io_bitmaps" in text and "external_interrupt" in text        # vtx's cells


# --- helpers without a front end -------------------------------------------------------------------

FORMS = ["sgdt_m", "smsw_r", "lgdt_m", "mov_r_cs", "nop"]


def _answer(html: str, cls: str) -> str:
    m = re.search(rf">{cls}</td><td [^>]*>(yes|no|\?)</td>", html)
    assert m, cls
    return m.group(1)


def test_explorer_updates_its_html_on_picks():
    e = nb.explorer("pentium", "sgdt_m")
    first = e.html.value
    assert 'data-form="sgdt_m"' in first and 'data-profile="pentium"' in first
    assert _answer(first, "privileged") == "no" and _answer(first, "location_sensitive") == "yes"
    e.form.value = "lgdt_m"
    assert 'data-form="lgdt_m"' in e.html.value and _answer(e.html.value, "privileged") == "yes"
    e.form.value = "smsw_r"
    assert _answer(e.html.value, "privileged") == "no"
    e.profile.value = "umip"   # UMIP makes SMSW trap at CPL > 0
    assert 'data-profile="umip"' in e.html.value and _answer(e.html.value, "privileged") == "yes"
    assert "witness: location_sensitive" in e.html.value


def test_explorer_reaches_every_form_by_family_or_search():
    """The pickers list every form, hand-written and derived, grouped by family as notebook 02's
    table is; a family or a search fills the instruction list and shows its first form."""
    from pgvirt.model.derived import registry
    e = nb.explorer("pentium", "sgdt_m")
    listed = [n for _, forms in e.groups for n, _ in forms]
    assert sorted(listed) == sorted(registry.names())
    from pgvirt.verify.popek_goldberg import Classification
    from pgvirt.model import profiles
    for fam, forms in e.groups:       # the families notebook 02's table shows (no solving here)
        for n, _ in forms[::40]:
            assert nb.family(Classification(registry.get(n), profiles.PENTIUM)) == fam
    fam = "legacy: fpu"
    e.family.value = fam
    assert registry.is_derived(e.form.value) and f'data-form="{e.form.value}"' in e.html.value
    e.search.value = "fdiv st,qword"
    assert e.form.value == "fdiv_m64fp" and [v for _, v in e.form.options] == ["fdiv_m64fp"]
    assert 'data-form="fdiv_m64fp"' in e.html.value and _answer(e.html.value, "mode_sensitive") == "yes"
    e.search.value = ""
    assert e.form.value == dict(e.groups)[fam][0][0]
    with pytest.raises(KeyError):
        nb.explorer("pentium", "no_such_form")


def test_witness_view_shows_the_two_runs():
    w = nb.witness("mov_r_cs", "mode_sensitive", "pentium")
    html = w._repr_html_()
    assert w.confirmed is True
    assert "native, CPL 0" in html and "deprivileged, CPL 3" in html
    assert {"cpl", "cs"} <= set(w.fields())
    proof = nb.witness("nop", "control_sensitive", "pentium")._repr_html_()
    assert "No witness" in proof and "UNSAT" in proof
    assert "not in the model yet" in nb.witness("no_such_form", "sensitive")._repr_html_()
    with pytest.raises(KeyError):
        nb.witness("nop", "no_such_class")


def test_check_forms_lists_missing_forms():
    html = nb.check_forms(["sgdt_m", "no_such_form"], "pentium")._repr_html_()
    assert ">sgdt_m<" in html and "not in the model yet: no_such_form" in html


FAMILY_FORMS = FORMS + ["addpd_xmm_xmmm128", "paddb_mm_mmm64", "evex_vpaddb_xmm_k1z_xmm_xmmm128"]


def test_heatmap_cells_are_the_families_shares(monkeypatch):
    assert all(registry.is_derived(n) for n in FAMILY_FORMS[len(FORMS):])
    results = classify_all("pentium", FAMILY_FORMS, jobs=1)
    monkeypatch.setitem(nb._ALL, "pentium", results)
    pic = nb.heatmap("pentium")
    grid = pic.figure.axes[0].images[0].get_array()
    groups = nb.families(results)
    assert grid.shape == (len(groups), len(CLASSES))
    assert sum(len(g) for _, g in groups) == len(results)
    for i, (_, group) in enumerate(groups):
        for j, cls in enumerate(CLASSES):
            assert grid[i][j] == pytest.approx(sum(c[cls] is True for c in group) / len(group))
    fam = dict(groups)
    system = fam["hand-written: tables"]
    assert {c.form.name for c in system} >= {"sgdt_m", "lgdt_m"}
    priv = CLASSES.index("privileged")
    row = [n for n, _ in groups].index("hand-written: tables")
    assert grid[row][priv] == pytest.approx(sum(c["privileged"] for c in system) / len(system))
    assert {"legacy: sse2", "legacy: mmx", "evex: avx512bw"} <= set(fam), "derived forms form families"
    labels = [t.get_text() for t in pic.figure.axes[0].get_yticklabels()]
    assert labels[row] == f"hand-written: tables ({len(system)})"
    assert pic._repr_png_().startswith(b"\x89PNG")


def test_family_table_counts_each_family(monkeypatch):
    results = classify_all("pentium", FORMS, jobs=1)
    html = nb.family_table(results)._repr_html_()
    assert f"{len(results)} forms in {len(nb.families(results))} families" in html
    tables = [c for c in results if nb.family(c) == "hand-written: tables"]
    yes = sum(c["privileged"] for c in tables)
    assert f">{yes}/{len(tables)}<" in html
    assert "sgdt_m (" in html      # the family's forms behind its name
    assert "violate" in html       # sgdt_m violates Theorem 1 under pentium


# --- the browser ----------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def _chromium_or_skip() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        setup = ROOT / "tests" / "setup-browser.sh"
        r = subprocess.run(["sh", str(setup)], capture_output=True, text=True, timeout=1200)
        if r.returncode != 0 or not os.access(CHROMIUM, os.X_OK):
            pytest.skip(f"chromium could not be installed by tests/setup-browser.sh: "
                        f"{(r.stderr or r.stdout).strip().splitlines()[-1:] or ['no output']}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def voila_url(tmp_path):
    voila = shutil.which("voila", path=str(Path(sys.executable).parent)) or shutil.which("voila")
    if voila is None:
        pytest.skip("voila is not installed (pip install -e '.[notebook]')")
    port = _free_port()
    log = open(tmp_path / "voila.log", "w")
    proc = subprocess.Popen(
        [voila, "02_x86_classification.ipynb", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
         "--VoilaExecutor.timeout=600"],
        cwd=ROOT / "notebooks", stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while True:
            try:   # listening is enough: the page itself executes the notebook
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"voila did not start: {(tmp_path / 'voila.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.browser
def test_voila_explorer_in_chromium(voila_url):
    _chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(voila_url, timeout=600_000, wait_until="commit")
            shown = page.locator(".pgvirt-form")
            shown.first.wait_for(timeout=600_000)
            assert shown.first.get_attribute("data-form") == "sgdt_m"
            before = shown.first.inner_text()
            assert re.search(r"privileged\s+no", before)
            picker = page.locator(".widget-dropdown", has_text="instruction").locator("select")
            picker.select_option(label="lgdt_m: lgdt [eax]")
            page.locator('.pgvirt-form[data-form="lgdt_m"]').wait_for(timeout=120_000)
            after = page.locator(".pgvirt-form").first.inner_text()
            assert after != before and re.search(r"privileged\s+yes", after)
        finally:
            browser.close()


# --- notebook 05's helpers (notebook/hardware.py) ---------------------------------------------------

def test_hardware_switch_off_shows_the_witness():
    from pgvirt.notebook import hardware as hw
    html = hw.switch_off("vtx", "hlt_exiting")._repr_html_()
    assert "Theorem 1 <b>fails</b>" in html and ">hlt<" in html and "halted=0x1" in html
    assert "cannot be switched off" in hw.switch_off("svm", "vmrun")._repr_html_()


def test_hardware_picker_updates_on_a_pick():
    from pgvirt.notebook import hardware as hw
    box = hw.picker("svm")
    box.pick.value = "cpuid"
    assert ">cpuid<" in box.html.value and "fails" in box.html.value
    box.pick.value = "rdtsc"       # SVM always offsets the TSC: harmless
    assert "Theorem 1 <b>holds</b>" in box.html.value
