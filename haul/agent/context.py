"""Everything an agent's handlers share: its config and the parts that own its state.

One :class:`AgentContext` per app. It is built without I/O
(:meth:`AgentContext.create`); the app's startup calls :meth:`open` (state
directory, registry) and its cleanup :meth:`aclose`. Handlers reach it as
``request.app[CONTEXT]``. Tests build one with fakes for CRIU and for starting
trees, so the API runs without root.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from haul.agent.config import AgentConfig
from haul.agent.hostinfo import CriuProbe, GatherCriu
from haul.agent.journal import Journal
from haul.agent.metrics import AgentMetrics
from haul.agent.workloads import StartTree, WorkloadManager
from haul.criu.info import CriuInfo, gather
from haul.source.proctree import start_tree


@dataclass(slots=True)
class AgentContext:
    config: AgentConfig
    workloads: WorkloadManager
    journal: Journal
    criu: CriuProbe
    metrics: AgentMetrics

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
                config.state_dir, host=host, start=start if start is not None else start_tree
            ),
            journal=Journal(config.journal_dir),
            criu=CriuProbe(gather_criu if gather_criu is not None else gather_real),
            metrics=AgentMetrics(),
        )

    async def open(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.workloads.open()
        self.metrics.workloads.set_function(lambda: len(self.workloads))

    async def aclose(self) -> None:
        await self.workloads.aclose()


CONTEXT = web.AppKey("haul.agent.context", AgentContext)
