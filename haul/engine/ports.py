"""The ports: what the engine needs from the world, as Protocols.

``source/`` implements :class:`SourcePort` with CRIU on the source host,
``dest/`` implements :class:`DestPort` (an HTTP client of the destination
agent), ``transport/`` implements :class:`TransportPort`, and ``agent/``
implements :class:`JournalPort`. Unit tests implement them with fakes.
Every method may raise ``haul.errors.HaulError``; the runner turns that into
a ``StepFailed`` event for the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from haul.engine.figures import (
    Capabilities,
    DumpFigures,
    IterationFigures,
    RestoreFigures,
    TransferFigures,
)
from haul.engine.phases import Phase, Strategy


class SourcePort(Protocol):
    async def capabilities(self) -> Capabilities: ...

    async def check_workload(self) -> int:
        """Raise unless the workload exists and can be dumped; return its resident bytes."""
        ...

    async def pre_dump(self, iteration: int) -> IterationFigures:
        """One pre-copy round while the workload runs (needs mem_track)."""
        ...

    async def freeze_and_dump(self, lazy: bool) -> DumpFigures:
        """Final dump. Returns once CRIU is at post-dump: images written, tree frozen.

        CRIU is held there until :meth:`release` answers it.
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

    async def prepare(self, strategy: Strategy) -> None: ...

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
        """Kill any restored copy and remove what was received (rollback)."""
        ...

    async def cleanup(self) -> None: ...


class TransportPort(Protocol):
    async def transfer_images(self) -> TransferFigures:
        """Move the non-page images (and the workload's data) to the destination, checked."""
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
