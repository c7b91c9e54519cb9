"""Shared set-up: one classification cache for the run, the whole classification derived once per
run and profile, and how the run is spread over pytest-xdist's workers."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Modules whose tests are independent of one another and heavy enough to be worth spreading over
# the workers one test at a time; every other module runs on one worker, so that its module-scoped
# fixtures (solved counterexamples, booted machines, scanned guests) are built once, not per worker.
SPREAD = {"test_notebooks", "test_verify", "test_golden", "test_isa_extensions", "test_monitor_model"}

_OWN_CACHE = "PGVIRT_TEST_CACHE"


def pytest_configure(config):
    """The run's classification cache: a fresh directory (never the user's ~/.cache/pgvirt), made by
    the controlling process before xdist starts its workers, so that the workers, the CLI
    subprocesses and the notebook kernels all inherit it through XDG_CACHE_HOME.  Tests that need
    a cold or damaged cache still set their own."""
    if hasattr(config, "workerinput"):
        return
    root = tempfile.mkdtemp(prefix="pgvirt-test-cache-")
    config._pgvirt_cache = root
    os.environ[_OWN_CACHE] = root
    os.environ["XDG_CACHE_HOME"] = root


def pytest_unconfigure(config):
    root = getattr(config, "_pgvirt_cache", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)


# The longest modules first (the longest-processing-time rule): a long module handed out last
# would keep one worker busy while the other idles.  Measured with --durations on 2 cores.
LONGEST = ("test_golden", "test_notebooks", "test_paravirt", "test_replay", "test_crosscheck",
           "test_verify", "test_oracles", "test_oracles_vmx", "test_guest", "test_monitor_run")


def _module(item) -> str:
    return item.module.__name__.rpartition(".")[2] if item.module else item.nodeid


def pytest_collection_modifyitems(config, items):
    rank = {m: k for k, m in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(_module(item), len(LONGEST)))     # stable: file order kept
    for item in items:
        if _module(item) not in SPREAD:
            item.add_marker(pytest.mark.xdist_group(_module(item)))


@pytest.fixture(scope="session")
def classified():
    """profile name -> list of Classification (with witnesses) of every hand-written form, in the
    registry's order: derived by Z3 once per run and profile, through the run's classification
    cache, so that the other xdist worker, the CLI and the notebooks read what one solved (a lock
    keeps two workers from solving the same profile at once)."""
    from pgvirt.model import isa
    from pgvirt.verify.cache import ClassificationCache, classifications

    names = [f.name for f in isa.FORMS]
    root = Path(os.environ.get(_OWN_CACHE) or tempfile.mkdtemp(prefix="pgvirt-test-cache-"))
    cache = ClassificationCache(root / "pgvirt")
    got: dict[str, list] = {}

    def get(profile: str):
        if profile not in got:
            with open(root / f"{profile}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                known, _ = classifications(profile, names, cache=cache, jobs=2, witnesses=True)
            got[profile] = [known[n] for n in names]
        return got[profile]

    return get


# --- the monitors of ``pgvirt run`` (tests/test_monitor_run.py, tests/test_monitor_vtx.py) ------
@pytest.fixture(scope="session")
def demo_guest(tmp_path_factory):
    """The demonstration guest of monitor/demo.py, written once per session."""
    from pgvirt.monitor import demo

    return str(demo.write(tmp_path_factory.mktemp("demo") / "demo.elf"))


@pytest.fixture(scope="session")
def run_cli():
    """``pgvirt ARGV`` in this process -> exit code, the run command's verifier part
    (``cli.run.SERVICES``) being ``services``: by default the joins of ``pgvirt.api``."""
    from pgvirt import api as joins
    from pgvirt.cli import run as mcli
    from pgvirt.cli.main import main as pgvirt_main

    default = mcli.Services(sensitive=joins.monitor_sensitive, patch=joins.monitor_patch,
                            explain=joins.explain_divergence)

    def run(argv, services=default) -> int:
        saved, mcli.SERVICES = mcli.SERVICES, services
        try:
            return pgvirt_main(argv)
        finally:
            mcli.SERVICES = saved

    return run


@pytest.fixture(scope="session")
def exceptions_guest(tmp_path_factory):
    """A tiny guest raising INT3, INT 3, INTO, INT1, UD2 and BOUND's #BR into handlers of its
    own (``helpers.exceptions_body``)."""
    from helpers import exceptions_body, tiny_guest

    return tiny_guest(tmp_path_factory.mktemp("exc") / "exc.elf", exceptions_body)
