"""The instruction forms, grouped by theme.  Importing this package registers every form.

Each module defines forms with ``pgvirt.model.form.form``; ``FORMS`` lists them in a stable order
(theme, then definition order).
"""

from ..form import REGISTRY, Form
from . import tables  # noqa: F401
from . import segments  # noqa: F401
from . import transfers  # noqa: F401
from . import flags  # noqa: F401
from . import system  # noqa: F401
from . import ordinary  # noqa: F401
from . import ordinary16  # noqa: F401
from . import extensions  # noqa: F401
from . import virtualization  # noqa: F401
from . import vendor  # noqa: F401
from . import xstate  # noqa: F401

FORMS: tuple[Form, ...] = tuple(REGISTRY.values())


def get(name: str) -> Form:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown instruction form {name!r}") from None
