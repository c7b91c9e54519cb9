"""Building blocks of the full-system reproductions: states, cases, and what a Result shows.

``state(cpl, **fields)`` is ``states.flat_state`` with a GDT limit that leaves the test kernel room
for its catch descriptors; ``case(form, state, code=None)`` is the model's Case of it (footprint,
prediction and landings, as the cross-check builds them).
"""

from __future__ import annotations

from pgvirt.model import concrete, isa
from pgvirt.model.outcome import Fault, Next

from .. import states as S  # noqa: F401  (the harness's reproductions use it through R.S)
from ..oracles import model_case

GDT_LIMIT = 0x3FF      # flat_state's GDT is full; the kernel needs free slots below the limit


def state(cpl: int = 3, **fields) -> dict:
    fields.setdefault("gdtr_limit", GDT_LIMIT)
    return S.flat_state(cpl, **fields)


def gdt(s: dict, selector: int, data: bytes) -> dict:
    """``data`` at the GDT entry of ``selector`` (flat_state's GDT at states.GDT_BASE)."""
    S.put(s["mem"], S.GDT_BASE + (selector & ~7), data)
    return s


def case(form: str, s: dict, code: bytes | None = None, features=frozenset()):
    f = isa.get(form)
    comp = concrete.compiled(f, features, code)
    c = model_case(f, s, comp.evaluate(s))
    if code is not None:
        from dataclasses import replace
        c = replace(c, code=bytes(code))
    return c


def faults(r, vector: int | None = None, code: int | None = None) -> bool:
    o = r.outcome
    return isinstance(o, Fault) and (vector is None or o.vector == vector) and \
        (code is None or o.code == code)


def completes(r) -> bool:
    return isinstance(r.outcome, Next)


def post(r) -> dict:
    return r.outcome.state if isinstance(r.outcome, Next) else {}


def msr_cases():
    """RDMSR of IA32_APIC_BASE: an MSR every full-system emulator implements and the model not."""
    return [case("rdmsr", state(0, ecx=0x1B))]
