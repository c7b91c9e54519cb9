"""One solver factory and the tri-state verdict.

Every query goes through ``check``: a fresh solver with a fixed seed and a timeout.  UNSAT is a
proof (PROVED), SAT comes with a model (REFUTED, the model is the witness), anything else is
UNKNOWN and is never read as a proof.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import z3

DEFAULT_TIMEOUT_MS = 20_000
# The solving strategy's first pass (``decide``): each disjunct of a goal on a short budget
# counted in Z3's resource units (``rlimit``, relative to each check), not in milliseconds: which
# disjuncts the first pass decides, hence which witness a query gives, must not depend on how
# loaded the machine is.  About 0.3 s of one core here; the full budget stays the wall clock's.
QUICK_RLIMIT = 3_000_000
QUICK_MS = 300      # the share a disjunct gets at least when the whole goal was undecided
SEED = 0
# Ctrl-C.  Z3's own handler would cancel a check and swallow the signal when the check still
# ends sat or unsat, so Z3 never sees it (ctrl_c = false).  ``interruptible`` installs pgvirt's:
# it records the interrupt, raises KeyboardInterrupt as Python's does, and a watcher thread
# that learns of SIGINT the moment it arrives (signal.set_wakeup_fd) interrupts the solvers
# checking then.  A KeyboardInterrupt raised while Python runs a finalizer is swallowed there,
# so every check raises it again while the interrupt is recorded (``stop_if_interrupted``), and
# the finalizers' complaints about objects half-built when it struck are silenced.  Worker
# processes ignore SIGINT: the parent stops them (``in_worker``, ``pgvirt.model.parallel``).
_CHECKING: set = set()
_WATCHING = False
INTERRUPTED = False


def in_worker() -> None:
    """Initializer of a solving worker process: Ctrl-C is the parent's to handle."""
    global _WATCHING
    _WATCHING = True      # nothing to watch: SIGINT is ignored here


def stop_if_interrupted() -> None:
    if INTERRUPTED:
        raise KeyboardInterrupt


def interruptible() -> None:
    """Make Ctrl-C stop a running check at once (call once, from the main thread)."""
    global _WATCHING
    import os
    import signal
    import sys
    import threading

    if _WATCHING or threading.current_thread() is not threading.main_thread():
        return

    def on_sigint(signum, frame):
        global INTERRUPTED
        INTERRUPTED = True
        sys.unraisablehook = lambda unraisable: None
        raise KeyboardInterrupt

    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.signal(signal.SIGINT, on_sigint)
    signal.set_wakeup_fd(w)

    def watch() -> None:
        while True:
            got = os.read(r, 64)
            if not got:
                return
            if signal.SIGINT in got:
                for s in list(_CHECKING):
                    s.interrupt()

    threading.Thread(target=watch, name="pgvirt-interrupt", daemon=True).start()
    _WATCHING = True


class Verdict(enum.Enum):
    PROVED = "proved"      # the query is UNSAT
    REFUTED = "refuted"    # the query is SAT; a witness exists
    UNKNOWN = "unknown"    # timeout or incomplete answer


@dataclass
class Result:
    verdict: Verdict
    model: z3.ModelRef | None
    seconds: float
    reason: str = ""


class Stats:
    """Counts queries and summed solver time (for the benchmark's overhead ratio)."""

    def __init__(self) -> None:
        self.queries = 0
        self.seconds = 0.0

    def add(self, seconds: float) -> None:
        self.queries += 1
        self.seconds += seconds


STATS = Stats()


def make_solver(timeout_ms: int) -> z3.Solver:
    s = z3.SolverFor("QF_ABV")
    s.set("timeout", int(timeout_ms))
    s.set("random_seed", SEED)
    s.set("ctrl_c", False)
    return s


def check(constraints, timeout_ms: int = DEFAULT_TIMEOUT_MS, rlimit: int = 0) -> Result:
    """Is the conjunction of ``constraints`` satisfiable?  ``rlimit``: a resource budget as well
    as the time (0: none)."""
    s = make_solver(timeout_ms)
    if rlimit:
        s.set("rlimit", int(rlimit))
    s.add(*constraints)
    return _run(s)


