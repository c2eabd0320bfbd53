"""Events: what happened, fed into the migration machine (past-tense names).

Every piece of data a port reports travels in an event, and the machine passes on
what another port needs in its next command (the destination's page server goes
from ``DestinationPrepared`` into ``StartPreDump`` and ``FreezeAndDump``). Clock
readings (``started_s``, ``at_s``) are the runner's monotonic clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from haul.engine.figures import (
    DestinationReady,
    DumpFigures,
    FilesFigures,
    IterationFigures,
    PreflightReport,
    RestoreFigures,
    TransferFigures,
)
from haul.engine.phases import Phase
from haul.engine.ports import HookPoint


class Part(enum.Enum):
    """Which port a failed step was calling."""

    SOURCE = "source"
    DEST = "dest"
    TRANSPORT = "transport"
    JOURNAL = "journal"
    HOOKS = "hooks"
    #: none: a timeout between calls, or a bug
    RUNNER = "runner"


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event."""


@dataclass(frozen=True, slots=True)
class MigrationStarted(Event):
    pass


@dataclass(frozen=True, slots=True)
class PreflightFinished(Event):
    report: PreflightReport


@dataclass(frozen=True, slots=True)
class HookFired(Event):
    """The hooks at ``point`` ran. ``problem``: one line when a hook that cannot abort
    the migration failed (an aborting hook's failure is a ``StepFailed`` instead)."""

    point: HookPoint
    problem: str = ""


@dataclass(frozen=True, slots=True)
class DestinationPrepared(Event):
    ready: DestinationReady = field(default_factory=DestinationReady)


@dataclass(frozen=True, slots=True)
class FilesSynced(Event):
    figures: FilesFigures


@dataclass(frozen=True, slots=True)
class PreDumpFinished(Event):
    figures: IterationFigures


@dataclass(frozen=True, slots=True)
class SourceFrozen(Event):
    """The final dump reached post-dump: images written, source tree frozen, not killed.

    ``started_s``: when the dump was asked for (the frozen window is measured from it).
    """

    figures: DumpFigures
    started_s: float | None = None


@dataclass(frozen=True, slots=True)
class DumpReleased(Event):
    """The held post-dump was answered (``commit=True``: CRIU finishes; post-copy: it
    starts serving the pages)."""

    commit: bool


@dataclass(frozen=True, slots=True)
class ImagesTransferred(Event):
    figures: TransferFigures


@dataclass(frozen=True, slots=True)
class RestoredStopped(Event):
    """The destination restored its copy and left it stopped."""

    figures: RestoreFigures


@dataclass(frozen=True, slots=True)
class CommitRecorded(Event):
    """The commit decision is in the journal: the point of no return is passed."""


@dataclass(frozen=True, slots=True)
class SourceKilled(Event):
    """The frozen source tree is dead."""


@dataclass(frozen=True, slots=True)
class DestinationResumed(Event):
    """The destination's copy runs. ``at_s``: when it was seen running."""

    at_s: float | None = None


@dataclass(frozen=True, slots=True)
class PagesDelivered(Event):
    """Post-copy: every page has reached the destination."""


@dataclass(frozen=True, slots=True)
class CleanedUp(Event):
    #: one line per cleanup step that failed (they change nothing after the commit)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StepFailed(Event):
    """A command failed; ``where`` says which host or part, ``error`` one line."""

    phase: Phase
    error: str
    where: str = ""
    part: Part = Part.RUNNER


@dataclass(frozen=True, slots=True)
class AbortRequested(Event):
    reason: str = "aborted by the operator"


@dataclass(frozen=True, slots=True)
class DestinationRoomChecked(Event):
    """How much room the destination has left where it keeps this migration's images
    (None: it could not say)."""

    free_bytes: int | None


@dataclass(frozen=True, slots=True)
class RolledBack(Event):
    """The rollback ran; ``problems`` is empty when the source runs and the destination is clean."""

    problems: tuple[str, ...] = ()
