"""Two cascaded 8259A programmable interrupt controllers (Intel 8259A data sheet; the PC/AT
wiring: master at ports 0x20/0x21, slave at 0xA0/0xA1 on the master's IR2).

Modelled: the ICW1-ICW4 initialization sequence, OCW1 (the mask), OCW2 non-specific and
specific EOI, OCW3 reads of IRR or ISR, automatic EOI, edge-triggered requests and the fully
nested priority (IR0 highest).  Not modelled, and recorded when a guest asks for them
(``unsupported``): level-triggered mode, rotating priorities, special mask mode, poll mode and
buffered mode.
"""

from __future__ import annotations


class PIC8259:
    """One 8259A.  ``irr``/``isr``/``imr`` are the request, in-service and mask registers."""

    def __init__(self, name: str, base: int, vector: int, imr: int = 0xFF):
        self.name, self.base = name, base
        self.vector = vector          # ICW2: vector of IR0 (low three bits zero)
        self.imr = imr
        self.irr = 0
        self.isr = 0
        self.read_isr = False
        self.auto_eoi = False
        self.init_step = 0            # 0: ready; 2, 3, 4: waiting for that ICW
        self.needs_icw4 = False
        self.single = False
        self.cascade = 0              # ICW3
        self.unsupported: list[str] = []

    # --- the CPU side -----------------------------------------------------------------------
    def read(self, port: int) -> int:
        if port == self.base:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def write(self, port: int, value: int) -> None:
        if port == self.base:
            if value & 0x10:                       # ICW1
                self.init_step = 2
                self.needs_icw4 = bool(value & 1)
                self.single = bool(value & 2)
                self.imr = 0
                self.isr = 0
                self.irr = 0
                self.read_isr = False
                self.auto_eoi = False
                if value & 0x08:
                    self.unsupported.append("level-triggered mode (ICW1.LTIM)")
            elif value & 0x08:                     # OCW3
                if value & 0x02:
                    self.read_isr = bool(value & 1)
                if value & 0x04:
                    self.unsupported.append("poll mode (OCW3.P)")
                if value & 0x40:
                    self.unsupported.append("special mask mode (OCW3.ESMM)")
            else:                                  # OCW2
                op = value >> 5
                if op in (1, 5):                   # non-specific EOI (5: with rotation)
                    self._eoi_highest()
                    if op == 5:
                        self.unsupported.append("rotate on non-specific EOI")
                elif op in (3, 7):                 # specific EOI (7: with rotation)
                    self.isr &= ~(1 << (value & 7))
                    if op == 7:
                        self.unsupported.append("rotate on specific EOI")
                elif op != 2:                      # 2 is "no operation"
                    self.unsupported.append(f"OCW2 rotation or priority command {value:#04x}")
            return
        if self.init_step == 2:                    # ICW2
            self.vector = value & 0xF8
            self.init_step = 0 if self.single and not self.needs_icw4 else (4 if self.single else 3)
        elif self.init_step == 3:                  # ICW3
            self.cascade = value
            self.init_step = 4 if self.needs_icw4 else 0
        elif self.init_step == 4:                  # ICW4
            self.auto_eoi = bool(value & 2)
            if value & 0x0C:
                self.unsupported.append("buffered mode (ICW4.BUF)")
            self.init_step = 0
        else:                                      # OCW1
            self.imr = value

    def _eoi_highest(self) -> None:
        for i in range(8):
            if self.isr >> i & 1:
                self.isr &= ~(1 << i)
                return

    # --- the device side ----------------------------------------------------------------------
    def pulse(self, line: int) -> None:
        """A rising edge on IR ``line``: the request is latched until acknowledged."""
        if self.init_step == 0:
            self.irr |= 1 << line

    def highest(self) -> int | None:
        """The line the 8259A would present: highest unmasked request above every line in
        service (fully nested mode), or None."""
        pending = self.irr & ~self.imr
        for i in range(8):
            if self.isr >> i & 1:
                return None
            if pending >> i & 1:
                return i
        return None

    def acknowledge(self, line: int) -> None:
        self.irr &= ~(1 << line)
        if not self.auto_eoi:
            self.isr |= 1 << line

    def snapshot(self) -> dict:
        return {"vector": self.vector, "imr": self.imr, "irr": self.irr, "isr": self.isr}


class PICPair:
    """Master and slave as the PC/AT wires them: the slave's INT output on the master's IR2.

    The initial state is what a BIOS leaves before a multiboot loader runs: initialized, master
    vectors 0x08-0x0F, slave 0x70-0x77, every line masked (the kernel starts with EFLAGS.IF = 0
    and programs the controllers itself).
    """

    PORTS = (0x20, 0x21, 0xA0, 0xA1)

    def __init__(self):
        self.master = PIC8259("master", 0x20, 0x08)
        self.slave = PIC8259("slave", 0xA0, 0x70)
        self.master.cascade, self.slave.cascade = 0x04, 0x02

    def chip(self, port: int) -> PIC8259:
        return self.master if port < 0xA0 else self.slave

    def read(self, port: int) -> int:
        return self.chip(port).read(port)

    def write(self, port: int, value: int) -> None:
        self.chip(port).write(port, value)
        self._cascade()

    def pulse(self, irq: int) -> None:
        (self.master if irq < 8 else self.slave).pulse(irq & 7)
        self._cascade()

    def _cascade(self) -> None:
        # The slave's request is a level on the master's IR2 while it has one to present.
        if self.slave.highest() is not None:
            self.master.irr |= 1 << 2
        else:
            self.master.irr &= ~(1 << 2)

    def pending(self) -> bool:
        """The INTR pin: some request would be presented to the CPU."""
        line = self.master.highest()
        if line is None:
            return False
        return line != 2 or self.slave.highest() is not None

    def acknowledge(self) -> int | None:
        """The two INTA cycles: the vector of the highest request, now in service."""
        line = self.master.highest()
        if line is None:
            return None
        if line == 2:
            s = self.slave.highest()
            if s is None:
                return None
            self.master.acknowledge(2)
            self.slave.acknowledge(s)
            self._cascade()
            return self.slave.vector | s
        self.master.acknowledge(line)
        return self.master.vector | line

    @property
    def unsupported(self) -> list[str]:
        return self.master.unsupported + self.slave.unsupported
