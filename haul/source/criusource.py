"""The source side of a migration with CRIU: implements the engine's SourcePort.

The final dump is held at CRIU's post-dump notification: the tree is frozen
and its images are written, and CRIU waits for haul's answer. ``release``
gives it: "go on" (commit) lets CRIU finish with the tree left stopped (or,
post-copy, start its lazy page server); "fail" (rollback) makes CRIU resume
the tree as if nothing happened.

At post-dump the tree is also put into a freezer cgroup of the migration's
own (:mod:`haul.source.freezer`), so that it stays frozen if CRIU or the agent
dies; ``resume`` and ``kill`` thaw it.
With ``tls`` (this host's certificate, key and CA), every page channel is TLS:
dumps check that the destination page server's certificate names the address
they send to, and the lazy page server takes only a destination whose
certificate the CA signed and its revocation list does not name (it checks the
CA alone, as the destination's page server does: CRIU would compare the
destination's certificate with the listener's own address).

The lazy page server listens on ``lazy_listen``, the address the destination is
told, not on every address: CRIU's RPC ignores a lazy dump's address, so it
comes in a CRIU configuration file of the dump's own (:data:`LAZY_CONFIG`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from haul.criu.info import host_capabilities
from haul.criu.notify import Action, Notification
from haul.criu.options import EVERY_ADDRESS, CriuOptions, NetworkLock, PageServer, TlsFiles
from haul.criu.results import DumpResult
from haul.criu.service import Criu
from haul.engine.figures import PAGE_SIZE, Capabilities, DumpFigures, Endpoint, IterationFigures
from haul.errors import HaulError, WorkloadError
from haul.source.freezer import Hold
from haul.workload.footprint import files_bytes
from haul.workload.proctree import ProcessTree

log = logging.getLogger(__name__)

#: how long a lazy dump told to roll back may take to reach its page server (then ended)
LAZY_SERVING_TIMEOUT_S = 10.0
#: in the dump's work directory: the CRIU configuration file naming the lazy page
#: server's address (CRIU's RPC takes none for it)
LAZY_CONFIG = "lazy-server.conf"


class RolledBackAtPostDump(HaulError):
    """haul's answer to a held post-dump when the migration rolls back."""


