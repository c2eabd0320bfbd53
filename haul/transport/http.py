"""The transport between agents: every image and data file sent over the agents'
authenticated HTTP API, each with its SHA-256, checked where it lands.

The pages themselves do not come this way: they go to the destination's CRIU
page server (stop-and-copy, pre-copy) or are pulled by its lazy-pages daemon
(post-copy). What comes this way is the rest of the images (a few hundred KiB
for a plain process tree) and the workload's data directory.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Protocol

from haul.engine.figures import FilesFigures, TransferFigures
from haul.errors import TransportError
from haul.transport.imagecopy import sha256_of


class IncomingUploads(Protocol):
    """What the destination agent's client offers for an incoming migration."""

    async def put_image(self, migration_id: str, name: str, path: Path, sha256: str) -> None: ...

    async def put_data(
        self, migration_id: str, rel: str, path: Path, sha256: str, mode: int
    ) -> None: ...

    async def make_dirs(self, migration_id: str, rels: list[str], modes: list[int]) -> None: ...


class HttpTransport:
    def __init__(
        self,
        uploads: IncomingUploads,
        migration_id: str,
        source_images: Path,
        *,
        source_data: Path | None = None,
        skip_pages: bool = False,
    ) -> None:
        self.uploads = uploads
        #: the pages stay where they are (a directory both hosts see)
        self.skip_pages = skip_pages
        self.migration_id = migration_id
        self.source_images = source_images
        self.source_data = source_data

    async def sync_files(self, round: int) -> FilesFigures:
        """No files move while the workload runs yet: all of them go in the frozen
        window with the images (round-by-round sync replaces this)."""
        return FilesFigures(round=round, files=0, bytes_sent=0, removed=0, duration_s=0.0)

    async def transfer_images(self) -> TransferFigures:
        started = time.monotonic()
        files = sent = 0
        for entry in sorted(os.scandir(self.source_images), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                raise TransportError(f"{entry.path} is not a regular file; refusing to send it")
            if self.skip_pages and entry.name.startswith("pages-"):
                continue
            path = Path(entry.path)
            digest = await asyncio.to_thread(sha256_of, path)
            await self.uploads.put_image(self.migration_id, entry.name, path, digest)
            files += 1
            sent += entry.stat().st_size
        if self.source_data is not None:
            f, b = await self._send_data(self.source_data)
            files, sent = files + f, sent + b
        return TransferFigures(files=files, bytes_sent=sent, duration_s=time.monotonic() - started)

    async def _send_data(self, root: Path) -> tuple[int, int]:
        dirs: list[str] = []
        modes: list[int] = []
        regular: list[tuple[str, Path, int]] = []
        for current, subdirs, names in os.walk(root):
            rel_dir = Path(current).relative_to(root)
            for name in sorted(subdirs):
                if not (Path(current) / name).is_symlink():
                    dirs.append(str(rel_dir / name))
                    modes.append(stat.S_IMODE(os.lstat(Path(current) / name).st_mode))
            for name in sorted(names):
                p = Path(current) / name
                mode = os.lstat(p).st_mode
                if stat.S_ISREG(mode):
                    regular.append((str(rel_dir / name), p, stat.S_IMODE(mode)))
                elif stat.S_ISSOCK(mode):
                    continue  # CRIU binds a restored socket again
                else:
                    raise TransportError(f"{p} is not a regular file or directory; not sent")
            subdirs[:] = [n for n in subdirs if not (Path(current) / n).is_symlink()]
        if dirs:
            await self.uploads.make_dirs(self.migration_id, dirs, modes)
        sent = 0
        for rel, path, mode in regular:
            digest = await asyncio.to_thread(sha256_of, path)
            await self.uploads.put_data(self.migration_id, rel, path, digest, mode)
            sent += path.stat().st_size
        return len(regular), sent
