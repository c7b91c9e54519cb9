"""The oracle protocol: a batch of ``Case``s in, one ``Result`` per case out (``Oracle``), and the
names of the oracles.  The implementations (``unicorn``, ``bochs``, ``qemu``) import this module,
not the package, so that the package can import them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

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
    controls: Any = None                  # vmx.Controls a VMX-mode case runs under (None: the oracle's)


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
