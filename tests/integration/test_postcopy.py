"""Post-copy between lab hosts: a lazy dump on host1, CRIU's lazy-pages daemon
and a lazy restore on host2. The restored copy runs before its memory has
arrived; it faults pages in from host1's frozen tree, and the rest follows in
the background. The counter checks all of its memory when it stops."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from haul.criu.lazypages import LazyPagesDaemon
from haul.criu.notify import Action, Notification
from haul.criu.options import CriuOptions, PageServer
from haul.criu.service import Criu
from haul.lab.netlab import set_sysctl
from haul.lab.samples import start_counter
from haul.lab.spec import LabSpec
from haul.procfs import netns_inode, ns_inode, state
from haul.transport.datasync import sync_tree
from haul.transport.imagecopy import copy_images
from haul.workload.proctree import ProcessTree

pytestmark = pytest.mark.asyncio
MEM_MIB = 64


async def test_post_copy_move_delivers_every_page(criu: Criu, lab: LabSpec) -> None:
    # CRIU's lazy transfer needs a larger pipe here (no CAP_SYS_RESOURCE): docs/environment.md.
    set_sysctl(lab.prefix, "fs.pipe-max-size", "4194304")
    h1, h2 = lab.host(1), lab.host(2)
    counter = await start_counter(lab, h1, mem_mib=MEM_MIB)
    src_img, src_work = h1.workdir / "pc" / "images", h1.workdir / "pc" / "work"
    dst_img, dst_work = h2.workdir / "pc" / "images", h2.workdir / "pc" / "work"
    for d in (src_img, src_work, dst_work):
        d.mkdir(parents=True)
    source = PageServer(str(h1.address.ip), 20000 + secrets.randbelow(10000))

    async def ship_at_post_dump(note: Notification) -> None:
        if note.action is Action.POST_DUMP:  # everything but the memory is written
            copy_images(src_img, dst_img)
            sync_tree(h1.data_backing / counter.subdir, h2.data_backing / counter.subdir)

    dump = asyncio.create_task(
        criu.on(h1.ns).dump(
            CriuOptions(
                images_dir=src_img,
                work_dir=src_work,
                pid=counter.tree.root_pid,
                leave_stopped=True,
                lazy_pages=True,
                page_server=source,
            ),
            ship_at_post_dump,
        )
    )
    async with asyncio.timeout(60):
        while not (dst_img / "pstree.img").exists():
            assert not dump.done(), dump.exception() if dump.done() else ""
            await asyncio.sleep(0.01)
    pages_on_disk = sum(p.stat().st_size for p in dst_img.glob("pages-*.img"))
    assert pages_on_disk < (MEM_MIB << 20) // 4, "the memory did not travel with the images"

    async with LazyPagesDaemon(
        criu.on(h2.ns), images_dir=dst_img, work_dir=dst_work, source=source
    ) as daemon:
        restored = await criu.on(h2.ns).restore(
            CriuOptions(images_dir=dst_img, work_dir=dst_work, lazy_pages=True, leave_stopped=True)
        )
        copy = ProcessTree(restored.pid)
        assert all(state(p) in ("T", "t") for p in copy.pids())
        # Commit for post-copy: the source stays frozen as a page server; the copy runs.
        copy.resume()
        counter.tree, old = copy, counter.tree
        counter.host = h2
        await daemon.wait(timeout_s=120)
    # The source's lazy page server has served every page, so the dump returns.
    # (CRIU 4.1.1 rewrites stats-dump from the lazy page server with zeroed
    # counters, so its figures are not read here.)
    await asyncio.wait_for(dump, 60)
    assert all(state(p) in ("T", "t") for p in old.pids()), "the source never ran again"
    await old.kill()
    assert ns_inode(copy.root_pid, "net") == netns_inode(h2.netns)
    n = counter.count()
    assert await counter.wait_above(n) > n
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_lazy_pages_daemon_without_a_source_fails_clearly(
    criu: Criu, lab: LabSpec, tmp_path: Path
) -> None:
    set_sysctl(lab.prefix, "fs.pipe-max-size", "4194304")
    h2 = lab.host(2)
    images, work = tmp_path / "img", tmp_path / "work"
    images.mkdir()
    work.mkdir()
    from haul.errors import CriuError

    with pytest.raises(CriuError) as info:
        async with LazyPagesDaemon(
            criu.on(h2.ns),
            images_dir=images,
            work_dir=work,
            source=PageServer(str(lab.host(1).address.ip), 1),
        ) as d:
            await d.wait(timeout_s=30)
    assert info.value.request == "lazy-pages"
