"""The engine with the real CRIU adapters between two lab hosts (no agents):
each strategy this kernel allows, there and back with the tree's own PIDs, and
what happens before the commit: a dead tree refused, a destination disk filling
up, a cancellation while CRIU restores."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from haul.criu.notify import Action, Notification, NotifyHandler
from haul.criu.options import CriuOptions
from haul.criu.results import RestoreResult
from haul.criu.service import Criu
from haul.engine.events import DestinationPrepared, Event, RestoredStopped
from haul.engine.phases import Phase, Strategy
from haul.lab.migrate import migrate_in_lab
from haul.lab.netlab import set_sysctl
from haul.lab.samples import start_counter
from haul.lab.spec import HostSpec, LabSpec
from haul.nsexec import HOST, HostNs
from haul.procfs import netns_inode, ns_inode, pids_in_ns, state
from haul.workload.proctree import ProcessTree

pytestmark = pytest.mark.asyncio


def _procs(host: HostSpec) -> list[int]:
    inode = netns_inode(host.netns)
    assert inode is not None
    return pids_in_ns("net", inode)


def _ns_pids(tree: ProcessTree) -> list[str]:
    """Each process's PID inside the tree's own PID namespace (the last NSpid field)."""
    found = []
    for pid in tree.pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                found.append(line.split()[-1])
    return sorted(found)


def _journal(host: HostSpec) -> list[dict[str, str]]:
    """The records of the one migration journaled on ``host`` (the source)."""
    (only,) = (host.workdir / "journal").glob("*.jsonl")
    return [json.loads(line) for line in only.read_text().splitlines()]


@pytest.mark.parametrize("strategy", [Strategy.STOP_AND_COPY, Strategy.POST_COPY])
async def test_there_and_back(criu: Criu, lab: LabSpec, strategy: Strategy) -> None:
    set_sysctl(lab.prefix, "fs.pipe-max-size", "4194304")
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1, mem_mib=48)
    ns_pids = _ns_pids(counter.tree)
    assert ns_pids == ["1", "2"], "haul's init and the counter"
    for src, dst in ((h1, h2), (h2, h1)):
        before = counter.count()
        result = await migrate_in_lab(
            criu, counter.tree, counter.subdir, src, dst, strategy=strategy
        )
        assert result.outcome.phase is Phase.DONE, result.outcome.reason
        assert result.migration.strategy is strategy
        new = result.new_tree
        assert new is not None and new.alive
        assert not counter.tree.alive, "the source copy is gone"
        assert ns_inode(new.root_pid, "net") == netns_inode(dst.netns)
        assert _ns_pids(new) == ns_pids, "the tree keeps its PIDs inside its namespace"
        assert _procs(src) == []
        assert not (src.data_backing / counter.subdir).exists()
        counter.tree, counter.host = new, dst
        assert await counter.wait_above(before) > before
        stats = result.outcome.stats
        assert stats.frozen_s is not None and stats.frozen_s > 0
        journal = src.workdir / "journal" / f"{result.migration.spec.migration_id}.jsonl"
        phases = [json.loads(line)["phase"] for line in journal.read_text().splitlines()]
        assert "commit" in phases and phases[-1] == "done"
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_auto_picks_post_copy_when_allowed_and_stop_and_copy_otherwise(
    criu: Criu, lab: LabSpec
) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1)
    # With fs.pipe-max-size at the kernel's default, lazy transfer is not possible here.
    set_sysctl(lab.prefix, "fs.pipe-max-size", "1048576")
    result = await migrate_in_lab(criu, counter.tree, counter.subdir, h1, h2)
    assert result.outcome.phase is Phase.DONE, result.outcome.reason
    assert result.migration.strategy is Strategy.STOP_AND_COPY
    assert result.new_tree is not None
    counter.tree, counter.host = result.new_tree, h2
    set_sysctl(lab.prefix, "fs.pipe-max-size", "4194304")
    result = await migrate_in_lab(criu, counter.tree, counter.subdir, h2, h1)
    assert result.migration.strategy is Strategy.POST_COPY
    assert result.new_tree is not None
    counter.tree, counter.host = result.new_tree, h1
    assert (await counter.stop_and_verdict()).startswith("PASS")


@pytest.fixture
def small_disk(lab: LabSpec):  # type: ignore[no-untyped-def]
    """A 256 MiB tmpfs in host2's work directory, for a destination whose disk fills up."""
    where = lab.host(2).workdir / "small"
    where.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "haul-test-small", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("strategy", [Strategy.STOP_AND_COPY, Strategy.POST_COPY])
