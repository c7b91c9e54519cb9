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
