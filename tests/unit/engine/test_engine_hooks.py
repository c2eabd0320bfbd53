"""Hooks through the runner, against in-memory ports: every point in order, what each
point is told, and the rule: a failure before the commit rolls back, after it (or
after a rollback) it is a problem that changes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from haul.engine.fakes import (
    BASIC,
    FULL,
    LAZY_ONLY,
    FakeClock,
    FakeDest,
    FakeHooks,
    FakeJournal,
    FakeSource,
    FakeTransport,
    World,
    boom,
    cancelled,
    hook_call,
    journal_call,
)
from haul.engine.figures import Capabilities
from haul.engine.machine import Migration
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookFacts, HookPoint
from haul.engine.runner import Outcome, run
from haul.engine.spec import MigrationSpec

pytestmark = pytest.mark.asyncio

S = Strategy
H = HookPoint
J = journal_call
COMMIT = J(Phase.COMMIT, "commit")
PRE_MIGRATE, PRE_FREEZE, RESTORED, POST_COMMIT, ROLLED_BACK = (hook_call(p) for p in HookPoint)

PREFLIGHT = [
    J(Phase.PREFLIGHT, "MigrationStarted"),
    "source.capabilities",
    "dest.capabilities",
    "source.check_workload",
    "dest.check_free",
]
TAIL = [J(Phase.CLEANUP, "HookFired"), "source.cleanup", "dest.cleanup", J(Phase.DONE, "CleanedUp")]

STOP_AND_COPY_CALLS = [
    *PREFLIGHT,
    J(Phase.PREPARE, "PreflightFinished"),
    PRE_MIGRATE,
    "dest.prepare(stop-and-copy)",
    "transport.sync_files(1)",
    J(Phase.FREEZE, "FilesSynced"),
    PRE_FREEZE,
    "source.freeze_and_dump(False)",
    J(Phase.TRANSFER, "SourceFrozen"),
    "transport.transfer_images",
    J(Phase.RESTORE, "ImagesTransferred"),
    "dest.restore(False)",
    RESTORED,
    COMMIT,
    "source.release(True)",
    "source.kill",
    "dest.resume",
    POST_COMMIT,
    *TAIL,
]

PRE_COPY_CALLS = [
    *PREFLIGHT,
    J(Phase.PREPARE, "PreflightFinished"),
    PRE_MIGRATE,
    "dest.prepare(pre-copy)",
    "transport.sync_files(1)",
    J(Phase.PRECOPY, "FilesSynced"),
    "source.pre_dump(1)",
    "source.pre_dump(2)",
    J(Phase.FREEZE, "PreDumpFinished"),
    PRE_FREEZE,
    "source.freeze_and_dump(False)",
    J(Phase.TRANSFER, "SourceFrozen"),
    "transport.transfer_images",
    J(Phase.RESTORE, "ImagesTransferred"),
    "dest.restore(False)",
    RESTORED,
    COMMIT,
    "source.release(True)",
    "source.kill",
    "dest.resume",
    POST_COMMIT,
    *TAIL,
]

POST_COPY_CALLS = [
    *PREFLIGHT,
    J(Phase.PREPARE, "PreflightFinished"),
    PRE_MIGRATE,
    "dest.prepare(post-copy)",
    "transport.sync_files(1)",
    J(Phase.FREEZE, "FilesSynced"),
    PRE_FREEZE,
    "source.freeze_and_dump(True)",
    J(Phase.TRANSFER, "SourceFrozen"),
    "source.release(True)",
    "transport.transfer_images",
    J(Phase.RESTORE, "ImagesTransferred"),
    "dest.restore(True)",
    RESTORED,
    COMMIT,
    "dest.resume",
    POST_COMMIT,
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

UNDO = ["source.resume", "dest.discard"]
UNDO_HELD = ["source.release(False)", *UNDO]
UNDO_LAZY = ["dest.discard", "source.resume"]


@dataclass
class Rig:
    strategy: Strategy = S.STOP_AND_COPY
    caps: Capabilities = FULL
    world: World = field(default_factory=World)

    def __post_init__(self) -> None:
        self.source = FakeSource(self.world, self.caps)
        self.dest = FakeDest(self.world, self.caps)
        self.journal = FakeJournal(self.world)
        self.hooks = FakeHooks(self.world)
        self.migration = Migration(
            MigrationSpec(
                "m1",
                "web1",
                "host1",
                "host2",
                strategy=self.strategy,
                source_address="10.0.0.1",
                dest_address="10.0.0.2",
            )
        )

    @property
    def calls(self) -> list[str]:
        return self.world.calls

    def after(self, call: str) -> list[str]:
        last = len(self.calls) - 1 - self.calls[::-1].index(call)
        return self.calls[last + 1 :]

    async def run(self, timeouts: dict[Phase, float] | None = None) -> Outcome:
        outcome = await run(
            self.migration,
            source=self.source,
            dest=self.dest,
            transport=FakeTransport(self.world),
            journal=self.journal,
            timeouts=timeouts,
            clock=FakeClock(),
            hooks=self.hooks,
        )
        self.check_rules()
        return outcome

    def check_rules(self) -> None:
        """Nothing irreversible before the commit; at most one of post-commit and
        rolled-back; rolled-back only after pre-migrate."""
        for call in ("source.kill", "dest.resume"):
            if call in self.calls:
                assert self.calls.index(COMMIT) < self.calls.index(call)
        assert not (POST_COMMIT in self.calls and ROLLED_BACK in self.calls)
        if ROLLED_BACK in self.calls:
            assert self.calls.index(PRE_MIGRATE) < self.calls.index(ROLLED_BACK)


# -- every point, in order -------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [S.STOP_AND_COPY, S.PRE_COPY, S.POST_COPY])
async def test_every_point_fires_once_in_order(strategy: Strategy) -> None:
    rig = Rig(strategy)
    outcome = await rig.run()
    assert outcome.phase is Phase.DONE and outcome.problems == ()
    assert rig.calls == HAPPY_CALLS[strategy]
    assert rig.hooks.points == [H.PRE_MIGRATE, H.PRE_FREEZE, H.RESTORED, H.POST_COMMIT]


async def test_each_point_is_told_the_migration_its_phase_and_the_strategy_in_use() -> None:
    rig = Rig(S.AUTO, caps=LAZY_ONLY)  # auto resolves to post-copy on these hosts
    await rig.run()
    facts = [f for _, f in rig.hooks.fired]
    assert [f.phase for f in facts] == [Phase.PREPARE, Phase.FREEZE, Phase.RESTORE, Phase.COMMIT]
    assert {f.strategy for f in facts} == {S.POST_COPY}
    assert facts[0] == HookFacts(
        "m1", "web1", "host1", "host2", "10.0.0.1", "10.0.0.2", S.POST_COPY, Phase.PREPARE
    )


async def test_refused_migration_fires_nothing() -> None:
    rig = Rig(S.PRE_COPY, caps=BASIC)
    outcome = await rig.run()
    assert outcome.phase is Phase.REFUSED
    assert rig.hooks.fired == []


async def test_preflight_failure_rolls_back_without_hooks() -> None:
    rig = Rig()
    rig.world.fail("dest.capabilities", boom("connection refused"))
    outcome = await rig.run()
    assert outcome.phase is Phase.ROLLED_BACK
    assert rig.hooks.fired == [], "pre-migrate never fired: nothing to tell rolled-back"


# -- before the commit: a failing hook aborts the migration ------------------------------------

HOOK_FAILURES = [
    (S.STOP_AND_COPY, PRE_MIGRATE, Phase.PREPARE, []),
    (S.PRE_COPY, PRE_MIGRATE, Phase.PREPARE, []),
    (S.STOP_AND_COPY, PRE_FREEZE, Phase.FREEZE, UNDO),
    (S.PRE_COPY, PRE_FREEZE, Phase.FREEZE, UNDO),
    (S.POST_COPY, PRE_FREEZE, Phase.FREEZE, UNDO),
    (S.STOP_AND_COPY, RESTORED, Phase.RESTORE, UNDO_HELD),
    (S.PRE_COPY, RESTORED, Phase.RESTORE, UNDO_HELD),
    (S.POST_COPY, RESTORED, Phase.RESTORE, UNDO_LAZY),
]


@pytest.mark.parametrize(("strategy", "failing", "phase", "undo"), HOOK_FAILURES)
async def test_failing_hook_before_the_commit_rolls_back(
    strategy: Strategy, failing: str, phase: Phase, undo: list[str]
) -> None:
    rig = Rig(strategy)
    point = failing.removeprefix("hook(").removesuffix(")")
    rig.world.fail(failing, boom(f"hook /gate at {point} exited with status 1: not ready"))
    outcome = await rig.run()
    assert outcome.phase is Phase.ROLLED_BACK
    assert outcome.reason == (
        f"rolled back during {phase.value} (hooks: hook /gate at {point} exited with "
        "status 1: not ready); web1 runs on host1, nothing kept on host2"
    )
    assert rig.after(failing) == [
        J(phase, f"hook {point} failed"),
        J(Phase.ROLLING_BACK, "StepFailed"),
        *undo,
        ROLLED_BACK,
        J(Phase.ROLLED_BACK, "HookFired"),
    ]
    assert "source.kill" not in rig.calls and "dest.resume" not in rig.calls
    assert outcome.problems == ()
    told = rig.hooks.fired[-1][1]
    assert told.phase is Phase.ROLLING_BACK
    assert told.reason == f"hooks: hook /gate at {point} exited with status 1: not ready"


async def test_failing_hook_is_in_the_journal_with_its_line() -> None:
    rig = Rig()
    rig.world.fail(RESTORED, boom("hook /gate at restored exited with status 3: no"))
    await rig.run()
    failed = [r for r in rig.journal.records if r.cause == "hook restored failed"]
    assert [(r.phase, r.detail) for r in failed] == [
        (Phase.RESTORE, "hook /gate at restored exited with status 3: no")
    ]


async def test_restored_hook_counts_in_the_frozen_window_pre_freeze_does_not() -> None:
    rig = Rig()
    outcome = await rig.run()
    # the fake clock ticks once per reading: one reading before the dump, one after resume
    assert outcome.stats.frozen_s == 1.0
    freeze = rig.calls.index("source.freeze_and_dump(False)")
    assert rig.calls.index(PRE_FREEZE) < freeze < rig.calls.index(RESTORED)


async def test_rollback_with_problems_tells_rolled_back_so() -> None:
    rig = Rig()
    rig.world.fail(RESTORED, boom("hook /gate at restored: no"))
    rig.world.fail("dest.discard", boom("agent gone"))
    outcome = await rig.run()
    assert outcome.phase is Phase.FAILED
    assert rig.hooks.fired[-1][1].reason == (
        "hooks: hook /gate at restored: no; rollback incomplete: "
        "dest host2: discarding its copy failed: agent gone"
    )


async def test_bug_in_a_hook_before_the_commit_rolls_back_then_propagates() -> None:
    rig = Rig()
    rig.world.fail(PRE_FREEZE, KeyError("env"))
    with pytest.raises(KeyError):
        await rig.run()
    assert rig.migration.phase is Phase.ROLLED_BACK
    assert rig.after(PRE_FREEZE) == [
        J(Phase.ROLLING_BACK, "StepFailed"),
        *UNDO,
        ROLLED_BACK,
        J(Phase.ROLLED_BACK, "HookFired"),
    ]


# -- after the commit, and after a rollback: reported, not fatal --------------------------------


@pytest.mark.parametrize("strategy", [S.STOP_AND_COPY, S.POST_COPY])
async def test_failing_post_commit_hook_is_a_problem_not_a_failure(strategy: Strategy) -> None:
    rig = Rig(strategy)
    rig.world.fail(POST_COMMIT, boom("hook /lb at post-commit exited with status 2: x"))
    outcome = await rig.run()
    assert outcome.phase is Phase.DONE
    assert rig.calls == [
        *HAPPY_CALLS[strategy][: rig.calls.index(POST_COMMIT) + 1],
        J(Phase.COMMIT, "hook post-commit failed"),
        *HAPPY_CALLS[strategy][rig.calls.index(POST_COMMIT) + 1 :],
    ]
    assert outcome.problems == (
        "hooks: post-commit failed: hook /lb at post-commit exited with status 2: x",
    )
    assert rig.calls.count("dest.resume") == 1, "the switch-over is not repeated"


async def test_failing_rolled_back_hook_is_a_problem_not_a_failure() -> None:
    rig = Rig()
    rig.world.fail("transport.transfer_images", boom("disk full"))
    rig.world.fail(ROLLED_BACK, boom("hook /lb at rolled-back exited with status 1: y"))
    outcome = await rig.run()
    assert outcome.phase is Phase.ROLLED_BACK
    assert "disk full" in outcome.reason
    assert outcome.problems == (
        "hooks: rolled-back failed: hook /lb at rolled-back exited with status 1: y",
    )
    assert rig.after("transport.transfer_images") == [
        J(Phase.ROLLING_BACK, "StepFailed"),
        *UNDO_HELD,
        ROLLED_BACK,
        J(Phase.ROLLING_BACK, "hook rolled-back failed"),
        J(Phase.ROLLED_BACK, "HookFired"),
    ]


async def test_bug_in_a_post_commit_hook_is_reported_not_raised() -> None:
    rig = Rig()
    rig.world.fail(POST_COMMIT, RuntimeError("adapter bug"))
    outcome = await rig.run()
    assert outcome.phase is Phase.DONE
    assert outcome.problems == ("hooks: post-commit failed: RuntimeError: adapter bug",)


# -- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stalled", "phase", "undo"),
    [
        (PRE_MIGRATE, Phase.PREPARE, []),
        (PRE_FREEZE, Phase.FREEZE, UNDO),
        (RESTORED, Phase.RESTORE, UNDO_HELD),
    ],
)
async def test_hook_outlasting_its_phase_before_the_commit_rolls_back(
    stalled: str, phase: Phase, undo: list[str]
) -> None:
    rig = Rig()
    rig.world.stall(stalled)
    outcome = await rig.run(timeouts={phase: 0.01})
    assert outcome.phase is Phase.ROLLED_BACK
    assert "(hooks: " in outcome.reason and "timed out after 0.01 s" in outcome.reason
    assert rig.after(stalled) == [
        J(Phase.ROLLING_BACK, "StepFailed"),
        *undo,
        ROLLED_BACK,
        J(Phase.ROLLED_BACK, "HookFired"),
    ]
    assert rig.hooks.cancelled == [HookPoint(stalled[5:-1])]


async def test_post_commit_hook_timing_out_is_a_problem() -> None:
    rig = Rig()
    rig.world.stall(POST_COMMIT)
    outcome = await rig.run(timeouts={Phase.COMMIT: 0.01})
    assert outcome.phase is Phase.DONE
    assert outcome.problems == ("hooks: post-commit timed out after 0.01 s",)
    assert rig.after(POST_COMMIT)[1:] == TAIL


async def test_rolled_back_hook_timing_out_is_a_problem() -> None:
    rig = Rig()
    rig.world.fail("dest.restore(False)", boom("restore failed"))
    rig.world.stall(ROLLED_BACK)
    outcome = await rig.run(timeouts={Phase.ROLLING_BACK: 0.01})
    assert outcome.phase is Phase.ROLLED_BACK
    assert outcome.problems == ("hooks: rolled-back timed out after 0.01 s",)


# -- cancellation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "slow", "undo"),
    [
        (S.STOP_AND_COPY, PRE_MIGRATE, []),
        (S.STOP_AND_COPY, PRE_FREEZE, UNDO),
        (S.PRE_COPY, PRE_FREEZE, UNDO),
        (S.STOP_AND_COPY, RESTORED, UNDO_HELD),
        (S.POST_COPY, RESTORED, UNDO_LAZY),
    ],
)
async def test_cancel_during_a_hook_before_the_commit_rolls_back(
    strategy: Strategy, slow: str, undo: list[str]
) -> None:
    rig = Rig(strategy)
    rig.world.gate(slow)  # never opened: only cancellation ends the hook
    task = asyncio.create_task(rig.run())
    await rig.world.reached(slow)
    task.cancel()
    await cancelled(task)
    rig.check_rules()
    assert rig.migration.phase is Phase.ROLLED_BACK
    assert "cancelled by the caller" in rig.migration.reason
    assert rig.hooks.cancelled == [HookPoint(slow[5:-1])], "the hook itself was cancelled"
    assert rig.after(slow) == [
        J(Phase.ROLLING_BACK, "AbortRequested"),
        *undo,
        ROLLED_BACK,
        J(Phase.ROLLED_BACK, "HookFired"),
    ]
    assert "source.kill" not in rig.calls and "dest.resume" not in rig.calls


@pytest.mark.parametrize("slow", [POST_COMMIT, ROLLED_BACK])
async def test_cancel_during_a_hook_after_the_commit_or_rollback_interrupts_nothing(
    slow: str,
) -> None:
    rig = Rig()
    if slow == ROLLED_BACK:
        rig.world.fail("dest.restore(False)", boom("restore failed"))
    gate = rig.world.gate(slow)
    task = asyncio.create_task(rig.run())
    await rig.world.reached(slow)
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), "the hook goes on, not interrupted"
    gate.set()
    await cancelled(task)
    rig.check_rules()
    assert rig.hooks.cancelled == []
    expected = Phase.DONE if slow == POST_COMMIT else Phase.ROLLED_BACK
    assert rig.migration.phase is expected
