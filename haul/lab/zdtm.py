"""CRIU's ZDTM test programs as workloads: how each is started, and when it is ready.

Each program (``test/zdtm/static/NAME`` in CRIU's source tree) sets up some
kernel state, writes its pidfile, waits for SIGTERM, then checks the state and
writes PASS or FAIL to its outfile (docs/environment.md). The arguments are
those CRIU's Makefile gives it.

In a runc container (:func:`container_argv`, :func:`container_mounts`), a program runs
from the host's build, bound read-only at :data:`CONTAINER_PROGRAMS`, with the host's
libraries bound read-only too (the programs are linked dynamically), in the container's
``/data``. Its init is a shell (:data:`CONTAINER_INIT`), not the program: a ZDTM program
daemonizes, and a container ends with its init (docs/containers.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from haul.errors import WorkloadError
from haul.workload.proctree import ProcessTree

#: where a container sees the programs, and where it runs them (its pidfile, outfile, files)
CONTAINER_PROGRAMS = "/zdtm"
CONTAINER_RUN_DIR = "/data"
#: the host's libraries the programs link to, bound read-only at the same paths
LIBRARY_DIRS = ("/lib", "/lib64")
#: the container's init (``sh -c CONTAINER_INIT zdtm PIDFILE PROGRAM ARGS...``): runs the
#: program, which returns once its daemon has set up its state and written PIDFILE; then
#: forwards SIGTERM to the daemon (reparented to this init) and lives until the daemon has
#: ended, so that the daemon's verdict is written before the container ends with its init
CONTAINER_INIT = f"""
pidfile=$1; shift
cd {CONTAINER_RUN_DIR} || exit 1
"$@" || exit 1
pid=$(cat "$pidfile") && [ -n "$pid" ] || exit 1
trap 'kill -TERM "$pid"' TERM
while [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    sleep 0.1
done
"""

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
#: state that lives in the workload's files as well: named pipes (open, unlinked, held
#: by a pair of processes), bound unix sockets' paths, symbolic links, working
#: directories; each keeps its files in its run directory, which the file rounds carry
ZDTM_FILES_ARGS: dict[str, list[str]] = {
    "fifo": ["--filename=fifo.test"],
    "fifo_ro": ["--filename=fifo_ro.test"],
    "fifo_wronly": ["--filename=fifo_wronly.test"],
    "fifo-rowo-pair": ["--name_master=fifo-rowo-pair.master", "--name_slave=fifo-rowo-pair.slave"],
    "fifo-ghost": ["--filename=fifo-ghost.test"],
    "unlink_fifo": ["--filename=unlink_fifo.test"],
    "unlink_fifo_wronly": ["--filename=unlink_fifo_wronly.test"],
    "sockets_dgram": ["--filename=sockets_dgram.test"],
    "sk-unix-rel": ["--filename=sk-unix-rel.test"],
    "sk-unix-listen01": ["--filename=sk-unix-listen01.test"],
    "deleted_unix_sock": ["--filename=deleted_unix_sock.test"],
    "symlink": ["--dirname=symlink.test"],
    "symlink01": ["--dirname=symlink01.test"],
    "cwd00": ["--dirname=cwd00.test"],
    "cwd01": ["--dirname=cwd01.test"],
}
#: every program the integration tests move, with its arguments
ZDTM_PROGRAMS: dict[str, list[str]] = ZDTM_ARGS | ZDTM_MORE_ARGS | ZDTM_FILES_ARGS


async def wait_for_file(path: Path, tree: ProcessTree, timeout_s: float = 30.0) -> None:
    """ZDTM programs write their pidfile once their state is set up."""
    async with asyncio.timeout(timeout_s):
        while not path.exists():
            if not tree.alive:
                raise WorkloadError(f"the test program exited before writing {path}")
            await asyncio.sleep(0.01)


def container_argv(name: str) -> list[str]:
    """The command of a container that runs ZDTM program ``name`` (:data:`CONTAINER_INIT`)."""
    run = CONTAINER_RUN_DIR
    return [
        "/bin/sh",
        "-c",
        CONTAINER_INIT,
        "zdtm",
        f"{run}/{name}.pid",
        f"{CONTAINER_PROGRAMS}/{name}",
        f"--pidfile={run}/{name}.pid",
        f"--outfile={run}/{name}.out",
        *ZDTM_PROGRAMS[name],
    ]


def container_mounts(programs: Path) -> list[str]:
    """``haul run`` options that bind ``programs`` (a directory of built ZDTM programs the
    agent may read) and the host's libraries into the container, read-only."""
    binds = [f"{programs}:{CONTAINER_PROGRAMS}:ro", *(f"{d}:{d}:ro" for d in LIBRARY_DIRS)]
    return [arg for bind in binds for arg in ("--mount", bind)]
