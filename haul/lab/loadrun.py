"""The record of a load run: its samples, windows and marks, its figures, and its TSV.

A run of :class:`haul.lab.loadgen.LoadGen` returns a :class:`LoadRun`: every
request as a :class:`Sample` (when it started, in seconds since the run
started on the monotonic clock, how long it took, its status or error, the
connection it went on, and the service's ``X-Count`` when it sent one), and the
caller's :class:`Window` spans and :class:`Mark` points on the same clock.

:func:`summarize` gives a :class:`Summary`: counts, nearest-rank latency
percentiles over successful requests, and the largest gap in which no request
completed successfully. :meth:`LoadRun.write_tsv` writes one line per request
(``ab -g``'s columns, then exact ones) and :func:`read_tsv` reads it back.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from haul.errors import UsageError

TSV_HEADER = (
    "starttime\tseconds\tctime\tdtime\tttime\twait"
    "\tstart_s\tlatency_ms\tstatus\tconn\tserved\terror"
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One request. Times are seconds; ``start_s`` counts from the run's start."""

    start_s: float
    latency_s: float  # from the start (including any connect) to the answer's end, or the error
    connect_s: float  # time to open a new connection for this request; 0.0 on a kept one
    wait_s: float  # from the request sent to the answer's first byte; 0.0 when none came
    status: int  # HTTP status; 0 when no answer came
    conn: int  # which of the connections (0..N-1)
    served: int | None = None  # the service's X-Count, when it sent one
    error: str = ""  # why it failed; "" for an answer (check ``ok`` for its status)

    @property
    def ok(self) -> bool:
        return not self.error and 200 <= self.status < 400

    @property
    def end_s(self) -> float:
        return self.start_s + self.latency_s


@dataclass(frozen=True, slots=True)
class Mark:
    label: str
    t_s: float


@dataclass(frozen=True, slots=True)
class Window:
    """A span of the run, e.g. a migration from its start to its end."""

    label: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Summary:
    duration_s: float
    connections: int
    requests: int
    ok: int
    failed: int
    reconnects: int
    #: the longest time in which no request completed successfully (run start
    #: and end count as edges), and where it began
    largest_gap_s: float
    largest_gap_start_s: float
    p50_s: float  # latency percentiles over successful requests (nearest rank)
    p99_s: float
    max_s: float
    rate_per_s: float  # successful requests per second

    def as_json(self) -> dict[str, float | int]:
        return {
            "duration_s": round(self.duration_s, 3),
            "connections": self.connections,
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.failed,
            "reconnects": self.reconnects,
            "largest_gap_ms": round(self.largest_gap_s * 1000, 3),
            "largest_gap_start_s": round(self.largest_gap_start_s, 3),
            "latency_p50_ms": round(self.p50_s * 1000, 3),
            "latency_p99_ms": round(self.p99_s * 1000, 3),
            "latency_max_ms": round(self.max_s * 1000, 3),
            "rate_per_s": round(self.rate_per_s, 1),
        }


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ascending values (0.0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def largest_gap(completions: Iterable[float], start_s: float, end_s: float) -> tuple[float, float]:
    """The longest stretch of [start_s, end_s] with no completion in it: (length, where it began).

    ``end_s`` is extended to the last completion if one came later.
    """
    times = sorted(completions)
    edges = [start_s, *times, max(end_s, times[-1]) if times else end_s]
    best, at = 0.0, start_s
    for before, after in itertools.pairwise(edges):
        if after - before > best:
            best, at = after - before, before
    return best, at


def summarize(
    samples: Sequence[Sample],
    *,
    end_s: float,
    connections: int,
    reconnects: int,
    start_s: float = 0.0,
) -> Summary:
    """Figures over ``samples``, for a run (or a part of one) from start_s to end_s."""
    good = [s for s in samples if s.ok]
    latencies = sorted(s.latency_s for s in good)
    gap, gap_at = largest_gap((s.end_s for s in good), start_s, end_s)
    duration = max(end_s - start_s, 0.0)
    return Summary(
        duration_s=duration,
        connections=connections,
        requests=len(samples),
        ok=len(good),
        failed=len(samples) - len(good),
        reconnects=reconnects,
        largest_gap_s=gap,
        largest_gap_start_s=gap_at,
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        max_s=latencies[-1] if latencies else 0.0,
        rate_per_s=len(good) / duration if duration > 0 else 0.0,
    )


@dataclass(frozen=True, slots=True)
class LoadRun:
    """What a run recorded. ``t0_monotonic`` and ``t0_wall`` are its start on both clocks."""

    url: str
    connections: int
    t0_monotonic: float
    t0_wall: float
    end_s: float
    reconnects: int
    samples: tuple[Sample, ...]
    windows: tuple[Window, ...] = ()
    marks: tuple[Mark, ...] = ()

    def summary(self) -> Summary:
        return summarize(
            self.samples, end_s=self.end_s, connections=self.connections, reconnects=self.reconnects
        )

    def failures(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]

    def as_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            **self.summary().as_json(),
            "t0_monotonic": self.t0_monotonic,
            "t0_wall": self.t0_wall,
            "windows": [
                {"label": w.label, "start_s": round(w.start_s, 4), "end_s": round(w.end_s, 4)}
                for w in self.windows
            ],
            "marks": [{"label": m.label, "t_s": round(m.t_s, 4)} for m in self.marks],
            "errors": _error_counts(self.samples),
        }

    def write_tsv(self, path: Path) -> None:
        """One line per request, in start order: ``ab -g``'s six columns, then exact ones.

        ab's columns: the start as a date, the start in whole epoch seconds,
        then connect, processing, total and wait times in whole milliseconds.
        Ours: start (s since the run's start), latency (ms, microsecond
        precision), status (0: none), connection, X-Count ("-": none), error.
        """
        lines = [TSV_HEADER]
        for s in sorted(self.samples, key=lambda s: s.start_s):
            wall = self.t0_wall + s.start_s
            ctime = round(s.connect_s * 1000)
            ttime = round(s.latency_s * 1000)
            error = s.error.replace("\t", " ").replace("\n", " ")
            lines.append(
                f"{time.ctime(wall)}\t{int(wall)}\t{ctime}\t{ttime - ctime}\t{ttime}"
                f"\t{round(s.wait_s * 1000)}\t{s.start_s:.6f}\t{s.latency_s * 1000:.3f}"
                f"\t{s.status}\t{s.conn}\t{'-' if s.served is None else s.served}\t{error}"
            )
        path.write_text("\n".join(lines) + "\n")


def read_tsv(path: Path) -> list[Sample]:
    """The samples a :meth:`LoadRun.write_tsv` file holds (exact columns; wait and
    connect times come back at ab's millisecond resolution)."""
    samples = []
    text = path.read_text().splitlines()
    if not text or text[0] != TSV_HEADER:
        raise UsageError(f"{path} is not a loadgen TSV file (its header differs)")
    for n, line in enumerate(text[1:], start=2):
        cols = line.split("\t")
        if len(cols) != 12:
            raise UsageError(f"{path}:{n}: {len(cols)} columns, not 12")
        samples.append(
            Sample(
                start_s=float(cols[6]),
                latency_s=float(cols[7]) / 1000,
                connect_s=int(cols[2]) / 1000,
                wait_s=int(cols[5]) / 1000,
                status=int(cols[8]),
                conn=int(cols[9]),
                served=None if cols[10] == "-" else int(cols[10]),
                error=cols[11],
            )
        )
    return samples


def _error_counts(samples: Iterable[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = s.error or f"HTTP {s.status}"
            counts[key] = counts.get(key, 0) + 1
    return counts
