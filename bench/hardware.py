"""Benchmark: the hardware profiles, cold, in fresh processes.

For each of vtx and svm: the whole ISA, hand-written and derived forms, classified (target < 30 s
wall on 2 cores) and the
controls search ``pgvirt controls`` (target < 2 min), each against a baseline measured in the
same run: the pentium classification of the whole ISA, cold, the same way.  The controls search
runs over the forms ``pgvirt verify`` checks (the hand-written ones).  Printed: forms,
solver queries, wall time, summed solver time, and the ratios wall/solver and wall/baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CLASSIFY = r"""
import json, sys, time
t0 = time.perf_counter()
from pgvirt.model.derived import registry
from pgvirt.verify.popek_goldberg import classify_many
from pgvirt.verify.solver import STATS
res = classify_many([sys.argv[2]], list(registry.names()), jobs=int(sys.argv[1]))
print(json.dumps({"forms": sum(len(r) for r in res.values()), "queries": STATS.queries,
                  "solver": STATS.seconds}))
"""

SEARCH = r"""
import json, sys
from pgvirt.model import profiles
from pgvirt.verify import controls
from pgvirt.verify.solver import STATS
s = controls.search(profiles.get(sys.argv[2]), jobs=int(sys.argv[1]))
print(json.dumps({"forms": sum(r.reasked for r in s.results), "queries": STATS.queries,
                  "solver": STATS.seconds, "baseline": s.baseline, "minimal": len(s.minimal)}))
"""


def run(code: str, profile: str, jobs: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, str(jobs), profile], capture_output=True, text=True,
                       check=True)
    out = json.loads(p.stdout)
    out["wall"] = time.perf_counter() - t0
    return out


def main() -> int:
    jobs = 2
    base = run(CLASSIFY, "pentium", jobs)
    print(f"{'run':22} {'forms':>6} {'queries':>7} {'wall s':>8} {'solver s':>9} {'wall/solver':>11} "
          f"{'wall/baseline':>13} {'target s':>8}")

    def row(name, r, target):
        ratio = r["wall"] / r["solver"] if r["solver"] else float("inf")
        print(f"{name:22} {r['forms']:6d} {r['queries']:7d} {r['wall']:8.2f} {r['solver']:9.2f} "
              f"{ratio:11.2f} {r['wall'] / base['wall']:13.2f} {target:>8}")
    row("pentium (baseline)", base, "-")
    for p in ("vtx", "svm"):
        row(f"{p} classify", run(CLASSIFY, p, jobs), 30)
    for p in ("vtx", "svm"):
        row(f"{p} controls", run(SEARCH, p, jobs), 120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
