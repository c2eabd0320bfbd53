"""Run a migration: execute the machine's commands through the ports, feed back events.

:func:`run` feeds ``MigrationStarted``, then runs each command the
:class:`~haul.engine.machine.Migration` returns, turns what happened into the next
event and loops until ``Finish``. The machine decides; this module only does.

The journal
    Before the first command of a phase runs, ``journal.append`` records that phase
    (cause: the event that led there). ``RecordCommit`` is exactly one append of
    ``JournalRecord(id, COMMIT, "commit")``, which is also the COMMIT phase's record;
    the machine emits ``SwitchOver`` only on ``CommitRecorded``, which this runner
    feeds only once that append returned. So no kill and no resume can run before
    the commit decision is on disk. Terminal phases are recorded too.

Failures
    Each command runs under ``asyncio.timeout(timeouts[phase])`` (no entry: no
    limit). An expired timeout, or a ``HaulError`` from a port, becomes
    ``StepFailed(phase, one line, where)``: before the commit the machine rolls
    back, after it the machine emits the same command again (roll forward); the
    runner skips the switch-over steps that already succeeded. A failed
    ``RecordCommit`` rolls back: the decision is not made until the append returns.
    Any other exception is a bug somewhere: it is fed as ``StepFailed`` too, so the
    migration still rolls back (or forward), and then it is raised from :func:`run`.
    So is an exception from ``on_event``, after which the callback is not called
    again; before the commit, it aborts the migration like a cancellation.

Rollback (``Rollback``, never raises; each action under ``timeouts[ROLLING_BACK]``)
    Nothing, if only the pre-flight ran (nothing was touched). Otherwise:
    ``source.release(commit=False)`` if the final dump is held at post-dump (CRIU
    resumes the tree), ``source.resume()``, ``dest.discard()``. Every failure is
    collected as one line into ``RolledBack(problems)``, which ends FAILED. Then
    the ``rolled-back`` hook, if there are hooks and ``pre-migrate`` was fired.

Hooks (``hooks``, a :class:`~haul.engine.ports.HooksPort`; None: no calls)
    Hooks are not phases and not commands: the machine never waits for them, and
    the diagram has no arrow for them. The runner fires them inside the steps of
    the phases they belong to, so a hook failure before the commit is that step's
    ``StepFailed`` and the machine's commit rule applies unchanged:

    * ``pre-migrate``: first in PREPARE's step, before ``dest.prepare`` (the
      pre-flight passed; nothing is touched yet);
    * ``pre-freeze``: first in FREEZE's step, before ``source.freeze_and_dump``,
      once per migration: pre-copy rounds do not fire it (the workload keeps
      serving through them; ``pre-migrate`` comes before the first one). The
      frozen window is measured from after the hook;
    * ``restored``: in RESTORE's step, after ``dest.restore`` returned (the copy
      is restored and stopped; the commit is not recorded);
    * ``post-commit``: after the switch-over step succeeded (the destination copy
      runs; post-copy: before ``AwaitPages``), before ``SwitchedOver`` is fed;
    * ``rolled-back``: the last action of a rollback (see above), told the reason.

    These three are under their phase's timeout, with the step; a ``HaulError``
    (or the timeout, or a cancellation) there rolls back: the workload keeps
    running on the source and the destination discards its copy. ``post-commit``
    (under ``timeouts[COMMIT]``) and ``rolled-back`` (under
    ``timeouts[ROLLING_BACK]``) are best effort: a failure is one line in
    ``Outcome.problems`` and changes nothing. Every hook failure is also recorded
    in the journal (cause ``hook POINT failed``, detail the one line), best
    effort. A migration that fails after the commit without finishing the
    switch-over fires neither ``post-commit`` nor ``rolled-back``.

Post-copy (lazy) and the source's held dump
    CRIU starts its lazy page server only after the post-dump notification is
    answered, and the destination's restore needs that server. So for post-copy
    the runner answers it, ``source.release(commit=True)``, at the start of
    TRANSFER, before the commit: from then on the source tree stays stopped and
    serves pages. ``SwitchOver(lazy=True)`` is then only ``dest.resume()``;
    ``AwaitPages`` waits for ``dest.wait_pages()`` and
    ``source.wait_pages_served()`` together, then kills the source tree.
    A rollback in between cannot release the dump again; it discards the
    destination first, which kills its copy and its lazy-pages daemon, which makes
    CRIU's lazy page server fail, and CRIU resumes the source tree; then
    ``source.resume()`` makes sure it runs.

Stop-and-copy and pre-copy switch over with ``source.release(commit=True)``,
``source.kill()``, then ``dest.resume()``: never two copies running.

Cancellation
    :func:`run` does its work in a task of its own and waits for it shielded. If
    the caller cancels it before the commit, the step in flight is cancelled,
    ``AbortRequested`` is fed, and the rollback runs to its end however often the
    caller cancels again; then ``CancelledError`` is raised. From COMMIT on,
    cancellation interrupts nothing: the migration finishes (roll forward,
    cleanup), then ``CancelledError`` is raised. Either way the migration's final
    phase is in ``migration.phase``.

Cleanup (``CleanUp``, after the commit): ``source.cleanup()`` and ``dest.cleanup()``,
each under ``timeouts[CLEANUP]``; failures are listed in ``Outcome.problems`` and do
not change the outcome.
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
from haul.engine.figures import PreflightReport
from haul.engine.machine import Migration, MigrationStats
from haul.engine.phases import BEFORE_COMMIT, Phase
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
#: StepFailed.where (and the problems' prefix) for a hook's failure
_HOOKS = "hooks"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a migration ended."""

    phase: Phase
    reason: str
    stats: MigrationStats
    #: what went wrong without changing the outcome (cleanup, journal records after the end)
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
    migration's progress at fixed points (module docstring, *Hooks*).
    """
    if migration.phase is not Phase.NEW:
        raise HaulError(f"migration {migration.spec.migration_id} already ran "
                        f"(phase {migration.phase.value})")
    runner = _Runner(
        migration, source=source, dest=dest, transport=transport, journal=journal,
        timeouts=timeouts or {}, on_event=on_event, clock=clock or _MonotonicClock(),
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
                raise cancelled  # never swallow the caller's cancellation
            raise
        if cancelled is not None:
            raise cancelled
        return outcome


class _PortFailed(HaulError):
    """A port raised ``HaulError``; remembers which port (the runner's own use only)."""

    def __init__(self, where: str, error: str) -> None:
        super().__init__(error)
        self.where = where
        self.error = error


class _MonotonicClock:
    def monotonic(self) -> float:
        return time.monotonic()


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HaulError) else f"{type(exc).__name__}: {exc}"


