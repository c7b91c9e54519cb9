"""Unicorn behind the oracle protocol: today's ``Machine``, one case at a time.

Each case runs on one long-lived ``Machine`` (a saved context restored before every run), bounded
by its one-instruction stop and ``machine.Watchdog``'s wall-clock limit.  Unicorn reads back
every field but ``machine.NOT_HELD`` (carried from the input), and its hooks say which addresses
and ports the run touched.
"""

from __future__ import annotations

from typing import Sequence

from ..machine import NOT_HELD, IncompleteRun, Machine, StateError
from .protocol import Case, Result


class UnicornOracle:
    name = "unicorn"
    cpu = "Unicorn 2.1 (QEMU 5.0 TCG)"
    not_held = NOT_HELD

    def __init__(self, machine: Machine | None = None, seconds: float = 2.0):
        from ..machine import Watchdog
        self.m = machine or Machine()
        self.bounded = Watchdog(self.m, seconds)

    def run_one(self, case: Case) -> Result:
        try:
            out = self.bounded.run(case.state, case.code, mem=case.mem, io=case.io)
        except StateError as e:
            return Result(refused=f"the Machine refuses it: {e}")
        except IncompleteRun as e:
            return Result(refused=str(e))
        last = self.m.last
        return Result(out, touched=frozenset(last.reads | last.writes),
                      ports=frozenset(last.ports_in | last.ports_out))

    def run(self, cases: Sequence[Case]) -> list[Result]:
        return [self.run_one(c) for c in cases]
