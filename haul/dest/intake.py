"""What an incoming migration takes in over HTTP: counted, checked against the disk,
written off the event loop, and root's alone. docs/limits.md says it for operators.

- **A budget.** Each incoming migration may hold what its pre-flight claimed (the
  workload's memory and files) times a margin, plus a slack
  (:meth:`IntakeLimits.budget`). Its :class:`Intake` counts what it holds: every
  image and data file received, and :data:`ENTRY_BYTES` for each directory, link or
  FIFO made; a data file sent again replaces its earlier self, a removed one frees
  its bytes. An upload is counted chunk by chunk as it arrives: the chunk that would
  take the migration over its budget is refused (:class:`~haul.errors.OverBudget`),
  and the caller removes what that upload had written.
- **The disk, as it fills.** Whatever the claim said, the file system the bytes land
  on must keep ``reserve_bytes`` free for the journal: the chunk that would eat into
  the reserve is refused (:class:`~haul.errors.NoRoom`). The free space is read
  again at least every :data:`ROOM_CHECK_BYTES` (others write to that disk too).
- **Progress.** Every call about the migration (:meth:`Intake.touch`), every chunk,
  and work the agent does for it (:meth:`Intake.working`) is progress; the reaper
  (haul/dest/reaper.py) discards a migration that never restored and made none for a
  while.
- **Off the event loop.** :func:`write_chunks` writes and hashes in a worker thread,
  about :data:`WRITE_BATCH` bytes at a time: a slow disk holds up that upload only.
- **Private.** Images hold the workload's memory and state, so what arrives is root's
  alone whatever the agent's umask: directories 0700 (:func:`private_dir`), image
  files 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from haul.errors import NoRoom, OverBudget, TooMany
from haul.workload.footprint import ENTRY_BYTES

__all__ = [
    "ENTRY_BYTES",
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "Intake",
    "IntakeLimits",
    "disk_free",
    "private_dir",
    "write_chunks",
]

#: the mode of every directory an incoming migration's images pass through
PRIVATE_DIR = 0o700
#: the mode of a received image file
PRIVATE_FILE = 0o600
#: bytes gathered before a worker thread writes them
WRITE_BATCH = 1 << 20
#: the disk's free space is read again after at most this many bytes arrived
ROOM_CHECK_BYTES = 1 << 20

MIB = 1 << 20

#: the free bytes of the file system ``path`` is on (None: it cannot be told)
FreeBytes = Callable[[Path], int | None]
Clock = Callable[[], float]


def disk_free(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use where ``path`` is (or would be)."""
    here = path
    while not here.exists() and here.parent != here:
        here = here.parent
    try:
        st = os.statvfs(here)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


@dataclass(frozen=True, slots=True)
class IntakeLimits:
    """The agent's ``[agent.limits]`` as incoming migrations use them."""

    #: incoming migrations open (or opening) here at once
    max_incoming: int = 8
    #: no progress for this long, never restored: discarded
    idle_s: float = 300.0
    #: not restored this long after its opening: discarded
    deadline_s: float = 21600.0
    #: the budget: the pre-flight's claim times this, plus slack_bytes
    margin: float = 1.25
    slack_bytes: int = 64 << 20
    #: free space an upload may not take (the journal's)
    reserve_bytes: int = 64 << 20

    def budget(self, needed_bytes: int) -> int:
        """What an incoming migration whose pre-flight claimed ``needed_bytes`` may hold."""
        return int(needed_bytes * self.margin) + self.slack_bytes

    def admit(self, migration_id: str, open_now: int, host: str) -> None:
        """Raise TooMany when ``open_now`` incoming migrations leave no room for one more."""
        if open_now >= self.max_incoming:
            raise TooMany(
                f"{host} takes no more incoming migrations now: {open_now} "
                f"{'is' if open_now == 1 else 'are'} open here ([agent.limits] max_incoming "
                f"= {self.max_incoming}); nothing of {migration_id} was made here"
            )

    def check_room(self, what: str, needed_bytes: int, where: Path, free: int | None) -> None:
        """Before ``what`` (an incoming migration) is made: its claim fits in ``free``
        (bytes free where it will land) with the journal's reserve left; NoRoom
        otherwise."""
        if free is not None and free - needed_bytes < self.reserve_bytes:
            raise NoRoom(
                f"no room for {what} here: {_mib(free)} free in {where}, its pre-flight "
                f"claims {_mib(needed_bytes)} and {_mib(self.reserve_bytes)} are kept for "
                "the journal ([agent.limits] journal_reserve_bytes); nothing was made here"
            )


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _write_batch(fd: int, batch: list[bytes], digest: Digest) -> None:
    for chunk in batch:
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


async def write_chunks(fd: int, chunks: AsyncIterator[bytes], digest: Digest) -> int:
    """Write every chunk to ``fd`` and feed it to ``digest``, in a worker thread about
    WRITE_BATCH bytes at a time (the event loop only gathers them); how many bytes."""
    size = pending = 0
    batch: list[bytes] = []
    async for chunk in chunks:
        batch.append(chunk)
        pending += len(chunk)
        if pending >= WRITE_BATCH:
            await asyncio.to_thread(_write_batch, fd, batch, digest)
            size, pending, batch = size + pending, 0, []
    if batch:
        await asyncio.to_thread(_write_batch, fd, batch, digest)
    return size + pending


