"""Commands: what the machine asks the runner to do next (imperative names).

A command carries everything its port call needs; the runner keeps no state of
its own about the migration. Where the order of several actions matters (a
rollback), the command lists them in that order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from haul.engine.figures import Endpoint
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookPoint


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command."""


@dataclass(frozen=True, slots=True)
class RunPreflight(Command):
    pass


@dataclass(frozen=True, slots=True)
class FireHook(Command):
    """Tell the hooks that the migration reached ``point``.

    At a point that :attr:`~haul.engine.ports.HookPoint.aborts`, a failure is the
    step's ``StepFailed``; at the others it is reported in ``HookFired.problem``.
    ``reason``: rolled-back only, why.
    """

    point: HookPoint
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PrepareDestination(Command):
    strategy: Strategy
    #: the workload's resident memory, which the destination must have room for
    needed_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SyncFiles(Command):
    """Send the workload's files while it runs: round 1 all, later rounds the changes."""

    round: int


@dataclass(frozen=True, slots=True)
class StartPreDump(Command):
    iteration: int
    #: where the round sends its pages (None: into the images directory)
    page_server: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class FreezeAndDump(Command):
    """Final dump; the source stays frozen at post-dump until ``ReleaseDump``.

    ``page_server``: where the pages go (None: post-copy, or into the images
    directory); post-copy serves them from the source's own lazy page server.
    """

    lazy: bool
    page_server: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class ReleaseDump(Command):
    """Answer the held post-dump: ``commit=True`` lets CRIU finish (post-copy: start
    serving pages, before the commit); ``commit=False`` resumes the tree."""

    commit: bool


@dataclass(frozen=True, slots=True)
class TransferImages(Command):
    """Move the non-page images (and the workload's files) to the destination."""


@dataclass(frozen=True, slots=True)
class RestoreStopped(Command):
    lazy: bool


@dataclass(frozen=True, slots=True)
class RecordCommit(Command):
    """Write the commit decision to the journal; nothing else may happen first."""


@dataclass(frozen=True, slots=True)
class KillSource(Command):
    """Kill the frozen source tree (after the commit only)."""


@dataclass(frozen=True, slots=True)
class ResumeDestination(Command):
    """Resume the restored copy (after the commit only)."""


@dataclass(frozen=True, slots=True)
class AwaitPages(Command):
    """Post-copy: wait until the destination has every page and the source served them."""


@dataclass(frozen=True, slots=True)
class CleanUp(Command):
    """After the commit: remove what is no longer needed on both hosts (best effort)."""


@dataclass(frozen=True, slots=True)
class CheckDestinationRoom(Command):
    """Before a rollback: ask the destination how much room it has left, to tell
    whether a dump that sent it pages failed because its disk is full. The source may
    be frozen meanwhile: the question is bounded by ``limit_s``."""

    limit_s: float = 5.0


class Undo(enum.Enum):
    """One action of a rollback."""

    #: answer the held post-dump with commit=False (CRIU resumes the tree)
    RELEASE_DUMP = "releasing the held dump (commit=False)"
    #: make sure the source tree runs
    RESUME_SOURCE = "resuming the workload"
    #: kill any restored copy and remove what the destination received
    DISCARD_DEST = "discarding its copy"


@dataclass(frozen=True, slots=True)
class Rollback(Command):
    """Resume the source where it is frozen, discard whatever the destination holds.

    ``steps`` run in this order, each tried whatever happened to the one before
    (best effort: what fails is reported in ``RolledBack.problems``).
    """

    failed_phase: Phase
    reason: str
    steps: tuple[Undo, ...] = ()


@dataclass(frozen=True, slots=True)
class Finish(Command):
    """Terminal: report the outcome."""

    phase: Phase
    reason: str = ""
