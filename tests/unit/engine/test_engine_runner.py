"""The runner against in-memory ports: the order of port calls, rollback, roll-forward,
timeouts and cancellation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from haul.engine.events import (
    AbortRequested,
    CleanedUp,
    Event,
    MigrationStarted,
    Part,
    RolledBack,
    SourceFrozen,
    StepFailed,
)
from haul.engine.fakes import (
    BASIC,
    FULL,
    LAZY_ONLY,
    RESIDENT_BYTES,
    FakeClock,
    FakeDest,
    FakeJournal,
    FakeSource,
    FakeTransport,
    World,
    boom,
    cancelled,
    journal_call,
)
from haul.engine.figures import Capabilities
from haul.engine.machine import Migration
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import JournalRecord
from haul.engine.runner import Outcome, run
from haul.engine.spec import MigrationSpec
from haul.errors import HaulError

pytestmark = pytest.mark.asyncio

S = Strategy
J = journal_call
COMMIT = J(Phase.COMMIT, "commit")

PREFLIGHT = [
    J(Phase.PREFLIGHT, "MigrationStarted"),
    "source.capabilities",
    "dest.capabilities",
    "source.check_workload",
    "dest.check_free",
]
TAIL = [J(Phase.CLEANUP, "HookFired"), "source.cleanup", "dest.cleanup", J(Phase.DONE, "CleanedUp")]
#: the end of a rollback after the pre-migrate hooks were told (their rolled-back is owed)
ROLLED_BACK = J(Phase.ROLLED_BACK, "HookFired")
#: the end of a rollback before they were
ROLLED_BACK_UNTOLD = J(Phase.ROLLED_BACK, "RolledBack")

STOP_AND_COPY_CALLS = [
    *PREFLIGHT,
    J(Phase.PREPARE, "PreflightFinished"),
    "dest.prepare(stop-and-copy)",
    "transport.sync_files(1)",
    J(Phase.FREEZE, "FilesSynced"),
    "source.freeze_and_dump(False)",
    J(Phase.TRANSFER, "SourceFrozen"),
    "transport.transfer_images",
    J(Phase.RESTORE, "ImagesTransferred"),
    "dest.restore(False)",
    COMMIT,
    "source.release(True)",
    "source.kill",
    "dest.resume",
    *TAIL,
]

PRE_COPY_CALLS = [
    *PREFLIGHT,
    J(Phase.PREPARE, "PreflightFinished"),
    "dest.prepare(pre-copy)",
    "transport.sync_files(1)",
    J(Phase.PRECOPY, "FilesSynced"),
    "source.pre_dump(1)",
    "source.pre_dump(2)",
    J(Phase.FREEZE, "PreDumpFinished"),
    "source.freeze_and_dump(False)",
    J(Phase.TRANSFER, "SourceFrozen"),
    "transport.transfer_images",
    J(Phase.RESTORE, "ImagesTransferred"),
    "dest.restore(False)",
    COMMIT,
    "source.release(True)",
    "source.kill",
    "dest.resume",
    *TAIL,
]

POST_COPY_CALLS = [
    *PREFLIGHT,
    J(Phase.PREPARE, "PreflightFinished"),
    "dest.prepare(post-copy)",
    "transport.sync_files(1)",
    J(Phase.FREEZE, "FilesSynced"),
    "source.freeze_and_dump(True)",
    J(Phase.TRANSFER, "SourceFrozen"),
    "source.release(True)",
    "transport.transfer_images",
    J(Phase.RESTORE, "ImagesTransferred"),
    "dest.restore(True)",
    COMMIT,
    "dest.resume",
    J(Phase.LAZY_PAGES, "HookFired"),
    "dest.wait_pages",
    "source.wait_pages_served",
    "source.kill",
    J(Phase.CLEANUP, "SourceKilled"),
    "source.cleanup",
    "dest.cleanup",
    J(Phase.DONE, "CleanedUp"),
]

HAPPY_CALLS = {
    S.STOP_AND_COPY: STOP_AND_COPY_CALLS,
    S.PRE_COPY: PRE_COPY_CALLS,
    S.POST_COPY: POST_COPY_CALLS,
}


@dataclass
class Rig:
    strategy: Strategy = S.STOP_AND_COPY
    source_caps: Capabilities = FULL
    dest_caps: Capabilities = FULL
    max_retries: int = 3
    world: World = field(default_factory=World)
    events: list[tuple[Phase, Event]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.source = FakeSource(self.world, self.source_caps)
        self.dest = FakeDest(self.world, self.dest_caps)
        self.transport = FakeTransport(self.world)
        self.journal = FakeJournal(self.world)
        self.migration = Migration(
            MigrationSpec(
                "m1", "web1", "host1", "host2", strategy=self.strategy, max_retries=self.max_retries
            )
        )

    @property
    def calls(self) -> list[str]:
        return self.world.calls

    def after(self, call: str) -> list[str]:
        """The calls after the last call to ``call``."""
        last = len(self.calls) - 1 - self.calls[::-1].index(call)
        return self.calls[last + 1 :]

    async def run(self, timeouts: dict[Phase, float] | None = None) -> Outcome:
        try:
            return await run(
                self.migration,
                source=self.source,
                dest=self.dest,
                transport=self.transport,
                journal=self.journal,
                timeouts=timeouts,
                on_event=lambda phase, event: self.events.append((phase, event)),
                clock=FakeClock(),
            )
        finally:
            self.check_commit_rule()

    def check_commit_rule(self) -> None:
        """No kill, no resume on the destination, before the commit record; never both
        copies left to run; never a rollback after a kill."""
        for call in ("source.kill", "dest.resume"):
            if call in self.calls:
                assert COMMIT in self.calls
                assert self.calls.index(COMMIT) < self.calls.index(call)
        if "source.kill" in self.calls:
            assert "source.resume" not in self.calls
            assert "source.release(False)" not in self.calls


# -- happy paths ---


@pytest.mark.parametrize("strategy", [S.STOP_AND_COPY, S.PRE_COPY, S.POST_COPY])
async def test_happy_path_calls_the_ports_in_order(strategy: Strategy) -> None:
    rig = Rig(strategy)
    outcome = await rig.run()
    assert rig.calls == HAPPY_CALLS[strategy]
    assert outcome.phase is Phase.DONE
    assert outcome.reason.startswith("done: web1 runs on host2")
    assert outcome.problems == ()
    assert rig.migration.phase is Phase.DONE


async def test_happy_path_outcome_and_journal() -> None:
    rig = Rig(S.PRE_COPY)
    outcome = await rig.run()
    assert outcome.stats == rig.migration.stats()
    assert outcome.stats.iterations == 2
    assert outcome.stats.frozen_s == 1.0  # the fake clock ticks once per reading
    assert rig.journal.records[0] == JournalRecord("m1", Phase.PREFLIGHT, "MigrationStarted")
    assert rig.journal.records[1].detail == "strategy pre-copy"
    assert JournalRecord("m1", Phase.COMMIT, "commit", "web1 to host2") in rig.journal.records
    assert rig.journal.phases.count(Phase.COMMIT) == 1
    assert rig.journal.records[-1] == JournalRecord("m1", Phase.DONE, "CleanedUp", outcome.reason)
    assert rig.dest.checked == ("web1", RESIDENT_BYTES)


async def test_on_event_sees_every_event_in_its_phase() -> None:
    rig = Rig()
    await rig.run()
    assert rig.events[0] == (Phase.NEW, MigrationStarted())
    assert rig.events[-1] == (Phase.CLEANUP, CleanedUp())
    assert [(p, type(e).__name__) for p, e in rig.events] == [
        (Phase.NEW, "MigrationStarted"),
        (Phase.PREFLIGHT, "PreflightFinished"),
        (Phase.PREPARE, "HookFired"),
        (Phase.PREPARE, "DestinationPrepared"),
        (Phase.PREPARE, "FilesSynced"),
        (Phase.FREEZE, "HookFired"),
        (Phase.FREEZE, "SourceFrozen"),
        (Phase.TRANSFER, "ImagesTransferred"),
        (Phase.RESTORE, "RestoredStopped"),
        (Phase.RESTORE, "HookFired"),
        (Phase.COMMIT, "CommitRecorded"),
        (Phase.COMMIT, "DumpReleased"),
        (Phase.COMMIT, "SourceKilled"),
        (Phase.COMMIT, "DestinationResumed"),
        (Phase.COMMIT, "HookFired"),
        (Phase.CLEANUP, "CleanedUp"),
    ]


@pytest.mark.parametrize(
    ("caps", "strategy"),
    [(FULL, S.PRE_COPY), (LAZY_ONLY, S.POST_COPY), (BASIC, S.STOP_AND_COPY)],
)
async def test_auto_runs_the_strategy_the_hosts_allow(
    caps: Capabilities, strategy: Strategy
) -> None:
    rig = Rig(S.AUTO, source_caps=caps, dest_caps=caps)
    outcome = await rig.run()
    assert rig.calls == HAPPY_CALLS[strategy]
    assert outcome.stats.strategy is strategy


async def test_run_refuses_a_used_migration() -> None:
    rig = Rig()
    await rig.run()
    with pytest.raises(HaulError, match="already ran"):
        await rig.run()


# -- refused and failing pre-flight ---


async def test_preflight_problems_refuse_without_touching_anything() -> None:
    rig = Rig()
    rig.world.fail("source.check_workload", boom("no process tree web1"))
    rig.world.fail("dest.check_free", boom("not enough room"))
    outcome = await rig.run()
    assert outcome.phase is Phase.REFUSED
    assert outcome.reason == (
        "refused: source host1: no process tree web1; dest host2: "
        "not enough room; nothing was touched, web1 is as it was on host1"
    )
    assert rig.calls == [*PREFLIGHT, J(Phase.REFUSED, "PreflightFinished")]


async def test_explicit_impossible_strategy_is_refused() -> None:
    rig = Rig(S.POST_COPY, dest_caps=BASIC)
    outcome = await rig.run()
    assert outcome.phase is Phase.REFUSED and "post-copy is impossible" in outcome.reason
    assert rig.calls == [*PREFLIGHT, J(Phase.REFUSED, "PreflightFinished")]


async def test_unreachable_host_in_preflight_rolls_back_touching_nothing() -> None:
    rig = Rig()
    rig.world.fail("dest.capabilities", boom("connection refused"))
    outcome = await rig.run()
    assert outcome.phase is Phase.ROLLED_BACK
    assert "dest host2: connection refused" in outcome.reason
    assert rig.calls == [
        J(Phase.PREFLIGHT, "MigrationStarted"),
        "source.capabilities",
        "dest.capabilities",
        J(Phase.ROLLING_BACK, "StepFailed"),
        J(Phase.ROLLED_BACK, "RolledBack"),
    ]


# -- failures before the commit roll back ---

UNDO = ["source.resume", "dest.discard"]
UNDO_HELD = ["source.release(False)", *UNDO]
# post-copy, dump released: discarding the destination makes CRIU resume the source
UNDO_LAZY = ["dest.discard", "source.resume"]
# post-copy, the release failed: it may be held, and it may serve pages
UNDO_LAZY_HELD = ["source.release(False)", *UNDO_LAZY]

#: a source step that sent pages to the destination's page server failed: was its disk full?
ROOM = "dest.room_left"

BEFORE_COMMIT_FAILURES = [
    (S.STOP_AND_COPY, "dest.prepare(stop-and-copy)", UNDO),
    (S.STOP_AND_COPY, "transport.sync_files(1)", UNDO),
    (S.PRE_COPY, "source.pre_dump(1)", [ROOM, *UNDO]),
    (S.PRE_COPY, "source.pre_dump(2)", [ROOM, *UNDO]),
    # the dump that failed may have reached post-dump: release it (harmless if not)
    (S.STOP_AND_COPY, "source.freeze_and_dump(False)", [ROOM, *UNDO_HELD]),
    (S.STOP_AND_COPY, "transport.transfer_images", UNDO_HELD),
    (S.STOP_AND_COPY, "dest.restore(False)", UNDO_HELD),
    (S.PRE_COPY, "dest.restore(False)", UNDO_HELD),
    (S.POST_COPY, "source.freeze_and_dump(True)", UNDO_HELD),
    (S.POST_COPY, "source.release(True)", UNDO_LAZY_HELD),
    (S.POST_COPY, "transport.transfer_images", UNDO_LAZY),
    (S.POST_COPY, "dest.restore(True)", UNDO_LAZY),
    (S.STOP_AND_COPY, J(Phase.PREPARE, "PreflightFinished"), []),
    (S.STOP_AND_COPY, J(Phase.FREEZE, "FilesSynced"), UNDO),
    (S.STOP_AND_COPY, J(Phase.RESTORE, "ImagesTransferred"), UNDO_HELD),
    (S.STOP_AND_COPY, COMMIT, UNDO_HELD),
    (S.POST_COPY, COMMIT, UNDO_LAZY),
]


@pytest.mark.parametrize(("strategy", "failing", "undo"), BEFORE_COMMIT_FAILURES)
async def test_failure_before_the_commit_rolls_back(
    strategy: Strategy, failing: str, undo: list[str]
) -> None:
    rig = Rig(strategy)
    rig.world.fail(failing, boom("disk full"))
    outcome = await rig.run()
    assert outcome.phase is Phase.ROLLED_BACK
    assert "disk full" in outcome.reason and "web1 runs on host1" in outcome.reason
    told = failing != J(Phase.PREPARE, "PreflightFinished")
    assert rig.after(failing) == [
        J(Phase.ROLLING_BACK, "StepFailed"),
        *undo,
        ROLLED_BACK if told else ROLLED_BACK_UNTOLD,
    ]
    assert "source.kill" not in rig.calls and "dest.resume" not in rig.calls


async def test_failure_says_where() -> None:
    rig = Rig()
    rig.world.fail("dest.restore(False)", boom("CRIU restore: errno 17"))
    outcome = await rig.run()
    assert outcome.reason == (
        "rolled back during restore (dest host2: CRIU restore: errno 17); "
        "web1 runs on host1, nothing kept on host2"
    )
    failed = [e for _, e in rig.events if isinstance(e, StepFailed)]
    assert failed == [StepFailed(Phase.RESTORE, "CRIU restore: errno 17", "dest host2", Part.DEST)]


async def test_failed_commit_record_rolls_back_saying_so() -> None:
    rig = Rig()
    rig.world.fail(COMMIT, boom("No space left on device"))
    outcome = await rig.run()
    assert outcome.phase is Phase.ROLLED_BACK
    assert "could not record the commit decision: journal: No space left" in outcome.reason


async def test_timeout_before_the_commit_rolls_back() -> None:
    rig = Rig()
    rig.world.stall("transport.transfer_images")
    outcome = await rig.run(timeouts={Phase.TRANSFER: 0.01})
    assert outcome.phase is Phase.ROLLED_BACK
    assert "transport host1->host2: TransferImages timed out after 0.01 s" in outcome.reason
    assert rig.after("transport.transfer_images")[1:-1] == UNDO_HELD


async def test_rollback_problems_end_failed_and_say_them() -> None:
    rig = Rig()
    rig.world.fail("dest.restore(False)", boom("restore failed"))
    rig.world.fail("source.resume", boom("CRIU says the tree is gone"))
    rig.world.fail("dest.discard", RuntimeError("adapter bug"))
    outcome = await rig.run()
    assert outcome.phase is Phase.FAILED
    assert (
        "incomplete: source host1: resuming the workload failed: CRIU says the tree is "
        "gone; dest host2: discarding its copy failed: RuntimeError: adapter bug" in outcome.reason
    )
    assert rig.after("dest.restore(False)") == [
        J(Phase.ROLLING_BACK, "StepFailed"),
        *UNDO_HELD,
        J(Phase.FAILED, "HookFired"),
    ]


async def test_rollback_steps_time_out_one_by_one() -> None:
    rig = Rig()
    rig.world.fail("transport.transfer_images", boom())
    rig.world.stall("source.release(False)")
    outcome = await rig.run(timeouts={Phase.ROLLING_BACK: 0.01})
    assert outcome.phase is Phase.FAILED
    assert "source host1: releasing the held dump (commit=False) timed out after 0.01 s" in (
        outcome.reason
    )
    assert rig.after("transport.transfer_images")[1:-1] == UNDO_HELD


async def test_journal_failing_during_rollback_is_reported_not_fatal() -> None:
    rig = Rig()
    rig.world.fail("dest.restore(False)", boom("restore failed"))
    rig.world.fail(J(Phase.ROLLING_BACK, "StepFailed"), boom("journal disk gone"))
    outcome = await rig.run()
    assert outcome.phase is Phase.ROLLED_BACK
    assert outcome.problems == ("journal: recording rolling-back failed: journal disk gone",)
    assert rig.after("dest.restore(False)")[1:-1] == UNDO_HELD


# -- failures after the commit roll forward ---


async def test_kill_failing_once_is_retried_without_repeating_the_release() -> None:
    rig = Rig()
    rig.world.fail("source.kill", boom("EPERM"))
    outcome = await rig.run()
    assert outcome.phase is Phase.DONE
    assert rig.after(COMMIT) == [
        "source.release(True)",
        "source.kill",
        "source.kill",
        "dest.resume",
        *TAIL,
    ]


async def test_resume_failing_for_good_fails_saying_what_is_where() -> None:
    rig = Rig()
    rig.world.fail("dest.resume", *[boom("cgroup frozen") for _ in range(4)])
    outcome = await rig.run()
    assert outcome.phase is Phase.FAILED
    assert outcome.reason.startswith(
        "committed: web1 restored on host2 but the switch-over did not finish after 4 "
        "attempts (dest host2: cgroup frozen)"
    )
    assert rig.after(COMMIT) == [
        "source.release(True)",
        "source.kill",
        "dest.resume",
        "dest.resume",
        "dest.resume",
        "dest.resume",
        J(Phase.FAILED, "StepFailed"),
    ]
    assert "dest.discard" not in rig.calls


async def test_lazy_pages_failing_once_waits_again() -> None:
    rig = Rig(S.POST_COPY)
    rig.world.fail("dest.wait_pages", boom("lazy-pages daemon restarted"))
    outcome = await rig.run()
    assert outcome.phase is Phase.DONE
    assert rig.after("dest.resume") == [
        J(Phase.LAZY_PAGES, "HookFired"),
        "dest.wait_pages",
        "source.wait_pages_served",
        "dest.wait_pages",
        "source.wait_pages_served",
        "source.kill",
        J(Phase.CLEANUP, "SourceKilled"),
        "source.cleanup",
        "dest.cleanup",
        J(Phase.DONE, "CleanedUp"),
    ]


async def test_pages_never_served_fails_without_killing_the_source() -> None:
    rig = Rig(S.POST_COPY, max_retries=1)
    rig.world.fail("source.wait_pages_served", boom("page server died"), boom("page server died"))
    outcome = await rig.run()
    assert outcome.phase is Phase.FAILED
    assert "not all its memory arrived after 2 attempts (source host1: page server died)" in (
        outcome.reason
    )
    assert "source.kill" not in rig.calls and "source.resume" not in rig.calls


async def test_both_page_waits_failing_say_both() -> None:
    rig = Rig(S.POST_COPY, max_retries=0)
    rig.world.fail("dest.wait_pages", boom("uffd gone"))
    rig.world.fail("source.wait_pages_served", boom("socket reset"))
    outcome = await rig.run()
    assert outcome.phase is Phase.FAILED
    assert "(dest host2 and source host1: uffd gone; socket reset)" in outcome.reason


async def test_timeout_after_the_commit_retries() -> None:
    rig = Rig()
    rig.world.stall("dest.resume")
    outcome = await rig.run(timeouts={Phase.COMMIT: 0.01})
    assert outcome.phase is Phase.DONE
    assert rig.after(COMMIT)[:4] == [
        "source.release(True)",
        "source.kill",
        "dest.resume",
        "dest.resume",
    ]


async def test_cleanup_failures_are_reported_not_fatal() -> None:
    rig = Rig()
    rig.world.fail("source.cleanup", boom("rm: busy"))
    rig.world.stall("dest.cleanup")
    rig.world.fail(J(Phase.DONE, "CleanedUp"), boom("journal gone"))
    outcome = await rig.run(timeouts={Phase.CLEANUP: 0.01})
    assert outcome.phase is Phase.DONE
    assert outcome.problems == (
        "source host1: cleaning up failed: rm: busy",
        "dest host2: cleaning up timed out after 0.01 s",
        "journal: recording done failed: journal gone",
    )


async def test_journal_failing_after_the_commit_rolls_forward() -> None:
    rig = Rig(S.POST_COPY)
    rig.world.fail(J(Phase.LAZY_PAGES, "HookFired"), boom("fsync: EIO"))
    outcome = await rig.run()
    assert outcome.phase is Phase.DONE
    assert rig.calls.count(J(Phase.LAZY_PAGES, "HookFired")) == 2


# -- exceptions that are not HaulError ---


async def test_bug_before_the_commit_rolls_back_then_propagates() -> None:
    rig = Rig()
    rig.world.fail("transport.transfer_images", KeyError("files"))
    with pytest.raises(KeyError):
        await rig.run()
    assert rig.migration.phase is Phase.ROLLED_BACK
    assert rig.after("transport.transfer_images") == [
        J(Phase.ROLLING_BACK, "StepFailed"),
        *UNDO_HELD,
        ROLLED_BACK,
    ]


async def test_bug_after_the_commit_rolls_forward_then_propagates() -> None:
    rig = Rig()
    rig.world.fail("dest.resume", ZeroDivisionError("oops"))
    with pytest.raises(ZeroDivisionError):
        await rig.run()
    assert rig.migration.phase is Phase.DONE
    assert rig.calls.count("dest.resume") == 2


async def test_failing_on_event_callback_aborts_before_the_commit_then_propagates() -> None:
    rig = Rig()

    def on_event(phase: Phase, event: Event) -> None:
        if isinstance(event, SourceFrozen):
            raise ValueError("display broke")

    with pytest.raises(ValueError, match="display broke"):
        await run(
            rig.migration,
            source=rig.source,
            dest=rig.dest,
            transport=rig.transport,
            journal=rig.journal,
            on_event=on_event,
        )
    assert rig.migration.phase is Phase.ROLLED_BACK
    assert "on_event callback failed: ValueError: display broke" in rig.migration.reason
    assert rig.after("source.freeze_and_dump(False)") == [
        J(Phase.ROLLING_BACK, "AbortRequested"),
        *UNDO_HELD,
        ROLLED_BACK,
    ]


# -- cancellation ---

CANCEL_BEFORE_COMMIT = [
    (S.STOP_AND_COPY, "source.capabilities", None),
    (S.STOP_AND_COPY, "dest.prepare(stop-and-copy)", UNDO),
    (S.STOP_AND_COPY, "transport.sync_files(1)", UNDO),
    (S.PRE_COPY, "source.pre_dump(1)", UNDO),
    (S.PRE_COPY, "source.pre_dump(2)", UNDO),
    # the dump that failed may have reached post-dump: release it (harmless if not)
    (S.STOP_AND_COPY, "source.freeze_and_dump(False)", UNDO_HELD),
    (S.STOP_AND_COPY, "transport.transfer_images", UNDO_HELD),
    (S.STOP_AND_COPY, "dest.restore(False)", UNDO_HELD),
    (S.POST_COPY, "source.release(True)", UNDO_LAZY_HELD),
    (S.POST_COPY, "transport.transfer_images", UNDO_LAZY),
    (S.POST_COPY, "dest.restore(True)", UNDO_LAZY),
    (S.STOP_AND_COPY, J(Phase.RESTORE, "ImagesTransferred"), UNDO_HELD),
]


@pytest.mark.parametrize(("strategy", "slow", "undo"), CANCEL_BEFORE_COMMIT)
async def test_cancel_before_the_commit_rolls_back_and_propagates(
    strategy: Strategy, slow: str, undo: list[str] | None
) -> None:
    rig = Rig(strategy)
    rig.world.gate(slow)  # never opened: only cancellation ends the call
    task = asyncio.create_task(rig.run())
    await rig.world.reached(slow)
    task.cancel()
    await cancelled(task)
    assert rig.migration.phase is Phase.ROLLED_BACK
    assert "cancelled by the caller" in rig.migration.reason
    # None: only the pre-flight ran; nothing to undo, no hook told
    assert rig.after(slow) == [
        J(Phase.ROLLING_BACK, "AbortRequested"),
        *(undo or []),
        ROLLED_BACK if undo is not None else ROLLED_BACK_UNTOLD,
    ]
    assert "source.kill" not in rig.calls and "dest.resume" not in rig.calls


async def test_cancel_again_during_the_rollback_does_not_stop_it() -> None:
    rig = Rig()
    rig.world.gate("dest.restore(False)")
    resume = rig.world.gate("source.resume")
    task = asyncio.create_task(rig.run())
    await rig.world.reached("dest.restore(False)")
    task.cancel()
    await rig.world.reached("source.resume")
    for _ in range(3):
        task.cancel()
        await asyncio.sleep(0)
    assert not task.done()
    resume.set()
    await cancelled(task)
    assert rig.migration.phase is Phase.ROLLED_BACK
    assert rig.after("dest.restore(False)")[1:-1] == UNDO_HELD


async def test_cancel_right_after_start_touches_nothing() -> None:
    rig = Rig()
    task = asyncio.create_task(rig.run())
    await asyncio.sleep(0)  # run() started its migration task, which has not run yet
    task.cancel()
    await cancelled(task)
    assert rig.migration.phase is Phase.ROLLED_BACK
    assert rig.calls == [J(Phase.ROLLING_BACK, "AbortRequested"), ROLLED_BACK_UNTOLD]
    assert [type(e) for _, e in rig.events] == [MigrationStarted, AbortRequested, RolledBack]


CANCEL_AFTER_COMMIT = [
    (S.STOP_AND_COPY, COMMIT),
    (S.STOP_AND_COPY, "source.release(True)"),
    (S.STOP_AND_COPY, "source.kill"),
    (S.STOP_AND_COPY, "dest.resume"),
    (S.POST_COPY, "dest.resume"),
    (S.POST_COPY, "dest.wait_pages"),
    (S.POST_COPY, "source.kill"),
    (S.PRE_COPY, "source.cleanup"),
    (S.STOP_AND_COPY, J(Phase.DONE, "CleanedUp")),
]


@pytest.mark.parametrize(("strategy", "slow"), CANCEL_AFTER_COMMIT)
async def test_cancel_after_the_commit_finishes_then_propagates(
    strategy: Strategy, slow: str
) -> None:
    rig = Rig(strategy)
    gate = rig.world.gate(slow)
    task = asyncio.create_task(rig.run())
    await rig.world.reached(slow)
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # the slow call goes on, not interrupted
    gate.set()
    await cancelled(task)
    assert rig.migration.phase is Phase.DONE
    assert rig.calls == HAPPY_CALLS[strategy]


async def test_cancel_with_a_bug_in_flight_still_raises_cancelled() -> None:
    rig = Rig()
    gate = rig.world.gate("dest.resume")
    rig.world.fail("dest.resume", RuntimeError("bug"))
    task = asyncio.create_task(rig.run())
    await rig.world.reached("dest.resume")
    task.cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait({task}, timeout=2)
    with pytest.raises(asyncio.CancelledError) as raised:
        task.result()
    assert isinstance(raised.value.__context__, RuntimeError)
    assert rig.migration.phase is Phase.DONE
