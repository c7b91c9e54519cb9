"""Matching decoded guest instructions to the model's forms, and the scan: the sites whose form a
classifier calls a violation; instructions no form describes are ``unmodelled``, never harmless.

The decoder (iced-x86) names each instruction's Code; a Code maps to its derived form
(model/derived/registry.py) or to the hand-written forms whose canonical bytes decode to it (the
table's hand map), among which the forms' encodings choose (ModRM.mod, the register in ModRM.reg,
REP).  A Code with neither is an unsupported one: its instances are unmodelled.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np

from pgvirt.model.derived import registry, table
from pgvirt.model.encoding import LEGACY_PREFIXES, instance_length
from pgvirt.model.form import REGISTRY, Form

from . import decode as D
from .decode import INVALID, _sweep
from .image import Guest

__all__ = ["FormConflict", "match_form", "form_name", "scan", "ScanResult", "Site", "Unmodelled"]

# --- matching instances to forms -----------------------------------------------------------------

_PASS_T = np.zeros(256, bool)
_PASS_T[list(LEGACY_PREFIXES)] = True
_SIB_T = np.zeros(256, bool)
_SIB_T[[m for m in range(256) if m & 0xC7 in (0x04, 0x44, 0x84)]] = True   # mod != 3, rm = 4
_MASK = np.array([(1 << 8 * k) - 1 for k in range(8)], np.uint64)
_MISS = object()
HAND, DERIVED, NONE = 2, 1, 0


def _key(op: bytes) -> bytes:
    # Two-byte key for the 0F map, one byte otherwise.
    return op[:2] if op[:1] == b"\x0f" else op[:1]


class _Matcher:
    """The Code-to-form map as arrays over iced Code numbers, and the hand-written forms' opcode
    spans, to group instances of hand-coded instructions by shape.

    A hand form's encoding looks only at the prefixes, the opcode, ModRM and SIB; displacement
    and immediate values merely have to be present.  So those bytes plus the total length (and
    the Code) decide which of a Code's hand forms an instance is, and ``shapes`` gives instances
    that differ only in displacements or immediates one key.
    """

    def __init__(self, forms: Iterable[Form]):
        forms = list(forms)
        by_name = {f.name: f for f in forms}
        names = D.code_names()
        number = {n: c for c, n in names.items()}
        size = max(names) + 1
        self.kind = np.zeros(size, np.int8)
        self.hand: dict[int, tuple[Form, ...]] = {}
        self.derived: dict[int, str] = {}
        for code, fnames in table.hand_codes().items():
            fs = tuple(by_name[n] for n in fnames if n in by_name)
            if code in number and fs:
                self.hand[number[code]] = fs
                self.kind[number[code]] = HAND
        for code in registry.derived_codes():
            if code in number and number[code] not in self.hand:
                self.derived[number[code]] = registry.dforms.form_name(code)
                self.kind[number[code]] = DERIVED
        idx: dict[bytes, list[Form]] = defaultdict(list)
        for f in forms:
            op = f.enc.opcode
            if f.enc.plus_r and len(_key(op)) == len(op):
                for r in range(8):  # the register is in the key byte itself
                    idx[op[:-1] + bytes([op[-1] | r])].append(f)
            else:
                idx[_key(op)].append(f)
        # Bytes after the prefixes that can influence a match: the opcode and ModRM (span), and
        # the SIB byte that follows a ModRM at one of the offsets in sib_at when ModRM says so.
        self.span = {k: max(len(f.enc.opcode) + (f.enc.modrm is not None) for f in v)
                     for k, v in idx.items()}
        self.sib_at = {k: tuple(sorted({len(f.enc.opcode) for f in v if f.enc.modrm is not None}))
                       for k, v in idx.items()}
        self.by_code: dict[bytes, Form | None] = {}     # answers by whole instruction (match_form)
        self.by_shape: dict[tuple[int, int], Form | None] = {}  # ... by (shape, Code) (scan)
        self._tables: tuple[np.ndarray, np.ndarray] | None = None

    def shapes(self, blob: np.ndarray, starts: np.ndarray, sizes: np.ndarray):
        """The shape of every instruction at once, as one integer each, for grouping.

        A key keeps the bytes that can change the answer among a Code's hand forms (prefixes,
        opcode, ModRM, the SIB byte a ModRM calls for; ``span`` and ``sib_at``) and the length.
        ``blob`` holds the instructions (and 8 bytes of padding); an instruction whose shape runs
        into its 8th byte has no key (``exact`` is True) and must be matched on its own bytes.
        """
        if self._tables is None:
            # Rows: one-byte keys, then 0F xx.
            span = np.empty(512, np.int64)
            sib_last = np.zeros(512, bool)
            for t in range(512):
                k = bytes([t]) if t < 256 else bytes([0x0F, t & 0xFF])
                span[t] = self.span.get(k, len(k))
                sib_last[t] = k in self.span and self.span[k] - 1 in self.sib_at[k]
            self._tables = span, sib_last
        span_t, sib_last_t = self._tables
        n = len(starts)
        first8 = np.ndarray((len(blob) - 7,), "<u8", buffer=blob, strides=(1,))[starts]
        b = first8.view(np.uint8).reshape(n, 8)
        i = np.zeros(n, np.int64)                   # leading prefixes
        more = np.flatnonzero(_PASS_T[b[:, 0]])
        for j in range(1, 9):                       # few instructions have any: narrow each round
            i[more] += 1
            more = more[(sizes[more] > j) & _PASS_T[b[more, min(j, 7)]]] if j < 8 else more[:0]
            if not len(more):
                break
        b0, b1 = b[:, 0].astype(np.int64), b[:, 1].astype(np.int64)
        pre = np.flatnonzero(i)
        if len(pre):
            ic = np.minimum(i[pre], 6)
            b0[pre], b1[pre] = b[pre, ic], b[pre, ic + 1]
        two = b0 == 0x0F
        t = np.where(two, 256 + b1, b0)
        end = i + span_t[t]
        modrm = (first8 >> (np.minimum(end - 1, 7) * 8).astype(np.uint64)).astype(np.uint8)
        sib = sib_last_t[t] & (end < sizes) & _SIB_T[modrm]
        exact = (end + sib > 7) | (i + two >= sizes)
        keep = np.minimum(end + sib, sizes).clip(0, 7)
        keys = (first8 & _MASK[keep]) | (sizes.astype(np.uint64) << np.uint64(56))
        return keys, exact

    def remember(self, shape: tuple[int, int], f: Form | None) -> Form | None:
        if len(self.by_shape) >= 1 << 20:
            self.by_shape.clear()
        self.by_shape[shape] = f
        return f

    def decide(self, code: bytes, number: int) -> Form | None:
        """The hand form among Code ``number``'s that accepts ``code`` (its encoding judges the
        prefixes: a form that does not admit one is no instance), or None."""
        hits = [f for f in self.hand.get(number, ()) if instance_length(f.enc, code) == len(code)]
        if len(hits) > 1:
            raise FormConflict(f"{code.hex()} matches forms {', '.join(f.name for f in hits)}")
        return hits[0] if hits else None

    def name(self, code: bytes, number: int) -> str | None:
        """The form (hand-written or derived) of ``code``, an instance of Code ``number``."""
        k = self.kind[number] if 0 <= number < len(self.kind) else NONE
        if k == DERIVED:
            return self.derived[number]
        if k == HAND:
            f = self.decide(code, number)
            return f.name if f is not None else None
        return None


_matcher: tuple[int, _Matcher] | None = None


def _current() -> _Matcher:
    global _matcher
    if _matcher is None:
        from pgvirt.model import isa  # noqa: F401  (registers every form; builds Z3 terms)
    if _matcher is None or _matcher[0] != len(REGISTRY):
        _matcher = (len(REGISTRY), _Matcher(REGISTRY.values()))  # forms are still being added
    return _matcher[1]


class FormConflict(Exception):
    """Two forms accept the same instruction bytes: a bug in the model, not in the guest."""


def _number(code: bytes) -> int:
    """iced's Code for ``code`` if it is exactly one instruction, else INVALID."""
    ins = D._one(code, 0)
    return ins.code if ins.len == len(code) and code else INVALID


