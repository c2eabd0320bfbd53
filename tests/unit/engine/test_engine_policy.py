"""The pre-copy policy on recorded sequences of pre-dump rounds."""

from __future__ import annotations

import dataclasses
import math

import pytest

from haul.engine.figures import PAGE_SIZE, FilesFigures, IterationFigures
from haul.engine.policy import Decision, decide, expected_downtime_ms, files_decide


def rounds(*pages_and_seconds: tuple[int, float]) -> list[IterationFigures]:
    return [
        IterationFigures(i, pages, 0, pages * PAGE_SIZE, seconds)
        for i, (pages, seconds) in enumerate(pages_and_seconds, start=1)
    ]


def decisions(history: list[IterationFigures], **limits: float) -> list[Decision]:
    """The decision after each round, as the machine would ask for it."""
    kwargs: dict[str, float] = {
        "max_downtime_ms": 100.0,
        "max_iterations": 8,
        "freeze_cost_ms": 50.0,
        **limits,
    }
    return [
        decide(
            history[:n],
            max_downtime_ms=kwargs["max_downtime_ms"],
            max_iterations=int(kwargs["max_iterations"]),
            freeze_cost_ms=kwargs["freeze_cost_ms"],
            shrink_threshold=kwargs.get("shrink_threshold", 0.9),
        )
        for n in range(1, len(history) + 1)
    ]


# A 1 GiB service behind a ~800 MB/s link whose writes settle down: the first round
# copies everything, then each round copies what the one before let it dirty.
CONVERGING = rounds((262_144, 1.3), (20_000, 0.1), (1_500, 0.0075))
# A cache that rewrites most of its memory as fast as it can be copied.
NOT_CONVERGING = rounds((262_144, 1.3), (240_000, 1.2))
# A steady writer: each round 20 % smaller, but the fixed freeze cost alone breaks the limit.
SLOWLY_SHRINKING = rounds(*[(int(100_000 * 0.8**i), 0.5 * 0.8**i) for i in range(8)])


def test_no_round_yet_means_one_more() -> None:
    decision = decide([], max_downtime_ms=10_000, max_iterations=1, freeze_cost_ms=0)
    assert decision == Decision(False, "no pre-copy round yet", math.inf)


def test_converging_workload_stops_once_downtime_fits() -> None:
    got = decisions(CONVERGING)
    assert [d.stop for d in got] == [False, False, True]
    assert got[-1].reason.startswith("expected downtime 57 ms <= 100 ms")
    # 1 500 dirty pages at the throughput of all three rounds, plus the freeze cost
    throughput = (262_144 + 20_000 + 1_500) * PAGE_SIZE / (1.3 + 0.1 + 0.0075)
    assert got[-1].expected_downtime_ms == pytest.approx(1_500 * PAGE_SIZE / throughput * 1000 + 50)
    # round 2 shrank enough to go on, although its estimate was still over the limit
    assert got[1].expected_downtime_ms == pytest.approx(149.2, abs=0.1)
    assert "> 100 ms" in got[1].reason


def test_non_converging_workload_stops_when_dirty_set_stops_shrinking() -> None:
    got = decisions(NOT_CONVERGING)
    assert [d.stop for d in got] == [False, True]
    assert got[1].reason.startswith("dirty set stopped shrinking: round 2 wrote 240000 pages")
    assert got[1].expected_downtime_ms > 100


def test_growing_dirty_set_stops() -> None:
    got = decisions(rounds((50_000, 0.25), (60_000, 0.3)))
    assert got[1].stop and "stopped shrinking" in got[1].reason


def test_slowly_shrinking_workload_stops_at_max_iterations() -> None:
    got = decisions(SLOWLY_SHRINKING, max_downtime_ms=10, max_iterations=5)
    assert [d.stop for d in got[:5]] == [False, False, False, False, True]
    assert got[4].reason.startswith("reached 5 pre-copy rounds")


def test_shrink_threshold_is_a_parameter() -> None:
    # every round writes 80 % of the one before
    assert not decisions(SLOWLY_SHRINKING[:2], max_downtime_ms=10)[1].stop
    strict = decisions(SLOWLY_SHRINKING[:2], max_downtime_ms=10, shrink_threshold=0.75)[1]
    assert strict.stop and "threshold 75%" in strict.reason


@pytest.mark.parametrize(("second", "stop"), [(90_000, True), (89_999, False)])
def test_shrink_threshold_boundary(second: int, stop: bool) -> None:
    # 90 % of the round before is "stopped shrinking"; one page fewer is progress
    history = rounds((100_000, 0.5), (second, 0.45))
    assert decide(history, max_downtime_ms=1, max_iterations=8, freeze_cost_ms=0).stop is stop


def test_downtime_rule_wins_over_the_others() -> None:
    # the dirty set grew and max_iterations is reached, but freezing now fits the limit
    history = rounds((1_000, 0.01), (1_000, 0.01))
    got = decide(history, max_downtime_ms=100, max_iterations=2, freeze_cost_ms=50)
    assert got.stop and got.reason.startswith("expected downtime")


