"""The command line under a user who stops it, points it at odd files, or asks too much: one line,
the right exit code, nothing half-written, no hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _interrupt(args: list[str], wait: float, cwd: Path) -> tuple[int, str, float]:
    """Run ``pgvirt ARGS`` in its own process group, press Ctrl-C there after ``wait`` seconds
    (the whole group gets SIGINT, as from a terminal); (exit code, stderr, seconds to stop)."""
    p = subprocess.Popen([sys.executable, "-m", "pgvirt", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=cwd)
    time.sleep(wait)
    assert p.poll() is None, "the command finished before it could be interrupted"
    t0 = time.perf_counter()
    os.killpg(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, err, time.perf_counter() - t0


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_on_export_smt_stops_at_once(tmp_path, jobs):
    out = tmp_path / "smt"
    rc, err, took = _interrupt(["export-smt", str(out), "--all-profiles", "--jobs", jobs], 3.0, tmp_path)
    assert rc == 130 and err == "pgvirt: interrupted\n" and took < 2.0, (rc, err, took)
    files = list(out.rglob("*.smt2"))
    assert all(f.read_text().endswith("(exit)\n") for f in files)        # no half-written file
    assert not list(out.rglob(".pgvirt-*"))                               # no temporary left


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_on_verify_leaves_no_report(tmp_path, jobs):
    junit = tmp_path / "j.xml"
    rc, err, took = _interrupt(["verify", "--all-profiles", "--jobs", jobs, "--junit", str(junit)],
                               2.0, tmp_path)
    assert rc == 130 and err == "pgvirt: interrupted\n" and took < 2.0, (rc, err, took)
    assert not junit.exists() and not list(tmp_path.glob(".pgvirt-*"))


def test_ctrl_c_while_the_command_line_loads(tmp_path):
    """Interrupted among its first imports (z3, the model): one line and 130, no traceback of
    the import it cut short (a regression: a loaded machine made the tests above hit it)."""
    rc, err, _ = _interrupt(["verify", "--all-profiles"], 0.05, tmp_path)
    assert rc == 130 and err == "pgvirt: interrupted\n", (rc, err)


def _pgvirt(*args, env=None) -> subprocess.CompletedProcess:
    """One command; a command that blocks (on a FIFO, say) fails the test by the timeout."""
    return subprocess.run([sys.executable, "-m", "pgvirt", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env)


def _one_line(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("pgvirt: error: ") and needle in p.stderr, p.stderr


def test_fifos_and_devices_are_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _one_line(_pgvirt("scan", fifo), "is a FIFO")
    _one_line(_pgvirt("scan", "/dev/zero"), "is a character device")
    _one_line(_pgvirt("scan", tmp_path), "is a directory")
    _one_line(_pgvirt("check-patch", "/dev/zero", "--manifest", fifo), "is a FIFO")
    _one_line(_pgvirt("replay", "--state", fifo), "is a FIFO")
    _one_line(_pgvirt("scan", "/boot/invaders.exec", "--symbols", fifo), "is a FIFO")


def test_unwritable_outputs_fail_before_any_work(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    _one_line(_pgvirt("verify", "--junit", tmp_path / "no" / "j.xml", env=env), "no such directory")
    _one_line(_pgvirt("patch", "/boot/invaders.exec", "-o", tmp_path, env=env), "is a directory")
    # refused before solving: nothing was classified, so no classification was stored
    assert not [p for p in cache.rglob("*.json")], sorted(cache.rglob("*"))


def test_crosscheck_sample_count_is_bounded():
    _one_line(_pgvirt("crosscheck", "--samples", str(10**12)), "at most 1,000,000 states per form")


@pytest.mark.parametrize("args", [
    ["crosscheck", "--samples", "50000", "--jobs", "2"],
    ["replay", "--jobs", "2"],
], ids=["crosscheck", "replay"])
def test_ctrl_c_on_the_emulator_commands(tmp_path, args, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))    # replay must solve, not read
    rc, err, took = _interrupt(args, 3.0, tmp_path)
    assert rc == 130 and err.endswith("pgvirt: interrupted\n") and took < 2.0, (rc, err, took)
    assert err.count("\n") <= 2      # at most the sweep's cost estimate before it
