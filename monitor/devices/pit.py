"""The 8254 programmable interval timer (Intel 8254 data sheet), ports 0x40-0x43.

Time is the virtual clock of the monitors, in PIT input clocks (1.193182 MHz): the virtual CPU
retires one instruction per clock (``bus.HZ``), so every value here is a
function of the instruction count and nothing else.  A count written at clock t is loaded at
t + 1 (the next CLK pulse; until then the read-back status shows "null count"), in every mode
(a real 8254 in modes 2 and 3 waits for the end of the current period).

Modelled: modes 0 (interrupt on terminal count), 2 (rate generator), 3 (square wave) and 4
(software-triggered strobe); binary and BCD counting; LSB, MSB and LSB-then-MSB access; the
counter-latch and read-back commands; the gate of channel 2 (port 0x61 bit 0).  Modes 1 and 5
need a rising gate edge, which channels 0 and 1 never see (their gates are tied high on a PC):
their counters hold, as a real 8254's do.  Only channel 0's output is wired to an interrupt
(IRQ0); channel 2's output is readable at port 0x61 bit 5.
"""

from __future__ import annotations


def _to_bcd(v: int) -> int:
    return int(str(v % 10000).zfill(4), 16)


def _from_bcd(v: int) -> int:
    d = [(v >> s) & 0xF for s in (12, 8, 4, 0)]
    return sum(min(x, 9) * m for x, m in zip(d, (1000, 100, 10, 1)))