def form_name(code: bytes) -> str | None:
    """The name of the form ``code`` (exactly one instruction) is an instance of, or None."""
    return _current().name(bytes(code), _number(bytes(code)))


def match_form(code: bytes) -> Form | None:
    """The model form that ``code`` (exactly one instruction) is an instance of, or None.

    The decoder names the instruction's Code; a derived Code has one form, a hand-written one
    the forms whose encodings accept these bytes (which decide what each legacy prefix means for
    the form: ``o16``/``o32``, 16-bit addressing, mandatory and REP prefixes, LOCK).
    """
    m = _current()
    code = bytes(code)
    f = m.by_code.get(code, _MISS)
    if f is _MISS:
        n = m.name(code, _number(code))
        f = None if n is None else registry.get(n)
        if len(m.by_code) >= 1 << 20:
            m.by_code.clear()
        m.by_code[code] = f
    return f


# --- scanning ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    address: int
    section: str
    symbol: str | None
    bytes: str          # hex
    asm: str
    mnemonic: str
    form: str
    classes: tuple[str, ...]

    def row(self) -> dict:
        return {"address": self.address, "section": self.section, "symbol": self.symbol,
                "bytes": self.bytes, "asm": self.asm, "mnemonic": self.mnemonic,
                "form": self.form, "classes": list(self.classes)}


