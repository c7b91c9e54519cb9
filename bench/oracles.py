"""Benchmark: the full-system oracles (Bochs, QEMU) on one core, and the Dask sweep on two.

Measured in one run, on states from the cross-check's generator (``sweep.sample``):

* states per minute per oracle, many cases per boot (the test kernel's batches), one process;
* the same cases one boot per state (the baseline a batched harness must beat), and the ratio;
* a cross-check sweep (model versus Bochs and QEMU) serially and on a 2-worker Dask
  ``LocalCluster``, and the ratio (target >= 1.6 on this 2-core machine).

    .venv/bin/python bench/oracles.py [--states 2000] [--single 20] [--sweep 60]
"""

from __future__ import annotations

import argparse
import resource
import time

from pgvirt.emulator import sweep
from pgvirt.emulator.oracles import FULL_SYSTEM, make, model_case, unavailable
from pgvirt.model import concrete, isa


def cases_for(n: int, profile: str = "pentium") -> list:
    """``n`` cases over every form, the sweep's own states, all of ``profile``."""
    out, k = [], 0
    forms = [f.name for f in isa.FORMS]
    while len(out) < n:
        name = forms[k % len(forms)]
        p, s = sweep.sample(name, k // len(forms), 1)
        k += 1
        if p.name != profile:
            continue
        form = isa.get(name)
        run = concrete.compiled(form, p.features).evaluate(s)
        if run.assumed and run.in_segments:
            out.append(model_case(form, s, run))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--states", type=int, default=2000, help="cases for the batched runs")
    ap.add_argument("--single", type=int, default=20, help="cases booted one at a time")
    ap.add_argument("--sweep", type=int, default=60, help="samples per form for the sweep")
    args = ap.parse_args()
    names = [o for o in FULL_SYSTEM if unavailable(o) is None]
    for o in FULL_SYSTEM:
        if o not in names:
            print(f"{o}: skipped ({unavailable(o)})")
    cases = cases_for(args.states)
    for o in names:
        orc = make(o, "pentium")
        orc.run(cases[:5])                                 # warm: first boot, kernel build
        t0, c0 = time.perf_counter(), _cpu()
        res = orc.run(cases)
        batched, cpu = time.perf_counter() - t0, _cpu() - c0
        ran = sum(r.outcome is not None for r in res)
        t0 = time.perf_counter()
        for c in cases[:args.single]:
            orc.run([c])
        single = (time.perf_counter() - t0) / args.single
        rate = len(cases) / batched * 60
        print(f"{o} ({orc.cpu}): {len(cases)} states in {batched:.1f} s = {rate:,.0f} states/min "
              f"wall, {len(cases) / cpu * 60:,.0f} per CPU-minute (emulator + harness, {cpu:.1f} s), "
              f"{orc.stats['boots']} boots, {ran} run / {len(cases) - ran} refused; "
              f"one boot per state {single:.3f} s = {60 / single:,.0f} states/min; "
              f"batched / one-boot = {rate / (60 / single):.0f}x")
    if names:
        forms = [f.name for f in isa.FORMS]
        t0 = time.perf_counter()
        serial = sweep.crosscheck(forms, args.sweep, 3, names, jobs=1)
        ts = time.perf_counter() - t0
        t0 = time.perf_counter()
        dask = sweep.crosscheck(forms, args.sweep, 3, names, jobs=2, cluster="local")
        td = time.perf_counter() - t0
        same = _strip(serial.as_json()) == _strip(dask.as_json())
        print(f"sweep model versus {'+'.join(names)}: {serial.checks} checks; serial {ts:.1f} s, "
              f"2-worker LocalCluster {td:.1f} s: {ts / td:.2f}x (target >= 1.6); same report: {same}")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the emulators)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("seconds", "workers")}


if __name__ == "__main__":
    main()
