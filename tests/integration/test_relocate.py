"""Checkpoint on one lab host, restore on another: state survives, one copy runs."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from haul.criu.service import Criu
from haul.errors import HaulError, TransportError
from haul.lab.relocate import Endpoint, RelocationReport, relocate
from haul.lab.samples import Counter, start_counter
from haul.lab.spec import HostSpec, LabSpec
from haul.procfs import netns_inode, ns_inode, pids_in_ns, state
from haul.source.proctree import ProcessTree

pytestmark = pytest.mark.asyncio


def _ends(
    criu: Criu, src: HostSpec, dst: HostSpec, name: str, dst_workdir: Path | None = None
) -> tuple[Endpoint, Endpoint]:
    return (
        Endpoint(criu.on(src.ns), src.workdir / name, src.data_backing),
        Endpoint(criu.on(dst.ns), (dst_workdir or dst.workdir) / name, dst.data_backing),
    )


async def _move(criu: Criu, counter: Counter, dst: HostSpec, name: str,
                dst_workdir: Path | None = None) -> RelocationReport:
    counter.tree, report = await relocate(
        counter.tree, *_ends(criu, counter.host, dst, name, dst_workdir),
        data_subdir=counter.subdir,
    )
    counter.host = dst
    return report


def _in_host(tree: ProcessTree, host: HostSpec) -> bool:
    return ns_inode(tree.root_pid, "net") == netns_inode(host.netns)


def _processes_in(host: HostSpec) -> list[int]:
    inode = netns_inode(host.netns)
    assert inode is not None
    return pids_in_ns("net", inode)


async def test_counter_moves_there_and_back_and_keeps_counting(
    criu: Criu, lab: LabSpec
) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1, mem_mib=32)
    for n, (src, dst) in enumerate([(h1, h2), (h2, h1)], start=1):
        before = counter.count()
        old = counter.tree
        report = await _move(criu, counter, dst, f"m{n}")
        # Exactly one live copy, in the destination host.
        assert not old.alive
        assert counter.tree.alive and _in_host(counter.tree, dst)
        assert _processes_in(src) == [], f"nothing of the workload is left in {src.name}"
        assert not (src.data_backing / counter.subdir).exists(), "its files left the source"
        assert all(state(p) not in ("T", "t") for p in counter.tree.pids())
        # It continues from where it was, not from zero.
        after = await counter.wait_above(before)
        assert before < after < before + 200
        assert report.bytes_copied >= 32 << 20
        assert report.dump_stats is not None and report.dump_stats.pages_written >= 32 * 256
        assert report.restore_stats is not None
        assert report.frozen_s > 0
    verdict = await counter.stop_and_verdict()
    assert verdict.startswith("PASS"), verdict


async def test_restored_tree_keeps_its_pids_inside_its_namespace(
    criu: Criu, lab: LabSpec
) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1)

    def ns_pids(tree: ProcessTree) -> list[str]:
        out = []
        for pid in tree.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    out.append(line.split()[-1])
        return sorted(out)

    before = ns_pids(counter.tree)
    await _move(criu, counter, h2, "m")
    assert ns_pids(counter.tree) == before == ["1", "2"]
    host = subprocess.run(["ip", "netns", "identify", str(counter.tree.root_pid)],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert host == h2.netns
    assert (await counter.stop_and_verdict()).startswith("PASS")


@pytest.fixture
def tiny_disk(lab: LabSpec):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs in host2's work directory: a destination whose disk is full."""
    where = lab.host(2).workdir / "full"
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "haul-test-full", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_full_destination_disk_rolls_back_to_the_source(
    criu: Criu, lab: LabSpec, tiny_disk: Path
) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1, mem_mib=8)
    tree = counter.tree
    with pytest.raises(TransportError) as info:
        await _move(criu, counter, h2, "m", dst_workdir=tiny_disk)
    counter.host = h1  # it never left
    assert "running on the source" in info.value.one_line()
    assert tree.alive and _in_host(tree, h1)
    assert all(state(p) not in ("T", "t") for p in tree.pids()), "the source runs again"
    assert _processes_in(h2) == []
    assert not (tiny_disk / "m" / "images").exists(), "the partial copy was discarded"
    assert not (h2.data_backing / counter.subdir).exists()
    n = counter.count()
    assert await counter.wait_above(n) > n
    # The next move, to a destination with room, succeeds.
    await _move(criu, counter, lab.client, "m2")
    assert _in_host(counter.tree, lab.client)
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_cancel_during_restore_rolls_back(criu: Criu, lab: LabSpec) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1, mem_mib=64)
    tree = counter.tree
    src, dst = _ends(criu, h1, h2, "m")
    task = asyncio.create_task(relocate(tree, src, dst, data_subdir=counter.subdir))
    # Cancel once the images have arrived on the destination (restore is under way).
    async with asyncio.timeout(60):
        while not (dst.logs.exists()):
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tree.alive and _in_host(tree, h1)
    assert all(state(p) not in ("T", "t") for p in tree.pids())
    await asyncio.sleep(0.2)
    assert _processes_in(h2) == [], "the destination's copy was discarded"
    assert not dst.images.exists()
    assert not (h2.data_backing / counter.subdir).exists()
    n = counter.count()
    assert await counter.wait_above(n) > n
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_relocating_a_dead_tree_is_refused(criu: Criu, lab: LabSpec) -> None:
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1)
    await counter.tree.kill()
    with pytest.raises(HaulError, match="no workload"):
        await relocate(counter.tree, *_ends(criu, h1, h2, "m"))