@dataclass(frozen=True)
class Unmodelled:
    """Instructions with one mnemonic that no form describes."""

    mnemonic: str
    count: int
    first: tuple[int, ...]      # up to five addresses, in scan order
    example: str                # bytes (hex) and asm of the first one


@dataclass(frozen=True)
class ScanResult:
    guest: str
    instructions: int
    undecodable: int
    undecodable_first: tuple[int, ...]
    sites: tuple[Site, ...]
    unmodelled: tuple[Unmodelled, ...]     # most frequent first
    forms: dict[str, int]                   # instances per matched form (violating or not)

    @property
    def unmodelled_count(self) -> int:
        return sum(u.count for u in self.unmodelled)


def scan(guest: Guest, classify: Callable[[str], Iterable[str]]) -> ScanResult:
    """Find every instance of a form in ``guest``; those with violated classes are sites.

    Per instruction the work is array arithmetic: the decoder's Code picks a derived form at
    once; instances of hand-coded instructions are grouped by shape (``_Matcher.shapes``) and
    matched once per shape; the classification is asked once per form, and Python runs per
    instruction only for those reported.
    """
    matcher = _current()
    starts, sizes, codes, addrs, secs = [], [], [], [], []
    blob, at = [], 0
    for k, sec in enumerate(guest.sections):
        for st, lo, hi in _sweep(guest, sec):
            offs = st.offs[lo:hi]
            starts.append(offs + at)
            addrs.append(offs + sec.addr)
            sizes.append(st.sizes[lo:hi])
            codes.append(st.codes[lo:hi])
            secs.append(np.full(hi - lo, k, np.int64))
        blob += [sec.data, bytes(8)]
        at += len(sec.data) + 8
    data = b"".join(blob)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    starts, sizes, codes, addrs, secs = cat(starts), cat(sizes), cat(codes), cat(addrs), cat(secs)

    def raw(k: int) -> bytes:
        return data[starts[k]:starts[k] + sizes[k]]

    ok = codes != INVALID
    bad_at = np.flatnonzero(~ok)
    kind = matcher.kind[np.where(ok, codes, 0)]
    label = np.full(len(starts), -1, np.int64)
    # Derived and unsupported Codes: one label per Code.
    plain = np.flatnonzero(ok & (kind != HAND))
    ucodes, inv = np.unique(codes[plain], return_inverse=True)
    label[plain] = inv.ravel()
    found: list[str | None] = [matcher.derived.get(c) for c in ucodes.tolist()]
    # Hand-coded: one label per (shape, Code); a shape whose members the decoder names
    # differently, or too long for a key, is matched instance by instance.
    hand = np.flatnonzero(kind == HAND)
    keys, exact = matcher.shapes(np.frombuffer(data, np.uint8), starts[hand], sizes[hand])
    grouped = hand[~exact]
    ginv, grep = _group(keys[~exact])
    split = codes[grouped] != codes[grouped[grep]][ginv]
    if split.any():
        ginv, grep = _group(keys[~exact] ^ (codes[grouped].astype(np.uint64) << np.uint64(40)))
        split = (codes[grouped] != codes[grouped[grep]][ginv]) | \
            (keys[~exact] != keys[~exact][grep][ginv])
    label[grouped] = len(found) + ginv
    reps = grouped[grep].tolist()
    shapes = list(zip(keys[~exact][grep].tolist(), codes[grouped[grep]].tolist()))
    for u, k in enumerate(reps):
        f = matcher.by_shape.get(shapes[u], _MISS)
        if f is _MISS:
            f = matcher.remember(shapes[u], matcher.decide(raw(k), int(codes[k])))
        found.append(None if f is None else f.name)
    lone: dict[bytes, int] = {}
    for k in np.concatenate([hand[exact], grouped[split]]).tolist():
        code = raw(k)
        if code not in lone:
            lone[code] = len(found)
            found.append(matcher.name(code, int(codes[k])))
        label[k] = lone[code]
    verdict: dict[str, tuple[str, ...]] = {}
    entries = [(None, None) if f is None else (f, _judge(f, classify, verdict)) for f in found]
    counts = np.bincount(label[ok], minlength=len(entries)).tolist()
    forms: dict[str, int] = defaultdict(int)
    for (fname, cls), c in zip(entries, counts):
        if cls is not None:
            forms[fname] += c
    hit = np.array([bool(cls) for _, cls in entries] + [False], bool)
    sites = []
    for k in np.flatnonzero(hit[label]).tolist():
        code, (fname, cls) = raw(k), entries[label[k]]
        addr, name = int(addrs[k]), guest.sections[secs[k]].name
        mnem, op = D.text(code, addr)
        sites.append(Site(addr, name, guest.label(name, addr), code.hex(),
                          f"{mnem} {op}".rstrip(), mnem, fname, cls))
    none = np.array([cls is None for _, cls in entries] + [False], bool)
    unmodelled = _unmodelled(np.flatnonzero(none[label]).tolist(), addrs, raw)
    return ScanResult(guest.path, int(ok.sum()), len(bad_at),
                      tuple(addrs[bad_at[:5]].tolist()), tuple(sites), unmodelled,
                      dict(sorted(forms.items())))


