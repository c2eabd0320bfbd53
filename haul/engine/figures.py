"""Measured figures the ports report to the engine (all units in the names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: bytes in a memory page, as CRIU counts pages (x86-64's base page; the engine's
#: figures, CRIU's stats and pagemap images all count in these)
PAGE_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class ContainerRuntime:
    """The container runtime a host runs containers with, e.g. ``runc`` ``1.1.5+ds1``."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one host's kernel and CRIU allow (from FEATURE_CHECK and the host's checks)."""

    criu_version: str
    mem_track: bool
    lazy_pages: bool
    #: fs.pipe-max-size is large enough for CRIU's lazy transfer
    lazy_pipe_ok: bool = True
    #: the runtime this host runs containers with (None: it runs none)
    runtime: ContainerRuntime | None = None
    #: why it runs none (e.g. its runc is missing), when ``runtime`` is None
    no_runtime: str = ""


@dataclass(frozen=True, slots=True)
class PreflightReport:
    source: Capabilities
    dest: Capabilities
    #: problems that refuse the migration before anything is touched (empty = go)
    problems: tuple[str, ...] = ()
    #: the workload tree's resident memory and its files: what the destination
    #: needs room for, and what bounds what may be sent to it
    workload_bytes: int = 0


@dataclass(frozen=True, slots=True)
class IterationFigures:
    """One pre-copy round: what CRIU wrote and how long it took."""

    iteration: int
    pages_written: int
    pages_skipped_parent: int
    bytes_sent: int
    duration_s: float

    @property
    def throughput_bytes_per_s(self) -> float:
        return self.bytes_sent / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class FilesFigures:
    """One round of the workload's files sent while it runs (round 1: all of them)."""

    round: int
    #: regular files sent this round
    files: int
    bytes_sent: int
    #: entries removed on the destination this round
    removed: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class DumpFigures:
    """The final dump, reported when the source is frozen with its images written."""

    frozen_at_s: float  # monotonic clock of the source host
    pages_written: int
    pages_lazy: int
    bytes_written: int
    #: from the dump request to the post-dump notification (pages sent to a page
    #: server went out in that time)
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TransferFigures:
    files: int
    bytes_sent: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class RestoreFigures:
    dest_pid: int
    duration_s: float
    #: page bytes that came to the destination for the workload's memory: through its
    #: page server or a shared directory before the restore, or (post-copy) the pages
    #: its lazy-pages daemon fetches before the migration is done
    pages_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a host listens for one of a migration's channels (a CRIU page server)."""

    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class DestinationReady:
    """What the destination reports once it is prepared."""

    #: where its CRIU page server listens for the dumps' pages (None: it runs none,
    #: e.g. post-copy, or a directory both hosts share)
    page_server: Endpoint | None = None
