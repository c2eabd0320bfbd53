"""The source side of a runc container's migration: implements the engine's SourcePort.

runc checkpoints the container itself (``runc checkpoint``), which keeps its own state
right; haul holds the source frozen by pausing the container first (runc's freezer
cgroup) and asking for ``--leave-running``: CRIU puts back the freezer state it found,
so after the dump the container is alive and frozen, with no CRIU process left to die
(docs/containers.md). Rollback resumes it (``runc resume``); the commit kills it
(``runc kill KILL``, which a frozen task obeys at once) and deletes it.

Stop-and-copy sends the pages to the destination's CRIU page server during the
checkpoint. Post-copy runs ``runc checkpoint --lazy-pages``: once the dump is written
runc says so on its status descriptor and its CRIU serves the pages until the
destination has them all, then the container is paused again.

A container with a network namespace of its own is locked by haul (nftables) before
the pause, since CRIU unlocks the namespace at the end of a ``--leave-running`` dump
and the frozen source would otherwise take data the copy never sees.

CRIU gets haul's options through ``CRIU_CONFIG_FILE`` (a file in the work directory),
and for a container haul made also through the file its ``org.criu.config``
annotation names (haul/runtime/criuconf.py); an adopted container's own file is not
haul's to write. Those options carry TLS for the page channels when the agents have
certificates (runc passes CRIU no TLS options of its own), and post-copy the lazy
page server's address, so it listens there and not on every address.

CRIU thaws the container's cgroup once it has seized every task (they wait in ptrace
stops) and freezes it again only at its end; a CRIU that dies in between lets the
tasks go, running. So a checkpoint that fails or is cancelled pauses the container
again at once, and a post-copy checkpoint, which serves pages with the tasks seized,
has the container paused as soon as its dump is written (the freezer takes traced
tasks; CRIU needs no ptrace to serve pages): then a CRIU that dies lets nothing run. A
killed CRIU also leaves its nftables lock in the container's namespace; the rollback
removes it (haul/net/lock.py).

A cancelled checkpoint (an abort, Ctrl-C) is not killed while its CRIU dumps: CRIU
works inside the container's tasks then (system calls it injects over their code, its
parasite), and tasks it leaves that way die of SIGTRAP once it is gone (seen: an
abort during the final dump lost the container, 1 run in 5). The abort waits for
runc to end by itself (haul/runtime/runc.py, OnCancel); a post-copy checkpoint that
serves its pages is ended at once (its CRIU is out of the tasks by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from haul.criu.info import host_capabilities
from haul.criu.options import EVERY_ADDRESS, PageServer, TlsFiles
from haul.criu.service import Criu
from haul.criu.stats import read_dump_stats
from haul.engine.figures import (
    PAGE_SIZE,
    Capabilities,
    ContainerRuntime,
    DumpFigures,
    Endpoint,
    IterationFigures,
)
from haul.errors import ContainerError, HaulError, WorkloadError
from haul.net import lock
from haul.runtime import criuconf
from haul.runtime.runc import CheckpointOptions, OnCancel, Runc
from haul.workload.footprint import files_bytes
from haul.workload.proctree import ProcessTree

log = logging.getLogger(__name__)

#: why a container is paused again: its checkpoint failed or was cancelled (its CRIU
#: may have died with the cgroup thawed), or its post-copy dump is written and CRIU
#: serves the pages with the cgroup thawed, as it always does
PART_WAY = "its checkpoint ended part way"
SERVING = "its dump is written and its CRIU serves the pages"


class RuncSource:
    """Checkpoints container ``container_id`` of ``runc`` into ``workdir``.

    ``criu_config``: the CRIU configuration file the container's ``org.criu.config``
    annotation names when haul owns it (it is rewritten before each checkpoint); None
    for a container haul adopted. ``own_network``: it has a network namespace of its
    own; ``network_moves``: the destination can be told its address (not for a
    namespace someone else made: such a container is refused at the pre-flight).
    ``lazy_listen``: post-copy, where this host's lazy page server listens.
    ``tls``: this host's certificate, key and CA; every page channel is then TLS."""

    def __init__(
        self,
        criu: Criu,
        runc: Runc,
        container_id: str,
        workdir: Path,
        *,
        criu_config: Path | None = None,
        own_network: bool = False,
        network_moves: bool = True,
        lazy_listen: PageServer | None = None,
        files: Path | None = None,
        sent_files: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.criu = criu
        #: this host's certificate, key and CA: every page channel is then TLS
        self.tls = tls
        self.runc = runc
        self.container_id = container_id
        self.criu_config = criu_config
        self.own_network = own_network
        self.network_moves = network_moves
        self.lazy_listen = lazy_listen
        #: the container's files here (what the transport sends), gone once it has left
        self.files = files
        #: what the transport sends of them (counted in the pre-flight's claim), if
        #: not ``files`` (the agent removes those itself)
        self.sent_files = sent_files if sent_files is not None else files
        self.workdir = workdir
        self.images = workdir / "images"
        self.logs = workdir / "work"
        #: the init PID of the container, once checked
        self._pid: int | None = None
        #: post-copy: runc's checkpoint, serving pages until the destination has them
        self._serving: asyncio.Task[None] | None = None
        self._paused = False
        self._locked = False
        #: pre-copy rounds done: the final dump's parent is the last
        self._rounds = 0

    async def capabilities(self) -> Capabilities:
        caps = await host_capabilities(self.criu)
        try:
            version = await self.runc.version()
        except ContainerError as exc:
            return dataclasses.replace(caps, no_runtime=exc.one_line())
        return dataclasses.replace(caps, runtime=ContainerRuntime("runc", version))

    async def check_workload(self) -> int:
        state = await self.runc.state(self.container_id)
        if state.status != "running":
            raise ContainerError(
                f"container {self.container_id} is {state.status}, not running: runc "
                "checkpoints only a running container"
            )
        if self.own_network and not self.network_moves:
            raise ContainerError(
                f"container {self.container_id} has a network namespace haul did not "
                "make (it was adopted): haul does not know its address to give it on "
                "another host"
            )
        self._pid = state.pid
        resident = ProcessTree(state.pid).resident_bytes()
        if self.sent_files is None:
            return resident
        return resident + await asyncio.to_thread(files_bytes, self.sent_files)

    async def pre_dump(self, iteration: int, page_server: Endpoint | None) -> IterationFigures:
        """One pre-copy round while the container runs: ``runc checkpoint --pre-dump``
        into ``pre<iteration>``, whose parent is the round before (needs soft-dirty
        tracking, which the pre-flight checks)."""
        images = self.workdir / f"pre{iteration}"
        images.mkdir(parents=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._write_criu_config(page_server=page_server is not None, lazy=False)
        started = time.monotonic()
        await self.runc.checkpoint(
            self.container_id,
            CheckpointOptions(
                image_path=images,
                work_path=self.logs,
                leave_running=False,
                file_locks=False,
                page_server=_address(page_server),
                pre_dump=True,
                parent_path=f"../pre{iteration - 1}" if iteration > 1 else None,
            ),
            env=self._env(),
            on_cancel=OnCancel(wait=True),  # CRIU works inside the tasks throughout
        )
        self._rounds = iteration
        written = await asyncio.to_thread(_pages_written, self.logs, images)
        return IterationFigures(
            iteration=iteration,
            pages_written=written,
            pages_skipped_parent=0,
            bytes_sent=written * PAGE_SIZE,
            duration_s=time.monotonic() - started,
        )

    async def freeze_and_dump(self, lazy: bool, page_server: Endpoint | None) -> DumpFigures:
        if lazy and self.lazy_listen is None:
            raise WorkloadError("post-copy needs an address for the source's lazy page server")
        for d in (self.images, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self._write_criu_config(page_server=page_server is not None, lazy=lazy)
        pid = self._pid or (await self.runc.state(self.container_id)).pid
        started = time.monotonic()
        if self.own_network:
            await lock.lock(pid)
            self._locked = True
        await self.runc.pause(self.container_id)
        self._paused = True
        frozen_at = time.monotonic()
        if lazy:
            assert self.lazy_listen is not None
            await self._start_serving(self.lazy_listen)
        else:
            await self._checkpoint(
                self._options(page_server=_address(page_server)), OnCancel(wait=True)
            )
        pages = sum(p.stat().st_size for p in self.images.glob("pages-*.img"))
        return DumpFigures(
            frozen_at_s=frozen_at,
            pages_written=pages // PAGE_SIZE,
            pages_lazy=0,
            bytes_written=sum(p.stat().st_size for p in self.images.iterdir()),
            duration_s=time.monotonic() - started,
        )

    def _write_criu_config(self, *, page_server: bool, lazy: bool) -> None:
        """haul's options for this checkpoint's CRIU: the network lock and, when pages
        cross to the destination (its page server, or post-copy this host's lazy page
        server), TLS and the lazy page server's address, which runc gives CRIU no other
        way (docs/security.md)."""
        options = criuconf.dump_options(own_network=self.own_network)
        if self.tls is not None and (page_server or lazy):
            options += (self.tls.listening() if lazy else self.tls).config_lines()
        if lazy and self.lazy_listen is not None and self.lazy_listen.address != EVERY_ADDRESS:
            options.append(f"address {self.lazy_listen.address}")
        criuconf.write(self.env_config, options)
        if self.criu_config is not None:
            criuconf.write(self.criu_config, options)

    @property
    def env_config(self) -> Path:
        """The CRIU configuration file runc's CRIU is given in its environment."""
        return self.workdir / "criu.conf"

    def _env(self) -> dict[str, str]:
        return {criuconf.ENV: str(self.env_config)}

    def _options(
        self, *, page_server: str | None, lazy: bool = False, status_fd: int | None = None
    ) -> CheckpointOptions:
        return CheckpointOptions(
            image_path=self.images,
            work_path=self.logs,
            leave_running=True,
            tcp_established=self.own_network,
            file_locks=True,
            page_server=page_server,
            lazy_pages=lazy,
            status_fd=status_fd,
            parent_path=f"../pre{self._rounds}" if self._rounds else None,
        )

    async def _checkpoint(
        self, opts: CheckpointOptions, on_cancel: OnCancel, pass_fds: tuple[int, ...] = ()
    ) -> None:
        """``runc checkpoint``; one that fails or is cancelled leaves the container paused
        (its CRIU may have died with the cgroup thawed). Cancelled, it is let end by
        itself while ``on_cancel`` says so (haul/runtime/runc.py)."""
        try:
            await self.runc.checkpoint(
                self.container_id, opts, pass_fds=pass_fds, env=self._env(), on_cancel=on_cancel
            )
        except BaseException:
            await asyncio.shield(self._pause_again(PART_WAY))
            raise

    async def _pause_again(self, why: str) -> None:
        """The container back in its freezer, unless it is there (or gone). ``why``: what
        left it thawed; a checkpoint that ended part way (:data:`PART_WAY`) is a
        warning, a post-copy dump that is written and serves its pages
        (:data:`SERVING`) is the normal path."""
        try:
            state = await self.runc.state(self.container_id)
            if state.status == "running":
                await self.runc.pause(self.container_id)
                level = logging.WARNING if why == PART_WAY else logging.INFO
                log.log(level, "container %s: %s; paused it again", self.container_id, why)
        except HaulError as exc:
            log.error(
                "container %s: could not pause it again (%s): %s",
                self.container_id,
                why,
                exc.one_line(),
            )

    async def _start_serving(self, listen: PageServer) -> None:
        """Post-copy: run the lazy checkpoint in the background; return once runc says
        the dump is written and its page server is up, with the container paused again
        (CRIU serves its pages with the tasks seized and the cgroup thawed)."""
        read_end, write_end = os.pipe()
        opts = self._options(
            page_server=f"{listen.address}:{listen.port}", lazy=True, status_fd=write_end
        )
        # cancelled, the checkpoint is let end while CRIU dumps (inside the tasks), and
        # ended at once when it serves pages (the tasks hold none of its code then)
        on_cancel = OnCancel(wait=True)
        self._serving = asyncio.create_task(
            self._checkpoint(opts, on_cancel, pass_fds=(write_end,))
        )
        ready = asyncio.create_task(asyncio.to_thread(_read_one, read_end))
        ready.add_done_callback(lambda _: setattr(on_cancel, "wait", False))
        try:
            await asyncio.wait({self._serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            os.close(write_end)  # a runc that died leaves the reader at end of file
        with contextlib.suppress(OSError):
            await ready
        if self._serving.done():
            self._serving.result()  # runc's error
            raise ContainerError("runc ended the lazy checkpoint before serving any page")
        await self._pause_again(SERVING)

    async def release(self, commit: bool) -> None:
        """Nothing holds the dump: the frozen container is the hold. A refused post-copy
        dump stops serving pages."""
        if not commit:
            await self._stop_serving()

    async def _stop_serving(self) -> None:
        if self._serving is not None and not self._serving.done():
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, HaulError):
                await self._serving

    async def wait_pages_served(self) -> None:
        if self._serving is not None:
            await self._serving

    async def kill(self) -> None:
        """After the commit: the frozen container dies without running again."""
        await self.runc.kill(self.container_id)
        await self.runc.delete(self.container_id, force=True)
        self._paused = False

    async def resume(self) -> None:
        """Rollback: the container runs again here, its network unlocked (haul's lock, and
        the one a CRIU killed while it dumped left)."""
        await self._stop_serving()
        state = await self.runc.state(self.container_id)
        if state.status == "stopped":
            raise ContainerError(
                f"container {self.container_id} has stopped: its processes are gone, so "
                "it cannot run again here"
            )
        if self.own_network:
            for table in await lock.drop_criu_locks(state.pid):
                log.warning(
                    "container %s: removed %s, the lock a CRIU that ended part way left",
                    self.container_id,
                    table,
                )
        if state.status == "paused":
            await self.runc.resume(self.container_id)
        self._paused = False
        if self._locked:
            await lock.unlock(state.pid)
            self._locked = False
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    async def cleanup(self) -> None:
        """After the commit: the images and the container's files here are no longer
        needed."""
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)
        if self.files is not None:
            await asyncio.to_thread(shutil.rmtree, self.files, True)


def _read_one(fd: int) -> bytes:
    """One byte from ``fd`` (empty at end of file), which is then closed."""
    try:
        return os.read(fd, 1)
    finally:
        os.close(fd)


def _address(page_server: Endpoint | None) -> str | None:
    return f"{page_server.address}:{page_server.port}" if page_server is not None else None


def _pages_written(logs: Path, images: Path) -> int:
    """Pages a round wrote: CRIU's stats of the round (runc leaves them in its work
    directory), else the round's page images' size (none when they went to a page
    server)."""
    stats = read_dump_stats(logs)
    if stats is not None:
        return stats.pages_written
    return sum(p.stat().st_size for p in images.glob("pages-*.img")) // PAGE_SIZE
