"""The destination side of a runc container's migration: implements the engine's DestPort.

What CRIU needs around the restore is :class:`~haul.dest.criudest.CriuDestination`'s
(the images directory, the page server for stop-and-copy, the lazy-pages daemon for
post-copy, room checks); the restore itself is runc's (``runc restore --detach``), so
runc's own state of the container is right on this host. The copy is restored stopped:
haul writes ``leave-stopped`` into the CRIU configuration file the bundle names
(:mod:`haul.runtime.criuconf`) and resumes it only after the commit.

The bundle is the source's ``config.json`` made this host's: the root filesystem where
the transport put the container's files, and a cgroup path of this host's
(docs/containers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from haul.criu.options import PageServer
from haul.criu.service import Criu
from haul.dest.criudest import RESTORED_MARK, CriuDestination
from haul.engine.figures import RestoreFigures
from haul.errors import ContainerError, NoSuchContainer
from haul.runtime import criuconf
from haul.runtime.runc import RestoreOptions, Runc
from haul.workload.proctree import ProcessTree


def bundle_config(
    source: dict[str, Any], *, rootfs: Path, cgroups_path: str, criu_config: Path
) -> dict[str, Any]:
    """The source's ``config.json`` for this host: its root filesystem, cgroup and CRIU
    configuration file here. Everything else (the process, mounts, namespaces) is the
    container's own and stays as it is."""
    config: dict[str, Any] = json.loads(json.dumps(source))  # a deep copy of plain JSON
    config.setdefault("root", {})["path"] = str(rootfs)
    config.setdefault("linux", {})["cgroupsPath"] = cgroups_path
    config.setdefault("annotations", {})[criuconf.ANNOTATION] = str(criu_config)
    return config


class RuncDestination(CriuDestination):
    """Restores container ``container_id`` with ``runc`` from the images in ``workdir``,
    its root filesystem at ``rootfs`` (filled by the transport), its bundle made at
    ``bundle``."""

    def __init__(
        self,
        criu: Criu,
        runc: Runc,
        workdir: Path,
        *,
        container_id: str,
        source_config: dict[str, Any],
        bundle: Path,
        rootfs: Path,
        cgroups_path: str,
        data: Path | None = None,
        listen: PageServer | None = None,
        lazy_source: PageServer | None = None,
    ) -> None:
        super().__init__(
            criu,
            workdir,
            data=data,
            listen=listen,
            lazy_source=lazy_source,
            workload=container_id,
        )
        self.runc = runc
        self.container_id = container_id
        self.source_config = source_config
        self.rootfs = rootfs
        self.cgroups_path = cgroups_path
        #: where the container's bundle goes on this host (made by the restore)
        self.bundle = bundle
        self._restored = False

    async def restore(self, lazy: bool) -> RestoreFigures:
        started = time.monotonic()
        pages_bytes = await asyncio.to_thread(self._pages_bytes, lazy)
        criu_config = self.bundle / "criu.conf"
        own_network = _own_network(self.source_config)
        if own_network:
            raise ContainerError(
                "a container with a network namespace of its own cannot be restored here "
                "yet: its namespace must be made and locked on this host first"
            )
        criuconf.write(criu_config, criuconf.restore_options(own_network=own_network))
        self.bundle.mkdir(parents=True, exist_ok=True)
        config = bundle_config(
            self.source_config,
            rootfs=self.rootfs,
            cgroups_path=self.cgroups_path,
            criu_config=criu_config,
        )
        (self.bundle / "config.json").write_text(json.dumps(config, indent=2))
        if lazy:
            self._daemon = self.lazy_pages_daemon()
            await self._daemon.start()
        pid_file = self.workdir / "container.pid"
        self._restored = True  # from here, discard must delete what runc made
        await self.runc.restore(
            self.container_id,
            RestoreOptions(
                bundle=self.bundle,
                image_path=self.images,
                work_path=self.logs,
                tcp_established=own_network,
                file_locks=True,
                lazy_pages=lazy,
                pid_file=pid_file,
            ),
        )
        pid = int(pid_file.read_text().strip())
        self.tree = ProcessTree(pid)
        (self.workdir / RESTORED_MARK).write_text(f"{pid}\n")
        await self.tree.wait_stopped()
        return RestoreFigures(
            dest_pid=pid, duration_s=time.monotonic() - started, pages_bytes=pages_bytes
        )

    async def resume(self) -> None:
        """After the commit: every process of the stopped copy continues."""
        if self.tree is None:
            raise ContainerError("nothing was restored here to resume")
        self.tree.resume()

    async def discard(self) -> None:
        if self._restored:
            with contextlib.suppress(NoSuchContainer):
                await self.runc.delete(self.container_id, force=True)
        await super().discard()
        if self._restored:
            await asyncio.to_thread(shutil.rmtree, self.bundle, True)

    async def cleanup(self) -> None:
        """After the commit: the images are no longer needed (the bundle, which runc's
        state names, is elsewhere)."""
        await super().cleanup()


def _own_network(config: dict[str, Any]) -> bool:
    """Whether the container has a network namespace other than its host's."""
    spaces = (config.get("linux") or {}).get("namespaces") or []
    return any(ns.get("type") == "network" for ns in spaces)
