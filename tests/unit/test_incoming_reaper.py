"""The reaper of incoming migrations: one that never restored and made no progress for
``idle_s`` (nothing arrived, no call about it, no page written), or that has not
restored within ``deadline_s`` of being opened, is discarded with everything made for
it. A copy that was restored, or is being restored, is never reaped: the reaper's only
victims are migrations of which no copy exists here. (No CRIU: post-copy migrations
start no page server; a restored copy is a stopped ``sleep``, haul/dest/fakes.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from haul.agent.fakes import silent_criu
from haul.criu.service import Criu
from haul.dest import leftovers
from haul.dest.criudest import RESTORED_MARK
from haul.dest.fakes import StandInCopy as Copy
from haul.dest.incoming import IncomingRegistry, IncomingState
from haul.dest.intake import IntakeLimits
from haul.dest.leftovers import IncomingRecord
from haul.dest.reaper import Reaper
from haul.engine.phases import Strategy
from haul.errors import UsageError, WorkloadError
from haul.procfs import alive

LIMITS = IntakeLimits(idle_s=10.0, deadline_s=100.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_registry(tmp_path: Path, clock: Clock, criu: str = "/bin/true") -> IncomingRegistry:
    reg = IncomingRegistry(
        Criu(criu),
        tmp_path / "incoming",
        data_root=tmp_path / "workloads",
        listen_address="127.0.0.1",
        limits=LIMITS,
    )
    reg.clock = clock
    return reg


async def open_one(reg: IncomingRegistry, mid: str = "m1", workload: str = "web1") -> None:
    await reg.open(mid, workload, Strategy.POST_COPY, 0, None, source="host1")


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put_image(reg: IncomingRegistry, mid: str, name: str, data: bytes) -> None:
    await reg.receive_image(mid, name, one_chunk(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def copy() -> Iterator[Copy]:
    try:
        c = Copy()
    except WorkloadError as exc:
        pytest.skip(exc.one_line())
    try:
        yield c
    finally:
        c.close()


@pytest.mark.asyncio
async def test_a_migration_with_no_progress_is_discarded_after_idle_s(
    tmp_path: Path, clock: Clock
) -> None:
    reg = make_registry(tmp_path, clock)
    reaper = Reaper(reg)
    await open_one(reg)
    workdir = tmp_path / "incoming" / "m1"
    assert workdir.is_dir() and (tmp_path / "workloads" / "web1").is_dir()
    clock.advance(9.0)
    assert await reaper.reap_once() == []
    clock.advance(2.0)
    assert await reaper.reap_once() == ["m1"]
    assert reg.items() == []
    assert not workdir.exists() and not (tmp_path / "workloads" / "web1").exists()
    assert leftovers.read_record(tmp_path / "incoming", "m1") is None
    with pytest.raises(UsageError):
        reg.get("m1")
    # the name is free again: the next migration of it opens
    await open_one(reg, "m2")
    assert [i.migration_id for i in reg.items()] == ["m2"]
    await reg.discard("m2")


@pytest.mark.asyncio
async def test_what_arrives_and_every_call_about_it_is_progress(
    tmp_path: Path, clock: Clock
) -> None:
    reg = make_registry(tmp_path, clock)
    reaper = Reaper(reg)
    await open_one(reg)
    clock.advance(8.0)
    await put_image(reg, "m1", "core-1.img", b"x" * 1000)
    clock.advance(8.0)
    assert await reaper.reap_once() == []
    reg.get("m1")  # a call about it (any /v1/incoming/m1/... route looks it up)
    clock.advance(8.0)
    assert await reaper.reap_once() == []
    clock.advance(3.0)
    assert await reaper.reap_once() == ["m1"]


@pytest.mark.asyncio
async def test_pages_the_page_server_writes_are_progress(tmp_path: Path, clock: Clock) -> None:
    """During a stop-and-copy dump no call comes: CRIU's page server writes pages into
    the images directory, and that is progress too."""
    reg = make_registry(tmp_path, clock)
    reaper = Reaper(reg)
    await open_one(reg)
    item = reg.get("m1")
    clock.advance(8.0)
    page = item.dest.images / "pages-1.img"
    page.write_bytes(b"p" * 4096)
    os.utime(page, (1e10, 1e10))  # newer than anything seen before
    assert await reaper.reap_once() == []
    clock.advance(8.0)
    assert await reaper.reap_once() == [], "written 8 s ago: still within idle_s"
    clock.advance(3.0)
    assert await reaper.reap_once() == ["m1"]


@pytest.mark.asyncio
async def test_work_the_agent_does_for_it_is_progress(tmp_path: Path, clock: Clock) -> None:
    reg = make_registry(tmp_path, clock)
    reaper = Reaper(reg)
    await open_one(reg)
    item = reg.get("m1")
    with item.intake.working():  # e.g. unpacking an arriving container's image
        clock.advance(50.0)
        assert await reaper.reap_once() == []
    clock.advance(9.0)
    assert await reaper.reap_once() == []
    clock.advance(2.0)
    assert await reaper.reap_once() == ["m1"]


@pytest.mark.asyncio
async def test_a_migration_not_restored_by_its_deadline_is_discarded_whatever_trickles_in(
    tmp_path: Path, clock: Clock
) -> None:
    reg = make_registry(tmp_path, clock)
    reaper = Reaper(reg)
    await open_one(reg)
    for i in range(19):
        clock.advance(5.0)
        await put_image(reg, "m1", f"trickle-{i}.img", b"t")
        assert await reaper.reap_once() == []
    clock.advance(5.0)
    assert await reaper.reap_once() == ["m1"]


@pytest.mark.asyncio
async def test_a_restored_copy_is_never_reaped(tmp_path: Path, clock: Clock, copy: Copy) -> None:
    """A copy an earlier agent restored waits for its source's decision, however long."""
    root, data = tmp_path / "incoming", tmp_path / "workloads"
    (root / "m1" / "images").mkdir(parents=True)
    (data / "web1").mkdir(parents=True)
    leftovers.write_record(
        root,
        "m1",
        IncomingRecord(
            workload="web1",
            source="host1",
            argv=["counter"],
            strategy=Strategy.STOP_AND_COPY,
            restored_pid=copy.pid,
            start_ticks=leftovers.start_ticks(copy.pid),
        ),
    )
    (root / "m1" / RESTORED_MARK).write_text(f"{copy.pid}\n")
    reg = make_registry(tmp_path, clock)
    found = await reg.sweep()
    assert [k.migration_id for k in found.kept] == ["m1"]
    assert reg.get("m1").state is IncomingState.RESTORED
    clock.advance(LIMITS.deadline_s * 10)
    assert await Reaper(reg).reap_once() == []
    assert alive(copy.pid) and (data / "web1").is_dir()
    assert [i.migration_id for i in reg.items()] == ["m1"]


