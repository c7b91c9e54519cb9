"""The MC146818 real-time clock and CMOS RAM behind ports 0x70 (index; bit 7 masks NMI) and
0x71 (data), as on the PC/AT (MC146818A data sheet; IBM PC/AT Technical Reference).

The clock shows ``EPOCH`` plus the virtual time, so a run reads the same date every time.
Registers 0x00-0x09 and 0x32 (century) are the time and date, in BCD and 24-hour mode unless
status register B says binary or 12-hour; A shows update-in-progress during the last 244 us of
each second; C reads and clears its flags; D reports valid RAM; 0x15-0x18 and 0x30-0x31 hold the
memory size.  Writes to the time registers set the clock.  The periodic, alarm and update
interrupts (IRQ8) are not modelled (``unsupported`` records a guest that enables them).
"""

from __future__ import annotations

import datetime as _dt

EPOCH = _dt.datetime(2000, 1, 1, 0, 0, 0)


def _bcd(v: int) -> int:
    return (v // 10) << 4 | (v % 10)


def _unbcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0xF)


class CMOS:
    PORTS = (0x70, 0x71)

    def __init__(self, hz: int, ram_size: int):
        self.hz = hz
        self.index = 0
        self.ram = bytearray(128)
        self.ram[0x0A] = 0x26                  # 32.768 kHz time base, 1024 Hz rate selection
        self.ram[0x0B] = 0x02                  # 24-hour, BCD, no interrupts
        self.ram[0x0D] = 0x80                  # valid RAM and time
        base_kb, ext_kb = 640, max(0, ram_size // 1024 - 1024)
        self.ram[0x15:0x17] = base_kb.to_bytes(2, "little")
        ext = min(ext_kb, 0xFFFF).to_bytes(2, "little")
        self.ram[0x17:0x19] = ext
        self.ram[0x30:0x32] = ext
        self.offset = _dt.timedelta(0)         # set by guest writes to the time registers
        self.unsupported: list[str] = []

    def _now(self, t: int) -> _dt.datetime:
        return EPOCH + self.offset + _dt.timedelta(seconds=t // self.hz)

    def _time_regs(self, t: int) -> dict[int, int]:
        d = self._now(t)
        binary, h24 = self.ram[0x0B] & 4, self.ram[0x0B] & 2
        enc = (lambda v: v) if binary else _bcd
        hour = d.hour
        hv = enc(hour) if h24 else (enc(hour % 12 or 12) | (0x80 if hour >= 12 else 0))
        return {0x00: enc(d.second), 0x02: enc(d.minute), 0x04: hv, 0x06: d.isoweekday() % 7 + 1,
                0x07: enc(d.day), 0x08: enc(d.month), 0x09: enc(d.year % 100),
                0x32: enc(d.year // 100)}

    def peek(self, port: int, t: int) -> int:
        if port == 0x70:
            return 0xFF                        # the index register is write-only
        i = self.index
        regs = self._time_regs(t)
        if i in regs:
            return regs[i]
        if i == 0x0A:
            uip = (t % self.hz) >= self.hz - (self.hz * 244) // 1_000_000
            return (self.ram[0x0A] & 0x7F) | (0x80 if uip else 0)
        return self.ram[i]

    def read(self, port: int, t: int) -> int:
        v = self.peek(port, t)
        if port == 0x71 and self.index == 0x0C:
            self.ram[0x0C] = 0
        return v

    def write(self, port: int, value: int, t: int) -> None:
        if port == 0x70:
            self.index = value & 0x7F
            return
        i = self.index
        regs = self._time_regs(t)
        if i in regs:
            binary = self.ram[0x0B] & 4
            dec = (lambda v: v) if binary else _unbcd
            d = self._now(t)
            fields = {"second": d.second, "minute": d.minute, "hour": d.hour, "day": d.day,
                      "month": d.month, "year": d.year}
            try:
                if i == 0x00:
                    fields["second"] = dec(value)
                elif i == 0x02:
                    fields["minute"] = dec(value)
                elif i == 0x04:
                    fields["hour"] = dec(value & 0x7F)
                elif i == 0x07:
                    fields["day"] = dec(value)
                elif i == 0x08:
                    fields["month"] = dec(value)
                elif i == 0x09:
                    fields["year"] = d.year // 100 * 100 + dec(value)
                elif i == 0x32:
                    fields["year"] = dec(value) * 100 + d.year % 100
                new = _dt.datetime(**fields)
            except ValueError:
                return                          # an impossible date: the chip keeps counting
            self.offset += new - d
            return
        if i == 0x0B and value & 0x70:
            self.unsupported.append("RTC interrupts (status register B bits 4-6)")
        if i not in (0x0C, 0x0D):
            self.ram[i] = value
