"""Run a migration: execute the machine's commands through the ports, feed back events.

:func:`run` feeds ``MigrationStarted``, then executes each command the
:class:`~haul.engine.machine.Migration` returns, turns what happened into the next
event and loops until ``Finish``. The machine decides everything (which step
comes next, what a rollback undoes and in what order, what is held); this module
only does, and keeps no state of the migration beyond the step in flight.

The journal
    Before the first command of a phase runs, ``journal.append`` records that phase
    (cause: the event that led there). ``RecordCommit`` is exactly one append of
    ``JournalRecord(id, COMMIT, "commit")``, which is also the COMMIT phase's record;
    the machine emits the switch-over only on ``CommitRecorded``, which this runner
    feeds only once that append returned. So no kill and no resume can run before
    the commit decision is on disk. Terminal phases are recorded too.

Steps and best-effort commands
    A step runs under ``asyncio.timeout(timeouts[phase])`` (no entry: no limit). An
    expired timeout, or a ``HaulError`` from a port, becomes ``StepFailed(phase, one
    line, where, part)``; the machine rolls back or forward. Any other exception is
    a bug somewhere: it is fed as ``StepFailed`` too, so the migration still rolls
    back (or forward), and then it is raised from :func:`run`. So is an exception
    from ``on_event``, after which the callback is not called again; before the
    commit, it aborts the migration like a cancellation.

    ``Rollback``, ``CleanUp`` and ``FireHook`` at a point that cannot abort
    (post-commit, rolled-back) are best effort: every action is tried, each under
    its phase's timeout, and what fails is reported in the event (``RolledBack``,
    ``CleanedUp``, ``HookFired``). Every hook failure is also recorded in the
    journal (cause ``hook POINT failed``), best effort.

Cancellation
    :func:`run` does its work in a task of its own and waits for it shielded. If
    the caller cancels it while the migration may still abort
    (:attr:`~haul.engine.machine.Migration.abortable`), the step in flight is
    cancelled (a step that finished all the same is fed first: the machine must
    know what it did), ``AbortRequested`` is fed, and the rollback runs to its end
    however often the caller cancels again; then ``CancelledError`` is raised.
    Once the commit is recorded, cancellation interrupts nothing: the migration
    finishes (roll forward, cleanup), then ``CancelledError`` is raised. Either way
    the migration's final phase is in ``migration.phase``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

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
from haul.engine.figures import PreflightReport
from haul.engine.machine import Migration, MigrationStats
from haul.engine.phases import Phase
from haul.engine.ports import (
    Clock,
    DestPort,
    HookFacts,
    HookPoint,
    HooksPort,
    JournalPort,
    JournalRecord,
    SourcePort,
    TransportPort,
)
from haul.errors import HaulError

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

#: the reason fed with AbortRequested when the caller cancels :func:`run`
CANCELLED = "cancelled by the caller"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a migration ended."""

    phase: Phase
    reason: str
    stats: MigrationStats
    #: what went wrong without changing the outcome (hooks after the commit, cleanup,
    #: journal records after the end)
    problems: tuple[str, ...] = ()


