"""The 8042 keyboard controller and its keyboard (IBM PC/AT Technical Reference; ports 0x60
data, 0x64 status/command), with keys typed by a script instead of a person.

The controller translates to scan code set 1, as a BIOS leaves it (command byte 0x45:
keyboard interrupt on, system flag, translation).  Each byte that enters the output buffer
raises IRQ1 when the command byte enables it; reading port 0x60 takes the byte, and the next
queued one enters.  Controller commands: 0x20/0x60 (read/write command byte), 0xAA (self
test), 0xAB (interface test), 0xAD/0xAE (disable/enable the keyboard), 0xA7/0xA8 (auxiliary
port), 0xD1 (write the output port: bit 0 low resets the system), 0xFE and the other pulse
commands 0xF0-0xFF (bit 0 of the pulse resets the system).  Keyboard commands sent through port
0x60 are acknowledged (0xFA); 0xFF answers 0xFA 0xAA, 0xF2 answers 0xFA 0xAB 0x83.

``Script`` turns ``--input`` text into timed scan codes (see ``parse_keys``).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

# Scan code set 1 make codes; break = make | 0x80; keys in EXTENDED are prefixed with 0xE0.
MAKE = {
    "esc": 0x01, "1": 0x02, "2": 0x03, "3": 0x04, "4": 0x05, "5": 0x06, "6": 0x07, "7": 0x08,
    "8": 0x09, "9": 0x0A, "0": 0x0B, "-": 0x0C, "=": 0x0D, "backspace": 0x0E, "tab": 0x0F,
    "q": 0x10, "w": 0x11, "e": 0x12, "r": 0x13, "t": 0x14, "y": 0x15, "u": 0x16, "i": 0x17,
    "o": 0x18, "p": 0x19, "[": 0x1A, "]": 0x1B, "enter": 0x1C, "ctrl": 0x1D, "a": 0x1E,
    "s": 0x1F, "d": 0x20, "f": 0x21, "g": 0x22, "h": 0x23, "j": 0x24, "k": 0x25, "l": 0x26,
    ";": 0x27, "'": 0x28, "`": 0x29, "shift": 0x2A, "\\": 0x2B, "z": 0x2C, "x": 0x2D,
    "c": 0x2E, "v": 0x2F, "b": 0x30, "n": 0x31, "m": 0x32, ",": 0x33, ".": 0x34, "/": 0x35,
    "rshift": 0x36, "alt": 0x38, "space": 0x39, "capslock": 0x3A,
    **{f"f{i}": 0x3A + i for i in range(1, 11)},
    "up": 0x48, "left": 0x4B, "right": 0x4D, "down": 0x50, "home": 0x47, "end": 0x4F,
    "pgup": 0x49, "pgdn": 0x51, "insert": 0x52, "delete": 0x53,
}
EXTENDED = frozenset({"up", "left", "right", "down", "home", "end", "pgup", "pgdn", "insert",
                      "delete"})


class KeysError(ValueError):
    """An ``--input`` script that cannot be read (one line)."""


@dataclass(frozen=True)
class KeyEvent:
    time: int              # virtual clock (PIT clocks) at which the bytes reach the controller
    codes: bytes
    label: str


def parse_keys(text: str, start: int, hold: int, gap: int) -> list[KeyEvent]:
    """``--input`` text -> timed scan codes.

    Tokens, separated by spaces or commas: a key name (``MAKE``: letters, digits, ``space``,
    ``enter``, ``esc``, ``left``, ``f1``...), optionally ``*N`` to press it N times, or ``+N``
    to wait N more gaps.  Each press is the make code at time t and the break code ``hold``
    clocks later; the next token starts ``gap`` clocks after the press.  The first press is at
    ``start``.
    """
    events: list[KeyEvent] = []
    t = start
    for tok in [w for w in re.split(r"[\s,]+", text.strip()) if w]:
        m = re.fullmatch(r"\+(\d+)", tok)
        if m:
            t += int(m.group(1)) * gap
            continue
        m = re.fullmatch(r"(.+?)(?:\*(\d+))?", tok)
        name, count = m.group(1).lower(), int(m.group(2) or 1)
        if name not in MAKE:
            raise KeysError(f"--input: unknown key {tok!r} (keys: letters, digits, space, enter, "
                            "esc, left, right, up, down, f1-f10, ...; +N waits)")
        if not 1 <= count <= 10000:
            raise KeysError(f"--input: repeat count of {tok!r} must be 1..10000")
        pre = b"\xe0" if name in EXTENDED else b""
        for _ in range(count):
            events.append(KeyEvent(t, pre + bytes([MAKE[name]]), f"{name} down"))
            events.append(KeyEvent(t + hold, pre + bytes([MAKE[name] | 0x80]), f"{name} up"))
            t += gap
    events.sort(key=lambda e: e.time)
    return events


class KBC8042:
    PORTS = (0x60, 0x64)

    def __init__(self, script: list[KeyEvent] = ()):
        self.script = deque(sorted(script, key=lambda e: e.time))
        self.queue: deque[int] = deque()     # bytes waiting behind the output buffer
        self.out: int | None = None          # the output buffer
        self.command_byte = 0x45
        self.pending_write: str | None = None   # "command" | "output" | "keyboard"
        self.kbd_param = False
        self.last_was_command = False
        self.keyboard_enabled = True
        self.reset_requested = False
        self.irq_edges = 0                   # bytes that entered the buffer with IRQ1 enabled
        self.unsupported: list[str] = []

    # --- time --------------------------------------------------------------------------------
    def next_event(self) -> int | None:
        return self.script[0].time if self.script else None

    def advance(self, t: int) -> int:
        """Deliver script bytes due by ``t``; the number of IRQ1 edges raised."""
        before = self.irq_edges
        while self.script and self.script[0].time <= t:
            ev = self.script.popleft()
            if self.keyboard_enabled:
                for b in ev.codes:
                    self._enqueue(b)
        return self.irq_edges - before

    def _enqueue(self, b: int) -> None:
        if self.out is None:
            self.out = b
            if self.command_byte & 1:
                self.irq_edges += 1
        else:
            self.queue.append(b)

    # --- ports -------------------------------------------------------------------------------
    def status(self) -> int:
        return ((1 if self.out is not None else 0) | 0x04 | (0x08 if self.last_was_command else 0)
                | 0x10)

    def peek(self, port: int) -> int:
        if port == 0x64:
            return self.status()
        return self.out if self.out is not None else 0

    def read(self, port: int) -> tuple[int, int]:
        """(value, IRQ1 edges raised by the read)."""
        if port == 0x64:
            return self.status(), 0
        v = self.out if self.out is not None else 0
        before = self.irq_edges
        self.out = None
        if self.queue:
            self._enqueue(self.queue.popleft())
        return v, self.irq_edges - before

    def write(self, port: int, value: int) -> int:
        """IRQ1 edges raised by the write (responses entering the buffer)."""
        before = self.irq_edges
        if port == 0x64:
            self.last_was_command = True
            self._command(value)
        else:
            self.last_was_command = False
            w, self.pending_write = self.pending_write, None
            if w == "command":
                self.command_byte = value
            elif w == "output":
                if not value & 1:
                    self.reset_requested = True
            else:
                self._keyboard(value)
        return self.irq_edges - before

    def _command(self, c: int) -> None:
        if c == 0x20:
            self._enqueue(self.command_byte)
        elif c == 0x60:
            self.pending_write = "command"
        elif c == 0xAA:
            self._enqueue(0x55)
        elif c == 0xAB:
            self._enqueue(0x00)
        elif c == 0xAD:
            self.keyboard_enabled = False
        elif c == 0xAE:
            self.keyboard_enabled = True
        elif c in (0xA7, 0xA8):
            pass                                   # no auxiliary device is attached
        elif c == 0xD1:
            self.pending_write = "output"
        elif c >= 0xF0:
            if not c & 1:                          # pulse output port bit 0: system reset
                self.reset_requested = True
        else:
            self.unsupported.append(f"8042 command {c:#04x}")

    def _keyboard(self, c: int) -> None:
        if self.kbd_param:
            self.kbd_param = False
            self._enqueue(0xFA)
        elif c in (0xED, 0xF0, 0xF3):              # LEDs, scan code set, typematic: a parameter
            self.kbd_param = True
            self._enqueue(0xFA)
        elif c == 0xFF:
            self._enqueue(0xFA)
            self._enqueue(0xAA)
        elif c == 0xF2:
            for b in (0xFA, 0xAB, 0x83):
                self._enqueue(b)
        else:
            self._enqueue(0xFA)
