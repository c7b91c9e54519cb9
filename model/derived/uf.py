"""The uninterpreted functions derived semantics are made of, declared once per name and sorts
(shared by the forms and by the data faults of ``faults``)."""

from __future__ import annotations

import z3

_DECLS: dict[tuple, z3.FuncDeclRef] = {}


def function(name: str, inputs: list, result: z3.SortRef) -> z3.FuncDeclRef:
    """The uninterpreted function ``name`` over the inputs' sorts (declared once)."""
    key = (name, tuple(t.sort().get_id() for t in inputs), result.get_id())
    f = _DECLS.get(key)
    if f is None:
        f = _DECLS[key] = z3.Function(name, *[t.sort() for t in inputs], result)
    return f
