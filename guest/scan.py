"""Matching decoded guest instructions to the model's forms, and the scan: the sites whose form a
classifier calls a violation; instructions no form describes are ``unmodelled``, never harmless."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from pgvirt.model.encoding import LEGACY_PREFIXES, REP_PREFIX, instance_length
from pgvirt.model.form import REGISTRY, Form

from .decode import _IDLE, _handle, _sweep, _text_at
from .image import Guest

__all__ = ["FormConflict", "match_form", "scan", "ScanResult", "Site", "Unmodelled"]

# --- matching instances to forms -----------------------------------------------------------------

_PASS_PREFIX = LEGACY_PREFIXES   # segment, REP, 66, 67 and LOCK: the encodings judge them
_PASS_T = np.zeros(256, bool)
_PASS_T[list(_PASS_PREFIX)] = True
_SIB_T = np.zeros(256, bool)
_SIB_T[[m for m in range(256) if m & 0xC7 in (0x04, 0x44, 0x84)]] = True   # mod != 3, rm = 4
_MASK = np.array([(1 << 8 * k) - 1 for k in range(8)], np.uint64)
_MISS = object()
_MNEMONIC_PREFIXES = frozenset({"rep", "repe", "repz", "repne", "repnz", "lock", "bnd", "notrack"})


def _key(op: bytes) -> bytes:
    # Two-byte key for the 0F map (and prefix-led opcodes), one byte otherwise.
    return op[:2] if op[:1] in (b"\x0f", b"\x66", b"\xf2", b"\xf3") else op[:1]


class _Matcher:
    """Forms indexed by leading opcode byte(s), with answers remembered.

    ``encoding.decode`` looks only at the prefixes, the opcode, ModRM and SIB; displacement and
    immediate values merely have to be present.  So those bytes plus the total length decide a
    match, and ``shapes`` gives instructions that differ only in displacements or immediates one
    key.
    """

    def __init__(self, forms: Iterable[Form]):
        self.index: dict[bytes, tuple[Form, ...]] = {}
        idx: dict[bytes, list[Form]] = defaultdict(list)
        for f in forms:
            op = f.enc.opcode
            if f.enc.plus_r and len(_key(op)) == len(op):
                for r in range(8):  # the register is in the key byte itself
                    idx[op[:-1] + bytes([op[-1] | r])].append(f)
            else:
                idx[_key(op)].append(f)
        self.index = {k: tuple(v) for k, v in idx.items()}
        # Bytes after the prefixes that can influence a match: the opcode and ModRM (span), and
        # the SIB byte that follows a ModRM at one of the offsets in sib_at when ModRM says so.
        self.span = {k: max(len(f.enc.opcode) + (f.enc.modrm is not None) for f in v)
                     for k, v in self.index.items()}
        self.sib_at = {k: tuple(sorted({len(f.enc.opcode) for f in v if f.enc.modrm is not None}))
                       for k, v in self.index.items()}
        self.by_code: dict[bytes, Form | None] = {}     # answers by whole instruction (match_form)
        self.by_shape: dict[int, Form | None] = {}      # ... and by a key of ``shapes`` (scan)
        self._tables: tuple[np.ndarray, np.ndarray] | None = None

    def shapes(self, blob: np.ndarray, starts: np.ndarray, sizes: np.ndarray):
        """The shape of every instruction at once, as one integer each, for grouping.

        Instructions with equal keys get the same answer from ``decide``: a key keeps the bytes
        that can change it (REP and segment prefixes, opcode, ModRM, the SIB byte a ModRM calls
        for; ``span`` and ``sib_at``) and the length.  ``blob`` holds the instructions (and 8 bytes of padding);
        an instruction whose shape runs into its 8th byte has no key (``exact`` is True) and
        must be matched on its own bytes.
        """
        if self._tables is None:
            # Rows: one-byte keys, then 0F xx, then 66 xx (the only bytes _key reads two of
            # once REP and segment prefixes are skipped).
            span = np.empty(768, np.int64)
            sib_last = np.zeros(768, bool)
            for t in range(768):
                k = bytes([t]) if t < 256 else bytes([0x0F if t < 512 else 0x66, t & 0xFF])
                span[t] = self.span.get(k, len(k))   # no candidates: unmodelled whatever follows
                sib_last[t] = k in self.index and self.span[k] - 1 in self.sib_at[k]
            self._tables = span, sib_last
        span_t, sib_last_t = self._tables
        n = len(starts)
        first8 = np.ndarray((len(blob) - 7,), "<u8", buffer=blob, strides=(1,))[starts]
        b = first8.view(np.uint8).reshape(n, 8)
        i = np.zeros(n, np.int64)                   # leading REP and segment prefixes
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
        two = (b0 == 0x0F) | (b0 == 0x66)
        t = np.where(two, np.where(b0 == 0x66, 512, 256) + b1, b0)
        end = i + span_t[t]
        modrm = (first8 >> (np.minimum(end - 1, 7) * 8).astype(np.uint64)).astype(np.uint8)
        sib = sib_last_t[t] & (end < sizes) & _SIB_T[modrm]
        exact = (end + sib > 7) | (i + two >= sizes)
        keep = np.minimum(end + sib, sizes).clip(0, 7)
        keys = (first8 & _MASK[keep]) | (sizes.astype(np.uint64) << np.uint64(56))
        return keys, exact

    def remember(self, shape: int, f: Form | None) -> Form | None:
        if len(self.by_shape) >= 1 << 20:
            self.by_shape.clear()
        self.by_shape[shape] = f
        return f

    def decide(self, code: bytes) -> Form | None:
        """What ``self(code)`` answers, worked out afresh (``scan`` remembers answers by shape)."""
        i, n = 0, len(code)
        while i < n and code[i] in _PASS_PREFIX:
            i += 1
        cands = self.index.get(_key(code[i:i + 2]))
        return None if cands is None else self._match(code, cands, any(c in REP_PREFIX for c in code[:i]))

    def __call__(self, code: bytes) -> Form | None:
        f = self.by_code.get(code, _MISS)
        if f is _MISS:
            f = self.decide(code)
            if len(self.by_code) >= 1 << 20:
                self.by_code.clear()
            self.by_code[code] = f
        return f

    def _match(self, code: bytes, cands: tuple[Form, ...], rep: bool) -> Form | None:
        hits = [f for f in cands if instance_length(f.enc, code) == len(code)]
        if len(hits) > 1:
            raise FormConflict(f"{code.hex()} matches forms {', '.join(f.name for f in hits)}")
        if not hits:
            return None
        f = hits[0]
        if rep and f.enc.opcode[0] not in REP_PREFIX:
            # F2/F3 select another instruction for many opcodes (F3 90 PAUSE, F3 0F B8 POPCNT,
            # F3 0F 1E FB ENDBR32); encoding.decode would read them as a REP prefix.
            md = _handle()
            try:
                got = [m for _, _, m, _ in md.disasm_lite(code, 0)]
            finally:
                _IDLE.append(md)
            if len(got) != 1 or _asm_mnemonic(got[0]) != _asm_mnemonic(f.asm):
                return None
        return f


_matcher: tuple[int, _Matcher] | None = None


def _current() -> _Matcher:
    global _matcher
    if _matcher is None:
        from pgvirt.model import isa  # noqa: F401  (registers every form; builds Z3 terms)
    if _matcher is None or _matcher[0] != len(REGISTRY):
        _matcher = (len(REGISTRY), _Matcher(REGISTRY.values()))  # forms are still being added
    return _matcher[1]


def _asm_mnemonic(text: str) -> str:
    words = [w for w in text.lower().split() if w not in _MNEMONIC_PREFIXES]
    return words[0] if words else ""


class FormConflict(Exception):
    """Two forms accept the same instruction bytes: a bug in the model, not in the guest."""


def match_form(code: bytes) -> Form | None:
    """The model form that ``code`` (exactly one instruction) is an instance of, or None.

    Every legacy prefix passes through ``encoding.decode``, which decides what it means for the
    form (``o16``/``o32``, 16-bit addressing, mandatory and REP prefixes, LOCK); bytes with a
    prefix a form does not admit are no instance of it.  A REP prefix that turns the bytes into
    another instruction no form describes is caught by asking Capstone.
    """
    return _current()(bytes(code))


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
    """Instructions with one Capstone mnemonic that no form describes."""

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


def scan(guest: Guest, classify: Callable[[str], Iterable[str]],
         fast: bool | None = None, jobs: int | None = None) -> ScanResult:
    """Find every instance of a form in ``guest``; those with violated classes are sites.

    Per instruction the work is array arithmetic (``_Matcher.shapes``): matching, Capstone's
    mnemonic and the classification are computed once per instruction shape, and Python runs
    per instruction only for those reported.
    """
    matcher = _current()
    starts, sizes, ids, addrs, secs, mnems = [], [], [], [], [], []
    blob, at = [], 0
    for k, sec in enumerate(guest.sections):
        for st, lo, hi in _sweep(guest, sec, fast, jobs):
            offs = st.offs[lo:hi]
            starts.append(offs + at)
            addrs.append(offs + sec.addr)
            sizes.append(st.sizes[lo:hi])
            ids.append(st.ids[lo:hi])
            mnems.append(st.mnems[lo:hi])
            secs.append(np.full(hi - lo, k, np.int64))
        blob += [sec.data, bytes(8)]
        at += len(sec.data) + 8
    data = b"".join(blob)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    starts, sizes, ids, addrs, secs = cat(starts), cat(sizes), cat(ids), cat(addrs), cat(secs)

    def text(k: int) -> tuple[str, str]:
        return _text_at(data[starts[k]:starts[k] + sizes[k]], int(addrs[k]))

    ok = ids != 0
    bad_at = np.flatnonzero(~ok)
    keys, exact = matcher.shapes(np.frombuffer(data, np.uint8), starts, sizes)
    # A label per shape, then one per distinct encoding too long for a shape (matched alone).
    label = np.full(len(starts), -1, np.int64)
    grouped = np.flatnonzero(ok & ~exact)
    inv, rep = _group(keys[grouped])
    label[grouped] = inv
    reps = grouped[rep].tolist()
    shapes = keys[grouped[rep]].tolist()
    found = [matcher.by_shape.get(key, _MISS) for key in shapes]
    for u, f in enumerate(found):
        if f is _MISS:
            k = reps[u]
            found[u] = matcher.remember(shapes[u], matcher.decide(data[starts[k]:starts[k] + sizes[k]]))
    lone: dict[bytes, int] = {}
    for k in np.flatnonzero(ok & exact).tolist():
        code = data[starts[k]:starts[k] + sizes[k]]
        if code not in lone:
            lone[code] = len(reps)
            reps.append(k)
            found.append(matcher.decide(code))
        label[k] = lone[code]
    verdict: dict[str, tuple[str, ...]] = {}
    entries = [(None, None) if f is None else (f.name, _judge(f.name, classify, verdict))
               for f in found]
    counts = np.bincount(label[ok], minlength=len(entries)).tolist()
    forms: dict[str, int] = defaultdict(int)
    for (fname, cls), c in zip(entries, counts):
        if cls is not None:
            forms[fname] += c
    hit = np.array([bool(cls) for _, cls in entries] + [False], bool)
    sites = []
    for k in np.flatnonzero(hit[label]).tolist():
        code, (fname, cls) = data[starts[k]:starts[k] + sizes[k]], entries[label[k]]
        mnem, op = text(k)
        addr, name = int(addrs[k]), guest.sections[secs[k]].name
        sites.append(Site(addr, name, guest.label(name, addr), code.hex(),
                          f"{mnem} {op}".rstrip(), mnem, fname, cls))
    none = np.array([cls is None for _, cls in entries] + [False], bool)
    unmodelled = _unmodelled(np.flatnonzero(none[label]), label, ids, np.concatenate(mnems),
                             starts, sizes, addrs, data, text)
    return ScanResult(guest.path, int(ok.sum()), len(bad_at),
                      tuple(addrs[bad_at[:5]].tolist()), tuple(sites), unmodelled,
                      dict(sorted(forms.items())))


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


_ONES, _HIGHS = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)


def _c_strings(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of little-endian words holding C strings: the rows with every byte after the first NUL
    cleared, masks of the bytes up to and including that NUL, and the rows with no NUL at all (a
    longer string, cut off; their masks take every byte)."""
    out, upto = np.zeros_like(words), np.zeros_like(words)
    open_ = np.ones(len(words), bool)           # no NUL met yet
    every = ~np.uint64(0)
    for w in range(words.shape[1]):
        v = words[:, w]
        zero = (v - _ONES) & ~v & _HIGHS        # its lowest set bit marks the first 0x00 byte
        first = zero & (~zero + np.uint64(1))
        out[:, w] = np.where(open_, v & np.where(zero == 0, every, (first >> np.uint64(7)) - 1), 0)
        upto[:, w] = np.where(open_, np.where(zero == 0, every, (first << np.uint64(1)) - 1), 0)
        open_ &= zero == 0
    upto[open_] = every
    return out, upto, open_


