"""Migrations this agent runs as the source: one engine run per job, in the background.

The source agent runs the engine, so a closed terminal never strands a
migration: the CLI only starts a job and watches it. A job's ports are the
local CRIU (CriuSource), the destination agent over HTTP (RemoteDestination,
HttpTransport) and this agent's journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from haul.agent.arrivals import layout_of
from haul.agent.bindings import Bindings
from haul.agent.client import AgentAccess, AgentClient
from haul.agent.containers import ContainerRecord, Containers
from haul.agent.journal import Journal
from haul.agent.migration_models import ContainerMove
from haul.agent.models import NetSpec
from haul.agent.remote import RemoteDestination
from haul.agent.wire import Conflict, NotFound
from haul.agent.workloads import workload_net
from haul.criu.options import PageServer
from haul.criu.service import Criu
from haul.engine.events import Event, PreflightFinished, SourceKilled
from haul.engine.figures import PreflightReport
from haul.engine.machine import Migration
from haul.engine.phases import AFTER_COMMIT, TERMINAL, Phase, Strategy
from haul.engine.ports import HooksPort, JournalRecord
from haul.engine.runner import Outcome, run
from haul.engine.spec import MigrationSpec
from haul.engine.timeouts import scaled
from haul.errors import ContainerError, HaulError, TooMany, UsageError
from haul.runtime.bundle import is_mount_point
from haul.runtime.images import ImageRef, blob_path
from haul.runtime.sharedlayer import lies_in
from haul.source.criusource import CriuSource
from haul.source.freezer import Hold
from haul.source.runcsource import RuncSource
from haul.transport.http import HttpTransport
from haul.workload.proctree import ProcessTree

log = logging.getLogger(__name__)

LAZY_PORTS = (20000, 40000)
#: ended migrations remembered (GET /v1/migrations/ID); older ones are in the journal
ENDED_KEPT = 256
#: how long a restarted agent waits for the destination when it finishes a migration
RECOVER_PEER_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Job:
    migration: Migration
    started_at: float
    task: asyncio.Task[Outcome] | None = None
    outcome: Outcome | None = None
    #: (seconds since start, phase, event name) as they happened
    events: list[tuple[float, str, str]] = field(default_factory=list)
    error: str = ""
    #: the source was killed after the commit: the workload is the destination's now
    source_killed: bool = False

    @property
    def id(self) -> str:
        return self.migration.spec.migration_id

    @property
    def phase(self) -> Phase:
        return self.migration.phase


@dataclass(frozen=True, slots=True)
class _Ports:
    source: CriuSource | RuncSource
    dest: RemoteDestination
    transport: HttpTransport


class _Unrecorded:
    """A dry run's journal: it records nothing (a check leaves no trace)."""

    async def append(self, record: JournalRecord) -> None:
        return None


def _peer_client(peer: AgentAccess, name: str) -> AgentClient:
    """A client of the destination agent ``name``, with this agent's credentials for it:
    its token, and over https its certificate (the peer's is checked against the CA)."""
    return peer.client(name=f"destination {name}")


