"""What every monitor shares: the guest's machine, the clock, interrupts, frames and the record.

A monitor runs a loaded guest (``multiboot.Image``) on one ``emulator.vm.VM`` with the devices of
``devices.Bus``.  The virtual clock is the number of instructions the guest retired plus the time
it spent halted (``idle``), in PIT clocks (one per instruction).  The loop runs the guest in
slices that end at the next device event and at the next frame; between slices it delivers a
pending interrupt when the guest's IF allows, takes a VGA frame at each PIT tick, and hands
every stop of the VM to the monitor (``handle``).

Interrupts and exceptions reach the guest through its (virtual) IDT by the model's definition
(``pgvirt.model.events``): Unicorn never consults the IDT, so the native run is delivered this way
too.  A maskable interrupt is taken only while IF = 1 and outside the one-instruction shadow of
STI, MOV SS and POP SS.  A fault while delivering an event becomes a #DF or a shutdown as SDM
Vol. 3A 6.15 says (``events.second_fault``); a shutdown ends the run ("triple fault").

The record (``Record``) is what the guest did that anyone could see: every port access, each
distinct VGA frame, the console bytes, and one ``Entry`` per monitor entry (a trap, a hypercall,
a delivered event) with the guest's virtual CPU state at that moment.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from typing import Callable

from pgvirt import decoder
from pgvirt.emulator.machine import StateError
from pgvirt.emulator.vm import VM, GuestMemoryError, Memory, Stop
from pgvirt.model import events, monitor as mon, state as st
from pgvirt.model.outcome import DF, GP, UD, Fault, vector_name

from . import decode
from .devices import Bus, Frame, HZ, KeyEvent, TEXT_BASE
from .multiboot import Image

TICK = 65536            # PIT clocks per frame: the BIOS timer tick (18.2 Hz), a PC's unit of time
DEFAULT_RAM = 8 << 20
MAX_ENTRIES = 20000     # monitor entries kept in full in the record (all are counted)
_ENTRY_FIELDS = ("eip", "esp", "eax", "cpl", "sysflags", "cs", "ss")


class GuestEnded(Exception):
    """Raised inside the loop to end the run; the reason is in ``Monitor.end``."""


class MonitorLimit(Exception):
    """The guest did something this monitor cannot reproduce (one line): the run ends."""


@dataclass(frozen=True)
class Entry:
    """One entry into the monitor: ``kind`` trap / hypercall / patched / interrupt / exception."""

    time: int
    kind: str
    eip: int
    detail: str
    form: str | None
    vcpu: dict              # the guest's virtual CPU at the entry (a few fields)

    def as_json(self) -> dict:
        return {"time": self.time, "kind": self.kind, "eip": self.eip, "detail": self.detail,
                "form": self.form, "vcpu": self.vcpu}


@dataclass
class End:
    """Why the run ended: ``reason`` is "steps" (the budget ran out), "halted" (HLT with
    nothing to wake the guest), "reset", or an error ("triple fault", "outside memory",
    "unmodelled", "model", "divergence")."""

    reason: str
    eip: int
    message: str
    error: bool
    where: str = ""         # the instruction at EIP: "0x101005: int3 (cc)"

    def as_json(self) -> dict:
        return {"reason": self.reason, "eip": self.eip, "message": self.message,
                "error": self.error, "where": self.where}

    def line(self) -> str:
        """One line for a person: what happened and where."""
        return f"{self.message}; at {self.where}" if self.where else self.message


@dataclass
class Record:
    ports: list = field(default_factory=list)
    frames: list = field(default_factory=list)      # (tick, Frame), each differing from the last
    console: bytearray = field(default_factory=bytearray)
    entries: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)


def asm(code: bytes, address: int) -> str:
    """The decoder's text for the first instruction of ``code`` (or its bytes if undecodable)."""
    if decoder.one(bytes(code), address).code == decoder.INVALID:
        return f"{decoder.UNDECODABLE} {bytes(code[:4]).hex()}"
    return decoder.asm(bytes(code), address)


