"""The footprint table (footprints.json.gz, written by tools/footprints.py), read once on first use."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

PATH = Path(__file__).with_name("footprints.json.gz")
FORMAT = 1


class TableError(RuntimeError):
    """The table is missing or of another format: run `make footprints`."""


@lru_cache(maxsize=1)
def load() -> dict:
    try:
        doc = json.loads(gzip.decompress(PATH.read_bytes()))
    except (OSError, ValueError) as e:
        raise TableError(f"cannot read {PATH.name}: {e}; run `make footprints`") from None
    if doc.get("format") != FORMAT:
        raise TableError(f"{PATH.name} has format {doc.get('format')}, not {FORMAT}; run `make footprints`")
    return doc


def codes() -> dict[str, dict]:
    """Every iced code valid in 32-bit mode -> its record."""
    return load()["codes"]


def hand_codes() -> dict[str, list[str]]:
    """Iced code -> the hand-written forms whose canonical bytes decode to it."""
    return load()["hand"]


def features() -> list[str]:
    """Every CPUID feature name the table uses (iced CpuidFeature names, lower case)."""
    return sorted({f for r in codes().values() for f in r.get("cpuid", ())})
