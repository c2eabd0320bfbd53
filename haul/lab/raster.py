"""An RGB canvas with the few drawing operations a plot needs, and a PNG encoder.

The canvas is a bytearray of 8-bit RGB triples, row by row from the top;
(0, 0) is the top left pixel. Drawing outside the canvas is clipped. The
encoder writes one IHDR (8-bit truecolour), one zlib-compressed IDAT whose
rows all use filter type 0 (none), and IEND, each chunk with its CRC-32.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from haul.lab import font5x7

Color = tuple[int, int, int]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Canvas:
    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"a canvas of {width}x{height} pixels has none")
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def get(self, x: int, y: int) -> Color:
        i = (y * self.width + x) * 3
        return self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]

    def set(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def fill_rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill the pixels with x0 <= x <= x1 and y0 <= y <= y1 (corners in any order)."""
        x0, x1 = max(min(x0, x1), 0), min(max(x0, x1), self.width - 1)
        y0, y1 = max(min(y0, y1), 0), min(max(y0, y1), self.height - 1)
        if x0 > x1 or y0 > y1:
            return
        row = bytes(color) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            i = (y * self.width + x0) * 3
            self.pixels[i : i + len(row)] = row

    def blend_rect(self, x0: int, y0: int, x1: int, y1: int, color: Color, alpha: float) -> None:
        """Lay ``color`` over the rectangle with opacity ``alpha`` (0..1)."""
        x0, x1 = max(min(x0, x1), 0), min(max(x0, x1), self.width - 1)
        y0, y1 = max(min(y0, y1), 0), min(max(y0, y1), self.height - 1)
        if x0 > x1 or y0 > y1:
            return
        keep = 1.0 - alpha
        lut = [bytes(round(v * keep + c * alpha) for v in range(256)) for c in color]
        for y in range(y0, y1 + 1):
            start = (y * self.width + x0) * 3
            end = start + (x1 - x0 + 1) * 3
            for channel in range(3):
                self.pixels[start + channel : end : 3] = self.pixels[
                    start + channel : end : 3
                ].translate(lut[channel])

    def hline(self, x0: int, x1: int, y: int, color: Color) -> None:
        self.fill_rect(x0, y, x1, y, color)

    def vline(self, x: int, y0: int, y1: int, color: Color) -> None:
        self.fill_rect(x, y0, x, y1, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """A one-pixel line from (x0, y0) to (x1, y1), both ends included."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.set(x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color, *, scale: int = 1,
             vertical: bool = False) -> None:
        """Draw ``text`` with its cell's top left at (x, y); ``vertical`` turns it a quarter
        to the left (it reads upwards, its top left then at (x, y + text_width))."""
        advance = (font5x7.WIDTH + 1) * scale
        for n, char in enumerate(text):
            for gx, gy in font5x7.glyph(char):
                for dx in range(scale):
                    for dy in range(scale):
                        px, py = n * advance + gx * scale + dx, gy * scale + dy
                        if vertical:
                            self.set(x + py, y + text_width(text, scale) - 1 - px, color)
                        else:
                            self.set(x + px, y + py, color)

    def png(self) -> bytes:
        return encode_png(self.width, self.height, bytes(self.pixels))

    def write_png(self, path: Path) -> None:
        path.write_bytes(self.png())


def text_width(text: str, scale: int = 1) -> int:
    """Pixels from the first glyph's left to the last glyph's right edge."""
    if not text:
        return 0
    return (len(text) * (font5x7.WIDTH + 1) - 1) * scale


def text_height(scale: int = 1) -> int:
    return font5x7.HEIGHT * scale


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """A PNG file of ``rgb`` (width*height*3 bytes, rows from the top)."""
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError(f"{len(rgb)} bytes are not {width}x{height} RGB pixels")
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))
