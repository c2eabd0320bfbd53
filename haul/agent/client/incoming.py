"""The calls of ``/v1/incoming...``: what a migration's source agent asks of its
destination agent (haul/agent/routes/incoming.py serves them)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from haul.agent.bindings import SECRET_HEADER
from haul.agent.decision_models import IncomingList, IncomingView
from haul.agent.migration_models import (
    ENTRIES_PER_REQUEST,
    BlobsFrom,
    CapabilitiesView,
    DataEntries,
    DataEntryAsk,
    DataRemoval,
    DataRemoved,
    Done,
    IncomingCheck,
    IncomingOpen,
    IncomingOpened,
    Received,
    RestoreAsk,
    Restored,
)
from haul.transport.treeplan import Node

if TYPE_CHECKING:
    from haul.agent.client.session import AgentClient

CHUNK = 1 << 20
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


#: a rough bound on one /entries or /remove body (the agent takes up to 1 MiB)
BATCH_BYTES = 256 << 10


async def _file_chunks(source: Path | BinaryIO) -> AsyncIterator[bytes]:
    """The file's bytes from where it is now (an open file: from its position on)."""
    with source.open("rb") if isinstance(source, Path) else contextlib.nullcontext(source) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _batches(items: Sequence[T], size_of: Callable[[T], int]) -> Iterator[Sequence[T]]:
    """``items`` in runs small enough for one request each, in order."""
    start = size = 0
    for i, item in enumerate(items):
        n = size_of(item) + 64
        if i > start and (size + n > BATCH_BYTES or i - start >= ENTRIES_PER_REQUEST):
            yield items[start:i]
            start, size = i, 0
        size += n
    if start < len(items):
        yield items[start:]


def _id(migration_id: str) -> str:
    return f"/v1/incoming/{quote(migration_id, safe='')}"


class IncomingCalls:
    """The destination side of migrations on one agent (``client.incoming``); its
    uploads are what haul.transport.http.HttpTransport sends through.

    Each migration's calls carry the secret the destination gave when it was opened
    (:meth:`bind`; the opener's answer binds it at once): a peer's calls of an
    incoming migration are refused without it (docs/security.md)."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client
        self._secrets: dict[str, str] = {}

    def bind(self, migration_id: str, secret: str) -> None:
        """Send ``secret`` with every call of incoming migration ``migration_id``."""
        self._secrets[migration_id] = secret

    def _headers(self, migration_id: str, **more: str) -> dict[str, str]:
        secret = self._secrets.get(migration_id)
        return {**more, SECRET_HEADER: secret} if secret is not None else dict(more)

    async def _call(
        self,
        method: str,
        migration_id: str,
        tail: str,
        model: type[M],
        body: BaseModel | None = None,
    ) -> M:
        _, raw = await self._client.request(
            method, _id(migration_id) + tail, body=body, headers=self._headers(migration_id)
        )
        return self._client.parse(model, raw)

    async def capabilities(self) -> CapabilitiesView:
        return await self._client.call("GET", "/v1/incoming-capabilities", CapabilitiesView)

    async def check(self, ask: IncomingCheck) -> None:
        await self._client.call("POST", "/v1/incoming-check", Done, body=ask)

    async def open(self, ask: IncomingOpen) -> IncomingOpened:
        """Open the incoming migration; its later calls carry the secret it answers with."""
        opened = await self._client.call(
            "POST", "/v1/incoming", IncomingOpened, body=ask, ok=(201,)
        )
        if opened.secret is not None:
            self.bind(ask.id, opened.secret)
        return opened

    async def put_image(self, migration_id: str, name: str, path: Path, sha256: str) -> None:
        _, raw = await self._client.request(
            "PUT",
            f"{_id(migration_id)}/images/{quote(name, safe='')}",
            data=_file_chunks(path),
            headers=self._headers(migration_id, **{"X-Haul-SHA256": sha256}),
        )
        self._client.parse(Received, raw)

    async def put_blob(self, migration_id: str, digest: str, path: Path) -> None:
        """One blob of an arriving container's image (its digest checks it)."""
        _, raw = await self._client.request(
            "PUT",
            f"{_id(migration_id)}/blobs/{quote(digest, safe='')}",
            data=_file_chunks(path),
            headers=self._headers(migration_id),
        )
        self._client.parse(Received, raw)

    async def take_blobs(self, migration_id: str, layout: Path) -> int:
        """The arriving container's missing blobs, taken there from ``layout`` (an OCI
        layout on storage both hosts see); the bytes it copied."""
        answer = await self._call(
            "POST", migration_id, "/blobs-from", Received, BlobsFrom(layout=str(layout))
        )
        return answer.bytes

    async def unpack_image(self, migration_id: str) -> None:
        """The arriving container's image unpacked there, from the blobs it has."""
        await self._call("POST", migration_id, "/image", Done)

    async def put_data(
        self,
        migration_id: str,
        rel: str,
        source: Path | BinaryIO,
        sha256: str,
        mode: int,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """One of the workload's files, from a path or an open file (read from its
        position on), with its mode and owner (None: the agent's); it takes its place
        there once its SHA-256 matched."""
        headers = {"X-Haul-SHA256": sha256, "X-Haul-Mode": f"{mode:o}"}
        if owner is not None:
            headers["X-Haul-Owner"] = f"{owner[0]}:{owner[1]}"
        _, raw = await self._client.request(
            "PUT",
            f"{_id(migration_id)}/data",
            params={"path": rel},
            data=_file_chunks(source),
            headers=self._headers(migration_id, **headers),
        )
        self._client.parse(Received, raw)

    async def make_entries(self, migration_id: str, nodes: Sequence[Node]) -> None:
        """Make these entries of the workload's files, or set their modes and owners, in
        order (haul/transport/treeplan.py says which)."""
        for batch in _batches(nodes, lambda n: len(n.path) + len(n.target or "")):
            entries = [
                DataEntryAsk(
                    path=n.path,
                    kind=n.kind.value,
                    mode=n.mode,
                    target=n.target,
                    uid=n.uid,
                    gid=n.gid,
                    opaque=n.opaque,
                )
                for n in batch
            ]
            await self._call("POST", migration_id, "/entries", Done, DataEntries(entries=entries))

    async def remove_entries(self, migration_id: str, paths: Sequence[str]) -> int:
        """Remove these entries of the workload's files, in order; how many were there."""
        removed = 0
        for batch in _batches(paths, len):
            answer = await self._call(
                "POST", migration_id, "/remove", DataRemoved, DataRemoval(paths=list(batch))
            )
            removed += answer.removed
        return removed

    async def restore(self, migration_id: str, lazy: bool) -> Restored:
        return await self._call("POST", migration_id, "/restore", Restored, RestoreAsk(lazy=lazy))

    async def resume(self, migration_id: str) -> None:
        await self._call("POST", migration_id, "/resume", Done)

    async def wait_pages(self, migration_id: str) -> None:
        await self._call("POST", migration_id, "/wait-pages", Done)

    async def discard(self, migration_id: str) -> None:
        await self._call("POST", migration_id, "/discard", Done)

    async def finish(self, migration_id: str) -> None:
        await self._call("POST", migration_id, "/finish", Done)

    async def get(self, migration_id: str) -> IncomingView:
        return await self._call("GET", migration_id, "", IncomingView)

    async def all(self) -> list[IncomingView]:
        return (await self._client.call("GET", "/v1/incoming", IncomingList)).incoming
