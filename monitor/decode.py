"""Which model form an instruction at hand is an instance of, and how long it is.

A trapped instruction is emulated with its form, so the monitor must name it from its bytes:
``match(code)`` tries the forms whose first opcode byte fits (after segment and REP prefixes,
which ``encoding`` reads) and accepts exactly one.  Two forms accepting the same bytes are a bug
in the model (``FormConflict``); none is an unmodelled instruction (``None``).  The answer is
cached per byte string.  Only the model is consulted: this is the monitor's view of the forms,
not a second description of any instruction.
"""

from __future__ import annotations

from functools import lru_cache

from pgvirt.model import isa
from pgvirt.model.encoding import REP_PREFIX, SEG_PREFIX, instance_length
from pgvirt.model.form import Form

_PASS = frozenset(SEG_PREFIX) | frozenset(REP_PREFIX)


class FormConflict(Exception):
    """Two forms accept the same instruction bytes: a bug in the model."""


@lru_cache(maxsize=1)
def _index() -> dict[int, tuple[Form, ...]]:
    out: dict[int, list[Form]] = {}
    for f in isa.FORMS:
        first = f.enc.opcode[0]
        if f.enc.plus_r and len(f.enc.opcode) == 1:
            keys = [first + r for r in range(8)]
        else:
            keys = [first]
        for k in keys:
            out.setdefault(k, []).append(f)
    return {k: tuple(v) for k, v in out.items()}


@lru_cache(maxsize=1 << 16)
def match(code: bytes) -> tuple[Form, int] | None:
    """The form ``code`` begins with and the instance's length, or None (no form describes it).

    ``code`` may run past the instruction (the bytes at EIP): the length says where it ends.
    """
    i = 0
    while i < len(code) and code[i] in _PASS and i < 14:
        i += 1
    if i >= len(code):
        return None
    hits = []
    for f in _index().get(code[i], ()):
        n = instance_length(f.enc, code)
        if n is not None:
            hits.append((f, n))
    if len(hits) > 1:
        raise FormConflict(f"forms {', '.join(f.name for f, _ in hits)} all accept {code.hex()}")
    return hits[0] if hits else None


def instruction(code: bytes) -> tuple[Form, bytes] | None:
    """(form, exactly the instruction's bytes) for the bytes at EIP, or None."""
    m = match(bytes(code[:15]))
    if m is None:
        return None
    return m[0], bytes(code[:m[1]])


__all__ = ["match", "instruction", "FormConflict"]
