"""pgvirt: the Popek-Goldberg virtualization conditions for IA-32, checked with Z3.

The distribution installs three packages: ``pgvirt.model`` (machine state and instruction
semantics, imports only z3), ``pgvirt.verify`` (the Popek-Goldberg queries, reports and CLI) and
``pgvirt.emulator`` (Unicorn replay and cross-checks).
"""

__version__ = "0.1.0"
