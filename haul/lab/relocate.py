"""Move a process tree from one lab host to another by checkpoint and restore.

This is stop-and-copy through CRIU's RPC with the commit rule of DESIGN.md,
for hosts that share one machine: dump on the source with the tree left
stopped, copy the images into a directory only the destination uses and the
workload's data directory into the destination's data (both with checksums),
restore there with the tree left stopped, then commit: kill the source tree,
resume the destination tree, and remove the source's data. Until that commit, any failure
(or cancellation) resumes the source tree and discards the destination's copy.
The agents and the engine of the migrate issue build on the same steps.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from haul.criu.notify import Action, Notification
from haul.criu.options import CriuOptions
from haul.criu.service import Criu
from haul.criu.stats import DumpStats, RestoreStats
from haul.errors import HaulError, RollbackFailed, UsageError, WorkloadError
from haul.procfs import state
from haul.source.proctree import ProcessTree
from haul.transport.datasync import sync_tree
from haul.transport.imagecopy import CopyReport, copy_images, verify_images

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelocationReport:
    dump_s: float
    copy_s: float
    restore_s: float
    #: from the moment CRIU froze the tree to the moment the new copy was resumed
    frozen_s: float
    #: images plus the workload's data, copied in the frozen window
    bytes_copied: int
    files_copied: int
    dump_stats: DumpStats | None
    restore_stats: RestoreStats | None
    source_pid: int
    dest_pid: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a move: how to run CRIU there, a directory only the move uses
    there, and (optionally) the host's data directory as haul sees it."""

    criu: Criu
    workdir: Path
    data: Path | None = None

    @property
    def images(self) -> Path:
        return self.workdir / "images"

    @property
    def logs(self) -> Path:
        return self.workdir / "work"


def default_options(images_dir: Path) -> CriuOptions:
    """What haul asks of CRIU for a plain process tree."""
    return CriuOptions(images_dir=images_dir, file_locks=True, link_remap=True)


async def relocate(
    tree: ProcessTree,
    source: Endpoint,
    dest: Endpoint,
    *,
    options: CriuOptions | None = None,
    data_subdir: str | None = None,
) -> tuple[ProcessTree, RelocationReport]:
    """Move ``tree`` from ``source`` to ``dest``; return the new tree and what it took.

    ``data_subdir`` names the workload's directory inside the hosts' data
    directories; it moves with the workload during the frozen window.
    """
    if not tree.alive:
        raise WorkloadError(f"no workload with root PID {tree.root_pid} is running here")
    src_data, dst_data = _data_dirs(source, dest, data_subdir)
    base = options or default_options(source.images)
    for d in (source.images, source.logs):
        d.mkdir(parents=True, exist_ok=False)
    dest.workdir.mkdir(parents=True, exist_ok=True)
    frozen_at: list[float] = []

    async def on_dump(note: Notification) -> None:
        if note.action is Action.PRE_DUMP:
            frozen_at.append(time.monotonic())  # CRIU freezes right after this answer

    dump_opts = replace(
        base, images_dir=source.images, work_dir=source.logs, pid=tree.root_pid,
        leave_stopped=True, leave_running=False,
    )
    t0 = time.monotonic()
    try:
        dumped = await source.criu.dump(dump_opts, on_dump)
    except BaseException as exc:
        await asyncio.shield(_rollback(tree, dest, exc))
        raise
    t1 = time.monotonic()
    new_tree: ProcessTree | None = None
    try:
        manifest, copied = await asyncio.to_thread(copy_images, source.images, dest.images)
        await asyncio.to_thread(verify_images, dest.images, manifest)
        if src_data is not None and dst_data is not None:
            moved_data = await asyncio.to_thread(sync_tree, src_data, dst_data)
            copied = CopyReport(copied.files + moved_data.files,
                                copied.bytes + moved_data.bytes, 0.0)
        t2 = time.monotonic()
        dest.logs.mkdir(parents=True, exist_ok=True)
        restore_opts = replace(
            base, images_dir=dest.images, work_dir=dest.logs, pid=None,
            leave_stopped=True, leave_running=False,
        )
        restored = await dest.criu.restore(restore_opts)
        new_tree = ProcessTree(restored.pid)
        await new_tree.wait_stopped()
        t3 = time.monotonic()
    except BaseException as exc:
        await asyncio.shield(_rollback(tree, dest, exc, new_tree, dst_data))
        raise
    # Commit: from here on the destination copy is the workload.
    await asyncio.shield(_commit(tree, new_tree, src_data))
    resumed = time.monotonic()
    report = RelocationReport(
        dump_s=t1 - t0,
        copy_s=t2 - t1,
        restore_s=t3 - t2,
        frozen_s=resumed - (frozen_at[0] if frozen_at else t0),
        bytes_copied=copied.bytes,
        files_copied=copied.files,
        dump_stats=dumped.stats,
        restore_stats=restored.stats,
        source_pid=tree.root_pid,
        dest_pid=new_tree.root_pid,
    )
    return new_tree, report


def _data_dirs(
    source: Endpoint, dest: Endpoint, subdir: str | None
) -> tuple[Path | None, Path | None]:
    """Check, before anything is touched, that the workload's data can move."""
    if subdir is None:
        return None, None
    if source.data is None or dest.data is None:
        raise UsageError("moving a data directory needs both hosts' data directories")
    if not subdir or "/" in subdir or subdir in (".", ".."):
        raise UsageError(f"data directory name {subdir!r} must be one plain path component")
    src, dst = source.data / subdir, dest.data / subdir
    if not src.is_dir():
        raise WorkloadError(f"the workload's data directory {src} does not exist")
    if dst.exists():
        raise WorkloadError(f"{dst} already exists on the destination; refusing to overwrite it")
    return src, dst


async def _commit(old: ProcessTree, new: ProcessTree, old_data: Path | None) -> None:
    await old.kill()
    new.resume()
    if old_data is not None:
        await asyncio.to_thread(shutil.rmtree, old_data, True)
    log.info("committed: source tree %d killed, tree %d resumed", old.root_pid, new.root_pid)


async def _rollback(
    tree: ProcessTree,
    dest: Endpoint,
    cause: BaseException,
    restored: ProcessTree | None = None,
    dest_data: Path | None = None,
) -> None:
    """Resume the source tree, discard the destination's copy; say where things are."""
    problems: list[str] = []
    if restored is not None and restored.alive:
        await restored.kill()
    if tree.alive:
        tree.resume()
        stopped = [p for p in tree.pids() if state(p) in ("T", "t")]
        if stopped:
            problems.append(f"source processes {stopped} are still stopped")
    else:
        problems.append(f"the source tree (root PID {tree.root_pid}) is gone")
    for discard in (dest.images, dest_data):
        if discard is None:
            continue
        try:
            shutil.rmtree(discard)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"could not remove {discard}: {exc.strerror}")
    if problems:
        raise RollbackFailed(
            "rollback incomplete: " + "; ".join(problems),
            workload_state="unknown, see above",
        ) from cause
    if isinstance(cause, HaulError):
        cause.workload_state = f"running on the source (root PID {tree.root_pid})"
    log.info("rolled back: tree %d running on the source", tree.root_pid)
