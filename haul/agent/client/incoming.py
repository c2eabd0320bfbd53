"""The calls of ``/v1/incoming...``: what a migration's source agent asks of its
destination agent (haul/agent/routes/incoming.py serves them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from haul.agent.decision_models import IncomingList, IncomingView
from haul.agent.migration_models import (
    CapabilitiesView,
    Done,
    IncomingCheck,
    IncomingOpen,
    IncomingOpened,
    Paths,
    Received,
    RestoreAsk,
    Restored,
)

if TYPE_CHECKING:
    from haul.agent.client.session import AgentClient

CHUNK = 1 << 20


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _id(migration_id: str) -> str:
    return f"/v1/incoming/{quote(migration_id, safe='')}"


class IncomingCalls:
    """The destination side of migrations on one agent (``client.incoming``); its
    uploads are what haul.transport.http.HttpTransport sends through."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client

    async def capabilities(self) -> CapabilitiesView:
        return await self._client.call("GET", "/v1/incoming-capabilities", CapabilitiesView)

    async def check(self, ask: IncomingCheck) -> None:
        await self._client.call("POST", "/v1/incoming-check", Done, body=ask)

    async def open(self, ask: IncomingOpen) -> IncomingOpened:
        return await self._client.call("POST", "/v1/incoming", IncomingOpened, body=ask, ok=(201,))

    async def put_image(self, migration_id: str, name: str, path: Path, sha256: str) -> None:
        _, raw = await self._client.request(
            "PUT",
            f"{_id(migration_id)}/images/{quote(name, safe='')}",
            data=_file_chunks(path),
            headers={"X-Haul-SHA256": sha256},
        )
        self._client.parse(Received, raw)

    async def put_data(
        self, migration_id: str, rel: str, path: Path, sha256: str, mode: int
    ) -> None:
        _, raw = await self._client.request(
            "PUT",
            f"{_id(migration_id)}/data",
            params={"path": rel},
            data=_file_chunks(path),
            headers={"X-Haul-SHA256": sha256, "X-Haul-Mode": f"{mode:o}"},
        )
        self._client.parse(Received, raw)

    async def make_dirs(self, migration_id: str, rels: list[str], modes: list[int]) -> None:
        await self._client.call(
            "POST", f"{_id(migration_id)}/dirs", Done, body=Paths(paths=rels, modes=modes)
        )

    async def restore(self, migration_id: str, lazy: bool) -> Restored:
        return await self._client.call(
            "POST", f"{_id(migration_id)}/restore", Restored, body=RestoreAsk(lazy=lazy)
        )

    async def resume(self, migration_id: str) -> None:
        await self._client.call("POST", f"{_id(migration_id)}/resume", Done)

    async def wait_pages(self, migration_id: str) -> None:
        await self._client.call("POST", f"{_id(migration_id)}/wait-pages", Done)

    async def discard(self, migration_id: str) -> None:
        await self._client.call("POST", f"{_id(migration_id)}/discard", Done)

    async def finish(self, migration_id: str) -> None:
        await self._client.call("POST", f"{_id(migration_id)}/finish", Done)

    async def get(self, migration_id: str) -> IncomingView:
        return await self._client.call("GET", _id(migration_id), IncomingView)

    async def all(self) -> list[IncomingView]:
        return (await self._client.call("GET", "/v1/incoming", IncomingList)).incoming
