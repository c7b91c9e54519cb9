"""The one solving strategy (``solver.decide``) that the classifier and the site prover share."""

from __future__ import annotations

import z3

from pgvirt.verify import solver
from pgvirt.verify.solver import Result, Verdict, check, decide

X = z3.BitVec("x", 8)


class Recorder:
    """``check`` with a log of (constraints, budget) asked."""

    def __init__(self, unknown=()):
        self.asked: list[tuple[list, int]] = []
        self.unknown = [u.sexpr() for u in unknown]

    def __call__(self, cs, ms):
        self.asked.append((cs, ms))
        if any(c.sexpr() in self.unknown for c in cs) and ms <= solver.QUICK_MS:
            return Result(Verdict.UNKNOWN, None, 0.0, "timeout")
        return check(cs, ms)


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
    assert [ms for _, ms in rec.asked] == [solver.QUICK_MS, solver.QUICK_MS]


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


def test_unknown_is_never_proved():
    def never(cs, ms):
        return Result(Verdict.UNKNOWN, None, 0.0, "timeout")
    r, hit = decide(never, [X == 1], [X == 2, X == 3], 1000)
    assert r.verdict is Verdict.UNKNOWN and hit is None
