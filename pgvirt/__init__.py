"""pgvirt: the Popek-Goldberg virtualization conditions for IA-32, checked with Z3.

The verbs (``pgvirt/api.py``) are here, loaded on first use::

    import pgvirt
    pgvirt.theorems("pentium")                # Theorems 1 and 3: fails, with every violation
    pgvirt.scan("/boot/invaders.exec")        # a guest's violating instructions
    pgvirt.classify(["popfd", "lgdt_m"])      # every class of two forms, derived by Z3

``classify``, ``theorems``, ``theorem``, ``scan``, ``patch``, ``check_patch``, ``replay``,
``crosscheck``, ``run`` and ``compare`` (guests under monitors).  The packages: ``pgvirt.model`` (machine state and instruction semantics,
imports only z3), ``pgvirt.verify`` (the queries and theorems), ``pgvirt.decoder`` (iced-x86, the one decoder of
guest code), ``pgvirt.guest`` (scan, patch, check-patch), ``pgvirt.emulator`` (Unicorn), ``pgvirt.monitor`` (monitors running guests), ``pgvirt.report`` (every output format),
``pgvirt.cli`` and ``pgvirt.notebook``.
"""

__version__ = "0.1.0"

_VERBS = ("classify", "theorems", "theorem", "scan", "patch", "check_patch", "replay", "crosscheck",
          "run", "compare")
__all__ = list(_VERBS)


def __getattr__(name: str):
    # `import pgvirt` stays cheap (no z3): a verb is imported when it is first used.
    if name in _VERBS:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pgvirt' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_VERBS))
