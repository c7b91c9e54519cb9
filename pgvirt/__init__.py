"""pgvirt: the Popek-Goldberg virtualization conditions for IA-32, checked with Z3.

The distribution installs ``pgvirt.model`` (machine state and instruction semantics, imports only
z3), ``pgvirt.verify`` (the Popek-Goldberg queries and theorems), ``pgvirt.guest`` (scan, patch
and check-patch of guest binaries), ``pgvirt.emulator`` (Unicorn replay and cross-checks),
``pgvirt.report`` (every output format), ``pgvirt.cli`` (the command line) and
``pgvirt.notebook`` (what the notebooks call).
"""

__version__ = "0.1.0"
