"""The migration state machine, driven by hand-fed events (no runner, no ports)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from haul.engine.commands import (
    AwaitPages,
    CheckDestinationRoom,
    CleanUp,
    Command,
    Finish,
    FireHook,
    FreezeAndDump,
    KillSource,
    PrepareDestination,
    RecordCommit,
    ReleaseDump,
    RestoreStopped,
    ResumeDestination,
    Rollback,
    RunPreflight,
    StartPreDump,
    SyncFiles,
    TransferImages,
    Undo,
)
from haul.engine.events import (
    AbortRequested,
    CleanedUp,
    CommitRecorded,
    DestinationPrepared,
    DestinationResumed,
    DestinationRoomChecked,
    DumpReleased,
    Event,
    FilesSynced,
    HookFired,
    ImagesTransferred,
    MigrationStarted,
    PagesDelivered,
    Part,
    PreDumpFinished,
    PreflightFinished,
    RestoredStopped,
    RolledBack,
    SourceFrozen,
    SourceKilled,
    StepFailed,
)
from haul.engine.fakes import (
    BASIC,
    DUMP,
    FILES_ROUND,
    FREEZE_STARTED_S,
    FULL,
    LAZY_ONLY,
    PAGE_SERVER,
    RESIDENT_BYTES,
    RESTORE,
    RESUMED_AT_S,
    ROUNDS,
    TRANSFER,
    answer,
)
from haul.engine.figures import PAGE_SIZE, Capabilities, IterationFigures, PreflightReport
from haul.engine.machine import TRANSITIONS, Migration, To, edges, resolve_strategy
from haul.engine.phases import AFTER_COMMIT, BEFORE_COMMIT, TERMINAL, Phase, Strategy
from haul.engine.ports import HookPoint
from haul.engine.spec import MigrationSpec
from haul.errors import IllegalTransition

SPEC = MigrationSpec("m1", "web1", "host1", "host2")
REPORT = PreflightReport(FULL, FULL, (), RESIDENT_BYTES)
BIG, SMALL = ROUNDS
S = Strategy
H = HookPoint


def spec(**changes: object) -> MigrationSpec:
    return dataclasses.replace(SPEC, **changes)  # type: ignore[arg-type]


def report(source: Capabilities, dest: Capabilities) -> PreflightReport:
    return PreflightReport(source, dest, (), RESIDENT_BYTES)


def drive(m: Migration, steps: int | None = None) -> list[tuple[Phase, Command]]:
    """Answer the machine's commands as if every port succeeded, ``steps`` times (None:
    to the end); returns (phase entered, command) for each."""
    got: list[tuple[Phase, Command]] = []
    command = m.handle(MigrationStarted())[0] if m.phase is Phase.NEW else None
    if command is not None:
        got.append((m.phase, command))
    while m.phase not in TERMINAL and (steps is None or len(got) < steps):
        assert m._current is not None
        (command,) = m.handle(answer(m._current, REPORT))
        got.append((m.phase, command))
    return got


def commands(strategy: Strategy, **changes: Any) -> list[Command]:
    return [c for _, c in drive(Migration(spec(strategy=strategy, **changes)))]


def current(m: Migration) -> Command:
    assert m._current is not None
    return m._current


# -- the happy paths ------------------------------------------------------------------------


def test_stop_and_copy_happy_path() -> None:
    assert commands(S.STOP_AND_COPY) == [
        RunPreflight(),
        FireHook(H.PRE_MIGRATE),
        PrepareDestination(S.STOP_AND_COPY, RESIDENT_BYTES),
        SyncFiles(1),
        FireHook(H.PRE_FREEZE),
        FreezeAndDump(lazy=False, page_server=PAGE_SERVER),
        TransferImages(),
        RestoreStopped(lazy=False),
        FireHook(H.RESTORED),
        RecordCommit(),
        ReleaseDump(commit=True),
        KillSource(),
        ResumeDestination(),
        FireHook(H.POST_COMMIT),
        CleanUp(),
        Finish(Phase.DONE, "done: web1 runs on host2 (stop-and-copy)"),
    ]


def test_pre_copy_happy_path() -> None:
    got = commands(S.PRE_COPY)
    assert got[2:8] == [
        PrepareDestination(S.PRE_COPY, RESIDENT_BYTES),
        SyncFiles(1),
        StartPreDump(1, PAGE_SERVER),
        StartPreDump(2, PAGE_SERVER),
        FireHook(H.PRE_FREEZE),
        FreezeAndDump(lazy=False, page_server=PAGE_SERVER),
    ]
    assert got[-1] == Finish(Phase.DONE, "done: web1 runs on host2 (pre-copy, 2 pre-copy rounds)")


def test_post_copy_happy_path() -> None:
    assert commands(S.POST_COPY)[4:] == [
        FireHook(H.PRE_FREEZE),
        FreezeAndDump(lazy=True, page_server=None),
        ReleaseDump(commit=True),  # CRIU serves lazy pages only once post-dump is answered
        TransferImages(),
        RestoreStopped(lazy=True),
        FireHook(H.RESTORED),
        RecordCommit(),
        ResumeDestination(),  # the source stays stopped, serving pages
        FireHook(H.POST_COMMIT),
        AwaitPages(),
        KillSource(),
        CleanUp(),
        Finish(Phase.DONE, "done: web1 runs on host2 (post-copy)"),
    ]


def test_the_destinations_page_server_goes_to_the_dumps_only() -> None:
    m = Migration(spec(strategy=S.PRE_COPY))
    drive(m, 3)
    assert current(m) == PrepareDestination(S.PRE_COPY, RESIDENT_BYTES)
    there = dataclasses.replace(PAGE_SERVER, port=4711)
    (first,) = m.handle(
        DestinationPrepared(dataclasses.replace(answer(current(m)).ready, page_server=there))
    )  # type: ignore[attr-defined]
    assert first == SyncFiles(1)
    rest = [c for _, c in drive(m)]
    assert StartPreDump(1, there) in rest and StartPreDump(2, there) in rest
    assert FreezeAndDump(False, there) in rest


def test_dry_run_stops_after_the_preflight_saying_how_it_would_go() -> None:
    m = Migration(spec(dry_run=True))
    assert [c for _, c in drive(m)] == [
        RunPreflight(),
        Finish(
            Phase.CHECKED,
            "checked: web1 can move from host1 to host2 with pre-copy (auto: both "
            "hosts track memory changes); nothing was touched",
        ),
    ]
    assert m.phase is Phase.CHECKED and m.strategy is S.PRE_COPY
    assert m.stats().strategy_reason == "auto: both hosts track memory changes"


def test_dry_run_refuses_like_a_migration() -> None:
    m = Migration(spec(dry_run=True, strategy=S.POST_COPY))
    m.handle(MigrationStarted())
    (finish,) = m.handle(PreflightFinished(report(FULL, BASIC)))
    assert isinstance(finish, Finish) and finish.phase is Phase.REFUSED


# -- every transition of the table, reached by running the machine -------------------------


def _failures(m: Migration) -> list[Event]:
    phase = m.phase
    return [
        StepFailed(phase, "it broke", "source host1", Part.SOURCE),
        StepFailed(phase, "it broke", "dest host2", Part.DEST),
        StepFailed(phase, "it broke", "hooks", Part.HOOKS),
        AbortRequested(),
    ]


def _variants(m: Migration) -> Iterator[Event]:
    """Events worth trying in ``m``'s state: what its ports could report."""
    if m.phase is Phase.NEW:
        yield from (MigrationStarted(), AbortRequested())
        return
    command = current(m)
    yield answer(command, REPORT)
    yield from _failures(m)
    match command:
        case RunPreflight():
            yield PreflightFinished(dataclasses.replace(REPORT, problems=("no room",)))
        case SyncFiles(round=round_):  # a big round: the files policy goes on
            yield FilesSynced(dataclasses.replace(FILES_ROUND, round=round_, bytes_sent=64 << 20))
        case StartPreDump():
            yield PreDumpFinished(BIG)
            yield PreDumpFinished(SMALL)
        case Rollback():
            yield RolledBack(("dest host2: busy",))
        case CheckDestinationRoom():
            yield DestinationRoomChecked(0)


