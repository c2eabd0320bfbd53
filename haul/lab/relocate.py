"""Move a process tree from one lab host to another by checkpoint and restore.

This is stop-and-copy through CRIU's RPC with the commit rule of DESIGN.md,
for hosts that share one machine: dump on the source with the tree left
stopped, copy the images into a directory only the destination uses (with
checksums), restore there with the tree left stopped, then commit: kill the
source tree and resume the destination tree. Until that commit, any failure
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
from haul.errors import HaulError, RollbackFailed, WorkloadError
from haul.procfs import state
from haul.source.proctree import ProcessTree
from haul.transport.imagecopy import copy_images, verify_images

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelocationReport:
    dump_s: float
    copy_s: float
    restore_s: float
    #: from the moment CRIU froze the tree to the moment the new copy was resumed
    frozen_s: float
    images_bytes: int
    images_files: int
    dump_stats: DumpStats | None
    restore_stats: RestoreStats | None
    source_pid: int
    dest_pid: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a move: how to run CRIU there and a directory only it uses."""

    criu: Criu
    workdir: Path

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
) -> tuple[ProcessTree, RelocationReport]:
    """Move ``tree`` from ``source`` to ``dest``; return the new tree and what it took."""
    if not tree.alive:
        raise WorkloadError(f"no workload with root PID {tree.root_pid} is running here")
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
        t2 = time.monotonic()
        dest.logs.mkdir(parents=True, exist_ok=True)
        restore_opts = replace(
            base, images_dir=dest.images, work_dir=dest.logs, pid=None,
            leave_stopped=True, leave_running=False, rst_sibling=True,
        )
        restored = await dest.criu.restore(restore_opts)
        new_tree = ProcessTree(restored.pid)
        t3 = time.monotonic()
    except BaseException as exc:
        await asyncio.shield(_rollback(tree, dest, exc, new_tree))
        raise
    # Commit: from here on the destination copy is the workload.
    await asyncio.shield(_commit(tree, new_tree))
    resumed = time.monotonic()
    report = RelocationReport(
        dump_s=t1 - t0,
        copy_s=t2 - t1,
        restore_s=t3 - t2,
        frozen_s=resumed - (frozen_at[0] if frozen_at else t0),
        images_bytes=copied.bytes,
        images_files=copied.files,
        dump_stats=dumped.stats,
        restore_stats=restored.stats,
        source_pid=tree.root_pid,
        dest_pid=new_tree.root_pid,
    )
    return new_tree, report


async def _commit(old: ProcessTree, new: ProcessTree) -> None:
    await old.kill()
    new.resume()
    log.info("committed: source tree %d killed, tree %d resumed", old.root_pid, new.root_pid)


async def _rollback(
    tree: ProcessTree,
    dest: Endpoint,
    cause: BaseException,
    restored: ProcessTree | None = None,
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
    try:
        shutil.rmtree(dest.images, ignore_errors=False)
    except FileNotFoundError:
        pass
    except OSError as exc:
        problems.append(f"could not remove {dest.images}: {exc.strerror}")
    if problems:
        raise RollbackFailed(
            "rollback incomplete: " + "; ".join(problems),
            workload_state="unknown, see above",
        ) from cause
    if isinstance(cause, HaulError):
        cause.workload_state = f"running on the source (root PID {tree.root_pid})"
    log.info("rolled back: tree %d running on the source", tree.root_pid)
