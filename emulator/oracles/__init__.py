"""Oracles: emulators that run one instruction on concrete model states, behind one protocol.

An oracle takes a batch of ``Case`` s (a state in the model's concrete format, the instruction's
bytes, the memory and ports the instruction may touch, and optionally the model's prediction,
which a full-system oracle uses only to place its catch points) and returns one ``Result`` per
case: the ``Fault`` or ``Next`` it observed, or why it refused the state, or an *oracle error*
(the emulator crashed, hung or printed a corrupt frame, after one retry) with its last log lines.

``observed`` says which fields (and which of their bits) the oracle really read back; a
comparison skips the others.  Unicorn (``unicorn``) reads everything but ``machine.NOT_HELD``;
the full-system oracles (``bochs``, ``qemu``: ``testkernel``) do not see hidden segment caches,
LDTR, CR0.TS, EFLAGS.RF or port values.

``make(name, profile)`` builds one (the CPU model follows the profile; ``bochs`` for ``vtx`` is
``bochs.BochsVMX``, every case as a VMX guest), ``unavailable(name)`` says
why it cannot run here (a missing binary, with the command that installs it) or None.
"""

from __future__ import annotations

from .protocol import (NAMES, FULL_SYSTEM, INSTALL, Case, model_case, Result, Oracle, Unavailable)  # noqa: F401


def unavailable(name: str) -> str | None:
    if name not in NAMES:
        raise KeyError(f"unknown oracle {name!r} (known: {', '.join(NAMES)})")
    if name == "unicorn":
        return None
    from . import bochs, qemu
    return (bochs.Bochs if name == "bochs" else qemu.Qemu).missing()


def make(name: str, profile="pentium", **options) -> Oracle:
    """The oracle ``name`` for ``profile`` (a name or a ``Profile``); raises ``Unavailable``."""
    pname = profile if isinstance(profile, str) else profile.name
    why = unavailable(name)
    if why:
        raise Unavailable(why)
    if name == "unicorn":
        from .unicorn import UnicornOracle
        return UnicornOracle(**options)
    if name == "bochs":
        from .bochs import VMX_CPUS, Bochs, BochsVMX
        if pname in VMX_CPUS:           # vtx: the test kernel's VMX mode
            return BochsVMX(pname, **options)
        return Bochs(pname, **options)
    from .qemu import Qemu
    return Qemu(pname, **options)


def expand(spec: str) -> tuple[str, ...]:
    """``--oracle`` values: one name, a comma-separated list, or ``all``."""
    names = NAMES if spec == "all" else tuple(n.strip() for n in spec.split(",") if n.strip())
    for n in names:
        if n not in NAMES:
            raise KeyError(f"unknown oracle {n!r} (known: {', '.join(NAMES)}, all)")
    return names
