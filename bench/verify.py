"""Benchmark: classify every form under each profile, cold, in a fresh process.

Prints per profile: forms, solver queries, wall time cold (process start to last verdict, imports
included), summed solver time, and their ratio (the overhead over the solver: target <= 1.5x;
wall target < 10 s per profile on 2 cores).  The baseline (solver time) is measured in the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from pgvirt.verify.popek_goldberg import classify_all, theorem
from pgvirt.verify.solver import STATS
from pgvirt.model import isa
res = classify_all(sys.argv[1], jobs=int(sys.argv[2]))
wall = time.perf_counter() - t0
print(json.dumps({"forms": len(res), "queries": STATS.queries, "solver": STATS.seconds,
                  "wall_in_process": wall, "t1": theorem("1", res).verdict}))
"""


def run(profile: str, jobs: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, profile, str(jobs)], capture_output=True,
                       text=True, check=True)
    wall = time.perf_counter() - t0
    out = json.loads(p.stdout)
    out["wall"] = wall
    return out


def main() -> int:
    jobs = 2
    print(f"{'profile':8} {'forms':>5} {'queries':>7} {'wall cold s':>11} {'solver s':>9} "
          f"{'solver/core s':>13} {'wall/(solver/jobs)':>18}")
    for profile in ("pentium", "umip"):
        r = run(profile, jobs)
        per_core = r["solver"] / jobs
        ratio = r["wall"] / per_core if per_core else float("inf")
        print(f"{profile:8} {r['forms']:5d} {r['queries']:7d} {r['wall']:11.2f} {r['solver']:9.2f} "
              f"{per_core:13.2f} {ratio:18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
