"""The destination agent seen from the source agent: DestPort over the agents' HTTP
API (``/v1/incoming/...``, through :class:`haul.agent.client.AgentClient`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from haul.agent.client import AgentClient, body_of
from haul.agent.migration_models import IncomingCheck, IncomingOpen
from haul.agent.models import NetSpec
from haul.criu.options import PageServer
from haul.engine.figures import Capabilities, DumpFigures, IterationFigures, RestoreFigures
from haul.engine.phases import Strategy
from haul.engine.ports import SourcePort
from haul.errors import CriuError, HaulError, TransportError

#: at most this much room left where the pages go: a dump that broke there ran out of it
NO_ROOM_BYTES = 1 << 20
ASK_ROOM_TIMEOUT_S = 5.0


class RemoteDestination:
    """DestPort for one migration to a destination agent. Its ``client`` is made from
    this agent's access to that peer: over https its page channels are TLS too."""

    def __init__(
        self,
        client: AgentClient,
        migration_id: str,
        workload: str,
        *,
        lazy_source: PageServer | None = None,
        argv: list[str] | None = None,
        data_mode: int = 0o700,
        shared_images: Path | None = None,
        net: NetSpec | None = None,
        source_host: str | None = None,
    ) -> None:
        self.client = client
        #: the workload's own address, which goes with it
        self.net = net
        #: this (the source's) host name: whom the destination asks for the decision
        self.source_host = source_host
        self.shared_images = shared_images
        self.argv = list(argv or [])
        self.data_mode = data_mode
        self.migration_id = migration_id
        self.workload = workload
        self.lazy_source = lazy_source
        self.needed_bytes = 0
        #: the destination's page server, once prepared (stop-and-copy, pre-copy)
        self.page_server: PageServer | None = None

    async def capabilities(self) -> Capabilities:
        caps = await self.client.incoming.capabilities()
        return Capabilities(criu_version=caps.criu_version, mem_track=caps.mem_track,
                            lazy_pages=caps.lazy_pages, lazy_pipe_ok=caps.lazy_pipe_ok)

    async def check_free(self, workload: str, needed_bytes: int) -> None:
        self.needed_bytes = needed_bytes
        await self.client.incoming.check(body_of(
            IncomingCheck, f"migration {self.migration_id}", workload=workload,
            needed_bytes=needed_bytes, net=self.net))

    async def prepare(self, strategy: Strategy) -> None:
        lazy = self.lazy_source
        answer = await self.client.incoming.open(body_of(
            IncomingOpen, f"migration {self.migration_id}",
            id=self.migration_id, workload=self.workload, strategy=strategy,
            needed_bytes=self.needed_bytes, argv=self.argv, data_mode=self.data_mode,
            shared_images=str(self.shared_images) if self.shared_images is not None else None,
            net=self.net, page_tls=self.client.access.tls is not None,
            source=self.source_host,
            lazy_source={"address": lazy.address, "port": lazy.port} if lazy else None,
        ))
        ps = answer.page_server
        if ps is not None:
            self.page_server = PageServer(ps.address, ps.port)

    async def restore(self, lazy: bool) -> RestoreFigures:
        answer = await self.client.incoming.restore(self.migration_id, lazy)
        return RestoreFigures(dest_pid=answer.pid, duration_s=answer.duration_s,
                              pages_bytes=answer.pages_bytes)

    async def resume(self) -> None:
        await self.client.incoming.resume(self.migration_id)

    async def wait_pages(self) -> None:
        await self.client.incoming.wait_pages(self.migration_id)

    async def discard(self) -> None:
        await self.client.incoming.discard(self.migration_id)

    async def cleanup(self) -> None:
        await self.client.incoming.finish(self.migration_id)

    async def free_bytes(self) -> int | None:
        """Room left where the destination keeps this migration's images (None: unknown)."""
        return (await self.client.incoming.get(self.migration_id)).free_bytes


class PagedSource(SourcePort, Protocol):
    #: where the dumps send pages (the destination's page server), if anywhere
    dest_page_server: PageServer | None


class RoomReport(Protocol):
    async def free_bytes(self) -> int | None: ...


class ExplainedSource:
    """SourcePort of ``source`` that says so when a dump failed because the destination,
    where the pages go (its CRIU page server), has no room left for them; CRIU itself
    sees only a broken connection to the page server."""

    def __init__(self, source: PagedSource, dest: RoomReport, dest_host: str) -> None:
        self._source = source
        self._dest = dest
        self._dest_host = dest_host

    async def _explained(self, exc: CriuError) -> HaulError:
        if self._source.dest_page_server is None:
            return exc  # the pages did not go to the destination
        try:
            async with asyncio.timeout(ASK_ROOM_TIMEOUT_S):
                free = await self._dest.free_bytes()
        except (HaulError, TimeoutError):
            return exc
        if free is None or free > NO_ROOM_BYTES:
            return exc
        return TransportError(
            f"destination {self._dest_host} has no room left for the pages "
            f"({free >> 10} KiB free where it keeps incoming images): the dump could not "
            "send them")

    async def capabilities(self) -> Capabilities:
        return await self._source.capabilities()

    async def check_workload(self) -> int:
        return await self._source.check_workload()

    async def pre_dump(self, iteration: int) -> IterationFigures:
        try:
            return await self._source.pre_dump(iteration)
        except CriuError as exc:
            raise await self._explained(exc) from exc

    async def freeze_and_dump(self, lazy: bool) -> DumpFigures:
        try:
            return await self._source.freeze_and_dump(lazy)
        except CriuError as exc:
            raise await self._explained(exc) from exc

    async def release(self, commit: bool) -> None:
        await self._source.release(commit)

    async def wait_pages_served(self) -> None:
        await self._source.wait_pages_served()

    async def kill(self) -> None:
        await self._source.kill()

    async def resume(self) -> None:
        await self._source.resume()

    async def cleanup(self) -> None:
        await self._source.cleanup()


def _check_protocol(source: ExplainedSource) -> SourcePort:
    """mypy checks here that ExplainedSource implements the engine's SourcePort."""
    return source
