"""The CRIU RPC client against the real CRIU: the requests haul relies on."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from haul.criu.notify import Action, Notification
from haul.criu.options import CriuOptions, PageServer
from haul.criu.service import Criu
from haul.errors import CriuError, HaulError
from haul.lab.samples import Counter, start_counter
from haul.lab.spec import LabSpec
from haul.procfs import state
from haul.transport.datasync import sync_tree
from haul.transport.imagecopy import copy_images

pytestmark = pytest.mark.asyncio


async def _counter(lab: LabSpec, mem_mib: int = 16) -> Counter:
    return await start_counter(lab, lab.host(1), mem_mib=mem_mib)


def _free_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 1, -1):
        if not Path(f"/proc/{pid}").exists():
            return pid
    raise AssertionError("no free PID")


async def test_version_and_features(criu: Criu) -> None:
    v = await criu.version()
    assert v.at_least(4, 1), f"haul needs CRIU >= 4.1, the install gave {v}"
    f = await criu.features()
    # CRIU's answers agree with what the kernel shows: userfaultfd is there exactly when
    # the vm.unprivileged_userfaultfd knob is; soft-dirty exactly when pagemap reports it.
    assert f.lazy_pages is Path("/proc/sys/vm/unprivileged_userfaultfd").exists()
    kconfig = Path(f"/boot/config-{os.uname().release}")
    if kconfig.exists():
        assert f.mem_track is ("CONFIG_MEM_SOFT_DIRTY=y" in kconfig.read_text())


async def test_check_passes(criu: Criu, tmp_path: Path) -> None:
    await criu.check(tmp_path)
    assert (tmp_path / "check.log").exists()


async def test_cpuinfo_dump_then_check(criu: Criu, tmp_path: Path) -> None:
    opts = CriuOptions(images_dir=tmp_path)
    img = await criu.cpuinfo_dump(opts)
    assert img.stat().st_size > 0
    await criu.cpuinfo_check(opts)


async def test_cpuinfo_check_refuses_a_garbled_image(criu: Criu, tmp_path: Path) -> None:
    opts = CriuOptions(images_dir=tmp_path)
    img = await criu.cpuinfo_dump(opts)
    raw = bytearray(img.read_bytes())
    raw[8:] = b"\xff" * (len(raw) - 8)
    img.write_bytes(bytes(raw))
    with pytest.raises(CriuError) as info:
        await criu.cpuinfo_check(opts)
    assert info.value.request == "cpuinfo-check"


async def test_dump_of_a_missing_pid_fails_clearly_and_leaves_the_workload(
    criu: Criu, lab: LabSpec, tmp_path: Path
) -> None:
    counter = await _counter(lab)
    pid = _free_pid()
    with pytest.raises(CriuError) as info:
        await criu.on(lab.host(1).ns).dump(
            CriuOptions(images_dir=tmp_path, pid=pid, leave_stopped=True)
        )
    err = info.value
    assert err.request == "dump"
    assert err.log_tail, "the error carries the tail of CRIU's log"
    line = err.one_line()
    assert "\n" not in line and "CRIU dump" in line and str(tmp_path / "criu.log") in line
    assert any(str(pid) in line for line in err.log_tail)
    # The workload that does exist is untouched.
    n = counter.count()
    assert await counter.wait_above(n) > n
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_restore_from_an_empty_directory_fails_clearly(
    criu: Criu, lab: LabSpec, tmp_path: Path
) -> None:
    counter = await _counter(lab)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CriuError) as info:
        await criu.on(lab.host(2).ns).restore(
            CriuOptions(images_dir=empty, rst_sibling=True, leave_stopped=True)
        )
    assert info.value.request == "restore"
    assert info.value.log_tail
    n = counter.count()
    assert await counter.wait_above(n) > n
    assert (await counter.stop_and_verdict()).startswith("PASS")


@pytest.mark.parametrize("damage", ["truncate-pstree", "garble-core", "drop-pages"])
async def test_restore_from_corrupt_images_fails_and_leaves_the_original(
    criu: Criu, lab: LabSpec, tmp_path: Path, damage: str
) -> None:
    counter = await _counter(lab)
    src = tmp_path / "a"
    src.mkdir()
    # A dump that leaves the original running, so there is something to compare with.
    await criu.on(lab.host(1).ns).dump(
        CriuOptions(
            images_dir=src,
            pid=counter.tree.root_pid,
            leave_running=True,
            work_dir=tmp_path,
            file_locks=True,
        )
    )
    dst = tmp_path / "b"
    copy_images(src, dst)
    # host2 gets the workload's files too, so the images are all that is wrong.
    sync_tree(lab.host(1).data_backing / counter.subdir, lab.host(2).data_backing / counter.subdir)
    if damage == "truncate-pstree":
        (dst / "pstree.img").write_bytes((dst / "pstree.img").read_bytes()[:6])
    elif damage == "garble-core":
        core = max(dst.glob("core-*.img"))
        raw = bytearray(core.read_bytes())
        raw[8:] = os.urandom(len(raw) - 8)
        core.write_bytes(bytes(raw))
    else:
        for pages in dst.glob("pages-*.img"):
            pages.unlink()
    with pytest.raises(CriuError) as info:
        await criu.on(lab.host(2).ns).restore(
            CriuOptions(images_dir=dst, rst_sibling=True, leave_stopped=True, file_locks=True)
        )
    assert info.value.request == "restore"
    # Nothing of the failed restore is left in host2.
    from haul.procfs import netns_inode, pids_in_ns

    inode = netns_inode(lab.host(2).netns)
    assert inode is not None
    assert pids_in_ns("net", inode) == []
    n = counter.count()
    assert await counter.wait_above(n) > n
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_notifications_arrive_in_order_and_can_hold_the_dump(
    criu: Criu, lab: LabSpec, tmp_path: Path
) -> None:
    counter = await _counter(lab)
    seen: list[str] = []
    states_at_post_dump: list[str | None] = []

    async def hold(note: Notification) -> None:
        seen.append(note.name)
        if note.action is Action.POST_DUMP:
            states_at_post_dump.extend(state(p) for p in counter.tree.pids())
            await asyncio.sleep(0.3)  # the tree stays frozen while we wait

    images = tmp_path / "img"
    images.mkdir()
    before = counter.count()
    await criu.on(lab.host(1).ns).dump(
        CriuOptions(images_dir=images, pid=counter.tree.root_pid, leave_running=True), hold
    )
    assert seen.index("pre-dump") < seen.index("post-dump")
    # Frozen under ptrace at post-dump: "t" (tracing stop), or "T"
    assert states_at_post_dump and all(s in ("t", "T") for s in states_at_post_dump)
    # The counter did not advance by the 0.3 s hold (interval 20 ms) while frozen.
    assert counter.count() - before < 10
    assert await counter.wait_above(counter.count()) > before
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_refusing_post_dump_fails_the_dump_and_resumes_the_tree(
    criu: Criu, lab: LabSpec, tmp_path: Path
) -> None:
    counter = await _counter(lab)

    async def refuse(note: Notification) -> None:
        if note.action is Action.POST_DUMP:
            raise HaulError("destination not ready")

    images = tmp_path / "img"
    images.mkdir()
    with pytest.raises(CriuError) as info:
        await criu.on(lab.host(1).ns).dump(
            CriuOptions(images_dir=images, pid=counter.tree.root_pid, leave_stopped=True),
            refuse,
        )
    assert "destination not ready" in info.value.one_line()
    n = counter.count()
    assert await counter.wait_above(n) > n, "the tree runs again after a refused dump"
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_cancelling_at_post_dump_resumes_the_tree(
    criu: Criu, lab: LabSpec, tmp_path: Path
) -> None:
    counter = await _counter(lab)
    reached = asyncio.Event()

    async def wait_forever(note: Notification) -> None:
        if note.action is Action.POST_DUMP:
            reached.set()
            await asyncio.Event().wait()

    images = tmp_path / "img"
    images.mkdir()
    task = asyncio.create_task(
        criu.on(lab.host(1).ns).dump(
            CriuOptions(images_dir=images, pid=counter.tree.root_pid, leave_stopped=True),
            wait_forever,
        )
    )
    await asyncio.wait_for(reached.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n = counter.count()
    assert await counter.wait_above(n) > n, "the tree runs again after a cancelled dump"
    # and it can be dumped again right away
    again = tmp_path / "again"
    again.mkdir()
    res = await criu.on(lab.host(1).ns).dump(
        CriuOptions(images_dir=again, pid=counter.tree.root_pid, leave_running=True)
    )
    assert res.stats is not None and res.stats.pages_written > 0
    assert (await counter.stop_and_verdict()).startswith("PASS")


async def test_page_server_receives_the_pages_of_a_dump(
    criu: Criu, lab: LabSpec, tmp_path: Path
) -> None:
    counter = await _counter(lab, mem_mib=8)
    host2 = lab.host(2)
    dest = tmp_path / "dest"
    dest.mkdir()
    ps = await criu.on(host2.ns).page_server(
        CriuOptions(
            images_dir=dest,
            log_file="page-server.log",
            page_server=PageServer(str(host2.address.ip), 0),
        )
    )
    assert ps.port > 0
    assert Path(f"/proc/{ps.pid}/cmdline").read_bytes().startswith(b"criu"), "the real PID"
    src = tmp_path / "src"
    src.mkdir()
    res = await criu.on(lab.host(1).ns).dump(
        CriuOptions(
            images_dir=src,
            pid=counter.tree.root_pid,
            leave_running=True,
            page_server=PageServer(str(host2.address.ip), ps.port),
        )
    )
    assert res.stats is not None
    pages = sum(p.stat().st_size for p in dest.glob("pages-*.img"))
    assert pages >= 8 << 20, "the page server holds the workload's memory"
    assert not list(src.glob("pages-*.img")), "no pages were written on the source"
    assert (await counter.stop_and_verdict()).startswith("PASS")
    # It served its one dump and exited.
    for _ in range(100):
        if not Path(f"/proc/{ps.pid}").exists() or state(ps.pid) == "Z":
            break
        await asyncio.sleep(0.05)
    assert state(ps.pid) in (None, "Z")
