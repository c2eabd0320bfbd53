"""A runc container moved between two lab hosts by the engine, in this process: the
runc source and destination drivers with real runc and real CRIU, no agents
(haul/lab/containers.py).

The container is memhog (haul/lab/samples/memhog.c) in a busybox root filesystem, on
its host's network: it holds 16 MiB of seeded memory and counts into a file of its root
filesystem; on SIGTERM it checks its memory and writes its verdict there. It moves
host1 -> host2 -> host1: after each move runc lists it on the destination only, running
under the same ID, the count goes on from where it was, ``runc exec`` works there, and
the other host's runc knows it no more; at the end its memory is intact. A rollback
after the copy was restored leaves it running on host1 and nothing on host2, and the
next move goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookFacts, HookPoint
from haul.errors import HaulError, NoSuchContainer
from haul.lab.bundles import memhog_argv
from haul.lab.containers import LabContainers
from haul.lab.spec import HostSpec, LabSpec
from haul.procfs import state

pytestmark = pytest.mark.asyncio
NAME = "ctr1"
MIB = 16


class Lab(LabContainers):
    def count(self, host: HostSpec) -> int:
        """The count in the container's root filesystem (0 before the first write)."""
        try:
            text = (self.rootfs(host, NAME) / "count").read_text().strip()
        except FileNotFoundError:
            return 0
        return int(text) if text else 0

    async def counting(self, host: HostSpec) -> int:
        """The count once it has moved on (the container runs there)."""
        first = self.count(host)
        for _ in range(200):
            await asyncio.sleep(0.02)
            now = self.count(host)
            if now > first:
                return now
        raise AssertionError(f"the count on {host.name} stays at {first}")

    async def verdict(self, host: HostSpec) -> str:
        """Stop the container with SIGTERM: its own check of its memory."""
        await self.runc(host).kill(NAME, signal.SIGTERM)
        path = self.rootfs(host, NAME) / "verdict"
        for _ in range(500):
            if path.exists():
                return path.read_text().strip()
            await asyncio.sleep(0.02)
        raise AssertionError(f"no verdict on {host.name}")


@pytest_asyncio.fixture
async def ctr(lab: LabSpec, criu_path: Path) -> AsyncIterator[Lab]:
    h = Lab(lab, criu_path)
    try:
        await h.start(lab.host(1), NAME, memhog_argv(MIB))
        await h.counting(lab.host(1))
        yield h
    finally:
        for host in (lab.host(1), lab.host(2)):
            with contextlib.suppress(HaulError):
                await h.runc(host).delete(NAME, force=True)
            shutil.rmtree(h.rootfs(host, NAME), ignore_errors=True)


class RefuseAt:
    """Hooks that fail at one point (the rollback that follows is what is tested)."""

    def __init__(self, point: HookPoint) -> None:
        self.point = point

    async def fire(self, point: HookPoint, facts: HookFacts) -> None:
        if point is self.point:
            raise HaulError(f"the {point.value} gate says no")


@pytest.mark.parametrize("strategy", [Strategy.STOP_AND_COPY, Strategy.POST_COPY])
async def test_a_runc_container_moves_there_and_back_and_runc_manages_it(
    ctr: Lab, strategy: Strategy
) -> None:
    for src, dst in ((ctr.lab.host(1), ctr.lab.host(2)), (ctr.lab.host(2), ctr.lab.host(1))):
        before = ctr.count(src)
        outcome = await ctr.migrate(NAME, src, dst, strategy=strategy)
        assert outcome.phase is Phase.DONE, outcome.reason
        assert outcome.stats.frozen_s is not None
        with pytest.raises(NoSuchContainer):
            await ctr.runc(src).state(NAME)
        assert not ctr.rootfs(src, NAME).exists(), "its files left with it"
        [listed] = await ctr.runc(dst).list()
        assert (listed.id, listed.status) == (NAME, "running")
        after = await ctr.counting(dst)
        assert after > before, "the count goes on from where it was frozen"
        assert state(listed.pid) not in (None, "T", "t")
        assert int((await ctr.runc(dst).exec(NAME, ["cat", "/count"])).strip()) >= after
    home = ctr.lab.host(1)
    assert (await ctr.verdict(home)).startswith("PASS"), "its memory came over intact"
    await ctr.runc(home).delete(NAME, force=True)
    assert await ctr.runc(home).list() == []


@pytest.mark.parametrize("strategy", [Strategy.STOP_AND_COPY, Strategy.POST_COPY])
async def test_a_rollback_after_the_restore_leaves_it_running_on_the_source_only(
    ctr: Lab, strategy: Strategy
) -> None:
    src, dst = ctr.lab.host(1), ctr.lab.host(2)
    outcome = await ctr.migrate(
        NAME, src, dst, strategy=strategy, hooks=RefuseAt(HookPoint.RESTORED)
    )
    assert outcome.phase is Phase.ROLLED_BACK, outcome.reason
    assert "the restored gate says no" in outcome.reason
    runs = await ctr.runc(src).state(NAME)
    assert runs.status == "running", "resumed, not left paused"
    await ctr.counting(src)
    assert await ctr.runc(dst).list() == [], "the restored copy is deleted"
    assert not ctr.rootfs(dst, NAME).exists()
    assert not ctr.bundle(dst, NAME).exists()
    again = await ctr.migrate(NAME, src, dst, strategy=strategy)
    assert again.phase is Phase.DONE, again.reason
    await ctr.counting(dst)
