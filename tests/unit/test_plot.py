"""The latency plot: a PNG that decodes, with bands, points and crosses where they belong."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from haul.lab import font5x7
from haul.lab.loadrun import LoadRun, Mark, Sample, Window
from haul.lab.plot import (
    BAND_ALPHA,
    BAND_COLOR,
    FAIL_COLOR,
    MARK_COLOR,
    OK_COLOR,
    WHITE,
    Band,
    LatencyChart,
    Point,
    nice_step,
    tick_label,
    write_latency_png,
)
from haul.lab.raster import Canvas, encode_png, text_width

Pixels = list[list[tuple[int, int, int]]]


def decode_png(data: bytes) -> tuple[int, int, Pixels]:
    """A decoder for what the encoder writes: 8-bit RGB, no interlace, filter type 0 only.
    Checks the signature, every chunk's CRC, and the chunk order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds, idat = 8, [], b""
    width = height = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        kinds.append(kind)
        if kind == b"IHDR":
            width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, color, comp, filt, interlace) == (8, 2, 0, 0, 0)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert pos == len(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    raw = zlib.decompress(idat)
    stride = width * 3
    assert len(raw) == height * (stride + 1)
    rows: Pixels = []
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        assert line[0] == 0, f"row {y} uses filter {line[0]}"
        rows.append([(line[1 + 3 * x], line[2 + 3 * x], line[3 + 3 * x]) for x in range(width)])
    return width, height, rows


def blended(under: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(round(u * (1 - BAND_ALPHA) + c * BAND_ALPHA) for u, c in zip(under, BAND_COLOR))


def test_encoder_round_trips_a_small_image() -> None:
    c = Canvas(3, 2, (1, 2, 3))
    c.set(2, 1, (250, 0, 7))
    c.set(5, 5, (9, 9, 9))  # clipped, not an error
    w, h, rows = decode_png(c.png())
    assert (w, h) == (3, 2)
    assert rows == [[(1, 2, 3)] * 3, [(1, 2, 3), (1, 2, 3), (250, 0, 7)]]
    with pytest.raises(ValueError):
        encode_png(2, 2, b"\x00" * 11)


def test_blend_and_fill_clip_to_the_canvas() -> None:
    c = Canvas(4, 4)
    c.fill_rect(2, 2, 10, -5, (0, 0, 0))  # corners in any order, clipped
    assert [c.get(x, 0) for x in range(4)] == [WHITE, WHITE, (0, 0, 0), (0, 0, 0)]
    assert c.get(1, 3) == WHITE and c.get(3, 3) == WHITE
    c.blend_rect(0, 0, 0, 0, BAND_COLOR, BAND_ALPHA)
    assert c.get(0, 0) == blended(WHITE)


def test_text_draws_each_glyph_where_the_font_says() -> None:
    c = Canvas(40, 12)
    c.text(3, 1, "7a", (0, 0, 0))
    ink = {(x, y) for y in range(12) for x in range(40) if c.get(x, y) == (0, 0, 0)}
    want = {(3 + gx, 1 + gy) for gx, gy in font5x7.glyph("7")}
    want |= {(3 + 6 + gx, 1 + gy) for gx, gy in font5x7.glyph("a")}
    assert ink == want
    assert text_width("7a") == 11


def test_vertical_text_is_the_same_ink_turned_a_quarter() -> None:
    flat, up = Canvas(20, 20), Canvas(20, 20)
    flat.text(0, 0, "Lg", (0, 0, 0))
    up.text(0, 0, "Lg", (0, 0, 0), vertical=True)
    w = text_width("Lg")
    ink_flat = {(x, y) for y in range(20) for x in range(20) if flat.get(x, y) != WHITE}
    ink_up = {(x, y) for y in range(20) for x in range(20) if up.get(x, y) != WHITE}
    assert ink_up == {(y, w - 1 - x) for x, y in ink_flat}


def test_every_glyph_fits_its_cell_and_unknown_characters_show() -> None:
    for char, pixels in font5x7.GLYPHS.items():
        assert all(0 <= x < font5x7.WIDTH and 0 <= y < font5x7.HEIGHT for x, y in pixels), char
        assert pixels or char == " ", f"glyph {char!r} has no ink"
    for char in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz()->%.:/":
        assert char in font5x7.GLYPHS
    assert font5x7.glyph("\u00e9") == font5x7.glyph("\u2603") != font5x7.glyph("0")
    with pytest.raises(ValueError):
        font5x7._parse("####|#...#")


def test_ticks_are_round_numbers() -> None:
    assert nice_step(30, 10) == 5
    assert nice_step(7, 10) == 1
    assert nice_step(0.8, 6) == 0.2
    assert nice_step(1234, 6) == 500
    assert [tick_label(v, 0.2) for v in (0, 0.2, 0.4000000001)] == ["0", "0.2", "0.4"]
    assert tick_label(25, 5) == "25" and tick_label(0.05, 0.05) == "0.05"
    # a 6 s run that ended a moment late keeps a 6 s axis; a longer one gets the next tick
    assert LatencyChart([Point(0, 0.001)], duration_s=6.001).x_max == 6
    assert LatencyChart([Point(0, 0.001)], duration_s=6.2).x_max == 7


def synthetic() -> tuple[list[Point], list[Band]]:
    # baseline of 1 ms every 10 ms for 10 s, one 400 ms request at 4 s, a failure at 7 s
    points = [Point(i / 100, 0.001) for i in range(1000) if not 390 <= i <= 430]
    points.append(Point(4.0, 0.4))
    points.append(Point(7.0, 0.2, ok=False))
    return points, [Band("A->B", 3.9, 4.4), Band("B->A", 8.0, 8.02)]


def test_chart_puts_points_bands_and_failures_where_they_belong(tmp_path: Path) -> None:
    points, bands = synthetic()
    chart = LatencyChart(points, bands=bands, duration_s=10.0, title="test", y_scale="linear")
    png = tmp_path / "chart.png"
    png.write_bytes(chart.render().png())
    w, h, px = decode_png(png.read_bytes())
    assert (w, h) == (800, 400)
    # the axes run to 10 s and to 500 ms (400 ms and 5 %, rounded up to a 100 ms step)
    assert chart.x_max == 10 and chart.y_max == 500 and chart.y_step == 100
    # every request's point
    for p in (Point(1.0, 0.001), Point(4.0, 0.4), Point(9.5, 0.001)):
        x, y = chart.x_px(p.t_s), chart.y_px(p.latency_s * 1000)
        assert px[y][x] == OK_COLOR, p
    # the failure's cross: its centre and its four arms
    x, y = chart.x_px(7.0), chart.y_px(200)
    for dx, dy in ((0, 0), (-3, -3), (3, 3), (-3, 3), (3, -3)):
        assert px[y + dy][x + dx] == FAIL_COLOR
    # inside the A->B band, away from points, grid and label: white under orange
    y_free = chart.y_px(200) + 7
    for t in (3.95, 4.2, 4.35):
        assert px[y_free][chart.x_px(t)] == blended(WHITE)
    # just outside it: paper
    assert px[y_free][chart.x_px(3.9) - 2] == WHITE
    assert px[y_free][chart.x_px(4.4) + 2] == WHITE
    # a window of 20 ms on a 10 s axis is still drawn at least 2 pixels wide
    xb = chart.x_px(8.0)
    assert sum(px[y_free][x] == blended(WHITE) for x in range(xb - 3, xb + 4)) >= 2
    # the band's label is at the top of the band, in ink that is neither paper nor band
    top_band = [px[y][x] for y in range(chart.top, chart.top + 14)
                for x in range(chart.x_px(3.9), chart.x_px(4.4) + 1)]
    assert any(c not in (WHITE, blended(WHITE)) for c in top_band)
    # nothing drawn right of the plot area but white margin
    assert all(px[y][w - 3] == WHITE for y in range(h))


def test_log_scale_is_chosen_for_a_large_spread_and_places_decades() -> None:
    points, bands = synthetic()
    chart = LatencyChart(points, bands=bands, duration_s=10.0)
    assert chart.y_scale == "log"
    assert chart.y_ticks() == [1, 10, 100, 1000]
    assert [chart.y_label(v) for v in chart.y_ticks()] == ["1", "10", "100", "1000"]
    # decades are evenly spaced
    ys = [chart.y_px(v) for v in chart.y_ticks()]
    assert ys[0] == chart.bottom and ys[-1] == chart.top
    assert max(ys[i] - ys[i + 1] for i in range(3)) - min(ys[i] - ys[i + 1] for i in range(3)) <= 1
    px = decode_png(chart.render().png())[2]
    assert px[chart.y_px(400)][chart.x_px(4.0)] == OK_COLOR
    even = LatencyChart([Point(i / 10, 0.001 + i / 1e5) for i in range(100)])
    assert even.y_scale == "linear"


def test_write_latency_png_of_a_run(tmp_path: Path) -> None:
    samples = tuple(Sample(i / 50, 0.002, 0.0, 0.001, 200, i % 2, i + 1) for i in range(250))
    failure = Sample(2.5, 0.010, 0.0, 0.0, 0, 0, None, "connection reset")
    run = LoadRun("http://x/", 2, 0.0, 0.0, 5.0, 1, (*samples, failure),
                  (Window("A->B", 1.0, 1.5),), (Mark("go", 0.7),))
    path = tmp_path / "run.png"
    chart = write_latency_png(path, run, title="haul demo", width=640, height=320)
    w, h, px = decode_png(path.read_bytes())
    assert (w, h) == (640, 320)
    assert "251 requests on 2 connections, 1 failed" in chart.subtitle
    assert px[chart.y_px(2.0)][chart.x_px(3.0)] == OK_COLOR
    assert px[chart.y_px(10.0)][chart.x_px(2.5)] == FAIL_COLOR
    # the mark is a dashed line
    x = chart.x_px(0.7)
    column = [px[y][x] for y in range(chart.top, chart.top + 12)]
    assert MARK_COLOR in column and WHITE in column


def test_too_small_a_canvas_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        LatencyChart([Point(0, 0.001)], width=100, height=80)
