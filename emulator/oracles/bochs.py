"""Bochs 2.7 as an oracle: the test kernel booted from a floppy, headless.

The configuration (REFERENCE.md section 6): the Bochs BIOS and VGA BIOS, the floppy, the ``rfb``
display library with ``timeout=0`` (no screen needed; it picks a free port, so runs can go in
parallel), ``port_e9_hack`` (port 0xE9 to stdout), dummy sound, no speaker, and a debugger
command file holding ``c`` because Debian's build starts in its debugger.  The kernel's last
writes ("Shutdown" to port 0x8900) end the process; a triple fault is a panic, which ends it too.
The CPU model per profile: ``pentium`` for pentium, ``tigerlake`` (which has UMIP) for umip.
"""

from __future__ import annotations

import os
import shutil

from .fullsystem import FullSystem

BINARY = "bochs"
BIOS = "/usr/share/bochs/BIOS-bochs-latest"
VGABIOS = "/usr/share/vgabios/vgabios.bin"
CPUS = {"pentium": "corei7_haswell_4770", "umip": "tigerlake"}
SEP = ("sysenter_cs", 0x174), ("sysenter_esp", 0x175), ("sysenter_eip", 0x176)
# The MSRs a model has (Bochs cpu/cpudb): the P5 has only the TSC; SYSENTER came with the P6
# (SEP), IA32_TSC_AUX with RDTSCP.
MSRS = {"pentium": (("tsc", 0x10),),
        "p2_klamath": SEP + (("tsc", 0x10),),
        "p3_katmai": SEP + (("tsc", 0x10),),
        "corei7_haswell_4770": SEP + (("tsc_aux", 0xC0000103), ("tsc", 0x10)),
        "tigerlake": SEP + (("tsc_aux", 0xC0000103), ("tsc", 0x10))}


class Bochs(FullSystem):
    name = "bochs"
    binary = BINARY
    CPUS = CPUS
    MSR_TABLE = MSRS

    @classmethod
    def missing(cls) -> str | None:
        from .protocol import INSTALL
        for path, what in ((shutil.which(BINARY), BINARY), (BIOS if os.path.exists(BIOS) else None, BIOS),
                           (VGABIOS if os.path.exists(VGABIOS) else None, VGABIOS)):
            if path is None:
                return f"{what} is not installed: run {INSTALL}"
        return None

    def command(self, image: str) -> list[str]:
        rc = os.path.join(self.work, "bochsrc")
        cmds = os.path.join(self.work, "cmds")
        with open(rc, "w") as fh:
            fh.write("\n".join([
                f"romimage: file={BIOS}",
                f"vgaromimage: file={VGABIOS}",
                f"floppya: 1_44={image}, status=inserted",
                "boot: floppy",
                'display_library: rfb, options="timeout=0"',
                "port_e9_hack: enabled=1",
                "sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy",
                "speaker: enabled=0",
                f"cpu: model={self.cpu}, reset_on_triple_fault=0, ips=1000000",
                f"memory: guest={self.ram_mb}, host={self.ram_mb}",
                "clock: sync=none",
                f"log: {os.path.join(self.work, 'bochs.log')}",
                "panic: action=fatal", "error: action=report", "info: action=report",
                "debug: action=ignore", ""]))
        with open(cmds, "w") as fh:
            fh.write("c\n")
        return [BINARY, "-q", "-f", rc, "-rc", cmds]

    def log_tail(self) -> str:
        return self._tail(os.path.join(self.work, "bochs.log"))
