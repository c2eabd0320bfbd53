"""CRIU's stats images (stats-dump, stats-restore), decoded into typed values.

A stats image is a service image: two little-endian u32 magics (the service
magic, then the stats magic), then one entry framed as a u32 length and a
``stats_entry`` protobuf message. CRIU measures times in microseconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from haul.criu.proto import stats_pb2
from haul.engine.figures import PAGE_SIZE
from haul.errors import CriuError

IMG_SERVICE_MAGIC = 0x55105940
STATS_MAGIC = 0x57093306

DUMP_STATS_FILE = "stats-dump"
RESTORE_STATS_FILE = "stats-restore"


@dataclass(frozen=True, slots=True)
class DumpStats:
    freezing_time_us: int
    frozen_time_us: int
    memdump_time_us: int
    memwrite_time_us: int
    pages_scanned: int
    pages_skipped_parent: int
    pages_written: int
    pages_lazy: int

    @property
    def bytes_written(self) -> int:
        return self.pages_written * PAGE_SIZE


@dataclass(frozen=True, slots=True)
class RestoreStats:
    forking_time_us: int
    restore_time_us: int
    pages_compared: int
    pages_skipped_cow: int
    pages_restored: int


def _read_entry(path: Path) -> stats_pb2.stats_entry:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CriuError(f"cannot read {path}: {exc.strerror}", request="stats") from exc
    if len(raw) < 12:
        raise CriuError(f"{path} is too short to be a stats image", request="stats")
    service, magic, size = struct.unpack_from("<III", raw)
    if service != IMG_SERVICE_MAGIC or magic != STATS_MAGIC:
        raise CriuError(f"{path} is not a CRIU stats image (magic {magic:#x})", request="stats")
    body = raw[12 : 12 + size]
    if len(body) != size:
        raise CriuError(f"{path} is truncated", request="stats")
    entry = stats_pb2.stats_entry()
    try:
        entry.ParseFromString(body)
    except DecodeError as exc:
        raise CriuError(f"{path} holds a malformed stats entry", request="stats") from exc
    return entry


def read_dump_stats(work_dir: Path) -> DumpStats | None:
    """The stats of the last dump or pre-dump run with ``work_dir``; None if CRIU wrote none."""
    path = work_dir / DUMP_STATS_FILE
    if not path.exists():
        return None
    entry = _read_entry(path)
    if not entry.HasField("dump") or not entry.dump.IsInitialized():
        raise CriuError(f"{path} holds no complete dump stats", request="stats")
    d = entry.dump
    return DumpStats(
        freezing_time_us=d.freezing_time,
        frozen_time_us=d.frozen_time,
        memdump_time_us=d.memdump_time,
        memwrite_time_us=d.memwrite_time,
        pages_scanned=d.pages_scanned,
        pages_skipped_parent=d.pages_skipped_parent,
        pages_written=d.pages_written,
        pages_lazy=d.pages_lazy,
    )


def read_restore_stats(work_dir: Path) -> RestoreStats | None:
    path = work_dir / RESTORE_STATS_FILE
    if not path.exists():
        return None
    entry = _read_entry(path)
    if not entry.HasField("restore") or not entry.restore.IsInitialized():
        raise CriuError(f"{path} holds no complete restore stats", request="stats")
    r = entry.restore
    return RestoreStats(
        forking_time_us=r.forking_time,
        restore_time_us=r.restore_time,
        pages_compared=r.pages_compared,
        pages_skipped_cow=r.pages_skipped_cow,
        pages_restored=r.pages_restored,
    )