@pytest.mark.asyncio
async def test_a_copy_being_restored_is_not_reaped(tmp_path: Path, clock: Clock) -> None:
    reg = make_registry(tmp_path, clock, criu=str(silent_criu(tmp_path)))
    reaper = Reaper(reg)
    await open_one(reg)
    restoring = asyncio.create_task(reg.restore("m1", lazy=False))
    try:
        while reg.get("m1").state is not IncomingState.RESTORING:
            await asyncio.sleep(0)
        clock.advance(LIMITS.deadline_s * 10)
        assert await reaper.reap_once() == []
        assert reg.get("m1").state is IncomingState.RESTORING
    finally:
        restoring.cancel()
        await asyncio.gather(restoring, return_exceptions=True)
    await reg.discard("m1")


@pytest.mark.asyncio
async def test_the_reaper_runs_on_its_own_and_stops(tmp_path: Path) -> None:
    reg = IncomingRegistry(
        Criu("/bin/true"),
        tmp_path / "incoming",
        data_root=tmp_path / "workloads",
        listen_address="127.0.0.1",
        limits=IntakeLimits(idle_s=0.05, deadline_s=100.0),
    )
    reaper = Reaper(reg)
    reaper.start()
    try:
        await open_one(reg)
        # gone from the registry, then from the disk: its images, then its data
        # directory (the discard settles it first and removes its files after)
        data = tmp_path / "workloads" / "web1"
        async with asyncio.timeout(10):
            while reg.items() or (tmp_path / "incoming" / "m1").exists() or data.exists():
                await asyncio.sleep(0.01)
        assert not (tmp_path / "workloads" / "web1").exists()
    finally:
        await reaper.aclose()
    assert reaper.task is None
