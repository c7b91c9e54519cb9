"""Frame test of derived footprints on Unicorn: a footprint is checked, not trusted.

For an instance of a derived form, the model's outcome names what the form reads (every field
whose symbol occurs in its results, fault conditions and addresses) and writes (its effects and
stored bytes).  ``check_instance`` draws pairs of random states that agree on the read set and
differ in every other field (SYSTEM fields and CPL included, within the states the shared fault
checks let run), runs both on Unicorn and requires

* the same outcome: fault and vector, or the same value of every field and byte written;
* no field outside the write set changed, no byte written outside the model's stores and none
  read outside its loads (Unicorn's memory hooks see every access).

A footprint that lies is a ``Mismatch`` carrying both states.  Where Unicorn (QEMU 5.0 TCG)
raises #UD in a state where the model's checks pass in every sample, the form is
``unsupported`` on Unicorn (AVX, AVX-512, ... are not implemented there), recorded per form.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import z3

from pgvirt.model import state as st
from pgvirt.model.derived import registry, table
from pgvirt.model.form import Form
from pgvirt.model.outcome import UD, Fault, Next

from . import states as S
from .machine import NOT_HELD, ZMM_HELD_BITS, IncompleteRun, Machine, StateError

STATUS_PATH = Path(__file__).with_name("frame_status.json")
ALL_FEATURES = frozenset(table.features()) | {"xsave"}
DATA = 0x60000           # data window: every address register points into it
WINDOW = 0x4000
SEGMENT_FIELDS = ("cpl",) + tuple(f"{r}{k}" for r in st.SREGS for k in ("", "_base", "_limit", "_attr"))
CONFIG = SEGMENT_FIELDS + ("gdtr_base", "gdtr_limit", "idtr_base", "idtr_limit", "ldtr", "ldtr_base",
                           "ldtr_limit", "tr", "tr_base", "tr_limit", "tr_attr")


@dataclass
class Mismatch:
    code: str
    instance: str
    reason: str
    a: dict
    b: dict

    def __str__(self) -> str:
        return f"{self.code} [{self.instance}]: {self.reason}"


@dataclass
class Result:
    code: str
    status: str = "ran"              # "ran" | "unsupported: ..." | "skipped: ..."
    pairs: int = 0
    mismatches: list = field(default_factory=list)


# Where CPUID reports an iced feature: (leaf, register, bit) (SDM Vol. 2A CPUID, AMD APM
# Vol. 3 E.3).  Unicorn's own CPUID answers which of them its CPU has.
CPUID_BITS = {
    "fpu": (1, "edx", 0), "cx8": (1, "edx", 8), "cmov": (1, "edx", 15), "clfsh": (1, "edx", 19),
    "mmx": (1, "edx", 23), "sse": (1, "edx", 25), "sse2": (1, "edx", 26),
    "sse3": (1, "ecx", 0), "pclmulqdq": (1, "ecx", 1), "ssse3": (1, "ecx", 9), "fma": (1, "ecx", 12),
    "sse4_1": (1, "ecx", 19), "sse4_2": (1, "ecx", 20), "movbe": (1, "ecx", 22),
    "popcnt": (1, "ecx", 23), "aes": (1, "ecx", 25), "avx": (1, "ecx", 28), "f16c": (1, "ecx", 29),
    "bmi1": (7, "ebx", 3), "avx2": (7, "ebx", 5), "bmi2": (7, "ebx", 8), "avx512f": (7, "ebx", 16),
    "avx512dq": (7, "ebx", 17), "adx": (7, "ebx", 19), "avx512_ifma": (7, "ebx", 21),
    "clflushopt": (7, "ebx", 23), "clwb": (7, "ebx", 24), "avx512pf": (7, "ebx", 26),
    "avx512er": (7, "ebx", 27), "avx512cd": (7, "ebx", 28), "sha": (7, "ebx", 29),
    "avx512bw": (7, "ebx", 30), "avx512vl": (7, "ebx", 31),
    "lzcnt": (0x80000001, "ecx", 5), "sse4a": (0x80000001, "ecx", 6),
    "prefetchw": (0x80000001, "ecx", 8), "xop": (0x80000001, "ecx", 11),
    "fma4": (0x80000001, "ecx", 16), "tbm": (0x80000001, "ecx", 21),
    "d3nowext": (0x80000001, "edx", 30), "d3now": (0x80000001, "edx", 31),
}
# The base instruction set every IA-32 processor from the 80386 on has.
BASE_FEATURES = frozenset(("intel8086", "intel186", "intel286", "intel386", "intel486",
                           "fpu287", "fpu387", "multibytenop", "pause"))


def unicorn_features(m: Machine | None = None) -> frozenset[str]:
    """The iced features Unicorn's CPU reports through CPUID (run on Unicorn itself)."""
    m = m or Machine()
    regs = {}
    for leaf in sorted({v[0] for v in CPUID_BITS.values()}):
        out = m.run(S.flat_state(0, eax=leaf, ecx=0), bytes.fromhex("0fa2"))
        regs[leaf] = out.state
    return BASE_FEATURES | {f for f, (leaf, r, b) in CPUID_BITS.items() if regs[leaf][r] >> b & 1}


