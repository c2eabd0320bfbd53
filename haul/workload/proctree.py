"""Plain process trees as workloads: start one, find it, resume it, stop it.

A tree runs in its own PID, IPC and UTS namespaces (so CRIU restores it with
the same PIDs anywhere, and never collides with PIDs of the host), inside a
host's network namespace, sharing the host's mounts, with stdin from
/dev/null and stdout and stderr appended to a log file, so that CRIU can dump
every file it holds. Its PID 1 is :mod:`haul.workload.pidinit`.

A private mount namespace on the host's root filesystem makes CRIU try to dump
every host mount, so plain trees share the host's (docs/environment.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from haul.errors import WorkloadError
from haul.nsexec import HOST, HostNs
from haul.procfs import alive, describe, signal_tree, state, tree_pids

PIDINIT = Path(__file__).with_name("pidinit.py")
START_TIMEOUT_S = 5.0
#: how long a tree with its own network waits for its interface; then its init gives up
NET_WAIT_S = 10.0


class ProcessTree:
    """A running (or stopped) workload tree, known by its root PID on this host.

    ``launcher`` is the ``unshare`` process that started it, when this host
    started it; a restored tree has none (it is haul's child via CRIU's
    rst_sibling, or was re-parented to the machine's init).
    """

    def __init__(
        self,
        root_pid: int,
        *,
        launcher: asyncio.subprocess.Process | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.root_pid = root_pid
        self.launcher = launcher
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"ProcessTree(root_pid={self.root_pid})"

    @property
    def alive(self) -> bool:
        return alive(self.root_pid)

    def pids(self) -> list[int]:
        return tree_pids(self.root_pid)

    def resume(self) -> int:
        """SIGCONT every process of the tree (after CRIU left it stopped)."""
        return signal_tree(self.root_pid, signal.SIGCONT)

    async def wait_stopped(self, timeout_s: float = 2.0) -> None:
        """Wait until every process of the tree is stopped (zombies run nothing); raise if not.

        CRIU stops restored tasks with a SIGSTOP queued just before it lets them
        go, so a task may take a moment to reach the stopped state.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            running = [p for p in self.pids() if state(p) not in ("T", "t", "Z", None)]
            if not running:
                return
            if loop.time() > deadline:
                raise WorkloadError(
                    f"processes {running} of tree {self.root_pid} run when they must be stopped"
                )
            await asyncio.sleep(0.005)

    def resident_bytes(self) -> int:
        """Resident memory of the whole tree (VmRSS summed), for estimates."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def terminate(self) -> None:
        """SIGTERM the tree's init, which forwards it to every process of the tree."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.root_pid, signal.SIGTERM)

    async def kill(self, timeout_s: float = 10.0) -> None:
        """SIGKILL the tree's init (the kernel then kills the whole namespace) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.root_pid, signal.SIGKILL)
        await self.wait(timeout_s)

    async def wait(self, timeout_s: float | None = None) -> None:
        """Wait until the tree's init has exited, reaping whatever haul is parent of."""
        try:
            await self._wait(timeout_s)
        except TimeoutError:
            raise WorkloadError(
                f"workload tree {self.root_pid} still runs after {timeout_s} s: "
                + "; ".join(describe(p) for p in self.pids())
            ) from None

    async def _wait(self, timeout_s: float | None) -> None:
        async with asyncio.timeout(timeout_s):
            if self.launcher is not None:
                await self.launcher.wait()
                return
            while True:
                with contextlib.suppress(ChildProcessError):
                    pid, _ = os.waitpid(self.root_pid, os.WNOHANG)
                    if pid == self.root_pid:
                        return
                if not alive(self.root_pid):
                    return
                await asyncio.sleep(0.02)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


async def start_tree(
    argv: Sequence[str],
    *,
    log_path: Path,
    host: HostNs = HOST,
    cwd: Path = Path("/"),
    env: Mapping[str, str] | None = None,
    net: bool = False,
) -> ProcessTree:
    """Start ``argv`` as a workload tree on ``host`` and return once its init runs.

    ``log_path`` and ``cwd`` are paths as the host sees them. With ``net`` the
    tree gets a network namespace of its own and its init waits (up to
    NET_WAIT_S) for ``eth0`` to be up with an address before it runs ``argv``:
    the caller wires it (:func:`haul.net.veth.attach`) meanwhile.
    """
    if not argv:
        raise WorkloadError("no command to run")
    missing = host.missing()
    if missing is not None:
        raise WorkloadError(f"cannot start {argv[0]}: {missing} does not exist")
    namespaces = ["--pid", "--ipc", "--uts", *(["--net"] if net else [])]
    waits = ["--wait-net", f"eth0:{NET_WAIT_S:g}"] if net else []
    cmd = [
        *host.prefix(),
        "unshare",
        *namespaces,
        "--fork",
        "--",
        sys.executable,
        "-S",
        "-E",
        str(PIDINIT),
        "--log",
        str(log_path),
        "--cwd",
        str(cwd),
        *waits,
        "--",
        *argv,
    ]
    try:
        launcher = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd="/",
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise WorkloadError(f"cannot start {argv[0]}: {exc.strerror}") from exc
    try:
        root = await _find_init(launcher)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            launcher.kill()
        await launcher.wait()
        raise
    return ProcessTree(root, launcher=launcher, log_path=log_path)


async def _find_init(launcher: asyncio.subprocess.Process) -> int:
    """The PID of pidinit, once it (not yet the forked unshare copy) is running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        if launcher.returncode is not None:
            raise WorkloadError(
                f"workload launcher exited with status {launcher.returncode} before it started"
            )
        # unshare --fork: the child first is a copy of unshare, then execs pidinit
        for child in _children(launcher.pid):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if str(PIDINIT).encode() in cmdline:
                return child
        await asyncio.sleep(0.01)
    raise WorkloadError(f"workload init did not start within {START_TIMEOUT_S:.0f} s")
