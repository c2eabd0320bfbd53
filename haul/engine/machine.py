"""The migration state machine. Every transition of a migration lives in this file.

Rules
=====
Rule 1: everything that decides a phase change lives here. As much as possible is in
the :data:`TRANSITIONS` table; the choices a table cannot make (which strategy,
another pre-copy round or not, retry or give up) are the ``Migration._next`` code
below, and each choice can only pick a target that the table lists for it.

Rule 2: no I/O, no clock, no asyncio. :meth:`Migration.handle` takes an event
(something that happened) and returns the commands (what to do next) for the
runner, or raises :class:`~haul.errors.IllegalTransition` and changes nothing.

Theory of operation
===================
A migration walks the phases in order::

    NEW -> PREFLIGHT -> PREPARE -> [PRECOPY]* -> FREEZE -> TRANSFER -> RESTORE
        -> COMMIT -> [LAZY_PAGES] -> CLEANUP -> DONE

PRECOPY repeats while the pre-copy policy (:mod:`haul.engine.policy`) says go on;
LAZY_PAGES is post-copy only. Each event of the happy path moves one phase on and
emits the one command for the phase entered (the ``COMMIT`` phase takes two:
``RecordCommit``, then ``SwitchOver`` once ``CommitRecorded`` says the decision is
in the journal).

The commit rule (DESIGN.md): the decision is journaled before anything irreversible.

* Before the commit (:data:`~haul.engine.phases.BEFORE_COMMIT`), ``StepFailed`` or
  ``AbortRequested`` moves to ROLLING_BACK and emits ``Rollback``. ``RolledBack``
  ends ROLLED_BACK when it reports no problems, else FAILED.
* In COMMIT, until ``CommitRecorded`` arrives nothing is decided: a failed
  ``RecordCommit`` rolls back too. ``AbortRequested`` is refused from COMMIT on.
* After ``CommitRecorded``, ``StepFailed`` never rolls back: the phase stays and
  the same command is emitted again (roll forward), at most
  ``spec.max_retries`` times in a row; then FAILED, with a reason that says what
  is where. ``SwitchedOver`` before ``CommitRecorded`` is refused.
* PREFLIGHT ends REFUSED (nothing touched) when the report lists problems or the
  requested strategy is impossible on these hosts; ``Strategy.AUTO`` is resolved
  there (:func:`resolve_strategy`).

Terminal phases accept no event. The diagram in :mod:`haul.engine.diagram` is drawn
from :data:`TRANSITIONS`; keep every way out of a phase in the table.

Hooks (:class:`~haul.engine.ports.HooksPort`) are not in the table: they decide no
phase. The runner fires them inside the steps of PREPARE, FREEZE and RESTORE (a
failure there is that step's ``StepFailed``, so the commit rule above rolls back),
and best effort after the switch-over and at the end of a rollback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from haul.engine.commands import (
    AwaitPages,
    CleanUp,
    Command,
    FreezeAndDump,
    Finish,
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
from haul.engine.figures import (
    Capabilities,
    DumpFigures,
    IterationFigures,
    PreflightReport,
    RestoreFigures,
    TransferFigures,
)
from haul.engine.phases import AFTER_COMMIT, BEFORE_COMMIT, TERMINAL, Phase, Strategy
from haul.engine.policy import Decision, decide, dirty_rate_bytes_per_s

PAGE_SIZE: Final = 4096
from haul.engine.spec import MigrationSpec
from haul.errors import IllegalTransition


@dataclass(frozen=True, slots=True)
class To:
    """One way out of a (phase, event type) entry; ``when`` says when it is taken."""

    phase: Phase
    when: str = ""


def _in_order(phases: frozenset[Phase]) -> list[Phase]:
    return [p for p in Phase if p in phases]


_ROLL_BACK = (To(Phase.ROLLING_BACK),)

#: (phase, event type) -> the phases the event may lead to. No entry: IllegalTransition.
TRANSITIONS: Final[Mapping[tuple[Phase, type[Event]], tuple[To, ...]]] = MappingProxyType({
    # the way forward
    (Phase.NEW, MigrationStarted): (To(Phase.PREFLIGHT),),
    (Phase.PREFLIGHT, PreflightFinished): (
        To(Phase.PREPARE, "checks passed"),
        To(Phase.REFUSED, "problems, or strategy impossible"),
    ),
    (Phase.PREPARE, DestinationPrepared): (
        To(Phase.PRECOPY, "pre-copy"),
        To(Phase.FREEZE, "post-copy, stop-and-copy"),
    ),
    (Phase.PRECOPY, PreDumpFinished): (
        To(Phase.PRECOPY, "policy goes on"),
        To(Phase.FREEZE, "policy stops"),
    ),
    (Phase.FREEZE, SourceFrozen): (To(Phase.TRANSFER),),
    (Phase.TRANSFER, ImagesTransferred): (To(Phase.RESTORE),),
    (Phase.RESTORE, RestoredStopped): (To(Phase.COMMIT),),
    (Phase.COMMIT, CommitRecorded): (To(Phase.COMMIT, "switch over"),),
    (Phase.COMMIT, SwitchedOver): (
        To(Phase.LAZY_PAGES, "post-copy"),
        To(Phase.CLEANUP, "pre-copy, stop-and-copy"),
    ),
    (Phase.LAZY_PAGES, PagesDelivered): (To(Phase.CLEANUP),),
    (Phase.CLEANUP, CleanedUp): (To(Phase.DONE),),
    # back, before the commit
    **{(p, StepFailed): _ROLL_BACK for p in _in_order(BEFORE_COMMIT)},
    **{(p, AbortRequested): _ROLL_BACK for p in _in_order(BEFORE_COMMIT)},
    (Phase.ROLLING_BACK, RolledBack): (
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
})


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


def resolve_strategy(
    requested: Strategy, report: PreflightReport, *, source_host: str, dest_host: str
) -> tuple[Strategy | None, str]:
    """The strategy to use, or ``(None, why not)`` when the requested one is impossible.

    AUTO: pre-copy if both ends track memory changes, else post-copy if both ends have
    lazy pages (and a large enough pipe size), else stop-and-copy.
    """
    hosts = ((source_host, report.source), (dest_host, report.dest))

    def lacking(test: Callable[[Capabilities], bool], what: str) -> list[str]:
        return [f"{host} {what}" for host, caps in hosts if not test(caps)]

    no_track = lacking(lambda c: c.mem_track, "has no memory change tracking (soft-dirty)")
    no_lazy = lacking(lambda c: c.lazy_pages, "has no lazy pages (userfaultfd)") + lacking(
        lambda c: c.lazy_pipe_ok,
        "has fs.pipe-max-size too small for lazy pages "
        "(fix: sysctl fs.pipe-max-size=4194304)",
    )
    if requested is Strategy.AUTO:
        if not no_track:
            return Strategy.PRE_COPY, ""
        if not no_lazy:
            return Strategy.POST_COPY, ""
        return Strategy.STOP_AND_COPY, ""
    if requested is Strategy.PRE_COPY and no_track:
        return None, "pre-copy is impossible: " + ", ".join(no_track)
    if requested is Strategy.POST_COPY and no_lazy:
        return None, "post-copy is impossible: " + ", ".join(no_lazy)
    return requested, ""


class Migration:
    """One migration's state. Feed it events with :meth:`handle`; run what it returns."""

    def __init__(self, spec: MigrationSpec) -> None:
        self._spec = spec
        self._phase = Phase.NEW
        self._strategy = spec.strategy
        self._history: list[IterationFigures] = []
        self._decision: Decision | None = None
        self._dump: DumpFigures | None = None
        self._transfer: TransferFigures | None = None
        self._restore: RestoreFigures | None = None
        self._frozen_s: float | None = None
        self._committed = False
        #: the command emitted last: roll-forward emits it again
        self._current: Command | None = None
        #: consecutive failures of the current step after the commit
        self._failures = 0
        self._rollback: Rollback | None = None
        self._reason = ""

    def __repr__(self) -> str:
        return (
            f"<Migration {self._spec.migration_id} {self._phase.value} "
            f"{self._strategy.value}>"
        )

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
    def reason(self) -> str:
        """The final reason, once the migration is in a terminal phase."""
        return self._reason

    def stats(self) -> MigrationStats:
        precopy = sum(f.bytes_sent for f in self._history)
        dump = self._dump.bytes_written if self._dump else 0
        transfer = self._transfer.bytes_sent if self._transfer else 0
        # What went to the destination: the images and files, and the pages it received
        # (every pre-copy round's included; the rounds' own count when it could not
        # say; post-copy: the pages its lazy-pages daemon fetches).
        pages = self._restore.pages_bytes if self._restore else 0
        moved = transfer + max(pages, precopy)
        # post-copy's pages cross after the restore, outside the timed steps
        timed = transfer if self._strategy is Strategy.POST_COPY else moved
        seconds = (sum(f.duration_s for f in self._history)
                   + (self._dump.duration_s if self._dump else 0.0)
                   + (self._transfer.duration_s if self._transfer else 0.0))
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
        )

    def handle(self, event: Event) -> list[Command]:
        """Advance on ``event``; return the commands to run next (one, in this machine).

        Raises :class:`IllegalTransition`, with the machine unchanged, when the table
        has no entry for the event in this phase or a guard refuses it.
        """
        ways = TRANSITIONS.get((self._phase, type(event)))
        if ways is None:
            raise IllegalTransition(self._refusal(event))
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
        if isinstance(command, Finish):
            self._reason = command.reason
        return [command]

    # -- the choices the table cannot make ---------------------------------------------

    def _next(self, event: Event) -> tuple[Phase, Command]:
        """The next phase and its command. Guards raise before any state changes."""
        match event:
            case MigrationStarted():
                return Phase.PREFLIGHT, RunPreflight()
            case PreflightFinished(report=report):
                return self._preflight_finished(report)
            case DestinationPrepared():
                if self._strategy is Strategy.PRE_COPY:
                    return Phase.PRECOPY, StartPreDump(1)
                return Phase.FREEZE, FreezeAndDump(lazy=self._lazy)
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
                    return Phase.FREEZE, FreezeAndDump(lazy=False)
                return Phase.PRECOPY, StartPreDump(len(self._history) + 1)
            case SourceFrozen(figures=dump):
                self._dump = dump
                return Phase.TRANSFER, TransferImages(lazy=self._lazy)
            case ImagesTransferred(figures=transfer):
                self._transfer = transfer
                return Phase.RESTORE, RestoreStopped(lazy=self._lazy)
            case RestoredStopped(figures=restore):
                self._restore = restore
                return Phase.COMMIT, RecordCommit()
            case CommitRecorded():
                if self._committed:
                    raise IllegalTransition(
                        f"migration {self._spec.migration_id}: the commit is already recorded"
                    )
                self._committed = True
                return Phase.COMMIT, SwitchOver(lazy=self._lazy)
            case SwitchedOver(frozen_s=frozen_s):
                if not self._committed:
                    raise IllegalTransition(
                        f"migration {self._spec.migration_id} cannot switch over in phase "
                        "commit before the commit is recorded"
                    )
                self._frozen_s = frozen_s
                if self._lazy:
                    return Phase.LAZY_PAGES, AwaitPages()
                return Phase.CLEANUP, CleanUp()
            case PagesDelivered():
                return Phase.CLEANUP, CleanUp()
            case CleanedUp():
                return Phase.DONE, Finish(Phase.DONE, self._done_reason())
            case StepFailed():
                return self._step_failed(event)
            case AbortRequested(reason=reason):
                return self._roll_back(reason)
            case RolledBack(problems=problems):
                return self._rolled_back(problems)
        raise AssertionError(f"no rule for {type(event).__name__}")

    @property
    def _lazy(self) -> bool:
        return self._strategy is Strategy.POST_COPY

    def _preflight_finished(self, report: PreflightReport) -> tuple[Phase, Command]:
        if report.problems:
            return self._refuse("; ".join(report.problems))
        strategy, why_not = resolve_strategy(
            self._spec.strategy, report,
            source_host=self._spec.source_host, dest_host=self._spec.dest_host,
        )
        if strategy is None:
            return self._refuse(why_not)
        self._strategy = strategy
        return Phase.PREPARE, PrepareDestination(strategy)

    def _refuse(self, why: str) -> tuple[Phase, Command]:
        spec = self._spec
        return Phase.REFUSED, Finish(
            Phase.REFUSED,
            f"refused: {why}; nothing was touched, {spec.workload} is as it was on "
            f"{spec.source_host}",
        )

    def _step_failed(self, event: StepFailed) -> tuple[Phase, Command]:
        if event.phase is not self._phase:
            raise IllegalTransition(
                f"migration {self._spec.migration_id} is in phase {self._phase.value}; "
                f"cannot handle StepFailed for phase {event.phase.value}"
            )
        cause = f"{event.where}: {event.error}" if event.where else event.error
        if self._phase in BEFORE_COMMIT:
            return self._roll_back(cause)
        if not self._committed:
            return self._roll_back(f"could not record the commit decision: {cause}")
        self._failures += 1
        if self._failures <= self._spec.max_retries and self._current is not None:
            return self._phase, self._current
        return Phase.FAILED, Finish(Phase.FAILED, self._stranded(cause))

    def _roll_back(self, reason: str) -> tuple[Phase, Command]:
        self._rollback = Rollback(self._phase, reason)
        return Phase.ROLLING_BACK, self._rollback

    def _rolled_back(self, problems: tuple[str, ...]) -> tuple[Phase, Command]:
        spec = self._spec
        rollback = self._rollback or Rollback(Phase.ROLLING_BACK, "unknown")
        during = f"during {rollback.failed_phase.value} ({rollback.reason})"
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
        if isinstance(event, AbortRequested) and self._phase in AFTER_COMMIT:
            return (
                f"migration {spec.migration_id} cannot handle {name} in phase {phase}: the "
                f"commit point is passed; {spec.workload} is moving forward to {spec.dest_host}"
            )
        return f"migration {spec.migration_id} cannot handle {name} in phase {phase}"
