"""Benchmark: `pgvirt verify`'s work, cold, in a fresh process per run: every form (hand-written
and derived) classified under a profile, against the hand-written forms alone (the baseline,
measured in the same run).

Per run: forms, solver queries, wall time cold (imports included), CPU time (the process and its
workers), summed solver time, and the ratios wall/solver and whole ISA / hand-written.  The
machine is shared (2 cores, other people's tests): the load average is printed, and CPU time is
the figure that load does not inflate; wall on 2 free cores is about CPU / 2.  Targets (issue 12):
whole ISA under pentium < 30 s wall on 2 cores; wall/solver <= 1.5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from pgvirt.model import isa
from pgvirt.model.derived import registry
from pgvirt.verify.popek_goldberg import classify_many
from pgvirt.verify.solver import STATS
names = [f.name for f in isa.FORMS] if sys.argv[2] == "hand" else list(registry.names())
res = classify_many(sys.argv[3:], names, jobs=int(sys.argv[1]), witnesses=False)
wall = time.perf_counter() - t0
cpu = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                           resource.getrusage(resource.RUSAGE_CHILDREN)))
print(json.dumps({"forms": sum(len(r) for r in res.values()), "queries": STATS.queries,
                  "solver": STATS.seconds, "cpu": cpu, "wall_in_process": wall}))
"""


def run(which: str, profiles: list[str], jobs: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, str(jobs), which, *profiles], capture_output=True,
                       text=True, check=True)
    out = json.loads(p.stdout)
    out["wall"] = time.perf_counter() - t0
    return out


def main() -> int:
    jobs = 2
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"{'profile':9} {'forms':12} {'n':>5} {'queries':>7} {'wall s':>7} {'cpu s':>6} {'solver s':>8} "
          f"{'wall/solver':>11}")
    for prof in ("pentium", "umip"):
        got = {}
        for which in ("hand", "all"):
            r = got[which] = run(which, [prof], jobs)
            print(f"{prof:9} {'hand-written' if which == 'hand' else 'whole ISA':12} {r['forms']:5d} "
                  f"{r['queries']:7d} {r['wall']:7.2f} {r['cpu']:6.2f} {r['solver']:8.2f} "
                  f"{r['wall'] / r['solver']:11.2f}")
        h, a = got["hand"], got["all"]
        print(f"{prof:9} whole ISA / hand-written: wall {a['wall'] / h['wall']:.2f}, cpu "
              f"{a['cpu'] / h['cpu']:.2f} for {a['forms'] / h['forms']:.1f}x the forms")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