def _unmodelled(at: list[int], addrs: np.ndarray, raw) -> tuple[Unmodelled, ...]:
    """Instructions ``at`` (no form describes them) grouped by mnemonic as the decoder prints
    it (prefixes included: ``lock inc``; CMPPS's predicate in its name)."""
    names: dict[bytes, str] = {}
    groups: dict[str, list[int]] = {}
    for k in at:
        code = raw(k)
        m = names.get(code)
        if m is None:
            m = names[code] = D.mnemonic(code)
        groups.setdefault(m, []).append(k)
    out = []
    for m, ks in groups.items():
        k = ks[0]
        out.append(Unmodelled(m, len(ks), tuple(int(addrs[x]) for x in ks[:5]),
                              f"{raw(k).hex()}  {D.asm(raw(k), int(addrs[k]))}".rstrip()))
    return tuple(sorted(out, key=lambda u: (-u.count, u.mnemonic)))


def _judge(name: str, classify, verdict: dict) -> tuple[str, ...]:
    """``classify(name)`` once per scan; a set comes back sorted, a sequence in its own order."""
    cls = verdict.get(name)
    if cls is None:
        got = classify(name)
        cls = verdict[name] = tuple(sorted(got) if isinstance(got, (set, frozenset)) else got)
    return cls


_SPREAD = np.uint64(0x9E3779B97F4A7C15)    # Fibonacci hashing: the top 16 bits of key * this


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label equal keys alike: (label of each key, first index of each label), labels dense from 0.

    What ``np.unique`` returns as inverse and index, without sorting 64-bit keys: a radix sort of
    a 16-bit hash groups them, and only the few hash buckets holding two keys go to np.unique.
    """
    n = len(keys)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    h = ((keys.astype(np.uint64) * _SPREAD) >> np.uint64(48)).astype(np.uint16)
    order = np.argsort(h, kind="stable")       # by bucket, each in index order
    sh, sk = h[order], keys[order]
    start = np.empty(n, bool)
    start[0] = True
    np.not_equal(sh[1:], sh[:-1], out=start[1:])
    bucket = np.cumsum(start) - 1
    firsts = np.flatnonzero(start)
    label = np.empty(n, np.int64)
    shared = np.zeros(len(firsts), bool)        # buckets where two keys collide
    shared[bucket[sk != sk[firsts][bucket]]] = True
    if not shared.any():
        label[order] = bucket
        return label, order[firsts]
    alone, mixed = ~shared[bucket], shared[bucket]
    dense = np.cumsum(~shared) - 1
    label[order[alone]] = dense[bucket[alone]]
    at = order[mixed]
    _, rep, inv = np.unique(keys[at], return_index=True, return_inverse=True)
    label[at] = int((~shared).sum()) + inv
    return label, np.concatenate([order[firsts[~shared]], at[rep]])