def test_nothing_dirty_costs_only_the_freeze() -> None:
    history = rounds((100_000, 0.5), (0, 0.001))
    assert expected_downtime_ms(history, freeze_cost_ms=42) == 42
    assert decide(history, max_downtime_ms=50, max_iterations=8, freeze_cost_ms=42).stop


def test_unmeasurable_throughput_is_infinite_downtime() -> None:
    history = rounds((1_000, 0.0))
    assert expected_downtime_ms(history, freeze_cost_ms=10) == math.inf
    assert not decide(history, max_downtime_ms=1e9, max_iterations=8, freeze_cost_ms=10).stop


def test_page_size_scales_the_dirty_bytes() -> None:
    # 10 000 dirty pages, 100 MB/s measured on the wire
    history = [IterationFigures(1, 10_000, 0, 50_000_000, 0.5)]
    small = expected_downtime_ms(history, freeze_cost_ms=0, page_size=PAGE_SIZE)
    large = expected_downtime_ms(history, freeze_cost_ms=0, page_size=65536)  # arm64
    assert small == pytest.approx(10_000 * PAGE_SIZE / 100e6 * 1000)
    assert large == pytest.approx(16 * small)
    assert decide(history, max_downtime_ms=500, max_iterations=8, freeze_cost_ms=0).stop
    assert not decide(
        history, max_downtime_ms=500, max_iterations=8, freeze_cost_ms=0, page_size=65536
    ).stop


def test_throughput_is_measured_on_the_wire_over_all_rounds() -> None:
    # rounds sent 300 MB in 2 s: 150 MB/s, whatever their page counts say
    history = [
        IterationFigures(1, 50_000, 0, 200_000_000, 1.5),
        IterationFigures(2, 10_000, 0, 100_000_000, 0.5),
    ]
    assert expected_downtime_ms(history, freeze_cost_ms=20) == pytest.approx(
        10_000 * PAGE_SIZE / 150e6 * 1000 + 20
    )


def test_nothing_sent_gives_no_estimate() -> None:
    history = [IterationFigures(1, 1_000, 0, 0, 0.5)]
    assert expected_downtime_ms(history, freeze_cost_ms=10) == math.inf


@pytest.mark.parametrize(
    "kwargs",
    [{"max_iterations": 0}, {"page_size": 0}],
)
def test_bad_limits_are_refused(kwargs: dict[str, int]) -> None:
    args: dict[str, int] = {"max_iterations": 8, "page_size": PAGE_SIZE, **kwargs}
    with pytest.raises(ValueError):
        decide(CONVERGING, max_downtime_ms=100, freeze_cost_ms=0, **args)


def test_decision_is_frozen() -> None:
    decision = decide(CONVERGING, max_downtime_ms=100, max_iterations=8, freeze_cost_ms=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.stop = False  # type: ignore[misc]


def test_throughput_and_dirty_rate_from_recorded_rounds() -> None:
    from haul.engine.policy import dirty_rate_bytes_per_s, throughput_bytes_per_s

    first = IterationFigures(
        1, pages_written=100_000, pages_skipped_parent=0, bytes_sent=409_600_000, duration_s=0.5
    )
    second = IterationFigures(
        2, pages_written=2_000, pages_skipped_parent=98_000, bytes_sent=8_192_000, duration_s=0.02
    )
    assert throughput_bytes_per_s([]) is None
    assert throughput_bytes_per_s([first]) == 409_600_000 / 0.5
    assert throughput_bytes_per_s([first, second]) == (409_600_000 + 8_192_000) / 0.52
    assert dirty_rate_bytes_per_s([first]) is None
    # 2,000 pages were dirtied during the 0.5 s the first round took
    assert dirty_rate_bytes_per_s([first, second]) == 2_000 * PAGE_SIZE / 0.5
    assert dirty_rate_bytes_per_s([dataclasses.replace(first, duration_s=0), second]) is None


# -- the workload's files ----------------------------------------------------------------


def _files(*sent: int) -> list[FilesFigures]:
    return [FilesFigures(i + 1, 10, b, 0, 0.1) for i, b in enumerate(sent)]


def test_files_rounds_go_on_while_they_shrink_and_send_much() -> None:
    assert not files_decide(_files()).stop
    assert not files_decide(_files(300 << 20)).stop
    assert not files_decide(_files(300 << 20, 20 << 20)).stop


def test_files_rounds_stop_when_settled_not_shrinking_or_too_many() -> None:
    assert files_decide(_files(4096)).reason.startswith("files settled")
    assert files_decide(_files(300 << 20, 4096)).stop
    growing = files_decide(_files(300 << 20, 30 << 20, 40 << 20))
    assert growing.stop and "as fast as they were sent" in growing.reason
    most = files_decide(_files(400 << 20, 200 << 20, 100 << 20, 50 << 20))
    assert most.stop and "4 files rounds" in most.reason
