"""The destination side of a runc container's migration: implements the engine's DestPort.

What CRIU needs around the restore is :class:`~haul.dest.criudest.CriuDestination`'s
(the images directory, the page server for stop-and-copy, the lazy-pages daemon for
post-copy, room checks; with ``tls`` both are TLS, as for a process tree); the restore
itself is runc's (``runc restore --detach``), so
runc's own state of the container is right on this host. The copy is restored stopped:
haul writes ``leave-stopped`` into the CRIU configuration file the bundle names
(:mod:`haul.runtime.criuconf`) and resumes it only after the commit.

The bundle is the source's ``config.json`` made this host's: the root filesystem where
the transport put the container's files (or, on storage both hosts see, where they
are), and a cgroup path of this host's (docs/containers.md).

With ``shared_images`` (``--shared-dir``) runc restores from the images the source's
checkpoint wrote in a directory both hosts see: nothing of them is copied here, and
there is no page server (the pages are in those images).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from haul.criu.options import PageServer, TlsFiles
from haul.criu.service import Criu
from haul.dest.criudest import RESTORED_MARK, CriuDestination
from haul.engine.figures import RestoreFigures
from haul.errors import ContainerError, NoSuchContainer
from haul.net import lock
from haul.net.announce import announce
from haul.net.spec import WorkloadNet
from haul.procfs import naming, wait_gone
from haul.runtime import criuconf
from haul.runtime.runc import RestoreOptions, Runc
from haul.workload.proctree import ProcessTree

log = logging.getLogger(__name__)

#: how long a discard waits for a ``runc restore`` an earlier agent left running
ORPHAN_RESTORE_WAIT_S = 30.0


def bundle_config(
    source: dict[str, Any],
    *,
    rootfs: Path,
    cgroups_path: str,
    criu_config: Path,
    netns: Path | None = None,
) -> dict[str, Any]:
    """The source's ``config.json`` for this host: its root filesystem, cgroup, network
    namespace (by path: the source's file names the source's) and CRIU configuration
    file here. Everything else (the process, mounts, other namespaces) is the
    container's own and stays as it is."""
    config: dict[str, Any] = json.loads(json.dumps(source))  # a deep copy of plain JSON
    config.setdefault("root", {})["path"] = str(rootfs)
    linux = config.setdefault("linux", {})
    linux["cgroupsPath"] = cgroups_path
    if netns is not None:
        spaces = [ns for ns in linux.get("namespaces", []) if ns.get("type") != "network"]
        linux["namespaces"] = [*spaces, {"type": "network", "path": str(netns)}]
    config.setdefault("annotations", {})[criuconf.ANNOTATION] = str(criu_config)
    return config


class ContainerHome(Protocol):
    """Where the copy lives on this host, made right before the restore."""

    @property
    def netns(self) -> Path | None:
        """Its network namespace's file, when it has an address of its own."""
        ...

    async def make(self) -> Path:
        """The root filesystem ready (and the namespace made and locked); its path."""
        ...

    async def release(self) -> None:
        """A discarded copy: what :meth:`make` made goes."""
        ...


