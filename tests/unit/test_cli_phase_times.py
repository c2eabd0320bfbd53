"""The per-phase times `haul migrate` prints, from a job's recorded events."""

from __future__ import annotations

from haul.agent.migration_models import EventView, MigrationView, StatsView
from haul.cli_migrate import phase_times_ms


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
