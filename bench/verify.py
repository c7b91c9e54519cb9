"""Benchmark: classify every form under each profile, cold, in a fresh process.

Prints per profile and for both together (what `pgvirt verify --all-profiles` does): forms,
solver queries, wall time cold (a fresh process, imports included), summed solver time (the
baseline, measured in the same run) and the ratios wall/solver and wall/(solver per core).
Targets: both profiles under 10 s wall on 2 cores; overhead over summed solver time <= 1.5x.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from pgvirt.verify.popek_goldberg import classify_many
from pgvirt.verify.solver import STATS
res = classify_many(sys.argv[2:], jobs=int(sys.argv[1]))
wall = time.perf_counter() - t0
print(json.dumps({"forms": sum(len(r) for r in res.values()), "queries": STATS.queries,
                  "solver": STATS.seconds, "wall_in_process": wall}))
"""


def run(profiles: list[str], jobs: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, str(jobs), *profiles], capture_output=True,
                       text=True, check=True)
    wall = time.perf_counter() - t0
    out = json.loads(p.stdout)
    out["wall"] = wall
    return out


def main() -> int:
    jobs = 2
    print(f"{'profiles':13} {'forms':>5} {'queries':>7} {'wall cold s':>11} {'solver s':>9} "
          f"{'wall/solver':>11} {'wall/(solver/jobs)':>18}")
    for profiles in (["pentium"], ["umip"], ["pentium", "umip"]):
        r = run(profiles, jobs)
        per_core = r["solver"] / jobs
        print(f"{'+'.join(profiles):13} {r['forms']:5d} {r['queries']:7d} {r['wall']:11.2f} "
              f"{r['solver']:9.2f} {r['wall'] / r['solver']:11.2f} {r['wall'] / per_core:18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
