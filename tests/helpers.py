"""Helpers several test modules share: guest files, descriptor builders, outcome assertions."""

import shutil
from pathlib import Path

import pytest

from pgvirt.model.outcome import GP, Fault, Next

# --- the Debian guests tests/setup-guests.sh installs --------------------------------------------
INVADERS = Path("/boot/invaders.exec")
TBOOT = Path("/boot/tboot.gz")
TBOOT_SYMS = Path("/boot/tboot-syms")


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"guest files missing ({', '.join(missing)}): run tests/setup-guests.sh")


def need_objdump() -> str:
    exe = shutil.which("objdump")
    if exe is None:
        pytest.skip("objdump missing: run tests/setup-guests.sh (installs binutils)")
    return exe


# --- descriptors as the SDM lays them out, and little-endian bytes ---------------------------------
def desc(base=0, limit=0xFFFFF, type_=0x2, s=1, dpl=0, p=1, g=1, db=1):
    """A segment descriptor (SDM Vol. 3A 3.4.5) as (low, high) dwords."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = (((base >> 16) & 0xFF) | (type_ << 8) | (s << 12) | (dpl << 13) | (p << 15)
          | (((limit >> 16) & 0xF) << 16) | (db << 22) | (g << 23) | (base & 0xFF000000))
    return lo, hi


def gate(sel, offset, type_, dpl, p=1, params=0):
    """A call, interrupt, trap or task gate (SDM Vol. 3A 5.8.3, 6.11) as (low, high) dwords."""
    lo = (offset & 0xFFFF) | (sel << 16)
    hi = (offset & 0xFFFF0000) | (p << 15) | (dpl << 13) | (type_ << 8) | params
    return lo, hi


def le(value, n):
    """``value``'s ``n`` little-endian bytes as {offset: byte}."""
    return {k: (value >> (8 * k)) & 0xFF for k in range(n)}


# --- outcomes ------------------------------------------------------------------------------------
def ok(out) -> dict:
    assert isinstance(out, Next), f"expected completion, got {out}"
    return out.state


def fault(out, vector, code):
    assert isinstance(out, Fault), f"expected a fault, got {out}"
    assert (out.vector, out.code) == (vector, code), str(out)


def gp0(out):
    assert isinstance(out, Fault), f"expected #GP(0), got {out}"
    assert (out.vector, out.code) == (GP, 0), str(out)