def _states() -> Iterator[tuple[MigrationSpec, list[Event]]]:
    """Event paths into every state: each strategy (and a dry run), along the happy path
    and along each rollback, with hooks told or not."""
    specs = [spec(strategy=s) for s in (S.STOP_AND_COPY, S.PRE_COPY, S.POST_COPY)]
    specs.append(spec(dry_run=True))
    for sp in specs:
        yield sp, []
        m = Migration(sp)
        path: list[Event] = [MigrationStarted()]
        m.handle(path[0])
        while m.phase not in TERMINAL:
            yield sp, list(path)
            for failure in _failures(m):
                if m.abortable:
                    yield from _after(sp, [*path, failure], ())
                    yield from _after(sp, [*path, failure], ("dest host2: busy",))
            event = answer(current(m), REPORT)
            m.handle(event)
            path.append(event)


def _after(
    sp: MigrationSpec, path: list[Event], problems: tuple[str, ...]
) -> Iterator[tuple[MigrationSpec, list[Event]]]:
    """Along a rollback whose undo reports ``problems``."""
    m = replay(sp, path)
    while m.phase not in TERMINAL:
        yield sp, list(path)
        event = answer(current(m), REPORT)
        if isinstance(event, RolledBack):
            event = RolledBack(problems)
        m.handle(event)
        path.append(event)


