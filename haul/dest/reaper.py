"""The reaper of incoming migrations that went nowhere.

An incoming migration costs this host from its opening on: a CRIU page server
(stop-and-copy, pre-copy), a directory, a record, a slot among ``max_incoming``. A
source that opens one and then dies, or never meant to send anything, would leave
them forever. So the reaper discards, with everything made for it (its page server
killed, its files removed, haul/dest/incoming.py's discard), an incoming migration

- that has made no progress for ``idle_s`` (nothing arrived, no call about it, no
  page written by its page server, no work of the agent's for it), or
- that has not restored ``deadline_s`` after it was opened, whatever trickles in
  (the source's own phase limits end a real migration long before: haul/engine/timeouts.py).

Its one rule: **only a migration of which no copy exists here**: still receiving,
never restored (no restored tree, no restored mark), not being restored. A copy that
was restored waits for its source's decision however long it takes
(haul/dest/undecided.py) and is never the reaper's. The rule is checked again under
the migration's lock right before the discard (:meth:`IncomingRegistry.discard_if`):
a restore that began meanwhile wins.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import suppress

from haul.dest.criudest import RESTORED_MARK
from haul.dest.incoming import Incoming, IncomingRegistry
from haul.dest.stages import IncomingState
from haul.errors import HaulError

log = logging.getLogger(__name__)

#: the reaper looks this often at most, and at least...
MIN_EVERY_S = 0.02
MAX_EVERY_S = 30.0

#: the stages (haul/dest/stages.py) of a migration whose copy does not exist here
NEVER_RESTORED = frozenset(
    {IncomingState.OPENED, IncomingState.RECEIVING, IncomingState.RESTORE_FAILED}
)


def _newest_mtime(path: os.PathLike[str] | str) -> float:
    newest = 0.0
    with suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            with suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


class Reaper:
    """Looks at ``registry``'s migrations every ``every_s`` (default: a quarter of the
    shorter of its limits' idle and deadline times) once :meth:`start`\\ ed."""

    def __init__(self, registry: IncomingRegistry, *, every_s: float | None = None) -> None:
        self.registry = registry
        limits = registry.limits
        shortest = min(limits.idle_s, limits.deadline_s)
        self.every_s = (
            every_s if every_s is not None else min(max(shortest / 4, MIN_EVERY_S), MAX_EVERY_S)
        )
        self.task: asyncio.Task[None] | None = None

    @staticmethod
    def never_restored(item: Incoming) -> bool:
        """No copy of it exists here, nor is one being made (a failed restore's went)."""
        return (
            item.state in NEVER_RESTORED
            and item.restored_at is None
            and item.dest.tree is None
            and not (item.dest.workdir / RESTORED_MARK).exists()
        )

    def why_reap(self, item: Incoming) -> str | None:
        """Why ``item`` goes (None: it stays)."""
        if not self.never_restored(item):
            return None
        limits, intake = self.registry.limits, item.intake
        newest = _newest_mtime(item.dest.images)  # the page server writes no call
        if newest > intake.pages_mtime:
            intake.pages_mtime = newest
            intake.touch()
        now = self.registry.clock()
        if now - intake.opened_at >= limits.deadline_s:
            return f"not restored {limits.deadline_s:g} s after it was opened"
        if intake.busy == 0 and now - intake.last_progress >= limits.idle_s:
            return f"nothing arrived for it for {limits.idle_s:g} s"
        return None

    async def reap_once(self) -> list[str]:
        """Discard every migration that goes now; their ids."""
        reaped = []
        for item in self.registry.items():
            why = self.why_reap(item)
            if why is None:
                continue
            try:
                done = await self.registry.discard_if(
                    item.migration_id, lambda it: self.why_reap(it) is not None
                )
            except HaulError as exc:
                log.error(
                    "incoming migration %s: %s, but discarding it failed: %s",
                    item.migration_id,
                    why,
                    exc.one_line(),
                )
                continue
            if done:
                log.warning(
                    "incoming migration %s of %s from %s: %s and never restored: discarded "
                    "(its page server stopped, its files removed; no copy of it ran here)",
                    item.migration_id,
                    item.workload,
                    item.source or "an unnamed source",
                    why,
                )
                reaped.append(item.migration_id)
        return reaped

    def start(self) -> None:
        """Reap in the background from now on (needs a running event loop)."""
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="incoming-reaper")
            self.task.add_done_callback(_report_crash)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.reap_once()

    async def aclose(self) -> None:
        task, self.task = self.task, None
        if task is None:
            return
        task.cancel()
        # a crash was logged by _report_crash already
        await asyncio.gather(task, return_exceptions=True)


def _report_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        one = exc.one_line() if isinstance(exc, HaulError) else repr(exc)
        log.error("the reaper of incoming migrations stopped: %s", one, exc_info=exc)
