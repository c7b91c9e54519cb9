"""The one solving strategy (``solver.decide``) that the classifier and the site prover share."""

from __future__ import annotations

import z3

from pgvirt.verify import solver
from pgvirt.verify.solver import Result, Verdict, check, decide

X = z3.BitVec("x", 8)


class Recorder:
    """``check`` with a log of (constraints, budget) asked: the budget is the resource limit of a
    first-pass try (``solver.QUICK_RLIMIT``), else the milliseconds."""

    def __init__(self, unknown=()):
        self.asked: list[tuple[list, int]] = []
        self.unknown = [u.sexpr() for u in unknown]

    def __call__(self, cs, ms, rlimit=0):
        self.asked.append((cs, ("rlimit", rlimit) if rlimit else ms))
        if any(c.sexpr() in self.unknown for c in cs) and (rlimit or ms <= solver.QUICK_MS):
            return Result(Verdict.UNKNOWN, None, 0.0, "canceled")
        return check(cs, ms, rlimit)


def test_empty_goal_is_proved_without_asking():
    rec = Recorder()
    r, hit = decide(rec, [X == 1], [], 1000)
    assert r.verdict is Verdict.PROVED and hit is None and rec.asked == []


def test_sat_disjunct_is_returned_and_tried_on_the_short_budget():
    a, b = X == 2, X == 1
    rec = Recorder()
    r, hit = decide(rec, [X == 1], [a, b], 5000)
    assert r.verdict is Verdict.REFUTED and hit is b
    assert r.model.eval(X).as_long() == 1
    assert [ms for _, ms in rec.asked] == [("rlimit", solver.QUICK_RLIMIT)] * 2


def test_every_disjunct_unsat_alone_is_a_proof():
    r, hit = decide(Recorder(), [X == 1], [X == 2, X == 3, X == 4], 5000)
    assert r.verdict is Verdict.PROVED and hit is None
    assert r.reason == "UNSAT: each of 3 ways to differ"


def test_undecided_disjuncts_are_asked_together_on_the_full_budget():
    a, b = X == 2, X == 1
    rec = Recorder(unknown=[b])
    r, hit = decide(rec, [X == 1], [a, b], 5000)
    assert r.verdict is Verdict.REFUTED
    assert z3.is_true(r.model.eval(hit)) and rec.asked[-1][1] == 5000
    rec = Recorder(unknown=[X == 3])
    r, _ = decide(rec, [X == 1], [X == 2, X == 3], 5000)
    assert r.verdict is Verdict.PROVED and r.reason == "UNSAT: all 2 ways to differ"


def test_the_first_pass_budget_is_work_not_time():
    """A first-pass try stops after a fixed amount of the solver's work, whatever the clock: a
    regression (a loaded machine made 300 ms tries time out, so queries gave other witnesses and
    the golden outputs changed from run to run)."""
    y, z = z3.BitVecs("y z", 64)
    hard = [X == 1, z3.And(y * z == 0x123456789ABCDEF1, y > 1, z > 1, y < z)]
    tiny = check(hard, 60_000, rlimit=1000)
    assert tiny.verdict is Verdict.UNKNOWN and "resource limit" in tiny.reason
    assert check([X == 1], 60_000, rlimit=1000).verdict is Verdict.REFUTED
    s = solver.Session([X == 1])
    assert s.check([X == 2], 60_000, rlimit=1000).verdict is Verdict.PROVED
    assert s.check(hard[1:], 60_000, rlimit=1000).verdict is Verdict.UNKNOWN
    assert s.check([X == 1], 60_000).verdict is Verdict.REFUTED      # the limit does not stay


def test_unknown_is_never_proved():
    def never(cs, ms, rlimit=0):
        return Result(Verdict.UNKNOWN, None, 0.0, "timeout")
    r, hit = decide(never, [X == 1], [X == 2, X == 3], 1000)
    assert r.verdict is Verdict.UNKNOWN and hit is None
