"""Running the test kernel on a full-system emulator: batches, timeouts, retries, oracle errors.

``FullSystem.run(cases)`` packs the cases into as few boot floppies as fit (``testkernel``), boots
each in a fresh emulator process and reads the frames the kernel prints over port 0xE9.  Every
run is bounded: a boot that prints nothing within ``boot_seconds``, a batch that stops printing
for ``stall_seconds``, or one that outlives ``boot_seconds + case_seconds * n`` is killed.  When a
run fails (the emulator crashed, hung, reset, or printed a truncated or corrupt frame), the
results before the failure are kept and the batch runs again from the case it failed on; if it
fails on that case a second time, the case is an *oracle error* with the emulator's last log
lines, and the rest of the batch goes on.  Never a traceback, never a silent pass.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Sequence

from .protocol import Case, Result
from . import testkernel as T

# Ports a case must not write: the emulator's own devices (the harness's debug console and exit
# ports, the interrupt controllers it masked, the timer, CMOS/NMI mask, A20/reset, the disk and
# floppy controllers, PCI configuration, ACPI/APM/SMBus, Bochs's BIOS panic and shutdown ports,
# QEMU's firmware configuration and the PCI I/O BARs the BIOS assigned).  The forms' own ports
# 0x60-0x63 and the POST/DMA-page latches 0x80-0x8F stay allowed.
IO_UNSAFE = (
    (0x00, 0x5F, "a DMA, interrupt or timer controller port"),
    (0x64, 0x64, "the 8042 command port (it can reset the machine)"),
    (0x70, 0x7F, "the CMOS/NMI-mask port"),
    (0x92, 0x92, "the A20/reset port"),
    (0xA0, 0xDF, "an interrupt, APM/SMI or DMA controller port"),
    (0xE9, 0xE9, "the harness's debug console"),
    (0xF0, 0xFF, "the FPU/debug-exit port range"),
    (0x170, 0x177, "an ATA controller port"), (0x1F0, 0x1F7, "an ATA controller port"),
    (0x376, 0x376, "an ATA controller port"), (0x3C0, 0x3DF, "a VGA port"),
    (0x3F0, 0x3F7, "the floppy controller (the boot disk)"),
    (0x400, 0x7FF, "a BIOS-debug, firmware-configuration or ACPI/SMBus port"),
    (0xAE00, 0xB1FF, "an ACPI or hot-plug port"),
    (0x8900, 0x8AFF, "Bochs's shutdown/debugger port"),
    (0xC000, 0xFFFF, "a PCI I/O range (PCI configuration, the BIOS's BARs)"),
)


class FullSystem:
    """The common runner; ``Bochs`` and ``Qemu`` supply the command line and the CPU."""

    name = ""
    binary = ""
    cannot = None           # state -> why this emulator cannot hold it, or None

    def __init__(self, profile: str = "pentium", *, cpu: str | None = None, ram_mb: int = 1024,
                 boot_seconds: float = 30.0, case_seconds: float = 0.02, stall_seconds: float = 2.0,
                 max_cases: int = 4000, log_lines: int = 12):
        self.profile = profile
        self.cpu = cpu or self.cpu_for(profile)
        self.ram_mb = ram_mb
        self.boot_seconds, self.case_seconds = boot_seconds, case_seconds
        self.stall_seconds, self.max_cases, self.log_lines = stall_seconds, max_cases, log_lines
        self.target = T.Target(self.name, ram_mb << 20, self.msrs(self.cpu), IO_UNSAFE,
                               cannot=self.cannot)
        self.work = tempfile.mkdtemp(prefix=f"pgvirt-{self.name}-")
        self.stats = {"boots": 0, "cases": 0, "retries": 0, "errors": 0}

    # --- what a subclass says: CPUS (profile -> CPU model), MSR_TABLE (CPU -> MSR fields) ----------
    CPUS: dict = {}
    MSR_TABLE: dict = {}

    @classmethod
    def cpu_for(cls, profile: str) -> str:
        return cls.CPUS[profile]

    @classmethod
    def msrs(cls, cpu: str) -> tuple[tuple[str, int], ...]:
        """The state fields held in MSRs ``cpu`` implements (the others are not observed)."""
        if cpu in cls.MSR_TABLE:
            return cls.MSR_TABLE[cpu]
        if "*" in cls.MSR_TABLE:
            return cls.MSR_TABLE["*"]
        raise KeyError(f"no MSR table for {cls.name} CPU model {cpu!r} "
                       f"(known: {', '.join(cls.MSR_TABLE)})")

    def command(self, image: str) -> list[str]:
        raise NotImplementedError

    # --- the kernel: testkernel's protected mode; a VMX oracle supplies its own ---------------
    kernel_version = T.VERSION

    def build(self, cases: Sequence[Case], ids: list[int]):
        return T.build_batch(cases, self.target, ids)

    def decode(self, dec, frame: T.Frame) -> T.Reading:
        return T.decode(dec, self.target, frame)

    def boot_frame(self, frame: T.Frame) -> None:
        """What the boot frame says beyond the version (nothing, in protected mode)."""

    def log_tail(self) -> str:
        raise NotImplementedError

    @classmethod
    def missing(cls) -> str | None:
        raise NotImplementedError

    # --- running ----------------------------------------------------------------------------------
    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def __del__(self):
        try:
            self.close()
        except Exception:       # interpreter shutdown: the temporary directory may be gone
            pass

    def boot(self, batch: T.Batch) -> tuple[bytes, str]:
        """Run one batch: (everything the kernel printed, why the run failed or "")."""
        image = os.path.join(self.work, "batch.img")
        with open(image, "wb") as fh:
            fh.write(batch.image)
        self.stats["boots"] += 1
        argv = self.command(image)
        err = open(os.path.join(self.work, "stderr.txt"), "wb")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err, cwd=self.work)
        except OSError as e:
            err.close()
            return b"", f"cannot start {argv[0]}: {e.strerror}"
        out = bytearray()
        start = last = time.monotonic()
        limit = self.boot_seconds + self.case_seconds * len(batch.ids)
        why = ""
        fd = proc.stdout.fileno()
        booted = False
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.1)
                now = time.monotonic()
                if ready:
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    out += chunk
                    last = now
                    booted = booted or b"PGB" in out
                    if b"PGE" in out[-4096:] and T.parse(bytes(out))[1] == "":
                        break
                    continue
                if now - start > limit:
                    why = f"{self.name} did not finish the batch within {limit:.0f} s"
                elif not booted and now - start > self.boot_seconds:
                    why = f"{self.name} did not boot the test kernel within {self.boot_seconds:.0f} s"
                elif booted and now - last > self.stall_seconds:
                    why = f"{self.name} printed nothing for {self.stall_seconds:.0f} s (hung)"
                if why:
                    break
        finally:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=2 if not why else 0.05)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.stdout.close()
            err.close()
        return bytes(out), why

    def attempt(self, cases: Sequence[Case], ids: list[int]) -> tuple[dict, int | None, str, str]:
        """Boot ``cases`` once: ({index: Reading}, the index it failed on or None, why, log)."""
        batch, refused, _ = self.build(cases, ids)
        done: dict = {i: T.Reading(None, why, {}, frozenset()) for i, why in refused}
        if not batch.ids:
            return done, None, "", ""
        stream, why = self.boot(batch)
        frames, parse_why = T.parse(stream)
        results = [f for f in frames if f.type in "RSL"]
        if frames and frames[0].type == "B":
            version = int.from_bytes(frames[0].payload[:4], "little")
            if version != self.kernel_version:
                return done, batch.ids[0], f"test kernel version {version}, {self.kernel_version} expected", ""
            self.boot_frame(frames[0])
        for k, f in enumerate(results):
            if k >= len(batch.ids) or f.case != batch.ids[k]:
                return done, batch.ids[min(k, len(batch.ids) - 1)], \
                    f"frame for case {f.case} where case {batch.ids[min(k, len(batch.ids) - 1)]} belongs", \
                    self.log_tail()
            try:
                done[f.case] = self.decode(batch.decoders[k], f)
            except T.FrameError as e:
                return done, f.case, f"corrupt result frame: {e}", self.log_tail()
        if len(results) == len(batch.ids) and not parse_why:
            return done, None, "", ""
        fail = batch.ids[len(results)] if len(results) < len(batch.ids) else batch.ids[-1]
        reason = why or parse_why or "the run ended early"
        return done, fail, reason, self.log_tail()

    def run(self, cases: Sequence[Case]) -> list[Result]:
        """One Result per case (see the module docstring)."""
        out: list[Result | None] = [None] * len(cases)
        order = list(range(len(cases)))
        pos = 0
        while pos < len(order):
            chunk = order[pos:pos + self.max_cases]
            pos += len(chunk)
            self._run_chunk(cases, chunk, out)
        self.stats["cases"] += len(cases)
        return [r if r is not None else Result(error="no result (harness bug)") for r in out]

    def _run_chunk(self, cases, todo: list[int], out: list) -> None:
        failed_once: set[int] = set()
        while todo:
            done, fail, why, log = self.attempt([cases[i] for i in todo], todo)
            for i, reading in done.items():
                out[i] = self._result(reading)
            if fail is None:
                # the floppy filled up: what did not fit goes in the next boot
                left = [i for i in todo if out[i] is None]
                if len(left) == len(todo):
                    out[left[0]] = Result(refused="the case's record does not fit a boot floppy")
                    left = left[1:]
                todo = left
                continue
            k = todo.index(fail)
            if fail in failed_once:
                self.stats["errors"] += 1
                out[fail] = Result(error=f"oracle error: {why}", log=log)
                todo = [i for i in todo[k + 1:] if out[i] is None]
            else:
                self.stats["retries"] += 1
                failed_once.add(fail)
                todo = [i for i in todo[k:] if out[i] is None]

    def _result(self, r: T.Reading) -> Result:
        if r.outcome is None:
            return Result(refused=r.refused)
        return Result(r.outcome, observed=r.observed, unobserved_mem=r.unobserved_mem, note=r.note)

    def _tail(self, path: str) -> str:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-self.log_lines:])
