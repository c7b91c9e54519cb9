"""VGA text mode: the frame buffer at 0xB8000 (80x25 cells of character and attribute) lives in
guest RAM; this device holds the registers a text-mode guest programs (IBM VGA Technical
Reference): the CRT controller (0x3D4/0x3D5, cursor shape and position, start address), the
attribute controller (0x3C0/0x3C1 with the flip-flop that reading 0x3DA resets; palette and
mode control, whose bit 3 selects blinking), the DAC (0x3C7-0x3C9: 256 6-bit RGB entries),
the miscellaneous output register (0x3C2/0x3CC), the sequencer and graphics controller index
and data registers (stored), and input status 1 (0x3DA: vertical retrace 60 times a virtual
second, display-enable toggling every scan line).  ``frame`` is one picture of the screen.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT_BASE, COLS, ROWS = 0xB8000, 80, 25
TEXT_BYTES = COLS * ROWS * 2


def _ega_dac() -> list[tuple[int, int, int]]:
    """The DAC as the BIOS loads it for text mode: entry i is the EGA colour rgbRGB of i."""
    out = []
    for i in range(256):
        if i < 64:
            r = ((i >> 2) & 1) * 0x2A + ((i >> 5) & 1) * 0x15
            g = ((i >> 1) & 1) * 0x2A + ((i >> 4) & 1) * 0x15
            b = (i & 1) * 0x2A + ((i >> 3) & 1) * 0x15
            out.append((r, g, b))
        else:
            out.append((0, 0, 0))
    return out


@dataclass(frozen=True)
class Frame:
    """The screen at one moment: the text cells and what decides how they look."""

    time: int                   # virtual clock
    text: bytes                 # 4000 bytes: character, attribute, ...
    palette: tuple              # the 16 attribute-palette entries (DAC indices)
    dac: tuple                  # 256 (r, g, b), 6 bits each
    blink: bool                 # attribute bit 7 blinks (True) or selects bright backgrounds
    cursor: int | None          # cell index of the cursor, None when it is off
    start: int                  # CRTC start address (cells)

    def key(self) -> tuple:
        """What two frames must share to look the same."""
        return (self.text, self.palette, self.dac, self.blink, self.cursor, self.start)

    def rows(self) -> list[str]:
        """The characters as text (code page 437; NUL, which the VGA shows as a blank, as a
        space), one string per row."""
        chars = self.text[0::2].replace(b"\0", b" ")
        return [chars[r * COLS:(r + 1) * COLS].decode("cp437") for r in range(ROWS)]


class VGA:
    PORTS = tuple(range(0x3B0, 0x3E0))

    def __init__(self, hz: int):
        self.hz = hz
        self.crtc_index = 0
        self.crtc = bytearray(25)
        self.crtc[0x0A], self.crtc[0x0B] = 0x0D, 0x0E       # an underline cursor, as the BIOS sets
        self.attr_index = 0
        self.attr_flip = False                               # False: next 0x3C0 write is an index
        self.attr = bytearray([0, 1, 2, 3, 4, 5, 0x14, 7, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D,
                               0x3E, 0x3F, 0x0C, 0x00, 0x0F, 0x08, 0x00])
        self.dac = [list(c) for c in _ega_dac()]
        self.dac_write, self.dac_read, self.dac_part = 0, 0, 0
        self.dac_mode = 0                                    # 0: write mode, 3: read mode
        self.pel_mask = 0xFF
        self.misc = 0x67
        self.seq_index, self.seq = 0, bytearray(5)
        self.gc_index, self.gc = 0, bytearray(9)

    def _status(self, t: int) -> int:
        frame = self.hz // 60
        vretrace = (t % frame) >= frame - frame // 20
        line = max(1, frame // 449)
        disp = (t // line) % 2 == 1
        return (0x08 if vretrace else 0) | (0x01 if disp or vretrace else 0)

    def peek(self, port: int, t: int) -> int:
        if port in (0x3D5, 0x3B5):
            return self.crtc[self.crtc_index] if self.crtc_index < len(self.crtc) else 0xFF
        if port in (0x3D4, 0x3B4):
            return self.crtc_index
        if port == 0x3C0:
            return self.attr_index
        if port == 0x3C1:
            return self.attr[self.attr_index] if self.attr_index < len(self.attr) else 0
        if port in (0x3DA, 0x3BA):
            return self._status(t)
        if port == 0x3C9:
            return self.dac[self.dac_read][self.dac_part]
        if port == 0x3C7:
            return self.dac_mode
        if port == 0x3C8:
            return self.dac_write
        if port == 0x3C6:
            return self.pel_mask
        if port == 0x3CC:
            return self.misc
        if port == 0x3C4:
            return self.seq_index
        if port == 0x3C5:
            return self.seq[self.seq_index] if self.seq_index < len(self.seq) else 0xFF
        if port == 0x3CE:
            return self.gc_index
        if port == 0x3CF:
            return self.gc[self.gc_index] if self.gc_index < len(self.gc) else 0xFF
        return 0xFF

    def read(self, port: int, t: int) -> int:
        v = self.peek(port, t)
        if port in (0x3DA, 0x3BA):
            self.attr_flip = False
        elif port == 0x3C9:
            self.dac_part += 1
            if self.dac_part == 3:
                self.dac_part, self.dac_read = 0, (self.dac_read + 1) & 0xFF
        return v

    def write(self, port: int, value: int, t: int) -> None:
        if port in (0x3D4, 0x3B4):
            self.crtc_index = value & 0x1F
        elif port in (0x3D5, 0x3B5):
            if self.crtc_index < len(self.crtc):
                self.crtc[self.crtc_index] = value
        elif port == 0x3C0:
            if not self.attr_flip:
                self.attr_index = value & 0x1F
            elif self.attr_index < len(self.attr):
                self.attr[self.attr_index] = value
            self.attr_flip = not self.attr_flip
        elif port == 0x3C8:
            self.dac_write, self.dac_part, self.dac_mode = value, 0, 0
        elif port == 0x3C7:
            self.dac_read, self.dac_part, self.dac_mode = value, 0, 3
        elif port == 0x3C9:
            self.dac[self.dac_write][self.dac_part] = value & 0x3F
            self.dac_part += 1
            if self.dac_part == 3:
                self.dac_part, self.dac_write = 0, (self.dac_write + 1) & 0xFF
        elif port == 0x3C6:
            self.pel_mask = value
        elif port == 0x3C2:
            self.misc = value
        elif port == 0x3C4:
            self.seq_index = value
        elif port == 0x3C5:
            if self.seq_index < len(self.seq):
                self.seq[self.seq_index] = value
        elif port == 0x3CE:
            self.gc_index = value
        elif port == 0x3CF:
            if self.gc_index < len(self.gc):
                self.gc[self.gc_index] = value

    def frame(self, t: int, text: bytes) -> Frame:
        start = self.crtc[0x0C] << 8 | self.crtc[0x0D]
        off = self.crtc[0x0A] & 0x20
        pos = (self.crtc[0x0E] << 8 | self.crtc[0x0F]) - start
        cursor = None if off or not 0 <= pos < COLS * ROWS else pos
        return Frame(t, bytes(text), tuple(self.attr[:16]), tuple(tuple(c) for c in self.dac),
                     bool(self.attr[0x10] & 0x08), cursor, start)
