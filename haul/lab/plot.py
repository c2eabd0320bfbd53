"""Latency over time as a PNG, like the classic ``ab -g`` plot, with the migrations marked.

Every request is a point at (its start, its latency). Failed requests are red
crosses at the time they took to fail; windows (migrations) are shaded bands
with their label at the top; marks are dashed vertical lines. The y axis is
linear in milliseconds (as ab's plots are) or logarithmic, which shows both
the sub-millisecond baseline and a second-long freeze; ``auto`` picks log
when the slowest request is more than 50 times the median.

Drawn with :mod:`haul.lab.raster` and its own font: no plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from haul.lab.loadrun import LoadRun
from haul.lab.raster import Canvas, Color, text_height, text_width

YScale = Literal["linear", "log", "auto"]

WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GRID: Color = (228, 228, 228)
OK_COLOR: Color = (31, 102, 170)
FAIL_COLOR: Color = (214, 30, 30)
BAND_COLOR: Color = (255, 150, 30)
BAND_ALPHA = 0.28
BAND_TEXT: Color = (150, 70, 0)
MARK_COLOR: Color = (110, 110, 110)
AUTO_LOG_RATIO = 50.0


@dataclass(frozen=True, slots=True)
class Point:
    t_s: float
    latency_s: float
    ok: bool = True


@dataclass(frozen=True, slots=True)
class Band:
    label: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    t_s: float


def nice_step(span: float, target_ticks: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``target_ticks`` ticks."""
    if span <= 0:
        return 1.0
    raw = span / max(target_ticks, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as ticks ``step`` apart need."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    text = f"{value:.{decimals}f}"
    return "0" if text.strip("-0.") == "" else text


class LatencyChart:
    """The layout of one chart: what goes where. ``render`` draws it."""

    def __init__(
        self,
        points: Sequence[Point],
        *,
        bands: Sequence[Band] = (),
        lines: Sequence[Line] = (),
        duration_s: float | None = None,
        title: str = "latency over time",
        subtitle: str = "",
        width: int = 800,
        height: int = 400,
        y_scale: YScale = "auto",
    ) -> None:
        self.points = points
        self.bands = bands
        self.lines = lines
        self.title = title
        self.subtitle = subtitle
        self.width = width
        self.height = height
        latencies_ms = [p.latency_s * 1000 for p in points]
        ok_ms = sorted(p.latency_s * 1000 for p in points if p.ok)
        top_ms = max(latencies_ms, default=1.0)
        median_ms = ok_ms[len(ok_ms) // 2] if ok_ms else top_ms
        if y_scale == "auto":
            y_scale = "log" if top_ms > AUTO_LOG_RATIO * max(median_ms, 1e-6) else "linear"
        self.y_scale: Literal["linear", "log"] = y_scale
        end = max([duration_s or 0.0, *(p.t_s for p in points),
                   *(b.end_s for b in bands), *(m.t_s for m in lines), 1e-3])
        self.x_step = nice_step(end, 10)
        # a run asked for 6 s ends a little after 6 s: an axis to 7 s would waste a tick;
        # what lies past the axis's end (under 2 % of a step) is drawn at its edge
        self.x_max = max(math.ceil(end / self.x_step - 0.02), 1) * self.x_step
        if self.y_scale == "log":
            low = min((v for v in latencies_ms if v > 0), default=0.1)
            self.y_min = 10.0 ** math.floor(math.log10(low))
            self.y_max = 10.0 ** math.ceil(math.log10(max(top_ms, self.y_min * 10)))
            self.y_step = 10.0
        else:
            self.y_step = nice_step(max(top_ms, 1e-3) * 1.05, 6)
            self.y_min = 0.0
            self.y_max = math.ceil(max(top_ms, 1e-3) * 1.05 / self.y_step) * self.y_step
        labels = [self.y_label(v) for v in self.y_ticks()]
        self.left = 14 + text_height() + 8 + max(text_width(t) for t in labels) + 6
        self.right = width - 16
        self.top = 12 + text_height(2) + (6 + text_height() if subtitle else 0) + 10
        self.bottom = height - (6 + text_height() + 8 + text_height() + 8)
        if self.right - self.left < 50 or self.bottom - self.top < 50:
            raise ValueError(f"{width}x{height} pixels is too small for a chart")

    # -- coordinates

    def x_px(self, t_s: float) -> int:
        frac = t_s / self.x_max
        return self.left + round(min(max(frac, 0.0), 1.0) * (self.right - self.left))

    def y_px(self, latency_ms: float) -> int:
        if self.y_scale == "log":
            value = max(latency_ms, self.y_min)
            frac = math.log10(value / self.y_min) / math.log10(self.y_max / self.y_min)
        else:
            frac = (latency_ms - self.y_min) / (self.y_max - self.y_min)
        return self.bottom - round(min(max(frac, 0.0), 1.0) * (self.bottom - self.top))

    def x_ticks(self) -> list[float]:
        count = round(self.x_max / self.x_step)
        return [i * self.x_step for i in range(count + 1)]

    def y_ticks(self) -> list[float]:
        if self.y_scale == "log":
            decades = round(math.log10(self.y_max / self.y_min))
            return [self.y_min * 10**i for i in range(decades + 1)]
        count = round((self.y_max - self.y_min) / self.y_step)
        return [self.y_min + i * self.y_step for i in range(count + 1)]

    def y_label(self, latency_ms: float) -> str:
        if self.y_scale == "log":  # powers of ten, as short as they go
            return f"{latency_ms:g}"
        return tick_label(latency_ms, self.y_step)

    # -- drawing

    def render(self) -> Canvas:
        c = Canvas(self.width, self.height, WHITE)
        self._grid(c)
        for band in self.bands:
            x0, x1 = self.x_px(band.start_s), self.x_px(band.end_s)
            if x1 - x0 < 2:  # a short window still shows
                x0, x1 = x0 - 1, x0 + 1
            c.blend_rect(x0, self.top, x1, self.bottom - 1, BAND_COLOR, BAND_ALPHA)
        for line in self.lines:
            x = self.x_px(line.t_s)
            for y in range(self.top, self.bottom, 6):
                c.vline(x, y, min(y + 2, self.bottom - 1), MARK_COLOR)
        seen: set[tuple[int, int]] = set()
        for p in self.points:
            if p.ok:
                seen.add((self.x_px(p.t_s), self.y_px(p.latency_s * 1000)))
        for x, y in seen:
            c.fill_rect(x, y - 1, x + 1, y, OK_COLOR)
        for p in self.points:
            if not p.ok:
                x, y = self.x_px(p.t_s), self.y_px(p.latency_s * 1000)
                for d in (0, 1):  # a cross 7 pixels wide, 2 thick
                    c.line(x - 3 + d, y - 3, x + 3 + d, y + 3, FAIL_COLOR)
                    c.line(x - 3 + d, y + 3, x + 3 + d, y - 3, FAIL_COLOR)
        self._axes(c)
        self._labels(c)
        return c

    def _grid(self, c: Canvas) -> None:
        for v in self.y_ticks():
            c.hline(self.left, self.right, self.y_px(v), GRID)
        if self.y_scale == "log":
            for decade in self.y_ticks()[:-1]:
                for m in range(2, 10):
                    y = self.y_px(decade * m)
                    for x in range(self.left, self.right, 4):
                        c.set(x, y, GRID)
        for t in self.x_ticks():
            c.vline(self.x_px(t), self.top, self.bottom, GRID)

    def _axes(self, c: Canvas) -> None:
        c.vline(self.left - 1, self.top, self.bottom, BLACK)
        c.hline(self.left - 1, self.right, self.bottom + 1, BLACK)
        for v in self.y_ticks():
            y = self.y_px(v)
            c.hline(self.left - 5, self.left - 2, y, BLACK)
            label = self.y_label(v)
            c.text(self.left - 8 - text_width(label), y - 3, label, BLACK)
        for t in self.x_ticks():
            x = self.x_px(t)
            c.vline(x, self.bottom + 2, self.bottom + 5, BLACK)
            label = tick_label(t, self.x_step)
            c.text(x - text_width(label) // 2, self.bottom + 8, label, BLACK)

    def _labels(self, c: Canvas) -> None:
        scale = 2 if text_width(self.title, 2) <= self.width - 20 else 1
        c.text((self.width - text_width(self.title, scale)) // 2, 10, self.title, BLACK,
               scale=scale)
        if self.subtitle:
            c.text((self.width - text_width(self.subtitle)) // 2, 12 + text_height(2) + 4,
                   self.subtitle, (60, 60, 60))
        x_label = "time since start (s)"
        base = self.bottom + 8 + text_height() + 6
        c.text((self.left + self.right - text_width(x_label)) // 2, base, x_label, BLACK)
        y_label = "latency (ms, log scale)" if self.y_scale == "log" else "latency (ms)"
        c.text(8, (self.top + self.bottom - text_width(y_label)) // 2, y_label, BLACK,
               vertical=True)
        for band in self.bands:
            middle = (self.x_px(band.start_s) + self.x_px(band.end_s)) // 2
            w = text_width(band.label)
            x = min(max(middle - w // 2, self.left + 1), self.right - w - 1)
            c.fill_rect(x - 2, self.top + 2, x + w + 1, self.top + 4 + text_height(), WHITE)
            c.text(x, self.top + 3, band.label, BAND_TEXT)
        for line in self.lines:
            c.text(self.x_px(line.t_s) + 3, self.bottom - text_height() - 2, line.label,
                   MARK_COLOR)
        self._legend(c, base)

    def _legend(self, c: Canvas, y: int) -> None:
        items: list[tuple[str, Color]] = [("ok", OK_COLOR), ("failed", FAIL_COLOR)]
        if self.bands:
            items.append(("migration", BAND_TEXT))
        x = self.right - sum(12 + text_width(t) + 12 for t, _ in items)
        for label, color in items:
            if color == FAIL_COLOR:
                c.line(x, y + 1, x + 4, y + 5, color)
                c.line(x, y + 5, x + 4, y + 1, color)
            elif color == BAND_TEXT:
                c.fill_rect(x, y, x + 6, y + 6, BAND_COLOR)
            else:
                c.fill_rect(x + 1, y + 2, x + 3, y + 4, color)
            c.text(x + 10, y, label, BLACK)
            x += 12 + text_width(label) + 12


def summary_line(run: LoadRun) -> str:
    s = run.summary()
    return (f"{s.requests} requests on {s.connections} connection"
            f"{'s' if s.connections != 1 else ''}, {s.failed} failed, "
            f"largest gap {s.largest_gap_s * 1000:.0f} ms, p50 {s.p50_s * 1000:.2f} ms, "
            f"p99 {s.p99_s * 1000:.2f} ms, max {s.max_s * 1000:.0f} ms")


def chart_of(run: LoadRun, *, title: str, subtitle: str | None = None,
             width: int = 800, height: int = 400, y_scale: YScale = "auto") -> LatencyChart:
    """The chart of a load run: its requests, its windows as bands, its marks as lines."""
    return LatencyChart(
        [Point(s.start_s, s.latency_s, s.ok) for s in run.samples],
        bands=[Band(w.label, w.start_s, w.end_s) for w in run.windows],
        lines=[Line(m.label, m.t_s) for m in run.marks],
        duration_s=run.end_s,
        title=title,
        subtitle=summary_line(run) if subtitle is None else subtitle,
        width=width,
        height=height,
        y_scale=y_scale,
    )


def write_latency_png(path: Path, run: LoadRun, *, title: str = "latency over time",
                      subtitle: str | None = None, width: int = 800, height: int = 400,
                      y_scale: YScale = "auto") -> LatencyChart:
    """Write the latency plot of ``run`` to ``path``; return its layout."""
    chart = chart_of(run, title=title, subtitle=subtitle, width=width, height=height,
                     y_scale=y_scale)
    chart.render().write_png(path)
    return chart
