"""A transport between hosts that share a machine (lab hosts): checked local copies.

Implements the engine's TransportPort: the source's images go into the
destination's images directory (next to any pages the destination's page
server already wrote there), every file with a SHA-256 checked where it lands.
The workload's data directory goes in rounds (haul/transport/rounds.py): while it
runs (``sync_files``), and only what changed since in the frozen window.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

from haul.engine.figures import FilesFigures, TransferFigures
from haul.errors import TransportError
from haul.transport.imagecopy import copy_images, verify_images
from haul.transport.rounds import FileRounds, Sent
from haul.transport.treeapply import apply_plan
from haul.transport.treeplan import Plan


class LocalTransport:
    def __init__(
        self,
        source_images: Path,
        dest_images: Path,
        *,
        source_data: Path | None = None,
        dest_data: Path | None = None,
        images_shared: bool = False,
    ) -> None:
        #: the destination restores from ``source_images`` itself (a shared directory)
        self.images_shared = images_shared
        self.source_images = source_images
        self.dest_images = dest_images
        self.source_data = source_data
        self.dest_data = dest_data
        #: the rounds of the workload's files (none: it has no data directory to move)
        self.files = FileRounds(source_data) if source_data and dest_data else None
        self._root_made = False

    async def sync_files(self, round: int) -> FilesFigures:
        """While the workload runs: round 1 sends every file, later rounds what changed."""
        return await self._files(round, frozen=False)

    async def transfer_images(self) -> TransferFigures:
        """In the frozen window: the images, then what changed since the last round."""
        started = time.monotonic()
        files = sent = 0
        if not self.images_shared:
            manifest, report = await asyncio.to_thread(
                copy_images, self.source_images, self.dest_images, merge=True
            )
            await asyncio.to_thread(verify_images, self.dest_images, manifest, merge=True)
            files, sent = report.files, report.bytes
        last = len(self.files.history) if self.files is not None else 0
        data = await self._files(last + 1, frozen=True)
        return TransferFigures(
            files=files + data.files,
            bytes_sent=sent + data.bytes_sent,
            duration_s=time.monotonic() - started,
        )

    async def _files(self, number: int, *, frozen: bool) -> FilesFigures:
        if self.files is None or self.dest_data is None:
            return FilesFigures(number, 0, 0, 0, 0.0)
        source, dest = self.files.root, self.dest_data
        if not self._root_made:
            await asyncio.to_thread(_make_root, source, dest)
            self._root_made = True

        async def apply(plan: Plan) -> Sent:
            return await asyncio.to_thread(apply_plan, source, dest, plan)

        return await self.files.run(number, apply, frozen=frozen)


def _make_root(source: Path, dest: Path) -> None:
    """The destination's data directory, new, with the source's mode."""
    if dest.exists() or dest.is_symlink():
        raise TransportError(f"data directory {dest} already exists on the destination")
    dest.mkdir(parents=True)
    if source.is_dir():
        st = source.stat()
        os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