def _detail(command: Command) -> str:
    match command:
        case PrepareDestination(strategy=strategy):
            return f"strategy {strategy.value}"
        case FreezeAndDump(lazy=True):
            return "lazy"
        case Rollback(reason=reason) | Finish(reason=reason):
            return reason
    return ""


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
        #: pre-migrate was fired: the hooks are owed a rolled-back if it rolls back
        self._hooks_fired = False
        self._src = f"source {self._spec.source_host}"
        self._dst = f"dest {self._spec.dest_host}"
        self._xfer = f"transport {self._spec.source_host}->{self._spec.dest_host}"
        #: the port call in flight (or last made), for StepFailed.where
        self._where = ""
        #: the phase the journal last recorded, and the event that led to the current one
        self._recorded: Phase | None = None
        self._cause = MigrationStarted.__name__
        #: a command past the pre-flight ran: a rollback has something to undo
        self._touched = False
        #: the final dump is held at post-dump, waiting for release()
        self._held = False
        #: post-copy: the dump was released (commit=True) before the commit
        self._released_lazily = False
        #: switch-over steps done; roll-forward does not repeat them
        self._done: set[str] = set()
        self._frozen_from: float | None = None
        self._frozen_s: float | None = None
        self._problems: list[str] = []
        #: why to abort (cancellation, callback failure); acted on before the commit only
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
            if self._abort is not None and self._m.phase in BEFORE_COMMIT:
                command = self._feed(AbortRequested(self._abort))
                continue
            event: Event | None
            if isinstance(command, Rollback):
                event = await self._roll_back(command)
            elif isinstance(command, CleanUp):
                event = await self._clean_up()
            else:
                event = await self._run_step(command)
                if isinstance(event, SwitchedOver):
                    await self._fire_quietly(HookPoint.POST_COMMIT, Phase.COMMIT)
            if event is not None:
                command = self._feed(event)
        await self._finish(command)
        if self._error is not None:
            raise self._error
        return Outcome(command.phase, command.reason, self._m.stats(), tuple(self._problems))

    # -- the machine side ----------------------------------------------------------------

    def _feed(self, event: Event) -> Command:
        before = self._m.phase
        self._notify(before, event)
        commands = self._m.handle(event)
        if self._m.phase is not before:
            self._cause = type(event).__name__
            log.info("migration %s: %s -> %s on %s", self._spec.migration_id,
                     before.value, self._m.phase.value, self._cause)
        if isinstance(event, StepFailed):
            log.warning("migration %s: %s failed: %s%s", self._spec.migration_id,
                        event.phase.value, f"{event.where}: " if event.where else "", event.error)
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

    # -- one step --------------------------------------------------------------------------

    async def _run_step(self, command: Command) -> Event | None:
        """Run ``command``; its event, or None when an abort interrupted it or beat it."""
        phase = self._m.phase
        task = asyncio.create_task(self._step_in(phase, command))
        if phase in BEFORE_COMMIT:
            self._step = task
        try:
            event = await task
        except asyncio.CancelledError:
            if not task.cancelled() or self._abort is None:
                raise
            return None
        # Not a HaulError: a bug in a port. Roll back (or forward) all the same, and
        # raise it from run() once the migration is over.
        except Exception as exc:
            self._error = self._error or exc
            event = StepFailed(phase, _describe(exc), self._where)
        finally:
            self._step = None
        if self._abort is not None and phase in BEFORE_COMMIT:
            return None
        return event

    async def _step_in(self, phase: Phase, command: Command) -> Event:
        limit = self._timeouts.get(phase)
        try:
            async with asyncio.timeout(limit) as scope:
                await self._record(phase, command)
                return await self._execute(command)
        except TimeoutError:
            if not scope.expired():
                raise
            return StepFailed(
                phase, f"{type(command).__name__} timed out after {limit:g} s", self._where
            )
        except _PortFailed as exc:
            return StepFailed(phase, exc.error, exc.where)

    async def _call(
        self, where: str, port_call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call a port; its HaulError becomes _PortFailed(where). The coroutine is made
        here, so a task cancelled before it starts leaves none un-awaited."""
        self._where = where
        try:
            return await port_call(*args, **kwargs)
        except _PortFailed:
            raise
        except HaulError as exc:
            raise _PortFailed(where, str(exc)) from exc

    async def _record(self, phase: Phase, command: Command) -> None:
        """The journal record of a phase, before its first command (RecordCommit is one)."""
        if phase is self._recorded or isinstance(command, RecordCommit):
            return
        await self._append(phase, self._cause, _detail(command))

    async def _append(self, phase: Phase, cause: str, detail: str = "") -> None:
        record = JournalRecord(self._spec.migration_id, phase, cause, detail)
        await self._call("journal", self._journal.append, record)
        self._recorded = phase

    async def _execute(self, command: Command) -> Event:
        match command:
            case RunPreflight():
                return PreflightFinished(await self._preflight())
            case PrepareDestination(strategy=strategy):
                await self._fire(HookPoint.PRE_MIGRATE)
                self._touched = True
                await self._call(self._dst, self._dest.prepare, strategy)
                return DestinationPrepared()
            case StartPreDump(iteration=iteration):
                self._touched = True
                return PreDumpFinished(
                    await self._call(self._src, self._source.pre_dump, iteration)
                )
            case FreezeAndDump(lazy=lazy):
                await self._fire(HookPoint.PRE_FREEZE)
                self._touched = True
                self._frozen_from = self._clock.monotonic()
                figures = await self._call(self._src, self._source.freeze_and_dump, lazy)
                self._held = True
                return SourceFrozen(figures)
            case TransferImages(lazy=lazy):
                if lazy and self._held:
                    # CRIU serves lazy pages only once post-dump is answered
                    await self._call(self._src, self._source.release, commit=True)
                    self._held = False
                    self._released_lazily = True
                return ImagesTransferred(
                    await self._call(self._xfer, self._transport.transfer_images)
                )
            case RestoreStopped(lazy=lazy):
                restored = await self._call(self._dst, self._dest.restore, lazy)
                await self._fire(HookPoint.RESTORED)
                return RestoredStopped(restored)
            case RecordCommit():
                await self._append(
                    Phase.COMMIT, "commit",
                    f"{self._spec.workload} to {self._spec.dest_host}",
                )
                return CommitRecorded()
            case SwitchOver(lazy=lazy):
                await self._switch_over(lazy)
                return SwitchedOver(self._frozen_s)
            case AwaitPages():
                await self._await_pages()
                return PagesDelivered()
        raise AssertionError(f"the runner cannot execute {command!r} as a step")

    # -- hooks -----------------------------------------------------------------------------

    def _facts(self, reason: str = "") -> HookFacts:
        spec = self._spec
        return HookFacts(
            migration_id=spec.migration_id, workload=spec.workload,
            source_host=spec.source_host, dest_host=spec.dest_host,
            source_address=spec.source_address, dest_address=spec.dest_address,
            strategy=self._m.strategy, phase=self._m.phase, reason=reason,
        )

    async def _fire(self, point: HookPoint) -> None:
        """A hook before the commit, inside a step: its failure fails the step."""
        if self._hooks is None:
            return
        if point is HookPoint.PRE_MIGRATE:
            self._hooks_fired = True
        log.info("migration %s: hook %s", self._spec.migration_id, point.value)
        try:
            await self._call(_HOOKS, self._hooks.fire, point, self._facts())
        except _PortFailed as exc:
            await self._record_quietly(self._m.phase, f"hook {point.value} failed", exc.error)
            raise

    async def _fire_quietly(self, point: HookPoint, limit_phase: Phase, reason: str = ""
                            ) -> None:
        """A hook after the commit or after a rollback: its failure is only reported."""
        if self._hooks is None:
            return
        hooks, facts = self._hooks, self._facts(reason)

        async def fire() -> None:
            await hooks.fire(point, facts)

        log.info("migration %s: hook %s", self._spec.migration_id, point.value)
        problem = await self._attempt(_HOOKS, point.value, fire, self._timeouts.get(limit_phase))
        if problem is not None:
            self._problems.append(problem)
            await self._record_quietly(self._m.phase, f"hook {point.value} failed", problem)

    async def _preflight(self) -> PreflightReport:
        source_caps = await self._call(self._src, self._source.capabilities)
        dest_caps = await self._call(self._dst, self._dest.capabilities)
        problems: list[str] = []
        resident = 0
        try:
            resident = await self._call(self._src, self._source.check_workload)
        except _PortFailed as exc:
            problems.append(f"{exc.where}: {exc.error}")
        try:
            await self._call(self._dst, self._dest.check_free, self._spec.workload, resident)
        except _PortFailed as exc:
            problems.append(f"{exc.where}: {exc.error}")
        return PreflightReport(source_caps, dest_caps, tuple(problems), resident)

    async def _switch_over(self, lazy: bool) -> None:
        if not lazy:
            if self._held:
                await self._call(self._src, self._source.release, commit=True)
                self._held = False
            if "kill" not in self._done:
                await self._call(self._src, self._source.kill)
                self._done.add("kill")
        if "resume" not in self._done:
            await self._call(self._dst, self._dest.resume)
            self._done.add("resume")
            if self._frozen_from is not None:
                self._frozen_s = self._clock.monotonic() - self._frozen_from

    async def _await_pages(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._call(self._dst, self._dest.wait_pages))
                group.create_task(self._call(self._src, self._source.wait_pages_served))
        except* _PortFailed as failed:
            found = [exc for exc in failed.exceptions if isinstance(exc, _PortFailed)]
            raise _PortFailed(
                " and ".join(exc.where for exc in found), "; ".join(exc.error for exc in found)
            ) from None
        if "kill" not in self._done:
            await self._call(self._src, self._source.kill)
            self._done.add("kill")

    # -- best-effort steps: rollback, cleanup, the final record ----------------------------

    async def _attempt(
        self, where: str, what: str, call: Callable[[], Awaitable[None]], limit: float | None
    ) -> str | None:
        """Run one best-effort action under ``limit``; what went wrong, or None."""
        self._where = where
        try:
            async with asyncio.timeout(limit):
                await call()
        except TimeoutError:
            return f"{where}: {what} timed out" + (f" after {limit:g} s" if limit is not None else "")
        # Best effort by contract: every action is tried, each failure is reported.
        except Exception as exc:
            return f"{where}: {what} failed: {_describe(exc)}"
        return None

    async def _record_quietly(self, phase: Phase, cause: str, detail: str) -> None:
        async def append() -> None:
            await self._append(phase, cause, detail)

        problem = await self._attempt(
            "journal", f"recording {phase.value}", append, self._timeouts.get(phase)
        )
        if problem is not None:
            self._problems.append(problem)

    async def _roll_back(self, command: Rollback) -> RolledBack:
        await self._record_quietly(Phase.ROLLING_BACK, self._cause, command.reason)
        problems = await self._undo() if self._touched else []
        if self._hooks_fired:
            reason = command.reason + (
                "; rollback incomplete: " + "; ".join(problems) if problems else "")
            await self._fire_quietly(HookPoint.ROLLED_BACK, Phase.ROLLING_BACK, reason)
        return RolledBack(tuple(problems))

    async def _undo(self) -> list[str]:
        """Resume the source, discard the destination; what went wrong, one line each."""
        limit = self._timeouts.get(Phase.ROLLING_BACK)
        source, dest = self._source, self._dest

        async def release() -> None:
            await source.release(commit=False)

        steps: list[tuple[str, str, Callable[[], Awaitable[None]]]] = []
        if self._held:
            steps.append((self._src, "releasing the held dump (commit=False)", release))
        resume = (self._src, "resuming the workload", source.resume)
        discard = (self._dst, "discarding its copy", dest.discard)
        # post-copy, released: discarding makes CRIU's page server fail and resume the tree
        steps += [discard, resume] if self._released_lazily else [resume, discard]
        problems: list[str] = []
        for where, what, call in steps:
            problem = await self._attempt(where, what, call, limit)
            if problem is not None:
                problems.append(problem)
            elif call is release:
                self._held = False
        return problems

    async def _clean_up(self) -> CleanedUp:
        await self._record_quietly(Phase.CLEANUP, self._cause, "")
        limit = self._timeouts.get(Phase.CLEANUP)
        for where, call in ((self._src, self._source.cleanup), (self._dst, self._dest.cleanup)):
            problem = await self._attempt(where, "cleaning up", call, limit)
            if problem is not None:
                self._problems.append(problem)
        return CleanedUp()

    async def _finish(self, command: Finish) -> None:
        await self._record_quietly(command.phase, self._cause, command.reason)
        log.info("migration %s: %s", self._spec.migration_id, command.reason)