class MigrationJobs:
    def __init__(
        self,
        *,
        host: str,
        criu: Criu,
        state_dir: Path,
        data_root: Path,
        journal: Journal,
        advertise_address: str,
        peers: Mapping[str, AgentAccess],
        tree_of: Callable[[str], ProcessTree],
        bindings: Bindings | None = None,
        argv_of: Callable[[str], list[str]],
        on_moved: Callable[[str], Awaitable[None]],
        net_of: Callable[[str], NetSpec | None] = lambda name: None,
        container_of: Callable[[str], ContainerRecord | None] = lambda name: None,
        containers: Containers | None = None,
        max_running: int = 4,
        ended_kept: int = ENDED_KEPT,
    ) -> None:
        self.host = host
        #: migrations run at once ([agent.limits] max_migrations); one more is refused
        self.max_running = max_running
        self.ended_kept = ended_kept
        self.criu = criu
        self.state_dir = state_dir
        self.data_root = data_root
        self.journal = journal
        self.advertise_address = advertise_address
        self.peers = peers
        #: which peer each migration goes to, and the secret it gave (docs/security.md)
        self.bindings = bindings if bindings is not None else Bindings(state_dir)
        self._tree_of = tree_of
        self._argv_of = argv_of
        self._net_of = net_of
        self._container_of = container_of
        self._containers = containers
        self._on_moved = on_moved
        self._jobs: dict[str, Job] = {}
        self._moving: set[str] = set()

    def get(self, migration_id: str) -> Job:
        try:
            return self._jobs[migration_id]
        except KeyError:
            raise NotFound(
                f"no migration {migration_id!r} on this host", code="no_migration"
            ) from None

    def all(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.started_at)

    def peer(self, name: str) -> AgentAccess:
        try:
            return self.peers[name]
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none"
            raise UsageError(f"unknown destination host {name!r} (peers: {known})") from None

    async def start(
        self,
        workload: str,
        to: str,
        *,
        strategy: Strategy = Strategy.AUTO,
        max_downtime_ms: float = 300.0,
        max_iterations: int = 8,
        timeout_s: float | None = None,
        shared_dir: Path | None = None,
        hooks: HooksPort | None = None,
    ) -> Job:
        if to == self.host:
            raise UsageError(f"{workload} already runs on {to}")
        peer = self.peer(to)
        tree = self._tree_of(workload)  # raises when there is no such workload
        strategy = self._how_it_moves(workload, strategy, shared_dir)
        if workload in self._moving:
            raise UsageError(f"{workload} is already being migrated")
        self._admit(workload)
        mid = f"m{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        # Where the workload answers: its own address, which moves with it, or else
        # its host's (hooks and load balancers are told).
        net = workload_net(self._net_of(workload))
        own = net.ip if net is not None else None
        spec = MigrationSpec(
            migration_id=mid,
            workload=workload,
            source_host=self.host,
            dest_host=to,
            strategy=strategy,
            max_downtime_ms=max_downtime_ms,
            max_iterations=max_iterations,
            source_address=own or self.advertise_address,
            dest_address=own or urlsplit(peer.url).hostname or "",
            container_runtime=self._runtime_of(workload),
        )
        job = Job(Migration(spec), started_at=time.monotonic())
        self.bindings.record_destination(mid, to)  # only `to` may ask for its decision
        self._write_intent(mid, workload, to, shared_dir)
        self._forget_ended()
        self._jobs[mid] = job
        self._moving.add(workload)
        job.task = asyncio.create_task(self._run(job, tree, peer, timeout_s, shared_dir, hooks))
        return job

    def _how_it_moves(self, workload: str, strategy: Strategy, shared_dir: Path | None) -> Strategy:
        """What a move of ``workload`` with ``shared_dir`` is refused for here, before the
        pre-flight (UsageError, one line); else its strategy (``auto`` with a shared
        directory is stop-and-copy). A migration and its check both ask this, so a check
        passes exactly what a migration would start."""
        if shared_dir is not None:
            if strategy is Strategy.POST_COPY:
                raise UsageError(
                    "post-copy pulls pages from the source; --shared-dir "
                    "goes with stop-and-copy or pre-copy"
                )
            if not shared_dir.is_dir():
                raise UsageError(f"shared directory {shared_dir} does not exist here")
            if strategy is Strategy.AUTO:
                strategy = Strategy.STOP_AND_COPY
        container = self._container_of(workload)
        if shared_dir is not None and container is not None:
            in_place(container, shared_dir)  # refused, in one line, when it is not there
        if shared_dir is None and container is not None and container.shared_layer:
            # a copy would leave the layer behind on the shared storage, used by no one
            holder = Path(container.shared_layer).parent.parent
            raise UsageError(
                f"{workload}'s writable layer is on shared storage ({container.shared_layer}): "
                f"move it with --shared-dir {holder}"
            )
        return strategy

    def running(self) -> int:
        return sum(1 for j in self._jobs.values() if j.task is not None and not j.task.done())

    def _admit(self, workload: str) -> None:
        """Refuse (TooMany) a migration beyond ``max_running`` at once."""
        running = self.running()
        if running >= self.max_running:
            raise TooMany(
                f"{self.host} runs {running} migration{'s' if running != 1 else ''} already "
                f"([agent.limits] max_migrations = {self.max_running}); {workload} keeps "
                f"running on {self.host}, try again once one has ended"
            )

    def _forget_ended(self) -> None:
        """Keep the ``ended_kept`` latest ended migrations (their journals stay)."""
        ended = [j for j in self.all() if j.task is not None and j.task.done()]
        for job in ended[: max(0, len(ended) - self.ended_kept)]:
            del self._jobs[job.id]

    def _runtime_of(self, workload: str) -> str | None:
        """The runtime a workload runs with (None: a process tree)."""
        return "runc" if self._container_of(workload) is not None else None

    @contextlib.asynccontextmanager
    async def _ports(
        self, spec: MigrationSpec, tree: ProcessTree, peer: AgentAccess, shared_dir: Path | None
    ) -> AsyncIterator[_Ports]:
        """The ports of one migration from this host: the local CRIU, the destination
        agent over HTTP, the transport between them."""
        container = self._container_of(spec.workload)
        if container is not None:
            async with self._container_ports(spec, container, peer, shared_dir) as ports:
                yield ports
            return
        data = self.data_root / spec.workload
        async with _peer_client(peer, spec.dest_host) as client:
            workdir = (
                shared_dir if shared_dir is not None else self.state_dir / "outgoing"
            ) / spec.migration_id
            net = self._net_of(spec.workload)
            source = CriuSource(
                self.criu,
                tree,
                workdir,
                own_network=net is not None,
                lazy_listen=PageServer(self.advertise_address, secrets.choice(range(*LAZY_PORTS))),
                data_dir=data,
                tls=client.access.tls,
            )
            dest = RemoteDestination(
                client,
                spec.migration_id,
                spec.workload,
                lazy_source=source.lazy_listen,
                argv=self._argv_of(spec.workload),
                data_mode=stat.S_IMODE(data.stat().st_mode) if data.exists() else 0o700,
                shared_images=source.images if shared_dir is not None else None,
                net=net,
                source_host=self.host,
                on_secret=self._keeper(spec),
            )
            transport = HttpTransport(
                client.incoming,
                spec.migration_id,
                source.images,
                source_data=data,
                skip_pages=shared_dir is not None,
            )
            yield _Ports(source, dest, transport)

    @contextlib.asynccontextmanager
    async def _container_ports(
        self,
        spec: MigrationSpec,
        container: ContainerRecord,
        peer: AgentAccess,
        shared_dir: Path | None,
    ) -> AsyncIterator[_Ports]:
        """A runc container's: runc checkpoints it here (RuncSource), the destination
        restores it with runc, its files are its writable layer (or, without an image,
        its whole root filesystem) and its image's blobs go only where they lack."""
        if self._containers is None:
            raise ContainerError("this agent runs no containers")
        received = (
            layout_of(self._containers, container.image_digest)
            if container.image_digest is not None
            else None
        )
        move, layout = container_move(
            container, self._argv_of(spec.workload), received=received, shared_dir=shared_dir
        )
        # --shared-dir: its files stay where they are, its images are written there
        files = None if move.in_place else Path(container.rootfs_upper or container.rootfs)
        net = self._net_of(spec.workload)
        # haul rewrites only a CRIU configuration file of its own (haul/runtime/criuconf.py)
        criu_config = container.criu_config if container.owned else None
        workdir = (shared_dir or self.state_dir / "outgoing") / spec.migration_id
        # made before the destination is asked: it checks that it sees it (a dry run
        # asks nothing of the sort and makes nothing)
        made = shared_dir is not None and not spec.dry_run
        if made:
            workdir.mkdir(mode=0o700)
        try:
            async with self._runc_ports(
                spec, container, peer, move, layout, workdir, files, net, criu_config, shared_dir
            ) as ports:
                yield ports
        finally:
            if made:  # the images and blobs there are no one's now
                await asyncio.to_thread(shutil.rmtree, workdir, True)

    @contextlib.asynccontextmanager
    async def _runc_ports(
        self,
        spec: MigrationSpec,
        container: ContainerRecord,
        peer: AgentAccess,
        move: ContainerMove,
        layout: Path | None,
        workdir: Path,
        files: Path | None,
        net: NetSpec | None,
        criu_config: str | None,
        shared_dir: Path | None,
    ) -> AsyncIterator[_Ports]:
        assert self._containers is not None
        async with _peer_client(peer, spec.dest_host) as client:
            source = RuncSource(
                self.criu,
                self._containers.runc(Path(container.runc_root)),
                container.id,
                workdir,
                criu_config=Path(criu_config) if criu_config else None,
                own_network=container.netns is not None,
                network_moves=net is not None,
                lazy_listen=PageServer(self.advertise_address, secrets.choice(range(*LAZY_PORTS))),
                sent_files=files,
                tls=client.access.tls,
            )
            dest = RemoteDestination(
                client,
                spec.migration_id,
                spec.workload,
                lazy_source=source.lazy_listen,
                net=net,
                source_host=self.host,
                container=move,
                image_layout=layout,
                shared_images=source.images if shared_dir is not None else None,
                blobs_through=workdir if shared_dir is not None else None,
                on_secret=self._keeper(spec),
            )
            transport = HttpTransport(
                client.incoming,
                spec.migration_id,
                source.images,
                source_data=files,
                images_shared=shared_dir is not None,
            )
            yield _Ports(source, dest, transport)

    def _keeper(self, spec: MigrationSpec) -> Callable[[str], None] | None:
        """Where the destination's secret for a migration is kept (not for a dry run)."""
        if spec.dry_run:
            return None
        return lambda secret: self.bindings.record_secret(spec.migration_id, secret)

    async def _run(
        self,
        job: Job,
        tree: ProcessTree,
        peer: AgentAccess,
        timeout_s: float | None,
        shared_dir: Path | None = None,
        hooks: HooksPort | None = None,
    ) -> Outcome:
        spec = job.migration.spec
        try:
            async with self._ports(spec, tree, peer, shared_dir) as ports:

                def seen(phase: Phase, event: Event) -> None:
                    job.events.append(
                        (time.monotonic() - job.started_at, phase.value, type(event).__name__)
                    )
                    if isinstance(event, SourceKilled):
                        job.source_killed = True

                outcome = await run(
                    job.migration,
                    source=ports.source,
                    dest=ports.dest,
                    transport=ports.transport,
                    journal=self.journal,
                    timeouts=scaled(timeout_s),
                    on_event=seen,
                    hooks=hooks,
                )
            job.outcome = outcome
            if outcome.phase is Phase.DONE or job.source_killed:
                # killed after the commit, it is the destination's even when the
                # destination was not told (it asks this agent, and resumes its copy):
                # what this host had of it goes (a container's mounts, namespace...)
                await self._on_moved(spec.workload)
            self._intent_path(job.id).unlink(missing_ok=True)
            return outcome
        except HaulError as exc:
            job.error = exc.one_line()
            raise
        finally:
            self._moving.discard(spec.workload)

    # -- what a restarted agent finds ------------------------------------------

    def _intent_path(self, migration_id: str) -> Path:
        return self.state_dir / "outgoing" / f"{migration_id}.json"

    def _write_intent(
        self, migration_id: str, workload: str, to: str, shared_dir: Path | None = None
    ) -> None:
        """What a restarted agent needs to finish a migration this one started."""
        path = self._intent_path(migration_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        intent = {"workload": workload, "to": to}
        if shared_dir is not None:
            intent["shared_dir"] = str(shared_dir)
        with tmp.open("w") as f:
            json.dump(intent, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    async def recover(self) -> list[str]:
        """Finish what an earlier agent left in flight, by its journal: before the commit,
        the source runs and the destination discards; after it, the destination runs
        and the source is killed. Returns one line per migration handled."""
        done: list[str] = []
        outgoing = self.state_dir / "outgoing"
        for intent in sorted(outgoing.glob("*.json")) if outgoing.is_dir() else []:
            mid = intent.stem
            try:
                data = json.loads(intent.read_text())
                workload, to = str(data["workload"]), str(data["to"])
                shared = data.get("shared_dir")
            except (OSError, ValueError, KeyError) as exc:
                log.error("unreadable migration intent %s: %s", intent, exc)
                continue
            entries = self.journal.read(mid)
            last = entries[-1].record.phase if entries else Phase.NEW
            if last in TERMINAL:
                intent.unlink(missing_ok=True)
                continue
            committed = last in AFTER_COMMIT
            line = await self._finish_recovered(mid, workload, to, committed)
            await self.journal.append(
                JournalRecord(
                    mid, Phase.DONE if committed else Phase.ROLLED_BACK, "recovered", line
                )
            )
            intent.unlink(missing_ok=True)
            shutil.rmtree(outgoing / mid, ignore_errors=True)
            if isinstance(shared, str) and shared.startswith("/"):
                shutil.rmtree(Path(shared, mid), ignore_errors=True)
            log.warning("recovered migration %s: %s", mid, line)
            done.append(f"{mid}: {line}")
        return done

    async def _finish_recovered(self, mid: str, workload: str, to: str, committed: bool) -> str:
        """Committed: kill the source tree first (it may be frozen in its hold, or, with no
        hold, running again since CRIU let it go), then resume the destination's copy;
        if the kill fails the copy is not resumed. Not committed: the destination
        discards, then the source tree runs."""
        try:
            tree: ProcessTree | None = self._tree_of(workload)
        except HaulError:
            tree = None
        hold = Hold(mid)  # the source tree may still be frozen in it
        problems: list[str] = []
        try:
            # The source tree goes first: the destination's copy resumes only once it is gone.
            if committed:
                # a frozen tree dies only once thawed, and then without running again
                await asyncio.to_thread(
                    hold.kill_and_thaw, tree.pids() if tree is not None and tree.alive else []
                )
                if tree is not None and tree.alive:
                    await tree.kill()
            peer = self.peer(to)
            async with asyncio.timeout(RECOVER_PEER_TIMEOUT_S), _peer_client(peer, to) as client:
                secret = self.bindings.secret_of(mid)
                if secret is not None:
                    client.incoming.bind(mid, secret)
                dest = RemoteDestination(client, mid, workload)
                if committed:
                    await dest.resume()
                    await dest.cleanup()
                else:
                    await dest.discard()
        except TimeoutError:
            problems.append(
                f"destination {to} did not answer within {RECOVER_PEER_TIMEOUT_S:.0f} s"
            )
        except HaulError as exc:
            problems.append(exc.one_line())
        if committed:
            await self._on_moved(workload)
            line = f"committed before the agent stopped: {workload} runs on {to}"
        else:
            await asyncio.to_thread(hold.thaw)
            if tree is not None and tree.alive:
                tree.resume()
            line = f"not committed when the agent stopped: {workload} runs on {self.host}"
        if problems:
            line += "; " + "; ".join(problems)
            line += f"; {to} asks this agent for the decision and " + (
                "resumes its copy" if committed else "discards its copy"
            )
        return line

    async def check(
        self,
        workload: str,
        to: str,
        strategy: Strategy = Strategy.AUTO,
        shared_dir: Path | None = None,
    ) -> tuple[Strategy | None, str, list[str], PreflightReport | None]:
        """Pre-flight only (``haul check``, ``--dry-run``): what :meth:`start` refuses
        before it begins, then the migration's own machine and ports, run as a dry run
        that ends after the pre-flight. Touches nothing on either host and journals
        nothing. Returns the strategy it would use (None: refused) and why, the
        problems, and the pre-flight's report."""
        if to == self.host:
            return None, "", [f"{workload} already runs on {to}"], None
        peer = self.peer(to)
        tree = self._tree_of(workload)
        try:
            strategy = self._how_it_moves(workload, strategy, shared_dir)
        except UsageError as exc:
            return None, "", [exc.one_line()], None
        spec = MigrationSpec(
            migration_id=f"check-{secrets.token_hex(4)}",
            workload=workload,
            source_host=self.host,
            dest_host=to,
            strategy=strategy,
            dry_run=True,
            container_runtime=self._runtime_of(workload),
        )
        migration = Migration(spec)
        reports: list[PreflightReport] = []

        def seen(phase: Phase, event: Event) -> None:
            if isinstance(event, PreflightFinished):
                reports.append(event.report)

        async with self._ports(spec, tree, peer, shared_dir) as ports:
            outcome = await run(
                migration,
                source=ports.source,
                dest=ports.dest,
                transport=ports.transport,
                journal=_Unrecorded(),
                timeouts=scaled(None),
                on_event=seen,
            )
        report = reports[0] if reports else None
        if outcome.phase is Phase.CHECKED:
            return outcome.stats.strategy, outcome.stats.strategy_reason, [], report
        if migration.refused_for:
            return None, "", list(migration.refused_for), report
        return None, "", [outcome.reason], report

    def abort(self, migration_id: str) -> Job:
        job = self.get(migration_id)
        if job.phase in TERMINAL:
            raise Conflict(
                f"migration {migration_id} has already ended ({job.phase.value})",
                code="migration_ended",
            )
        if not job.migration.abortable:
            raise Conflict(
                f"migration {migration_id} is past its commit point ({job.phase.value}); "
                "it can only finish",
                code="past_commit",
            )
        if job.task is not None:
            job.task.cancel()
        return job

    async def aclose(self) -> None:
        for job in self._jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        for job in self._jobs.values():
            if job.task is not None:
                try:
                    await job.task
                except (asyncio.CancelledError, HaulError) as exc:
                    log.info("migration %s ended while closing: %r", job.id, exc)


def in_place(container: ContainerRecord, shared_dir: Path) -> tuple[str | None, str | None]:
    """A migration with ``--shared-dir``: where the container's writable state lies in
    ``shared_dir``, used in place (``ContainerMove.shared_layer`` or ``shared_rootfs``).
    UsageError, one line saying what to do, when it is not there: such a move sends
    none of it (docs/containers.md)."""
    name = container.id
    if container.image_digest is not None:
        layer = container.shared_layer
        if layer is not None and lies_in(Path(layer), shared_dir):
            return os.path.realpath(layer), None
        raise UsageError(
            f"--shared-dir moves a container's writable layer where it is, and {name}'s "
            f"is not in {shared_dir} (it is {container.rootfs_upper}): start it with "
            f"haul run --shared-dir {shared_dir}, or move it without --shared-dir"
        )
    rootfs = Path(container.rootfs)
    if not lies_in(rootfs, shared_dir):
        raise UsageError(
            f"--shared-dir moves a container's root filesystem where it is, and {name}'s "
            f"is not in {shared_dir} (it is {rootfs}): keep it in the shared directory, "
            "or move it without --shared-dir"
        )
    if is_mount_point(rootfs):
        raise UsageError(
            f"{name}'s root filesystem {rootfs} is a mount point on this host: another "
            "host would not see there what it runs on; move it without --shared-dir"
        )
    return None, os.path.realpath(rootfs)


def container_move(
    container: ContainerRecord,
    argv: list[str],
    *,
    received: Path | None = None,
    shared_dir: Path | None = None,
) -> tuple[ContainerMove, Path | None]:
    """What the destination is told of a container, and where its image's blobs are here:
    the layout it was started from, or (a container that came from another host) the
    layout its blobs were received into (``received``). With ``shared_dir``, its
    writable state is used in place (:func:`in_place`)."""
    config = json.loads(Path(container.bundle, "config.json").read_text())
    layer, rootfs = in_place(container, shared_dir) if shared_dir is not None else (None, None)
    if container.image is None or container.image_digest is None:
        return ContainerMove(config=config, argv=argv, shared_rootfs=rootfs), None
    digest = container.image_digest
    candidates = [ImageRef.parse(container.image).layout]
    if received is not None:
        candidates.append(received)
    layout = next((c for c in candidates if blob_path(c, digest).is_file()), None)
    if layout is None:
        raise ContainerError(
            f"the blobs of image {container.image} ({digest}) are not on this host "
            f"(looked in {', '.join(map(str, candidates))})"
        )
    try:
        manifest = json.loads(blob_path(layout, digest).read_text())
        blobs = [digest, str(manifest["config"]["digest"])]
        blobs += [str(layer["digest"]) for layer in manifest.get("layers", [])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContainerError(
            f"the manifest of image {container.image} is unreadable: {exc}"
        ) from exc
    weigh = [blob_path(layout, b) for b in blobs]
    move = ContainerMove(
        config=config,
        image=container.image,
        image_digest=digest,
        blobs=blobs,
        blob_bytes=sum(p.stat().st_size for p in weigh if p.is_file()),
        argv=argv,
        shared_layer=layer,
    )
    return move, layout
