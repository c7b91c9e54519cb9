"""Benchmark: replaying every counterexample of a profile on Unicorn.

The witnesses are solved first (not timed).  Then, in this one process and on one Machine:

* all witnesses replayed (``Replayer.replay``: both runs, comparison with the model, deviation
  matching, classification) - target < 1 s;
* one replay against its bare emulator cost, measured on the same states: a Machine restore and
  run of one instruction for each of the two states (``Machine.run``), and, for reference, the raw
  Unicorn ``context_restore`` + ``emu_start`` of the native state - target: replay <= 2x bare.

Ratios are against baselines measured in this run; nothing is compared with stored numbers.

    .venv/bin/python bench/replay.py [--profile pentium] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

from unicorn import x86_const as X

from pgvirt.emulator.replay import Replayer
from pgvirt.verify import counterexample as cx


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="pentium")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    t0 = time.perf_counter()
    viol, _ = cx.violations(args.profile, jobs=args.jobs)
    found = [f for f in cx.find_many(viol, args.profile, jobs=args.jobs) if f["witness"]]
    print(f"[{args.profile}] {len(found)} counterexamples solved in {time.perf_counter() - t0:.1f} s (not timed below)")

    r = Replayer()
    m = r.m
    wit = [(f["name"], f["witness"]) for f in found]
    for name, w in wit:                       # warm: segment set-ups cached, code translated
        r.replay(name, w, cx.criterion_concrete, args.profile)

    def replay_all():
        for name, w in wit:
            r.replay(name, w, cx.criterion_concrete, args.profile)

    def bare_all():
        from pgvirt.model import isa
        for name, w in wit:
            code = isa.get(name).bytes
            m.run(w["native"], code)
            m.run(w["deprivileged"], code)

    all_s = best(replay_all, args.repeat)
    bare_s = best(bare_all, args.repeat)
    outcomes = [r.replay(n, w, cx.criterion_concrete, args.profile).outcome for n, w in wit]
    counts = {o: outcomes.count(o) for o in ("confirmed", "emulator-deviation", "mismatch")}
    print(f"replay of all {len(wit)} witnesses: {all_s * 1e3:.1f} ms  (target < 1000 ms: "
          f"{'met' if all_s < 1 else 'MISSED'})  {counts}")
    print(f"bare restore-and-run of the same {2 * len(wit)} states: {bare_s * 1e3:.1f} ms  ->  "
          f"replay / bare = {all_s / bare_s:.2f}x  (target <= 2x: {'met' if all_s <= 2 * bare_s else 'MISSED'})")

    # one witness in detail: the median form
    name, w = wit[len(wit) // 2]
    from pgvirt.model import isa
    code = isa.get(name).bytes
    reps = 200
    one = best(lambda: [r.replay(name, w, cx.criterion_concrete, args.profile) for _ in range(reps)],
               args.repeat) / reps
    bare = best(lambda: [(m.run(w["native"], code), m.run(w["deprivileged"], code))
                         for _ in range(reps)], args.repeat) / reps
    # raw Unicorn: restore the context the Machine keeps for the native state and run once
    m.load(w["native"], code)
    ctx = m.uc.context_save()
    pc = w["native"]["cs_base"] + w["native"]["eip"]
    uc = m.uc

    def raw():
        for _ in range(reps):
            uc.context_restore(ctx)
            uc.emu_start(uc.reg_read(X.UC_X86_REG_EIP), pc + len(code), count=1)
    raw_s = best(raw, args.repeat) / reps
    print(f"one replay ({name}): {one * 1e6:.0f} us; bare Machine restore+run of its two states: "
          f"{bare * 1e6:.0f} us -> {one / bare:.2f}x; for reference, raw Unicorn "
          f"context_restore + emu_start of one state: {raw_s * 1e6:.0f} us")

if __name__ == "__main__":
    main()
