"""Latency over time as a PNG, like the classic ``ab -g`` plot, with the migrations marked.

Every request is a point at (its start, its latency). Failed requests are red
crosses at the time they took to fail; windows (migrations) are shaded bands
with their label at the top; marks are dashed vertical lines. The y axis is
linear in milliseconds (as ab's plots are) or logarithmic, which shows both
the sub-millisecond baseline and a second-long freeze; ``auto`` picks log
when the slowest request is more than 50 times the median.

Drawn with matplotlib's Agg canvas (no display, no pyplot state), imported
only when a plot is written so that ``haul`` itself starts fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from haul.errors import UsageError
from haul.lab.loadrun import LoadRun

if TYPE_CHECKING:
    from matplotlib.axes import Axes

YScale = Literal["linear", "log", "auto"]

OK_COLOR = "#1f66aa"
FAIL_COLOR = "#d61e1e"
BAND_COLOR = "#ff961e"
BAND_ALPHA = 0.28
BAND_TEXT = "#964600"
MARK_COLOR = "#6e6e6e"
AUTO_LOG_RATIO = 50.0
DPI = 100
MIN_WIDTH, MIN_HEIGHT = 320, 200
#: a window shorter than this share of the time axis is drawn this wide, so it still shows
MIN_BAND_SHARE = 0.004


@dataclass(frozen=True, slots=True)
class PlotLayout:
    """Where a written plot put things: its scales, and its plot area in image pixels
    (x to the right, y down from the image's top)."""

    width: int
    height: int
    y_scale: Literal["linear", "log"]
    x_max: float  # seconds
    y_min: float  # milliseconds
    y_max: float
    left: float
    top: float
    right: float
    bottom: float
    subtitle: str

    def px(self, t_s: float, latency_ms: float) -> tuple[float, float]:
        """The image pixel (x, y) at which a request started at ``t_s`` with this latency is."""
        x = self.left + t_s / self.x_max * (self.right - self.left)
        if self.y_scale == "log":
            value = max(latency_ms, self.y_min)
            frac = math.log10(value / self.y_min) / math.log10(self.y_max / self.y_min)
        else:
            frac = (latency_ms - self.y_min) / (self.y_max - self.y_min)
        return x, self.bottom - frac * (self.bottom - self.top)


def summary_line(run: LoadRun) -> str:
    s = run.summary()
    return (
        f"{s.requests} requests on {s.connections} connection"
        f"{'s' if s.connections != 1 else ''}, {s.failed} failed, "
        f"largest gap {s.largest_gap_s * 1000:.0f} ms, p50 {s.p50_s * 1000:.2f} ms, "
        f"p99 {s.p99_s * 1000:.2f} ms, max {s.max_s * 1000:.0f} ms"
    )


def pick_y_scale(run: LoadRun, y_scale: YScale) -> Literal["linear", "log"]:
    """``auto``: log when the slowest request took over 50 times the median successful one."""
    if y_scale != "auto":
        return y_scale
    ok_ms = sorted(s.latency_s * 1000 for s in run.samples if s.ok)
    top_ms = max((s.latency_s * 1000 for s in run.samples), default=0.0)
    if not ok_ms:
        return "linear"
    median_ms = ok_ms[len(ok_ms) // 2]
    return "log" if top_ms > AUTO_LOG_RATIO * max(median_ms, 1e-6) else "linear"


def y_limits(latencies_ms: list[float], scale: Literal["linear", "log"]) -> tuple[float, float]:
    """Whole decades around the data on a log axis; on a linear one, 0 to 12 % over the
    slowest, which leaves the top of the plot to the windows' labels."""
    top = max(latencies_ms, default=0.0)
    if scale == "log":
        low = min((v for v in latencies_ms if v > 0), default=0.1)
        y_min = 10.0 ** math.floor(math.log10(low))
        return y_min, 10.0 ** math.ceil(math.log10(max(top, y_min * 10)))
    return 0.0, top * 1.12 if top > 0 else 1.0


def write_latency_png(
    path: Path,
    run: LoadRun,
    *,
    title: str = "latency over time",
    subtitle: str | None = None,
    width: int = 800,
    height: int = 400,
    y_scale: YScale = "auto",
) -> PlotLayout:
    """Write the latency plot of ``run`` to ``path``, ``width`` x ``height`` pixels.

    A run with no requests gives a valid plot with its windows and marks and a
    note that no request was recorded. Returns where the plot put things.
    """
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise UsageError(
            f"a latency plot of {width}x{height} pixels is too small "
            f"(at least {MIN_WIDTH}x{MIN_HEIGHT})"
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    scale = pick_y_scale(run, y_scale)
    subtitle = summary_line(run) if subtitle is None else subtitle
    x_max = max(
        [
            run.end_s,
            *(s.start_s for s in run.samples),
            *(w.end_s for w in run.windows),
            *(m.t_s for m in run.marks),
            1e-3,
        ]
    )
    y_min, y_max = y_limits([s.latency_s * 1000 for s in run.samples], scale)

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.suptitle(title, fontsize=12, fontweight="bold")
    if subtitle:
        ax.set_title(subtitle, fontsize=8, color="#3c3c3c", wrap=True)
    ax.set_xlim(0, x_max)
    ax.set_yscale(scale)
    ax.set_ylim(y_min, y_max)
    _axes(ax, scale)
    _requests(ax, run, y_min)  # first, so that the legend lists requests first
    _windows(ax, run, x_max)
    if not run.samples:
        ax.text(
            0.5,
            0.5,
            "no requests recorded",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=11,
            color="#3c3c3c",
        )
    if ax.get_legend_handles_labels()[0]:
        legend = fig.legend(loc="outside lower center", ncols=4, fontsize=8, frameon=False)
        for handle in legend.legend_handles:  # a point as large in the key as a cross
            if isinstance(handle, Line2D) and handle.get_marker() == "o":
                handle.set_markersize(5)
    fig.savefig(path, format="png", dpi=DPI)
    box = ax.get_window_extent()  # in pixels from the bottom left, after the layout
    return PlotLayout(
        width=width,
        height=height,
        y_scale=scale,
        x_max=x_max,
        y_min=y_min,
        y_max=y_max,
        left=float(box.x0),
        top=height - float(box.y1),
        right=float(box.x1),
        bottom=height - float(box.y0),
        subtitle=subtitle,
    )


def _axes(ax: Axes, scale: Literal["linear", "log"]) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xlabel("time since start (s)", fontsize=9)
    ax.set_ylabel("latency (ms, log scale)" if scale == "log" else "latency (ms)", fontsize=9)
    ax.tick_params(labelsize=8)
    if scale == "log":  # 0.1, 1, 10, 1000 rather than powers of ten
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="minor", axis="y", color="#f0f0f0", linewidth=0.6)
    ax.grid(True, which="major", color="#dcdcdc", linewidth=0.8)
    ax.set_axisbelow(True)


def _windows(ax: Axes, run: LoadRun, x_max: float) -> None:
    least = x_max * MIN_BAND_SHARE
    # labels go over the shading and under the requests: no point is ever hidden
    for n, w in enumerate(run.windows):
        start, end = w.start_s, max(w.end_s, w.start_s + least)
        ax.axvspan(
            start,
            end,
            color=BAND_COLOR,
            alpha=BAND_ALPHA,
            linewidth=0,
            label="migration" if n == 0 else None,
        )
        ax.text(
            (start + end) / 2,
            0.97,
            w.label,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            color=BAND_TEXT,
            clip_on=True,
            zorder=1.5,
            bbox={
                "boxstyle": "round,pad=0.2",
                "facecolor": "white",
                "edgecolor": "none",
                "alpha": 0.85,
            },
        )
    for n, m in enumerate(run.marks):
        ax.axvline(
            m.t_s,
            color=MARK_COLOR,
            linestyle=(0, (3, 3)),
            linewidth=1,
            label="mark" if n == 0 else None,
        )
        ax.text(
            m.t_s,
            0.03,
            f" {m.label}",
            transform=ax.get_xaxis_transform(),
            ha="left",
            va="bottom",
            fontsize=7,
            color=MARK_COLOR,
            clip_on=True,
            zorder=1.5,
        )


def _requests(ax: Axes, run: LoadRun, y_min: float) -> None:
    ok = [s for s in run.samples if s.ok]
    failed = [s for s in run.samples if not s.ok]
    if ok:  # a log axis cannot show 0: a request faster than its bottom sits on it
        ax.plot(
            [s.start_s for s in ok],
            [max(s.latency_s * 1000, y_min) for s in ok],
            linestyle="none",
            marker="o",
            markersize=1.6,
            markeredgewidth=0,
            color=OK_COLOR,
            label=f"answered ({len(ok):,})",
        )
    if failed:
        ax.plot(
            [s.start_s for s in failed],
            [max(s.latency_s * 1000, y_min) for s in failed],
            linestyle="none",
            marker="x",
            markersize=6,
            markeredgewidth=1.6,
            color=FAIL_COLOR,
            label=f"failed ({len(failed):,})",
            zorder=3,
        )
