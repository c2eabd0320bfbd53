"""In-memory ports: the engine's fake backend, for its tests and for anyone writing a
driver (a new source, destination or transport) who wants to see the calls the
runner makes, in order, without CRIU or hosts.

All fakes of one test share a :class:`World`: the ordered log of every port call
(``"source.release(True)"``, ``"journal(commit, commit)"``, ...), the failures to
raise on given calls, and gates that hold a call until the test opens them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from haul.engine.commands import (
    AwaitPages,
    CheckDestinationRoom,
    CleanUp,
    Command,
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
)
from haul.engine.events import (
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
    PagesDelivered,
    PreDumpFinished,
    PreflightFinished,
    RestoredStopped,
    RolledBack,
    SourceFrozen,
    SourceKilled,
)
from haul.engine.figures import (
    Capabilities,
    DestinationReady,
    DumpFigures,
    Endpoint,
    FilesFigures,
    IterationFigures,
    PreflightReport,
    RestoreFigures,
    TransferFigures,
)
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookFacts, HookPoint, JournalRecord
from haul.engine.runner import Outcome
from haul.errors import HaulError

FULL = Capabilities("3.19", mem_track=True, lazy_pages=True, lazy_pipe_ok=True)
LAZY_ONLY = Capabilities("3.19", mem_track=False, lazy_pages=True, lazy_pipe_ok=True)
BASIC = Capabilities("3.17", mem_track=False, lazy_pages=False, lazy_pipe_ok=False)

#: a converging pre-copy: the policy (300 ms, 150 ms freeze cost) stops after round 2
ROUNDS = (
    IterationFigures(1, 100_000, 0, 409_600_000, 0.5),
    IterationFigures(2, 1_000, 99_000, 4_096_000, 0.01),
)
DUMP = DumpFigures(frozen_at_s=100.0, pages_written=900, pages_lazy=0, bytes_written=3_686_400)
LAZY_DUMP = DumpFigures(frozen_at_s=100.0, pages_written=0, pages_lazy=100_000, bytes_written=0)
#: a files round small enough that the files policy stops after it
FILES_ROUND = FilesFigures(round=1, files=12, bytes_sent=40_960, removed=0, duration_s=0.02)
TRANSFER = TransferFigures(files=31, bytes_sent=250_000, duration_s=0.05)
RESTORE = RestoreFigures(dest_pid=4242, duration_s=0.2)
RESIDENT_BYTES = 1 << 30
#: where FakeDest says its page server listens (stop-and-copy and pre-copy)
PAGE_SERVER = Endpoint("192.0.2.2", 7000)


@dataclass
class World:
    calls: list[str] = field(default_factory=list)
    #: call name -> exceptions to raise on its next calls, in order
    failures: dict[str, list[BaseException]] = field(default_factory=dict)
    #: call name -> event the call waits for (after it is logged, before it fails or returns)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    entered: dict[str, asyncio.Event] = field(default_factory=dict)
    #: call name -> how many of its next calls hang until cancelled (timeouts)
    stalls: dict[str, int] = field(default_factory=dict)

    def stall(self, name: str, times: int = 1) -> None:
        self.stalls[name] = self.stalls.get(name, 0) + times

    def fail(self, name: str, *errors: BaseException) -> None:
        self.failures.setdefault(name, []).extend(errors)

    def gate(self, name: str) -> asyncio.Event:
        """Hold ``name`` until the returned event is set."""
        return self.gates.setdefault(name, asyncio.Event())

    async def reached(self, name: str) -> None:
        """Wait until ``name`` has been called."""
        await self.entered.setdefault(name, asyncio.Event()).wait()

    async def enter(self, name: str) -> None:
        self.calls.append(name)
        self.entered.setdefault(name, asyncio.Event()).set()
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()
        if self.stalls.get(name):
            self.stalls[name] -= 1
            await asyncio.Event().wait()
        errors = self.failures.get(name)
        if errors:
            raise errors.pop(0)

    def index(self, name: str) -> int:
        return self.calls.index(name)


class FakeSource:
    def __init__(
        self,
        world: World,
        caps: Capabilities = FULL,
        rounds: Sequence[IterationFigures] = ROUNDS,
    ) -> None:
        self.world = world
        self.caps = caps
        self.rounds = list(rounds)
        #: the page server each pre-dump and dump was told to send pages to, in order
        self.page_servers: list[Endpoint | None] = []

    async def capabilities(self) -> Capabilities:
        await self.world.enter("source.capabilities")
        return self.caps

    async def check_workload(self) -> int:
        await self.world.enter("source.check_workload")
        return RESIDENT_BYTES

    async def pre_dump(self, iteration: int, page_server: Endpoint | None) -> IterationFigures:
        self.page_servers.append(page_server)
        await self.world.enter(f"source.pre_dump({iteration})")
        return self.rounds[min(iteration, len(self.rounds)) - 1]

    async def freeze_and_dump(self, lazy: bool, page_server: Endpoint | None) -> DumpFigures:
        self.page_servers.append(page_server)
        await self.world.enter(f"source.freeze_and_dump({lazy})")
        return LAZY_DUMP if lazy else DUMP

    async def release(self, commit: bool) -> None:
        await self.world.enter(f"source.release({commit})")

    async def wait_pages_served(self) -> None:
        await self.world.enter("source.wait_pages_served")

    async def kill(self) -> None:
        await self.world.enter("source.kill")

    async def resume(self) -> None:
        await self.world.enter("source.resume")

    async def cleanup(self) -> None:
        await self.world.enter("source.cleanup")


class FakeDest:
    def __init__(
        self,
        world: World,
        caps: Capabilities = FULL,
        page_server: Endpoint | None = PAGE_SERVER,
        room_left: int | None = None,
    ) -> None:
        self.world = world
        self.caps = caps
        self.page_server = page_server
        self.room = room_left
        self.checked: tuple[str, int] | None = None
        self.prepared: tuple[Strategy, int] | None = None

    async def capabilities(self) -> Capabilities:
        await self.world.enter("dest.capabilities")
        return self.caps

    async def check_free(self, workload: str, needed_bytes: int) -> None:
        self.checked = (workload, needed_bytes)
        await self.world.enter("dest.check_free")

    async def prepare(self, strategy: Strategy, needed_bytes: int) -> DestinationReady:
        self.prepared = (strategy, needed_bytes)
        await self.world.enter(f"dest.prepare({strategy.value})")
        lazy = strategy is Strategy.POST_COPY
        return DestinationReady(None if lazy else self.page_server)

    async def restore(self, lazy: bool) -> RestoreFigures:
        await self.world.enter(f"dest.restore({lazy})")
        return RESTORE

    async def resume(self) -> None:
        await self.world.enter("dest.resume")

    async def wait_pages(self) -> None:
        await self.world.enter("dest.wait_pages")

    async def discard(self) -> None:
        await self.world.enter("dest.discard")

    async def room_left(self) -> int | None:
        await self.world.enter("dest.room_left")
        return self.room

    async def cleanup(self) -> None:
        await self.world.enter("dest.cleanup")


class FakeTransport:
    def __init__(self, world: World) -> None:
        self.world = world

    async def sync_files(self, round: int) -> FilesFigures:
        await self.world.enter(f"transport.sync_files({round})")
        return FILES_ROUND

    async def transfer_images(self) -> TransferFigures:
        await self.world.enter("transport.transfer_images")
        return TRANSFER


class FakeJournal:
    """Logs ``journal(<phase>, <cause>)``; keeps the records that were appended."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.records: list[JournalRecord] = []

    async def append(self, record: JournalRecord) -> None:
        await self.world.enter(journal_call(record.phase, record.cause))
        self.records.append(record)

    @property
    def phases(self) -> list[Phase]:
        return [r.phase for r in self.records]