@dataclass(frozen=True, slots=True)
class PlainHome:
    """A root filesystem directory the transport fills, on its host's network."""

    rootfs: Path
    netns: Path | None = None

    async def make(self) -> Path:
        return self.rootfs

    async def release(self) -> None:
        return None


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
        home: ContainerHome,
        cgroups_path: str,
        net: WorkloadNet | None = None,
        data: Path | None = None,
        listen: PageServer | None = None,
        lazy_source: PageServer | None = None,
        shared_images: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(
            criu,
            workdir,
            data=data,
            listen=listen,
            lazy_source=lazy_source,
            shared_images=shared_images,
            workload=container_id,
            tls=tls,
        )
        self.runc = runc
        self.container_id = container_id
        self.source_config = source_config
        self.cgroups_path = cgroups_path
        #: where the container's bundle goes on this host (made by the restore)
        self.bundle = bundle
        self.home = home
        #: its address, announced once it runs here
        self.container_net = net
        self._restored = False
        #: rebuilt by an agent that restarted (:meth:`found`)
        self._found = False

    def found(self, pid: int | None) -> None:
        """A copy an earlier agent began to restore here (its agent restarted): discard
        undoes whatever runc and the home made; ``pid``, the copy runc restored, is what
        resume lets go."""
        self._restored = True
        self._found = True
        self.tree = ProcessTree(pid) if pid is not None else None

    @property
    def image_path(self) -> Path:
        """Where runc restores from: the shared directory's images, or those received."""
        return self.shared_images if self.shared_images is not None else self.images

    def _pages_bytes(self, lazy: bool) -> int:
        if self.shared_images is None:
            return super()._pages_bytes(lazy)
        if not self.shared_images.is_dir():
            raise ContainerError(
                f"the images {self.shared_images} are not on this host: is the shared "
                "directory shared with the source?"
            )
        return sum(p.stat().st_size for p in self.shared_images.glob("pages-*.img"))

    async def restore(self, lazy: bool) -> RestoreFigures:
        started = time.monotonic()
        pages_bytes = await asyncio.to_thread(self._pages_bytes, lazy)
        criu_config = self.bundle / "criu.conf"
        self._restored = True  # from here, discard must undo what the home and runc made
        rootfs = await self.home.make()
        own_network = self.home.netns is not None
        if _own_network(self.source_config) and not own_network:
            raise ContainerError(
                "the container has a network namespace of its own, but no address to give it here"
            )
        criuconf.write(criu_config, criuconf.restore_options(own_network=own_network))
        self.bundle.mkdir(parents=True, exist_ok=True)
        config = bundle_config(
            self.source_config,
            rootfs=rootfs,
            cgroups_path=self.cgroups_path,
            criu_config=criu_config,
            netns=self.home.netns,
        )
        (self.bundle / "config.json").write_text(json.dumps(config, indent=2))
        if lazy:
            self._daemon = self.lazy_pages_daemon()
            await self._daemon.start()
        pid_file = self.workdir / "container.pid"
        await self.runc.restore(
            self.container_id,
            RestoreOptions(
                bundle=self.bundle,
                image_path=self.image_path,
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
        if self.home.netns is not None:
            await lock.unlock(self.home.netns)
            if self.container_net is not None:
                await announce(self.tree.root_pid, self.container_net)
        self.tree.resume()

    async def discard(self) -> None:
        if self._found:
            await self._end_orphan_restore()
        if self._restored:
            with contextlib.suppress(NoSuchContainer):
                await self.runc.delete(self.container_id, force=True)
        await super().discard()
        if self._restored:
            await self.home.release()
            await asyncio.to_thread(shutil.rmtree, self.bundle, True)

    async def _end_orphan_restore(self, timeout_s: float = ORPHAN_RESTORE_WAIT_S) -> None:
        """``runc restore`` runs in a session of its own, so the one an earlier agent
        started may outlive it, and make the container after a discard that did not wait
        for it: wait until no process names this migration's work directory, and after
        ``timeout_s`` end them (runc's process group: runc and its CRIU)."""
        pids = await asyncio.to_thread(naming, self.workdir)
        if not pids:
            return
        log.warning(
            "container %s: waits for what an earlier agent left running (pid %s) before "
            "it is removed",
            self.container_id,
            ", ".join(map(str, pids)),
        )
        deadline = time.monotonic() + timeout_s
        while pids and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            pids = await asyncio.to_thread(naming, self.workdir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                group = os.getpgid(pid)
                if group == os.getpgrp():
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.killpg(group, signal.SIGKILL)
        if pids:
            log.error(
                "container %s: ended pid %s after %.0f s",
                self.container_id,
                ", ".join(map(str, pids)),
                timeout_s,
            )
            await asyncio.to_thread(wait_gone, pids, 5.0)

    async def cleanup(self) -> None:
        """After the commit: the images are no longer needed (the bundle, which runc's
        state names, is elsewhere)."""
        await super().cleanup()


def _own_network(config: dict[str, Any]) -> bool:
    """Whether the container has a network namespace other than its host's."""
    spaces = (config.get("linux") or {}).get("namespaces") or []
    return any(ns.get("type") == "network" for ns in spaces)
