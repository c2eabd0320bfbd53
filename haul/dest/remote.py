"""The destination agent seen from the source agent: DestPort and IncomingUploads
over the agents' HTTP API (``/v1/incoming/...``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from haul.criu.options import PageServer, TlsFiles
from haul.engine.figures import Capabilities, DestinationReady, Endpoint, RestoreFigures
from haul.engine.phases import Strategy
from haul.errors import PeerError, TransportError

CHUNK = 1 << 20


async def _file_chunks(path: Path):  # type: ignore[no-untyped-def]
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class IncomingClient:
    """Calls one destination agent. ``session`` carries auth (token header, TLS).

    ``page_tls``: this host's certificate, key and CA when the destination is
    called over https with them; the migration's page channels are then TLS too.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, where: str, *,
                 page_tls: TlsFiles | None = None) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.where = where
        self.page_tls = page_tls

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        url = self.base + path
        try:
            async with self.session.request(method, url, **kw) as resp:
                text = await resp.text()
                body: dict[str, Any] = json.loads(text) if text else {}
                if resp.status >= 400:
                    err = body.get("error", {}) if isinstance(body, dict) else {}
                    raise PeerError(
                        f"{self.where}: {err.get('message') or resp.reason}",
                        code=str(err.get("code") or resp.status),
                    )
                return body
        except aiohttp.ClientError as exc:
            raise TransportError(f"{self.where} unreachable: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise PeerError(f"{self.where} answered with malformed JSON", code="bad-json") from exc

    # -- uploads (haul.transport.http.IncomingUploads) ----------------------

    async def put_image(self, migration_id: str, name: str, path: Path, sha256: str) -> None:
        await self.call(
            "PUT", f"/v1/incoming/{migration_id}/images/{quote(name)}",
            data=_file_chunks(path), headers={"X-Haul-SHA256": sha256},
        )

    async def put_data(
        self, migration_id: str, rel: str, path: Path, sha256: str, mode: int
    ) -> None:
        await self.call(
            "PUT", f"/v1/incoming/{migration_id}/data",
            params={"path": rel}, data=_file_chunks(path),
            headers={"X-Haul-SHA256": sha256, "X-Haul-Mode": f"{mode:o}"},
        )

    async def make_dirs(self, migration_id: str, rels: list[str], modes: list[int]) -> None:
        await self.call("POST", f"/v1/incoming/{migration_id}/dirs",
                        json={"paths": rels, "modes": modes})


class RemoteDestination:
    """DestPort for one migration to a destination agent."""

    def __init__(
        self,
        client: IncomingClient,
        migration_id: str,
        workload: str,
        *,
        lazy_source: PageServer | None = None,
        argv: list[str] | None = None,
        data_mode: int = 0o700,
        shared_images: Path | None = None,
        net: dict[str, Any] | None = None,
        source_host: str | None = None,
    ) -> None:
        self.client = client
        #: the workload's own address (NetSpec fields), which goes with it
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
        caps = await self.client.call("GET", "/v1/incoming-capabilities")
        return Capabilities(
            criu_version=str(caps["criu_version"]),
            mem_track=bool(caps["mem_track"]),
            lazy_pages=bool(caps["lazy_pages"]),
            lazy_pipe_ok=bool(caps["lazy_pipe_ok"]),
        )

    async def check_free(self, workload: str, needed_bytes: int) -> None:
        body: dict[str, Any] = {"workload": workload, "needed_bytes": needed_bytes}
        if self.net is not None:
            body["net"] = self.net
        await self.client.call("POST", "/v1/incoming-check", json=body)

    async def prepare(self, strategy: Strategy, needed_bytes: int) -> DestinationReady:
        body: dict[str, Any] = {
            "id": self.migration_id, "workload": self.workload, "strategy": strategy.value,
            "needed_bytes": needed_bytes, "argv": self.argv, "data_mode": self.data_mode,
        }
        if self.shared_images is not None:
            body["shared_images"] = str(self.shared_images)
        if self.net is not None:
            body["net"] = self.net
        if self.client.page_tls is not None:
            body["page_tls"] = True
        if self.source_host is not None:
            body["source"] = self.source_host
        if self.lazy_source is not None:
            body["lazy_source"] = {"address": self.lazy_source.address,
                                   "port": self.lazy_source.port}
        answer = await self.client.call("POST", "/v1/incoming", json=body)
        ps = answer.get("page_server")
        return DestinationReady(Endpoint(str(ps["address"]), int(ps["port"])) if ps else None)

    async def restore(self, lazy: bool) -> RestoreFigures:
        answer = await self.client.call(
            "POST", f"/v1/incoming/{self.migration_id}/restore", json={"lazy": lazy}
        )
        return RestoreFigures(dest_pid=int(answer["pid"]), duration_s=float(answer["duration_s"]),
                              pages_bytes=int(answer.get("pages_bytes", 0)))

    async def resume(self) -> None:
        await self.client.call("POST", f"/v1/incoming/{self.migration_id}/resume")

    async def wait_pages(self) -> None:
        await self.client.call("POST", f"/v1/incoming/{self.migration_id}/wait-pages")

    async def discard(self) -> None:
        await self.client.call("POST", f"/v1/incoming/{self.migration_id}/discard")

    async def cleanup(self) -> None:
        await self.client.call("POST", f"/v1/incoming/{self.migration_id}/finish")

    async def room_left(self) -> int | None:
        """Room left where the destination keeps this migration's images (None: unknown)."""
        answer = await self.client.call("GET", f"/v1/incoming/{self.migration_id}")
        free = answer.get("free_bytes")
        return int(free) if isinstance(free, int) else None