def _consts(terms) -> set[str]:
    """Names of the uninterpreted constants the terms mention."""
    out, seen, stack = set(), set(), list(terms)
    while stack:
        t = stack.pop()
        i = t.get_id()
        if i in seen:
            continue
        seen.add(i)
        if z3.is_const(t) and t.decl().kind() == z3.Z3_OP_UNINTERPRETED:
            out.add(t.decl().name())
        elif z3.is_app(t):
            stack.extend(t.children())
    return out


@dataclass
class Footprint:
    reads: frozenset[str]           # scalar fields
    writes: frozenset[str]
    loads: list                     # address terms
    stores: list
    addr_regs: frozenset[str]


def footprint(form: Form, code: bytes) -> Footprint:
    """The read and write sets the model's outcome of this instance states."""
    s = st.fresh("fr")
    o = form.run(s, code, features=ALL_FEATURES)
    terms = [c.fails for c in o.checks] + [a for a, _ in o.assumptions]
    terms += [o.post[n] for n in o.effects if not st.FIELD[n].index_width]
    loads = [a for arr, a in o.loads if arr == "mem"]
    stores = [a for arr, a in o.stores if arr == "mem"]
    terms += loads + stores
    if "mem" in o.effects:
        terms += [z3.Select(o.post.mem, a) for a in stores]
    reads = {n[3:] for n in _consts(terms) if n.startswith("fr.")} - {"mem", "io"}
    addr = {n[3:] for n in _consts(loads + stores) if n.startswith("fr.")}
    writes = {n for n in o.effects if not st.FIELD[n].index_width}
    return Footprint(frozenset(reads), frozenset(writes), loads, stores, frozenset(addr & set(st.GPRS)))


def _random_state(rng: random.Random, fp: Footprint, code: bytes) -> dict:
    cpl = rng.choice((0, 3))
    s = S.flat_state(cpl, iopl=rng.randrange(4), interrupts=rng.random() < 0.5)
    for r in st.GPRS:
        if r in fp.addr_regs or rng.random() < 0.5:
            s[r] = DATA + rng.randrange(WINDOW)
        else:
            s[r] = rng.getrandbits(32)
    s["esp"] = S.STACK_TOP[cpl] - 0x100 - 4 * rng.randrange(32)
    s["flags"] = rng.getrandbits(32) & st.USER_FLAGS_MASK
    if rng.random() < 0.5:
        s["sysflags"] |= 1 << st.AC
    # FPU/SIMD state may run: EM = TS = 0, OSFXSR = 1; NE = 1 (the x87 forms' assumption).
    cr0 = (1 << st.CR0_PE) | (1 << st.CR0_ET) | (1 << st.CR0_NE)
    for b in (st.CR0_MP, st.CR0_WP, st.CR0_AM):
        if rng.random() < 0.5:
            cr0 |= 1 << b
    s["cr0"] = cr0
    cr4 = 1 << st.CR4_OSFXSR
    for b in (st.CR4_TSD, st.CR4_PCE, st.CR4_OSXMMEXCPT, st.CR4_DE, st.CR4_PSE, st.CR4_PGE):
        if rng.random() < 0.5:
            cr4 |= 1 << b
    s["cr4"] = cr4
    for r in ("dr0", "dr1", "dr2", "dr3", "cr2", "cr3"):
        s[r] = rng.getrandbits(32)
    s["tsc_aux"] = rng.getrandbits(32)
    for i, r in enumerate(st.FPRS):
        s[r] = rng.getrandbits(80)
    s["fcw"] = 0x1000 | rng.getrandbits(12) & 0xF3F
    s["fsw"] = rng.getrandbits(16) & ~0x80 & 0xFFFF if rng.random() < 0.8 else rng.getrandbits(16)
    s["ftw"] = rng.getrandbits(8)
    s["fop"], s["fip"], s["fdp"] = rng.getrandbits(11), rng.getrandbits(32), rng.getrandbits(32)
    s["fcs"], s["fds"] = rng.getrandbits(16), rng.getrandbits(16)
    s["mxcsr"] = (rng.getrandbits(16) & 0xFFBF) | 0x1F80 if rng.random() < 0.8 else rng.getrandbits(16) & 0xFFBF
    for r in st.ZMMS:
        s[r] = rng.getrandbits(ZMM_HELD_BITS)
    mem = dict(s["mem"])
    for a in range(DATA - 0x40, DATA + WINDOW + 0x40):
        mem[a] = rng.getrandbits(8)
    stack = s["esp"]
    for a in range(stack - 0x40, stack + 0x40):
        mem[a] = rng.getrandbits(8)
    s["mem"] = mem
    return s


