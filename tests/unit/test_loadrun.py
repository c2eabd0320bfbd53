"""The record of a load run: its figures (percentiles, gaps, summary) and its TSV file."""

from __future__ import annotations

from pathlib import Path

import pytest

from haul.errors import UsageError
from haul.lab.loadrun import (
    TSV_HEADER,
    LoadRun,
    Sample,
    largest_gap,
    percentile,
    read_tsv,
    summarize,
)


def ok(start: float, latency: float, conn: int = 0, served: int | None = None) -> Sample:
    return Sample(start, latency, 0.0, latency / 2, 200, conn, served)


def failed(start: float, latency: float, error: str = "connection reset") -> Sample:
    return Sample(start, latency, 0.0, 0.0, 0, 0, None, error)


# ------------------------------------------------------------------ figures


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_largest_gap_between_completions() -> None:
    assert largest_gap([1.0, 2.0, 5.0, 6.0], 0.0, 7.0) == (3.0, 2.0)


def test_largest_gap_counts_the_run_edges() -> None:
    assert largest_gap([4.0, 4.5], 0.0, 5.0) == (4.0, 0.0)  # nothing completed at first
    assert largest_gap([1.0, 2.0], 0.0, 10.0) == (8.0, 2.0)  # nothing completed at the end
    assert largest_gap([], 0.0, 3.0) == (3.0, 0.0)
    # a request that completes after the run's end extends it
    assert largest_gap([1.0, 9.0], 0.0, 2.0) == (8.0, 1.0)


def test_summary_counts_failures_but_not_in_latency_or_gaps() -> None:
    samples = [
        ok(0.0, 0.010, served=1),
        ok(0.010, 0.020, served=2),
        failed(0.030, 0.005),  # an error in the middle of the gap does not close it
        Sample(0.5, 0.001, 0.0, 0.001, 503, 0),  # an answer, but not a good one
        ok(1.0, 0.030, served=3),
    ]
    s = summarize(samples, end_s=1.1, connections=1, reconnects=2)
    assert (s.requests, s.ok, s.failed, s.reconnects) == (5, 3, 2, 2)
    assert s.p50_s == 0.020 and s.p99_s == 0.030 and s.max_s == 0.030
    assert s.largest_gap_s == pytest.approx(1.030 - 0.030)
    assert s.largest_gap_start_s == pytest.approx(0.030)
    assert s.rate_per_s == pytest.approx(3 / 1.1)
    figures = s.as_json()
    assert figures["failed"] == 2 and figures["latency_max_ms"] == 30.0
    assert figures["largest_gap_ms"] == 1000.0


def test_sample_ok_needs_an_answer_below_400() -> None:
    assert ok(0, 0.1).ok
    assert Sample(0, 0.1, 0, 0, 301, 0).ok
    assert not Sample(0, 0.1, 0, 0, 404, 0).ok
    assert not failed(0, 0.1).ok
    assert not Sample(0, 0.1, 0, 0, 200, 0, None, "timeout").ok


# ------------------------------------------------------------------ TSV


def test_tsv_has_ab_columns_and_reads_back(tmp_path: Path) -> None:
    samples = (
        ok(0.0, 0.0012345, conn=0, served=1),
        Sample(0.5, 0.250, 0.0409, 0.2, 200, 1, 2),
        failed(1.25, 0.0031, "bad\tthing\nhappened"),
    )
    run = LoadRun("http://x/", 2, 100.0, 1_700_000_000.25, 2.0, 1, samples)
    path = tmp_path / "run.tsv"
    run.write_tsv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == TSV_HEADER
    assert lines[0].split("\t")[:6] == ["starttime", "seconds", "ctime", "dtime", "ttime", "wait"]
    second = lines[2].split("\t")
    assert second[1] == "1700000000"  # whole epoch seconds of its start
    assert second[2:6] == ["41", "209", "250", "200"]  # connect, processing, total, wait (ms)
    back = read_tsv(path)
    assert len(back) == 3
    for a, b in zip(samples, back, strict=False):
        assert b.start_s == pytest.approx(a.start_s, abs=1e-6)
        assert b.latency_s == pytest.approx(a.latency_s, abs=1e-6)
        assert (b.status, b.conn, b.served, b.ok) == (a.status, a.conn, a.served, a.ok)
    assert back[2].error == "bad thing happened"


def test_read_tsv_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.tsv"
    path.write_text("starttime\tseconds\tctime\tdtime\tttime\twait\n")
    with pytest.raises(UsageError, match="not a loadgen TSV"):
        read_tsv(path)
