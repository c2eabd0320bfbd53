"""Everything an agent's handlers share: its config and the parts that own its state.

One :class:`AgentContext` per app. It is built without I/O
(:meth:`AgentContext.create`); the app's startup calls :meth:`open` (state
directory, registry) and its cleanup :meth:`aclose`. Handlers reach it as
``request.app[CONTEXT]``. Tests build one with fakes for CRIU and for starting
trees, so the API runs without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import web

from haul.agent.arrivals import Arrivals
from haul.agent.bindings import Bindings
from haul.agent.client import AgentAccess
from haul.agent.config import AgentConfig, LimitsConfig
from haul.agent.containers import ContainerSettings, StartedContainer
from haul.agent.decisions import SourceAsker
from haul.agent.hostinfo import CriuProbe, GatherCriu
from haul.agent.jobs import MigrationJobs
from haul.agent.journal import Journal
from haul.agent.metrics import AgentMetrics
from haul.agent.models import NetSpec
from haul.agent.wire import NotFound
from haul.agent.workloads import StartTree, WorkloadManager, net_spec
from haul.criu.info import CriuInfo, gather
from haul.criu.service import Criu
from haul.dest.incoming import IncomingRegistry
from haul.dest.intake import IntakeLimits
from haul.dest.reaper import Reaper
from haul.dest.undecided import AskPolicy
from haul.errors import HaulError
from haul.net.spec import WorkloadNet
from haul.workload.proctree import ProcessTree, start_tree

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MigrationParts:
    """What migrations need, built on first use (it needs a usable CRIU)."""

    incoming: IncomingRegistry
    jobs: MigrationJobs
    #: discards incoming migrations that went nowhere (haul/dest/reaper.py)
    reaper: Reaper = field(init=False)

    def __post_init__(self) -> None:
        self.reaper = Reaper(self.incoming)


def _advertise(config: AgentConfig) -> str:
    chosen = getattr(config, "advertise_address", None)
    if chosen:
        return str(chosen)
    return config.address if config.address not in ("0.0.0.0", "::") else "127.0.0.1"


def intake_limits(limits: LimitsConfig) -> IntakeLimits:
    """The agent's [agent.limits] as incoming migrations use them."""
    return IntakeLimits(
        max_incoming=limits.max_incoming,
        idle_s=limits.incoming_idle_s,
        deadline_s=limits.incoming_deadline_s,
        margin=limits.upload_margin,
        slack_bytes=limits.upload_slack_bytes,
        reserve_bytes=limits.journal_reserve_bytes,
    )


def _peers(config: AgentConfig) -> dict[str, AgentAccess]:
    """How this agent calls each peer, whatever for (a migration it drives, a decision
    it asks): the peer's token, and over https this agent's own certificate."""
    tls = config.tls.files() if config.tls is not None else None
    return {
        str(name): AgentAccess.of_peer(str(peer.url), token=peer.bearer_token(), tls=tls)
        for name, peer in config.peers.items()
    }


