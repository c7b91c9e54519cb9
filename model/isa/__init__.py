"""The instruction forms, grouped by theme.  Importing this package registers every form.

Each module defines forms with ``pgvirt.model.form.form``; ``FORMS`` lists them in a stable order
(theme, then definition order).
"""

from ..form import REGISTRY, Form
from . import tables  # noqa: F401

FORMS: tuple[Form, ...] = tuple(REGISTRY.values())


def get(name: str) -> Form:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown instruction form {name!r}") from None