def replay(sp: MigrationSpec, path: list[Event]) -> Migration:
    m = Migration(sp)
    for event in path:
        m.handle(event)
    return m


def _reaches(sp: MigrationSpec, path: list[Event], event: Event) -> Iterator[Phase]:
    m = replay(sp, path)
    try:
        m.handle(event)
    except IllegalTransition:
        return
    yield m.phase
    if isinstance(event, StepFailed) and m.committed:  # retries, then FAILED
        for _ in range(m.spec.max_retries):
            m.handle(dataclasses.replace(event, phase=m.phase))
        yield m.phase


REACHED: dict[tuple[Phase, type[Event], Phase], tuple[MigrationSpec, list[Event], Event]] = {}
for _sp, _path in _states():
    _m = replay(_sp, _path)
    for _event in _variants(_m):
        for _to in _reaches(_sp, _path, _event):
            REACHED.setdefault((_m.phase, type(_event), _to), (_sp, _path, _event))


@pytest.mark.parametrize(
    ("source", "event_type", "way"),
    list(edges()),
    ids=[f"{s.name}-{e.__name__}-{w.phase.name}" for s, e, w in edges()],
)
def test_every_transition_in_the_table_is_reached(
    source: Phase, event_type: type[Event], way: To
) -> None:
    assert (source, event_type, way.phase) in REACHED, "no run of the machine takes this way"
    sp, path, event = REACHED[(source, event_type, way.phase)]
    m = replay(sp, path)
    (command,) = m.handle(event)
    assert isinstance(command, Finish) == (m.phase in TERMINAL)


def test_no_run_takes_a_way_the_table_does_not_list() -> None:
    listed = {(s, e, w.phase) for s, e, w in edges()}
    assert set(REACHED) <= listed


def test_table_shape() -> None:
    assert len(list(edges())) == 54
    for phase in BEFORE_COMMIT - {Phase.NEW}:
        assert TRANSITIONS[(phase, StepFailed)] == (To(Phase.ROLLING_BACK),)
        assert TRANSITIONS[(phase, AbortRequested)] == (To(Phase.ROLLING_BACK),)
    for phase in AFTER_COMMIT - {Phase.COMMIT}:
        assert (phase, AbortRequested) not in TRANSITIONS
        assert To(Phase.FAILED, "retries exhausted") in TRANSITIONS[(phase, StepFailed)]
    assert not any(phase in TERMINAL for phase, _ in TRANSITIONS)
    with pytest.raises(TypeError):
        TRANSITIONS[(Phase.DONE, MigrationStarted)] = (To(Phase.NEW),)  # type: ignore[index]


# -- what is refused -------------------------------------------------------------------------


def at(
    phase: Phase, strategy: Strategy = S.STOP_AND_COPY, *, committed: bool = False, **changes: Any
) -> Migration:
    """A migration that has just entered ``phase`` (on the happy path, or the rollback)."""
    if strategy is S.STOP_AND_COPY and phase in (Phase.PRECOPY, Phase.LAZY_PAGES):
        strategy = S.PRE_COPY if phase is Phase.PRECOPY else S.POST_COPY
    m = Migration(spec(strategy=strategy, **changes))
    if phase is Phase.REFUSED:
        m.handle(MigrationStarted())
        m.handle(PreflightFinished(dataclasses.replace(REPORT, problems=("no room",))))
        return m
    if phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.FAILED):
        m = at(Phase.RESTORE, strategy, **changes)
        m.handle(StepFailed(Phase.RESTORE, "restore failed", "dest host2", Part.DEST))
        if phase is not Phase.ROLLING_BACK:
            m.handle(RolledBack(("dest host2: busy",) if phase is Phase.FAILED else ()))
            m.handle(HookFired(H.ROLLED_BACK))
        return m
    if phase is Phase.CHECKED:
        m = Migration(spec(dry_run=True))
    if m.phase is Phase.NEW and phase is not Phase.NEW:
        m.handle(MigrationStarted())
    while m.phase is not phase or (committed and not m.committed):
        m.handle(answer(current(m), REPORT))
    return m


EVERY_EVENT: list[Event] = [
    MigrationStarted(),
    PreflightFinished(REPORT),
    HookFired(H.PRE_MIGRATE),
    DestinationPrepared(),
    PreDumpFinished(BIG),
    SourceFrozen(DUMP),
    DumpReleased(True),
    ImagesTransferred(TRANSFER),
    RestoredStopped(RESTORE),
    CommitRecorded(),
    SourceKilled(),
    DestinationResumed(),
    PagesDelivered(),
    CleanedUp(),
    AbortRequested(),
    RolledBack(),
    DestinationRoomChecked(None),
]
ILLEGAL = [
    (phase, event)
    for phase in Phase
    for event in [*EVERY_EVENT, StepFailed(phase, "x")]
    if (phase, type(event)) not in TRANSITIONS
]


