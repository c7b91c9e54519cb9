"""QEMU (``qemu-system-i386``, TCG) as an oracle: the test kernel booted from a floppy.

``-display none -nodefaults`` (no VGA, network or serial devices), the floppy as drive A,
``-debugcon stdio`` (port 0xE9 to our pipe), ``isa-debug-exit`` at 0xF4 (the kernel's last
write ends the process), ``-no-reboot`` (a triple fault ends it too).  The CPU model per
profile: ``max,-umip`` for pentium, ``max`` (which has UMIP) for umip - the P6-and-later
features the model's states use (CR4.PGE/PAE/PCE/OSFXSR/OSXMMEXCPT, SYSENTER, RDTSCP).
"""

from __future__ import annotations

import os
import shutil

from .fullsystem import FullSystem

BINARY = "qemu-system-i386"
# "max": every feature TCG implements, so every CR4 bit the model's states use can be set;
# pentium has no UMIP.
CPUS = {"pentium": "max,-umip", "umip": "max"}
# IA32_SYSENTER_* and the TSC; IA32_TSC_AUX only exists in QEMU's 64-bit builds (deviation
# tsc-aux-unimplemented), so qemu-system-i386 can neither set nor read it.
MSRS = (("sysenter_cs", 0x174), ("sysenter_esp", 0x175), ("sysenter_eip", 0x176), ("tsc", 0x10))


def _cannot(s) -> str | None:
    if s["sysenter_cs"] > 0xFFFF:
        return ("sysenter_cs has bits 31:16 set: QEMU keeps only bits 15:0 of IA32_SYSENTER_CS "
                "(deviation sysenter-cs-16-bit)")
    return None


class Qemu(FullSystem):
    name = "qemu"
    binary = BINARY
    cannot = staticmethod(_cannot)
    CPUS = CPUS
    MSR_TABLE = {"*": MSRS}

    @classmethod
    def missing(cls) -> str | None:
        if shutil.which(BINARY) is None:
            from .protocol import INSTALL
            return f"{BINARY} is not installed: run {INSTALL}"
        return None

    def command(self, image: str) -> list[str]:
        return [BINARY, "-nodefaults", "-display", "none", "-no-reboot", "-machine", "pc,accel=tcg",
                "-cpu", self.cpu, "-m", str(self.ram_mb), "-debugcon", "stdio",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                "-drive", f"file={image},format=raw,if=floppy", "-boot", "a"]

    def log_tail(self) -> str:
        return self._tail(os.path.join(self.work, "stderr.txt"))
