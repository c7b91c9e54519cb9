"""``python -m pgvirt``: the same entry point as the ``pgvirt`` script."""

from pgvirt.verify.cli import entry

entry()