@pytest.mark.parametrize(
    ("phase", "event"), ILLEGAL, ids=[f"{p.name}-{type(e).__name__}" for p, e in ILLEGAL]
)
def test_illegal_transitions_are_refused(phase: Phase, event: Event) -> None:
    m = at(phase, committed=phase is Phase.COMMIT)
    before = (m.phase, m.strategy, m.history, m.stats())
    with pytest.raises(IllegalTransition) as refused:
        m.handle(event)
    assert phase.value in str(refused.value)
    assert type(event).__name__ in str(refused.value)
    assert (m.phase, m.strategy, m.history, m.stats()) == before


@pytest.mark.parametrize("phase", [Phase.COMMIT, Phase.LAZY_PAGES, Phase.CLEANUP])
def test_abort_after_the_commit_is_refused(phase: Phase) -> None:
    m = at(phase, committed=True)
    with pytest.raises(IllegalTransition, match="the commit point is passed"):
        m.handle(AbortRequested())
    assert m.phase is phase


def test_abort_in_commit_before_the_record_rolls_back() -> None:
    m = at(Phase.COMMIT)
    assert m.abortable and current(m) == RecordCommit()
    (rollback,) = m.handle(AbortRequested("Ctrl-C"))
    assert rollback == Rollback(
        Phase.COMMIT, "Ctrl-C", (Undo.RELEASE_DUMP, Undo.RESUME_SOURCE, Undo.DISCARD_DEST)
    )


@pytest.mark.parametrize("event", [DumpReleased(True), SourceKilled(), DestinationResumed()])
def test_switch_over_before_the_commit_is_recorded_is_refused(event: Event) -> None:
    m = at(Phase.COMMIT)
    with pytest.raises(IllegalTransition, match="before the commit is recorded"):
        m.handle(event)
    assert not m.committed
    assert m.handle(CommitRecorded()) == [ReleaseDump(commit=True)]


def test_an_answer_to_a_command_not_given_is_refused() -> None:
    m = at(Phase.COMMIT, committed=True)
    assert current(m) == ReleaseDump(commit=True)
    with pytest.raises(IllegalTransition, match="did not ask for DestinationResumed"):
        m.handle(DestinationResumed())
    with pytest.raises(IllegalTransition, match="did not fire the post-commit hooks"):
        m.handle(HookFired(H.POST_COMMIT))


def test_commit_is_recorded_once() -> None:
    m = at(Phase.COMMIT, committed=True)
    with pytest.raises(IllegalTransition, match="already recorded"):
        m.handle(CommitRecorded())


def test_step_failed_for_another_phase_is_refused() -> None:
    m = at(Phase.TRANSFER)
    with pytest.raises(
        IllegalTransition, match="in phase transfer; cannot handle StepFailed for phase freeze"
    ):
        m.handle(StepFailed(Phase.FREEZE, "late"))
    assert m.phase is Phase.TRANSFER


def test_a_rollback_step_cannot_fail() -> None:
    m = at(Phase.ROLLING_BACK)
    with pytest.raises(IllegalTransition, match="a rollback step cannot fail"):
        m.handle(StepFailed(Phase.ROLLING_BACK, "x"))


def test_a_finished_migration_accepts_nothing() -> None:
    m = at(Phase.DONE)
    with pytest.raises(IllegalTransition, match="is over"):
        m.handle(StepFailed(Phase.DONE, "x"))


# -- rolling back: what is undone, in which order -----------------------------------------------

RELEASE, RESUME, DISCARD = Undo.RELEASE_DUMP, Undo.RESUME_SOURCE, Undo.DISCARD_DEST


def failing_at(strategy: Strategy, command: Command, part: Part = Part.DEST) -> Migration:
    """A migration whose ``command`` is the one in flight."""
    m = Migration(spec(strategy=strategy))
    m.handle(MigrationStarted())
    while current(m) != command:
        m.handle(answer(current(m), REPORT))
        assert m.phase not in TERMINAL, f"{command!r} never came"
    return m


