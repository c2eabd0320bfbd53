"""What `haul migrate` prints: the per-phase times, from a job's recorded events, and
the one line that says how a migration that is not done ended."""

from __future__ import annotations

import json

import pytest

from haul.agent.migration_models import EventView, MigrationView, StatsView
from haul.cli_migrate import _result, ending_line, phase_times_ms


def _view(events: list[tuple[float, str, str]]) -> MigrationView:
    return MigrationView(
        id="m1",
        workload="web1",
        source="host1",
        dest="host2",
        phase="done",
        strategy="stop-and-copy",
        committed=True,
        finished=True,
        elapsed_s=events[-1][0],
        stats=StatsView(
            strategy="stop-and-copy",
            iterations=0,
            bytes_sent=0,
            dump_bytes=0,
            transfer_bytes=0,
            frozen_ms=None,
            expected_downtime_ms=None,
        ),
        events=[EventView(t_s=t, phase=p, event=e) for t, p, e in events],
    )


def test_each_phase_lasts_from_the_event_before_it_to_its_own() -> None:
    view = _view(
        [
            (0.0, "new", "MigrationStarted"),
            (0.1, "preflight", "PreflightFinished"),
            (0.3, "precopy", "PreDumpFinished"),
            (0.4, "precopy", "PreDumpFinished"),
            (1.0, "dump", "SourceFrozen"),
        ]
    )
    assert phase_times_ms(view) == {"new": 0.0, "preflight": 100.0, "precopy": 300.0, "dump": 600.0}


def _ended(outcome: str, reason: str, phase: str) -> MigrationView:
    view = _view([(0.0, "new", "MigrationStarted"), (0.5, phase, "RolledBack")])
    return view.model_copy(update={"outcome": outcome, "reason": reason, "phase": phase})


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_migration_that_is_not_done_says_why_in_one_line_whatever_the_output(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -o json too: the JSON on stdout, and the one line on stderr (an exit 4 with
    nothing on stderr said nothing to whoever ran it)."""
    reason = "rollback during freeze (x) is incomplete: y; check web1 on host1"
    _result(_ended("failed", f"failed: {reason}", "failed"), output)
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"haul: failed: {reason}"]
    if output == "json":
        assert json.loads(captured.out)["reason"] == f"failed: {reason}"


def test_an_ending_without_a_reason_still_says_where_it_ended() -> None:
    line = ending_line(_ended("", "", "rolling-back"))
    assert line == "failed: migration m1 ended in phase rolling-back with no reason given"


def test_a_done_migration_says_nothing_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    _result(_ended("done", "done: moved", "done"), "json")
    assert capsys.readouterr().err == ""
