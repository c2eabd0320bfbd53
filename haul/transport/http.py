"""The transport between agents: every image and data file sent over the agents'
authenticated HTTP API, each with its SHA-256, checked where it lands.

The pages themselves do not come this way: they go to the destination's CRIU
page server (stop-and-copy, pre-copy) or are pulled by its lazy-pages daemon
(post-copy). What comes this way is the rest of the images (a few hundred KiB
for a plain process tree) and the workload's data directory, in rounds
(haul/transport/rounds.py): while the workload runs (``sync_files``), and in the
frozen window only what changed since the last round.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from haul.engine.figures import FilesFigures, TransferFigures
from haul.errors import PeerChecksumMismatch, TransportError
from haul.transport.imagecopy import CHUNK, sha256_of
from haul.transport.rounds import FileRounds, Sent
from haul.transport.treeplan import Node, Plan
from haul.transport.treescan import open_inside

#: files in flight at once (a round of many small files waits on round trips, not bytes)
SENDERS = 4


class IncomingUploads(Protocol):
    """What the destination agent's client offers for an incoming migration."""

    async def put_image(self, migration_id: str, name: str, path: Path, sha256: str) -> None: ...

    async def put_data(
        self,
        migration_id: str,
        rel: str,
        source: Path | BinaryIO,
        sha256: str,
        mode: int,
        owner: tuple[int, int] | None = None,
    ) -> None: ...

    async def make_entries(self, migration_id: str, nodes: Sequence[Node]) -> None: ...

    async def remove_entries(self, migration_id: str, paths: Sequence[str]) -> int: ...


def _digest(f: BinaryIO) -> tuple[str, int]:
    """SHA-256 and size of an open file from its start; it is left at its start."""
    h = hashlib.sha256()
    size = 0
    f.seek(0)
    while chunk := f.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    f.seek(0)
    return h.hexdigest(), size


class HttpTransport:
    def __init__(
        self,
        uploads: IncomingUploads,
        migration_id: str,
        source_images: Path,
        *,
        source_data: Path | None = None,
        skip_pages: bool = False,
        images_shared: bool = False,
    ) -> None:
        self.uploads = uploads
        #: the pages stay where they are (a directory both hosts see)
        self.skip_pages = skip_pages
        #: every image stays where it is: the destination restores from that directory
        #: (a runc container's ``--shared-dir`` migration)
        self.images_shared = images_shared
        self.migration_id = migration_id
        self.source_images = source_images
        #: the rounds of the workload's files (none: it has no data directory to move)
        self.files = FileRounds(source_data) if source_data is not None else None

    async def sync_files(self, round: int) -> FilesFigures:
        """While the workload runs: round 1 sends every file, later rounds what changed."""
        if self.files is None:
            return FilesFigures(round, 0, 0, 0, 0.0)
        apply = functools.partial(self._apply, self.files.root, frozen=False)
        return await self.files.run(round, apply, frozen=False)

    async def transfer_images(self) -> TransferFigures:
        """In the frozen window: the images, then what changed since the last round."""
        started = time.monotonic()
        files = sent = 0
        entries: list[os.DirEntry[str]] = (
            [] if self.images_shared else list(os.scandir(self.source_images))
        )
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                raise TransportError(f"{entry.path} is not a regular file; refusing to send it")
            if self.skip_pages and entry.name.startswith("pages-"):
                continue
            path = Path(entry.path)
            digest = await asyncio.to_thread(sha256_of, path)
            await self.uploads.put_image(self.migration_id, entry.name, path, digest)
            files += 1
            sent += entry.stat().st_size
        if self.files is not None:
            apply = functools.partial(self._apply, self.files.root, frozen=True)
            last = await self.files.run(len(self.files.history) + 1, apply, frozen=True)
            files, sent = files + last.files, sent + last.bytes_sent
        return TransferFigures(files=files, bytes_sent=sent, duration_s=time.monotonic() - started)

    async def _apply(self, root: Path, plan: Plan, *, frozen: bool) -> Sent:
        if plan.remove:
            await self.uploads.remove_entries(self.migration_id, plan.remove)
        if plan.make:
            await self.uploads.make_entries(self.migration_id, plan.make)
        sizes = await self._send_all(root, plan.send, frozen=frozen)
        if plan.modes:
            await self.uploads.make_entries(self.migration_id, plan.modes)
        unsent = tuple(
            node.path for node, size in zip(plan.send, sizes, strict=True) if size is None
        )
        done = [size for size in sizes if size is not None]
        return Sent(len(done), sum(done), unsent)

    async def _send_all(
        self, root: Path, nodes: Sequence[Node], *, frozen: bool
    ) -> list[int | None]:
        """Send ``nodes``, up to SENDERS at a time (each waits for its answer); each
        one's size, or None when it was not sent as scanned."""
        sizes: list[int | None] = [None] * len(nodes)
        todo = iter(enumerate(nodes))

        async def sender() -> None:
            for i, node in todo:
                sizes[i] = await self._send(root, node, frozen=frozen)

        tasks = [asyncio.create_task(sender()) for _ in range(min(SENDERS, len(nodes)))]
        try:
            await asyncio.gather(*tasks)
        finally:  # one failed: the others stop too
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return sizes

    async def _send(self, root: Path, node: Node, *, frozen: bool) -> int | None:
        """Send one file as it is now; None when it is gone, or (while the workload
        runs) changed between its hashing and its sending."""
        fd = await asyncio.to_thread(open_inside, root, node.path)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            digest, size = await asyncio.to_thread(_digest, f)
            try:
                await self.uploads.put_data(
                    self.migration_id, node.path, f, digest, node.mode, (node.uid, node.gid)
                )
            except PeerChecksumMismatch:
                if frozen:
                    raise
                return None
        return size
