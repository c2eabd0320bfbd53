"""A destination port that tells the source where the destination's page server
listens, once the destination is prepared (its port is chosen then)."""

from __future__ import annotations

from typing import Protocol

from haul.criu.options import PageServer
from haul.engine.figures import Capabilities, RestoreFigures
from haul.engine.phases import Strategy
from haul.engine.ports import DestPort


class PageServerDest(DestPort, Protocol):
    @property
    def page_server(self) -> PageServer | None: ...


class PageSender(Protocol):
    """The source side as this module sees it: where its dumps send pages."""

    dest_page_server: PageServer | None


class LinkedDest:
    """Implements DestPort by delegating to ``dest``; after ``prepare`` the source's
    dumps send pages to the destination's page server (if it started one)."""

    def __init__(self, dest: PageServerDest, source: PageSender) -> None:
        self._dest = dest
        self._source = source

    async def capabilities(self) -> Capabilities:
        return await self._dest.capabilities()

    async def check_free(self, workload: str, needed_bytes: int) -> None:
        await self._dest.check_free(workload, needed_bytes)

    async def prepare(self, strategy: Strategy) -> None:
        await self._dest.prepare(strategy)
        self._source.dest_page_server = self._dest.page_server

    async def restore(self, lazy: bool) -> RestoreFigures:
        return await self._dest.restore(lazy)

    async def resume(self) -> None:
        await self._dest.resume()

    async def wait_pages(self) -> None:
        await self._dest.wait_pages()

    async def discard(self) -> None:
        await self._dest.discard()

    async def cleanup(self) -> None:
        await self._dest.cleanup()