@pytest.mark.parametrize(
    ("strategy", "command", "steps"),
    [
        (S.STOP_AND_COPY, RunPreflight(), ()),
        (S.STOP_AND_COPY, FireHook(H.PRE_MIGRATE), ()),
        (S.STOP_AND_COPY, PrepareDestination(S.STOP_AND_COPY, RESIDENT_BYTES), (RESUME, DISCARD)),
        (S.PRE_COPY, StartPreDump(2, PAGE_SERVER), (RESUME, DISCARD)),
        (S.STOP_AND_COPY, FireHook(H.PRE_FREEZE), (RESUME, DISCARD)),
        # the dump may have reached post-dump: release it (harmless if it did not)
        (S.STOP_AND_COPY, FreezeAndDump(False, PAGE_SERVER), (RELEASE, RESUME, DISCARD)),
        (S.STOP_AND_COPY, TransferImages(), (RELEASE, RESUME, DISCARD)),
        (S.STOP_AND_COPY, RestoreStopped(False), (RELEASE, RESUME, DISCARD)),
        (S.STOP_AND_COPY, FireHook(H.RESTORED), (RELEASE, RESUME, DISCARD)),
        (S.STOP_AND_COPY, RecordCommit(), (RELEASE, RESUME, DISCARD)),
        (S.POST_COPY, FreezeAndDump(True, None), (RELEASE, RESUME, DISCARD)),
        # released, serving pages: discarding the destination makes CRIU resume the tree
        (S.POST_COPY, ReleaseDump(True), (RELEASE, DISCARD, RESUME)),
        (S.POST_COPY, TransferImages(), (DISCARD, RESUME)),
        (S.POST_COPY, RestoreStopped(True), (DISCARD, RESUME)),
        (S.POST_COPY, RecordCommit(), (DISCARD, RESUME)),
    ],
)
def test_a_rollback_undoes_what_may_have_been_done_in_order(
    strategy: Strategy, command: Command, steps: tuple[Undo, ...]
) -> None:
    m = failing_at(strategy, command)
    (rollback,) = m.handle(StepFailed(m.phase, "it broke", "dest host2", Part.DEST))
    assert isinstance(rollback, Rollback) and rollback.steps == steps
    reason = (
        "could not record the commit decision: dest host2: it broke"
        if command == RecordCommit()
        else "dest host2: it broke"
    )
    assert rollback.reason == reason


def test_rolled_back_tells_the_hooks_that_were_told_pre_migrate() -> None:
    m = failing_at(S.STOP_AND_COPY, TransferImages())
    m.handle(StepFailed(Phase.TRANSFER, "reset", "transport", Part.TRANSPORT))
    (fire,) = m.handle(RolledBack(("dest host2: busy",)))
    assert fire == FireHook(
        H.ROLLED_BACK, "transport: reset; rollback incomplete: dest host2: busy"
    )
    (finish,) = m.handle(HookFired(H.ROLLED_BACK, "hooks: rolled-back failed"))
    assert isinstance(finish, Finish) and finish.phase is Phase.FAILED
    assert "dest host2: busy" in finish.reason
    assert m.problems == ("hooks: rolled-back failed",)


@pytest.mark.parametrize(("part", "told"), [(Part.HOOKS, True), (Part.JOURNAL, False)])
def test_a_pre_migrate_step_that_failed_owes_rolled_back_only_if_hooks_ran(
    part: Part, told: bool
) -> None:
    m = failing_at(S.STOP_AND_COPY, FireHook(H.PRE_MIGRATE))
    m.handle(StepFailed(Phase.PREPARE, "no", "x", part))
    (next_,) = m.handle(RolledBack())
    assert isinstance(next_, FireHook) == told


def test_abort_rolls_back_with_its_reason() -> None:
    m = at(Phase.PRECOPY)
    assert m.handle(AbortRequested("operator pressed Ctrl-C")) == [
        Rollback(Phase.PRECOPY, "operator pressed Ctrl-C", (RESUME, DISCARD))
    ]


def test_failure_before_the_commit_ends_rolled_back_saying_where() -> None:
    m = failing_at(S.STOP_AND_COPY, RestoreStopped(False))
    m.handle(StepFailed(Phase.RESTORE, "CRIU restore: errno 17", "dest host2", Part.DEST))
    m.handle(RolledBack())
    assert m.handle(HookFired(H.ROLLED_BACK)) == [
        Finish(
            Phase.ROLLED_BACK,
            "rolled back during restore (dest host2: CRIU restore: errno 17); "
            "web1 runs on host1, nothing kept on host2",
        )
    ]


# -- a dump that broke while sending pages to the destination: was its disk full? -----------


@pytest.mark.parametrize(
    "command", [StartPreDump(1, PAGE_SERVER), FreezeAndDump(False, PAGE_SERVER)]
)
def test_a_source_failure_sending_pages_asks_the_destinations_room(command: Command) -> None:
    strategy = S.PRE_COPY if isinstance(command, StartPreDump) else S.STOP_AND_COPY
    m = failing_at(strategy, command)
    phase = m.phase
    assert m.handle(StepFailed(phase, "page server: EPIPE", "source host1", Part.SOURCE)) == [
        CheckDestinationRoom()
    ]
    (rollback,) = m.handle(DestinationRoomChecked(200 << 10))
    assert isinstance(rollback, Rollback) and rollback.failed_phase is phase
    assert rollback.reason == (
        "destination host2 has no room left for the pages (200 KiB free where it keeps "
        "incoming images): the dump could not send them"
    )


