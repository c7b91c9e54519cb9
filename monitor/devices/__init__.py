"""The devices every monitor gives its guest (8259A pair, 8254, 8042, RTC/CMOS, VGA text mode,
the port 0xE9 console), on one virtual clock; ``bus.Bus`` wires them."""

from .bus import CONSOLE, HZ, Bus, PortAccess
from .kbd import KeyEvent, KeysError, parse_keys
from .vga import COLS, ROWS, TEXT_BASE, Frame

__all__ = ["Bus", "PortAccess", "HZ", "CONSOLE", "KeyEvent", "KeysError", "parse_keys", "Frame",
           "COLS", "ROWS", "TEXT_BASE"]
