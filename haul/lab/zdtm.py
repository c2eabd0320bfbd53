"""CRIU's ZDTM test programs as workloads: how each is started, and when it is ready.

Each program (``test/zdtm/static/NAME`` in CRIU's source tree) sets up some
kernel state, writes its pidfile, waits for SIGTERM, then checks the state and
writes PASS or FAIL to its outfile (docs/environment.md). The arguments are
those CRIU's Makefile gives it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from haul.errors import WorkloadError
from haul.workload.proctree import ProcessTree

ZDTM_ARGS: dict[str, list[str]] = {
    "env00": ["--envname=ENV_00_TEST"],
    "maps00": ["--filename=maps00.test"],
    "pthread00": [],
    "sockets00": ["--filename=sockets00.test"],
    "file_locks00": ["--filename=file_locks00.test"],
}
#: more kernel state: timers, inotify, pipes, a zombie
ZDTM_MORE_ARGS: dict[str, list[str]] = {
    "timerfd": [],
    "posix_timers": [],
    "inotify00": ["--dirname=inotify00.test"],
    "pipe00": [],
    "zombie00": [],
}


async def wait_for_file(path: Path, tree: ProcessTree, timeout_s: float = 30.0) -> None:
    """ZDTM programs write their pidfile once their state is set up."""
    async with asyncio.timeout(timeout_s):
        while not path.exists():
            if not tree.alive:
                raise WorkloadError(f"the test program exited before writing {path}")
            await asyncio.sleep(0.01)