@dataclass(slots=True)
class AgentContext:
    config: AgentConfig
    workloads: WorkloadManager
    journal: Journal
    criu: CriuProbe
    metrics: AgentMetrics
    #: which peer each migration belongs to (docs/security.md)
    bindings: Bindings
    _migrations: MigrationParts | None = None
    _recovery: asyncio.Task[None] | None = None

    def migrations(self) -> MigrationParts:
        if self._migrations is None:
            criu = Criu(self.config.criu_path(), host=self.config.host_namespaces())
            address = _advertise(self.config)
            data_root = self.workloads.workloads_dir
            peers = _peers(self.config)
            self._migrations = MigrationParts(
                incoming=IncomingRegistry(
                    criu,
                    self.config.state_dir / "incoming",
                    data_root=data_root,
                    listen_address=address,
                    bridge=self.config.bridge,
                    tls=self.config.tls.files() if self.config.tls is not None else None,
                    ask=SourceAsker(peers),
                    adopt=self._adopt,
                    policy=AskPolicy.from_deadline(self.config.ask_source_after_s),
                    arrivals=Arrivals(self.workloads.containers, criu, self._adopt_container),
                    limits=intake_limits(self.config.limits),
                    host=self.config.host,
                    names=self.workloads.names,
                ),
                jobs=MigrationJobs(
                    host=self.config.host,
                    criu=criu,
                    state_dir=self.config.state_dir,
                    data_root=data_root,
                    journal=self.journal,
                    advertise_address=address,
                    peers=peers,
                    bindings=self.bindings,
                    tree_of=self.workloads.tree,
                    argv_of=lambda name: list(self.workloads.get(name).argv),
                    net_of=lambda name: self.workloads.get(name).net,
                    container_of=lambda name: self.workloads.get(name).container,
                    containers=self.workloads.containers,
                    on_moved=self.workloads.forget,
                    max_running=self.config.limits.max_migrations,
                ),
            )
            with contextlib.suppress(RuntimeError):  # no loop running yet: open() starts it
                asyncio.get_running_loop()
                self._migrations.reaper.start()
        return self._migrations

    def incoming_opener(self, migration_id: str) -> str | None:
        """The peer that opened incoming migration ``migration_id`` here ("" when it
        names none), or None when no such migration is open here."""
        try:
            item = self.migrations().incoming.get(migration_id)
        except HaulError:
            return None
        return item.source or ""

    async def _adopt(
        self, name: str, tree: ProcessTree, argv: list[str], net: WorkloadNet | None, holder: str
    ) -> None:
        """Register a committed copy as a workload here (already registered: done); its
        name passes from ``holder``, the incoming migration."""
        try:
            if self.workloads.get(name).root_pid == tree.root_pid:
                return  # adopted before this agent restarted
        except NotFound:
            pass
        await self.workloads.adopt(name, tree, argv, net_spec(net), replacing=holder)

    async def _adopt_container(
        self, name: str, started: StartedContainer, net: NetSpec | None, holder: str
    ) -> None:
        """Register a committed container copy here (already registered: done); its
        name passes from ``holder``, the incoming migration."""
        try:
            if self.workloads.get(name).root_pid == started.pid:
                return  # adopted before this agent restarted
        except NotFound:
            pass
        await self.workloads.register_container(name, started, net, replacing=holder)

    @classmethod
    def create(
        cls,
        config: AgentConfig,
        *,
        gather_criu: GatherCriu | None = None,
        start: StartTree | None = None,
    ) -> AgentContext:
        host = config.host_namespaces()

        async def gather_real() -> CriuInfo:
            return await gather(config.criu_path(), host=host)

        return cls(
            config=config,
            workloads=WorkloadManager(
                config.state_dir,
                host=host,
                start=start if start is not None else start_tree,
                bridge=config.bridge,
                containers=ContainerSettings(
                    state_dir=config.state_dir,
                    runc_root=config.runc_root,
                    cgroup_parent=config.cgroup_parent,
                    allowed_roots=tuple(config.runc.allowed_roots),
                    criu=config.criu_path,
                    runc_binary=config.runc_path,
                    host=host,
                    enabled=config.runc.enabled,
                    host_name=config.host,
                ),
            ),
            journal=Journal(config.journal_dir),
            criu=CriuProbe(gather_criu if gather_criu is not None else gather_real),
            metrics=AgentMetrics(),
            bindings=Bindings(config.state_dir),
        )

    async def open(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.workloads.open()
        try:
            incoming = self.migrations().incoming
            found = await incoming.sweep()
        except HaulError as exc:  # no usable CRIU yet: nothing can have been migrated here
            log.warning("incoming migrations not swept: %s", exc.one_line())
        else:
            for mid in found.lost:
                log.error(
                    "incoming migration %s: its restored copy is gone; removed what was left of it",
                    mid,
                )
            for mid in found.removed:
                log.warning("removed what an earlier agent left of incoming migration %s", mid)
            for copy in found.kept:
                log.warning(
                    "incoming migration %s: a restored copy of %s (pid %d, %s) waits "
                    "for the decision of %s; asking it",
                    copy.migration_id,
                    copy.record.workload,
                    copy.pid,
                    "stopped" if copy.stopped else "running",
                    copy.record.source or "an unnamed source",
                )
            incoming.start_watches()
            self.migrations().reaper.start()
            self._recovery = asyncio.create_task(self._recover())
        self.metrics.workloads.set_function(lambda: len(self.workloads))

    async def _recover(self) -> None:
        try:
            for line in await self.migrations().jobs.recover():
                log.warning("recovered: %s", line)
        except HaulError as exc:
            log.error("recovering migrations failed: %s", exc.one_line())

    async def aclose(self) -> None:
        if self._recovery is not None:
            await self._recovery
        if self._migrations is not None:
            await self._migrations.reaper.aclose()
            await self._migrations.incoming.aclose()
            await self._migrations.jobs.aclose()
        await self.workloads.aclose()


CONTEXT = web.AppKey("haul.agent.context", AgentContext)
