"""Events: what happened, fed into the migration machine (past-tense names)."""

from __future__ import annotations

from dataclasses import dataclass

from haul.engine.figures import (
    DumpFigures,
    IterationFigures,
    PreflightReport,
    RestoreFigures,
    TransferFigures,
)
from haul.engine.phases import Phase


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
class DestinationPrepared(Event):
    pass


@dataclass(frozen=True, slots=True)
class PreDumpFinished(Event):
    figures: IterationFigures


@dataclass(frozen=True, slots=True)
class SourceFrozen(Event):
    """The final dump reached post-dump: images written, source tree frozen, not killed."""

    figures: DumpFigures


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
class SwitchedOver(Event):
    """The source tree is killed and the destination copy resumed.

    Post-copy: the destination copy is resumed; the source stays stopped, serving pages.
    ``frozen_s``: how long the workload was frozen, when the reporter measured it.
    """

    frozen_s: float | None = None


@dataclass(frozen=True, slots=True)
class PagesDelivered(Event):
    """Post-copy: every page has reached the destination."""


@dataclass(frozen=True, slots=True)
class CleanedUp(Event):
    pass


@dataclass(frozen=True, slots=True)
class StepFailed(Event):
    """A command failed; ``where`` says which host or part, ``error`` one line."""

    phase: Phase
    error: str
    where: str = ""


@dataclass(frozen=True, slots=True)
class AbortRequested(Event):
    reason: str = "aborted by the operator"


@dataclass(frozen=True, slots=True)
class RolledBack(Event):
    """The rollback ran; ``problems`` is empty when the source runs and the destination is clean."""

    problems: tuple[str, ...] = ()