def journal_call(phase: Phase, cause: str) -> str:
    return f"journal({phase.value}, {cause})"


class FakeHooks:
    """Logs ``hook(<point>)``; keeps what each call was told, and which were cancelled."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.fired: list[tuple[HookPoint, HookFacts]] = []
        self.cancelled: list[HookPoint] = []

    async def fire(self, point: HookPoint, facts: HookFacts) -> None:
        self.fired.append((point, facts))
        try:
            await self.world.enter(hook_call(point))
        except asyncio.CancelledError:
            self.cancelled.append(point)
            raise

    @property
    def points(self) -> list[HookPoint]:
        return [point for point, _ in self.fired]


def hook_call(point: HookPoint) -> str:
    return f"hook({point.value})"


class FakeClock:
    """Each reading is one second after the one before."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


def boom(text: str = "it broke") -> HaulError:
    return HaulError(text)


async def cancelled(task: asyncio.Task[Outcome]) -> None:
    """Check a cancelled run ends by raising CancelledError, failing (not hanging) if not."""
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:
        raise AssertionError("the run did not end after its cancellation")
    try:
        task.result()
    except asyncio.CancelledError:
        return
    raise AssertionError("the cancelled run ended without raising CancelledError")


#: the runner's clock readings that ``answer`` reports: the freeze starts at 10 s, the
#: destination's copy resumes at 11.5 s (a 1.5 s frozen window)
FREEZE_STARTED_S = 10.0
RESUMED_AT_S = 11.5


def answer(command: Command, report: PreflightReport | None = None) -> Event:
    """The event a command's ports report when everything goes well (no runner, no
    ports): for driving a :class:`~haul.engine.machine.Migration` by hand."""
    match command:
        case RunPreflight():
            return PreflightFinished(report or PreflightReport(FULL, FULL, (), RESIDENT_BYTES))
        case FireHook(point=point):
            return HookFired(point)
        case PrepareDestination(strategy=strategy):
            lazy = strategy is Strategy.POST_COPY
            return DestinationPrepared(DestinationReady(None if lazy else PAGE_SERVER))
        case SyncFiles(round=round_):
            return FilesSynced(dataclasses.replace(FILES_ROUND, round=round_))
        case StartPreDump(iteration=iteration):
            return PreDumpFinished(ROUNDS[min(iteration, len(ROUNDS)) - 1])
        case FreezeAndDump(lazy=lazy):
            return SourceFrozen(LAZY_DUMP if lazy else DUMP, FREEZE_STARTED_S)
        case ReleaseDump(commit=commit):
            return DumpReleased(commit)
        case TransferImages():
            return ImagesTransferred(TRANSFER)
        case RestoreStopped():
            return RestoredStopped(RESTORE)
        case RecordCommit():
            return CommitRecorded()
        case KillSource():
            return SourceKilled()
        case ResumeDestination():
            return DestinationResumed(RESUMED_AT_S)
        case AwaitPages():
            return PagesDelivered()
        case CleanUp():
            return CleanedUp()
        case CheckDestinationRoom():
            return DestinationRoomChecked(None)
        case Rollback():
            return RolledBack()
    raise ValueError(f"no answer to {command!r}")