def _run(s: z3.Solver) -> Result:
    """Check ``s`` once, timed and counted."""
    stop_if_interrupted()
    t0 = time.perf_counter()
    _CHECKING.add(s)
    try:
        r = s.check()
    finally:
        _CHECKING.discard(s)
    stop_if_interrupted()
    dt = time.perf_counter() - t0
    STATS.add(dt)
    if r == z3.unsat:
        return Result(Verdict.PROVED, None, dt)
    if r == z3.sat:
        return Result(Verdict.REFUTED, s.model(), dt)
    return Result(Verdict.UNKNOWN, None, dt, s.reason_unknown())


LOGIC = "QF_ABV"


def smtlib(constraints, status: str, name: str) -> str:
    """The query as a portable SMT-LIB 2 script carrying Z3's answer, for another solver to re-check.

    Z3's own text gets a logic, loses its placeholder ``(set-info :status unknown)`` so the one
    status left is the answer, and ends with ``(check-sat)``.
    """
    s = z3.Solver()
    s.add(*constraints)
    body = [ln for ln in s.to_smt2().splitlines()
            if ln != "(set-info :status unknown)" and ln != "(check-sat)"]
    head = [f"; pgvirt proof obligation {name}", f"(set-info :status {status})", f"(set-logic {LOGIC})"]
    return "\n".join(head + body + ["(check-sat)", "(exit)", ""])


def decide(check, base: list, goal: list, timeout_ms: int) -> tuple[Result, object]:
    """Can ``base`` hold with some disjunct of ``goal``?  ``check(constraints, ms)`` asks the
    solver (a fresh one, or a Session); the answer and, for SAT, the formula the model satisfies
    (one disjunct, or the disjunction of the undecided ones), which a witness is re-solved with.

    The disjuncts are tried one at a time first, each on a short budget of solver work
    (``QUICK_RLIMIT``, so the same disjuncts are decided however loaded the machine is): one
    disjunct has a much smaller cone of influence than the whole goal, and SAT for one is SAT.
    The undecided ones are then asked together on the full (wall-clock) budget; a disjunction
    can be harder than each of its parts, so if that is undecided too each part gets a share of
    the budget.  An empty goal is UNSAT as it stands.  ``check(constraints, ms, rlimit=0)``.
    """
    if not goal:
        return Result(Verdict.PROVED, None, 0.0, "the goal is false: no field can differ"), None
    quick = min(timeout_ms, QUICK_MS)
    spent, pending = 0.0, []
    parts = goal if len(goal) > 1 else []
    for part in parts:
        r = check(base + [part], timeout_ms, rlimit=QUICK_RLIMIT)
        spent += r.seconds
        if r.verdict is Verdict.REFUTED:
            r.seconds = spent
            return r, part
        if r.verdict is Verdict.UNKNOWN:
            pending.append(part)
    if parts and not pending:
        return Result(Verdict.PROVED, None, spent, f"UNSAT: each of {len(parts)} ways to differ"), None
    whole = z3.Or(pending or goal)
    r = check(base + [whole], timeout_ms)
    r.seconds += spent
    if r.verdict is Verdict.PROVED:
        r.reason = f"UNSAT: all {len(goal)} ways to differ"
    elif r.verdict is Verdict.UNKNOWN and len(pending) > 1:
        share = max(quick, timeout_ms // len(pending))
        proved = 0
        for part in pending:
            rp = check(base + [part], share)
            r.seconds += rp.seconds
            if rp.verdict is Verdict.REFUTED:
                rp.seconds = r.seconds
                return rp, part
            proved += rp.verdict is Verdict.PROVED
        if proved == len(pending):
            return Result(Verdict.PROVED, None, r.seconds,
                          f"UNSAT: each of {len(pending)} undecided ways to differ, alone"), None
    return r, (whole if r.verdict is Verdict.REFUTED else None)


class Session:
    """An incremental solver holding constraints shared by several queries.

    ``base`` is asserted once; each ``check`` adds its own constraints in a push/pop scope.  For
    the many small queries of one form this is several times faster than a fresh solver each.
    """

    def __init__(self, base, timeout_ms: int = DEFAULT_TIMEOUT_MS):
        self.solver = make_solver(timeout_ms)
        self.solver.add(*base)

    def check(self, constraints, timeout_ms: int, rlimit: int = 0) -> Result:
        s = self.solver
        s.push()
        try:
            s.set("timeout", int(timeout_ms))
            s.set("rlimit", int(rlimit))
            s.add(*constraints)
            return _run(s)
        finally:
            s.pop()
