"""The destination agent's incoming migrations: one CriuDestination each, and the
files the source sends, checked as they land.

Names coming over the wire are checked here, once: image names are plain file
names, data paths are relative paths that stay inside the workload's data
directory (no "..", no absolute paths, no links followed).

Each migration goes through the stages of haul/dest/stages.py (opened, receiving,
restored and stopped, resumed, finished; or discarded before the resume), and each call
is taken only in the stages that table gives it: a call asked again gets its first
answer and does nothing more; a call out of its stage is refused in one line
(StateError, 409 on the wire) and changes nothing. A discard never kills a copy that
was resumed (the commit was heard: it may be the only one), ``finish`` never adopts a
stopped copy, and a second restore never makes a second copy. The restore holds the
migration's lock, so a discard or a decision that comes meanwhile waits for it.

Once a copy is restored (stopped), the source's ``resume`` (the commit) or
``discard`` (the rollback) settles it. If neither comes within the policy's
deadline, or after this agent restarted, a :class:`~haul.dest.undecided.DecisionWatch`
asks the source agent and acts on its answer through the same table; whichever comes
first settles the migration, under the migration's lock, and the later call finds it
settled (``resume`` and ``finish`` of a committed migration then succeed, ``discard``
of it is refused).

An incoming migration holds its workload's name in the host's one registry of names
(:class:`NameClaims`, the agent's haul/agent/names.py) from its open until it is
discarded, or until its copy is adopted and the name passes to that workload: no
workload can be started or adopted under that name meanwhile, so what a discard removes
(the data directory the open made, the work directory, a container's home) is the
migration's own.

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
import contextlib
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
from haul.dest.stages import Answer, Call, IncomingState, Rule, refusal, rule
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
    WorkloadError,
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


@dataclass(slots=True)
class Incoming:
    migration_id: str
    workload: str
    strategy: Strategy
    dest: CriuDestination
    argv: list[str] = field(default_factory=list)
    #: a runc container arriving (its image, its home here), or None for a process tree
    arrival: ContainerArrivalPort | None = None
    #: image name -> (sha256, size), as received
    received: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: the workload's own address, for its registry entry here after the commit
    net: WorkloadNet | None = None
    #: the source's host name, as this agent's peers config knows it
    source: str | None = None
    state: IncomingState = IncomingState.OPENED
    #: time.time() when the copy was restored (or found restored at agent start)
    restored_at: float | None = None
    #: what the source asked when it opened the migration (a replay must ask the same)
    asked: tuple[Any, ...] = ()
    #: the restore's answer and what it was asked (lazy), for a restore asked again
    figures: RestoreFigures | None = None
    lazy: bool | None = None
    #: the workload's data directory, when this migration made it (a discard removes it)
    data: Path | None = None
    asking: AskStatus = field(default_factory=AskStatus)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watch: asyncio.Task[None] | None = None
    #: what it holds here, its budget, its progress (haul/dest/intake.py)
    intake: Intake = field(default_factory=Intake.unbounded)


#: makes a process tree's destination port (CriuDestination's arguments): CriuDestination,
#: or in tests one that restores no real copy (haul/dest/fakes.py)
MakeDestination = Callable[..., CriuDestination]

#: adopt(workload, tree, argv, net, holder): register a migrated copy as a workload of
#: this host; its name passes from ``holder`` (the incoming migration) to the workload
Adopt = Callable[[str, ProcessTree, list[str], WorkloadNet | None, str], Awaitable[object]]


class NameClaims(Protocol):
    """The host's one registry of names (the agent's: haul/agent/names.py): an incoming
    migration holds its workload's name from its open until it is discarded or its copy
    is adopted; a name held by anyone else is refused (a HaulError, 409 on the wire)."""

    def holder(self, name: str) -> str | None: ...

    def claim(self, name: str, holder: str, *, replacing: str | None = None) -> None: ...

    def release(self, name: str, holder: str) -> None: ...


def holder_of(migration_id: str) -> str:
    """Who holds a name an incoming migration brings, as the registry of names says it."""
    return f"incoming migration {migration_id}"


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

    async def adopt(self, pid: int, holder: str) -> None:
        """Register the running copy as a workload of this host (the name passes from
        ``holder``, the incoming migration, to it)."""
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
        destination: MakeDestination = CriuDestination,
        names: NameClaims | None = None,
    ) -> None:
        self.criu = criu
        self.host = host
        self._destination = destination
        #: the host's names: an incoming migration holds its workload's (None: no check)
        self.names = names
        #: how many at once, each one's budget, the journal's reserve, the reaper's times
        self.limits = limits if limits is not None else IntakeLimits()
        self.free_bytes: FreeBytes = disk_free
        self.clock: Callable[[], float] = time.monotonic
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
        #: ids of migrations being opened right now
        self._opening: set[str] = set()
        #: migration id -> FINISHED or DISCARDED, once settled here
        self._settled: OrderedDict[str, IncomingState] = OrderedDict()

    async def sweep(self) -> leftovers.Sweep:
        """At agent start: nothing is in flight yet, so whatever an earlier agent left
        of incoming migrations is removed, except a restored copy that still exists:
        it waits for its source's decision (:meth:`start_watches` asks for it). A
        container's migration goes with everything made for it here (its runc
        container too: a copy not marked restored was never announced to its source,
        which therefore cannot have committed).

        Names come first: what a workload registered here holds (the agent claims its
        workloads' names before this) is never removed, whatever a record says."""
        found = leftovers.sweep(
            self.root,
            self.data_root,
            lambda name: MIGRATION_ID.fullmatch(name) is not None,
            taken=self._taken,
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
            if self._taken(left.record.workload):
                # its home is a registered workload's: only the migration's own files go
                await asyncio.to_thread(shutil.rmtree, left.workdir, True)
                leftovers.forget_record(self.root, left.migration_id)
                found.removed.append(left.migration_id)
            elif await self._remove_left(left):
                found.removed.append(left.migration_id)
        return found

    def _taken(self, workload: str) -> bool:
        return self.names is not None and self.names.holder(workload) is not None

    def _reloaded(self, copy: RestoredCopy) -> Incoming:
        record = copy.record
        net = _record_net(record)
        arrival: ContainerArrivalPort | None = None
        if record.container is not None:
            dest, arrival = self._container_again(copy.workdir, record, copy.pid)
        else:
            dest = self._destination(
                self.criu,
                copy.workdir,
                workload=record.workload,
                net=net,
                bridge=self.bridge if net is not None else None,
            )
            dest.tree = ProcessTree(copy.pid)
        data = None
        if self._taken(record.workload):
            # what a race left before names were one registry: the name is a workload's,
            # so nothing of its files is this migration's to remove
            log.error(
                "incoming migration %s: its workload's name %s is taken here (%s)",
                copy.migration_id,
                record.workload,
                self.names.holder(record.workload) if self.names is not None else "",
            )
        else:
            if self.names is not None:
                self.names.claim(record.workload, holder_of(copy.migration_id))
            if record.container is None and self.data_root is not None:
                data = self.data_root / record.workload  # the migration made it
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
            data=data,
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
            if item.watch is None and item.state in (
                IncomingState.RESTORED,
                IncomingState.RESUMED,
            ):
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
        """A new incoming migration (the same request again while nothing arrived: the
        same answer), within the limits: refused (TooMany) when as many as the agent
        takes at once are open or opening, and (NoRoom) when its claim does not fit
        with the journal's reserve left; nothing is made then."""
        check_id(migration_id)
        check_workload(workload)
        asked = (
            workload,
            strategy,
            needed_bytes,
            lazy_source,
            list(argv or []),
            data_mode,
            shared_images,
            net,
            page_tls,
            source,
            container,
        )
        again = self._open_again(migration_id, asked)
        if again is not None:
            return again
        self._check_page_tls(page_tls)
        self.limits.admit(migration_id, len(self._items) + len(self._opening), self.host)
        holder = holder_of(migration_id)
        if self.names is not None:
            self.names.claim(workload, holder)  # at once: nobody else can take it meanwhile
        self._opening.add(migration_id)
        try:
            free = await asyncio.to_thread(self.free_bytes, self.root)
            self.limits.check_room(
                f"incoming migration {migration_id}", needed_bytes, self.root, free
            )
            if container is not None:
                item = await self._open_container(
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
            else:
                item = await self._open_tree(
                    migration_id,
                    workload,
                    strategy,
                    needed_bytes,
                    lazy_source,
                    argv=list(argv or []),
                    data_mode=data_mode,
                    shared_images=shared_images,
                    net=net,
                    page_tls=page_tls,
                    source=source,
                )
        except BaseException:
            self._release_name(workload, migration_id)
            raise
        finally:
            self._opening.discard(migration_id)
        item.asked = asked
        self._items[migration_id] = item
        return item

    def _intake(self, migration_id: str, needed_bytes: int) -> Intake:
        return Intake(
            migration_id,
            needed_bytes=needed_bytes,
            limits=self.limits,
            free_bytes=self.free_bytes,
            clock=self.clock,
        )

    def _release_name(self, workload: str, migration_id: str) -> None:
        """The migration's name is free again (if it still holds it)."""
        if self.names is not None:
            self.names.release(workload, holder_of(migration_id))

    def _open_again(self, migration_id: str, asked: tuple[Any, ...]) -> Incoming | None:
        """The migration, when this open was asked before and nothing arrived since
        (the same answer again); None when it is new here. Raises StateError otherwise."""
        if migration_id in self._opening:
            raise StateError(f"incoming migration {migration_id} is being opened")
        item, _ = self._find(migration_id, Call.OPEN, unknown_ok=True)
        if item is None:
            return None
        if item.asked != asked:
            raise StateError(
                refusal(migration_id, item.state, "it is already open here, for another request")
            )
        return item

    async def _open_tree(
        self,
        migration_id: str,
        workload: str,
        strategy: Strategy,
        needed_bytes: int,
        lazy_source: PageServer | None,
        *,
        argv: list[str],
        data_mode: int,
        shared_images: Path | None,
        net: WorkloadNet | None,
        page_tls: bool,
        source: str | None,
    ) -> Incoming:
        """A process tree: its CriuDestination, its record, its data directory (new)."""
        data = self.data_root / workload if self.data_root is not None else None
        if data is not None and (data.exists() or data.is_symlink()):
            raise WorkloadError(f"{data} already exists on the destination")
        dest = self._destination(
            self.criu,
            self.root / migration_id,
            listen=None if shared_images is not None else PageServer(self.listen_address, 0),
            lazy_source=lazy_source,
            shared_images=shared_images,
            workload=workload,
            net=net,
            bridge=self.bridge,
            tls=self.tls if page_tls else None,
        )
        await dest.check_free(workload, needed_bytes)
        item = Incoming(
            migration_id,
            workload,
            strategy,
            dest,
            argv=argv,
            net=net,
            source=source,
            intake=self._intake(migration_id, needed_bytes),
        )
        try:
            # What a restarted agent needs: which workload's data this migration may
            # create (removed after a crash), and whom to ask about a restored copy.
            private_dir(self.root)
            leftovers.write_record(self.root, migration_id, _record_of(item))
            await dest.prepare(strategy)
            if data is not None:
                data.mkdir(parents=True)
                item.data = data
                os.chmod(data, data_mode & 0o7777)
        except BaseException:
            await asyncio.shield(self._undo_open(item))
            raise
        return item

    async def _undo_open(self, item: Incoming) -> None:
        """An open that failed part way: whatever it made goes (what cannot is logged)."""
        try:
            await item.dest.discard()
            if item.data is not None:
                await asyncio.to_thread(shutil.rmtree, item.data, True)
        except HaulError as exc:
            log.error("incoming migration %s: %s", item.migration_id, exc.one_line())
        leftovers.forget_record(self.root, item.migration_id)

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

    # -- the stages (haul/dest/stages.py) ------------------------------------------

    def _decide(self, migration_id: str, stage: IncomingState, call: Call) -> Rule:
        """The rule for ``call`` in ``stage``; StateError (one line) when it is refused."""
        found = rule(stage, call)
        if found.answer is Answer.REFUSE:
            raise StateError(refusal(migration_id, stage, found.why))
        if found.answer is Answer.WAIT:  # only a call that does not wait sees a restore
            raise StateError(refusal(migration_id, stage, "a restore is under way"))
        return found

    def _find(
        self, migration_id: str, call: Call, *, unknown_ok: bool = False
    ) -> tuple[Incoming | None, Rule]:
        """The migration (None once settled) and the rule for ``call`` now. An unknown
        migration is a UsageError, or (``unknown_ok``) None and GO."""
        item = self._items.get(check_id(migration_id))
        if item is not None:
            return item, self._decide(migration_id, item.state, call)
        settled = self._settled.get(migration_id)
        if settled is not None:
            return None, self._decide(migration_id, settled, call)
        if unknown_ok:
            return None, Rule(Answer.GO)
        raise UsageError(f"no incoming migration {migration_id!r} here")

    @contextlib.asynccontextmanager
    async def _locked(
        self, migration_id: str, call: Call
    ) -> AsyncIterator[tuple[Incoming | None, Rule]]:
        """The migration under its lock (a restore under way ends first) and the rule
        for ``call`` in the stage it is in then; (None, rule) once it is settled."""
        item = self._items.get(check_id(migration_id))
        if item is None:
            yield self._find(migration_id, call)
            return
        async with item.lock:
            yield item, self._decide(migration_id, item.state, call)

    def _receiving(self, migration_id: str) -> Incoming:
        """The migration, if it still takes files (before its copy is restored)."""
        item, found = self._find(migration_id, Call.RECEIVE)
        assert item is not None  # a settled migration takes no files
        if found.then is not None:
            item.state = found.then
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
        if item.data is None:
            raise UsageError("this host keeps no workload data directories")
        return DataTree(item.data)

    async def receive_image(
        self, migration_id: str, name: str, chunks: AsyncIterator[bytes], sha256: str
    ) -> int:
        """One image file, checked against ``sha256``; the same file again is taken as
        received (its size), another one under the same name is refused."""
        item = self._receiving(migration_id)
        check_image_name(name)
        had = item.received.get(name)
        if had is not None:
            if had[0] != sha256.lower():
                raise StateError(
                    f"incoming migration {migration_id}: {name} was received already, "
                    "with other content"
                )
            return had[1]
        images = item.dest.images
        async with item.intake.upload(f"image/{name}", chunks, images) as metered:
            size = await _write_checked(images / name, metered, sha256)
        item.received[name] = (sha256.lower(), size)
        return size

    async def receive_data(
        self,
        migration_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        sha256: str,
        mode: int = 0o644,
        owner: tuple[int, int] | None = None,
    ) -> int:
        """One of the workload's files, new or replacing the one there (its directory
        came first), checked against ``sha256`` before it takes its place, and only
        while the migration still takes files (a restore may have begun meanwhile)."""
        tree, intake = self._data(migration_id), self.get(migration_id).intake
        async with intake.upload(f"data/{path}", chunks, tree.base) as metered:
            return await tree.write_file(
                path,
                metered,
                sha256,
                mode,
                still_open=lambda: self._receiving(migration_id),
                owner=owner,
            )

    def make_entries(self, migration_id: str, entries: list[DataEntry]) -> None:
        """Directories, symbolic links, FIFOs and sockets' files of the workload's files,
        parents first, or the modes and owners of entries there (haul/dest/datatree.py);
        each made one counts ENTRY_BYTES against the migration's budget."""
        tree, intake = self._data(migration_id), self.get(migration_id).intake
        for e in entries:
            made = e.kind != "file"  # a file's entry only sets its mode and owner
            if made:
                intake.check_budget(ENTRY_BYTES - intake.held.get(f"data/{e.path}", 0))
            tree.make(e.path, e.kind, e.mode, e.target, e.owner, e.opaque)
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
        """Restore the copy, stopped; asked again (the same ``lazy``), the first answer.
        A restore that fails leaves no copy: only a discard is taken after it."""
        async with self._locked(migration_id, Call.RESTORE) as (item, found):
            assert item is not None  # a settled migration refuses a restore
            if found.answer is Answer.AGAIN:
                if item.figures is None or item.lazy != lazy:
                    raise StateError(
                        refusal(migration_id, item.state, "it was restored as asked before")
                    )
                return item.figures
            item.state = IncomingState.RESTORING
            try:
                figures = await item.dest.restore(lazy)
            except BaseException:
                item.state = IncomingState.RESTORE_FAILED
                await asyncio.shield(self._kill_copy(item))
                raise
            item.state = IncomingState.RESTORED
            item.figures, item.lazy = figures, lazy
            item.restored_at = time.time()
            try:  # which process is the copy, for an agent that restarts (restored.pid too)
                leftovers.write_record(self.root, migration_id, _record_of(item, figures.dest_pid))
            except TransportError as exc:
                log.warning("incoming migration %s: %s", migration_id, exc.one_line())
            if item.watch is None:
                self._watch(item, self.policy.deadline_s)
            return figures

    @staticmethod
    async def _kill_copy(item: Incoming) -> None:
        """Whatever a failed restore left running goes (the rest goes with the discard)."""
        tree = item.dest.tree
        if tree is None or not tree.alive:
            return
        try:
            await tree.kill()
        except HaulError as exc:
            log.error(
                "incoming migration %s: what its failed restore left (pid %d) could not be "
                "killed: %s",
                item.migration_id,
                tree.root_pid,
                exc.one_line(),
            )

    async def resume(self, migration_id: str) -> None:
        """The commit: let the copy run (asked again: nothing happens)."""
        async with self._locked(migration_id, Call.RESUME) as (item, found):
            if item is None or found.answer is Answer.AGAIN:
                return
            self._stop_watch(item)
            await item.dest.resume()
            item.state = IncomingState.RESUMED
            # in case the source's finish never comes: ask, and adopt the copy
            self._watch(item, self.policy.deadline_s)

    async def wait_pages(self, migration_id: str) -> None:
        """Post-copy, after the resume: return once every page has arrived."""
        item, found = self._find(migration_id, Call.WAIT_PAGES)
        if item is None or found.answer is Answer.AGAIN:
            return
        await item.dest.wait_pages()

    async def discard(self, migration_id: str) -> None:
        """The rollback: kill any restored copy, remove what the migration made here
        (asked again, or never opened here: nothing happens). Refused once the copy was
        resumed: the commit was heard, and that copy may be the only one."""
        if check_id(migration_id) not in self._items and migration_id not in self._settled:
            if migration_id not in self._opening:  # its open writes its record meanwhile
                leftovers.forget_record(self.root, migration_id)
            return
        async with self._locked(migration_id, Call.DISCARD) as (item, found):
            if item is None or found.answer is Answer.AGAIN:
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
        """After the resume: forget the migration, keep the running copy and adopt it as
        a workload of this host. None when it was finished already."""
        async with self._locked(migration_id, Call.FINISH) as (item, found):
            if item is None or found.answer is Answer.AGAIN:
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

    def _settle(self, item: Incoming, stage: IncomingState) -> None:
        item.state = stage
        self._items.pop(item.migration_id, None)
        self._settled[item.migration_id] = stage
        while len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)

    async def _discard(self, item: Incoming) -> None:
        self._settle(item, IncomingState.DISCARDED)
        if item.arrival is not None:
            # kept when something stays: a restarted agent tries again (the name stays
            # held until then: what is left is in the container's home)
            if await self._release_arrival(item.dest, item.arrival, item.migration_id):
                leftovers.forget_record(self.root, item.migration_id)
                self._release_name(item.workload, item.migration_id)
            return
        await item.dest.discard()
        if item.data is not None:
            await asyncio.to_thread(shutil.rmtree, item.data, True)
        leftovers.forget_record(self.root, item.migration_id)
        self._release_name(item.workload, item.migration_id)

    async def _finish(self, item: Incoming) -> None:
        # adopted before it is settled and its record goes: an adoption that fails
        # leaves it resumed (finish may be asked again), and an agent that dies in
        # between finds the copy again, asks again, and adopts it again (which finds
        # it adopted)
        holder = holder_of(item.migration_id)
        if item.arrival is not None and item.dest.tree is not None:
            await item.arrival.adopt(item.dest.tree.root_pid, holder)
        elif self.adopt is not None and item.dest.tree is not None:
            await self.adopt(item.workload, item.dest.tree, item.argv, item.net, holder)
        self._release_name(item.workload, item.migration_id)  # unless it passed to the copy
        self._settle(item, IncomingState.FINISHED)
        leftovers.forget_record(self.root, item.migration_id)
        await item.dest.cleanup()

    # -- asking the source -----------------------------------------------------------

    def _watch(self, item: Incoming, first_after_s: float) -> None:
        async def act(what: Act) -> bool:
            async with item.lock:
                if self._items.get(item.migration_id) is not item:
                    return True  # the source's own call settled it meanwhile
                if what is Act.DISCARD:
                    if rule(item.state, Call.DISCARD).answer is not Answer.GO:
                        log.error(
                            "incoming migration %s: its source says rolled back, but %s "
                            "is %s; it is kept",
                            item.migration_id,
                            item.workload,
                            item.state.value,
                        )
                        return True
                    await self._discard(item)
                    log.warning(
                        "incoming migration %s: %s discarded (its source rolled back)",
                        item.migration_id,
                        item.workload,
                    )
                    return True
                if rule(item.state, Call.RESUME).answer is Answer.GO:
                    await item.dest.resume()
                    item.state = IncomingState.RESUMED
                    log.warning(
                        "incoming migration %s: %s resumed (its source committed)",
                        item.migration_id,
                        item.workload,
                    )
                if item.state is not IncomingState.RESUMED:
                    log.error(
                        "incoming migration %s: its source says committed, but %s is %s",
                        item.migration_id,
                        item.workload,
                        item.state.value,
                    )
                    return True
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
