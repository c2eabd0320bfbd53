"""The ports: what the engine needs from the world, as Protocols.

``source/`` implements :class:`SourcePort` with CRIU on the source host,
``dest/`` implements :class:`DestPort` (an HTTP client of the destination
agent), ``transport/`` implements :class:`TransportPort`, ``agent/``
implements :class:`JournalPort`, and ``cutover/`` implements :class:`HooksPort`
(hook scripts, load-balancer cutovers). Unit tests implement them with fakes.
Every method may raise ``haul.errors.HaulError``; the runner turns that into
a ``StepFailed`` event for the machine (hooks: see :class:`HooksPort`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from haul.engine.figures import (
    Capabilities,
    DestinationReady,
    DumpFigures,
    Endpoint,
    FilesFigures,
    IterationFigures,
    RestoreFigures,
    TransferFigures,
)
from haul.engine.phases import Phase, Strategy


class SourcePort(Protocol):
    async def capabilities(self) -> Capabilities: ...

    async def check_workload(self) -> int:
        """Raise unless the workload exists and can be dumped; return the bytes the
        destination needs room for: its resident memory and its files
        (haul/workload/footprint.py)."""
        ...

    async def pre_dump(self, iteration: int, page_server: Endpoint | None) -> IterationFigures:
        """One pre-copy round while the workload runs (needs mem_track); its pages go
        to ``page_server`` (None: into the images directory)."""
        ...

    async def freeze_and_dump(self, lazy: bool, page_server: Endpoint | None) -> DumpFigures:
        """Final dump. Returns once CRIU is at post-dump: images written, tree frozen.

        Pages go to ``page_server`` (None: into the images directory; ``lazy``: they
        stay here and this host's lazy page server serves them after :meth:`release`).
        CRIU is held there until :meth:`release` answers it; :meth:`release` and
        :meth:`resume` are harmless when the dump never got that far.
        """
        ...

    async def release(self, commit: bool) -> None:
        """Answer the held post-dump. ``commit=False``: CRIU resumes the tree (rollback).
        ``commit=True``: CRIU finishes; the tree stays stopped (and, post-copy, its
        page server serves the destination) until :meth:`kill`."""
        ...

    async def wait_pages_served(self) -> None:
        """Post-copy: return when the lazy page server has served every page."""
        ...

    async def kill(self) -> None:
        """Kill the frozen source tree (after the commit only)."""
        ...

    async def resume(self) -> None:
        """Make sure the source tree runs (rollback); harmless if it already does."""
        ...

    async def cleanup(self) -> None: ...


class DestPort(Protocol):
    async def capabilities(self) -> Capabilities: ...

    async def check_free(self, workload: str, needed_bytes: int) -> None:
        """Raise unless the name is free on the destination and there is room."""
        ...

    async def prepare(self, strategy: Strategy, needed_bytes: int) -> DestinationReady:
        """Make room for the migration (``needed_bytes``: the workload's resident memory
        and files, as the source's ``check_workload`` counts them) and start what
        receives it; say where its page server listens, if it runs one."""
        ...

    async def restore(self, lazy: bool) -> RestoreFigures:
        """Restore the received images with the tree left stopped."""
        ...

    async def resume(self) -> None:
        """Resume the restored tree (after the commit only)."""
        ...

    async def wait_pages(self) -> None:
        """Post-copy: return when every page has arrived."""
        ...

    async def discard(self) -> None:
        """Kill any restored copy and remove what was received (rollback); harmless
        when nothing was prepared."""
        ...

    async def room_left(self) -> int | None:
        """Bytes left where the destination keeps this migration's images (None: unknown)."""
        ...

    async def cleanup(self) -> None: ...


class TransportPort(Protocol):
    async def sync_files(self, round: int) -> FilesFigures:
        """While the workload runs: round 1 sends every file of the workload, later rounds
        what changed since the round before (new, changed, removed), checked where it
        lands."""
        ...

    async def transfer_images(self) -> TransferFigures:
        """Inside the frozen window: the non-page images, and the workload's files that
        changed since the last :meth:`sync_files` round (all of them if none ran),
        checked where they land."""
        ...


@dataclass(frozen=True, slots=True)
class JournalRecord:
    migration_id: str
    phase: Phase
    #: the event or decision that led here, e.g. "SourceFrozen" or "commit"
    cause: str
    detail: str = ""


class JournalPort(Protocol):
    async def append(self, record: JournalRecord) -> None:
        """Durably record ``record``; return only once it is on disk."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float: ...


class HookPoint(enum.Enum):
    """The fixed points at which the runner calls :meth:`HooksPort.fire`, in order."""

    #: the pre-flight passed; nothing is touched yet
    PRE_MIGRATE = "pre-migrate"
    #: right before the final dump freezes the workload (not before pre-dumps)
    PRE_FREEZE = "pre-freeze"
    #: the destination restored its copy, stopped; the commit is not recorded yet
    RESTORED = "restored"
    #: the commit is recorded and the destination copy runs
    POST_COMMIT = "post-commit"
    #: a rollback ended (the workload runs on the source, if the rollback was complete)
    ROLLED_BACK = "rolled-back"

    @property
    def aborts(self) -> bool:
        """True before the commit: a failure here aborts the migration (rollback).
        After it (post-commit, rolled-back) a failure is reported, not fatal."""
        return self in _ABORTING


_ABORTING = frozenset({HookPoint.PRE_MIGRATE, HookPoint.PRE_FREEZE, HookPoint.RESTORED})


@dataclass(frozen=True, slots=True)
class HookFacts:
    """What a hook is told about the migration when it is called."""

    migration_id: str
    workload: str
    source_host: str
    dest_host: str
    #: where the workload answers on the source and on the destination ("" = not known)
    source_address: str
    dest_address: str
    #: the strategy in use (resolved: never AUTO once the pre-flight passed)
    strategy: Strategy
    #: the migration's phase when the hook is called
    phase: Phase
    #: rolled-back only: why the migration rolled back, and what the rollback left
    reason: str = ""


class HooksPort(Protocol):
    """Hooks: scripts, load-balancer cutovers, anything told about a migration's progress.

    The runner calls :meth:`fire` at each :class:`HookPoint` (hooks=None: never):

    * ``PRE_MIGRATE`` first in PREPARE, before the destination is prepared;
    * ``PRE_FREEZE`` first in FREEZE, before the final dump (once per migration);
    * ``RESTORED`` in RESTORE, after the destination restored its copy stopped;
    * ``POST_COMMIT`` after the switch-over (the destination copy runs; post-copy:
      before its last pages have arrived);
    * ``ROLLED_BACK`` last in a rollback, if ``PRE_MIGRATE`` was fired.

    A ``HaulError`` at a point that :attr:`~HookPoint.aborts` fails that step: the
    migration rolls back and the workload keeps running on the source. At
    ``POST_COMMIT`` and ``ROLLED_BACK`` it goes to ``Outcome.problems`` and changes
    nothing. Its message is one line that names the hook and the point. ``fire``
    is cancelled when the migration is aborted before the commit; it must then
    stop what it started (and let ``CancelledError`` through).
    """

    async def fire(self, point: HookPoint, facts: HookFacts) -> None: ...
