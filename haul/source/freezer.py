"""Keep a frozen source frozen even if CRIU goes away: a freezer cgroup per migration.

CRIU holds the dumped tree stopped with ptrace until it is told to finish. If
CRIU dies (or the agent that drives it dies and CRIU's socket closes), ptrace
ends and the tree runs again, by itself. Before the commit that is a rollback;
after the commit the source must never run again: its copy on the destination
is the workload now. So when the final dump reaches post-dump, haul also puts
every task of the tree into a freezer cgroup of the migration's own and freezes
it. Whatever happens to CRIU, the tree then stays frozen until haul thaws it:
after a rollback (the tree resumes), or after it was killed (a frozen task dies
only once thawed, without running again).

cgroup v1's freezer hierarchy is used where it is mounted, else cgroup v2's
``cgroup.freeze``. Where neither can be used, :meth:`Hold.freeze` raises and
the caller decides (haul reports it and goes on without this guard).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from pathlib import Path

from haul.errors import WorkloadError

log = logging.getLogger(__name__)

V1_ROOT = Path("/sys/fs/cgroup/freezer")
V2_ROOT = Path("/sys/fs/cgroup")
GROUP = "haul-hold"
FREEZE_TIMEOUT_S = 5.0


def _v1() -> bool:
    return (V1_ROOT / "cgroup.procs").exists()


def _root() -> Path:
    return V1_ROOT if _v1() else V2_ROOT


class Hold:
    """The freezer cgroup ``haul-hold/NAME`` (NAME: a migration id)."""

    def __init__(self, name: str) -> None:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad hold name {name!r}")
        self.name = name
        self.root = _root()
        self.path = self.root / GROUP / name
        self.v1 = _v1()
        #: where each task was before the hold (its freezer cgroup, relative to the root)
        self._origin: dict[int, str] = {}

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    def _write(self, name: str, value: str, path: Path | None = None) -> None:
        try:
            ((path or self.path) / name).write_text(value)
        except OSError as exc:
            raise WorkloadError(
                f"cannot write {value!r} to {(path or self.path) / name}: {exc.strerror}"
            ) from exc

    def _frozen(self) -> bool:
        if self.v1:
            return (self.path / "freezer.state").read_text().strip() == "FROZEN"
        return "frozen 1" in (self.path / "cgroup.events").read_text().splitlines()

    async def freeze(self, pids: list[int]) -> None:
        """Move ``pids`` into the hold and freeze it; return once it is frozen."""
        if not self.v1 and not (V2_ROOT / "cgroup.controllers").exists():
            raise WorkloadError(
                "no cgroup freezer on this host (neither cgroup v1's "
                "freezer nor cgroup v2 is mounted)"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkloadError(f"cannot create {self.path}: {exc.strerror}") from exc
        for pid in pids:
            origin = _cgroup_of(pid, v1=self.v1)
            if origin is None:
                continue  # gone already
            self._origin[pid] = origin
            self._write("cgroup.procs", str(pid))
        if self.v1:
            self._write("freezer.state", "FROZEN")
        else:
            self._write("cgroup.freeze", "1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FREEZE_TIMEOUT_S
        while not self._frozen():
            if loop.time() > deadline:
                raise WorkloadError(f"{self.path} did not freeze within {FREEZE_TIMEOUT_S:g} s")
            await asyncio.sleep(0.005)

    def kill_and_thaw(self, pids: list[int]) -> None:
        """SIGKILL every task of a held tree, then thaw: each dies on its way out of the
        freezer, without running again (killing only the init would let the others
        run until the kernel kills them after it)."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.thaw()

    def thaw(self) -> None:
        """Thaw, move the tasks left back where they were (the root when this object did
        not put them here, e.g. after an agent restart) and remove the hold; harmless
        when there is none."""
        if not self.exists:
            return
        if self.v1:
            self._write("freezer.state", "THAWED")
        else:
            self._write("cgroup.freeze", "0")
        for pid in (self.path / "cgroup.procs").read_text().split():
            origin = self.root / self._origin.get(int(pid), "/").lstrip("/")
            with contextlib.suppress(WorkloadError):
                self._write("cgroup.procs", pid, path=origin)
        # Killed tasks leave the cgroup only once they have died: allow them a moment.
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    log.warning("could not remove %s: %s", self.path, exc.strerror)
                    return
            time.sleep(0.01)
        log.warning("could not remove %s: tasks are still in it", self.path)


def holds_of(pids: list[int]) -> set[str]:
    """The names of the holds these processes are frozen in."""
    names: set[str] = set()
    for pid in pids:
        path = _cgroup_of(pid, v1=_v1())
        if path is not None and path.startswith(f"/{GROUP}/"):
            names.add(path.split("/")[2])
    return names


def _cgroup_of(pid: int, *, v1: bool) -> str | None:
    """The freezer cgroup (v1) or the cgroup (v2) of ``pid``, or None when it is gone."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (v1 and "freezer" in controllers.split(",")) or (not v1 and controllers == ""):
            return path
    return "/"
