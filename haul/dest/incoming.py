"""The destination agent's incoming migrations: one CriuDestination each, and the
files the source sends, checked as they land.

Names coming over the wire are checked here, once: image names are plain file
names, data paths are relative paths that stay inside the workload's data
directory (no "..", no absolute paths, no links followed).

Once a copy is restored (stopped), the source's ``resume`` (the commit) or
``discard`` (the rollback) settles it. If neither comes within the policy's
deadline, or after this agent restarted, a :class:`~haul.dest.undecided.DecisionWatch`
asks the source agent and acts on its answer; whichever comes first settles
the migration, under the migration's lock, and the later call finds it settled
(``resume`` and ``finish`` of a committed migration then succeed, ``discard``
of it is refused).

A runc container arrives through the agent's :class:`ContainerArrivals`; its record
(haul/dest/leftovers.py) holds what the source said of it, so a restarted agent
rebuilds its arrival and destination over the home it has here: it removes a
container's migration that was never restored (or whose copy is gone) with
everything made for it (runc's container, mounts, namespace, cgroup, directory), and
keeps a restored copy to ask its source about, which is then discarded the same way
or resumed and registered as this host's runc container.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from haul.criu.options import PageServer, TlsFiles
from haul.criu.service import Criu
from haul.dest import leftovers
from haul.dest.criudest import CriuDestination
from haul.dest.datatree import DataEntry, DataTree
from haul.dest.intake import (
    ENTRY_BYTES,
    PRIVATE_FILE,
    FreeBytes,
    Intake,
    IntakeLimits,
    disk_free,
    private_dir,
    write_chunks,
)
from haul.dest.leftovers import IncomingRecord, RestoredCopy
from haul.dest.undecided import Act, AskPolicy, AskSource, AskStatus, DecisionWatch
from haul.engine.figures import RestoreFigures
from haul.engine.phases import Strategy
from haul.errors import (
    ChecksumMismatch,
    ContainerError,
    HaulError,
    StateError,
    TransportError,
    UsageError,
)
from haul.net.spec import WorkloadNet
from haul.workload.proctree import ProcessTree

log = logging.getLogger(__name__)

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


class IncomingState(enum.Enum):
    #: the images and the workload's files arrive (only now)
    RECEIVING = "receiving"
    #: the copy is being restored from what arrived
    RESTORING = "restoring"
    #: the copy exists, stopped; the source's decision is not known here yet
    RESTORED = "restored"
    #: the commit was heard: the copy runs; the source still finishes the migration
    RESUMED = "resumed"


@dataclass(slots=True)
class Incoming:
    migration_id: str
    workload: str
    strategy: Strategy
    dest: CriuDestination
    argv: list[str] = field(default_factory=list)
    #: a runc container arriving (its image, its home here), or None for a process tree
    arrival: ContainerArrivalPort | None = None
    received: dict[str, str] = field(default_factory=dict)  # name -> sha256
    #: the workload's own address, for its registry entry here after the commit
    net: WorkloadNet | None = None
    #: the source's host name, as this agent's peers config knows it
    source: str | None = None
    state: IncomingState = IncomingState.RECEIVING
    #: time.time() when the copy was restored (or found restored at agent start)
    restored_at: float | None = None
    asking: AskStatus = field(default_factory=AskStatus)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watch: asyncio.Task[None] | None = None
    #: what it holds here, its budget, its progress (haul/dest/intake.py)
    intake: Intake = field(default_factory=Intake.unbounded)


#: adopt(workload, tree, argv, net): register a migrated copy as a workload of this host
Adopt = Callable[[str, ProcessTree, list[str], WorkloadNet | None], Awaitable[object]]


class ContainerArrivalPort(Protocol):
    """What the registry needs of an arriving container (haul/agent/arrivals.py)."""

    @property
    def files(self) -> Path | None:
        """Where the transport puts the container's files (None: they are used in
        place, on storage both hosts see, and none arrive)."""
        ...

    def saved(self) -> dict[str, Any]:
        """What its record keeps of it, for :meth:`ContainerArrivals.again`."""
        ...

    @property
    def image_bytes(self) -> int:
        """What the source says its image's blobs weigh (those this host lacks come
        over HTTP): counted in the migration's budget besides the pre-flight's claim."""
        ...

    async def unpack(self) -> None: ...

    async def release(self) -> None: ...

    async def adopt(self, pid: int) -> None:
        """Register the running copy as a workload of this host."""
        ...


class ContainerArrivals(Protocol):
    """How an arriving container's destination port and home are made, and made again
    by a restarted agent from its record (the agent's: haul/agent/arrivals.py)."""

    async def arrive(
        self,
        migration_id: str,
        workload: str,
        move: Any,
        net: WorkloadNet | None,
        workdir: Path,
        listen: PageServer | None,
        lazy_source: PageServer | None,
        shared_images: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> tuple[CriuDestination, ContainerArrivalPort]:
        """A new arrival, its home's directory claimed (refused when the name has one);
        with ``shared_images``, restored from the images there; with ``tls`` its page
        channels are TLS."""
        ...

    def again(
        self,
        workload: str,
        saved: dict[str, Any],
        net: WorkloadNet | None,
        workdir: Path,
        pid: int | None,
    ) -> tuple[CriuDestination, ContainerArrivalPort]:
        """An arrival an earlier agent began, from what its record ``saved``: discarding
        it removes whatever was made for it here; ``pid``, its restored copy, is what a
        resume lets go. Raises HaulError when ``saved`` is unreadable."""
        ...


#: how many settled migrations are remembered, for the source's late calls
SETTLED_KEPT = 256


async def _write_checked(
    target: Path, chunks: AsyncIterator[bytes], sha256: str, mode: int = PRIVATE_FILE
) -> int:
    h = hashlib.sha256()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise UsageError(f"{target.name} was already received; refusing to overwrite") from None
    except OSError as exc:
        raise TransportError(f"cannot create {target.name}: {exc.strerror}") from exc
    try:
        size = await write_chunks(fd, chunks, h)
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


def _net_fields(net: WorkloadNet | None) -> dict[str, Any]:
    if net is None:
        return {}
    return {"net_address": str(net.address), "net_port": net.port}


def _record_net(record: IncomingRecord) -> WorkloadNet | None:
    if record.net_address is None:
        return None
    return WorkloadNet.parse(record.net_address, record.net_port)


def _record_of(item: Incoming, restored_pid: int | None = None) -> IncomingRecord:
    """What a restarted agent needs of ``item`` (with its copy's PID once restored)."""
    return IncomingRecord(
        workload=item.workload,
        source=item.source,
        argv=item.argv,
        strategy=item.strategy,
        restored_pid=restored_pid,
        start_ticks=leftovers.start_ticks(restored_pid) if restored_pid is not None else None,
        container=item.arrival.saved() if item.arrival is not None else None,
        **_net_fields(item.net),
    )


class IncomingRegistry:
    """Every incoming migration of one destination host.

    ``ask`` asks a source agent for its decision (None: nobody can be asked, the
    copy only waits); ``adopt`` registers a committed copy as a workload here.
    """

    def __init__(
        self,
        criu: Criu,
        root: Path,
        *,
        data_root: Path | None,
        listen_address: str,
        bridge: str | None = None,
        tls: TlsFiles | None = None,
        ask: AskSource | None = None,
        adopt: Adopt | None = None,
        policy: AskPolicy | None = None,
        arrivals: ContainerArrivals | None = None,
        limits: IntakeLimits | None = None,
        host: str = "this host",
    ) -> None:
        self.criu = criu
        self.host = host
        #: how many at once, each one's budget, the journal's reserve, the reaper's times
        self.limits = limits if limits is not None else IntakeLimits()
        self.free_bytes: FreeBytes = disk_free
        self.clock: Callable[[], float] = time.monotonic
        #: migrations whose opening has begun and not ended (they count as open)
        self._opening = 0
        #: where arriving workloads with their own address get their veth attached
        self.bridge = bridge
        self.root = root
        self.data_root = data_root
        self.listen_address = listen_address
        #: this host's certificate, key and CA: pages arrive only over TLS
        self.tls = tls
        self.ask = ask
        self.adopt = adopt
        #: makes an arriving container's destination port (None: this host runs none)
        self.arrivals = arrivals
        self.policy = policy if policy is not None else AskPolicy()
        self._items: dict[str, Incoming] = {}
        #: migration id -> "committed" or "discarded", once settled here
        self._settled: OrderedDict[str, str] = OrderedDict()

    async def sweep(self) -> leftovers.Sweep:
        """At agent start: nothing is in flight yet, so whatever an earlier agent left
        of incoming migrations is removed, except a restored copy that still exists:
        it waits for its source's decision (:meth:`start_watches` asks for it). A
        container's migration goes with everything made for it here (its runc
        container too: a copy not marked restored was never announced to its source,
        which therefore cannot have committed)."""
        found = leftovers.sweep(
            self.root, self.data_root, lambda name: MIGRATION_ID.fullmatch(name) is not None
        )
        kept = []
        for copy in found.kept:
            try:
                self._items[copy.migration_id] = self._reloaded(copy)
            except HaulError as exc:
                log.error(
                    "incoming migration %s: %s; its copy is left as it is",
                    copy.migration_id,
                    exc.one_line(),
                )
                continue
            kept.append(copy)
        found.kept = kept
        for left in found.containers:
            if await self._remove_left(left):
                found.removed.append(left.migration_id)
        return found

    def _reloaded(self, copy: RestoredCopy) -> Incoming:
        record = copy.record
        net = _record_net(record)
        arrival: ContainerArrivalPort | None = None
        if record.container is not None:
            dest, arrival = self._container_again(copy.workdir, record, copy.pid)
        else:
            dest = CriuDestination(
                self.criu,
                copy.workdir,
                data=self.data_root,
                workload=record.workload,
                net=net,
                bridge=self.bridge if net is not None else None,
            )
            dest.tree = ProcessTree(copy.pid)
        return Incoming(
            copy.migration_id,
            record.workload,
            record.strategy,
            dest,
            argv=list(record.argv),
            arrival=arrival,
            source=record.source,
            net=net,
            state=IncomingState.RESTORED if copy.stopped else IncomingState.RESUMED,
            restored_at=time.time(),
        )

    def _container_again(
        self, workdir: Path, record: IncomingRecord, pid: int | None
    ) -> tuple[CriuDestination, ContainerArrivalPort]:
        if self.arrivals is None or record.container is None:
            raise ContainerError(
                f"an arriving container {record.workload}, but this host runs no containers"
            )
        return self.arrivals.again(
            record.workload, record.container, _record_net(record), workdir, pid
        )

    async def _remove_left(self, left: leftovers.ContainerLeft) -> bool:
        """A container's migration an earlier agent left, not kept: runc's container (if
        runc restored one), the container's home, the work directory, the record."""
        try:
            dest, arrival = self._container_again(left.workdir, left.record, None)
        except HaulError as exc:
            log.error(
                "incoming migration %s: %s; what it left is left as it is",
                left.migration_id,
                exc.one_line(),
            )
            return False
        if not await self._release_arrival(dest, arrival, left.migration_id):
            return False
        leftovers.forget_record(self.root, left.migration_id)
        return True

    def start_watches(self) -> None:
        """Ask at once about every migration :meth:`sweep` kept (needs a running loop)."""
        for item in self._items.values():
            if item.watch is None and item.state is not IncomingState.RECEIVING:
                self._watch(item, 0.0)

    def items(self) -> list[Incoming]:
        return sorted(self._items.values(), key=lambda i: i.migration_id)

    def get(self, migration_id: str) -> Incoming:
        """The migration (a call about it: its progress)."""
        try:
            item = self._items[check_id(migration_id)]
        except KeyError:
            raise UsageError(f"no incoming migration {migration_id!r} here") from None
        item.intake.touch()
        return item

    async def check(self, workload: str, needed_bytes: int) -> None:
        """Pre-flight: nothing of that name here, and room for it."""
        check_workload(workload)
        probe = CriuDestination(self.criu, self.root / "preflight", data=self.data_root)
        await probe.check_free(workload, needed_bytes)
        free = await asyncio.to_thread(self.free_bytes, self.root)
        self.limits.check_room(f"{workload}'s incoming migration", needed_bytes, self.root, free)

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
        source: str | None = None,
        container: Any = None,
    ) -> Incoming:
        """A new incoming migration, within the limits: refused (TooMany) when as many
        as the agent takes at once are open or opening, and (NoRoom) when its claim
        does not fit with the journal's reserve left; nothing is made then."""
        check_id(migration_id)
        self.limits.admit(migration_id, len(self._items) + self._opening, self.host)
        self._opening += 1
        try:
            where = self.root
            free = await asyncio.to_thread(self.free_bytes, where)
            self.limits.check_room(f"incoming migration {migration_id}", needed_bytes, where, free)
            return await self._open(
                migration_id,
                workload,
                strategy,
                needed_bytes,
                lazy_source,
                argv=argv,
                data_mode=data_mode,
                shared_images=shared_images,
                net=net,
                page_tls=page_tls,
                source=source,
                container=container,
            )
        finally:
            self._opening -= 1

    def _intake(self, migration_id: str, needed_bytes: int) -> Intake:
        return Intake(
            migration_id,
            needed_bytes=needed_bytes,
            limits=self.limits,
            free_bytes=self.free_bytes,
            clock=self.clock,
        )

    async def _open(
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
        source: str | None = None,
        container: Any = None,
    ) -> Incoming:
        check_id(migration_id)
        check_workload(workload)
        if migration_id in self._items or migration_id in self._settled:
            raise UsageError(f"migration {migration_id} is already open here")
        self._check_page_tls(page_tls)
        if container is not None:
            return await self._open_container(
                migration_id,
                workload,
                strategy,
                needed_bytes,
                lazy_source,
                container=container,
                net=net,
                page_tls=page_tls,
                source=source,
                shared_images=shared_images,
            )
        dest = CriuDestination(
            self.criu,
            self.root / migration_id,
            data=self.data_root,
            listen=None if shared_images is not None else PageServer(self.listen_address, 0),
            lazy_source=lazy_source,
            shared_images=shared_images,
            workload=workload,
            net=net,
            bridge=self.bridge,
            tls=self.tls if page_tls else None,
        )
        await dest.check_free(workload, needed_bytes)
        # What a restarted agent needs: which workload's data this migration may
        # create (removed after a crash), and whom to ask about a restored copy.
        private_dir(self.root)
        record = IncomingRecord(
            workload=workload,
            source=source,
            argv=list(argv or []),
            strategy=strategy,
            **_net_fields(net),
        )
        leftovers.write_record(self.root, migration_id, record)
        await dest.prepare(strategy)
        if self.data_root is not None:
            (self.data_root / workload).mkdir(parents=True)
            os.chmod(self.data_root / workload, data_mode & 0o7777)
        item = Incoming(
            migration_id,
            workload,
            strategy,
            dest,
            argv=list(argv or []),
            net=net,
            source=source,
            intake=self._intake(migration_id, needed_bytes),
        )
        self._items[migration_id] = item
        return item

    async def _open_container(
        self,
        migration_id: str,
        workload: str,
        strategy: Strategy,
        needed_bytes: int,
        lazy_source: PageServer | None,
        *,
        container: Any,
        net: WorkloadNet | None,
        page_tls: bool,
        source: str | None,
        shared_images: Path | None = None,
    ) -> Incoming:
        """A runc container: its destination port and home are the agent's to make; its
        record (what the source said of it) is written as soon as its home is claimed.
        With ``shared_images`` runc restores from there, with no page server here."""
        if self.arrivals is None:
            raise UsageError("this host runs no containers (no runc here)")
        if shared_images is not None and not shared_images.parent.is_dir():
            # the source made the migration's directory there before it asked
            raise UsageError(
                f"{shared_images.parent} is not on this host: is "
                f"{shared_images.parent.parent} shared with {source or 'the source'}?"
            )
        listen = PageServer(self.listen_address, 0)
        dest, arrival = await self.arrivals.arrive(
            migration_id,
            workload,
            container,
            net,
            self.root / migration_id,
            None if strategy is Strategy.POST_COPY or shared_images is not None else listen,
            lazy_source,
            shared_images,
            tls=self.tls if page_tls else None,
        )
        item = Incoming(
            migration_id,
            workload,
            strategy,
            dest,
            net=net,
            source=source,
            arrival=arrival,
            intake=self._intake(migration_id, needed_bytes + arrival.image_bytes),
        )
        try:
            private_dir(self.root)
            leftovers.write_record(self.root, migration_id, _record_of(item))
            await dest.check_free(workload, needed_bytes)
            await dest.prepare(strategy)
        except BaseException:
            await asyncio.shield(self._release_arrival(dest, arrival, migration_id))
            leftovers.forget_record(self.root, migration_id)
            raise
        self._items[migration_id] = item
        return item

    @staticmethod
    async def _release_arrival(
        dest: CriuDestination, arrival: ContainerArrivalPort, migration_id: str
    ) -> bool:
        """Everything made for an arriving container goes (what cannot is logged);
        whether all went."""
        problems = []
        for undo in (dest.discard, arrival.release):
            try:
                await undo()
            except HaulError as exc:
                problems.append(exc.one_line())
        if problems:
            log.error(
                "incoming migration %s: its container could not be removed entirely: %s",
                migration_id,
                "; ".join(problems),
            )
        return not problems

    async def receive_blob(
        self,
        migration_id: str,
        digest: str,
        chunks: AsyncIterator[bytes],
        receive: Callable[[AsyncIterator[bytes]], Awaitable[int]],
    ) -> int:
        """One blob of an arriving container's image (``receive`` writes the chunks it is
        given), while the migration takes files, within its budget."""
        item = self._receiving(migration_id)
        if item.arrival is None:
            raise UsageError(f"incoming migration {migration_id} brings no container")
        async with item.intake.upload(f"blob/{digest}", chunks, self.root) as metered:
            return await receive(metered)

    async def take_blobs(self, migration_id: str, take: Callable[[], Awaitable[int]]) -> int:
        """An arriving container's missing blobs, from a layout on shared storage (read
        here, so nothing of them arrives over the API to count against the budget)."""
        item = self._receiving(migration_id)
        if item.arrival is None:
            raise UsageError(f"incoming migration {migration_id} brings no container")
        with item.intake.working():
            return await take()

    async def unpack_image(self, migration_id: str) -> None:
        """An arriving container's image, unpacked here from the blobs received."""
        item = self._receiving(migration_id)
        if item.arrival is None:
            raise UsageError(f"incoming migration {migration_id} brings no container")
        with item.intake.working():
            await item.arrival.unpack()

    def _check_page_tls(self, page_tls: bool) -> None:
        """Both ends agree on TLS for the pages: the source asks for it when it has
        certificates and calls this agent over https; this agent, with certificates,
        takes pages in no other way."""
        if page_tls and self.tls is None:
            raise UsageError(
                "the source sends pages over TLS, but this agent has no certificates ([agent.tls])"
            )
        if not page_tls and self.tls is not None:
            raise UsageError(
                "this agent has certificates ([agent.tls]) and takes pages only "
                "over TLS; the source must have certificates too"
            )

    def _receiving(self, migration_id: str) -> Incoming:
        """The migration, if it still takes files (before its copy is restored)."""
        item = self.get(migration_id)
        if item.state is not IncomingState.RECEIVING:
            raise StateError(
                f"incoming migration {migration_id} is {item.state.value}: it takes no more files"
            )
        return item

    def _data(self, migration_id: str) -> DataTree:
        item = self._receiving(migration_id)
        if item.arrival is not None:
            if item.arrival.files is None:
                raise UsageError(
                    f"incoming migration {migration_id}: the container's files are used "
                    "where they are (shared storage); none are taken"
                )
            return DataTree(item.arrival.files)
        if self.data_root is None:
            raise UsageError("this host keeps no workload data directories")
        return DataTree(self.data_root / item.workload)

    async def receive_image(
        self, migration_id: str, name: str, chunks: AsyncIterator[bytes], sha256: str
    ) -> int:
        item = self._receiving(migration_id)
        check_image_name(name)
        images = item.dest.images
        async with item.intake.upload(f"image/{name}", chunks, images) as metered:
            size = await _write_checked(images / name, metered, sha256)
        item.received[name] = sha256
        return size

    async def receive_data(
        self,
        migration_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        sha256: str,
        mode: int = 0o644,
    ) -> int:
        """One of the workload's files, new or replacing the one there (its directory
        came first), checked against ``sha256`` before it takes its place, and only
        while the migration still takes files (a restore may have begun meanwhile)."""
        tree, intake = self._data(migration_id), self.get(migration_id).intake
        async with intake.upload(f"data/{path}", chunks, tree.base) as metered:
            return await tree.write_file(
                path, metered, sha256, mode, still_open=lambda: self._receiving(migration_id)
            )

    def make_entries(self, migration_id: str, entries: list[DataEntry]) -> None:
        """Directories, symbolic links and FIFOs of the workload's files, parents first,
        or the modes of entries there (haul/dest/datatree.py); each made one counts
        ENTRY_BYTES against the migration's budget."""
        tree, intake = self._data(migration_id), self.get(migration_id).intake
        for e in entries:
            made = e.kind != "file"  # a file's entry only sets its mode
            if made:
                intake.check_budget(ENTRY_BYTES - intake.held.get(f"data/{e.path}", 0))
            tree.make(e.path, e.kind, e.mode, e.target)
            if made:
                intake.hold(f"data/{e.path}", ENTRY_BYTES)

    def remove_entries(self, migration_id: str, paths: list[str]) -> int:
        """Remove entries of the workload's files, deepest first (a directory must be
        empty by then); how many were there. What they held is freed."""
        tree, intake = self._data(migration_id), self.get(migration_id).intake
        removed = 0
        for path in paths:
            if tree.remove(path):
                intake.release(f"data/{path}")
                removed += 1
        return removed

    async def restore(self, migration_id: str, lazy: bool) -> RestoreFigures:
        item = self._receiving(migration_id)
        item.state = IncomingState.RESTORING
        try:
            figures = await item.dest.restore(lazy)
        except BaseException:
            item.state = IncomingState.RECEIVING
            raise
        item.state = IncomingState.RESTORED
        item.restored_at = time.time()
        try:  # which process is the copy, for an agent that restarts (restored.pid says too)
            leftovers.write_record(self.root, migration_id, _record_of(item, figures.dest_pid))
        except TransportError as exc:
            log.warning("incoming migration %s: %s", migration_id, exc.one_line())
        if item.watch is None:
            self._watch(item, self.policy.deadline_s)
        return figures

    async def resume(self, migration_id: str) -> None:
        """The commit: let the copy run (again: nothing happens)."""
        if self._settled.get(check_id(migration_id)) == "committed":
            return
        item = self.get(migration_id)
        async with item.lock:
            if self._items.get(migration_id) is not item:
                if self._settled.get(migration_id) == "committed":
                    return
                raise UsageError(f"incoming migration {migration_id} was discarded here")
            self._stop_watch(item)
            if item.state is not IncomingState.RESUMED:
                await item.dest.resume()
                item.state = IncomingState.RESUMED
            # in case the source's finish never comes: ask, and adopt the copy
            self._watch(item, self.policy.deadline_s)

    async def wait_pages(self, migration_id: str) -> None:
        await self.get(migration_id).dest.wait_pages()

    async def discard(self, migration_id: str) -> None:
        """The rollback: kill any restored copy, remove everything (again: nothing happens)."""
        if self._settled.get(check_id(migration_id)) == "committed":
            raise UsageError(
                f"incoming migration {migration_id} was committed here; its copy "
                "runs and is not discarded"
            )
        item = self._items.get(migration_id)
        if item is None:
            leftovers.forget_record(self.root, migration_id)
            return
        async with item.lock:
            if self._items.get(migration_id) is not item:
                return
            self._stop_watch(item)
            await self._discard(item)

    async def discard_if(self, migration_id: str, still: Callable[[Incoming], bool]) -> bool:
        """Discard the migration if ``still(item)`` holds under its lock (the reaper's
        rule, haul/dest/reaper.py); whether it was. Resume, discard and the decision
        watch take the lock; a restore marks the migration restoring before it awaits
        anything, so ``still`` sees a restore that began."""
        item = self._items.get(migration_id)
        if item is None:
            return False
        async with item.lock:
            if self._items.get(migration_id) is not item or not still(item):
                return False
            self._stop_watch(item)
            await self._discard(item)
        return True

    async def finish(self, migration_id: str) -> Incoming | None:
        """After the commit: forget the migration, keep the running copy and adopt it as
        a workload of this host. None when it was finished already."""
        if self._settled.get(check_id(migration_id)) == "committed":
            return None
        item = self.get(migration_id)
        async with item.lock:
            if self._items.get(migration_id) is not item:
                return None
            self._stop_watch(item)
            await self._finish(item)
        return item

    async def aclose(self) -> None:
        """Stop asking (the copies stay as they are; a restarted agent asks again)."""
        tasks = [i.watch for i in self._items.values() if i.watch is not None]
        for task in tasks:
            task.cancel()
        # a watch that crashed was logged by _report_crash already
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- settling, under the item's lock -------------------------------------------

    def _settle(self, migration_id: str, how: str) -> None:
        self._items.pop(migration_id, None)
        self._settled[migration_id] = how
        while len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)

    async def _discard(self, item: Incoming) -> None:
        self._settle(item.migration_id, "discarded")
        if item.arrival is not None:
            # kept when something stays: a restarted agent tries again
            if await self._release_arrival(item.dest, item.arrival, item.migration_id):
                leftovers.forget_record(self.root, item.migration_id)
            return
        await item.dest.discard()
        if self.data_root is not None:
            # a copy found at agent start: its CriuDestination did not create the data
            await asyncio.to_thread(shutil.rmtree, self.data_root / item.workload, True)
        leftovers.forget_record(self.root, item.migration_id)

    async def _finish(self, item: Incoming) -> None:
        self._settle(item.migration_id, "committed")
        # adopted before its record goes: an agent that dies in between finds the copy
        # again, asks again, and adopts it again (which finds it adopted)
        if item.arrival is not None and item.dest.tree is not None:
            await item.arrival.adopt(item.dest.tree.root_pid)
        elif self.adopt is not None and item.dest.tree is not None:
            await self.adopt(item.workload, item.dest.tree, item.argv, item.net)
        leftovers.forget_record(self.root, item.migration_id)
        await item.dest.cleanup()

    # -- asking the source -----------------------------------------------------------

    def _watch(self, item: Incoming, first_after_s: float) -> None:
        async def act(what: Act) -> bool:
            async with item.lock:
                if self._items.get(item.migration_id) is not item:
                    return True  # the source's own call settled it meanwhile
                if what is Act.DISCARD:
                    await self._discard(item)
                    log.warning(
                        "incoming migration %s: %s discarded (its source rolled back)",
                        item.migration_id,
                        item.workload,
                    )
                    return True
                if item.state is not IncomingState.RESUMED:
                    await item.dest.resume()
                    item.state = IncomingState.RESUMED
                    log.warning(
                        "incoming migration %s: %s resumed (its source committed)",
                        item.migration_id,
                        item.workload,
                    )
                if what is Act.RESUME:
                    return False
                await self._finish(item)
                log.warning(
                    "incoming migration %s: %s adopted (its source committed)",
                    item.migration_id,
                    item.workload,
                )
                return True

        watch = DecisionWatch(
            migration_id=item.migration_id,
            workload=item.workload,
            source=item.source,
            ask=self.ask,
            act=act,
            resumed=lambda: item.state is IncomingState.RESUMED,
            policy=self.policy,
            status=item.asking,
        )
        item.watch = asyncio.create_task(
            watch.run(first_after_s), name=f"decision-{item.migration_id}"
        )
        item.watch.add_done_callback(_report_crash)

    @staticmethod
    def _stop_watch(item: Incoming) -> None:
        task = item.watch
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        item.asking.next_ask_at = None


def _report_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        one = exc.one_line() if isinstance(exc, HaulError) else repr(exc)
        log.error("asking for a migration's decision stopped: %s", one, exc_info=exc)
