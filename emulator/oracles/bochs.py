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

from . import testkernel as T
from .fullsystem import IO_UNSAFE, FullSystem

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


# --- VT-x: the test kernel's VMX mode (vmxkernel) ------------------------------------------------
# The CPU model per hardware profile.  ``tigerlake`` has UMIP (the vtx profile's processor is the
# umip one with VMX) and every secondary control the documented default sets; ``corei7_haswell_4770``
# lacks RDSEED exiting and XSAVES/XRSTORS enabling (IA32_VMX_PROCBASED_CTLS2, docs/oracles.md).
VMX_CPUS = {"vtx": "tigerlake"}


class OracleSetupError(RuntimeError):
    """The oracle cannot run the batch at all (VMX does not start, VM entry rejects the harness's
    own controls or host state): one line, naming the VM-instruction error."""


class BochsVMX(Bochs):
    """Bochs with every case as the guest in VMX non-root operation (``vmxkernel``) under
    ``controls`` (default: the profile's; a case's own ``Case.controls`` wins).  ``caps()``: the
    capability MSRs the CPU model reports, read by a boot of no cases (once per model)."""

    CPUS = VMX_CPUS
    mode = "vmx"
    _CAPS: dict = {}

    def __init__(self, profile: str = "vtx", *, controls=None, **options):
        from pgvirt.model import profiles
        super().__init__(profile, **options)
        self._implicit = controls is None
        self.controls = controls if controls is not None else profiles.get(profile).vm
        from . import vmxkernel as V
        self.kernel_version = V.VERSION
        self.target = T.Target(self.name, self.ram_mb << 20, self.msrs(self.cpu), IO_UNSAFE)

    @classmethod
    def cpu_for(cls, profile: str) -> str:
        if profile not in VMX_CPUS:
            raise KeyError(f"the VMX oracle runs the vtx profile, not {profile!r}")
        return VMX_CPUS[profile]

    def caps(self):
        from . import vmxkernel as V
        got = self._CAPS.get(self.cpu)
        if got is not None:
            return got
        stream, why = self.boot(V.Batch(V.probe_image(), [], []))
        frames, parse_why = T.parse(stream)
        if not frames or frames[0].type != "B":
            raise OracleSetupError(f"bochs (cpu {self.cpu}) did not boot the VMX kernel: "
                                   f"{why or parse_why}")
        try:
            caps = V.caps_from_boot(frames[0].payload)
        except V.VMXUnavailable as e:
            raise OracleSetupError(f"bochs cpu model {self.cpu}: {e}") from None
        except T.FrameError as e:
            raise OracleSetupError(f"bochs cpu model {self.cpu}: corrupt boot frame: {e}") from None
        self._CAPS[self.cpu] = caps
        return caps

    def build(self, cases, ids):
        from . import vmxkernel as V
        return V.build_batch(cases, self.target, self.caps(), ids)

    def boot(self, batch):
        self._entry_fails = None
        return super().boot(batch)

    def decode(self, dec, frame):
        from . import vmxkernel as V
        r = V.decode(dec, self.target, frame)
        if r.outcome is None and "VM entry fails" in r.refused:
            # Bochs logs the check VM entry failed on, one line per failure, in case order
            if self._entry_fails is None:
                self._entry_fails = [ln.split("VMENTER FAIL:", 1)[1].strip()
                                     for ln in self.log_tail_all().splitlines() if "VMENTER FAIL:" in ln]
            if self._entry_fails:
                r.refused += f": {self._entry_fails.pop(0)}"
        return r

    def log_tail_all(self) -> str:
        try:
            with open(os.path.join(self.work, "bochs.log"), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def boot_frame(self, frame) -> None:
        from . import vmxkernel as V
        try:
            V.caps_from_boot(frame.payload)
        except V.VMXUnavailable as e:
            raise OracleSetupError(f"bochs cpu model {self.cpu}: {e}") from None

    def run(self, cases):
        """One Result per case; cases are grouped by their controls' I/O and MSR bitmaps (one
        image holds one set).  ``OracleSetupError`` when a VM instruction fails on the
        harness's own fields (VMfailInvalid, or a VM-instruction error other than a guest's)."""
        from dataclasses import replace
        from . import vmxkernel as V
        from .protocol import Result
        caps = self.caps()
        # the profile's default as this CPU can hold it (Caps.fit); controls given are kept as given
        default = caps.fit(self.controls)[0] if self._implicit else self.controls
        cases = [cs if cs.controls is not None else replace(cs, controls=default) for cs in cases]
        groups: dict = {}
        for i, cs in enumerate(cases):
            groups.setdefault(V.bitmap_key(cs.controls), []).append(i)
        out: list = [None] * len(cases)
        for idx in groups.values():
            for i, r in zip(idx, super().run([cases[i] for i in idx])):
                out[i] = r
        for r in out:
            if isinstance(r, Result) and r.refused and "(VMfail" in r.refused:
                raise OracleSetupError(r.refused.replace("refuses the state: ", ""))
        return out


# --- AMD SVM: the test kernel's SVM mode (svmkernel) ---------------------------------------------
# ``ryzen`` has SVM with nested paging (CPUID 8000_000Ah:EDX = 0x44f); so do ``zambezi`` and
# ``trinity_apu``, ``phenom_8650_toliman`` (0x7); ``turion64_tyler`` has SVM without nested paging.
SVM_CPUS = {"svm": "ryzen"}


class BochsSVM(BochsVMX):
    """Bochs with every case as the guest of a VMRUN (``svmkernel``) under ``controls`` (default:
    the svm profile's intercepts)."""

    CPUS = SVM_CPUS
    mode = "svm"
    # CR4.UMIP, PKE and CET: Bochs's ryzen lacks them, VMRUN refuses a guest CR4 with them
    # (deviation cpu-lacks-cr4-bits); the replay draws its states without them
    cr4_lacks = (1 << 11) | (1 << 22) | (1 << 23)
    _CAPS: dict = {}
    MSR_TABLE = dict(MSRS, ryzen=SEP + (("tsc_aux", 0xC0000103), ("tsc", 0x10)))

    def __init__(self, profile: str = "svm", *, controls=None, **options):
        from pgvirt.model import profiles
        Bochs.__init__(self, profile, **options)
        self.controls = controls if controls is not None else profiles.get(profile).vm
        from . import svmkernel as K
        self.kernel_version = K.VERSION
        # the nested page table maps 64 MiB: the usable RAM ends there (Target keeps 1 MiB back)
        self.target = T.Target(self.name, (K.N_MAPPED * 4 + 1) << 20, self.msrs(self.cpu), IO_UNSAFE)

    @classmethod
    def cpu_for(cls, profile: str) -> str:
        if profile not in SVM_CPUS:
            raise KeyError(f"the SVM oracle runs the svm profile, not {profile!r}")
        return SVM_CPUS[profile]

    def caps(self):
        from . import svmkernel as K
        got = self._CAPS.get(self.cpu)
        if got is not None:
            return got
        stream, why = Bochs.boot(self, K.Batch(K.probe_image(), [], []))
        frames, parse_why = T.parse(stream)
        if not frames or frames[0].type != "B":
            raise OracleSetupError(f"bochs (cpu {self.cpu}) did not boot the SVM kernel: {why or parse_why}")
        try:
            caps = K.caps_from_boot(frames[0].payload)
        except K.SVMUnavailable as e:
            raise OracleSetupError(f"bochs cpu model {self.cpu}: {e}") from None
        self._CAPS[self.cpu] = caps
        return caps

    def build(self, cases, ids):
        from . import svmkernel as K
        return K.build_batch(cases, self.target, self.caps(), ids)

    def decode(self, dec, frame):
        from . import svmkernel as K
        r = K.decode(dec, self.target, frame)
        if r.outcome is None and "VMRUN's consistency checks fail" in r.refused:
            # Bochs logs the check VMRUN failed on ("VMRUN: ..."), one line per failure
            if self._entry_fails is None:
                self._entry_fails = [ln.split("VMRUN:", 1)[1].strip()
                                     for ln in self.log_tail_all().splitlines() if "] VMRUN:" in ln]
            if self._entry_fails:
                r.refused += f": {self._entry_fails.pop(0)}"
        return r

    def boot(self, batch):
        self._entry_fails = None
        return Bochs.boot(self, batch)

    def boot_frame(self, frame) -> None:
        from . import svmkernel as K
        try:
            K.caps_from_boot(frame.payload)
        except K.SVMUnavailable as e:
            raise OracleSetupError(f"bochs cpu model {self.cpu}: {e}") from None

    def run(self, cases):
        from dataclasses import replace
        from . import svmkernel as K
        self.caps()
        cases = [cs if cs.controls is not None else replace(cs, controls=self.controls) for cs in cases]
        groups: dict = {}
        for i, cs in enumerate(cases):
            groups.setdefault(K.bitmap_key(cs.controls), []).append(i)
        out: list = [None] * len(cases)
        for idx in groups.values():
            for i, r in zip(idx, FullSystemRun(self, [cases[i] for i in idx])):
                out[i] = r
        return out


def FullSystemRun(oracle, cases):
    from .fullsystem import FullSystem
    return FullSystem.run(oracle, cases)