@pytest.mark.parametrize(
    "event",
    [
        DestinationRoomChecked(None),
        DestinationRoomChecked(5 << 20),
        StepFailed(Phase.ROLLING_BACK, "unreachable", "dest host2", Part.DEST),
    ],
)
def test_room_enough_or_unknown_keeps_the_original_cause(event: Event) -> None:
    m = failing_at(S.STOP_AND_COPY, FreezeAndDump(False, PAGE_SERVER))
    m.handle(StepFailed(Phase.FREEZE, "page server: EPIPE", "source host1", Part.SOURCE))
    (rollback,) = m.handle(event)
    assert rollback == Rollback(
        Phase.FREEZE, "source host1: page server: EPIPE", (RELEASE, RESUME, DISCARD)
    )


@pytest.mark.parametrize(
    ("strategy", "command", "part"),
    [
        (S.POST_COPY, FreezeAndDump(True, None), Part.SOURCE),  # pages stay on the source
        (S.STOP_AND_COPY, FreezeAndDump(False, PAGE_SERVER), Part.HOOKS),
        (S.STOP_AND_COPY, TransferImages(), Part.TRANSPORT),
    ],
)
def test_other_failures_roll_back_at_once(strategy: Strategy, command: Command, part: Part) -> None:
    m = failing_at(strategy, command)
    (rollback,) = m.handle(StepFailed(m.phase, "x", "y", part))
    assert isinstance(rollback, Rollback)


# -- rolling forward ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [ReleaseDump(True), KillSource(), ResumeDestination()])
def test_a_failed_switch_over_step_is_retried_alone(command: Command) -> None:
    m = at(Phase.COMMIT, committed=True)
    while current(m) != command:
        m.handle(answer(current(m)))
    assert m.handle(StepFailed(Phase.COMMIT, "EPERM", "source host1", Part.SOURCE)) == [command]
    rest = [c for _, c in drive(m)]
    assert command not in rest  # once done, a step is not repeated
    assert m.phase is Phase.DONE


def test_failure_after_the_commit_fails_saying_what_is_where() -> None:
    m = at(Phase.LAZY_PAGES, committed=True)
    for _ in range(SPEC.max_retries):
        assert m.handle(StepFailed(Phase.LAZY_PAGES, "uffd")) == [AwaitPages()]
    (finish,) = m.handle(StepFailed(Phase.LAZY_PAGES, "uffd", "dest host2"))
    assert isinstance(finish, Finish) and finish.phase is Phase.FAILED
    assert "not all its memory arrived after 4 attempts (dest host2: uffd)" in finish.reason


def test_retries_count_consecutive_failures_only() -> None:
    m = at(Phase.COMMIT, committed=True, max_retries=1)
    m.handle(StepFailed(Phase.COMMIT, "x"))
    m.handle(DumpReleased(True))
    m.handle(StepFailed(Phase.COMMIT, "x"))  # the kill: its own first failure
    assert current(m) == KillSource() and m.phase is Phase.COMMIT


def test_no_retries_fails_at_once() -> None:
    m = at(Phase.CLEANUP, max_retries=0)
    (finish,) = m.handle(StepFailed(Phase.CLEANUP, "rm"))
    assert isinstance(finish, Finish) and "cleanup did not finish" in finish.reason


# -- strategies --------------------------------------------------------------------------------

NO_PIPE = Capabilities("3.19", mem_track=False, lazy_pages=True, lazy_pipe_ok=False)


@pytest.mark.parametrize(
    ("source", "dest", "expected", "why"),
    [
        (FULL, FULL, S.PRE_COPY, "auto: both hosts track memory changes"),
        (
            FULL,
            LAZY_ONLY,
            S.POST_COPY,
            "auto: host2 has no memory change tracking (soft-dirty); both have lazy pages",
        ),
        (
            LAZY_ONLY,
            LAZY_ONLY,
            S.POST_COPY,
            "auto: host1 has no memory change tracking (soft-dirty), host2 has no memory "
            "change tracking (soft-dirty); both have lazy pages",
        ),
        (
            FULL,
            NO_PIPE,
            S.STOP_AND_COPY,
            "auto: host2 has no memory change tracking (soft-dirty), host2 has fs.pipe-max-size "
            "too small for lazy pages (fix: sysctl fs.pipe-max-size=4194304)",
        ),
        (
            BASIC,
            FULL,
            S.STOP_AND_COPY,
            "auto: host1 has no memory change tracking (soft-dirty), host1 has no lazy pages "
            "(userfaultfd), host1 has fs.pipe-max-size too small for lazy pages "
            "(fix: sysctl fs.pipe-max-size=4194304)",
        ),
    ],
)
def test_auto_picks_the_best_both_ends_allow_and_says_why(
    source: Capabilities, dest: Capabilities, expected: Strategy, why: str
) -> None:
    m = at(Phase.PREFLIGHT, S.AUTO)
    assert m.strategy is S.AUTO
    assert m.handle(PreflightFinished(report(source, dest))) == [FireHook(H.PRE_MIGRATE)]
    assert m.strategy is expected and m.stats().strategy is expected
    assert m.stats().strategy_reason == why


