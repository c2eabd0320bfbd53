"""A dump that broke sending pages to a destination with no room left says so."""

from __future__ import annotations

import pytest

from haul.criu.options import PageServer
from haul.dest.remote import ExplainedSource
from haul.engine.figures import Capabilities, DumpFigures, IterationFigures
from haul.errors import CriuError, PeerError, TransportError

BROKEN = CriuError("request failed", request="dump",
                   log_tail=("Error (criu/page-xfer.c:191): page-xfer: Can't write pages to "
                             "socket: Broken pipe",))


class Source:
    """Fails its dumps the way CRIU does when the page server goes away."""

    def __init__(self, pages_to: PageServer | None) -> None:
        self.dest_page_server = pages_to

    async def capabilities(self) -> Capabilities:
        return Capabilities("4.2", mem_track=False, lazy_pages=True, lazy_pipe_ok=True)

    async def check_workload(self) -> int:
        return 1 << 20

    async def pre_dump(self, iteration: int) -> IterationFigures:
        raise BROKEN

    async def freeze_and_dump(self, lazy: bool) -> DumpFigures:
        raise BROKEN

    async def release(self, commit: bool) -> None: ...
    async def wait_pages_served(self) -> None: ...
    async def kill(self) -> None: ...
    async def resume(self) -> None: ...
    async def cleanup(self) -> None: ...


class Dest:
    def __init__(self, free: int | None | Exception) -> None:
        self.free = free

    async def free_bytes(self) -> int | None:
        if isinstance(self.free, Exception):
            raise self.free
        return self.free


PS = PageServer("10.77.0.2", 4242)


@pytest.mark.asyncio
async def test_no_room_at_the_destination_is_named() -> None:
    source = ExplainedSource(Source(PS), Dest(0), "host2")
    with pytest.raises(TransportError) as caught:
        await source.freeze_and_dump(lazy=False)
    assert caught.value.one_line() == (
        "destination host2 has no room left for the pages (0 KiB free where it keeps "
        "incoming images): the dump could not send them")
    assert caught.value.__cause__ is BROKEN
    with pytest.raises(TransportError, match="no room left"):
        await source.pre_dump(2)


@pytest.mark.asyncio
@pytest.mark.parametrize(("pages_to", "free"), [
    (PS, 512 << 20),                      # room enough: something else broke
    (PS, None),                           # the destination does not say
    (PS, PeerError("host2: no", code="x")),  # the destination cannot be asked
    (None, 0),                            # the pages did not go there (post-copy, shared)
])
async def test_otherwise_the_dumps_own_error_stands(
    pages_to: PageServer | None, free: int | None | Exception
) -> None:
    source = ExplainedSource(Source(pages_to), Dest(free), "host2")
    with pytest.raises(CriuError) as caught:
        await source.freeze_and_dump(lazy=False)
    assert caught.value is BROKEN
    assert await source.check_workload() == 1 << 20
