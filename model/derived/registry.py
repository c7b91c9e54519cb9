"""Every form, hand-written and derived: ``get(name)`` and ``forms()``.

A code a hand-written form covers (its canonical bytes decode to it: the table's ``hand``) is not
derived; hand forms take precedence by name too.  Derived forms are built on first use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

from .. import isa
from ..form import REGISTRY, Form, ModelError
from . import forms as dforms
from . import table


@lru_cache(maxsize=1)
def derived_codes() -> tuple[str, ...]:
    """The iced codes derived: derivable by the table and covered by no hand-written form."""
    hand = table.hand_codes()
    out = tuple(c for c in table.index()["derive"] if c not in hand)
    clash = [c for c in out if dforms.form_name(c) in REGISTRY]
    if clash:
        raise ModelError(f"derived form names clash with hand-written ones: {', '.join(clash)}")
    return out


@lru_cache(maxsize=1)
def _by_name() -> dict[str, str]:
    return {dforms.form_name(c): c for c in derived_codes()}


def derived_names() -> tuple[str, ...]:
    return tuple(_by_name())


def names() -> tuple[str, ...]:
    """Hand-written forms (registry order), then derived ones (table order)."""
    return tuple(f.name for f in isa.FORMS) + derived_names()


def is_derived(name: str) -> bool:
    return name not in REGISTRY and name in _by_name()


def get(name: str) -> Form:
    """The form called ``name``: hand-written first, else derived (built now)."""
    f = REGISTRY.get(name)
    if f is not None:
        return f
    code = _by_name().get(name)
    if code is None:
        raise KeyError(f"unknown instruction form {name!r}")
    return dforms.build(code)


def by_code(code: str) -> Form | None:
    """The derived form of iced code ``code`` (None if the code is hand-written or refused)."""
    return dforms.build(code) if code in set(derived_codes()) else None


def forms() -> Iterator[Form]:
    """Every form, hand-written then derived."""
    yield from isa.FORMS
    for c in derived_codes():
        yield dforms.build(c)


def derived_features() -> tuple[str, ...]:
    """The CPUID feature names derived forms check (iced CpuidFeature names, lower case): a
    profile whose processor has them all runs every derived form."""
    return tuple(sorted({f for c in derived_codes() for f in table.codes()[c]["cpuid"]}))


@lru_cache(maxsize=1)
def _hand_code() -> dict[str, str]:
    return {name: code for code, names in table.hand_codes().items() for name in names}


def code_of(name: str) -> str | None:
    """The iced-x86 Code a form's canonical bytes decode to (hand-written forms too)."""
    if name in REGISTRY:
        return _hand_code().get(name)
    return _by_name().get(name)
