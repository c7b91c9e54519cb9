"""The ``pgvirt`` command line: one module per command group, registered by main.py; exit codes and the usage error in errors.py (imports everything below, nothing imports it)."""