async def run(
    migration: Migration,
    *,
    source: SourcePort,
    dest: DestPort,
    transport: TransportPort,
    journal: JournalPort,
    timeouts: Mapping[Phase, float] | None = None,
    on_event: Callable[[Phase, Event], None] | None = None,
    clock: Clock | None = None,
    hooks: HooksPort | None = None,
) -> Outcome:
    """Run ``migration`` (in phase NEW) to its end; see the module's docstring.

    ``on_event(phase, event)`` is called with every event before the machine
    handles it, ``phase`` being the phase the event happened in. ``clock`` measures
    the frozen window (default: ``time.monotonic``). ``hooks`` are told of the
    migration's progress at the points the machine fires them (None: no hooks).
    """
    if migration.phase is not Phase.NEW:
        raise HaulError(
            f"migration {migration.spec.migration_id} already ran (phase {migration.phase.value})"
        )
    runner = _Runner(
        migration,
        source=source,
        dest=dest,
        transport=transport,
        journal=journal,
        timeouts=timeouts or {},
        on_event=on_event,
        clock=clock or _MonotonicClock(),
        hooks=hooks,
    )
    drive = asyncio.create_task(runner.drive(), name=f"migration {migration.spec.migration_id}")
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            outcome = await asyncio.shield(drive)
        except asyncio.CancelledError as exc:
            if drive.cancelled():  # not by the caller of run(): the loop is going away
                raise
            cancelled = cancelled or exc
            runner.cancel(CANCELLED)
            continue
        except BaseException:
            if cancelled is not None:
                raise cancelled from None  # never swallow the caller's cancellation
            raise
        if cancelled is not None:
            raise cancelled
        return outcome


class _PortFailed(HaulError):
    """A port raised ``HaulError``; remembers which port (the runner's own use only)."""

    def __init__(self, part: Part, where: str, error: str) -> None:
        super().__init__(error)
        self.part = part
        self.where = where
        self.error = error


class _MonotonicClock:
    def monotonic(self) -> float:
        return time.monotonic()


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HaulError) else f"{type(exc).__name__}: {exc}"


def _detail(command: Command) -> str:
    match command:
        case FreezeAndDump(lazy=True):
            return "lazy"
        case FireHook(point=point):
            return f"hook {point.value}"
        case Rollback(reason=reason) | Finish(reason=reason):
            return reason
    return ""


def _best_effort(command: Command) -> bool:
    """Commands whose failures are reported in their event, never as StepFailed."""
    if isinstance(command, FireHook):
        return not command.point.aborts
    return isinstance(command, Rollback | CleanUp)


