"""The migration journal: one append-only JSON-lines file per migration.

``STATE/journal/ID.jsonl`` holds one line per record, in the order they were
decided. :meth:`Journal.append` returns only once the line is written and
fsync'ed (and, for a new file, once the directory entry is too), so a record
the engine was told is durable survives a crash of the agent or the machine.
This is the engine's :class:`haul.engine.ports.JournalPort`.

A crash can leave at most the last line half written; reading skips it, and
the first append after a restart cuts it off before writing. A migration is
open while its last record's phase is not terminal: those are what a
restarted agent must recover (roll back before the commit, forward after).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from haul.engine.phases import TERMINAL, Phase
from haul.engine.ports import JournalPort, JournalRecord
from haul.errors import HaulError, UsageError

SUFFIX = ".jsonl"
MIGRATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class JournalError(HaulError):
    """A journal could not be written or read."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    record: JournalRecord
    #: when it was appended (seconds since the epoch)
    time_s: float


@dataclass(frozen=True, slots=True)
class OpenMigration:
    migration_id: str
    last: JournalEntry

    @property
    def phase(self) -> Phase:
        return self.last.record.phase


def check_migration_id(migration_id: str) -> str:
    if not MIGRATION_ID_RE.fullmatch(migration_id):
        raise UsageError(
            f"bad migration id {migration_id!r}: 1-128 of A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return migration_id


def _encode(record: JournalRecord, time_s: float) -> bytes:
    line = json.dumps(
        {
            "time_s": round(time_s, 6),
            "migration_id": record.migration_id,
            "phase": record.phase.value,
            "cause": record.cause,
            "detail": record.detail,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return line.encode() + b"\n"


def _decode(line: bytes) -> JournalEntry:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a record is not a JSON object")
    record = JournalRecord(
        migration_id=str(data["migration_id"]),
        phase=Phase(data["phase"]),
        cause=str(data["cause"]),
        detail=str(data.get("detail", "")),
    )
    return JournalEntry(record=record, time_s=float(data["time_s"]))


class Journal:
    """Every migration's journal in one directory. No I/O until the first call."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: migration ids whose file this process has checked for a torn last line
        self._checked: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, migration_id: str) -> Path:
        return self.directory / f"{check_migration_id(migration_id)}{SUFFIX}"

    async def append(self, record: JournalRecord) -> None:
        """Durably record ``record``; return only once it is on disk."""
        path = self.path(record.migration_id)
        line = _encode(record, time.time())
        lock = self._locks.setdefault(record.migration_id, asyncio.Lock())
        async with lock:
            # the thread finishes its write even if this coroutine is cancelled meanwhile
            await asyncio.to_thread(self._append_sync, record.migration_id, path, line)

    def _append_sync(self, migration_id: str, path: Path, line: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if migration_id not in self._checked:
                    _cut_torn_tail(fd)
                    self._checked.add(migration_id)
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise JournalError(f"cannot append to the journal {path}: {exc.strerror}") from exc

    def read(self, migration_id: str) -> list[JournalEntry]:
        """Every complete record of one migration, oldest first ([] if it has none)."""
        return self._read_path(self.path(migration_id))

    def _read_path(self, path: Path) -> list[JournalEntry]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise JournalError(f"cannot read the journal {path}: {exc.strerror}") from exc
        lines = raw.split(b"\n")
        # the last element is b"" after a complete line, or a torn line after a crash
        entries = []
        for number, line in enumerate(lines[:-1], start=1):
            try:
                entries.append(_decode(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise JournalError(
                    f"the journal {path} is damaged at line {number}: {exc}"
                ) from None
        return entries

    def migration_ids(self) -> list[str]:
        try:
            names = sorted(p.name for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return []
        ids = [name.removesuffix(SUFFIX) for name in names]
        return [i for i in ids if MIGRATION_ID_RE.fullmatch(i)]

    def open_migrations(self) -> list[OpenMigration]:
        """Migrations whose last record is not terminal: what a restarted agent recovers."""
        found = []
        for migration_id in self.migration_ids():
            entries = self.read(migration_id)
            if entries and entries[-1].record.phase not in TERMINAL:
                found.append(OpenMigration(migration_id, entries[-1]))
        return found


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _cut_torn_tail(fd: int) -> None:
    """Cut a half-written last line (left by a crash) so the next line starts clean."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail_start = max(0, size - 64 * 1024)
    tail = os.pread(fd, size - tail_start, tail_start)
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    while cut < 0 and tail_start > 0:
        # a torn line longer than the tail read: look further back
        tail_start = max(0, tail_start - 64 * 1024)
        tail = os.pread(fd, size - tail_start, tail_start)
        cut = tail.rfind(b"\n")
    os.ftruncate(fd, tail_start + cut + 1 if cut >= 0 else 0)
    os.fsync(fd)


def _check_protocol(journal: Journal) -> JournalPort:
    """mypy checks here that Journal implements the engine's JournalPort."""
    return journal