def _addresses(terms: list, s: dict) -> list[int]:
    """Concrete values of address terms on state ``s`` (fresh symbols 'fr.*')."""
    subs = [(z3.BitVec(f"fr.{n}", st.FIELD[n].width), z3.BitVecVal(s[n], st.FIELD[n].width))
            for n in st.SCALARS]
    return [z3.simplify(z3.substitute(t, *subs)).as_long() for t in terms]


# Where Unicorn departs from the SDM for the frame test (entries of emulator/deviations.py):
# x87 results there also depend on MXCSR ("x87-reads-mxcsr"), so twins of an x87 form share it;
# FNSTSW AX writes FCS:FIP there ("fnstsw-updates-fip"), so those are not compared for it.
X87_EXTRA_READS = ("mxcsr",)
IGNORED_WRITES = {"FNSTSW_AX": ("fip", "fcs"), "FNSTSW_M2BYTE": ("fip", "fcs")}


def _twin(rng: random.Random, s: dict, fp: Footprint, code: bytes) -> dict:
    """A state equal to ``s`` on the read set (and the loaded bytes), random elsewhere."""
    t = _random_state(rng, fp, code)
    keep = set(fp.reads)
    if {"fpr0", "fsw"} <= keep:
        keep |= set(X87_EXTRA_READS)
    if keep & set(CONFIG):
        # a read selector or CPL: the whole segment configuration goes with it (Unicorn must be
        # able to reach it); otherwise CPL varies with its own flat configuration
        keep |= set(CONFIG)
    for n in st.SCALARS:
        if n in keep:
            t[n] = s[n]
    mem = dict(t["mem"])
    for a in _load_bytes(fp, s):
        mem[a] = s["mem"].get(a, 0)
    t["mem"] = mem
    return t


def _load_bytes(fp: Footprint, s: dict) -> set[int]:
    out = set()
    for a in _addresses(fp.loads, s):
        out.add(a & 0xFFFFFFFF)
    return out


def _run(m: Machine, s: dict, code: bytes):
    try:
        return m.run(s, code), m.last
    except (StateError, IncompleteRun) as e:
        return e, None


def check_instance(m: Machine, code_name: str, form: Form, code: bytes, rng: random.Random,
                   pairs: int) -> tuple[str, int, list[Mismatch]]:
    fp = footprint(form, code)
    bad: list[Mismatch] = []
    ran = ud = 0
    for _ in range(pairs):
        a = _random_state(rng, fp, code)
        b = _twin(rng, a, fp, code)
        ra, acc_a = _run(m, a, code)
        rb, acc_b = _run(m, b, code)
        if isinstance(ra, Exception) or isinstance(rb, Exception):
            bad.append(Mismatch(code_name, code.hex(), f"Unicorn could not run it: {ra if isinstance(ra, Exception) else rb}", a, b))
            continue
        for r, acc, s in ((ra, acc_a, a), (rb, acc_b, b)):
            if isinstance(r, Fault) and r.vector == UD:
                ud += 1
                continue
            ran += 1
            why = _frame_violation(fp, s, r, acc, IGNORED_WRITES.get(code_name, ()))
            if why:
                bad.append(Mismatch(code_name, code.hex(), why, a, b))
        if isinstance(ra, Fault) and ra.vector == UD and isinstance(rb, Fault) and rb.vector == UD:
            continue
        why = _outputs_differ(fp, ra, rb, a, b)
        if why:
            bad.append(Mismatch(code_name, code.hex(), why, a, b))
    status = "ran" if ran else "unsupported: #UD in every sampled state (not implemented in QEMU 5.0 TCG)"
    if not ran:
        bad = [x for x in bad if not x.reason.startswith("outcomes differ")]
    return status, ran, bad