class _Runner:
    def __init__(
        self,
        migration: Migration,
        *,
        source: SourcePort,
        dest: DestPort,
        transport: TransportPort,
        journal: JournalPort,
        timeouts: Mapping[Phase, float],
        on_event: Callable[[Phase, Event], None] | None,
        clock: Clock,
        hooks: HooksPort | None = None,
    ) -> None:
        self._m = migration
        self._spec = migration.spec
        self._source = source
        self._dest = dest
        self._transport = transport
        self._journal = journal
        self._timeouts = timeouts
        self._on_event = on_event
        self._clock = clock
        self._hooks = hooks
        spec = self._spec
        self._where = {
            Part.SOURCE: f"source {spec.source_host}",
            Part.DEST: f"dest {spec.dest_host}",
            Part.TRANSPORT: f"transport {spec.source_host}->{spec.dest_host}",
            Part.JOURNAL: "journal",
            Part.HOOKS: "hooks",
            Part.RUNNER: "",
        }
        #: the port call in flight (or last made), for StepFailed
        self._part = Part.RUNNER
        #: the phase the journal last recorded, and the event that led to the current one
        self._recorded: Phase | None = None
        self._cause = MigrationStarted.__name__
        #: journal records that failed where nothing could fail (after the end)
        self._problems: list[str] = []
        #: why to abort (cancellation, callback failure); acted on while abortable only
        self._abort: str | None = None
        #: the first exception that was not a HaulError; raised at the end
        self._error: Exception | None = None
        #: the step in flight, while it may be interrupted (before the commit)
        self._step: asyncio.Task[Event] | None = None

    def cancel(self, reason: str) -> None:
        """Abort before the commit (interrupting the step in flight); later, nothing."""
        if self._abort is None:
            self._abort = reason
        if self._step is not None:
            self._step.cancel()

    async def drive(self) -> Outcome:
        command = self._feed(MigrationStarted())
        while not isinstance(command, Finish):
            if self._abort is not None and self._m.abortable:
                command = self._feed(AbortRequested(self._abort))
                continue
            event = await self._run(command)
            if event is not None:
                command = self._feed(event)
        await self._finish(command)
        if self._error is not None:
            raise self._error
        problems = (*self._m.problems, *self._problems)
        return Outcome(command.phase, command.reason, self._m.stats(), problems)

    # -- the machine side ----------------------------------------------------------------

    def _feed(self, event: Event) -> Command:
        before = self._m.phase
        self._notify(before, event)
        commands = self._m.handle(event)
        if self._m.phase is not before:
            self._cause = type(event).__name__
            log.info(
                "migration %s: %s -> %s on %s",
                self._spec.migration_id,
                before.value,
                self._m.phase.value,
                self._cause,
            )
        if isinstance(event, StepFailed):
            log.warning(
                "migration %s: %s failed: %s%s",
                self._spec.migration_id,
                event.phase.value,
                f"{event.where}: " if event.where else "",
                event.error,
            )
        if len(commands) != 1:
            raise AssertionError(f"the machine emitted {commands!r}; the runner expects one")
        return commands[0]

    def _notify(self, phase: Phase, event: Event) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(phase, event)
        # The caller's callback, not our logic: it must not leave the workload frozen.
        # Stop calling it, abort if before the commit, raise its error at the end.
        except Exception as exc:
            self._on_event = None
            self._error = self._error or exc
            self.cancel(f"on_event callback failed: {_describe(exc)}")

    # -- one command ---------------------------------------------------------------------

    async def _run(self, command: Command) -> Event | None:
        """Run ``command``; its event, or None when an abort interrupted it."""
        phase = self._m.phase
        if _best_effort(command):
            await self._record_quietly(phase, self._cause, _detail(command), new_only=True)
            return await self._best(command)
        task = asyncio.create_task(self._step_in(phase, command))
        # The commit record is never interrupted: once asked for, it may be on disk.
        if self._m.abortable and not isinstance(command, RecordCommit):
            self._step = task
        try:
            return await task
        except asyncio.CancelledError:
            if not task.cancelled() or self._abort is None:
                raise
            return None
        # Not a HaulError: a bug in a port. Roll back (or forward) all the same, and
        # raise it from run() once the migration is over.
        except Exception as exc:
            self._error = self._error or exc
            return StepFailed(phase, _describe(exc), self._where[self._part], self._part)
        finally:
            self._step = None

    async def _step_in(self, phase: Phase, command: Command) -> Event:
        limit = self._timeouts.get(phase)
        if isinstance(command, CheckDestinationRoom):
            limit = command.limit_s if limit is None else min(limit, command.limit_s)
        self._part = Part.RUNNER
        try:
            async with asyncio.timeout(limit) as scope:
                await self._record(phase, command)
                return await self._execute(command)
        except TimeoutError:
            if not scope.expired():
                raise
            return StepFailed(
                phase,
                f"{type(command).__name__} timed out after {limit:g} s",
                self._where[self._part],
                self._part,
            )
        except _PortFailed as exc:
            return StepFailed(phase, exc.error, exc.where, exc.part)

    async def _call(
        self, part: Part, port_call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call a port; its HaulError becomes _PortFailed(part). The coroutine is made
        here, so a task cancelled before it starts leaves none un-awaited."""
        self._part = part
        try:
            return await port_call(*args, **kwargs)
        except _PortFailed:
            raise
        except HaulError as exc:
            raise _PortFailed(part, self._where[part], str(exc)) from exc

    async def _record(self, phase: Phase, command: Command) -> None:
        """The journal record of a phase, before its first command (RecordCommit is one)."""
        if phase is self._recorded or isinstance(command, RecordCommit):
            return
        detail = (
            f"strategy {self._m.strategy.value}" if phase is Phase.PREPARE else _detail(command)
        )
        await self._append(phase, self._cause, detail)

    async def _append(self, phase: Phase, cause: str, detail: str = "") -> None:
        record = JournalRecord(self._spec.migration_id, phase, cause, detail)
        await self._call(Part.JOURNAL, self._journal.append, record)
        self._recorded = phase

    async def _execute(self, command: Command) -> Event:
        source, dest = self._source, self._dest
        match command:
            case RunPreflight():
                return PreflightFinished(await self._preflight())
            case FireHook(point=point):
                await self._fire(point)
                return HookFired(point)
            case PrepareDestination(strategy=strategy, needed_bytes=needed):
                return DestinationPrepared(
                    await self._call(Part.DEST, dest.prepare, strategy, needed)
                )
            case SyncFiles(round=round_):
                return FilesSynced(
                    await self._call(Part.TRANSPORT, self._transport.sync_files, round_)
                )
            case StartPreDump(iteration=iteration, page_server=page_server):
                return PreDumpFinished(
                    await self._call(Part.SOURCE, source.pre_dump, iteration, page_server)
                )
            case FreezeAndDump(lazy=lazy, page_server=page_server):
                started = self._clock.monotonic()
                figures = await self._call(Part.SOURCE, source.freeze_and_dump, lazy, page_server)
                return SourceFrozen(figures, started)
            case ReleaseDump(commit=commit):
                await self._call(Part.SOURCE, source.release, commit=commit)
                return DumpReleased(commit)
            case TransferImages():
                return ImagesTransferred(
                    await self._call(Part.TRANSPORT, self._transport.transfer_images)
                )
            case RestoreStopped(lazy=lazy):
                return RestoredStopped(await self._call(Part.DEST, dest.restore, lazy))
            case RecordCommit():
                await self._append(
                    Phase.COMMIT, "commit", f"{self._spec.workload} to {self._spec.dest_host}"
                )
                return CommitRecorded()
            case KillSource():
                await self._call(Part.SOURCE, source.kill)
                return SourceKilled()
            case ResumeDestination():
                await self._call(Part.DEST, dest.resume)
                return DestinationResumed(self._clock.monotonic())
            case AwaitPages():
                await self._await_pages()
                return PagesDelivered()
            case CheckDestinationRoom():
                return DestinationRoomChecked(await self._call(Part.DEST, dest.room_left))
        raise AssertionError(f"the runner cannot execute {command!r} as a step")

    async def _preflight(self) -> PreflightReport:
        source_caps = await self._call(Part.SOURCE, self._source.capabilities)
        dest_caps = await self._call(Part.DEST, self._dest.capabilities)
        problems: list[str] = []
        resident = 0
        try:
            resident = await self._call(Part.SOURCE, self._source.check_workload)
        except _PortFailed as exc:
            problems.append(f"{exc.where}: {exc.error}")
        try:
            await self._call(Part.DEST, self._dest.check_free, self._spec.workload, resident)
        except _PortFailed as exc:
            problems.append(f"{exc.where}: {exc.error}")
        return PreflightReport(source_caps, dest_caps, tuple(problems), resident)

    async def _await_pages(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._call(Part.DEST, self._dest.wait_pages))
                group.create_task(self._call(Part.SOURCE, self._source.wait_pages_served))
        except* _PortFailed as failed:
            found = [exc for exc in failed.exceptions if isinstance(exc, _PortFailed)]
            raise _PortFailed(
                found[0].part,
                " and ".join(exc.where for exc in found),
                "; ".join(exc.error for exc in found),
            ) from None

    # -- hooks -----------------------------------------------------------------------------

    def _facts(self, reason: str = "") -> HookFacts:
        spec = self._spec
        return HookFacts(
            migration_id=spec.migration_id,
            workload=spec.workload,
            source_host=spec.source_host,
            dest_host=spec.dest_host,
            source_address=spec.source_address,
            dest_address=spec.dest_address,
            strategy=self._m.strategy,
            phase=self._m.phase,
            reason=reason,
        )

    async def _fire(self, point: HookPoint) -> None:
        """Hooks at a point that aborts, as a step: their failure fails the step."""
        if self._hooks is None:
            return
        log.info("migration %s: hook %s", self._spec.migration_id, point.value)
        try:
            await self._call(Part.HOOKS, self._hooks.fire, point, self._facts())
        except _PortFailed as exc:
            await self._record_quietly(self._m.phase, f"hook {point.value} failed", exc.error)
            raise

    # -- best-effort commands: rollback, cleanup, hooks that cannot abort --------------------

    async def _best(self, command: Command) -> Event:
        match command:
            case Rollback(steps=steps):
                return RolledBack(tuple(await self._undo(steps)))
            case CleanUp():
                problems = [
                    problem
                    for part, call in (
                        (Part.SOURCE, self._source.cleanup),
                        (Part.DEST, self._dest.cleanup),
                    )
                    if (problem := await self._attempt(part, "cleaning up", call)) is not None
                ]
                return CleanedUp(tuple(problems))
            case FireHook(point=point, reason=reason):
                return HookFired(point, await self._fire_quietly(point, reason) or "")
        raise AssertionError(f"the runner cannot execute {command!r} as best effort")

    async def _attempt(
        self, part: Part, what: str, call: Callable[[], Awaitable[None]]
    ) -> str | None:
        """Run one best-effort action under its phase's limit; what went wrong, or None."""
        where, limit = self._where[part], self._timeouts.get(self._m.phase)
        self._part = part
        try:
            async with asyncio.timeout(limit):
                await call()
        except TimeoutError:
            return f"{where}: {what} timed out" + (
                f" after {limit:g} s" if limit is not None else ""
            )
        # Best effort by contract: every action is tried, each failure is reported.
        except Exception as exc:
            return f"{where}: {what} failed: {_describe(exc)}"
        return None

    async def _undo(self, steps: tuple[Undo, ...]) -> list[str]:
        """The rollback's steps in the machine's order; what went wrong, one line each."""
        source, dest = self._source, self._dest

        async def release() -> None:
            await source.release(commit=False)

        actions: dict[Undo, tuple[Part, Callable[[], Awaitable[None]]]] = {
            Undo.RELEASE_DUMP: (Part.SOURCE, release),
            Undo.RESUME_SOURCE: (Part.SOURCE, source.resume),
            Undo.DISCARD_DEST: (Part.DEST, dest.discard),
        }
        problems: list[str] = []
        for step in steps:
            part, call = actions[step]
            problem = await self._attempt(part, step.value, call)
            if problem is not None:
                problems.append(problem)
        return problems

    async def _fire_quietly(self, point: HookPoint, reason: str) -> str | None:
        """Hooks after the commit or after a rollback: their failure is only reported."""
        if self._hooks is None:
            return None
        hooks, facts = self._hooks, self._facts(reason)

        async def fire() -> None:
            await hooks.fire(point, facts)

        log.info("migration %s: hook %s", self._spec.migration_id, point.value)
        problem = await self._attempt(Part.HOOKS, point.value, fire)
        if problem is not None:
            await self._record_quietly(self._m.phase, f"hook {point.value} failed", problem)
        return problem

    async def _record_quietly(
        self, phase: Phase, cause: str, detail: str, *, new_only: bool = False
    ) -> None:
        """A journal record whose failure is reported, not fatal; ``new_only``: only
        if this phase is not recorded yet."""
        if new_only and phase is self._recorded:
            return
        self._recorded = phase  # tried once: a failed record is a problem, not retried

        async def append() -> None:
            await self._append(phase, cause, detail)

        problem = await self._attempt(Part.JOURNAL, f"recording {phase.value}", append)
        if problem is not None:
            self._problems.append(problem)

    async def _finish(self, command: Finish) -> None:
        await self._record_quietly(command.phase, self._cause, command.reason)
        log.info("migration %s: %s", self._spec.migration_id, command.reason)
