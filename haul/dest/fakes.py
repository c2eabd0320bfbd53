"""Fakes for the incoming registry's tests: no CRIU, no runc, no mounts.

:class:`StandInCopy` stands for a restored copy: a stopped ``sleep`` in a PID namespace
of its own, made with an unprivileged user namespace. :class:`StandIns` makes the
registry's process-tree destinations (:class:`StandInDestination`): no page server, and
a restore that starts a stand-in copy (or waits, or fails, as the test says).
:class:`FakeArrivals` stands for
the agent's arrivals (haul/agent/arrivals.py): an arrival's home is a directory under
``home``; its destination is a
:class:`FakeContainerDestination`, a CriuDestination whose copy (if any) is a process
tree the test started, resumed with SIGCONT and discarded by killing it. Each records
what was asked of it. The agent never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haul.criu.options import PageServer, TlsFiles
from haul.criu.service import Criu
from haul.dest.criudest import RESTORED_MARK, CriuDestination
from haul.engine.figures import DestinationReady, RestoreFigures
from haul.engine.phases import Strategy
from haul.errors import ContainerError, WorkloadError
from haul.net.spec import WorkloadNet
from haul.procfs import state
from haul.workload.proctree import ProcessTree


class StandInCopy:
    """A stopped process tree that stands for a restored copy (:attr:`pid`, stopped);
    raises WorkloadError when this host allows no unprivileged PID namespace."""

    def __init__(self) -> None:
        self.launcher = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--pid", "--fork", "sleep", "300"],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + 5
        children: list[str] = []
        while not children and time.monotonic() < deadline:
            if self.launcher.poll() is not None:
                err = self.launcher.stderr.read().decode() if self.launcher.stderr else ""
                self.close()
                raise WorkloadError(f"no unprivileged PID namespace here: {err.strip()}")
            with contextlib.suppress(FileNotFoundError):
                path = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children")
                children = path.read_text().split()
            time.sleep(0.01)
        if not children:
            self.close()
            raise WorkloadError("the stand-in copy did not start")
        self.pid = int(children[0])
        os.kill(self.pid, signal.SIGSTOP)
        while state(self.pid) not in ("T", "t"):
            time.sleep(0.005)

    def close(self) -> None:
        """Kill it (whatever is left of it) and reap its launcher."""
        for pid in (getattr(self, "pid", None), self.launcher.pid):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.launcher.wait()
        if self.launcher.stderr:
            self.launcher.stderr.close()


class StandInDestination(CriuDestination):
    """A process tree's destination whose restore starts a :class:`StandInCopy`."""

    def __init__(self, makers: StandIns, criu: Criu, workdir: Path, **kwargs: Any) -> None:
        super().__init__(criu, workdir, **kwargs)
        self.makers = makers
        self.restores = 0
        self.resumes = 0
        #: set by the test: every page has arrived (wait_pages returns)
        self.pages = asyncio.Event()

    async def prepare(self, strategy: Strategy, needed_bytes: int = 0) -> DestinationReady:
        for d in (self.images, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        return DestinationReady(None)

    async def restore(self, lazy: bool) -> RestoreFigures:
        self.restores += 1
        if self.makers.hold_restore is not None:
            await self.makers.hold_restore.wait()
        copy = await asyncio.to_thread(StandInCopy)
        self.makers.copies.append(copy)
        self.tree = ProcessTree(copy.pid)
        (self.workdir / RESTORED_MARK).write_text(f"{copy.pid}\n")
        if self.makers.fail_restore is not None:
            raise WorkloadError(self.makers.fail_restore)
        return RestoreFigures(dest_pid=copy.pid, duration_s=0.01, pages_bytes=4096)

    async def resume(self) -> None:
        self.resumes += 1
        await super().resume()

    async def wait_pages(self) -> None:
        await self.pages.wait()


@dataclass
class StandIns:
    """Makes the registry's process-tree destinations (as CriuDestination is called);
    each restore waits for ``hold_restore`` when set, and raises WorkloadError with
    ``fail_restore`` (after its copy started) when set. :meth:`close` kills every copy."""

    made: list[StandInDestination] = field(default_factory=list)
    copies: list[StandInCopy] = field(default_factory=list)
    hold_restore: asyncio.Event | None = None
    fail_restore: str | None = None

    def __call__(self, criu: Criu, workdir: Path, **kwargs: Any) -> StandInDestination:
        dest = StandInDestination(self, criu, workdir, **kwargs)
        self.made.append(dest)
        return dest

    def close(self) -> None:
        for copy in self.copies:
            copy.close()


@dataclass
class FakeArrival:
    """An arriving container whose home is the directory ``home``."""

    home: Path
    move: dict[str, Any]
    net: WorkloadNet | None = None
    released: int = 0
    adopted: list[int] = field(default_factory=list)
    #: release raises ContainerError with this message (and removes nothing)
    fail_release: str | None = None

    @property
    def files(self) -> Path | None:
        """None when its move says its files are used in place (shared storage)."""
        if self.move.get("shared_layer") or self.move.get("shared_rootfs"):
            return None
        return self.home / "upper"

    def saved(self) -> dict[str, Any]:
        return dict(self.move)

    @property
    def image_bytes(self) -> int:
        return int(self.move.get("blob_bytes", 0))

    async def unpack(self) -> None:
        return None

    async def release(self) -> None:
        self.released += 1
        if self.fail_release is not None:
            raise ContainerError(self.fail_release)
        shutil.rmtree(self.home, ignore_errors=True)

    async def adopt(self, pid: int, holder: str) -> None:
        self.adopted.append(pid)


class FakeContainerDestination(CriuDestination):
    """A container's destination without runc: its copy is ``pid``'s tree."""

    def __init__(self, criu: Criu, workdir: Path, pid: int | None = None) -> None:
        super().__init__(criu, workdir)
        self.tree = ProcessTree(pid) if pid is not None else None
        self.resumed = 0
        self.discarded = 0

    async def resume(self) -> None:
        if self.tree is None:
            raise ContainerError("nothing was restored here to resume")
        self.resumed += 1
        self.tree.resume()

    async def discard(self) -> None:
        self.discarded += 1
        await super().discard()


@dataclass
class FakeArrivals:
    """Arrivals with homes under ``home``; ``again`` refuses a record that says ``bad``."""

    criu: Criu
    home: Path
    made: list[tuple[FakeContainerDestination, FakeArrival]] = field(default_factory=list)
    #: (workload, saved, pid) of every arrival rebuilt from a record
    rebuilt: list[tuple[str, dict[str, Any], int | None]] = field(default_factory=list)
    #: every arrival's release fails with this message
    fail_release: str | None = None
    #: the shared images directory each new arrival was told of (None: none)
    shared_images: list[Path | None] = field(default_factory=list)
    #: the TLS files the last arrival's page channels were given
    tls: TlsFiles | None = None

    async def arrive(
        self,
        migration_id: str,
        workload: str,
        move: Any,
        net: WorkloadNet | None,
        workdir: Path,
        listen: PageServer | None,
        lazy_source: PageServer | None,
        shared_images: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> tuple[FakeContainerDestination, FakeArrival]:
        self.shared_images.append(shared_images)
        self.tls = tls
        home = self.home / workload
        if home.exists():
            raise ContainerError(f"a container directory for {workload} exists")
        home.mkdir(parents=True)
        return self._made(FakeContainerDestination(self.criu, workdir), home, dict(move), net)

    def again(
        self,
        workload: str,
        saved: dict[str, Any],
        net: WorkloadNet | None,
        workdir: Path,
        pid: int | None,
    ) -> tuple[FakeContainerDestination, FakeArrival]:
        self.rebuilt.append((workload, saved, pid))
        if saved.get("bad"):
            raise ContainerError(f"container {workload}: its record is unreadable")
        dest = FakeContainerDestination(self.criu, workdir, pid)
        return self._made(dest, self.home / workload, saved, net)

    def _made(
        self,
        dest: FakeContainerDestination,
        home: Path,
        move: dict[str, Any],
        net: WorkloadNet | None,
    ) -> tuple[FakeContainerDestination, FakeArrival]:
        arrival = FakeArrival(home, move, net, fail_release=self.fail_release)
        self.made.append((dest, arrival))
        return dest, arrival
