"""A source frozen at post-dump stays frozen if CRIU dies: the migration's freezer hold.

Without the hold, CRIU's death ends its ptrace and the tree runs again by
itself; after a commit that would be a second live copy. These tests kill
CRIU while it holds the final dump and check the counter does not count.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Iterator

import pytest

from haul.criu.options import PageServer
from haul.criu.service import Criu
from haul.lab.samples import start_counter
from haul.lab.spec import LabSpec
from haul.procfs import alive, state
from haul.source.criusource import CriuSource
from haul.source.freezer import Hold

pytestmark = pytest.mark.asyncio


@pytest.fixture
def hold_name() -> Iterator[str]:
    """A hold name of this test's own; its cgroup is thawed and removed whatever happens."""
    name = "mhold" + secrets.token_hex(3)
    try:
        yield name
    finally:
        Hold(name).thaw()


async def _frozen_source(criu: Criu, lab: LabSpec, hold_name: str) -> tuple[CriuSource, int]:
    host = lab.host(1)
    counter = await start_counter(lab, host, mem_mib=8, interval_ms=5)
    source = CriuSource(criu.on(host.ns), counter.tree, host.workdir / "outgoing" / hold_name)
    await source.freeze_and_dump(lazy=False, page_server=None)
    assert source.hold.exists
    assert source.criu_pid is not None
    os.kill(source.criu_pid, signal.SIGKILL)
    await asyncio.sleep(0.5)  # long enough for a running counter to count 50 times
    return source, counter.count()


async def test_killed_criu_leaves_the_tree_frozen_until_resumed(
    criu: Criu, lab: LabSpec, hold_name: str
) -> None:
    source, frozen_at = await _frozen_source(criu, lab, hold_name)
    counter_state = lab.host(1).data_backing / "counter" / "state"
    await asyncio.sleep(0.3)
    assert int(counter_state.read_text().split()[1]) == frozen_at, "the tree ran without CRIU"
    assert all(state(p) == "D" for p in source.tree.pids())  # in the freezer, not running
    await source.resume()
    assert not source.hold.exists
    deadline = asyncio.get_running_loop().time() + 10
    while int(counter_state.read_text().split()[1]) <= frozen_at:
        assert asyncio.get_running_loop().time() < deadline, "the tree did not resume"
        await asyncio.sleep(0.02)
    source.tree.terminate()
    await source.tree.wait(10)
    assert counter_state.read_text().startswith("PASS")


async def test_a_held_tree_killed_after_the_commit_never_runs_again(
    criu: Criu, lab: LabSpec, hold_name: str
) -> None:
    source, frozen_at = await _frozen_source(criu, lab, hold_name)
    await source.release(commit=True)  # CRIU is gone: the commit goes on all the same
    await source.kill()
    assert not source.tree.alive and not source.hold.exists
    counter_state = lab.host(1).data_backing / "counter" / "state"
    assert int(counter_state.read_text().split()[1]) == frozen_at


async def test_a_post_copy_dump_rolled_back_at_post_dump_lets_the_tree_run(
    criu: Criu, lab: LabSpec, hold_name: str
) -> None:
    """CRIU ignores a refused post-dump in a lazy dump and starts serving pages; the
    rollback must end it rather than wait for it, and the tree must run again."""
    host = lab.host(1)
    counter = await start_counter(lab, host, mem_mib=8, interval_ms=5)
    source = CriuSource(
        criu.on(host.ns),
        counter.tree,
        host.workdir / "outgoing" / hold_name,
        lazy_listen=PageServer(str(host.address.ip), 27999),
    )
    await source.freeze_and_dump(lazy=True, page_server=None)
    frozen_at = counter.count()
    async with asyncio.timeout(30):  # it used to wait forever for a lazy-pages client
        await source.release(commit=False)
        await source.resume()
    assert not source.hold.exists
    assert source.criu_pid is not None and not alive(source.criu_pid)
    assert await counter.wait_above(frozen_at) > frozen_at
    assert (await counter.stop_and_verdict()).startswith("PASS")
