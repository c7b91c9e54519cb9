"""Benchmark: the whole 32-bit ISA (hand-written + derived forms) classified under both profiles.

In one run, each in a fresh process:

* baseline: the hand-written forms alone, both profiles, cold (what bench/verify.py measures);
* whole ISA, both profiles, cold (no cache): wall, summed solver time, wall/solver;
* re-verification after an edit of one definition: the whole ISA with a warm proof cache in
  which one hand-written form's definition digest changed (that form alone is derived again).

Profiles are pentium and umip with every CPUID feature the table uses (as the lead's profiles
will be).  Targets (issue 12): whole ISA < 30 s wall on 2 cores, wall/solver <= 1.5, an edit
re-verified in < 1 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

PRELUDE = r"""
import dataclasses, json, sys, time
t0 = time.perf_counter()
from pgvirt.model import profiles
from pgvirt.model.derived import registry, table
from pgvirt.verify.solver import STATS
F = frozenset(table.features()) | {"xsave"}
PROFS = [dataclasses.replace(p, features=p.features | F) for p in (profiles.PENTIUM, profiles.UMIP)]
"""

COLD = PRELUDE + r"""
from pgvirt.verify.popek_goldberg import classify_many
from pgvirt.model import isa
names = [f.name for f in isa.FORMS] if sys.argv[1] == "hand" else list(registry.names())
res = classify_many(PROFS, names, jobs=2)
print(json.dumps({"forms": sum(len(r) for r in res.values()), "queries": STATS.queries,
                  "solver": STATS.seconds, "in_process": time.perf_counter() - t0}))
"""

WARM = PRELUDE + r"""
from pgvirt.verify import cache as C
root, edit = sys.argv[1], sys.argv[2]
cache = C.ClassificationCache(root)
if edit != "-":
    real = C._hand_digest.__wrapped__
    C._hand_digest.cache_clear()
    C._hand_digest = lambda name: real(name) + ("edited" if name == edit else "")
t1 = time.perf_counter()
derived = []
for p in PROFS:
    _, new = C.classifications(p, registry.names(), cache, jobs=2)
    derived += new
print(json.dumps({"derived": derived, "solver": STATS.seconds, "queries": STATS.queries,
                  "in_process": time.perf_counter() - t0, "after_imports": time.perf_counter() - t1}))
"""


def child(code: str, *args: str) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall"] = time.perf_counter() - t0
    return out


def main() -> int:
    base = child(COLD, "hand")
    whole = child(COLD, "all")
    print(f"{'run':34} {'forms':>5} {'queries':>7} {'wall s':>7} {'solver s':>8} {'wall/solver':>11}")
    for name, r in (("hand-written only, cold (baseline)", base), ("whole ISA, cold", whole)):
        print(f"{name:34} {r['forms']:5d} {r['queries']:7d} {r['wall']:7.2f} {r['solver']:8.2f} "
              f"{r['wall'] / r['solver']:11.2f}")
    print(f"whole ISA / baseline wall: {whole['wall'] / base['wall']:.2f} "
          f"for {whole['forms'] / base['forms']:.1f}x the forms")
    with tempfile.TemporaryDirectory() as root:
        fill = child(WARM, root, "-")
        warm = child(WARM, root, "-")
        edit = child(WARM, root, "add_rm32_r32")
    print(f"fill the proof cache: {fill['wall']:.2f} s wall ({len(fill['derived'])} derived)")
    print(f"warm cache, nothing changed: {warm['wall']:.2f} s wall, {warm['after_imports']:.2f} s "
          f"after imports ({len(warm['derived'])} derived)")
    print(f"one definition edited: {edit['wall']:.2f} s wall, {edit['after_imports']:.2f} s after "
          f"imports ({edit['derived']} derived again; solver {edit['solver']:.2f} s); "
          f"edit / warm: {edit['after_imports'] / warm['after_imports']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
