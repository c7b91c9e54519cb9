"""Golden outputs: the CLI's text, JSON, SARIF and JUnit on a fixed input set, compared with the
files in tests/golden/ after timings and temporary paths are normalized away.

The outputs are part of pgvirt's interface (CI jobs parse them).  A change that alters them must
update the golden files on purpose: ``PGVIRT_UPDATE_GOLDEN=1 pytest tests/test_golden.py``, and
the diff shows what changed.  Runs use one worker: witnesses are reproducible for one process
history, not across pools.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import INVADERS, TBOOT, TBOOT_SYMS, need, sarif_problems

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parent.parent
UPDATE = os.environ.get("PGVIRT_UPDATE_GOLDEN") == "1"
_TIME_KEYS = r'"(seconds|time|wall|total|replay|solve|rate|checks_per_second)"'


def normalize(text: str, tmp: str) -> str:
    """``text`` without what varies from run to run: timings, the temporary directory and
    where the checkout lies."""
    text = text.replace(tmp, "<TMP>").replace(ROOT.as_uri(), "file://<ROOT>")
    text = re.sub(_TIME_KEYS + r'(\s*:\s*)-?[0-9.eE+-]+', r'"\1"\2<T>', text)
    text = re.sub(r'time="[0-9.]+"', 'time="<T>"', text)
    text = re.sub(r'[0-9.]+ s\b', '<T> s', text)
    text = re.sub(r'[0-9.]+ checks/s', '<R> checks/s', text)
    return text


def _cases(tmp: Path) -> list[tuple[str, list, list]]:
    """(name, arguments, [(file written, golden name)]): the fixed input set."""
    inv, patched = str(INVADERS), tmp / "inv.patched"
    manifest = tmp / "inv.patched.manifest.json"
    j1 = ["--jobs", "1"]
    return [
        ("verify_json", ["verify", "--all-profiles", "--forms", "hand", "--format", "json", *j1, "--junit", tmp / "v.xml",
                         "--sarif", tmp / "v.sarif"],
         [(tmp / "v.xml", "verify.junit.xml"), (tmp / "v.sarif", "verify.sarif")]),
        ("verify_text", ["verify", "--profile", "pentium", "--forms", "hand", *j1], []),
        ("classify_json", ["classify", "--profile", "umip", "--format", "json", *j1,
                           "sgdt_m", "popfd", "mov_r_cs", "add_rm32_r32"], []),
        ("scan_invaders_json", ["scan", inv, "--format", "json", *j1], []),
        ("scan_invaders_sarif", ["scan", inv, "--format", "sarif", *j1], []),
        ("scan_invaders_text", ["scan", inv, *j1], []),
        ("scan_tboot_json", ["scan", str(TBOOT), "--symbols", str(TBOOT_SYMS), "--format", "json", *j1], []),
        ("patch_invaders", ["patch", inv, "-o", patched, "--format", "json", *j1], []),
        ("check_patch_json", ["check-patch", patched, "--manifest", manifest, "--format", "json",
                              "--junit", tmp / "c.xml", "--sarif", tmp / "c.sarif", *j1],
         [(tmp / "c.xml", "check.junit.xml"), (tmp / "c.sarif", "check.sarif")]),
        ("check_patch_text", ["check-patch", patched, "--manifest", manifest, *j1], []),
        ("replay_json", ["replay", "--profile", "pentium", "--format", "json", *j1,
                         "sgdt_m", "popfd", "int_imm"], []),
        ("crosscheck_json", ["crosscheck", "--samples", "20", "--seed", "7", "--format", "json", *j1,
                             "popfd", "sgdt_m", "mov_ds_m"], []),
        ("export_smt", ["export-smt", tmp / "smt", "--profile", "pentium", "sgdt_m", "popfd", *j1], []),
        ("errors_scan_passwd", ["scan", "/etc/passwd"], []),
        ("errors_classify_badprof", ["classify", "--profile", "nosuch"], []),
    ]


def _outputs(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"), COLUMNS="100")
    env.pop("FORCE_COLOR", None)
    out: dict[str, str] = {}
    for name, args, files in _cases(tmp):
        p = subprocess.run([sys.executable, "-m", "pgvirt", *map(str, args)], capture_output=True,
                           text=True, env=env, timeout=600)
        out[f"{name}.out"] = p.stdout
        out[f"{name}.err"] = p.stderr
        out[f"{name}.rc"] = str(p.returncode)
        for path, golden in files:
            out[golden] = Path(path).read_text()
    # Every SARIF log the set writes is valid, before its paths are normalized away.
    for name in ("verify.sarif", "check.sarif", "scan_invaders_sarif.out"):
        problems = sarif_problems(json.loads(out[name]))
        assert not problems, f"{name}: {problems[:5]}"
    smt = tmp / "smt"
    out["export_smt.files"] = "\n".join(sorted(p.relative_to(smt).as_posix() for p in smt.rglob("*.smt2")))
    return {k: normalize(v, str(tmp)) for k, v in out.items()}


@pytest.fixture
def fixed_length_tmp():
    """A temporary directory whose path always has the same length: rich wraps text around the
    real path before ``normalize`` replaces it, so pytest's growing ``pytest-N`` counter changed
    the wrapping of check-patch's title (``tmp_path`` made the test fail after pytest-9)."""
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="pgvirt-golden-", dir="/tmp"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.guests
def test_outputs_equal_the_golden_files(fixed_length_tmp):
    need(INVADERS, TBOOT, TBOOT_SYMS)
    got = _outputs(fixed_length_tmp)
    if UPDATE:
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir()
        for name, text in got.items():
            (GOLDEN / name).write_text(text)
        pytest.skip("golden files rewritten")
    want = {p.name: p.read_text() for p in GOLDEN.iterdir()}
    assert sorted(got) == sorted(want)
    differ = [n for n in sorted(got) if got[n] != want[n]]
    assert not differ, f"outputs differ from tests/golden/: {differ}"


def test_normalize_keeps_what_matters():
    """Timings and the temporary path go; counts, addresses and verdicts stay."""
    t = '{"seconds": 0.0123, "sites": 3, "uri": "file:///tmp/x1/a"} [0.42 s] 17 checks in 1.5 s (99 checks/s'
    n = normalize(t, "/tmp/x1")
    assert n == '{"seconds": <T>, "sites": 3, "uri": "file://<TMP>/a"} [<T> s] 17 checks in <T> s (<R> checks/s'
    assert normalize(ROOT.as_uri() + "/model", "/tmp/x1") == "file://<ROOT>/model"
