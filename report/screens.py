"""VGA text frames as PNG pictures (Pillow).

A frame is 80x25 cells of character and attribute.  Colours are what the VGA shows: the
attribute's foreground and background nibbles (the background's bit 3 means blinking while the
attribute controller's blink bit is set; blinking cells are drawn in their visible phase) go
through the attribute palette into the DAC, whose 6-bit entries are scaled to 8 bits.
Characters are code page 437, drawn with a monospace TrueType font (DejaVu Sans Mono where it
is installed, Pillow's own font otherwise), so pictures from two machines can differ in their
glyphs, never in their text or colours.
"""

from __future__ import annotations

import os
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from pgvirt.monitor.devices import COLS, ROWS, Frame

CELL_W, CELL_H = 9, 16
_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
          "/usr/share/fonts/TTF/DejaVuSansMono.ttf")


@lru_cache(maxsize=1)
def _font():
    for path in _FONTS:
        if os.path.exists(path):
            return ImageFont.truetype(path, 14)
    return ImageFont.load_default(size=14)


def _rgb(frame: Frame, colour: int) -> tuple[int, int, int]:
    r, g, b = frame.dac[frame.palette[colour & 0xF] & 0xFF]
    return tuple(round(v * 255 / 63) for v in (r, g, b))


def render(frame: Frame, mark: str | None = None) -> Image.Image:
    """The screen of ``frame``; ``mark`` adds a caption bar (e.g. where a run diverged)."""
    extra = CELL_H + 4 if mark else 0
    img = Image.new("RGB", (COLS * CELL_W, ROWS * CELL_H + extra), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    font = _font()
    text = frame.text
    for i in range(COLS * ROWS):
        ch, attr = text[2 * i], text[2 * i + 1]
        bg = (attr >> 4) & (0x7 if frame.blink else 0xF)
        x, y = (i % COLS) * CELL_W, (i // COLS) * CELL_H
        if bg:
            draw.rectangle((x, y, x + CELL_W - 1, y + CELL_H - 1), fill=_rgb(frame, bg))
        if ch not in (0, 0x20, 0xFF):
            draw.text((x, y), bytes([ch]).decode("cp437"), fill=_rgb(frame, attr & 0xF), font=font)
        if frame.cursor == i:
            draw.rectangle((x, y + CELL_H - 3, x + CELL_W - 1, y + CELL_H - 2),
                           fill=_rgb(frame, attr & 0xF))
    if mark:
        y = ROWS * CELL_H + 2
        draw.rectangle((0, y - 2, img.width, img.height), fill=(160, 0, 0))
        draw.text((4, y), mark[:COLS], fill=(255, 255, 255), font=font)
    return img


def side_by_side(frames: list[tuple[str, Frame, str | None]]) -> Image.Image:
    """Frames next to each other, each with its label (and mark) underneath."""
    tiles = [render(f, mark) for _label, f, mark in frames]
    label_h = CELL_H + 6
    w = sum(t.width for t in tiles) + 8 * (len(tiles) - 1)
    h = max(t.height for t in tiles) + label_h
    out = Image.new("RGB", (w, h), (40, 40, 40))
    draw = ImageDraw.Draw(out)
    x = 0
    for (label, _f, _m), t in zip(frames, tiles):
        out.paste(t, (x, label_h))
        draw.text((x + 4, 2), label, fill=(255, 255, 255), font=_font())
        x += t.width + 8
    return out


def _save(img: Image.Image, path: str) -> str:
    tmp = f"{path}.tmp{os.getpid()}.png"
    img.save(tmp, "PNG")
    os.replace(tmp, path)
    return path


def write_run(result, directory: str, final: Frame) -> list[str]:
    """One PNG per distinct frame of ``result`` and one of the final screen."""
    os.makedirs(directory, exist_ok=True)
    out = []
    for tick, frame in result.record.frames:
        out.append(_save(render(frame), os.path.join(directory, f"{result.monitor}-tick{tick:05d}.png")))
    out.append(_save(render(final), os.path.join(directory, f"{result.monitor}-final.png")))
    return out


def write_comparison(finals: dict[str, Frame], marks: dict[str, str], directory: str) -> str:
    """Native and every monitor side by side at the end of the lock step."""
    os.makedirs(directory, exist_ok=True)
    order = ["native"] + [m for m in finals if m != "native"]
    img = side_by_side([(m, finals[m], marks.get(m)) for m in order])
    return _save(img, os.path.join(directory, "compare-final.png"))


__all__ = ["render", "side_by_side", "write_run", "write_comparison", "CELL_W", "CELL_H"]