@pytest.mark.parametrize(
    ("requested", "source", "dest", "why"),
    [
        (
            S.PRE_COPY,
            FULL,
            LAZY_ONLY,
            "pre-copy is impossible: host2 has no memory change tracking (soft-dirty)",
        ),
        (
            S.POST_COPY,
            BASIC,
            FULL,
            "post-copy is impossible: host1 has no lazy pages (userfaultfd), host1 has "
            "fs.pipe-max-size too small for lazy pages (fix: sysctl fs.pipe-max-size=4194304)",
        ),
        (
            S.POST_COPY,
            FULL,
            NO_PIPE,
            "post-copy is impossible: host2 has fs.pipe-max-size too small for lazy pages "
            "(fix: sysctl fs.pipe-max-size=4194304)",
        ),
    ],
)
def test_an_impossible_strategy_is_refused(
    requested: Strategy, source: Capabilities, dest: Capabilities, why: str
) -> None:
    m = at(Phase.PREFLIGHT, requested)
    assert m.handle(PreflightFinished(report(source, dest))) == [
        Finish(Phase.REFUSED, f"refused: {why}; nothing was touched, web1 is as it was on host1")
    ]
    assert m.phase is Phase.REFUSED


@pytest.mark.parametrize("requested", [S.PRE_COPY, S.POST_COPY, S.STOP_AND_COPY])
def test_a_possible_strategy_is_kept(requested: Strategy) -> None:
    assert resolve_strategy(requested, report(FULL, FULL), source_host="a", dest_host="b") == (
        requested,
        "asked for",
    )


def test_preflight_problems_refuse_before_anything() -> None:
    m = at(Phase.PREFLIGHT, S.AUTO)
    problems = ("source host1: no workload web1", "dest host2: web1 exists")
    (finish,) = m.handle(PreflightFinished(dataclasses.replace(REPORT, problems=problems)))
    assert finish == Finish(
        Phase.REFUSED,
        "refused: source host1: no workload web1; dest host2: "
        "web1 exists; nothing was touched, web1 is as it was on host1",
    )
    assert m.strategy is S.AUTO


# -- pre-copy and the policy -------------------------------------------------------------------


def test_pre_copy_rounds_follow_the_policy_limits() -> None:
    m = at(Phase.PRECOPY, max_iterations=3, max_downtime_ms=1)
    slow = IterationFigures(0, 50_000, 0, 204_800_000, 1.0)
    assert m.handle(PreDumpFinished(slow)) == [StartPreDump(2, PAGE_SERVER)]
    assert m.handle(PreDumpFinished(dataclasses.replace(slow, pages_written=30_000))) == [
        StartPreDump(3, PAGE_SERVER)
    ]
    assert m.handle(PreDumpFinished(dataclasses.replace(slow, pages_written=10_000))) == [
        FireHook(H.PRE_FREEZE)
    ]
    assert m.stats().precopy_stop_reason.startswith("reached 3 pre-copy rounds")


def test_one_round_at_least_even_with_max_iterations_one() -> None:
    m = at(Phase.PRECOPY, max_iterations=1)
    assert current(m) == StartPreDump(1, PAGE_SERVER)
    assert m.handle(PreDumpFinished(BIG)) == [FireHook(H.PRE_FREEZE)]


# -- plain data --------------------------------------------------------------------------------


def test_stats_after_a_pre_copy_migration() -> None:
    m = Migration(spec(strategy=S.PRE_COPY))
    fresh = m.stats()
    assert (fresh.iterations, fresh.bytes_sent, fresh.frozen_s) == (0, 0, None)
    assert fresh.expected_downtime_ms is None
    drive(m)
    stats = m.stats()
    assert stats.strategy is S.PRE_COPY
    assert stats.iterations == 2
    assert stats.precopy_bytes == BIG.bytes_sent + SMALL.bytes_sent
    # the destination could not count its pages (RESTORE.pages_bytes == 0): the rounds count
    assert stats.files_rounds == 1 and stats.files_presync_bytes == FILES_ROUND.bytes_sent
    assert stats.bytes_sent == (FILES_ROUND.bytes_sent + stats.precopy_bytes + TRANSFER.bytes_sent)
    assert stats.pages_sent == stats.precopy_bytes // PAGE_SIZE
    seconds = (
        FILES_ROUND.duration_s
        + BIG.duration_s
        + SMALL.duration_s
        + DUMP.duration_s
        + TRANSFER.duration_s
    )
    assert stats.throughput_bytes_per_s == pytest.approx(stats.bytes_sent / seconds)
    assert stats.dirty_rate_bytes_per_s == pytest.approx(
        SMALL.pages_written * PAGE_SIZE / BIG.duration_s
    )
    # from the runner's reading before the dump to the one after the resume
    assert stats.frozen_s == RESUMED_AT_S - FREEZE_STARTED_S
    assert stats.restore_s == RESTORE.duration_s
    assert stats.expected_downtime_ms is not None and stats.expected_downtime_ms < 300
    assert stats.precopy_stop_reason.startswith("expected downtime")
    assert dataclasses.asdict(stats)["iterations"] == 2