def _unmodelled(at, label, ids, mnems, starts, sizes, addrs, data, text):
    """Instructions ``at`` (no form describes them) grouped by Capstone's mnemonic.  Instructions
    of one shape with one Capstone id mostly share it, so they are grouped so first; a group whose
    members print otherwise (LOCK shown or not, CMPPS's predicate in its name) is split by text."""
    if not len(at):
        return ()
    raw = mnems[at]
    inv, rep = _group((label[at] << 32) | ids[at])
    # A member prints as its group's first if their C strings agree up to the first's NUL.
    strings, upto, long = _c_strings(raw[rep])
    split = np.flatnonzero(((raw & upto[inv]) != strings[inv]).any(axis=1) | long[inv])
    if len(split):
        words, _, cut = _c_strings(raw[split])
        _, again = np.unique(words, axis=0, return_inverse=True)
        again = again.ravel()
        again[cut] = again.max() + 1 + np.arange(cut.sum())     # cut off: each on its own
        _, firsts, again = np.unique(again, return_index=True, return_inverse=True)
        inv[split] = len(rep) + again.ravel()
        rep = np.concatenate([rep, split[firsts]])
        strings = np.concatenate([strings, words[firsts]])
        long = np.concatenate([long, cut[firsts]])
    names = [text(at[r])[0] if cut_ else w.tobytes().rstrip(b"\0").decode("ascii", "replace")
             for r, w, cut_ in zip(rep.tolist(), strings, long.tolist())]
    group_of: dict[str, int] = {}
    group = np.array([group_of.setdefault(m, len(group_of)) for m in names], np.int64)[inv]
    counts = np.bincount(group, minlength=len(group_of))
    order = at[np.argsort(group, kind="stable")]     # by group, each in scan order
    begin = (np.cumsum(counts) - counts).tolist()
    out = []
    for (m, g), c, b in zip(group_of.items(), counts.tolist(), begin):
        if not c:
            continue    # a label whose members all went to other labels above
        head = order[b:b + min(c, 5)]
        k = int(head[0])
        mnem, op = text(k)
        code = data[starts[k]:starts[k] + sizes[k]]
        out.append(Unmodelled(m, c, tuple(addrs[head].tolist()), f"{code.hex()}  {mnem} {op}".rstrip()))
    return tuple(sorted(out, key=lambda u: (-u.count, u.mnemonic)))


def _judge(name: str, classify, verdict: dict) -> tuple[str, ...]:
    """``classify(name)`` once per scan; a set comes back sorted, a sequence in its own order."""
    cls = verdict.get(name)
    if cls is None:
        got = classify(name)
        cls = verdict[name] = tuple(sorted(got) if isinstance(got, (set, frozenset)) else got)
    return cls
