"""A transport between hosts that share a machine (lab hosts): checked local copies.

Implements the engine's TransportPort: the source's images go into the
destination's images directory (next to any pages the destination's page
server already wrote there) and the workload's data directory moves into the
destination's data, every file with a SHA-256 checked where it lands.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from haul.engine.figures import FilesFigures, TransferFigures
from haul.transport.datasync import sync_tree
from haul.transport.imagecopy import copy_images, verify_images


class LocalTransport:
    def __init__(
        self,
        source_images: Path,
        dest_images: Path,
        *,
        source_data: Path | None = None,
        dest_data: Path | None = None,
    ) -> None:
        self.source_images = source_images
        self.dest_images = dest_images
        self.source_data = source_data
        self.dest_data = dest_data

    async def sync_files(self, round: int) -> FilesFigures:
        """No files move while the workload runs yet: all of them go in the frozen
        window with the images (round-by-round sync replaces this)."""
        return FilesFigures(round=round, files=0, bytes_sent=0, removed=0, duration_s=0.0)

    async def transfer_images(self) -> TransferFigures:
        started = time.monotonic()
        manifest, report = await asyncio.to_thread(
            copy_images, self.source_images, self.dest_images, merge=True
        )
        await asyncio.to_thread(verify_images, self.dest_images, manifest, merge=True)
        files, sent = report.files, report.bytes
        if self.source_data is not None and self.dest_data is not None:
            data = await asyncio.to_thread(sync_tree, self.source_data, self.dest_data)
            files, sent = files + data.files, sent + data.bytes
        return TransferFigures(files=files, bytes_sent=sent, duration_s=time.monotonic() - started)