def _with(events: dict[Event | type[Event], Event], strategy: Strategy) -> Migration:
    """A whole run whose answers are the natural ones but for ``events`` (by event, or
    by type)."""
    m = Migration(spec(strategy=strategy))
    m.handle(MigrationStarted())
    while m.phase not in TERMINAL:
        event = answer(current(m), REPORT)
        m.handle(events.get(event, events.get(type(event), event)))
    return m


def test_stats_count_the_pages_the_destination_received() -> None:
    dump = dataclasses.replace(DUMP, duration_s=0.5)
    restore = dataclasses.replace(RESTORE, pages_bytes=64 << 20)
    m = _with(
        {SourceFrozen: SourceFrozen(dump, 0.0), RestoredStopped: RestoredStopped(restore)},
        S.STOP_AND_COPY,
    )
    stats = m.stats()
    assert stats.bytes_sent == FILES_ROUND.bytes_sent + (64 << 20) + TRANSFER.bytes_sent
    assert stats.pages_sent == (64 << 20) // PAGE_SIZE
    assert stats.throughput_bytes_per_s == pytest.approx(
        stats.bytes_sent / (FILES_ROUND.duration_s + 0.5 + TRANSFER.duration_s)
    )
    assert stats.dirty_rate_bytes_per_s is None  # no pre-copy rounds


def test_post_copy_counts_the_lazy_pages_but_times_only_the_images() -> None:
    restore = dataclasses.replace(RESTORE, pages_bytes=256 << 20)  # to be fetched lazily
    m = _with({RestoredStopped: RestoredStopped(restore)}, S.POST_COPY)
    stats = m.stats()
    assert stats.bytes_sent == FILES_ROUND.bytes_sent + (256 << 20) + TRANSFER.bytes_sent
    assert stats.pages_sent == (256 << 20) // PAGE_SIZE
    assert stats.throughput_bytes_per_s == pytest.approx(
        (FILES_ROUND.bytes_sent + TRANSFER.bytes_sent)
        / (FILES_ROUND.duration_s + DUMP.duration_s + TRANSFER.duration_s)
    )


def test_problems_after_the_commit_are_kept_and_change_nothing() -> None:
    m = _with(
        {
            HookFired(H.POST_COMMIT): HookFired(H.POST_COMMIT, "hooks: post-commit failed"),
            CleanedUp: CleanedUp(("dest host2: rm: busy",)),
        },
        S.STOP_AND_COPY,
    )
    assert m.phase is Phase.DONE
    assert m.problems == ("hooks: post-commit failed", "dest host2: rm: busy")


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
        {"migration_id": ""},
        {"dest_host": "host1"},
        {"max_downtime_ms": 0},
        {"max_downtime_ms": float("nan")},
        {"max_iterations": 0},
        {"freeze_cost_ms": -1},
        {"shrink_threshold": 0},
        {"shrink_threshold": 1.5},
        {"page_size": 0},
        {"max_retries": -1},
    ],
)
def test_spec_refuses_nonsense(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        spec(**changes)


def test_spec_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.max_iterations = 3  # type: ignore[misc]


def test_files_go_in_rounds_while_the_policy_says_so() -> None:
    m = Migration(spec(strategy=S.STOP_AND_COPY))
    drive(m, 3)
    m.handle(answer(current(m)))  # prepared
    assert current(m) == SyncFiles(1)
    big = dataclasses.replace(FILES_ROUND, bytes_sent=300 << 20, files=2000)
    assert m.handle(FilesSynced(big)) == [SyncFiles(2)]
    smaller = dataclasses.replace(big, round=2, bytes_sent=8 << 20, files=40)
    assert m.handle(FilesSynced(smaller)) == [SyncFiles(3)]
    settled = dataclasses.replace(big, round=3, bytes_sent=4096, files=1)
    assert m.handle(FilesSynced(settled)) == [FireHook(H.PRE_FREEZE)]
    assert m.stats().files_rounds == 3
    assert m.stats().files_presync_bytes == (300 << 20) + (8 << 20) + 4096


def test_a_failed_files_round_rolls_back_what_prepare_did() -> None:
    m = failing_at(S.STOP_AND_COPY, SyncFiles(1))
    (rollback,) = m.handle(StepFailed(Phase.PREPARE, "EIO", "transport", Part.TRANSPORT))
    assert rollback == Rollback(Phase.PREPARE, "transport: EIO", (RESUME, DISCARD))
