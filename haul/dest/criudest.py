"""The destination side of a migration with CRIU: implements the engine's DestPort.

It owns a working directory for one incoming migration: ``images/`` (what the
transport delivers and, for stop-and-copy and pre-copy, what the local CRIU
page server writes), ``work/`` (logs, the lazy-pages socket), and the
workload's data directory under the host's data root. Restores leave the tree
stopped; only ``resume`` (after the commit) lets it run.

A workload with an address of its own (``net``) arrives with its network
namespace: CRIU re-creates its veth with the host end on this host's bridge
and restores its TCP connections. haul locks the restored namespace at CRIU's
post-restore notification (:mod:`haul.net.lock`) and unlocks it only in
``resume``, followed by a gratuitous ARP (:mod:`haul.net.announce`).
With ``tls`` (this host's certificate, key and CA), both page channels are TLS:
the page server takes only a sender whose certificate the CA signed and its
revocation list does not name, and the lazy-pages daemon checks that the
source's certificate names the address it connects to. The page server listens
on the address the source is told (``listen``: the one facing the peers), never
on every address. CRIU compares a *listening* side's peer with the listener's
own address (criu/tls.c), which no sender's certificate names, so the page
server checks the sender's certificate against the CA alone
(:meth:`TlsFiles.listening`). CRIU takes the first connection and closes its
listener: a stranger that connects first gets nothing without a certificate of
the CA, and the real sender, refused, fails the migration, which rolls back
(docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

from haul.criu.info import host_capabilities
from haul.criu.lazypages import LazyPagesDaemon
from haul.criu.notify import Action, Notification
from haul.criu.options import CriuOptions, NetworkLock, PageServer, TlsFiles
from haul.criu.pagemap import lazy_bytes
from haul.criu.service import Criu
from haul.dest.intake import private_dir
from haul.engine.figures import Capabilities, DestinationReady, Endpoint, RestoreFigures
from haul.engine.phases import Strategy
from haul.errors import TransportError, WorkloadError
from haul.net import lock, veth
from haul.net.announce import announce
from haul.net.spec import INNER_IFNAME, WorkloadNet, host_ifname
from haul.workload.proctree import ProcessTree

#: in a migration's work directory once a copy is restored there
RESTORED_MARK = "restored.pid"
#: room asked for beyond the workload's resident size (images carry metadata too)
SPACE_MARGIN = 1.2


class CriuDestination:
    """``listen``: where this host's page server listens (stop-and-copy, pre-copy).
    ``lazy_source``: post-copy, the source's lazy page server."""

    def __init__(
        self,
        criu: Criu,
        workdir: Path,
        *,
        data: Path | None = None,
        listen: PageServer | None = None,
        lazy_source: PageServer | None = None,
        shared_images: Path | None = None,
        workload: str = "",
        net: WorkloadNet | None = None,
        bridge: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        if net is not None and (bridge is None or not workload):
            raise WorkloadError(
                "a workload with its own address needs a bridge on this host "
                "(agent.bridge) to attach it to"
            )
        self.criu = criu
        self.workload = workload
        self.net = net
        self.bridge = bridge
        #: this host's certificate, key and CA: the page channels are TLS
        self.tls = tls
        #: where the source wrote the pages, in a directory both hosts see
        self.shared_images = shared_images
        self.workdir = workdir
        self.images = workdir / "images"
        self.logs = workdir / "work"
        self.data = data
        self.listen = listen
        self.lazy_source = lazy_source
        self.page_server_port: int | None = None
        self._page_server_pid: int | None = None
        self._daemon: LazyPagesDaemon | None = None
        self.tree: ProcessTree | None = None
        #: the workload's data directory here, once this migration may create it
        self._data_dir: Path | None = None

    @property
    def page_server(self) -> PageServer | None:
        """Where this host's page server listens, once prepared with one."""
        if self.listen is None or not self.page_server_port:
            return None
        return PageServer(self.listen.address, self.page_server_port)

    async def capabilities(self) -> Capabilities:
        return await host_capabilities(self.criu)

    async def check_free(self, workload: str, needed_bytes: int) -> None:
        if self.data is not None:
            if (self.data / workload).exists():
                raise WorkloadError(f"{self.data / workload} already exists on the destination")
            self._data_dir = self.data / workload
        probe = private_dir(self.workdir.parent)
        free = shutil.disk_usage(probe).free
        if free < needed_bytes * SPACE_MARGIN:
            raise TransportError(
                f"not enough room on the destination: {free >> 20} MiB free in {probe}, "
                f"about {int(needed_bytes * SPACE_MARGIN) >> 20} MiB needed"
            )

    async def prepare(self, strategy: Strategy, needed_bytes: int = 0) -> DestinationReady:
        for d in (self.workdir, self.images, self.logs):
            private_dir(d)  # the images hold the workload's memory: root's alone
        if strategy in (Strategy.STOP_AND_COPY, Strategy.PRE_COPY) and self.listen is not None:
            info = await self.criu.page_server(self.page_server_options(self.listen))
            self.page_server_port, self._page_server_pid = info.port, info.pid
        ps = self.page_server
        return DestinationReady(Endpoint(ps.address, ps.port) if ps is not None else None)

    async def room_left(self) -> int | None:
        """Bytes free where this migration's images are kept."""
        where = self.workdir if self.workdir.exists() else self.workdir.parent
        try:
            return shutil.disk_usage(where).free
        except OSError:
            return None

    def page_server_options(self, listen: PageServer) -> CriuOptions:
        """This host's page server, on ``listen`` (the address the sender is told);
        with TLS it checks the sender's certificate against the CA alone (see the
        module's docstring)."""
        # No notifications: the page server is CRIU's child and outlives this request;
        # its status-ready notification could come after the answer, into a session
        # haul has closed, and CRIU then ends the page server ("Can't send response:
        # Broken pipe"), so the dump finds nothing listening.
        return CriuOptions(
            images_dir=self.images,
            work_dir=self.logs,
            log_file="page-server.log",
            page_server=listen,
            tls=self.tls.listening() if self.tls is not None else None,
            notify_scripts=False,
        )

    def lazy_pages_daemon(self) -> LazyPagesDaemon:
        """Post-copy: the daemon that pulls pages from the source's lazy page server."""
        if self.lazy_source is None:
            raise WorkloadError("post-copy restore needs the source's lazy page server")
        return LazyPagesDaemon(
            self.criu,
            images_dir=self.images,
            work_dir=self.logs,
            source=self.lazy_source,
            tls=self.tls,
        )

    async def restore(self, lazy: bool) -> RestoreFigures:
        started = time.monotonic()
        if self.shared_images is not None:
            await asyncio.to_thread(self._take_shared_pages, self.shared_images)
        # what crosses to this host for the workload's memory: the pages already here,
        # or (post-copy) the pages the lazy-pages daemon will fetch before it is done
        pages_bytes = await asyncio.to_thread(self._pages_bytes, lazy)
        if lazy:
            self._daemon = self.lazy_pages_daemon()
            await self._daemon.start()
        result = await self.criu.restore(self._restore_options(lazy), self._hold_network)
        self.tree = ProcessTree(result.pid)
        # Written before anything else can happen: an agent that restarts finds a
        # restored copy waiting for the source's decision and must not drop it.
        (self.workdir / RESTORED_MARK).write_text(f"{result.pid}\n")
        await self.tree.wait_stopped()
        return RestoreFigures(
            dest_pid=result.pid, duration_s=time.monotonic() - started, pages_bytes=pages_bytes
        )

    def _pages_bytes(self, lazy: bool) -> int:
        if lazy:
            return lazy_bytes(self.images)
        return sum(p.stat().st_size for p in self.images.glob("pages-*.img"))

    def _restore_options(self, lazy: bool) -> CriuOptions:
        opts = CriuOptions(
            images_dir=self.images,
            work_dir=self.logs,
            leave_stopped=True,
            lazy_pages=lazy,
            file_locks=True,
            link_remap=True,
            network_lock=NetworkLock.NFTABLES,
        )
        if self.net is None:
            # its connections were bound to the source host's address: restored closed
            return replace(opts, tcp_close=True)
        return replace(
            opts,
            tcp_established=True,
            external=(f"veth[{INNER_IFNAME}]:{host_ifname(self.workload)}@{self.bridge}",),
        )

    async def _hold_network(self, note: Notification) -> None:
        """At post-restore, before CRIU unlocks the restored namespace: haul's own lock."""
        if self.net is not None and note.action is Action.POST_RESTORE and note.pid:
            await lock.lock(note.pid)

    def _take_shared_pages(self, shared: Path) -> None:
        """Bring the pages the source left in the shared directory into the images
        (a hard link when the file system allows, else a copy)."""
        if not shared.is_dir():
            raise TransportError(f"the shared directory {shared} is not visible here")
        for page in sorted(shared.glob("pages-*.img")):
            # what the source left there, and nothing it points at (a link to a file
            # of this host would put that file into the restored copy's memory)
            if page.is_symlink() or not page.is_file():
                raise TransportError(f"{page} in the shared directory is not a plain file")
            target = self.images / page.name
            try:
                os.link(page, target)
            except OSError:
                shutil.copyfile(page, target)

    async def resume(self) -> None:
        if self.tree is None:
            raise WorkloadError("nothing was restored here to resume")
        if self.net is not None:
            await lock.unlock(self.tree.root_pid)
            await announce(self.tree.root_pid, self.net)
        self.tree.resume()

    async def wait_pages(self) -> None:
        if self._daemon is not None:
            await self._daemon.wait()

    async def discard(self) -> None:
        if self.tree is not None and self.tree.alive:
            await self.tree.kill()
        if self.net is not None:
            await veth.detach(self.workload)  # a restore that failed half way may leave it
        if self._daemon is not None:
            await self._daemon.stop()
        await self._stop_page_server()
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)
        if self._data_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._data_dir, True)

    async def _stop_page_server(self) -> None:
        pid = self._page_server_pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._page_server_pid = None

    async def cleanup(self) -> None:
        await self._stop_page_server()
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)