class _Upload:
    """One upload in flight: what it has brought, and what it adds to what is held."""

    def __init__(self, intake: Intake, key: str, where: Path) -> None:
        self.intake = intake
        self.key = key
        self.where = where
        #: what this key held when the upload began (a file sent again replaces it)
        self.before = intake.held.get(key, 0)
        self.size = 0
        #: bytes beyond ``before``: what the upload adds to the migration's charge
        self.excess = 0
        self._free: int | None = None
        self._since_check = 0

    def _check_room(self, n: int) -> None:
        intake = self.intake
        if self._free is None or self._since_check + n > ROOM_CHECK_BYTES:
            self._free, self._since_check = intake.free_bytes(self.where), 0
        if self._free is None:
            return
        left = self._free - self._since_check - n
        if left < intake.limits.reserve_bytes:
            raise NoRoom(
                f"no room for incoming migration {intake.migration_id} here: "
                f"{_mib(max(left, 0))} would be left free in {self.where}, "
                f"{_mib(intake.limits.reserve_bytes)} kept for the journal ([agent.limits] "
                "journal_reserve_bytes); no copy of it runs here"
            )
        self._since_check += n

    async def chunks(self, source: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        intake = self.intake
        async for chunk in source:
            n = len(chunk)
            excess = max(0, self.size + n - self.before)
            intake.check_budget(excess - self.excess)
            self._check_room(n)
            intake.in_flight += excess - self.excess
            self.excess = excess
            self.size += n
            intake.touch()
            yield chunk


class Intake:
    """What one incoming migration holds here and may still take, and when it last
    made progress. ``budget_bytes`` None: no budget (a copy an earlier agent left)."""

    def __init__(
        self,
        migration_id: str = "",
        *,
        needed_bytes: int = 0,
        limits: IntakeLimits | None = None,
        free_bytes: FreeBytes = disk_free,
        clock: Clock = time.monotonic,
        bounded: bool = True,
    ) -> None:
        self.migration_id = migration_id
        self.needed_bytes = needed_bytes
        self.limits = limits if limits is not None else IntakeLimits()
        self.budget_bytes: int | None = self.limits.budget(needed_bytes) if bounded else None
        self.free_bytes = free_bytes
        self.clock = clock
        #: key ("image/NAME", "data/PATH", "blob/DIGEST") -> bytes held for it
        self.held: dict[str, int] = {}
        self._held_total = 0
        #: what uploads in flight add to what is held
        self.in_flight = 0
        self.opened_at = clock()
        self.last_progress = self.opened_at
        #: the agent works for it (e.g. unpacks an image): that is progress throughout
        self.busy = 0
        #: the newest modification time seen in its images (the page server's writes)
        self.pages_mtime = 0.0

    @classmethod
    def unbounded(cls) -> Intake:
        return cls(bounded=False)

    @property
    def charged(self) -> int:
        """Bytes held, and what uploads in flight add to them."""
        return self._held_total + self.in_flight

    def touch(self) -> None:
        self.last_progress = self.clock()

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """The agent works for this migration meanwhile (it makes progress)."""
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            self.touch()

    def check_budget(self, more: int) -> None:
        """Raise OverBudget unless ``more`` bytes fit in the budget."""
        if self.budget_bytes is None or more <= 0:
            return
        would = self.charged + more
        if would > self.budget_bytes:
            limits = self.limits
            raise OverBudget(
                f"incoming migration {self.migration_id} is over its byte budget: "
                f"{_mib(would)} would be held here, {_mib(self.budget_bytes)} allowed (its "
                f"pre-flight's {_mib(self.needed_bytes)} x {limits.margin:g} + "
                f"{_mib(limits.slack_bytes)}; [agent.limits] upload_margin, "
                "upload_slack_bytes); no copy of it runs here"
            )

    def hold(self, key: str, size: int) -> None:
        """``key`` holds ``size`` bytes now (instead of what it held), within the budget."""
        self.check_budget(size - self.held.get(key, 0))
        self._held_total += size - self.held.get(key, 0)
        self.held[key] = size
        self.touch()

    def release(self, key: str) -> None:
        """``key`` holds nothing any more (it was removed)."""
        self._held_total -= self.held.pop(key, 0)
        self.touch()

    @contextlib.asynccontextmanager
    async def upload(
        self, key: str, chunks: AsyncIterator[bytes], where: Path
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """``chunks`` counted as they arrive for ``key``, written where ``where`` is;
        when the block ends normally ``key`` holds what arrived, otherwise what it held
        before (the writer removes what it wrote)."""
        upload = _Upload(self, key, where)
        metered = upload.chunks(chunks)
        try:
            yield metered
        except BaseException:
            self.in_flight -= upload.excess
            raise
        else:
            self.in_flight -= upload.excess
            self._held_total += upload.size - self.held.get(key, 0)
            self.held[key] = upload.size
        finally:
            await metered.aclose()


def private_dir(path: Path) -> Path:
    """``path`` as a directory only root may enter: made 0700 with whatever it lacks
    above it (each 0700 too), or set to 0700 when it is there already."""
    missing = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile, by another request that sets its mode
        os.chmod(d, PRIVATE_DIR)  # a umask may have taken bits root needs none of
    os.chmod(path, PRIVATE_DIR)
    return path
