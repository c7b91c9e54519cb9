"""The footprint table (footprints.json.gz, written by tools/footprints.py), read once on first use.

Matching guest code to forms needs only which codes are hand-written and which derived
(``index``), and building the forms a guest holds only their records (``record``); the summary
and one file per record are kept beside the classification cache, keyed by the table's digest,
so a fresh process does not parse the whole table to scan a guest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
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
    return index()["hand"]


@lru_cache(maxsize=None)
def _kept(what: str) -> Path:
    """Where a summary of this very table (by its SHA-256) is kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pgvirt" / "footprints" / f"{what}-{FORMAT}-{_digest()}"


@lru_cache(maxsize=1)
def _digest() -> str:
    try:
        return hashlib.sha256(PATH.read_bytes()).hexdigest()
    except OSError as e:
        raise TableError(f"cannot read {PATH.name}: {e}; run `make footprints`") from None


@lru_cache(maxsize=None)
def record(code: str) -> dict:
    """The record of ``code``: from the parsed table if it is, else from the file kept for it
    (the first process to ask writes one per code)."""
    if load.cache_info().currsize:
        return codes()[code]
    at = _kept("records")
    try:
        return json.loads((at / f"{code}.json").read_text())
    except (OSError, ValueError):
        pass    # not kept yet (or unreadable): from the table below
    full = load()["codes"]
    try:
        at.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=at.parent, prefix=".records-"))
        for c, r in full.items():
            (tmp / f"{c}.json").write_text(json.dumps(r))
        try:
            os.rename(tmp, at)      # the whole directory at once, or not at all
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)   # another process kept it first
    except OSError:
        pass    # a read-only cache directory: the next process parses the table again
    return full[code]


@lru_cache(maxsize=1)
def index() -> dict:
    """``{"hand": hand map, "derive": codes the table's decision derives}``, from the summary
    kept on disk for this very table, else from the table (and kept)."""
    at = _kept("index").with_suffix(".json")
    try:
        doc = json.loads(at.read_text())
        if isinstance(doc, dict) and set(doc) == {"hand", "derive"}:
            return doc
    except (OSError, ValueError):
        pass    # not kept yet (or unreadable): built from the table below
    full = load()
    doc = {"hand": full["hand"], "derive": [c for c, r in full["codes"].items() if r["decision"]["derive"]]}
    try:
        at.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=at.parent, delete=False, suffix=".tmp") as fh:
            json.dump(doc, fh)
        os.replace(fh.name, at)
    except OSError:
        pass    # a read-only cache directory: the next process builds the summary again
    return doc


def features() -> list[str]:
    """Every CPUID feature name the table uses (iced CpuidFeature names, lower case)."""
    return sorted({f for r in codes().values() for f in r.get("cpuid", ())})