class Monitor:
    """The loop; subclasses say how the guest sits on the real machine and how traps are met."""

    name = "monitor"
    io_traps = False

    def __init__(self, image: Image, *, keys: list[KeyEvent] = (), ram_size: int = DEFAULT_RAM,
                 features=frozenset(), record_ports: bool = True):
        self.image = image
        self.ram_size = ram_size
        self.features = frozenset(features)
        self.bus = Bus(ram_size, keys, record=record_ports)
        # The VM's port hooks reach the devices directly unless the monitor puts itself between
        # (vtx: the physical devices): one Python call less per access, and a guest may poll.
        own = type(self).port_in is not Monitor.port_in or type(self).port_out is not Monitor.port_out
        self.vm = VM(ram_size, self if own else self.bus, io_traps=self.io_traps)
        self.idle = 0
        self.shadow = False
        self.end: End | None = None
        self.record = Record()
        self.counts = {"traps": 0, "hypercalls": 0, "patched": 0, "interrupts": 0,
                       "exceptions": 0, "scanned_pages": 0, "rescans": 0, "stubs": 0}
        self.next_frame = 0
        self._last_frame: tuple | None = None
        self.wall = 0.0
        self.cpu = 0.0          # this process's CPU time in the loop (a shared machine's measure)
        for seg in image.segments:
            self.vm.write(seg.address, seg.data + bytes(seg.size - len(seg.data)))
        for at, data in image.boot.items():
            self.vm.write(at, data)
        self.setup()

    # --- the Ports protocol (the VM's port hooks) -------------------------------------------------
    def port_in(self, port: int, when: int) -> int:
        return self.bus.port_in(port, when)      # ``when`` is the clock (VM.clock_offset)

    def port_out(self, port: int, value: int, when: int) -> bool:
        return self.bus.port_out(port, value, when)

    # --- what subclasses provide ------------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def guest_state(self) -> dict:
        """The state the guest believes it is in (scalars, ``mem`` as the guest reads it)."""
        raise NotImplementedError

    def overlay(self) -> dict:
        """Bytes the guest reads instead of RAM's (scan, vtx: the originals of patched sites)."""
        return {}

    def guest_read(self, address: int, n: int) -> bytes:
        """Guest memory as the guest reads it (RAM with ``overlay`` on top)."""
        data = bytearray(self.vm.read(address, n))
        for a, v in self.overlay().items():
            if address <= a < address + n:
                data[a - address] = v
        return bytes(data)

    def compare_overlay(self) -> dict:
        """Bytes that stand for RAM's when this run is compared with native: what the guest
        reads (paravirt: the original bytes of its sites, the one difference the patch makes
        by design)."""
        return self.overlay()

    def compare_read(self, address: int, n: int) -> bytes:
        data = bytearray(self.guest_read(address, n))
        for a, v in self.compare_overlay().items():
            if address <= a < address + n:
                data[a - address] = v
        return bytes(data)

    def interrupts_enabled(self) -> bool:
        raise NotImplementedError

    def halted(self) -> bool:
        raise NotImplementedError

    def deliver(self, event: Callable, what: str) -> None:
        """Deliver an event (``event(values)`` -> concrete Run) to the guest."""
        raise NotImplementedError

    def handle(self, stop: Stop) -> None:
        raise NotImplementedError

    def interrupt_taken(self, vector: int) -> None:
        """A maskable interrupt is about to be delivered (vtx: the external-interrupt exit)."""

    def exception_taken(self, vector: int, kind: int, why: str, view: dict | None) -> None:
        """Exception ``vector`` (interruption type ``kind``: ``events.HARDWARE_EXCEPTION``, or a
        software exception's) is about to be delivered to the guest (vtx: the exception bitmap);
        ``view``: the guest's state at the instruction that raised it, if not the current one."""

    def shutdown_taken(self, why: str) -> None:
        """A fault while delivering a #DF: the processor shuts down (vtx: the triple-fault exit)."""

    def shadowed(self) -> bool:
        return self.shadow

    def must_step(self) -> bool:
        """Run one instruction at a time (native: an interrupt waits for IF, which Unicorn may
        set at any instruction)."""
        return self.shadow

    # --- time -------------------------------------------------------------------------------------
    @property
    def clock(self) -> int:
        return self.vm.retired + self.idle

    @property
    def retired(self) -> int:
        return self.vm.retired

    def _frames_upto(self, t: int) -> None:
        while self.next_frame <= t:
            self._take_frame(self.next_frame)
            self.next_frame += TICK

    def _take_frame(self, t: int) -> None:
        at, n = self.bus.text_window()
        try:
            text = self.guest_read(at, n)
        except GuestMemoryError:
            text = bytes(n)
        f = self.bus.frame(t, text)
        k = f.key()
        if k != self._last_frame:
            self.record.frames.append((t // TICK, f))
            self._last_frame = k

    def final_frame(self) -> Frame:
        at, n = self.bus.text_window()
        return self.bus.frame(self.clock, self.guest_read(at, n))

    # --- the loop ---------------------------------------------------------------------------------
    def finish(self, reason: str, message: str, error: bool = False) -> None:
        if self.end is None:
            eip, where = self._where()
            self.end = End(reason, eip, message, error, where)
        raise GuestEnded(reason)

    def _where(self) -> tuple[int, str]:
        try:
            g = self.guest_state()
            return g["eip"], self.describe(g["eip"], g)
        except Exception:                 # the end of a broken run still gets its line
            return 0, ""

    def advance(self, until: int) -> bool:
        """Run until the guest has retired ``until`` instructions or ended; False once ended."""
        if self.end is not None:
            return False
        t0, c0 = _time.perf_counter(), _time.process_time()
        try:
            while self.vm.retired < until:
                self._slice(until)
        except GuestEnded:
            pass
        except (MonitorLimit, StateError) as e:
            # e.g. an LDT selector the shadow tables do not hold, or a segment configuration
            # the VM's set-up stub cannot reach: stated, not guessed around.
            eip, where = self._where()
            self.end = End("unsupported", eip, str(e), True, where)
        except GuestMemoryError as e:
            eip, where = self._where()
            self.end = End("outside memory", eip, str(e), True, where)
        finally:
            self.wall += _time.perf_counter() - t0
            self.cpu += _time.process_time() - c0
        return self.end is None

    def _slice(self, until: int) -> None:
        now = self.clock
        self.bus.advance(now)
        self._frames_upto(now)
        if self.bus.reset is not None:
            self.finish("reset", self.bus.reset)
        if self._try_interrupt():
            return
        if self.halted():
            wake = self.bus.next_event(now) if self.interrupts_enabled() else None
            if wake is None:
                self.finish("halted", "the guest halted with nothing to wake it "
                            f"({'IF = 0' if not self.interrupts_enabled() else 'no interrupt is due'})")
            self.idle += min(wake, self.next_frame) - now
            return
        n = until - self.vm.retired
        nxt = self.bus.next_event(now)
        if nxt is not None:
            n = min(n, nxt - now)
        n = min(n, self.next_frame - now)
        if self.must_step():
            n = 1
        stepped_shadow = self.shadow
        self.vm.clock_offset = self.idle
        stop = self.vm.run(max(1, n))
        if stepped_shadow and stop.retired:
            self.shadow = False
        self.handle(stop)

    def _try_interrupt(self) -> bool:
        pic = self.bus.pic
        if not pic.pending() or not self.interrupts_enabled() or self.shadowed():
            return False
        vector = pic.acknowledge()
        if vector is None:
            return False
        self.counts["interrupts"] += 1
        self.interrupt_taken(vector)
        self.entry("interrupt", f"IRQ vector {vector:#x}", None)
        self.deliver(lambda v: events.deliver_interrupt(v, vector, self.features),
                     f"interrupt {vector:#x}")
        return True

    # --- helpers for subclasses -------------------------------------------------------------------
    def entry(self, kind: str, detail: str, form: str | None, view: dict | None = None) -> None:
        """Record a monitor entry; ``view`` is the guest's state if the caller has it."""
        self.record.counts[kind] = self.record.counts.get(kind, 0) + 1
        if len(self.record.entries) < MAX_ENTRIES:
            g = self.guest_state() if view is None else view
            self.record.entries.append(Entry(self.clock, kind, g["eip"], detail, form,
                                             {k: g[k] for k in _ENTRY_FIELDS}))

    def code_at(self, eip: int, state: dict) -> bytes:
        """The 15 bytes at CS:EIP as the guest reads them (fewer at the end of RAM)."""
        pc = (state["cs_base"] + eip) & 0xFFFFFFFF
        n = max(0, min(15, self.ram_size - pc))
        if n == 0:
            raise GuestMemoryError(pc, 1)
        return self.guest_read(pc, n)

    def describe(self, eip: int, state: dict) -> str:
        try:
            code = self.code_at(eip, state)
        except GuestMemoryError:
            return f"{eip:#x}: (outside guest memory)"
        m = decode.match(code)
        n = m[1] if m else len(code)
        return f"{eip:#x}: {asm(code, eip)} ({code[:n].hex()})"

    def inject(self, vector: int, code: int | None, why: str,
               kind: int = events.HARDWARE_EXCEPTION, view: dict | None = None) -> None:
        """Deliver exception ``vector`` to the guest, with #DF and shutdown as SDM 6.15 says.
        ``kind`` is the interruption type of the first (a fault while delivering it is a
        hardware exception), ``view`` the state at the trapping instruction (INT1's)."""
        first: int | None = None
        while True:
            self.counts["exceptions"] += 1
            self.exception_taken(vector, kind, why, view)
            kind, view = events.HARDWARE_EXCEPTION, None
            self.entry("exception", f"{vector_name(vector)}: {why}", None)
            c = code if vector in events.WITH_ERROR_CODE else None
            fault = self.deliver(lambda v, vec=vector, cc=c: events.deliver_exception(
                v, vec, cc, self.features), f"exception {vector}")
            if fault is None:
                return
            how = events.second_fault(first if first is not None else vector, fault.vector)
            if how == "triple" or (first is not None and first == DF):
                self.shutdown_taken(f"{fault} while delivering {vector_name(vector)}")
                self.finish("triple fault", f"triple fault: delivering {vector_name(vector)} "
                            f"raised {fault} (the processor shuts down)", True)
            if how == "double":
                first, vector, code, why = DF, DF, 0, f"{fault} while delivering {vector_name(vector)}"
            else:
                first, vector, code, why = vector, fault.vector, fault.code, fault.reason

    def invalid_instruction(self, real: dict, vcpu: dict | None) -> None:
        """Unicorn's #UD at EIP, judged by the form on the guest's view of (``real``, ``vcpu``;
        None: the guest on the real machine): the fault its definition raises is injected.
        INT1 raises #DB (Unicorn: #UD, deviation int1-as-ud), a trap whose return address is
        the next instruction (SDM Vol. 2A INT1; ``events.SOFTWARE_EXCEPTIONS``)."""
        g = real if vcpu is None else mon.view(real, vcpu)
        try:
            m = decode.instruction(self.code_at(g["eip"], g))
        except GuestMemoryError:
            m = None
        if m is None:
            self.inject(UD, None, f"invalid instruction at {self.describe(g['eip'], g)}")
            return
        form, code = m
        step = mon.emulate(form, code, real, vcpu, self.features)
        if step.fault is None:
            self.finish("model", f"Unicorn raised #UD but the model's {form.name} completes", True)
        why = f"{form.name}: {step.fault.reason}"
        kind = events.SOFTWARE_EXCEPTIONS.get(form.name)
        if kind is None:
            self.inject(step.fault.vector, step.fault.code, why)
            return
        after = {n: real[n] for n in st.SCALARS}
        after["eip"] = (real["eip"] + len(code)) & 0xFFFFFFFF
        self.vm.load(after)
        self.vm.retire(1)
        self.inject(step.fault.vector, step.fault.code, why, kind, g)

    def read_guest_mem(self, overlay=None) -> Memory:
        return Memory(self.vm, overlay)

    mem_log: set | None = None      # addresses the monitor stored for the guest (lock step)

    def write_guest(self, stores: dict) -> None:
        """Bytes an emulated instruction or a delivery stored, into guest RAM."""
        for a, v in sorted(stores.items()):
            self.vm.write(a, bytes([v]))
        if self.mem_log is not None:
            self.mem_log.update(stores)

    # --- results ----------------------------------------------------------------------------------
    def run(self, steps: int) -> "RunResult":
        self.advance(steps)
        if self.end is None:
            eip, where = self._where()
            self.end = End("steps", eip, f"ran past --steps {steps}", True, where)
        return self.result(steps)

    def result(self, steps: int) -> "RunResult":
        self._take_frame(self.clock)
        self.record.ports = self.bus.trace
        self.record.console = self.bus.console
        counts = dict(self.counts)
        counts["stubs"] = self.vm.stats["stubs"]
        return RunResult(self.name, self.image.name, steps, self.vm.retired, self.idle, self.end,
                         self.record, counts, self.wall, self.bus.unsupported, self.cpu)


@dataclass
class RunResult:
    monitor: str
    guest: str
    steps: int
    retired: int
    idle: int
    end: End
    record: Record
    counts: dict
    wall: float
    unsupported: list
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.retired / self.wall if self.wall else 0.0


__all__ = ["Monitor", "RunResult", "Record", "Entry", "End", "GuestEnded", "MonitorLimit", "TICK",
           "DEFAULT_RAM",
           "asm", "HZ"]
