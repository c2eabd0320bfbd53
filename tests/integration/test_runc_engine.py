"""A runc container moved between two lab hosts by the engine, in this process: the
runc source and destination drivers with real runc and real CRIU, no agents.

The container is memhog (haul/lab/samples/memhog.c) in a busybox root filesystem, on
its host's network: it holds 16 MiB of seeded memory and counts into a file of its root
filesystem; on SIGTERM it checks its memory and writes its verdict there. After the move
runc lists it on host2 only, running under the same ID, the count goes on from where it
was, ``runc exec`` works there, its memory is intact, and host1's runc knows it no more.
A rollback after the copy was restored leaves it running on host1 and nothing on host2,
and the next move goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from haul.agent.journal import Journal
from haul.criu.options import PageServer
from haul.criu.service import Criu
from haul.dest.runcdest import RuncDestination
from haul.engine.machine import Migration
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookFacts, HookPoint, HooksPort
from haul.engine.runner import Outcome, run
from haul.engine.spec import MigrationSpec
from haul.engine.timeouts import DEFAULT_TIMEOUTS_S
from haul.errors import HaulError, NoSuchContainer
from haul.lab.bundles import make_bundle, memhog_argv
from haul.lab.spec import HostSpec, LabSpec
from haul.procfs import state
from haul.runtime.runc import Runc
from haul.source.runcsource import RuncSource
from haul.transport.local import LocalTransport

pytestmark = pytest.mark.asyncio
NAME = "ctr1"
MIB = 16


@dataclass
class Hosts:
    lab: LabSpec
    criu: Criu
    criu_path: Path

    def runc(self, host: HostSpec) -> Runc:
        return Runc(host.workdir / "runc", criu=self.criu_path, host=host.ns)

    def rootfs(self, host: HostSpec) -> Path:
        return host.data_backing / NAME

    def cgroups_path(self, host: HostSpec) -> str:
        return f"/haul-test/{self.lab.prefix}-{host.name}/{NAME}"

    def count(self, host: HostSpec) -> int:
        """The count in the container's root filesystem (0 before the first write)."""
        try:
            text = (self.rootfs(host) / "count").read_text().strip()
        except FileNotFoundError:
            return 0
        return int(text) if text else 0

    async def verdict(self, host: HostSpec) -> str:
        """Stop the container with SIGTERM: its own check of its memory."""
        await self.runc(host).kill(NAME, signal.SIGTERM)
        path = self.rootfs(host) / "verdict"
        for _ in range(500):
            if path.exists():
                return path.read_text().strip()
            await asyncio.sleep(0.02)
        raise AssertionError(f"no verdict on {host.name}")

    async def counting(self, host: HostSpec) -> int:
        """The count once it has moved on (the container runs there)."""
        first = self.count(host)
        for _ in range(200):
            await asyncio.sleep(0.02)
            now = self.count(host)
            if now > first:
                return now
        raise AssertionError(f"the count on {host.name} stays at {first}")


@pytest_asyncio.fixture
async def hosts(lab: LabSpec, criu: Criu, criu_path: Path) -> AsyncIterator[Hosts]:
    h = Hosts(lab, criu, criu_path)
    src = lab.host(1)
    bundle = src.workdir / "bundles" / NAME
    try:
        await asyncio.to_thread(
            make_bundle,
            bundle,
            h.rootfs(src),
            argv=memhog_argv(MIB),
            cgroups_path=h.cgroups_path(src),
        )
        await h.runc(src).run_detached(NAME, bundle, pid_file=src.workdir / f"{NAME}.pid")
        await h.counting(src)
        yield h
    finally:
        for host in (lab.host(1), lab.host(2)):
            with contextlib.suppress(HaulError):
                await h.runc(host).delete(NAME, force=True)
            shutil.rmtree(h.rootfs(host), ignore_errors=True)


