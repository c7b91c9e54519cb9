"""Benchmark: model-versus-Unicorn checks per second on 2 cores (target >= 500).

Baselines measured in the same run, on states from the same generator:

* the emulator alone: ``Machine.run`` of the states, one process (the floor a check cannot beat);
* the model through ``Form.execute`` (Z3 terms built and evaluated per state), one process: what a
  cross-check would cost without the compiled model (``pgvirt.model.concrete``);
* the cross-check in one process, then in 2 worker processes (one Machine each).

    .venv/bin/python bench/crosscheck.py [--samples 40] [--jobs 2]
"""

from __future__ import annotations

import argparse
import random
import time

from pgvirt.emulator import crosscheck as C
from pgvirt.emulator import strategies
from pgvirt.emulator.machine import Machine, StateError
from pgvirt.model import concrete, isa


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=40, help="states per form for the 2-process sweep")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    forms = [f.name for f in isa.FORMS]
    for f in isa.FORMS:                               # compile once, as every worker would
        for p in C.PROFILES:
            concrete.compiled(f, p.features)

    rng = random.Random(1)
    states = []
    for name in forms:
        for _ in range(5):
            p = C.PROFILES[rng.randrange(2)]
            states.append((isa.get(name), p, strategies.generate(strategies.RandomDraw(rng), isa.get(name), p)))

    m = Machine()
    t0 = time.perf_counter()
    n = 0
    for form, _, s in states:
        try:
            m.run(s, form.bytes)
            n += 1
        except StateError:
            pass
    emu_rate = n / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    k = 0
    for form, p, s in states[::25]:
        form.execute(s, features=p.features)
        k += 1
    exe_rate = k / (time.perf_counter() - t0)

    ck = C.Checker(m)
    t0 = time.perf_counter()
    c = 0
    for form, p, s in states:
        if ck.check(form, p, s).verdict != "skipped":
            c += 1
    one_rate = c / (time.perf_counter() - t0)

    rep = C.crosscheck(forms, args.samples, seed=7, jobs=args.jobs)
    print(f"emulator alone (Machine.run, 1 process):       {emu_rate:8.0f} runs/s")
    print(f"model via Form.execute (Z3, 1 process):        {exe_rate:8.1f} states/s")
    print(f"cross-check, 1 process:                        {one_rate:8.0f} checks/s  "
          f"= {one_rate / emu_rate:.2f}x the emulator alone, {one_rate / exe_rate:.0f}x Form.execute")
    print(f"cross-check, {rep.jobs} processes ({rep.checks} checks): {rep.rate:8.0f} checks/s  "
          f"= {rep.rate / one_rate:.2f}x one process; target >= 500: {'met' if rep.rate >= 500 else 'MISSED'}"
          f"; unexplained {rep.unexplained}")


if __name__ == "__main__":
    main()