async def test_destination_disk_filling_up_rolls_back_to_a_running_source(
    criu: Criu, lab: LabSpec, small_disk: Path, strategy: Strategy
) -> None:
    set_sysctl(lab.prefix, "fs.pipe-max-size", "4194304")
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1, mem_mib=64)
    tree = counter.tree

    def fill_disk_after_preflight(phase: Phase, event: Event) -> None:
        if isinstance(event, DestinationPrepared):
            free = shutil.disk_usage(small_disk).free
            with open(small_disk / "filler", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, free - (256 << 10))

    result = await migrate_in_lab(
        criu,
        tree,
        counter.subdir,
        h1,
        h2,
        strategy=strategy,
        dest_workdir=small_disk,
        on_event=fill_disk_after_preflight,
    )
    assert result.outcome.phase is Phase.ROLLED_BACK, result.outcome.reason
    assert tree.alive and all(state(p) not in ("T", "t") for p in tree.pids())
    assert _procs(h2) == [], "nothing of the workload runs on the destination"
    assert not (h2.data_backing / counter.subdir).exists()
    assert [p.name for p in small_disk.iterdir()] == ["filler"], "the partial copy is gone"
    n = counter.count()
    assert await counter.wait_above(n) > n
    # With room again, the next migration succeeds.
    (small_disk / "filler").unlink()
    again = await migrate_in_lab(criu, tree, counter.subdir, h1, h2, strategy=strategy)
    assert again.outcome.phase is Phase.DONE, again.outcome.reason
    assert again.new_tree is not None
    counter.tree, counter.host = again.new_tree, h2
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_a_dead_tree_is_refused_and_nothing_is_touched(criu: Criu, lab: LabSpec) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1)
    await counter.tree.kill()
    result = await migrate_in_lab(criu, counter.tree, counter.subdir, h1, h2)
    reason = result.outcome.reason
    assert result.outcome.phase is Phase.REFUSED, reason
    assert "\n" not in reason
    assert f"source host1: no workload tree with root PID {counter.tree.root_pid}" in reason
    assert result.new_tree is None
    assert _procs(h2) == []
    assert list((h2.workdir / "in").glob("*")) == [], "no incoming directory"
    assert not (h2.data_backing / counter.subdir).exists()
    assert [r["phase"] for r in _journal(h1)] == ["preflight", "refused"]


class _RestoreHeldAt(Criu):
    """The real CRIU, whose restores wait at one notification until they are cancelled.

    The destination's own handler answers the notification first; then ``held``
    gets the restored root's PID and the restore waits there, CRIU with it."""

    def __init__(
        self, binary: str, held: asyncio.Future[int], *, at: Action, host: HostNs = HOST
    ) -> None:
        super().__init__(binary, host=host)
        self.held = held
        self.at = at

    def on(self, host: HostNs) -> Criu:
        return _RestoreHeldAt(self.binary, self.held, at=self.at, host=host)

    async def restore(
        self, opts: CriuOptions, notify: NotifyHandler | None = None
    ) -> RestoreResult:
        async def hold(note: Notification) -> None:
            if notify is not None:
                await notify(note)
            else:
                note.close_fd()
            if note.action is self.at and note.pid is not None:
                self.held.set_result(note.pid)
                await asyncio.Event().wait()  # until the migration is cancelled

        return await super().restore(opts, hold)


@pytest.mark.parametrize("strategy", [Strategy.STOP_AND_COPY, Strategy.POST_COPY])
async def test_cancel_while_criu_restores_rolls_back(
    criu: Criu, lab: LabSpec, strategy: Strategy
) -> None:
    set_sysctl(lab.prefix, "fs.pipe-max-size", "4194304")
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1, mem_mib=64)
    tree = counter.tree
    held: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[tuple[Phase, Event]] = []
    task = asyncio.create_task(
        migrate_in_lab(
            _RestoreHeldAt(criu.binary, held, at=Action.POST_RESTORE),
            tree,
            counter.subdir,
            h1,
            h2,
            strategy=strategy,
            on_event=lambda phase, event: seen.append((phase, event)),
        )
    )
    try:
        async with asyncio.timeout(60):
            first: list[asyncio.Future[Any]] = [held, task]
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        assert held.done(), f"the migration ended first: {task.result().outcome.reason}"
        # CRIU has the copy restored on host2 and waits for haul at post-restore.
        assert ns_inode(held.result(), "net") == netns_inode(h2.netns)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(isinstance(event, RestoredStopped) for _, event in seen)
    records = _journal(h1)
    assert [r["phase"] for r in records][-3:] == ["restore", "rolling-back", "rolled-back"]
    assert "cancelled by the caller" in records[-1]["detail"]
    assert tree.alive and ns_inode(tree.root_pid, "net") == netns_inode(h1.netns)
    assert all(state(p) not in ("T", "t") for p in tree.pids()), "the source runs again"
    assert _procs(h2) == [], "CRIU, its page servers and the restored copy are gone"
    assert list((h2.workdir / "in").glob("*")) == [], "the destination kept nothing"
    assert not (h2.data_backing / counter.subdir).exists()
    n = counter.count()
    assert await counter.wait_above(n) > n
    assert (await counter.stop_and_verdict()).startswith("PASS")
