"""``python -m pgvirt``: the same entry point as the ``pgvirt`` script."""

from pgvirt.cli.main import entry

entry()
