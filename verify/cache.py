"""Solver-derived classifications cached on disk, one entry per form definition.

A cache of answers the solver gave, never a table of expected ones, and only decided answers are
stored.  An entry's key (``form_key``) is a digest of the form's own definition, the profile,
the code every classification shares (the model's state, outcome, form and check vocabulary,
the queries, the solver factory) and the Z3 version; so an edit to one definition re-derives that
form alone.  The definition of a hand-written form is its metadata and the source of its
semantics together with every model function and module it reaches; that of a derived form is
its *shape* (``derived.forms.shape``: forms of one shape have alpha-equivalent queries and share
one entry) and the derived layer's sources.

Each entry carries the digests it was derived under (definition, profile, solver) and a digest
over itself: an entry that does not match is derived again, with a warning.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import linecache
import os
import tempfile
import types
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import z3

from pgvirt.model import isa, profiles, state as st
from pgvirt.model.derived import forms as dforms, registry
from pgvirt.model.form import Form
from pgvirt.model.profiles import Profile

from .popek_goldberg import Answer, Classification, classify_all
from .solver import DEFAULT_TIMEOUT_MS


class CacheWarning(UserWarning):
    """A cache entry did not match its digests and was derived again."""


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


CACHE_FORMAT = 2
_MODEL_DIR = Path(isa.__file__).resolve().parent.parent
_HERE = Path(__file__).resolve().parent
# What every classification is derived through (an edit to any of them re-derives all).
SHARED = ([_MODEL_DIR / n for n in ("state.py", "outcome.py", "form.py", "encoding.py", "checks.py",
                                    "features.py", "vmx.py", "svm.py")]
          + sorted((_MODEL_DIR / "profiles").glob("*.py"))
          + [_HERE / "popek_goldberg.py", _HERE / "hardware.py", _HERE / "solver.py"])
DERIVED = [_MODEL_DIR / "derived" / n for n in ("forms.py", "operands.py", "faults.py", "table.py",
                                                "registry.py", "uf.py")]
_KEY: str | None = None


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _sources(paths) -> str:
    return _digest(*[f"{p.name}\0".encode() + p.read_bytes() for p in paths])


def model_key() -> str:
    """Digest of what every classification shares (SHARED sources, the Z3 version, this cache's
    format): the cache directory.  Form definitions are keyed per entry (``form_key``)."""
    global _KEY
    if _KEY is None:
        _KEY = _digest(f"pgvirt-classification/{CACHE_FORMAT}", z3.get_version_string(),
                       _sources(SHARED))[:24]
    return _KEY


@lru_cache(maxsize=64)
def profile_digest(p: Profile) -> str:
    doc = {f.name: (sorted(v) if isinstance(v, (set, frozenset)) else v)
           for f in dataclasses.fields(p) for v in [getattr(p, f.name)]}
    return _digest(json.dumps(doc, sort_keys=True, default=str))


def _reach(fn, out: dict, seen: set) -> None:
    """Sources of ``fn`` and of every pgvirt.model function and module it names, transitively
    (the shared modules are in SHARED already)."""
    code = getattr(fn, "__code__", None)
    if code is None or id(fn) in seen:
        return
    seen.add(id(fn))
    out[f"{fn.__module__}.{fn.__qualname__}"] = _source_of(code)
    names, stack = set(), [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    for i, cell in enumerate(fn.__closure__ or ()):
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        _value(f"{fn.__qualname__}.<cell {i}>", v, out, seen)
    for n in sorted(names):
        if n in fn.__globals__:
            _value(n, fn.__globals__[n], out, seen)


def _source_of(code: types.CodeType) -> str:
    """The lines a function's code spans (decorators included), read from its file; the
    bytecode where there is no file."""
    lines = linecache.getlines(code.co_filename)
    if not lines:
        return code.co_code.hex()
    last, stack = code.co_firstlineno, [code]
    while stack:
        c = stack.pop()
        last = max([last] + [ln for _, _, ln in c.co_lines() if ln])
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return "".join(lines[code.co_firstlineno - 1:last])


def _value(name: str, v, out: dict, seen: set) -> None:
    mod = getattr(v, "__module__", None) or ""
    if isinstance(v, types.ModuleType):
        path = getattr(v, "__file__", None)
        if v.__name__.startswith("pgvirt.model") and path and Path(path).resolve() not in set(SHARED):
            if id(v) not in seen:
                seen.add(id(v))
                out[v.__name__] = Path(path).read_text()
    elif isinstance(v, types.FunctionType) and mod.startswith("pgvirt.model"):
        _reach(v, out, seen)
    elif isinstance(v, (int, str, bytes, tuple, frozenset, float, bool)) and not callable(v):
        out[f"const {name}"] = repr(v)


@lru_cache(maxsize=None)
def _hand_digest(name: str) -> str:
    memo = _hand_memo()
    d = memo.get(name)
    if d is None:
        f = isa.get(name)
        out: dict[str, str] = {}
        _reach(f.semantics, out, set())
        d = memo[name] = _digest(f.name, f.enc_text, f.bytes.hex(), f.asm, f.cite, f.theme,
                                 json.dumps(out, sort_keys=True))
        _HAND_NEW.add(name)
    return d


_HAND_NEW: set[str] = set()


def _model_stamp() -> str:
    """Size and modification time of every file under model/: the sources a hand-written
    form's digest reads (``_reach`` reads only pgvirt.model functions and modules)."""
    parts = []
    for root, dirs, files in os.walk(_MODEL_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for n in sorted(files):
            st_ = os.stat(os.path.join(root, n))
            parts.append(f"{os.path.relpath(os.path.join(root, n), _MODEL_DIR)}:{st_.st_size}:{st_.st_mtime_ns}")
    return _digest(*parts)


@lru_cache(maxsize=1)
def _hand_memo_path() -> Path:
    return default_cache_root() / "digests" / f"hand-{CACHE_FORMAT}-{_model_stamp()}.json"


@lru_cache(maxsize=1)
def _hand_memo() -> dict[str, str]:
    """Hand-written forms' definition digests computed by earlier processes on the very same
    model files (by their sizes and times; a digest reads the sources, which costs more than
    the scan that asks for it), written back at exit with the ones computed now."""
    try:
        doc = json.loads(_hand_memo_path().read_text())
        memo = {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        memo = {}
    atexit.register(_write_hand_memo)
    return memo


def _write_hand_memo() -> None:
    if not _HAND_NEW:
        return
    path = _hand_memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        doc = dict(old if isinstance(old, dict) else {}, **_hand_memo())
        atomic_write(path, json.dumps(doc, sort_keys=True).encode())
    except OSError:
        pass    # a read-only cache: the next process reads the sources again


_DERIVED_SOURCES: str | None = None


def definition_digest(form: Form, profile: Profile) -> str:
    """What ``form``'s classification under ``profile`` is derived from, besides SHARED."""
    global _DERIVED_SOURCES
    if registry.is_derived(form.name):
        if _DERIVED_SOURCES is None:
            _DERIVED_SOURCES = _sources(DERIVED)
        return "shape:" + _digest(dforms.shape(form.code, profile.features), _DERIVED_SOURCES)
    return "hand:" + _hand_digest(form.name)


def form_key(form: Form | str, profile: Profile) -> str:
    form = registry.get(form) if isinstance(form, str) else form
    return _keys(form, profile)[0]


_KEYS: dict[tuple[str, str], tuple[str, str]] = {}


def _keys(form: Form, profile: Profile) -> tuple[str, str]:
    """(entry key, definition digest) of ``form`` under ``profile``, computed once a process
    (definitions are source files and the table: they do not change under a running process)."""
    pd = profile_digest(profile)
    hit = _KEYS.get((form.name, pd))
    if hit is None or registry.get(form.name) is not form:
        d = definition_digest(form, profile)
        hit = (_digest(model_key(), pd, d), d)
        if registry.get(form.name) is form:
            _KEYS[(form.name, pd)] = hit
    return hit


_CHECKED: dict[tuple[str, str], tuple[dict, bool]] = {}   # (entry key, its digest) -> (entry, match)


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


def _entry_digest(entry: dict) -> str:
    return _digest(json.dumps({k: v for k, v in entry.items() if k != "digest"}, sort_keys=True))


# The last parse of each cache file: the bytes it was parsed from (reading them again and
# comparing costs a small fraction of parsing them), its entries, and the classifications built
# from them so far (shared read-only by every scan of the unchanged file).
_PARSED: dict[Path, tuple[bytes, dict, dict]] = {}


class ClassificationCache:
    """Solver-derived classifications on disk, per profile, under ``<root>/<model_key()>/``:
    ``<profile>.json`` maps each entry key (``form_key``) to the answers (value, verdict, note),
    the assumptions and the entry's digests; ``<profile>.witnesses.json`` the witness states,
    read only when asked for (scanning needs the values alone).

    Only classifications the solver decided are stored (an unknown may be decided with more
    time).  A file that cannot be read as this format counts as absent and is rewritten; an
    entry whose digests do not match is derived again, with a ``CacheWarning``.
    ``enabled=False`` reads and writes nothing.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_root()
        self.enabled = enabled
        self.note = ""          # why the last store did not happen, if it did not
        self.mismatched: list[str] = []   # forms whose entries failed their digest

    def path(self, profile: str, what: str = "") -> Path:
        return self.root / model_key() / f"{profile}{what}.json"

    def _read(self, profile: str, what: str = "") -> dict:
        """The file's entries (callers must not change them: they may be the parsed copy that
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
                and isinstance(doc.get("entries"), dict)):
            return {}
        _PARSED[path] = (raw, doc["entries"], {})
        return doc["entries"]

    def _checked(self, prof: Profile, name: str, raw: dict, wits: dict | None) -> Classification | None:
        form = registry.get(name)
        key, ddig = _keys(form, prof)
        entry = raw.get(key)
        if entry is None:
            return None
        want = {"def": ddig, "profile": profile_digest(prof),
                "solver": z3.get_version_string()}
        # One entry serves every derived form of its shape: check it once.  The memo holds the
        # very entry it checked (a file edited since is parsed into new entries, which are
        # checked again even where the edit kept the claimed digest).
        memo = (key, entry.get("digest") if isinstance(entry, dict) else None)
        seen = _CHECKED.get(memo)
        if seen is not None and seen[0] is entry:
            ok = seen[1]
        else:
            ok = isinstance(entry, dict) and entry.get("digest") == _entry_digest(entry) \
                and all(entry.get(k) == v for k, v in want.items())
            _CHECKED[memo] = (entry, ok)
        if not ok:
            self.mismatched.append(name)
            warnings.warn(f"classification cache entry of {name} ({prof.name}) does not match its "
                          "digests: derived again", CacheWarning, stacklevel=3)
            return None
        w = None
        if wits is not None:
            w = wits.get(key)
            if w is None:
                return None        # derived again, with its witnesses
            w = _int_keys(w)
        return _entry(prof, form, entry, w or {})

    def load(self, profile: Profile | str, witnesses: bool = False,
             names: Iterable[str] | None = None) -> dict[str, Classification]:
        """The cached classifications of ``profile`` (of ``names``, default every form); with
        ``witnesses=False`` their answers carry no witness states."""
        prof = profiles.get(profile) if isinstance(profile, str) else profile
        if not self.enabled:
            return {}
        raw = self._read(prof.name)
        if not raw:
            return {}
        wits = self._read(prof.name, ".witnesses") if witnesses else None
        out = {}
        for name in (registry.names() if names is None else names):
            c = self._checked(prof, name, raw, wits)
            if c is not None:
                out[name] = c
        return out

    def lazy(self, profile: Profile | str) -> "Lazy":
        """The cached classifications of ``profile`` (no witnesses), each built when asked for:
        a scan needs only the forms its guest contains."""
        prof = profiles.get(profile) if isinstance(profile, str) else profile
        if not self.enabled:
            return Lazy(self, prof, {}, {})
        raw = self._read(prof.name)
        hit = _PARSED.get(self.path(prof.name))
        return Lazy(self, prof, raw, hit[2] if hit is not None and hit[1] is raw else {})

    def store(self, profile: Profile | str, results: Iterable[Classification]) -> None:
        prof = profiles.get(profile) if isinstance(profile, str) else profile
        done = [c for c in results if _decided(c)]
        if not self.enabled or not done:
            return
        answers, wits = {}, {}
        pdig, solver = profile_digest(prof), z3.get_version_string()
        for c in done:
            key, ddig = _keys(c.form, prof)
            entry = {"def": ddig, "profile": pdig, "solver": solver, "form": _owner(c.form),
                     "answers": {k: dict(a.as_json(), witness=None) for k, a in c.answers.items()},
                     "assumptions": list(c.assumptions)}
            entry["digest"] = _entry_digest(entry)
            answers[key] = entry
            wits[key] = {k: a.witness for k, a in c.answers.items() if a.witness is not None}
        try:
            self.path(prof.name).parent.mkdir(parents=True, exist_ok=True)
            # Witnesses first: an answer file never names an entry whose witnesses are missing.
            old = self._read(prof.name)
            keep = {k for k, e in old.items() if _current(e, k, prof)}
            for what, new in ((".witnesses", wits), ("", answers)):
                # merge with what another process added; drop entries of edited definitions
                entries = {k: v for k, v in self._read(prof.name, what).items() if k in keep}
                entries.update(new)
                doc = {"format": CACHE_FORMAT, "key": model_key(), "z3": solver,
                       "profile": prof.name, "entries": entries}
                atomic_write(self.path(prof.name, what), json.dumps(doc, separators=(",", ":")).encode())
        except OSError as e:
            self.note = f"classification cache not written ({self.path(prof.name)}: {e.strerror or e})"


def _owner(form: Form) -> str:
    """Whose entry it is: a hand-written form's name, or the derived layer's sources (one entry
    serves every form of a shape)."""
    return _owner_derived() if registry.is_derived(form.name) else form.name


def _current(entry: Any, key: str, prof: Profile) -> bool:
    """Whether an entry can still be asked for: the current key of its hand-written form, or a
    derived entry made by the current derived layer."""
    if not isinstance(entry, dict):
        return False
    who = entry.get("form", "")
    if who.startswith("derived:"):
        return who == _owner_derived()
    return who in _hand_names() and form_key(who, prof) == key


def _owner_derived() -> str:
    global _DERIVED_SOURCES
    if _DERIVED_SOURCES is None:
        _DERIVED_SOURCES = _sources(DERIVED)
    return "derived:" + _DERIVED_SOURCES


@lru_cache(maxsize=1)
def _hand_names() -> frozenset[str]:
    return frozenset(f.name for f in isa.FORMS)


def _entry(prof: Profile, form: Form, entry: Any, wits: dict) -> Classification | None:
    """The classification a cache entry holds, or None if it is damaged, incomplete or undecided
    (it is then derived again)."""
    try:
        answers = {cls: Answer(a["class"], a["value"], a["verdict"], wits.get(cls),
                               float(a["seconds"]), a["note"])
                   for cls, a in entry["answers"].items()}
        c = Classification(form, prof, answers, tuple(entry["assumptions"]))
        c["privileged"], c["sensitive"], c["user_sensitive"]  # all present
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return c if _decided(c) else None


class Lazy:
    """Cached classifications of one profile by form name, built on first use; ``add`` puts
    freshly derived ones beside them."""

    def __init__(self, cache: ClassificationCache, prof: Profile, raw: dict, built: dict):
        self._cache, self._prof, self._raw, self._built, self._new = cache, prof, raw, built, {}

    def get(self, name: str) -> Classification | None:
        c = self._new.get(name) or self._built.get(name, _MISSING)
        if c is _MISSING or (c is not None and c.profile is not self._prof):
            c = self._built[name] = self._cache._checked(self._prof, name, self._raw, None) \
                if self._raw else None
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
    known = cache.load(prof, witnesses=witnesses, names=want)
    missing = [n for n in want if n not in known]
    if missing:
        new = classify_all(prof, missing, jobs=jobs, timeout_ms=timeout_ms, progress=progress)
        cache.store(prof, new)
        known.update({c.form.name: c for c in new})
    return {n: known[n] for n in want}, missing
