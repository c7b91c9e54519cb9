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

``make(name, profile)`` builds one (the CPU model follows the profile), ``unavailable(name)`` says
why it cannot run here (a missing binary, with the command that installs it) or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

from pgvirt.model.outcome import Fault, Next

NAMES = ("unicorn", "bochs", "qemu")
FULL_SYSTEM = ("bochs", "qemu")
INSTALL = "bash tests/setup-emulators.sh  (apt-get install qemu-system-x86 bochs bochsbios vgabios)"


@dataclass(frozen=True)
class Case:
    """One instruction on one state.  ``mem``/``stores``/``io``: the addresses the instruction
    may read or write, those it may write, the ports it may access (the model's footprint);
    ``expect``: the model's outcome, and ``landings``: linear addresses where the instruction
    could go were a check of the model skipped - both used only to place catch points, never
    compared here."""

    state: Mapping
    code: bytes
    mem: frozenset = frozenset()
    stores: frozenset = frozenset()
    io: frozenset = frozenset()
    expect: Fault | Next | None = None
    landings: tuple = ()
    unchecked: Mapping | None = None      # the scalars afterwards were no check to fire


def model_case(form, state: Mapping, run) -> Case:
    """The Case of ``form`` on ``state`` with the compiled model's ``run`` of it
    (``concrete.Compiled.evaluate``): its footprint, its outcome, and the landing it would have
    without its checks (``run.post`` is computed as if no check fired)."""
    addrs = run.addresses()
    stores = frozenset(a for arr, a in run.stores if arr == "mem")
    landing = (run.post["cs_base"] + run.post["eip"]) & 0xFFFFFFFF
    return Case(state, form.bytes, frozenset(addrs.get("mem", ())), stores,
                frozenset(addrs.get("io", ())), run.outcome(), (landing,), run.post)


@dataclass
class Result:
    """What an oracle made of one case: ``outcome``, or ``refused`` (the state cannot be put on
    this emulator), or ``error`` (the emulator failed on it twice; ``log`` holds its last lines)."""

    outcome: Fault | Next | None = None
    refused: str = ""
    error: str = ""
    log: str = ""
    observed: Mapping[str, int] | None = None      # field -> bits read back; None: all fields
    unobserved_mem: frozenset = frozenset()         # addresses whose value afterwards is unknown
    touched: frozenset = frozenset()                # addresses the emulator accessed (if known)
    ports: frozenset = frozenset()
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is not None


class Oracle(Protocol):
    name: str          # "unicorn", "bochs", "qemu"
    cpu: str           # the CPU model it emulates

    def run(self, cases: Sequence[Case]) -> list[Result]:
        """One Result per case, in order."""


class Unavailable(RuntimeError):
    """The emulator is not installed; the message names the install command."""


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
        from .bochs import Bochs
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