class CriuSource:
    """Dumps ``tree`` with ``criu`` into ``workdir``.

    Where the pre-dumps and the final dump send pages (the destination's CRIU page
    server) comes with each call, from the engine; None writes them locally.
    ``lazy_listen``: post-copy, where this host's lazy page server listens.
    ``tls``: this host's certificate, key and CA; every page channel is then TLS.
    ``own_network``: the tree has a network namespace of its own (its address moves
    with it), so its TCP connections go along (``tcp_established``); a tree sharing
    its host's network leaves them behind (``tcp_close``: they are bound to this host's
    address; a load balancer replays what was in flight). The network is locked with
    nftables either way (these machines have no iptables tools).
    """

    def __init__(
        self,
        criu: Criu,
        tree: ProcessTree,
        workdir: Path,
        *,
        own_network: bool = False,
        lazy_listen: PageServer | None = None,
        data_dir: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.criu = criu
        self.tree = tree
        self.tls = tls
        self.workdir = workdir
        self.images = workdir / "images"
        self.logs = workdir / "work"
        self._base = CriuOptions(
            images_dir=self.images,
            file_locks=True,
            link_remap=True,
            network_lock=NetworkLock.NFTABLES,
            tcp_established=own_network,
            tcp_close=not own_network,
        )
        self.lazy_listen = lazy_listen
        #: the workload's files on this host; removed once the workload has left
        self.data_dir = data_dir
        self._dump: asyncio.Task[DumpResult] | None = None
        self._decision: asyncio.Future[bool] | None = None
        self._frozen: asyncio.Future[float] | None = None
        self._lazy = False
        self._swrk_pid: int | None = None
        #: post-copy: CRIU's lazy page server is up (its status-ready notification)
        self._serving = asyncio.Event()
        #: the freezer cgroup that keeps the frozen tree frozen whatever happens to CRIU
        self.hold = Hold(workdir.name)

    @property
    def criu_pid(self) -> int | None:
        """The CRIU process running the final dump, once it started."""
        return self._swrk_pid

    async def capabilities(self) -> Capabilities:
        return await host_capabilities(self.criu)

    async def check_workload(self) -> int:
        """The bytes the destination needs room for: the tree's memory and its files."""
        if not self.tree.alive:
            raise WorkloadError(f"no workload tree with root PID {self.tree.root_pid} runs here")
        resident = self.tree.resident_bytes()
        if self.data_dir is None:
            return resident
        return resident + await asyncio.to_thread(files_bytes, self.data_dir)

    async def pre_dump(self, iteration: int, page_server: Endpoint | None) -> IterationFigures:
        # Each round is a fresh images dir whose parent is the previous round's.
        opts = self.pre_dump_options(iteration, _page_server(page_server))
        opts.images_dir.mkdir(parents=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        async with self.criu.session() as s:
            result = await s.pre_dump(opts)
        stats = result.stats
        written = stats.pages_written if stats else 0
        return IterationFigures(
            iteration=iteration,
            pages_written=written,
            pages_skipped_parent=stats.pages_skipped_parent if stats else 0,
            bytes_sent=written * PAGE_SIZE,
            duration_s=time.monotonic() - started,
        )

    async def freeze_and_dump(self, lazy: bool, page_server: Endpoint | None) -> DumpFigures:
        if self._dump is not None:
            raise WorkloadError("the final dump was already started")
        if lazy and self.lazy_listen is None:
            raise WorkloadError("post-copy needs an address for the source's lazy page server")
        for d in (self.images, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self._lazy = lazy
        loop = asyncio.get_running_loop()
        self._decision = loop.create_future()
        self._frozen = loop.create_future()
        frozen_at: list[float] = []
        decision, frozen, serving = self._decision, self._frozen, self._serving

        async def hold(note: Notification) -> None:
            if note.action is Action.PRE_DUMP:
                frozen_at.append(time.monotonic())  # CRIU freezes right after this answer
            elif note.action is Action.POST_DUMP:
                try:
                    await self.hold.freeze(self.tree.pids())
                except WorkloadError as exc:
                    log.warning("the frozen tree is held by CRIU only: %s", exc.one_line())
                if not frozen.done():
                    frozen.set_result(frozen_at[0] if frozen_at else time.monotonic())
                if not await decision:
                    raise RolledBackAtPostDump("the migration rolled back")
            elif note.action is Action.STATUS_READY:
                serving.set()  # post-copy: the network is unlocked, the page server up

        opts = self.dump_options(lazy, _page_server(page_server))
        if opts.config_file is not None and self.lazy_listen is not None:
            opts.config_file.write_text(f"address {self.lazy_listen.address}\n")
        started = time.monotonic()
        self._dump = asyncio.create_task(self._dump_in_session(opts, hold))
        dump = self._dump
        dump.add_done_callback(lambda _: frozen.done() or frozen.cancel())
        try:
            frozen_at_s = await asyncio.shield(frozen)
        except asyncio.CancelledError:
            if not dump.done():
                raise  # we were cancelled; the caller rolls back through release/resume
            dump.result()  # the dump ended before post-dump: raise its error
            raise WorkloadError("CRIU finished the dump without stopping at post-dump") from None
        pages = sum(p.stat().st_size for p in self.images.glob("pages-*.img"))
        return DumpFigures(
            frozen_at_s=frozen_at_s,
            pages_written=pages // PAGE_SIZE,
            pages_lazy=0,
            bytes_written=sum(p.stat().st_size for p in self.images.iterdir()),
            duration_s=time.monotonic() - started,
        )

    def pre_dump_options(
        self, iteration: int, page_server: PageServer | None = None
    ) -> CriuOptions:
        """Round ``iteration``: a fresh images dir whose parent is the previous round's,
        pages to the destination's page server (if there is one yet)."""
        return replace(
            self._base,
            images_dir=self.workdir / f"pre{iteration}",
            work_dir=self.logs,
            pid=self.tree.root_pid,
            track_mem=True,
            leave_running=False,
            leave_stopped=False,
            parent_img=f"../pre{iteration - 1}" if iteration > 1 else None,
            page_server=page_server,
            log_file=f"pre-dump-{iteration}.log",
            tls=self._tls_for(page_server),
        )

    def dump_options(self, lazy: bool, dest_page_server: PageServer | None = None) -> CriuOptions:
        """The final dump: tree left stopped; pages to the destination's page server,
        or (post-copy) served from this host's lazy page server after the dump."""
        parent = self._last_pre_dump()
        page_server = self.lazy_listen if lazy else dest_page_server
        return replace(
            self._base,
            images_dir=self.images,
            work_dir=self.logs,
            pid=self.tree.root_pid,
            leave_stopped=True,
            leave_running=False,
            lazy_pages=lazy,
            page_server=page_server,
            tls=self._tls_for(page_server, listening=lazy),
            track_mem=parent is not None,
            parent_img=parent,
            config_file=self.logs / LAZY_CONFIG if lazy and self._bound_lazy() else None,
        )

    def _bound_lazy(self) -> bool:
        """Whether the lazy page server is bound to an address of its own."""
        return self.lazy_listen is not None and self.lazy_listen.address != EVERY_ADDRESS

    def _tls_for(self, page_server: PageServer | None, listening: bool = False) -> TlsFiles | None:
        """TLS for a dump's page channel; none when the pages stay here. The lazy page
        server listens: it checks the destination's certificate against the CA alone."""
        if self.tls is None or page_server is None:
            return None
        return self.tls.listening() if listening else self.tls

    async def _dump_in_session(
        self, opts: CriuOptions, hold: Callable[[Notification], Awaitable[None]]
    ) -> DumpResult:
        async with self.criu.session() as session:
            self._swrk_pid = session.pid
            return await session.dump(opts, hold)

    def _last_pre_dump(self) -> str | None:
        rounds = sorted(
            (int(p.name[3:]) for p in self.workdir.glob("pre*") if p.name[3:].isdigit()),
        )
        return f"../pre{rounds[-1]}" if rounds else None

    async def release(self, commit: bool) -> None:
        if self._decision is None or self._dump is None:
            return
        if not self._decision.done():
            self._decision.set_result(commit)
        if commit:
            if not self._lazy:
                # After the commit (the only time this runs): CRIU finishes, the tree
                # stays stopped. If CRIU died meanwhile the tree is still frozen in the
                # hold, and must be killed all the same: go on to kill().
                try:
                    await self._dump
                except HaulError as exc:
                    log.warning(
                        "CRIU did not finish the committed dump (%s); the tree is %s",
                        exc.one_line(),
                        "frozen in its hold" if self.hold.exists else "NOT held",
                    )
            # post-copy: CRIU now serves pages until the destination has them all
            return
        await self._end_dump_for_rollback()
        await asyncio.to_thread(self.hold.thaw)  # it may wait for killed tasks to leave

    async def _end_dump_for_rollback(self) -> None:
        """Before the commit: CRIU must let the tree go. A stop-and-copy dump told "no"
        at post-dump resumes it and ends. A lazy dump does not: CRIU 4.2 ignores a
        refused post-dump there, unlocks the network and starts its lazy page server,
        which would wait forever for a destination; and one released earlier serves a
        destination that will never come. So once CRIU serves (status-ready), it is
        ended; ptrace ends with it, and the tree stays frozen in its hold until thawed."""
        if self._dump is None or self._dump.done():
            return
        if self._decision is not None and not self._decision.done():
            self._decision.set_result(False)
        if self._lazy and self._swrk_pid is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAZY_SERVING_TIMEOUT_S):
                    await self._serving.wait()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._swrk_pid, signal.SIGKILL)
        with contextlib.suppress(HaulError):
            await self._dump

    async def wait_pages_served(self) -> None:
        if self._dump is not None:
            await self._dump

    async def kill(self) -> None:
        await asyncio.to_thread(self.hold.kill_and_thaw, self.tree.pids())
        await self.tree.kill()

    async def resume(self) -> None:
        await self._end_dump_for_rollback()
        await asyncio.to_thread(self.hold.thaw)  # it may wait for killed tasks to leave
        if self.tree.alive:
            self.tree.resume()
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    async def cleanup(self) -> None:
        """After the commit: the images and the workload's files here are no longer needed."""
        await asyncio.to_thread(self.hold.thaw)  # it may wait for killed tasks to leave
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)
        if self.data_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self.data_dir, True)


def _page_server(endpoint: Endpoint | None) -> PageServer | None:
    return PageServer(endpoint.address, endpoint.port) if endpoint is not None else None
