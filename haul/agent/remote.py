"""The destination agent seen from the source agent: DestPort over the agents' HTTP
API (``/v1/incoming/...``, through :class:`haul.agent.client.AgentClient`)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from haul.agent.client import AgentClient, body_of
from haul.agent.migration_models import ContainerMove, IncomingCheck, IncomingOpen
from haul.agent.models import NetSpec
from haul.criu.options import PageServer
from haul.engine.figures import (
    Capabilities,
    ContainerRuntime,
    DestinationReady,
    Endpoint,
    RestoreFigures,
)
from haul.engine.phases import Strategy
from haul.errors import ContainerError
from haul.runtime.images import blob_path
from haul.runtime.sharedlayer import lies_in


class RemoteDestination:
    """DestPort for one migration to a destination agent. Its ``client`` is made from
    this agent's access to that peer: over https its page channels are TLS too. The
    secret the destination answers the opening with goes with every later call of the
    migration (the client binds it) and to ``on_secret``, which keeps it."""

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
        container: ContainerMove | None = None,
        image_layout: Path | None = None,
        blobs_through: Path | None = None,
        on_secret: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        #: keeps the secret the destination answers the opening with (for a restart)
        self.on_secret = on_secret
        #: a runc container (not a process tree), and where its image's blobs are here
        self.container = container
        self.image_layout = image_layout
        #: ``--shared-dir``: the image's blobs go through this migration's directory in
        #: the shared directory (its parent), or stay in a layout that lies there
        self.blobs_through = blobs_through
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

    async def capabilities(self) -> Capabilities:
        caps = await self.client.incoming.capabilities()
        runtime = caps.runtime
        return Capabilities(
            criu_version=caps.criu_version,
            mem_track=caps.mem_track,
            lazy_pages=caps.lazy_pages,
            lazy_pipe_ok=caps.lazy_pipe_ok,
            runtime=ContainerRuntime(runtime.name, runtime.version) if runtime else None,
            no_runtime=caps.no_runtime,
        )

    async def check_free(self, workload: str, needed_bytes: int) -> None:
        await self.client.incoming.check(
            body_of(
                IncomingCheck,
                f"migration {self.migration_id}",
                workload=workload,
                needed_bytes=needed_bytes,
                net=self.net,
                container=self.container is not None,
            )
        )

    async def prepare(self, strategy: Strategy, needed_bytes: int) -> DestinationReady:
        lazy = self.lazy_source
        answer = await self.client.incoming.open(
            body_of(
                IncomingOpen,
                f"migration {self.migration_id}",
                id=self.migration_id,
                workload=self.workload,
                strategy=strategy,
                needed_bytes=needed_bytes,
                argv=self.argv,
                data_mode=self.data_mode,
                shared_images=str(self.shared_images) if self.shared_images is not None else None,
                net=self.net,
                page_tls=self.client.access.tls is not None,
                source=self.source_host,
                lazy_source={"address": lazy.address, "port": lazy.port} if lazy else None,
                container=self.container,
            )
        )
        if answer.secret is not None and self.on_secret is not None:
            self.on_secret(answer.secret)
        await self._send_image(answer.missing_blobs)
        ps = answer.page_server
        return DestinationReady(Endpoint(ps.address, ps.port) if ps is not None else None)

    async def _send_image(self, missing: list[str]) -> None:
        """A container's image blobs the destination lacks (none when it has the image),
        then the image unpacked there: all while the container still runs here."""
        if self.container is None or self.container.image_digest is None:
            return
        if missing and self.image_layout is None:
            raise ContainerError("the destination lacks the image's blobs and they are not here")
        for digest in missing:
            if digest not in self.container.blobs:
                raise ContainerError(f"the destination asked for blob {digest}, not the image's")
        if missing and self.blobs_through is not None:
            await self._share_blobs(missing, self.blobs_through)
        else:
            for digest in missing:
                assert self.image_layout is not None
                await self.client.incoming.put_blob(
                    self.migration_id, digest, blob_path(self.image_layout, digest)
                )
        await self.client.incoming.unpack_image(self.migration_id)

    async def _share_blobs(self, missing: list[str], through: Path) -> None:
        """The missing blobs from a layout on shared storage: the image's own when it
        lies there, else a copy in ``through`` (the migration's shared directory)."""
        assert self.image_layout is not None
        layout = self.image_layout
        if not lies_in(layout, through.parent):
            layout = through / "layout"
            for digest in missing:
                target = blob_path(layout, digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(
                    shutil.copyfile, blob_path(self.image_layout, digest), target
                )
        await self.client.incoming.take_blobs(self.migration_id, layout)

    async def restore(self, lazy: bool) -> RestoreFigures:
        answer = await self.client.incoming.restore(self.migration_id, lazy)
        return RestoreFigures(
            dest_pid=answer.pid, duration_s=answer.duration_s, pages_bytes=answer.pages_bytes
        )

    async def resume(self) -> None:
        await self.client.incoming.resume(self.migration_id)

    async def wait_pages(self) -> None:
        await self.client.incoming.wait_pages(self.migration_id)

    async def discard(self) -> None:
        await self.client.incoming.discard(self.migration_id)

    async def cleanup(self) -> None:
        await self.client.incoming.finish(self.migration_id)

    async def room_left(self) -> int | None:
        """Room left where the destination keeps this migration's images (None: unknown)."""
        return (await self.client.incoming.get(self.migration_id)).free_bytes
