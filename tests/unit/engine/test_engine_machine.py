"""The migration state machine, driven by hand-fed events (no runner, no ports)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fakes import BASIC, DUMP, FULL, LAZY_ONLY, RESTORE, ROUNDS, TRANSFER
from haul.engine.commands import (
    AwaitPages,
    CleanUp,
    Command,
    Finish,
    FreezeAndDump,
    PrepareDestination,
    RecordCommit,
    RestoreStopped,
    Rollback,
    RunPreflight,
    StartPreDump,
    SwitchOver,
    TransferImages,
)
from haul.engine.events import (
    AbortRequested,
    CleanedUp,
    CommitRecorded,
    DestinationPrepared,
    Event,
    ImagesTransferred,
    MigrationStarted,
    PagesDelivered,
    PreDumpFinished,
    PreflightFinished,
    RestoredStopped,
    RolledBack,
    SourceFrozen,
    StepFailed,
    SwitchedOver,
)
from haul.engine.figures import Capabilities, IterationFigures, PreflightReport
from haul.engine.machine import TRANSITIONS, Migration, To, edges, resolve_strategy
from haul.engine.phases import AFTER_COMMIT, BEFORE_COMMIT, TERMINAL, Phase, Strategy
from haul.engine.spec import MigrationSpec
from haul.errors import IllegalTransition

SPEC = MigrationSpec("m1", "web1", "host1", "host2")
REPORT = PreflightReport(FULL, FULL, (), 1 << 30)
BIG, SMALL = ROUNDS
S = Strategy


def spec(**changes: object) -> MigrationSpec:
    return dataclasses.replace(SPEC, **changes)  # type: ignore[arg-type]


def happy(strategy: Strategy) -> list[Event]:
    """Every event of a successful migration with ``strategy`` (requested explicitly)."""
    events: list[Event] = [MigrationStarted(), PreflightFinished(REPORT), DestinationPrepared()]
    if strategy is S.PRE_COPY:
        events += [PreDumpFinished(BIG), PreDumpFinished(SMALL)]
    events += [SourceFrozen(DUMP), ImagesTransferred(TRANSFER), RestoredStopped(RESTORE),
               CommitRecorded(), SwitchedOver(frozen_s=1.5)]
    if strategy is S.POST_COPY:
        events.append(PagesDelivered())
    return events + [CleanedUp()]


def at(phase: Phase, strategy: Strategy | None = None, *, committed: bool = False,
       **changes: Any) -> Migration:
    """A migration that has just entered ``phase`` (reachable phases only)."""
    if strategy is None:
        strategy = {Phase.PRECOPY: S.PRE_COPY, Phase.LAZY_PAGES: S.POST_COPY}.get(
            phase, S.STOP_AND_COPY)
    m = Migration(spec(strategy=strategy, **changes))
    if phase is Phase.REFUSED:
        m.handle(MigrationStarted())
        m.handle(PreflightFinished(dataclasses.replace(REPORT, problems=("no room",))))
        return m
    if phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.FAILED):
        m = at(Phase.RESTORE, strategy, **changes)
        m.handle(StepFailed(Phase.RESTORE, "restore failed", "dest host2"))
        if phase is not Phase.ROLLING_BACK:
            m.handle(RolledBack(("dest host2: busy",) if phase is Phase.FAILED else ()))
        return m
    for event in happy(strategy):
        if m.phase is phase and (m.committed or not committed):
            break
        m.handle(event)
    assert m.phase is phase
    return m


def feed(m: Migration, events: list[Event]) -> list[tuple[Phase, list[Command]]]:
    return [(m.phase, commands) for commands in (m.handle(e) for e in events)]


# -- the happy paths ------------------------------------------------------------------------


def test_stop_and_copy_happy_path() -> None:
    m = Migration(spec(strategy=S.STOP_AND_COPY))
    assert feed(m, happy(S.STOP_AND_COPY)) == [
        (Phase.PREFLIGHT, [RunPreflight()]),
        (Phase.PREPARE, [PrepareDestination(S.STOP_AND_COPY)]),
        (Phase.FREEZE, [FreezeAndDump(lazy=False)]),
        (Phase.TRANSFER, [TransferImages(lazy=False)]),
        (Phase.RESTORE, [RestoreStopped(lazy=False)]),
        (Phase.COMMIT, [RecordCommit()]),
        (Phase.COMMIT, [SwitchOver(lazy=False)]),
        (Phase.CLEANUP, [CleanUp()]),
        (Phase.DONE, [Finish(Phase.DONE, "done: web1 runs on host2 (stop-and-copy)")]),
    ]


def test_pre_copy_happy_path() -> None:
    m = Migration(spec(strategy=S.PRE_COPY))
    got = feed(m, happy(S.PRE_COPY))
    assert got[2:5] == [
        (Phase.PRECOPY, [StartPreDump(1)]),
        (Phase.PRECOPY, [StartPreDump(2)]),
        (Phase.FREEZE, [FreezeAndDump(lazy=False)]),
    ]
    assert got[-1] == (Phase.DONE, [Finish(
        Phase.DONE, "done: web1 runs on host2 (pre-copy, 2 pre-copy rounds)")])
    assert m.history == (BIG, SMALL)


def test_post_copy_happy_path() -> None:
    m = Migration(spec(strategy=S.POST_COPY))
    assert feed(m, happy(S.POST_COPY))[2:] == [
        (Phase.FREEZE, [FreezeAndDump(lazy=True)]),
        (Phase.TRANSFER, [TransferImages(lazy=True)]),
        (Phase.RESTORE, [RestoreStopped(lazy=True)]),
        (Phase.COMMIT, [RecordCommit()]),
        (Phase.COMMIT, [SwitchOver(lazy=True)]),
        (Phase.LAZY_PAGES, [AwaitPages()]),
        (Phase.CLEANUP, [CleanUp()]),
        (Phase.DONE, [Finish(Phase.DONE, "done: web1 runs on host2 (post-copy)")]),
    ]


# -- every transition of the table -----------------------------------------------------------


def scenario(source: Phase, event_type: type[Event], to: Phase) -> tuple[Migration, Event]:
    """A migration in ``source`` and the event that takes it to ``to``."""
    if event_type is AbortRequested:
        return at(source), AbortRequested()
    if event_type is StepFailed:
        if source in BEFORE_COMMIT or to is Phase.ROLLING_BACK:
            return at(source), StepFailed(source, "it broke", "dest host2")
        m = at(source, committed=True)
        if to is Phase.FAILED:
            for _ in range(m.spec.max_retries):
                m.handle(StepFailed(source, "it broke"))
        return m, StepFailed(source, "it broke")
    if event_type is PreflightFinished:
        report = REPORT if to is Phase.PREPARE else dataclasses.replace(REPORT, problems=("x",))
        return at(source), PreflightFinished(report)
    if event_type is PreDumpFinished:
        m = at(source)
        if to is Phase.FREEZE:
            m.handle(PreDumpFinished(BIG))
            return m, PreDumpFinished(SMALL)
        return m, PreDumpFinished(BIG)
    if event_type is DestinationPrepared:
        return at(source, S.PRE_COPY if to is Phase.PRECOPY else S.STOP_AND_COPY), event_type()
    if event_type is SwitchedOver:
        lazy = to is Phase.LAZY_PAGES
        return at(source, S.POST_COPY if lazy else S.STOP_AND_COPY, committed=True), event_type()
    if event_type is RolledBack:
        return at(source), RolledBack(("problem",) if to is Phase.FAILED else ())
    forward: dict[type[Event], Event] = {
        MigrationStarted: MigrationStarted(), SourceFrozen: SourceFrozen(DUMP),
        ImagesTransferred: ImagesTransferred(TRANSFER), RestoredStopped: RestoredStopped(RESTORE),
        CommitRecorded: CommitRecorded(), PagesDelivered: PagesDelivered(),
        CleanedUp: CleanedUp(),
    }
    return at(source), forward[event_type]


@pytest.mark.parametrize(
    ("source", "event_type", "way"),
    list(edges()),
    ids=[f"{s.name}-{e.__name__}-{w.phase.name}" for s, e, w in edges()],
)
def test_every_transition_in_the_table(source: Phase, event_type: type[Event], way: To) -> None:
    m, event = scenario(source, event_type, way.phase)
    assert (m.phase, type(event)) == (source, event_type)
    commands = m.handle(event)
    assert m.phase is way.phase
    assert len(commands) == 1
    assert isinstance(commands[0], Finish) == (way.phase in TERMINAL)


def test_table_shape() -> None:
    assert len(list(edges())) == 38  # 15 forward, 14 back, 2 rolled back, 7 after commit
    for phase in BEFORE_COMMIT:
        assert TRANSITIONS[(phase, StepFailed)] == (To(Phase.ROLLING_BACK),)
        assert TRANSITIONS[(phase, AbortRequested)] == (To(Phase.ROLLING_BACK),)
    for phase in AFTER_COMMIT:
        assert (phase, AbortRequested) not in TRANSITIONS
        assert To(Phase.FAILED, "retries exhausted") in TRANSITIONS[(phase, StepFailed)]
    assert not any(phase in TERMINAL for phase, _ in TRANSITIONS)
    with pytest.raises(TypeError):
        TRANSITIONS[(Phase.DONE, MigrationStarted)] = (To(Phase.NEW),)  # type: ignore[index]


# -- what is refused -------------------------------------------------------------------------

EVERY_EVENT: list[Event] = [
    MigrationStarted(), PreflightFinished(REPORT), DestinationPrepared(), PreDumpFinished(BIG),
    SourceFrozen(DUMP), ImagesTransferred(TRANSFER), RestoredStopped(RESTORE), CommitRecorded(),
    SwitchedOver(), PagesDelivered(), CleanedUp(), AbortRequested(), RolledBack(),
]
ILLEGAL = [
    (phase, event)
    for phase in Phase
    for event in EVERY_EVENT + [StepFailed(phase, "x")]
    if (phase, type(event)) not in TRANSITIONS
]


@pytest.mark.parametrize(
    ("phase", "event"), ILLEGAL, ids=[f"{p.name}-{type(e).__name__}" for p, e in ILLEGAL]
)
def test_illegal_transitions_are_refused(phase: Phase, event: Event) -> None:
    m = at(phase, committed=True) if phase is Phase.COMMIT else at(phase)
    before = (m.phase, m.strategy, m.history, m.stats())
    with pytest.raises(IllegalTransition) as refused:
        m.handle(event)
    assert phase.value in str(refused.value)
    assert type(event).__name__ in str(refused.value)
    assert (m.phase, m.strategy, m.history, m.stats()) == before


@pytest.mark.parametrize("phase", [Phase.COMMIT, Phase.LAZY_PAGES, Phase.CLEANUP])
def test_abort_after_the_commit_is_refused(phase: Phase) -> None:
    m = at(phase)
    with pytest.raises(IllegalTransition, match="the commit point is passed"):
        m.handle(AbortRequested())
    assert m.phase is phase


def test_switch_over_before_the_commit_is_recorded_is_refused() -> None:
    m = at(Phase.COMMIT)
    with pytest.raises(IllegalTransition, match="before the commit is recorded"):
        m.handle(SwitchedOver())
    assert not m.committed
    assert m.handle(CommitRecorded()) == [SwitchOver(lazy=False)]


def test_commit_is_recorded_once() -> None:
    m = at(Phase.COMMIT, committed=True)
    with pytest.raises(IllegalTransition, match="already recorded"):
        m.handle(CommitRecorded())


def test_step_failed_for_another_phase_is_refused() -> None:
    m = at(Phase.TRANSFER)
    with pytest.raises(IllegalTransition, match="in phase transfer; cannot handle StepFailed "
                                                "for phase freeze"):
        m.handle(StepFailed(Phase.FREEZE, "late"))
    assert m.phase is Phase.TRANSFER


def test_a_finished_migration_accepts_nothing() -> None:
    m = at(Phase.DONE)
    with pytest.raises(IllegalTransition, match="is over"):
        m.handle(StepFailed(Phase.DONE, "x"))


# -- rolling back, rolling forward ------------------------------------------------------------


@pytest.mark.parametrize("phase", [p for p in Phase if p in BEFORE_COMMIT])
def test_failure_before_the_commit_rolls_back(phase: Phase) -> None:
    m = at(phase)
    assert m.handle(StepFailed(phase, "CRIU dump: errno 1", "source host1")) == [
        Rollback(phase, "source host1: CRIU dump: errno 1")]
    assert m.handle(RolledBack()) == [Finish(
        Phase.ROLLED_BACK,
        f"rolled back during {phase.value} (source host1: CRIU dump: errno 1); "
        "web1 runs on host1, nothing kept on host2")]


def test_abort_rolls_back_with_its_reason() -> None:
    m = at(Phase.PRECOPY)
    assert m.handle(AbortRequested("operator pressed Ctrl-C")) == [
        Rollback(Phase.PRECOPY, "operator pressed Ctrl-C")]


def test_rollback_with_problems_fails_saying_them() -> None:
    m = at(Phase.ROLLING_BACK)
    (finish,) = m.handle(RolledBack(("source host1: resume failed", "dest host2: gone")))
    assert isinstance(finish, Finish) and finish.phase is Phase.FAILED
    assert "source host1: resume failed; dest host2: gone" in finish.reason
    assert m.phase is Phase.FAILED and m.reason == finish.reason


def test_failed_commit_record_rolls_back() -> None:
    m = at(Phase.COMMIT)
    assert m.handle(StepFailed(Phase.COMMIT, "disk full", "journal")) == [
        Rollback(Phase.COMMIT, "could not record the commit decision: journal: disk full")]


@pytest.mark.parametrize(
    ("phase", "strategy", "command", "stranded"),
    [
        (Phase.COMMIT, S.STOP_AND_COPY, SwitchOver(lazy=False),
         "committed: web1 restored on host2 but the switch-over did not finish after 4 "
         "attempts (dest host2: resume failed); resume the copy on host2; the source on host1 "
         "must not be resumed; images kept on host2"),
        (Phase.LAZY_PAGES, S.POST_COPY, AwaitPages(),
         "committed: web1 runs on host2 but not all its memory arrived after 4 attempts "
         "(dest host2: resume failed); the stopped source on host1 still holds the missing "
         "pages and must not be resumed"),
        (Phase.CLEANUP, S.STOP_AND_COPY, CleanUp(),
         "committed: web1 runs on host2; cleanup did not finish after 4 attempts "
         "(dest host2: resume failed); leftovers may remain on host1 and host2"),
    ],
)
def test_failure_after_the_commit_rolls_forward_then_fails(
    phase: Phase, strategy: Strategy, command: Command, stranded: str
) -> None:
    m = at(phase, strategy, committed=True)
    failure = StepFailed(phase, "resume failed", "dest host2")
    for _ in range(3):
        assert m.handle(failure) == [command]
        assert m.phase is phase
    assert m.handle(failure) == [Finish(Phase.FAILED, stranded)]
    assert m.phase is Phase.FAILED


def test_retries_count_consecutive_failures_only() -> None:
    m = at(Phase.COMMIT, committed=True)
    for _ in range(3):
        m.handle(StepFailed(Phase.COMMIT, "x"))
    m.handle(SwitchedOver())
    for _ in range(3):
        assert m.handle(StepFailed(Phase.CLEANUP, "x")) == [CleanUp()]
    assert m.handle(CleanedUp())[0] == Finish(
        Phase.DONE, "done: web1 runs on host2 (stop-and-copy)")


def test_no_retries_fails_at_once() -> None:
    m = at(Phase.COMMIT, committed=True, max_retries=0)
    (finish,) = m.handle(StepFailed(Phase.COMMIT, "x"))
    assert isinstance(finish, Finish) and finish.phase is Phase.FAILED


# -- pre-flight and strategies -----------------------------------------------------------------


def report(source: Capabilities, dest: Capabilities) -> PreflightReport:
    return PreflightReport(source, dest)


NO_PIPE = Capabilities("3.19", mem_track=False, lazy_pages=True, lazy_pipe_ok=False)


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        (FULL, FULL, S.PRE_COPY),
        (FULL, LAZY_ONLY, S.POST_COPY),
        (LAZY_ONLY, FULL, S.POST_COPY),
        (LAZY_ONLY, LAZY_ONLY, S.POST_COPY),
        (FULL, NO_PIPE, S.STOP_AND_COPY),
        (FULL, BASIC, S.STOP_AND_COPY),
        (BASIC, BASIC, S.STOP_AND_COPY),
    ],
)
def test_auto_picks_the_best_both_ends_allow(
    source: Capabilities, dest: Capabilities, expected: Strategy
) -> None:
    m = at(Phase.PREFLIGHT, S.AUTO)
    assert m.strategy is S.AUTO
    assert m.handle(PreflightFinished(report(source, dest))) == [PrepareDestination(expected)]
    assert m.strategy is expected and m.stats().strategy is expected


@pytest.mark.parametrize(
    ("requested", "source", "dest", "why"),
    [
        (S.PRE_COPY, FULL, LAZY_ONLY,
         "pre-copy is impossible: host2 has no memory change tracking (soft-dirty)"),
        (S.PRE_COPY, BASIC, BASIC,
         "pre-copy is impossible: host1 has no memory change tracking (soft-dirty), "
         "host2 has no memory change tracking (soft-dirty)"),
        (S.POST_COPY, BASIC, FULL,
         "post-copy is impossible: host1 has no lazy pages (userfaultfd), host1 has "
         "fs.pipe-max-size too small for lazy pages (fix: sysctl fs.pipe-max-size=4194304)"),
        (S.POST_COPY, FULL, NO_PIPE,
         "post-copy is impossible: host2 has fs.pipe-max-size too small for lazy pages "
         "(fix: sysctl fs.pipe-max-size=4194304)"),
    ],
)
def test_an_impossible_strategy_is_refused(
    requested: Strategy, source: Capabilities, dest: Capabilities, why: str
) -> None:
    m = at(Phase.PREFLIGHT, requested)
    assert m.handle(PreflightFinished(report(source, dest))) == [Finish(
        Phase.REFUSED, f"refused: {why}; nothing was touched, web1 is as it was on host1")]
    assert m.phase is Phase.REFUSED


@pytest.mark.parametrize("requested", [S.PRE_COPY, S.POST_COPY, S.STOP_AND_COPY])
def test_a_possible_strategy_is_kept(requested: Strategy) -> None:
    assert resolve_strategy(requested, report(FULL, FULL), source_host="a", dest_host="b") == (
        requested, "")


def test_stop_and_copy_needs_nothing() -> None:
    assert resolve_strategy(S.STOP_AND_COPY, report(BASIC, BASIC), source_host="a",
                            dest_host="b") == (S.STOP_AND_COPY, "")


def test_preflight_problems_refuse_before_anything() -> None:
    m = at(Phase.PREFLIGHT, S.AUTO)
    problems = ("source host1: no workload web1", "dest host2: web1 exists")
    (finish,) = m.handle(PreflightFinished(dataclasses.replace(REPORT, problems=problems)))
    assert finish == Finish(Phase.REFUSED, "refused: source host1: no workload web1; dest host2: "
                            "web1 exists; nothing was touched, web1 is as it was on host1")
    assert m.strategy is S.AUTO


# -- pre-copy and the policy -------------------------------------------------------------------


def test_pre_copy_rounds_follow_the_policy_limits() -> None:
    m = at(Phase.PRECOPY, max_iterations=3, max_downtime_ms=1)
    slow = IterationFigures(0, 50_000, 0, 204_800_000, 1.0)
    assert m.handle(PreDumpFinished(slow)) == [StartPreDump(2)]
    assert m.handle(PreDumpFinished(dataclasses.replace(slow, pages_written=30_000))) == [
        StartPreDump(3)]
    assert m.handle(PreDumpFinished(dataclasses.replace(slow, pages_written=10_000))) == [
        FreezeAndDump(lazy=False)]
    assert m.stats().precopy_stop_reason.startswith("reached 3 pre-copy rounds")


def test_one_round_at_least_even_with_max_iterations_one() -> None:
    m = at(Phase.PREPARE, S.PRE_COPY, max_iterations=1)
    assert m.handle(DestinationPrepared()) == [StartPreDump(1)]
    assert m.handle(PreDumpFinished(BIG)) == [FreezeAndDump(lazy=False)]


# -- plain data --------------------------------------------------------------------------------


def test_stats_after_a_pre_copy_migration() -> None:
    m = Migration(spec(strategy=S.PRE_COPY))
    fresh = m.stats()
    assert (fresh.iterations, fresh.bytes_sent, fresh.frozen_s) == (0, 0, None)
    assert fresh.expected_downtime_ms is None
    feed(m, happy(S.PRE_COPY))
    stats = m.stats()
    assert stats.strategy is S.PRE_COPY
    assert stats.iterations == 2
    assert stats.precopy_bytes == BIG.bytes_sent + SMALL.bytes_sent
    # the destination could not count its pages (RESTORE.pages_bytes == 0): the rounds count
    assert stats.bytes_sent == stats.precopy_bytes + TRANSFER.bytes_sent
    assert stats.pages_sent == stats.precopy_bytes // 4096
    seconds = BIG.duration_s + SMALL.duration_s + DUMP.duration_s + TRANSFER.duration_s
    assert stats.throughput_bytes_per_s == pytest.approx(stats.bytes_sent / seconds)
    assert stats.dirty_rate_bytes_per_s == pytest.approx(
        SMALL.pages_written * 4096 / BIG.duration_s)
    assert stats.frozen_s == 1.5
    assert stats.restore_s == RESTORE.duration_s
    assert stats.expected_downtime_ms is not None and stats.expected_downtime_ms < 300
    assert stats.precopy_stop_reason.startswith("expected downtime")
    assert dataclasses.asdict(stats)["iterations"] == 2


def test_stats_count_the_pages_the_destination_received() -> None:
    m = Migration(spec(strategy=S.STOP_AND_COPY))
    dump = dataclasses.replace(DUMP, duration_s=0.5)
    restore = dataclasses.replace(RESTORE, pages_bytes=64 << 20)
    events = [SourceFrozen(dump) if isinstance(e, SourceFrozen) else e
              for e in happy(S.STOP_AND_COPY)]
    feed(m, [RestoredStopped(restore) if isinstance(e, RestoredStopped) else e for e in events])
    stats = m.stats()
    assert stats.bytes_sent == (64 << 20) + TRANSFER.bytes_sent
    assert stats.pages_sent == (64 << 20) // 4096
    assert stats.throughput_bytes_per_s == pytest.approx(
        stats.bytes_sent / (0.5 + TRANSFER.duration_s))
    assert stats.dirty_rate_bytes_per_s is None  # no pre-copy rounds


def test_plain_accessors() -> None:
    m = at(Phase.PRECOPY)
    m.handle(PreDumpFinished(BIG))
    history = m.history
    assert isinstance(history, tuple) and history == (BIG,)
    assert m.spec.migration_id == "m1"
    assert repr(m) == "<Migration m1 precopy pre-copy>"
    assert m.reason == ""


@pytest.mark.parametrize(
    "changes",
    [
        {"migration_id": ""}, {"dest_host": "host1"}, {"max_downtime_ms": 0},
        {"max_downtime_ms": float("nan")}, {"max_iterations": 0}, {"freeze_cost_ms": -1},
        {"shrink_threshold": 0}, {"shrink_threshold": 1.5}, {"page_size": 0},
        {"max_retries": -1},
    ],
)
def test_spec_refuses_nonsense(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        spec(**changes)


def test_spec_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.max_iterations = 3  # type: ignore[misc]


def test_post_copy_counts_the_lazy_pages_but_times_only_the_images() -> None:
    m = Migration(spec(strategy=S.POST_COPY))
    restore = dataclasses.replace(RESTORE, pages_bytes=256 << 20)  # to be fetched lazily
    feed(m, [RestoredStopped(restore) if isinstance(e, RestoredStopped) else e
             for e in happy(S.POST_COPY)])
    stats = m.stats()
    assert stats.bytes_sent == (256 << 20) + TRANSFER.bytes_sent
    assert stats.pages_sent == (256 << 20) // 4096
    assert stats.throughput_bytes_per_s == pytest.approx(
        TRANSFER.bytes_sent / (DUMP.duration_s + TRANSFER.duration_s))