class Channel:
    def __init__(self, index: int):
        self.index = index
        self.mode = 0
        self.access = 3           # 1 LSB, 2 MSB, 3 LSB then MSB
        self.bcd = False
        self.control = 0x30       # the last control word's bits 5-0, for the read-back status
        self.reload = 0           # N as written (0 means the maximum)
        self.loaded_at: int | None = None   # clock at which N took effect; None: not counting
        self.write_msb = False    # the next write is the MSB (LSB-then-MSB access)
        self.read_msb = False
        self.latch: list[int] = []
        self.status: int | None = None
        self.gate = index != 2    # channel 2's gate is port 0x61 bit 0
        self.partial = 0

    @property
    def period(self) -> int:
        n = _from_bcd(self.reload) if self.bcd else self.reload
        if n == 0:
            n = 10000 if self.bcd else 0x10000
        return n

    def _elapsed(self, t: int) -> int:
        return t - self.loaded_at

    def value(self, t: int) -> int:
        """The counting element at clock t (binary, or BCD digits when BCD counting)."""
        if self.loaded_at is None or t < self.loaded_at:
            return 0
        n = self.period
        if not self.gate or self.mode not in (0, 2, 3, 4):
            v = n                                    # held: the count as loaded
        else:
            e = self._elapsed(t)
            if self.mode in (0, 4):
                v = (n - e) % (10000 if self.bcd else 0x10000)
            elif self.mode == 2:
                v = n - e % n
            else:                                    # mode 3 counts by two through each half
                v = n - 2 * (e % max(1, n // 2))
        v &= 0xFFFF if not self.bcd else 0xFFFFFFFF
        return _to_bcd(v) if self.bcd else v & 0xFFFF

    def out(self, t: int) -> bool:
        if self.loaded_at is None:
            return self.mode != 0
        if t < self.loaded_at:
            return self.mode != 0
        n, e = self.period, self._elapsed(t)
        if not self.gate:
            return self.mode != 0                    # a low gate forces OUT high in 2 and 3
        if self.mode == 0:
            return e >= n
        if self.mode == 4:
            return e != n
        if self.mode == 2:
            return e % n != n - 1
        if self.mode == 3:
            return e % n < (n + 1) // 2
        return True

    def edges(self, t0: int, t1: int) -> list[int]:
        """Clocks in (t0, t1] at which OUT rises."""
        if self.loaded_at is None or not self.gate or self.mode not in (0, 2, 3, 4):
            return []
        n, start = self.period, self.loaded_at
        out = []
        if self.mode == 0:
            at = start + n
            if t0 < at <= t1:
                out.append(at)
        elif self.mode == 4:
            at = start + n + 1
            if t0 < at <= t1:
                out.append(at)
        else:                     # modes 2 and 3: OUT rises once per period, at reload
            k = max(1, (t0 - start) // n + 1)
            while start + k * n <= t1:
                if start + k * n > t0:
                    out.append(start + k * n)
                k += 1
        return out

    def next_edge(self, t: int) -> int | None:
        if self.loaded_at is None or not self.gate or self.mode not in (0, 2, 3, 4):
            return None
        n, start = self.period, self.loaded_at
        if self.mode == 0:
            at = start + n
            return at if at > t else None
        if self.mode == 4:
            at = start + n + 1
            return at if at > t else None
        k = max(1, (t - start) // n + 1)
        return start + k * n

    def status_byte(self, t: int) -> int:
        null = self.loaded_at is None or t < self.loaded_at
        return (0x80 if self.out(t) else 0) | (0x40 if null else 0) | self.control


class PIT8254:
    PORTS = (0x40, 0x41, 0x42, 0x43)

    def __init__(self):
        self.channels = [Channel(i) for i in range(3)]
        self.unsupported: list[str] = []

    def control(self, value: int, t: int) -> bool:
        """A write to port 0x43; True when the timing of an interrupt may have changed."""
        sc = value >> 6
        if sc == 3:                                   # read-back
            for i in range(3):
                if value & (2 << i):
                    ch = self.channels[i]
                    if not value & 0x20 and not ch.latch:
                        ch.latch = self._count_bytes(ch, t)
                    if not value & 0x10 and ch.status is None:
                        ch.status = ch.status_byte(t)
            return False
        ch = self.channels[sc]
        rw = (value >> 4) & 3
        if rw == 0:                                   # counter latch
            if not ch.latch:
                ch.latch = self._count_bytes(ch, t)
            return False
        ch.access = rw
        ch.mode = (value >> 1) & 7
        if ch.mode > 5:
            ch.mode -= 4                              # 6 and 7 are 2 and 3 (8254 data sheet)
        ch.bcd = bool(value & 1)
        ch.control = value & 0x3F
        ch.loaded_at = None                           # counting waits for a new count
        ch.write_msb = ch.read_msb = False
        ch.latch, ch.status = [], None
        if ch.mode in (1, 5):
            self.unsupported.append(f"channel {sc} mode {ch.mode} (gate-triggered)")
        return sc == 0

    def _count_bytes(self, ch: Channel, t: int) -> list[int]:
        v = ch.value(t)
        if ch.access == 1:
            return [v & 0xFF]
        if ch.access == 2:
            return [v >> 8 & 0xFF]
        return [v & 0xFF, v >> 8 & 0xFF]

    def read(self, port: int, t: int) -> int:
        ch = self.channels[port - 0x40]
        if ch.status is not None:
            s, ch.status = ch.status, None
            return s
        if ch.latch:
            return ch.latch.pop(0)
        b = self._count_bytes(ch, t)
        if ch.access == 3:
            v = b[1] if ch.read_msb else b[0]
            ch.read_msb = not ch.read_msb
            return v
        return b[0]

    def peek(self, port: int, t: int) -> int:
        ch = self.channels[port - 0x40]
        if ch.status is not None:
            return ch.status
        if ch.latch:
            return ch.latch[0]
        b = self._count_bytes(ch, t)
        return b[1] if ch.access == 3 and ch.read_msb else b[0]

    def write(self, port: int, value: int, t: int) -> bool:
        if port == 0x43:
            return self.control(value, t)
        ch = self.channels[port - 0x40]
        if ch.access == 1:
            ch.reload = value
        elif ch.access == 2:
            ch.reload = value << 8
        elif not ch.write_msb:
            ch.partial = value
            ch.write_msb = True
            if ch.mode == 0:
                ch.loaded_at = None                   # writing the LSB stops a mode-0 count
            return ch.index == 0
        else:
            ch.reload = ch.partial | value << 8
            ch.write_msb = False
        ch.loaded_at = t + 1
        return ch.index == 0

    def set_gate2(self, high: bool, t: int) -> None:
        ch = self.channels[2]
        if high and not ch.gate and ch.loaded_at is not None:
            ch.loaded_at = t + 1                      # a rising gate restarts modes 2 and 3
        ch.gate = high

    def next_edge(self, t: int) -> int | None:
        """The next clock after t at which channel 0's output (IRQ0) rises."""
        return self.channels[0].next_edge(t)