class RefuseAt:
    """Hooks that fail at one point (the rollback that follows is what is tested)."""

    def __init__(self, point: HookPoint) -> None:
        self.point = point
        self.copy_pid: int | None = None

    async def fire(self, point: HookPoint, facts: HookFacts) -> None:
        if point is self.point:
            raise HaulError(f"the {point.value} gate says no")


async def migrate(h: Hosts, strategy: Strategy, *, hooks: HooksPort | None = None) -> Outcome:
    src, dst = h.lab.host(1), h.lab.host(2)
    mid = "m" + secrets.token_hex(6)
    source = RuncSource(
        h.criu.on(src.ns),
        h.runc(src),
        NAME,
        src.workdir / "out" / mid,
        bundle=src.workdir / "bundles" / NAME,
        lazy_listen=PageServer(str(src.address.ip), 20000 + secrets.randbelow(20000)),
    )
    config = json.loads((src.workdir / "bundles" / NAME / "config.json").read_text())
    dest = RuncDestination(
        h.criu.on(dst.ns),
        h.runc(dst),
        dst.workdir / "in" / mid,
        container_id=NAME,
        source_config=config,
        rootfs=h.rootfs(dst),
        cgroups_path=h.cgroups_path(dst),
        data=dst.data_backing,
        listen=PageServer(str(dst.address.ip), 0),
        lazy_source=source.lazy_listen,
    )
    transport = LocalTransport(
        source.images, dest.images, source_data=h.rootfs(src), dest_data=h.rootfs(dst)
    )
    migration = Migration(MigrationSpec(mid, NAME, src.name, dst.name, strategy=strategy))
    return await run(
        migration,
        source=source,
        dest=dest,
        transport=transport,
        journal=Journal(src.workdir / "journal"),
        timeouts=DEFAULT_TIMEOUTS_S,
        hooks=hooks,
    )


@pytest.mark.parametrize("strategy", [Strategy.STOP_AND_COPY, Strategy.POST_COPY])
async def test_a_runc_container_moves_and_runc_manages_it_there(
    hosts: Hosts, strategy: Strategy
) -> None:
    src, dst = hosts.lab.host(1), hosts.lab.host(2)
    before = hosts.count(src)
    outcome = await migrate(hosts, strategy)
    assert outcome.phase is Phase.DONE, outcome.reason
    # host1's runc knows it no more; host2's lists it running under the same ID
    with pytest.raises(NoSuchContainer):
        await hosts.runc(src).state(NAME)
    [listed] = await hosts.runc(dst).list()
    assert (listed.id, listed.status) == (NAME, "running")
    # the count goes on from where it was frozen, on host2
    after = await hosts.counting(dst)
    assert after > before
    assert state(listed.pid) not in (None, "T", "t")
    # runc manages it there: exec, kill, delete
    assert int((await hosts.runc(dst).exec(NAME, ["cat", "/count"])).strip()) >= after
    assert (await hosts.verdict(dst)).startswith("PASS"), "its memory came over intact"
    await hosts.runc(dst).delete(NAME, force=True)
    assert await hosts.runc(dst).list() == []
    assert outcome.stats.frozen_s is not None


@pytest.mark.parametrize("strategy", [Strategy.STOP_AND_COPY, Strategy.POST_COPY])
async def test_a_rollback_after_the_restore_leaves_it_running_on_the_source_only(
    hosts: Hosts, strategy: Strategy
) -> None:
    src, dst = hosts.lab.host(1), hosts.lab.host(2)
    outcome = await migrate(hosts, strategy, hooks=RefuseAt(HookPoint.RESTORED))
    assert outcome.phase is Phase.ROLLED_BACK, outcome.reason
    assert "the restored gate says no" in outcome.reason
    runs = await hosts.runc(src).state(NAME)
    assert runs.status == "running", "resumed, not left paused"
    await hosts.counting(src)
    assert await hosts.runc(dst).list() == [], "the restored copy is deleted"
    assert not hosts.rootfs(dst).exists()
    # and the next move goes through
    again = await migrate(hosts, strategy)
    assert again.phase is Phase.DONE, again.reason
    await hosts.counting(dst)
