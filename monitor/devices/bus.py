"""The PC the monitors give a guest: its port space and its interrupt lines, on one clock.

``Bus`` wires the devices as the PC/AT does (8259A pair at 0x20/0xA0, 8254 at 0x40, 8042 at
0x60/0x64, system control port B at 0x61, RTC/CMOS at 0x70, VGA at 0x3B0-0x3DF, port 0x92's
fast reset, and the port 0xE9 console of Bochs and QEMU) and records every port access in
``trace``.  Time is the virtual clock: PIT input clocks, one per retired instruction (``HZ``
per virtual second).  A port nothing decodes reads 0xFF (the floating ISA data bus) and ignores
writes; both are in the trace.

Every read has a ``peek`` twin that returns the same byte without the side effects: a monitor
evaluates a trapped IN with the model (which may read ports on branches that fault), and only
then commits the reads of the instruction that really ran.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cmos import CMOS
from .kbd import KBC8042, KeyEvent
from .pic import PICPair
from .pit import PIT8254
from .vga import VGA, Frame, TEXT_BASE, TEXT_BYTES

HZ = 1_193_182          # PIT input clock (Hz); also the virtual CPU's instructions per second
CONSOLE = 0xE9


@dataclass(frozen=True)
class PortAccess:
    """One byte through the port space: ``time`` is the virtual clock (instructions retired
    before the IN or OUT)."""

    time: int
    port: int
    out: bool
    value: int

    def as_json(self) -> dict:
        return {"time": self.time, "port": self.port, "dir": "out" if self.out else "in",
                "value": self.value}


class Bus:
    def __init__(self, ram_size: int, keys: list[KeyEvent] = (), record: bool = True):
        self.pic = PICPair()
        self.pit = PIT8254()
        self.kbc = KBC8042(list(keys))
        self.cmos = CMOS(HZ, ram_size)
        self.vga = VGA(HZ)
        self.port_b = 0x00                 # port 0x61 bits 0-3 as written
        self.port_92 = 0x02                # A20 on (a multiboot loader enables it)
        self.console = bytearray()
        self.trace: list[tuple] = []       # (time, port, out, value): ``PortAccess`` fields
        self.record = record
        self.reset: str | None = None      # why the guest reset the machine, once it has
        self.now = 0                       # the clock up to which events have been delivered
        self._due = 0                      # no event is due before this clock (see ``advance``)
        self._map: dict[int, str] = {}
        for p in PICPair.PORTS:
            self._map[p] = "pic"
        for p in PIT8254.PORTS:
            self._map[p] = "pit"
        for p in KBC8042.PORTS:
            self._map[p] = "kbc"
        for p in CMOS.PORTS:
            self._map[p] = "cmos"
        for p in VGA.PORTS:
            self._map[p] = "vga"
        self._map[0x61] = "portb"
        self._map[0x92] = "port92"
        self._map[CONSOLE] = "console"
        # The reads with side effects, by port; every other port reads its ``peek``.
        self._readers = {p: self.pit.read for p in PIT8254.PORTS if p != 0x43}
        self._readers.update({p: self._read_kbc for p in KBC8042.PORTS})
        self._readers[0x64] = lambda port, t, kbc=self.kbc: kbc.status()   # no side effects
        self._readers.update({p: self.cmos.read for p in CMOS.PORTS})
        self._readers.update({p: self.vga.read for p in VGA.PORTS})

    # --- ports -----------------------------------------------------------------------------------
    def peek(self, port: int, t: int) -> int:
        dev = self._map.get(port)
        if dev == "pic":
            return self.pic.read(port)
        if dev == "pit":
            return 0xFF if port == 0x43 else self.pit.peek(port, t)
        if dev == "kbc":
            return self.kbc.peek(port)
        if dev == "cmos":
            return self.cmos.peek(port, t)
        if dev == "vga":
            return self.vga.peek(port, t)
        if dev == "portb":
            ch2 = self.pit.channels[2]
            refresh = (t // 18) & 1                  # DRAM refresh toggles every 15 us
            return (self.port_b & 0x0F) | (refresh << 4) | (0x20 if ch2.out(t) else 0)
        if dev == "port92":
            return self.port_92
        if dev == "console":
            return CONSOLE                            # how a guest detects the console port
        return 0xFF

    def _read_kbc(self, port: int, t: int) -> int:
        v, edges = self.kbc.read(port)
        if edges:
            self.pic.pulse(1)
        return v

    def port_in(self, port: int, t: int) -> int:
        """A byte read by the guest at clock ``t`` (side effects included)."""
        if t < self._due:                  # ``advance`` inlined: a guest may poll a port
            if t > self.now:               # every few instructions
                self.now = t
        else:
            self.advance(t)
        read = self._readers.get(port)
        v = read(port, t) if read is not None else self.peek(port, t)
        if self.record:
            self.trace.append((t, port, False, v))
        return v

    def port_out(self, port: int, value: int, t: int) -> bool:
        """A byte written at clock ``t``; True when the interrupt schedule may have changed
        (the caller then re-reads ``next_event`` and ``pic.pending``)."""
        if t < self._due:
            if t > self.now:
                self.now = t
        else:
            self.advance(t)
        if self.record:
            self.trace.append((t, port, True, value))
        dev = self._map.get(port)
        if dev == "pic":
            self.pic.write(port, value)
            return True
        if dev == "pit":
            changed = self.pit.write(port, value, t)
            if changed:
                self._reschedule()
            return changed
        if dev == "kbc":
            edges = self.kbc.write(port, value)
            if edges:
                self.pic.pulse(1)
            if self.kbc.reset_requested:
                self.reset = f"reset through the 8042 (port {port:#x}, value {value:#04x})"
            return bool(edges) or self.kbc.reset_requested
        if dev == "cmos":
            self.cmos.write(port, value, t)
        elif dev == "vga":
            self.vga.write(port, value, t)
        elif dev == "portb":
            self.port_b = value & 0x0F
            self.pit.set_gate2(bool(value & 1), t)
            self._reschedule()
        elif dev == "port92":
            if value & 1 and not self.port_92 & 1:
                self.reset = f"reset through port 0x92 (value {value:#04x})"
            self.port_92 = value & 0xFE
            return self.reset is not None
        elif dev == "console":
            self.console.append(value)
        return False

    # --- time ------------------------------------------------------------------------------------
    def advance(self, t: int) -> None:
        """Deliver every device event due at or before clock ``t``."""
        if t < self._due:                  # the common case: a port access inside a slice
            if t > self.now:
                self.now = t
            return
        if t <= self.now:
            return
        for _ in self.pit.channels[0].edges(self.now, t):
            self.pic.pulse(0)
        if self.kbc.advance(t):
            self.pic.pulse(1)
        self.now = t
        self._reschedule()

    def _reschedule(self) -> None:
        nxt = self.next_event(self.now)
        self._due = nxt if nxt is not None else 1 << 62

    def next_event(self, t: int) -> int | None:
        """The first clock after ``t`` at which a device raises an interrupt line."""
        times = [x for x in (self.pit.next_edge(t), self.kbc.next_event()) if x is not None]
        return max(min(times), t + 1) if times else None

    def frame(self, t: int, ram_text: bytes) -> Frame:
        return self.vga.frame(t, ram_text)

    def text_window(self) -> tuple[int, int]:
        """Where the visible text lies in RAM: the CRTC start address moves it."""
        start = self.vga.crtc[0x0C] << 8 | self.vga.crtc[0x0D]
        return TEXT_BASE + 2 * start, TEXT_BYTES

    @property
    def unsupported(self) -> list[str]:
        return self.pic.unsupported + self.pit.unsupported + self.kbc.unsupported + \
            self.cmos.unsupported


__all__ = ["Bus", "PortAccess", "HZ", "CONSOLE", "Frame", "KeyEvent"]
