"""Events that are not instructions: maskable interrupts and exceptions delivered to a guest.

Unicorn never consults the IDT, so a monitor (``pgvirt.monitor``) delivers every interrupt and
every exception itself, for the native run too, with the definition here.  Delivery is written
once, in ``isa.transfers.deliver`` (the semantics of INT n); an event differs from INT n only as
the SDM says (Vol. 3A 6.12.1.1, 6.13): no gate-DPL check, EXT = 1 in the error codes of delivery
faults, the return address is the current EIP, and an exception with an error code pushes it.
A maskable interrupt is recognized only while EFLAGS.IF = 1 (Vol. 3A 6.8.1) and not in the
instruction shadow of STI, MOV SS or POP SS (Vol. 2B STI; Vol. 3A 6.8.3).

An ``Event`` looks like a form to ``concrete.compile_outcome`` (``name``, ``bytes``, ``run``), so
a monitor evaluates it compiled, on plain-integer states, exactly as it evaluates instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

import z3

from . import concrete
from . import state as st
from .encoding import Decoded
from .form import Exec
from .outcome import AC, BP, DE, DF, GP, NP, OF, PF, SS, TS, Outcome
from .state import State

# Exceptions that push an error code (SDM Vol. 3A 6.13, Table 6-1); the others push none.
WITH_ERROR_CODE = frozenset({DF, TS, NP, SS, GP, PF, AC})

# Double-fault classes (SDM Vol. 3A 6.15, Interrupt 8, Tables 6-4 and 6-5).
CONTRIBUTORY = frozenset({DE, TS, NP, SS, GP})
PAGE_FAULTS = frozenset({PF})

# Instructions after which maskable interrupts wait one more instruction: STI (SDM Vol. 2B STI,
# "delays recognition of interrupts until the end of the next instruction") and the loads of SS
# (Vol. 3A 6.8.3, so that SS and ESP change together).  Named by form.
SHADOW_FORMS = frozenset({"sti", "mov_ss_r", "mov_ss_m", "pop_ss"})

# Interruption types (SDM Vol. 3C 24.8.3, 24.9.2): how VMX names the source of an event.
HARDWARE_EXCEPTION, SOFTWARE_INTERRUPT, PRIVILEGED_SOFTWARE_EXCEPTION, SOFTWARE_EXCEPTION = 3, 4, 5, 6
EXTERNAL_INTERRUPT = 0

# The instructions whose exception is a software exception: INT3 and INTO (type 6) and INT1
# (ICEBP, type 5).  Unlike INT n (a software interrupt, type 4, which never consults it), the
# exception bitmap applies to them (Vol. 3C 25.2), and they are traps: the return address is the
# next instruction (Vol. 3A 6.5, Table 6-1; Vol. 2A INT n/INTO/INT3/INT1).  Named by form; the
# vector each raises is its definition's (``raised_vector``).
SOFTWARE_EXCEPTIONS = {"int3": SOFTWARE_EXCEPTION, "into": SOFTWARE_EXCEPTION,
                       "int1": PRIVILEGED_SOFTWARE_EXCEPTION}


@dataclass(frozen=True)
class Event:
    """One event source delivered through the IDT: a maskable interrupt (``error_code`` None,
    ``exception`` False) or an exception with or without an error code."""

    name: str
    vector: int
    exception: bool
    error_code: int | None
    cite: str
    bytes: bytes = b""          # an event has no encoding: ``compile_outcome`` reads this

    def run(self, s: State, code: bytes | None = None, features: frozenset[str] = frozenset(),
            record: bool = False) -> Outcome:
        """As ``Form.run``; ``record`` notes the segment-relative accesses (the frame pushes)."""
        from .isa.transfers import deliver

        # Length 0: the "next instruction" of an event is the current EIP (the return address).
        x = Exec(self, s, Decoded(length=0), frozenset(features), record)
        code_term = None if self.error_code is None else z3.BitVecVal(self.error_code, 32)
        deliver(x, self.vector, software=False, error_code=code_term)
        return x.finish()


def interrupt(vector: int) -> Event:
    """A maskable external interrupt at ``vector`` (the INTR pin, e.g. from an 8259 PIC)."""
    if not 0 <= vector <= 255:
        raise ValueError(f"vector {vector} is not 0..255")
    return Event(f"interrupt {vector:#x}", vector, False, None, "SDM Vol. 3A 6.3.2, 6.8.1, 6.12.1")


def exception(vector: int, error_code: int | None) -> Event:
    """Exception ``vector`` with its error code (None for the vectors that push none)."""
    if (error_code is not None) != (vector in WITH_ERROR_CODE):
        raise ValueError(f"vector {vector} {'pushes' if vector in WITH_ERROR_CODE else 'pushes no'} "
                         "error code (SDM Vol. 3A Table 6-1)")
    return Event(f"exception {vector}", vector, True, error_code, "SDM Vol. 3A 6.12.1, 6.13, 6.15")


@lru_cache(maxsize=4096)
def _compiled(kind: str, vector: int, error_code: int | None, features: frozenset) -> concrete.Compiled:
    ev = interrupt(vector) if kind == "interrupt" else exception(vector, error_code)
    return concrete.compile_outcome(ev, features)  # type: ignore[arg-type]


def deliver_interrupt(values: Mapping, vector: int, features=frozenset(),
                      uf: Callable | None = None) -> concrete.Run:
    """The maskable interrupt ``vector`` delivered on the concrete state ``values``."""
    return _compiled("interrupt", vector, None, frozenset(features)).evaluate(values, uf)


def deliver_exception(values: Mapping, vector: int, error_code: int | None, features=frozenset(),
                      uf: Callable | None = None) -> concrete.Run:
    """Exception ``vector`` (with ``error_code`` if it has one) delivered on ``values``."""
    code = error_code if vector in WITH_ERROR_CODE else None
    if vector in WITH_ERROR_CODE and code is None:
        code = 0
    return _compiled("exception", vector, code, frozenset(features)).evaluate(values, uf)


def raised_vector(form, code: bytes | None, values: Mapping, features=frozenset()) -> int | None:
    """The exception vector the instruction ``form`` raises on ``values``, or None when it
    raises none (INTO with OF = 0), read off its own definition: run on ``values`` with an
    empty IDT, delivering vector v faults first with #GP(v * 8 + 2) (the IDT bit of the error
    code, EXT = 0: SDM Vol. 3A 6.13), and a fault of another kind is the exception itself (INT1's
    #DB).  For the forms of ``SOFTWARE_EXCEPTIONS`` and INT n."""
    run = concrete.compiled(form, frozenset(features), code).evaluate(
        {**values, "idtr_limit": 0}, complete=False)
    f = run.fault
    if f is None:
        return None
    if f.vector == GP and f.code is not None and f.code & 7 == 2:
        return f.code >> 3
    return f.vector


def interrupts_enabled(values: Mapping) -> bool:
    """EFLAGS.IF (SDM Vol. 3A 6.8.1): maskable interrupts are recognized."""
    return bool(values["sysflags"] >> st.IF & 1)


def second_fault(first: int | None, second: int) -> str:
    """What a fault during the delivery of ``first`` becomes (SDM Vol. 3A 6.15, Table 6-5):
    "serial" (the second is delivered instead), "double" (#DF) or "triple" (shutdown).
    ``first`` None is an interrupt or an instruction, never a double fault."""
    if first is None:
        return "serial"
    if first == DF:
        return "triple"
    if first in CONTRIBUTORY and second in CONTRIBUTORY:
        return "double"
    if first in PAGE_FAULTS and (second in CONTRIBUTORY or second in PAGE_FAULTS):
        return "double"
    return "serial"


def shadows(form_name: str | None) -> bool:
    """Whether the instruction of ``form_name`` delays maskable interrupts by one instruction."""
    return form_name in SHADOW_FORMS


__all__ = ["Event", "interrupt", "exception", "deliver_interrupt", "deliver_exception",
           "interrupts_enabled", "second_fault", "shadows", "WITH_ERROR_CODE", "CONTRIBUTORY",
           "SHADOW_FORMS", "SOFTWARE_EXCEPTIONS", "raised_vector", "HARDWARE_EXCEPTION",
           "SOFTWARE_INTERRUPT", "PRIVILEGED_SOFTWARE_EXCEPTION", "SOFTWARE_EXCEPTION",
           "EXTERNAL_INTERRUPT", "BP", "OF"]
