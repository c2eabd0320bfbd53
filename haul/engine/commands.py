"""Commands: what the machine asks the runner to do next (imperative names)."""

from __future__ import annotations

from dataclasses import dataclass

from haul.engine.phases import Phase, Strategy


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command."""


@dataclass(frozen=True, slots=True)
class RunPreflight(Command):
    pass


@dataclass(frozen=True, slots=True)
class PrepareDestination(Command):
    strategy: Strategy


@dataclass(frozen=True, slots=True)
class StartPreDump(Command):
    iteration: int


@dataclass(frozen=True, slots=True)
class FreezeAndDump(Command):
    """Final dump; the source stays frozen at post-dump until Commit or Rollback."""

    lazy: bool


@dataclass(frozen=True, slots=True)
class TransferImages(Command):
    """Move the non-page images to the destination.

    ``lazy`` (post-copy): first answer the held post-dump with ``commit=True``, so
    that CRIU starts serving the pages the destination will fault in.
    """

    lazy: bool = False


@dataclass(frozen=True, slots=True)
class RestoreStopped(Command):
    lazy: bool


@dataclass(frozen=True, slots=True)
class RecordCommit(Command):
    """Write the commit decision to the journal; nothing else may happen first."""


@dataclass(frozen=True, slots=True)
class SwitchOver(Command):
    """Kill the frozen source (or, post-copy, keep it serving pages) and resume the destination."""

    lazy: bool


@dataclass(frozen=True, slots=True)
class AwaitPages(Command):
    pass


@dataclass(frozen=True, slots=True)
class CleanUp(Command):
    pass


@dataclass(frozen=True, slots=True)
class Rollback(Command):
    """Resume the source where it is frozen, discard whatever the destination holds."""

    failed_phase: Phase
    reason: str


@dataclass(frozen=True, slots=True)
class Finish(Command):
    """Terminal: report the outcome."""

    phase: Phase
    reason: str = ""
