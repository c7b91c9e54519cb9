"""Benchmark: Bochs's VMX as an oracle (the test kernel's VMX mode), one process, one core.

Measured in one run on the same non-root states (``vmxreplay.guest_state``, every hand-written
form in turn, under the vtx profile's default controls):

* states per minute on ``BochsVMX`` (many cases per boot), and the batched protected-mode Bochs
  oracle on the same states (its own harness, the umip CPU model ``tigerlake``) as the baseline:
  the ratio is what VMX operation costs the harness;
* the same VMX cases one boot per state, and the ratio of a batched boot to it.

    .venv/bin/python bench/oracles_vmx.py [--states 1500] [--single 10]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

from pgvirt.emulator import vmxreplay as VR
from pgvirt.emulator.oracles import make, model_case, unavailable
from pgvirt.emulator.oracles.bochs import BochsVMX
from pgvirt.model import concrete, isa, profiles


def cases_for(n: int) -> list:
    vtx = profiles.get("vtx")
    out, k = [], 0
    forms = list(isa.FORMS)
    rng = random.Random(1)
    while len(out) < n:
        f = forms[k % len(forms)]
        k += 1
        s = VR.guest_state(rng, f, vtx)
        run = concrete.compiled(f, vtx.features, f.bytes, vtx.vm).evaluate(s)
        if run.assumed and run.in_segments:
            out.append(replace(model_case(f, s, run), controls=vtx.vm))
    return out


def timed(oracle, cases) -> tuple[float, int]:
    t0 = time.perf_counter()
    res = oracle.run(cases)
    return time.perf_counter() - t0, sum(r.outcome is not None for r in res)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--states", type=int, default=1500)
    ap.add_argument("--single", type=int, default=10)
    args = ap.parse_args()
    if unavailable("bochs"):
        print(f"bochs: skipped ({unavailable('bochs')})")
        return
    cases = cases_for(args.states)
    vm = BochsVMX("vtx")
    vm.caps()                                   # the capability probe is a boot of its own
    secs, ran = timed(vm, cases)
    rate = len(cases) / secs * 60
    print(f"bochs vmx:       {len(cases)} states in {secs:.1f} s = {rate:,.0f} states/min "
          f"({ran} ran, {vm.stats['boots'] - 1} boots)")
    plain = make("bochs", "umip")
    flat = [replace(c, controls=None) for c in cases]
    psecs, pran = timed(plain, flat)
    prate = len(flat) / psecs * 60
    print(f"bochs protected: {len(flat)} states in {psecs:.1f} s = {prate:,.0f} states/min "
          f"({pran} ran, {plain.stats['boots']} boots)")
    print(f"vmx / protected: {rate / prate:.2f}")
    one = cases[:args.single]
    t0 = time.perf_counter()
    for c in one:
        vm.run([c])
    single = len(one) / (time.perf_counter() - t0) * 60
    print(f"bochs vmx, one boot per state: {single:,.0f} states/min; batched / single: {rate / single:.0f}x")


if __name__ == "__main__":
    main()
