"""The rounds of a workload's files during one migration: what the destination holds.

While the workload runs, round 1 sends every file and each later round what changed
since the round before (haul/transport/treeplan.py); inside the frozen window the
last round sends only what changed since then, and there nothing may change any
more. A file that changes while a running round reads it is sent again by a later
round: each round compares with the scan taken at the start of the round before,
and a file read after that scan has a newer ctime than the scan says. Timestamps
tick coarsely (a jiffy, or a second on some filesystems), so a file written shortly
before a scan might be written again within the same tick, unseen: such a file is
held as unsettled and sent once more by the next round (the last, frozen round
needs no next one).

What the destination holds is known after each round: the round's scan, except for
the files that round could not send as scanned (gone meanwhile, or changed while
read): of those the destination keeps what it had. A round that fails part-way
leaves the destination unknown: every later round is refused, and the migration
rolls back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from haul.engine.figures import FilesFigures
from haul.errors import TransportError
from haul.transport.treeplan import Plan, diff
from haul.transport.treescan import Entry, Kind, Manifest, scan


@dataclass(frozen=True, slots=True)
class Sent:
    """What applying a plan did."""

    files: int = 0
    bytes_sent: int = 0
    #: files of the plan not sent as scanned: gone, or changed while they were read
    unsent: tuple[str, ...] = ()


#: applies a plan on the destination
Apply = Callable[[Plan], Awaitable[Sent]]


#: a file changed this long before a scan may change again unseen within its tick
RACY_WINDOW_NS = 1_000_000_000
#: a ctime no file has: the next round sends that file again
UNSETTLED = -1


def settled(
    held: Manifest, now: Manifest, unsent: Collection[str], racy_since_ns: int
) -> dict[str, Entry]:
    """What the destination holds after a round that scanned ``now``: an unsent file
    that replaced a file there leaves the old one (sent again next round); any other
    unsent file is not there. A file changed since ``racy_since_ns`` is unsettled."""
    after = {
        path: replace(e, ctime_ns=UNSETTLED)
        if e.kind is Kind.FILE and max(e.mtime_ns, e.ctime_ns) >= racy_since_ns
        else e
        for path, e in now.items()
    }
    for path in unsent:
        was = held.get(path)
        if was is not None and was.kind is Kind.FILE:
            after[path] = was
        else:
            after.pop(path, None)
    return after


@dataclass
class FileRounds:
    root: Path
    #: what the destination holds, as of the last round
    held: dict[str, Entry] = field(default_factory=dict)
    history: list[FilesFigures] = field(default_factory=list)
    #: how long before a scan a change makes a file unsettled (see the module's docstring)
    racy_window_ns: int = RACY_WINDOW_NS
    _broken: bool = False

    async def run(self, number: int, apply: Apply, *, frozen: bool) -> FilesFigures:
        """One round: scan, send the difference, record what the destination holds.
        ``frozen``: the workload cannot change its files, so every file must go as
        scanned."""
        if self._broken:
            raise TransportError(
                "an earlier round of the workload's files failed part-way; what the "
                "destination holds of them is unknown"
            )
        started = time.monotonic()
        racy_since_ns = time.time_ns() - self.racy_window_ns
        now = await asyncio.to_thread(scan, self.root)
        plan = diff(self.held, now)
        self._broken = True
        sent = await apply(plan)
        if frozen and sent.unsent:
            raise TransportError(
                f"{len(sent.unsent)} of the workload's files changed while it was frozen "
                f"(first: {self.root / sent.unsent[0]}); something else writes them"
            )
        self._broken = False
        self.held = settled(self.held, now, sent.unsent, racy_since_ns)
        figures = FilesFigures(
            round=number,
            files=sent.files,
            bytes_sent=sent.bytes_sent,
            removed=len(plan.remove),
            duration_s=time.monotonic() - started,
        )
        self.history.append(figures)
        return figures
