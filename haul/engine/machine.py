"""The migration state machine. Every decision of a migration lives in this file.

Rules
=====
Rule 1: everything that decides what happens next lives here: the phase changes, in
the :data:`TRANSITIONS` table, and the choices a table cannot make (which strategy,
another pre-copy round or not, which step of a switch-over or rollback comes next,
retry or give up) in the ``Migration._next`` code below; each choice can only pick a
target that the table lists for it. The runner (:mod:`haul.engine.runner`) keeps no
state of the migration: it executes the one command it is given and reports the
event.

Rule 2: no I/O, no clock, no asyncio. :meth:`Migration.handle` takes an event
(something that happened) and returns the commands (what to do next) for the
runner, or raises :class:`~haul.errors.IllegalTransition` and changes nothing.

Rule 3: data flows through the machine. What a port reports arrives in an event;
what another port needs goes out in a command (the destination's page server,
from ``DestinationPrepared`` to ``StartPreDump`` and ``FreezeAndDump``; the
workload's size, from the pre-flight to ``PrepareDestination``). No port talks to
another port.

Theory of operation
===================
A migration walks the phases in order::

    NEW -> PREFLIGHT -> PREPARE -> [PRECOPY]* -> FREEZE -> TRANSFER -> RESTORE
        -> COMMIT -> [LAZY_PAGES] -> CLEANUP -> DONE

PRECOPY repeats while the pre-copy policy (:mod:`haul.engine.policy`) says go on;
LAZY_PAGES is post-copy only. A dry run (``spec.dry_run``) ends CHECKED after the
pre-flight, nothing touched. Within a phase, the steps come one command at a time:

* PREPARE: ``FireHook(pre-migrate)``, then ``PrepareDestination``, then the
  workload's files in rounds while it runs (``SyncFiles``: the first round all of
  them, then what changed, while :func:`~haul.engine.policy.files_decide` says go on;
  what changes after the last round goes in TRANSFER, frozen);
* FREEZE: ``FireHook(pre-freeze)`` (once: pre-copy rounds do not fire it), then
  ``FreezeAndDump``;
* TRANSFER: post-copy first ``ReleaseDump(commit=True)`` (CRIU serves lazy pages
  only once post-dump is answered, and the destination's restore needs them; from
  here the source stays stopped, serving pages), then ``TransferImages``;
* RESTORE: ``RestoreStopped``, then ``FireHook(restored)``;
* COMMIT: ``RecordCommit``; then the switch-over: stop-and-copy and pre-copy
  ``ReleaseDump(commit=True)``, ``KillSource``, ``ResumeDestination`` (never two
  copies running); post-copy only ``ResumeDestination``; then ``FireHook(post-commit)``;
* LAZY_PAGES: ``AwaitPages``, then ``KillSource``;
* CLEANUP: ``CleanUp``.

The commit rule (docs/architecture.md): the decision is journaled before anything
irreversible.

* Before the commit (:data:`~haul.engine.phases.BEFORE_COMMIT`, and COMMIT until
  ``CommitRecorded``), ``StepFailed`` or ``AbortRequested`` moves to ROLLING_BACK
  and emits ``Rollback`` with its steps in order: release the dump if it may be
  held, resume the source, discard the destination (the two swapped once a
  post-copy dump was released: discarding the destination makes CRIU's lazy page
  server fail and resume the tree). A source step that failed while it sent pages
  to the destination's page server first asks the destination for its room
  (``CheckDestinationRoom``): CRIU sees only a broken connection when the
  destination's disk is full. ``RolledBack`` ends ROLLED_BACK when it reports no
  problems, else FAILED, after ``FireHook(rolled-back)`` if pre-migrate was fired.
* After ``CommitRecorded``, ``StepFailed`` never rolls back: the phase stays and the
  same command is emitted again (roll forward; switch-over steps that succeeded are
  not repeated, they are behind the machine), at most ``spec.max_retries`` times in
  a row; then FAILED, with a reason that says what is where. ``AbortRequested`` is
  refused.
* PREFLIGHT ends REFUSED (nothing touched) when the report lists problems, when a
  container's runtime is missing on the destination or older there than on the
  source (:func:`runtime_problems`), or when the requested strategy is impossible on
  these hosts; ``Strategy.AUTO`` is resolved there (:func:`resolve_strategy`).

Terminal phases accept no event. The diagram in :mod:`haul.engine.diagram` is drawn
from :data:`TRANSITIONS`; keep every way out of a phase in the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

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
from haul.engine.figures import (
    PAGE_SIZE,
    Capabilities,
    DumpFigures,
    Endpoint,
    FilesFigures,
    IterationFigures,
    PreflightReport,
    RestoreFigures,
    TransferFigures,
)
from haul.engine.phases import AFTER_COMMIT, BEFORE_COMMIT, TERMINAL, Phase, Strategy
from haul.engine.policy import Decision, decide, dirty_rate_bytes_per_s, files_decide
from haul.engine.ports import HookPoint
from haul.engine.spec import MigrationSpec
from haul.engine.versions import older
from haul.errors import IllegalTransition

#: at most this much room left where the destination keeps the pages: a dump that
#: broke while sending them there ran out of room
NO_ROOM_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class To:
    """One way out of a (phase, event type) entry; ``when`` says when it is taken."""

    phase: Phase
    when: str = ""


def _in_order(phases: frozenset[Phase]) -> list[Phase]:
    return [p for p in Phase if p in phases]


_ROLL_BACK = (To(Phase.ROLLING_BACK),)

#: (phase, event type) -> the phases the event may lead to. No entry: IllegalTransition.
TRANSITIONS: Final[Mapping[tuple[Phase, type[Event]], tuple[To, ...]]] = MappingProxyType(
    {
        # the way forward
        (Phase.NEW, MigrationStarted): (To(Phase.PREFLIGHT),),
        (Phase.PREFLIGHT, PreflightFinished): (
            To(Phase.PREPARE, "checks passed"),
            To(Phase.CHECKED, "checks passed, dry run"),
            To(Phase.REFUSED, "problems, or strategy impossible"),
        ),
        (Phase.PREPARE, HookFired): (To(Phase.PREPARE, "pre-migrate told: prepare"),),
        (Phase.PREPARE, DestinationPrepared): (To(Phase.PREPARE, "send the files"),),
        (Phase.PREPARE, FilesSynced): (
            To(Phase.PREPARE, "files policy goes on"),
            To(Phase.PRECOPY, "pre-copy"),
            To(Phase.FREEZE, "post-copy, stop-and-copy"),
        ),
        (Phase.PRECOPY, PreDumpFinished): (
            To(Phase.PRECOPY, "policy goes on"),
            To(Phase.FREEZE, "policy stops"),
        ),
        (Phase.FREEZE, HookFired): (To(Phase.FREEZE, "pre-freeze told: dump"),),
        (Phase.FREEZE, SourceFrozen): (To(Phase.TRANSFER),),
        (Phase.TRANSFER, DumpReleased): (To(Phase.TRANSFER, "post-copy: pages served"),),
        (Phase.TRANSFER, ImagesTransferred): (To(Phase.RESTORE),),
        (Phase.RESTORE, RestoredStopped): (To(Phase.RESTORE, "tell restored"),),
        (Phase.RESTORE, HookFired): (To(Phase.COMMIT),),
        (Phase.COMMIT, CommitRecorded): (To(Phase.COMMIT, "switch over"),),
        (Phase.COMMIT, DumpReleased): (To(Phase.COMMIT, "kill the source"),),
        (Phase.COMMIT, SourceKilled): (To(Phase.COMMIT, "resume the destination"),),
        (Phase.COMMIT, DestinationResumed): (To(Phase.COMMIT, "tell post-commit"),),
        (Phase.COMMIT, HookFired): (
            To(Phase.LAZY_PAGES, "post-copy"),
            To(Phase.CLEANUP, "pre-copy, stop-and-copy"),
        ),
        (Phase.LAZY_PAGES, PagesDelivered): (To(Phase.LAZY_PAGES, "kill the source"),),
        (Phase.LAZY_PAGES, SourceKilled): (To(Phase.CLEANUP),),
        (Phase.CLEANUP, CleanedUp): (To(Phase.DONE),),
        # back, before the commit (NEW runs no command, so nothing in it can fail)
        **{(p, StepFailed): _ROLL_BACK for p in _in_order(BEFORE_COMMIT - {Phase.NEW})},
        **{(p, AbortRequested): _ROLL_BACK for p in _in_order(BEFORE_COMMIT)},
        (Phase.COMMIT, AbortRequested): (To(Phase.ROLLING_BACK, "commit not recorded"),),
        (Phase.ROLLING_BACK, DestinationRoomChecked): (To(Phase.ROLLING_BACK, "undo"),),
        (Phase.ROLLING_BACK, StepFailed): (To(Phase.ROLLING_BACK, "room unknown: undo"),),
        (Phase.ROLLING_BACK, RolledBack): (
            To(Phase.ROLLING_BACK, "tell rolled-back"),
            To(Phase.ROLLED_BACK, "no problems"),
            To(Phase.FAILED, "problems"),
        ),
        (Phase.ROLLING_BACK, HookFired): (
            To(Phase.ROLLED_BACK, "no problems"),
            To(Phase.FAILED, "problems"),
        ),
        # forward, after the commit
        (Phase.COMMIT, StepFailed): (
            To(Phase.ROLLING_BACK, "commit not recorded"),
            To(Phase.COMMIT, "retry"),
            To(Phase.FAILED, "retries exhausted"),
        ),
        **{
            (p, StepFailed): (To(p, "retry"), To(Phase.FAILED, "retries exhausted"))
            for p in _in_order(AFTER_COMMIT - {Phase.COMMIT})
        },
    }
)


def edges() -> Iterator[tuple[Phase, type[Event], To]]:
    """Every (phase, event type, way out) in the table, in table order."""
    for (phase, event_type), ways in TRANSITIONS.items():
        for way in ways:
            yield phase, event_type, way


@dataclass(frozen=True, slots=True)
class MigrationStats:
    """Figures for the operator, in the style of ``virsh domjobinfo`` (units in the names)."""

    strategy: Strategy
    #: pre-copy rounds done
    iterations: int
    precopy_bytes: int
    dump_bytes: int
    transfer_bytes: int
    #: what went to the destination: images and files over haul's transport, and the
    #: page bytes it received (post-copy: those its lazy-pages daemon fetches)
    bytes_sent: int
    #: how long the workload was frozen, when measured
    frozen_s: float | None
    #: the pre-copy policy's last estimate of the frozen window
    expected_downtime_ms: float | None
    precopy_stop_reason: str
    restore_s: float | None
    #: pages that went to the destination's page server (pre-copy rounds, final dump)
    pages_sent: int = 0
    #: bytes moved over the seconds spent moving them (pre-copy rounds, final dump,
    #: images), as measured so far
    throughput_bytes_per_s: float | None = None
    #: pre-copy: how fast the workload dirties its memory, from the last two rounds
    dirty_rate_bytes_per_s: float | None = None
    #: why this strategy (AUTO: what the hosts allow)
    strategy_reason: str = ""
    #: rounds of the workload's files sent while it ran, and their bytes (the rest,
    #: what changed after the last round, is in transfer_bytes)
    files_rounds: int = 0
    files_presync_bytes: int = 0


def resolve_strategy(
    requested: Strategy, report: PreflightReport, *, source_host: str, dest_host: str
) -> tuple[Strategy | None, str]:
    """The strategy to use and why, or ``(None, why not)`` when the requested one is
    impossible.

    AUTO: pre-copy if both ends track memory changes, else post-copy if both ends have
    lazy pages (and a large enough pipe size), else stop-and-copy.
    """
    hosts = ((source_host, report.source), (dest_host, report.dest))

    def lacking(test: Callable[[Capabilities], bool], what: str) -> list[str]:
        return [f"{host} {what}" for host, caps in hosts if not test(caps)]

    no_track = lacking(lambda c: c.mem_track, "has no memory change tracking (soft-dirty)")
    no_lazy = lacking(lambda c: c.lazy_pages, "has no lazy pages (userfaultfd)") + lacking(
        lambda c: c.lazy_pipe_ok,
        "has fs.pipe-max-size too small for lazy pages (fix: sysctl fs.pipe-max-size=4194304)",
    )
    if requested is Strategy.AUTO:
        if not no_track:
            return Strategy.PRE_COPY, "auto: both hosts track memory changes"
        if not no_lazy:
            return Strategy.POST_COPY, "auto: " + ", ".join(no_track) + "; both have lazy pages"
        return Strategy.STOP_AND_COPY, "auto: " + ", ".join(no_track + no_lazy)
    if requested is Strategy.PRE_COPY and no_track:
        return None, "pre-copy is impossible: " + ", ".join(no_track)
    if requested is Strategy.POST_COPY and no_lazy:
        return None, "post-copy is impossible: " + ", ".join(no_lazy)
    return requested, "asked for"


def runtime_problems(spec: MigrationSpec, report: PreflightReport) -> tuple[str, ...]:
    """Why a container cannot move between these hosts (empty: it can, or it is a
    process tree): the destination must run its runtime, at the source's version or a
    newer one (a runtime restores what an older one checkpointed, not the reverse)."""
    wanted = spec.container_runtime
    if wanted is None:
        return ()
    source, dest = report.source.runtime, report.dest.runtime
    if dest is None:
        why = f" ({report.dest.no_runtime})" if report.dest.no_runtime else ""
        return (f"{spec.dest_host} runs no containers{why}",)
    if dest.name != wanted:
        return (f"{spec.dest_host} runs containers with {dest.name}, not {wanted}",)
    if source is None or source.name != wanted:
        why = f" ({report.source.no_runtime})" if report.source.no_runtime else ""
        return (f"{spec.source_host} cannot run {wanted} now{why}",)
    match older(dest.version, source.version):
        case True:
            return (
                f"{spec.dest_host}'s {wanted} {dest.version} is older than "
                f"{spec.source_host}'s {source.version} (the destination's must be the "
                "same or newer)",
            )
        case None:
            return (
                f"cannot compare {spec.source_host}'s {wanted} version {source.version!r} "
                f"with {spec.dest_host}'s {dest.version!r}",
            )
    return ()


class Migration:
    """One migration's state. Feed it events with :meth:`handle`; run what it returns."""

    def __init__(self, spec: MigrationSpec) -> None:
        self._spec = spec
        self._phase = Phase.NEW
        self._strategy = spec.strategy
        self._strategy_reason = ""
        self._needed_bytes = 0
        self._history: list[IterationFigures] = []
        #: the rounds of the workload's files sent while it ran
        self._files: list[FilesFigures] = []
        self._decision: Decision | None = None
        self._dump: DumpFigures | None = None
        self._transfer: TransferFigures | None = None
        self._restore: RestoreFigures | None = None
        #: where the destination's page server listens, once it is prepared
        self._page_server: Endpoint | None = None
        #: what a rollback must undo: what the commands emitted so far may have done
        self._hooks_told = False
        self._dest_touched = False
        self._source_touched = False
        #: the final dump may be held at post-dump (until a DumpReleased says not)
        self._may_hold = False
        #: post-copy: the dump was (or was being) released before the commit
        self._released_early = False
        self._freeze_started_s: float | None = None
        self._frozen_s: float | None = None
        self._committed = False
        #: the command emitted last: roll-forward emits it again
        self._current: Command | None = None
        #: consecutive failures of the current step after the commit
        self._failures = 0
        self._rollback: Rollback | None = None
        #: the phase that failed (or was aborted) and why, for the rollback's report
        self._rollback_phase = Phase.NEW
        self._rollback_reason = ""
        self._rollback_problems: tuple[str, ...] = ()
        #: what went wrong without changing the outcome (hooks after the commit, cleanup)
        self._problems: list[str] = []
        self._reason = ""
        #: what the pre-flight refused the migration for, one line each
        self._refused_for: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<Migration {self._spec.migration_id} {self._phase.value} {self._strategy.value}>"

    @property
    def spec(self) -> MigrationSpec:
        return self._spec

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def strategy(self) -> Strategy:
        """The strategy in use: the requested one until PREFLIGHT resolves AUTO."""
        return self._strategy

    @property
    def history(self) -> tuple[IterationFigures, ...]:
        """The pre-copy rounds, oldest first."""
        return tuple(self._history)

    @property
    def committed(self) -> bool:
        """True once ``CommitRecorded`` arrived: from here on, only forward."""
        return self._committed

    @property
    def abortable(self) -> bool:
        """True while an abort rolls back: before the commit decision is recorded."""
        return self._phase in BEFORE_COMMIT or (self._phase is Phase.COMMIT and not self._committed)

    @property
    def problems(self) -> tuple[str, ...]:
        """What went wrong without changing the outcome, one line each."""
        return tuple(self._problems)

    @property
    def reason(self) -> str:
        """The final reason, once the migration is in a terminal phase."""
        return self._reason

    @property
    def refused_for(self) -> tuple[str, ...]:
        """Once REFUSED: why, one line each (the ports' problems, the runtimes', or
        the requested strategy's)."""
        return self._refused_for

    def stats(self) -> MigrationStats:
        precopy = sum(f.bytes_sent for f in self._history)
        presync = sum(f.bytes_sent for f in self._files)
        dump = self._dump.bytes_written if self._dump else 0
        transfer = self._transfer.bytes_sent if self._transfer else 0
        # What went to the destination: the images and files, and the pages it received
        # (every pre-copy round's included; the rounds' own count when it could not
        # say; post-copy: the pages its lazy-pages daemon fetches).
        pages = self._restore.pages_bytes if self._restore else 0
        moved = presync + transfer + max(pages, precopy)
        # post-copy's pages cross after the restore, outside the timed steps
        timed = presync + transfer if self._lazy else moved
        seconds = (
            sum(f.duration_s for f in self._history)
            + sum(f.duration_s for f in self._files)
            + (self._dump.duration_s if self._dump else 0.0)
            + (self._transfer.duration_s if self._transfer else 0.0)
        )
        return MigrationStats(
            strategy=self._strategy,
            iterations=len(self._history),
            precopy_bytes=precopy,
            dump_bytes=dump,
            transfer_bytes=transfer,
            bytes_sent=moved,
            frozen_s=self._frozen_s,
            expected_downtime_ms=self._decision.expected_downtime_ms if self._decision else None,
            precopy_stop_reason=(
                self._decision.reason if self._decision and self._decision.stop else ""
            ),
            restore_s=self._restore.duration_s if self._restore else None,
            pages_sent=max(pages, precopy) // PAGE_SIZE,
            throughput_bytes_per_s=timed / seconds if seconds > 0 and timed > 0 else None,
            dirty_rate_bytes_per_s=dirty_rate_bytes_per_s(self._history),
            strategy_reason=self._strategy_reason,
            files_rounds=len(self._files),
            files_presync_bytes=presync,
        )

    def handle(self, event: Event) -> list[Command]:
        """Advance on ``event``; return the commands to run next (one, in this machine).

        Raises :class:`IllegalTransition`, with the machine unchanged, when the table
        has no entry for the event in this phase or a guard refuses it.
        """
        ways = TRANSITIONS.get((self._phase, type(event)))
        if ways is None:
            raise IllegalTransition(self._refusal(event))
        self._guard(event)
        self._told(event)
        phase, command = self._next(event)
        if phase not in {way.phase for way in ways}:
            raise AssertionError(
                f"{type(event).__name__} in {self._phase.value} chose {phase.value}, "
                "which the transitions table does not list"
            )
        self._phase = phase
        self._current = command
        if not isinstance(event, StepFailed):
            self._failures = 0
        self._emitted(command)
        if isinstance(command, Finish):
            self._reason = command.reason
        return [command]

    # -- guards: refuse before anything changes ------------------------------------------

    def _guard(self, event: Event) -> None:
        mid, phase = self._spec.migration_id, self._phase.value
        match event:
            case StepFailed() if event.phase is not self._phase:
                raise IllegalTransition(
                    f"migration {mid} is in phase {phase}; cannot handle StepFailed for "
                    f"phase {event.phase.value}"
                )
            case StepFailed() if self._phase is Phase.ROLLING_BACK and not isinstance(
                self._current, CheckDestinationRoom
            ):
                raise IllegalTransition(f"migration {mid}: a rollback step cannot fail")
            case CommitRecorded() if self._committed:
                raise IllegalTransition(f"migration {mid}: the commit is already recorded")
            case AbortRequested() if self._committed:
                raise IllegalTransition(self._refusal(event))
            case DumpReleased() | SourceKilled() | DestinationResumed() if (
                self._phase is Phase.COMMIT and not self._committed
            ):
                raise IllegalTransition(
                    f"migration {mid} cannot switch over in phase commit before the commit "
                    "is recorded"
                )
            case HookFired(point=point) if not (
                isinstance(self._current, FireHook) and self._current.point is point
            ):
                raise IllegalTransition(
                    f"migration {mid} did not fire the {point.value} hooks in phase {phase}"
                )
            case DumpReleased() | SourceKilled() | DestinationResumed() | PagesDelivered() if (
                not self._expects(event)
            ):
                raise IllegalTransition(
                    f"migration {mid} did not ask for {type(event).__name__} in phase {phase}"
                )

    def _expects(self, event: Event) -> bool:
        """Whether ``event`` answers the command emitted last."""
        expected: dict[type[Command], type[Event]] = {
            ReleaseDump: DumpReleased,
            KillSource: SourceKilled,
            ResumeDestination: DestinationResumed,
            AwaitPages: PagesDelivered,
        }
        return self._current is not None and expected.get(type(self._current)) is type(event)

    def _told(self, event: Event) -> None:
        """Whether the pre-migrate hooks ran (or were cut short): then they are owed a
        rolled-back. Not when the step failed before they were called."""
        if not (
            isinstance(self._current, FireHook) and self._current.point is HookPoint.PRE_MIGRATE
        ):
            return
        match event:
            case HookFired() | AbortRequested():
                self._hooks_told = True
            case StepFailed(part=Part.HOOKS):
                self._hooks_told = True

    def _emitted(self, command: Command) -> None:
        """Remember what the command may do, for a rollback."""
        match command:
            case PrepareDestination():
                self._dest_touched = True
            case StartPreDump() | SyncFiles():
                self._source_touched = True
            case FreezeAndDump():
                self._source_touched = True
                self._may_hold = True
            case ReleaseDump(commit=True) if self._phase is Phase.TRANSFER:
                self._released_early = True

    # -- the choices the table cannot make ---------------------------------------------

    def _next(self, event: Event) -> tuple[Phase, Command]:
        """The next phase and its command."""
        match event:
            case MigrationStarted():
                return Phase.PREFLIGHT, RunPreflight()
            case PreflightFinished(report=report):
                return self._preflight_finished(report)
            case DestinationPrepared(ready=ready):
                self._page_server = ready.page_server
                return Phase.PREPARE, SyncFiles(1)
            case FilesSynced(figures=figures):
                self._files.append(figures)
                if not files_decide(self._files).stop:
                    return Phase.PREPARE, SyncFiles(len(self._files) + 1)
                if self._strategy is Strategy.PRE_COPY:
                    return Phase.PRECOPY, StartPreDump(1, self._page_server)
                return self._freeze()
            case PreDumpFinished(figures=figures):
                self._history.append(figures)
                spec = self._spec
                self._decision = decide(
                    self._history,
                    max_downtime_ms=spec.max_downtime_ms,
                    max_iterations=spec.max_iterations,
                    freeze_cost_ms=spec.freeze_cost_ms,
                    page_size=spec.page_size,
                    shrink_threshold=spec.shrink_threshold,
                )
                if self._decision.stop:
                    return self._freeze()
                return Phase.PRECOPY, StartPreDump(len(self._history) + 1, self._page_server)
            case HookFired():
                return self._hook_fired(event)
            case SourceFrozen(figures=dump, started_s=started_s):
                self._dump = dump
                self._freeze_started_s = started_s
                if self._lazy:
                    return Phase.TRANSFER, ReleaseDump(commit=True)
                return Phase.TRANSFER, TransferImages()
            case DumpReleased():
                self._may_hold = False
                if self._phase is Phase.TRANSFER:
                    return Phase.TRANSFER, TransferImages()
                return Phase.COMMIT, KillSource()
            case ImagesTransferred(figures=transfer):
                self._transfer = transfer
                return Phase.RESTORE, RestoreStopped(lazy=self._lazy)
            case RestoredStopped(figures=restore):
                self._restore = restore
                return Phase.RESTORE, FireHook(HookPoint.RESTORED)
            case CommitRecorded():
                self._committed = True
                if self._lazy:
                    return Phase.COMMIT, ResumeDestination()
                if self._may_hold:
                    return Phase.COMMIT, ReleaseDump(commit=True)
                return Phase.COMMIT, KillSource()
            case SourceKilled():
                if self._phase is Phase.LAZY_PAGES:
                    return Phase.CLEANUP, CleanUp()
                return Phase.COMMIT, ResumeDestination()
            case DestinationResumed(at_s=at_s):
                if at_s is not None and self._freeze_started_s is not None:
                    self._frozen_s = at_s - self._freeze_started_s
                return Phase.COMMIT, FireHook(HookPoint.POST_COMMIT)
            case PagesDelivered():
                return Phase.LAZY_PAGES, KillSource()
            case CleanedUp(problems=problems):
                self._problems.extend(problems)
                return Phase.DONE, Finish(Phase.DONE, self._done_reason())
            case StepFailed():
                return self._step_failed(event)
            case AbortRequested(reason=reason):
                return self._roll_back(reason)
            case DestinationRoomChecked(free_bytes=free):
                return self._undo(self._no_room(free))
            case RolledBack(problems=problems):
                self._rollback_problems = problems
                if self._hooks_told:
                    return Phase.ROLLING_BACK, FireHook(
                        HookPoint.ROLLED_BACK, self._rolled_back_reason()
                    )
                return self._rolled_back()
        raise AssertionError(f"no rule for {type(event).__name__}")

    @property
    def _lazy(self) -> bool:
        return self._strategy is Strategy.POST_COPY

    def _freeze(self) -> tuple[Phase, Command]:
        return Phase.FREEZE, FireHook(HookPoint.PRE_FREEZE)

    def _hook_fired(self, event: HookFired) -> tuple[Phase, Command]:
        if event.problem:
            self._problems.append(event.problem)
        match event.point:
            case HookPoint.PRE_MIGRATE:
                return Phase.PREPARE, PrepareDestination(self._strategy, self._needed_bytes)
            case HookPoint.PRE_FREEZE:
                return Phase.FREEZE, FreezeAndDump(
                    lazy=self._lazy, page_server=None if self._lazy else self._page_server
                )
            case HookPoint.RESTORED:
                return Phase.COMMIT, RecordCommit()
            case HookPoint.POST_COMMIT:
                if self._lazy:
                    return Phase.LAZY_PAGES, AwaitPages()
                return Phase.CLEANUP, CleanUp()
            case HookPoint.ROLLED_BACK:
                return self._rolled_back()
        raise AssertionError(f"no rule for the {event.point.value} hooks")

    def _preflight_finished(self, report: PreflightReport) -> tuple[Phase, Command]:
        problems = (*report.problems, *runtime_problems(self._spec, report))
        if problems:
            return self._refuse(problems)
        strategy, why = resolve_strategy(
            self._spec.strategy,
            report,
            source_host=self._spec.source_host,
            dest_host=self._spec.dest_host,
        )
        if strategy is None:
            return self._refuse((why,))
        self._strategy = strategy
        self._strategy_reason = why
        self._needed_bytes = report.workload_bytes
        if self._spec.dry_run:
            spec = self._spec
            return Phase.CHECKED, Finish(
                Phase.CHECKED,
                f"checked: {spec.workload} can move from {spec.source_host} to "
                f"{spec.dest_host} with {strategy.value} ({why}); nothing was touched",
            )
        return Phase.PREPARE, FireHook(HookPoint.PRE_MIGRATE)

    def _refuse(self, problems: tuple[str, ...]) -> tuple[Phase, Command]:
        spec = self._spec
        self._refused_for = problems
        return Phase.REFUSED, Finish(
            Phase.REFUSED,
            f"refused: {'; '.join(problems)}; nothing was touched, {spec.workload} is as "
            f"it was on {spec.source_host}",
        )

    def _step_failed(self, event: StepFailed) -> tuple[Phase, Command]:
        cause = f"{event.where}: {event.error}" if event.where else event.error
        if self._phase is Phase.ROLLING_BACK:  # the room check failed: undo all the same
            return self._undo(self._rollback_reason)
        if self._phase in BEFORE_COMMIT:
            if (
                event.part is Part.SOURCE
                and self._page_server is not None
                and self._phase in (Phase.PRECOPY, Phase.FREEZE)
            ):
                # the pages went to the destination: was its disk full?
                self._rollback_reason = cause
                self._rollback_phase = self._phase
                return Phase.ROLLING_BACK, CheckDestinationRoom()
            return self._roll_back(cause)
        if not self._committed:
            return self._roll_back(f"could not record the commit decision: {cause}")
        self._failures += 1
        if self._failures <= self._spec.max_retries and self._current is not None:
            return self._phase, self._current
        return Phase.FAILED, Finish(Phase.FAILED, self._stranded(cause))

    def _no_room(self, free: int | None) -> str:
        if free is None or free > NO_ROOM_BYTES:
            return self._rollback_reason
        return (
            f"destination {self._spec.dest_host} has no room left for the pages "
            f"({free >> 10} KiB free where it keeps incoming images): the dump could "
            "not send them"
        )

    def _roll_back(self, reason: str) -> tuple[Phase, Command]:
        self._rollback_phase = self._phase
        return self._undo(reason)

    def _undo(self, reason: str) -> tuple[Phase, Command]:
        self._rollback_reason = reason
        steps: list[Undo] = []
        if self._may_hold:
            steps.append(Undo.RELEASE_DUMP)
        if self._dest_touched or self._source_touched:
            # a released post-copy dump serves pages: discarding the destination makes
            # CRIU's lazy page server fail, and CRIU resumes the tree
            pair = [Undo.RESUME_SOURCE, Undo.DISCARD_DEST]
            steps += reversed(pair) if self._released_early else pair
        self._rollback = Rollback(self._rollback_phase, reason, tuple(steps))
        return Phase.ROLLING_BACK, self._rollback

    def _rolled_back_reason(self) -> str:
        problems = self._rollback_problems
        return self._rollback_reason + (
            "; rollback incomplete: " + "; ".join(problems) if problems else ""
        )

    def _rolled_back(self) -> tuple[Phase, Command]:
        spec = self._spec
        problems = self._rollback_problems
        during = f"during {self._rollback_phase.value} ({self._rollback_reason})"
        if problems:
            return Phase.FAILED, Finish(
                Phase.FAILED,
                f"rollback {during} is incomplete: {'; '.join(problems)}; "
                f"check {spec.workload} on {spec.source_host} and leftovers on {spec.dest_host}",
            )
        return Phase.ROLLED_BACK, Finish(
            Phase.ROLLED_BACK,
            f"rolled back {during}; {spec.workload} runs on {spec.source_host}, "
            f"nothing kept on {spec.dest_host}",
        )

    def _stranded(self, cause: str) -> str:
        """Where things are when roll-forward gave up (FAILED after the commit)."""
        spec = self._spec
        w, s, d = spec.workload, spec.source_host, spec.dest_host
        tries = f"after {self._spec.max_retries + 1} attempts ({cause})"
        if self._phase is Phase.COMMIT:
            return (
                f"committed: {w} restored on {d} but the switch-over did not finish {tries}; "
                f"resume the copy on {d}; the source on {s} must not be resumed; "
                f"images kept on {d}"
            )
        if self._phase is Phase.LAZY_PAGES:
            return (
                f"committed: {w} runs on {d} but not all its memory arrived {tries}; "
                f"the stopped source on {s} still holds the missing pages and must not "
                "be resumed"
            )
        return (
            f"committed: {w} runs on {d}; cleanup did not finish {tries}; "
            f"leftovers may remain on {s} and {d}"
        )

    def _done_reason(self) -> str:
        spec = self._spec
        rounds = len(self._history)
        how = self._strategy.value + (f", {rounds} pre-copy rounds" if rounds else "")
        return f"done: {spec.workload} runs on {spec.dest_host} ({how})"

    def _refusal(self, event: Event) -> str:
        spec, name, phase = self._spec, type(event).__name__, self._phase.value
        if self._phase in TERMINAL:
            return f"migration {spec.migration_id} is over ({phase}); cannot handle {name}"
        if isinstance(event, AbortRequested) and (self._phase in AFTER_COMMIT):
            return (
                f"migration {spec.migration_id} cannot handle {name} in phase {phase}: the "
                f"commit point is passed; {spec.workload} is moving forward to {spec.dest_host}"
            )
        return f"migration {spec.migration_id} cannot handle {name} in phase {phase}"
