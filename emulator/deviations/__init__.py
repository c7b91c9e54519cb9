"""Deviation tables: where each oracle departs from the SDM, one table per oracle.

``unicorn`` (Unicorn 2.1.4), ``bochs`` (Bochs 2.7), ``bochs-vmx`` / ``bochs-svm`` (Bochs 2.7's VMX and
SVM, the vtx and svm profiles' replays) and ``qemu`` (QEMU TCG): each entry with a
minimal reproduction the tests run (``base`` has the shared classes).  ``table(oracle)`` is an
oracle's table.  The names this package exported before the tables were split - ``DEVIATIONS``,
``BY_ID``, ``explain``, ``present``, ``Diff``, ``Observation``, ``Deviation`` - are Unicorn's, so
existing callers keep working.
"""

from __future__ import annotations

from .base import Deviation, Diff, Observation
from .unicorn import BY_ID, DEVIATIONS, explain, present

__all__ = ["BY_ID", "DEVIATIONS", "Deviation", "Diff", "Observation", "explain", "present",
           "table", "by_id", "triggers"]


def table(oracle: str) -> tuple[Deviation, ...]:
    """The deviation table of ``oracle`` ("unicorn", "bochs", "bochs-vmx", "bochs-svm", "qemu")."""
    if oracle == "unicorn":
        return DEVIATIONS
    if oracle == "bochs":
        from .bochs import DEVIATIONS as t
        return t
    if oracle == "bochs-vmx":
        from .bochs_vmx import DEVIATIONS as t
        return t
    if oracle == "bochs-svm":
        from .bochs_svm import DEVIATIONS as t
        return t
    if oracle == "qemu":
        from .qemu import DEVIATIONS as t
        return t
    raise KeyError(f"no deviation table for oracle {oracle!r}")


def by_id(oracle: str) -> dict[str, Deviation]:
    return {d.id: d for d in table(oracle)}


def triggers(oracle: str) -> list[tuple[str, object]]:
    """(id, trigger) of every entry of ``oracle``'s table that has one: what the counterexample
    query avoids to find witnesses this oracle can replay (``verify.counterexample.steering``)."""
    return [(d.id, d.trigger) for d in table(oracle) if d.trigger is not None]
