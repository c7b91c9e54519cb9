"""Solver-derived classifications cached on disk, keyed by a hash of everything they derive from.

A cache of answers the solver gave, never a table of expected ones: the key changes with any edit
to the model or the queries, or another Z3, and only decided answers are stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import z3

from pgvirt.model import isa, profiles, state as st
from pgvirt.model.derived import registry
from pgvirt.model.profiles import Profile

from .popek_goldberg import Answer, Classification, classify_all
from .solver import DEFAULT_TIMEOUT_MS


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pgvirt-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise



_KEY: str | None = None
CACHE_FORMAT = 1


def model_key() -> str:
    """Hash of everything a classification is derived from: the model package's sources, the
    queries (popek_goldberg.py, solver.py) and the Z3 version.  Any edit gives a new cache."""
    global _KEY
    if _KEY is None:
        h = hashlib.sha256(f"pgvirt-classification/{CACHE_FORMAT}/z3 {z3.get_version_string()}\n".encode())
        model_dir = Path(isa.__file__).resolve().parent.parent
        here = Path(__file__).resolve().parent
        files = sorted(model_dir.rglob("*.py")) + [here / "popek_goldberg.py", here / "solver.py"]
        for p in files:
            rel = p.relative_to(model_dir) if p.is_relative_to(model_dir) else Path("verify", p.name)
            h.update(f"{rel.as_posix()}\0".encode())
            h.update(p.read_bytes())
            h.update(b"\0")
        _KEY = h.hexdigest()[:24]
    return _KEY


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pgvirt"


def _int_keys(obj: Any, key: str = "") -> Any:
    """JSON turned the integer addresses of witness ``mem``/``io`` maps into strings; undo it."""
    if isinstance(obj, dict):
        if key in st.ARRAYS and all(isinstance(k, str) and k.isdigit() for k in obj):
            return {int(k): v for k, v in obj.items()}
        return {k: _int_keys(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_int_keys(v) for v in obj]
    return obj


def _decided(c: Classification) -> bool:
    return all(a.value is not None for a in c.answers.values())


# The last parse of each cache file: the bytes it was parsed from (reading them again and
# comparing costs a small fraction of parsing them), its forms, and the classifications built
# from them so far (shared read-only by every scan of the unchanged file).
_PARSED: dict[Path, tuple[bytes, dict, dict]] = {}


class ClassificationCache:
    """Solver-derived classifications on disk, per profile, under ``<root>/<model_key()>/``:
    ``<profile>.json`` holds every answer (value, verdict, note) and the assumptions,
    ``<profile>.witnesses.json`` the witness states, read only when asked for (scanning needs
    the values alone, and reading the states would cost more than the scan's own work).

    Only classifications the solver decided are stored (an unknown may be decided with more
    time).  A file that cannot be read as this format counts as absent and is rewritten.
    ``enabled=False`` reads and writes nothing.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_root()
        self.enabled = enabled
        self.note = ""          # why the last store did not happen, if it did not

    def path(self, profile: str, what: str = "") -> Path:
        return self.root / model_key() / f"{profile}{what}.json"

    def _read(self, profile: str, what: str = "") -> dict:
        """The file's ``forms`` (callers must not change it: it may be the parsed copy that
        later reads of the unchanged file share)."""
        path = self.path(profile, what)
        try:
            raw = path.read_bytes()
            hit = _PARSED.get(path)
            if hit is not None and hit[0] == raw:
                return hit[1]
            doc = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        if not (isinstance(doc, dict) and doc.get("format") == CACHE_FORMAT
                and doc.get("key") == model_key() and doc.get("profile") == profile
                and isinstance(doc.get("forms"), dict)):
            return {}
        _PARSED[path] = (raw, doc["forms"], {})
        return doc["forms"]

    def load(self, profile: Profile | str, witnesses: bool = False) -> dict[str, Classification]:
        """The cached classifications of ``profile``; with ``witnesses=False`` their answers
        carry no witness states."""
        prof = profiles.get(profile) if isinstance(profile, str) else profile
        if not self.enabled:
            return {}
        wits = self._read(prof.name, ".witnesses") if witnesses else {}
        out = {}
        for name, entry in self._read(prof.name).items():
            if witnesses and name not in wits:
                continue  # derived again, with its witnesses
            c = _entry(prof, name, entry, _int_keys(wits[name]) if witnesses else {})
            if c is not None:
                out[name] = c
        return out

    def lazy(self, profile: Profile | str) -> "Lazy":
        """The cached classifications of ``profile`` (no witnesses), each built when asked for:
        a scan needs only the forms its guest contains."""
        prof = profiles.get(profile) if isinstance(profile, str) else profile
        if not self.enabled:
            return Lazy(prof, {}, {})
        raw = self._read(prof.name)
        hit = _PARSED.get(self.path(prof.name))
        return Lazy(prof, raw, hit[2] if hit is not None and hit[1] is raw else {})

    def store(self, profile: Profile | str, results: Iterable[Classification]) -> None:
        name = profile if isinstance(profile, str) else profile.name
        done = [c for c in results if _decided(c)]
        if not self.enabled or not done:
            return
        answers = {c.form.name: {"answers": {k: dict(a.as_json(), witness=None) for k, a in c.answers.items()},
                                 "assumptions": list(c.assumptions)} for c in done}
        wits = {c.form.name: {k: a.witness for k, a in c.answers.items() if a.witness is not None}
                for c in done}
        try:
            self.path(name).parent.mkdir(parents=True, exist_ok=True)
            # Witnesses first: an answer file never names a form whose witnesses are missing.
            for what, new in ((".witnesses", wits), ("", answers)):
                forms = dict(self._read(name, what))    # merge with what another process added
                forms.update(new)
                doc = {"format": CACHE_FORMAT, "key": model_key(), "z3": z3.get_version_string(),
                       "profile": name, "forms": forms}
                atomic_write(self.path(name, what), json.dumps(doc, sort_keys=True).encode())
        except OSError as e:
            self.note = f"classification cache not written ({self.path(name)}: {e.strerror or e})"


def _entry(prof: Profile, name: str, entry: Any, wits: dict) -> Classification | None:
    """The classification a cache entry holds, or None if it is damaged, incomplete or undecided
    (it is then derived again)."""
    try:
        answers = {cls: Answer(a["class"], a["value"], a["verdict"], wits.get(cls),
                               float(a["seconds"]), a["note"])
                   for cls, a in entry["answers"].items()}
        c = Classification(registry.get(name), prof, answers, tuple(entry["assumptions"]))
        c["privileged"], c["sensitive"], c["user_sensitive"]  # all present
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return c if _decided(c) else None


class Lazy:
    """Cached classifications of one profile by form name, built on first use; ``add`` puts
    freshly derived ones beside them."""

    def __init__(self, prof: Profile, raw: dict, built: dict):
        self._prof, self._raw, self._built, self._new = prof, raw, built, {}

    def get(self, name: str) -> Classification | None:
        c = self._new.get(name) or self._built.get(name, _MISSING)
        if c is _MISSING or (c is not None and c.profile is not self._prof):
            entry = self._raw.get(name)
            c = self._built[name] = None if entry is None else _entry(self._prof, name, entry, {})
        return c

    def __getitem__(self, name: str) -> Classification:
        c = self.get(name)
        if c is None:
            raise KeyError(name)
        return c

    def add(self, results: Iterable[Classification]) -> None:
        self._new.update({c.form.name: c for c in results})


_MISSING = object()


def classifications(profile: Profile | str, forms: Iterable[str], cache: ClassificationCache | None = None,
                    jobs: int | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                    progress=None, witnesses: bool = False) -> tuple[dict[str, Classification], list[str]]:
    """The classification of each of ``forms``: from the cache (with their witness states when
    ``witnesses``), else derived by ``classify_all`` (and stored).  Returns (name ->
    Classification, names derived now)."""
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    cache = cache if cache is not None else ClassificationCache()
    want = sorted(set(forms))
    known = cache.load(prof, witnesses=witnesses)
    missing = [n for n in want if n not in known]
    if missing:
        new = classify_all(prof, missing, jobs=jobs, timeout_ms=timeout_ms, progress=progress)
        cache.store(prof, new)
        known.update({c.form.name: c for c in new})
    return {n: known[n] for n in want}, missing
