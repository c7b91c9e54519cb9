"""Shared fixtures: the whole classification is derived once per test session and profile."""

import pytest

from pgvirt.verify.popek_goldberg import classify_all


@pytest.fixture(scope="session")
def classified():
    """profile name -> list of Classification, every form, derived by Z3 (2 worker processes)."""
    cache = {}

    def get(profile: str):
        if profile not in cache:
            cache[profile] = classify_all(profile, jobs=2)
        return cache[profile]

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
