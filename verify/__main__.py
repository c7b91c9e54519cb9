"""``python -m pgvirt.verify`` is the ``pgvirt`` command."""

from .cli import entry

entry()
