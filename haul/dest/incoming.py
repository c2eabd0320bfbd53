"""The destination agent's incoming migrations: one CriuDestination each, and the
files the source sends, checked as they land.

Names coming over the wire are checked here, once: image names are plain file
names, data paths are relative paths that stay inside the workload's data
directory (no "..", no absolute paths, no links followed).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from haul.criu.options import PageServer, TlsFiles
from haul.criu.service import Criu
from haul.dest.criudest import RESTORED_MARK, CriuDestination
from haul.engine.figures import RestoreFigures
from haul.engine.phases import Strategy
from haul.errors import ChecksumMismatch, TransportError, UsageError
from haul.net.spec import WorkloadNet

IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MIGRATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
WORKLOAD_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def check_id(value: str) -> str:
    if not MIGRATION_ID.fullmatch(value):
        raise UsageError(f"bad migration id {value!r}")
    return value


def check_workload(value: str) -> str:
    if not WORKLOAD_NAME.fullmatch(value) or value in (".", ".."):
        raise UsageError(f"bad workload name {value!r}")
    return value


def check_image_name(value: str) -> str:
    if not IMAGE_NAME.fullmatch(value):
        raise UsageError(f"bad image name {value!r}")
    return value


def check_data_path(value: str) -> PurePosixPath:
    p = PurePosixPath(value)
    if p.is_absolute() or not p.parts or any(part in ("..", ".", "") for part in p.parts):
        raise UsageError(f"bad data path {value!r}: must be relative and stay inside")
    return p


@dataclass(slots=True)
class Incoming:
    migration_id: str
    workload: str
    strategy: Strategy
    dest: CriuDestination
    argv: list[str] = field(default_factory=list)
    received: dict[str, str] = field(default_factory=dict)  # name -> sha256
    #: the workload's own address, for its registry entry here after the commit
    net: WorkloadNet | None = None


async def _write_checked(
    target: Path, chunks: AsyncIterator[bytes], sha256: str, mode: int = 0o644
) -> int:
    h = hashlib.sha256()
    size = 0
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise UsageError(f"{target.name} was already received; refusing to overwrite") from None
    except OSError as exc:
        raise TransportError(f"cannot create {target.name}: {exc.strerror}") from exc
    try:
        async for chunk in chunks:
            h.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
    except OSError as exc:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise TransportError(f"writing {target.name} failed: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    if h.hexdigest() != sha256.lower():
        target.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{target.name} arrived corrupt (SHA-256 mismatch)")
    return size


class IncomingRegistry:
    """Every incoming migration of one destination host."""

    def __init__(
        self,
        criu: Criu,
        root: Path,
        *,
        data_root: Path | None,
        listen_address: str,
        bridge: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.criu = criu
        #: where arriving workloads with their own address get their veth attached
        self.bridge = bridge
        self.root = root
        self.data_root = data_root
        self.listen_address = listen_address
        #: this host's certificate, key and CA: pages arrive only over TLS
        self.tls = tls
        self._items: dict[str, Incoming] = {}

    def sweep(self) -> tuple[list[str], list[str]]:
        """At agent start: nothing is in flight yet, so whatever an earlier agent left
        of incoming migrations that never restored anything is removed. A migration
        with a restored copy is kept: the copy waits for the source's decision.
        Returns (removed, kept)."""
        removed: list[str] = []
        kept: list[str] = []
        if not self.root.is_dir():
            return removed, kept
        for d in sorted(self.root.iterdir()):
            if (d / RESTORED_MARK).exists():
                kept.append(d.name)
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
            marker = d.with_name(d.name + ".workload")
            if marker.exists():
                name = marker.read_text().strip()
                if self.data_root is not None and WORKLOAD_NAME.fullmatch(name):
                    shutil.rmtree(self.data_root / name, ignore_errors=True)
                marker.unlink()
        return removed, kept

    def get(self, migration_id: str) -> Incoming:
        try:
            return self._items[check_id(migration_id)]
        except KeyError:
            raise UsageError(f"no incoming migration {migration_id!r} here") from None

    async def check(self, workload: str, needed_bytes: int) -> None:
        """Pre-flight: nothing of that name here, and room for it."""
        check_workload(workload)
        probe = CriuDestination(self.criu, self.root / "preflight", data=self.data_root)
        await probe.check_free(workload, needed_bytes)

    async def open(
        self,
        migration_id: str,
        workload: str,
        strategy: Strategy,
        needed_bytes: int,
        lazy_source: PageServer | None,
        *,
        argv: list[str] | None = None,
        data_mode: int = 0o700,
        shared_images: Path | None = None,
        net: WorkloadNet | None = None,
        page_tls: bool = False,
    ) -> Incoming:
        check_id(migration_id)
        check_workload(workload)
        if migration_id in self._items:
            raise UsageError(f"migration {migration_id} is already open here")
        self._check_page_tls(page_tls)
        dest = CriuDestination(
            self.criu, self.root / migration_id, data=self.data_root,
            listen=None if shared_images is not None else PageServer(self.listen_address, 0),
            lazy_source=lazy_source, shared_images=shared_images,
            workload=workload, net=net, bridge=self.bridge,
            tls=self.tls if page_tls else None,
        )
        await dest.check_free(workload, needed_bytes)
        # Which workload's data this migration may create, for a sweep after a crash.
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / f"{migration_id}.workload").write_text(workload + "\n")
        await dest.prepare(strategy)
        if self.data_root is not None:
            (self.data_root / workload).mkdir(parents=True)
            os.chmod(self.data_root / workload, data_mode & 0o7777)
        item = Incoming(migration_id, workload, strategy, dest, argv=list(argv or []),
                        net=net)
        self._items[migration_id] = item
        return item

    def _check_page_tls(self, page_tls: bool) -> None:
        """Both ends agree on TLS for the pages: the source asks for it when it has
        certificates and calls this agent over https; this agent, with certificates,
        takes pages in no other way."""
        if page_tls and self.tls is None:
            raise UsageError("the source sends pages over TLS, but this agent has no "
                             "certificates ([agent.tls])")
        if not page_tls and self.tls is not None:
            raise UsageError("this agent has certificates ([agent.tls]) and takes pages only "
                             "over TLS; the source must have certificates too")

    async def receive_image(
        self, migration_id: str, name: str, chunks: AsyncIterator[bytes], sha256: str
    ) -> int:
        item = self.get(migration_id)
        check_image_name(name)
        size = await _write_checked(item.dest.images / name, chunks, sha256)
        item.received[name] = sha256
        return size

    async def receive_data(
        self, migration_id: str, path: str, chunks: AsyncIterator[bytes], sha256: str,
        mode: int = 0o644,
    ) -> int:
        item = self.get(migration_id)
        rel = check_data_path(path)
        if self.data_root is None:
            raise UsageError("this host keeps no workload data directories")
        base = self.data_root / item.workload
        target = base.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        # No component of the way may be a link (a path trick from an earlier file).
        probe = target.parent
        while probe != base.parent:
            if probe.is_symlink():
                raise UsageError(f"bad data path {path!r}: goes through a link")
            probe = probe.parent
        return await _write_checked(target, chunks, sha256, mode & 0o777)

    def make_dirs(self, migration_id: str, paths: list[str], modes: list[int] | None = None
                  ) -> None:
        """Create the workload's (possibly empty) sub-directories, parents first."""
        item = self.get(migration_id)
        if self.data_root is None:
            raise UsageError("this host keeps no workload data directories")
        base = self.data_root / item.workload
        modes = modes or []
        for i, path in enumerate(paths):
            rel = check_data_path(path)
            target = base.joinpath(*rel.parts)
            if target.parent.is_symlink() or not target.parent.is_dir():
                raise UsageError(f"bad data path {path!r}: its parent is not a directory")
            target.mkdir(exist_ok=True)
            os.chmod(target, (modes[i] if i < len(modes) else 0o755) & 0o7777)

    async def restore(self, migration_id: str, lazy: bool) -> RestoreFigures:
        return await self.get(migration_id).dest.restore(lazy)

    async def resume(self, migration_id: str) -> None:
        await self.get(migration_id).dest.resume()

    async def wait_pages(self, migration_id: str) -> None:
        await self.get(migration_id).dest.wait_pages()

    async def discard(self, migration_id: str) -> None:
        item = self._items.pop(check_id(migration_id), None)
        if item is not None:
            await item.dest.discard()
        (self.root / f"{migration_id}.workload").unlink(missing_ok=True)

    async def finish(self, migration_id: str) -> Incoming:
        """After the commit: forget the migration, keep the running copy."""
        item = self._items.pop(check_id(migration_id))
        await item.dest.cleanup()
        (self.root / f"{migration_id}.workload").unlink(missing_ok=True)
        return item