def _frame_violation(fp: Footprint, s: dict, r, acc, ignored=()) -> str:
    if isinstance(r, Fault):
        return ""
    post = r.state
    for n in st.SCALARS:
        if n not in fp.writes and n != "eip" and n not in ignored and post[n] != s[n]:
            return f"{n} changed ({s[n]:#x} -> {post[n]:#x}) outside the write set"
    stores = set()
    for a, size in zip(_addresses(fp.stores, s), [1] * len(fp.stores)):
        stores.add(a & 0xFFFFFFFF)
    # Bytes read beyond the model's loads are no lie by themselves (QEMU loads 16 bytes for
    # some 8-byte SSE operands and drops the rest); what they could change shows in the outputs,
    # and the twin state has every such byte random.
    if acc is not None:
        extra_w = {a for a in acc.writes if a not in stores}
        if extra_w:
            return f"Unicorn wrote {sorted(extra_w)[:4]} outside the model's stores"
    return ""


def _outputs_differ(fp: Footprint, ra, rb, a: dict, b: dict) -> str:
    if isinstance(ra, Fault) or isinstance(rb, Fault):
        va = ra.vector if isinstance(ra, Fault) else None
        vb = rb.vector if isinstance(rb, Fault) else None
        return "" if va == vb else f"outcomes differ: {va} vs {vb} (a fault depends on a field outside the read set)"
    for n in sorted(fp.writes):
        if n in NOT_HELD:
            continue
        if ra.state[n] != rb.state[n]:
            return f"outcomes differ in {n}: {ra.state[n]:#x} vs {rb.state[n]:#x}"
    sa, sb = _addresses(fp.stores, a), _addresses(fp.stores, b)
    for x, y in zip(sa, sb):
        if ra.state["mem"].get(x) != rb.state["mem"].get(y):
            return f"outcomes differ in the byte stored at {x:#x}"
    return ""


def check(code: str, pairs: int = 3, seed: int = 0, m: Machine | None = None) -> Result:
    """Frame test of derived code ``code`` on every instance the table keeps."""
    rec = table.codes()[code]
    form = registry.by_code(code)
    res = Result(code)
    if form is None:
        res.status = "skipped: not derived"
        return res
    m = m or Machine()
    lacks = sorted(set(rec["cpuid"]) - _features(m))
    if lacks:
        res.status = f"unsupported: Unicorn's CPU lacks {', '.join(lacks)}"
        return res
    rng = random.Random(f"{seed}:{code}")
    statuses = []
    for h in [rec["bytes"], *rec["alt_bytes"]]:
        status, ran, bad = check_instance(m, code, form, bytes.fromhex(h), rng, pairs)
        statuses.append(status)
        res.pairs += pairs
        res.mismatches += bad
    res.status = "ran" if "ran" in statuses else statuses[0]
    return res


_FEATURES: dict[int, frozenset[str]] = {}


def _features(m: Machine) -> frozenset[str]:
    f = _FEATURES.get(id(m))
    if f is None:
        f = _FEATURES[id(m)] = unicorn_features(m)
    return f


def sweep(codes=None, pairs: int = 3, seed: int = 0, progress=None) -> dict[str, Result]:
    m = Machine()
    out = {}
    for c in codes if codes is not None else registry.derived_codes():
        out[c] = check(c, pairs, seed, m)
        if progress:
            progress(out[c])
    return out


def load_status() -> dict[str, str]:
    """Per derived code: "ran" or why Unicorn could not run its frame test (the committed sweep)."""
    try:
        return json.loads(STATUS_PATH.read_text())["codes"]
    except (OSError, ValueError, KeyError):
        return {}


def status_doc(results: dict[str, Result]) -> dict:
    return {"format": 1, "what": "frame test of each derived code on Unicorn: ran, or why not",
            "codes": {c: r.status for c, r in sorted(results.items())}}


def main(argv=None) -> int:
    """``python -m pgvirt.emulator.frame [--pairs N]``: the full sweep; writes frame_status.json
    when no footprint lies, else prints the mismatches and exits 1."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="frame test of every derived form on Unicorn")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = sweep(pairs=args.pairs, seed=args.seed)
    bad = [m for r in res.values() for m in r.mismatches]
    for m in bad:
        print(m, file=sys.stderr)
    if bad:
        return 1
    tmp = STATUS_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(status_doc(res), indent=1, sort_keys=True) + "\n")
    tmp.replace(STATUS_PATH)
    ran = sum(r.status == "ran" for r in res.values())
    print(f"{len(res)} derived codes: {ran} ran on Unicorn, {len(res) - ran} could not", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
