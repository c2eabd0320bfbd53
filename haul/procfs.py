"""Reading /proc: namespaces and their members, process states, signalling trees.

A workload tree lives in its own PID namespace, so "every process of the tree"
is "every process whose PID namespace is the root's", which also covers
orphans that were re-parented to the namespace's init.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")


def _pids() -> Iterator[int]:
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            yield int(entry.name)


def ns_inode(pid: int, kind: str) -> int | None:
    """The inode of /proc/PID/ns/KIND, or None if the process is gone."""
    try:
        return os.stat(PROC / str(pid) / "ns" / kind).st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def netns_inode(name: str) -> int | None:
    """The inode of the named network namespace (/run/netns/NAME), if it exists."""
    try:
        return os.stat(Path("/run/netns") / name).st_ino
    except FileNotFoundError:
        return None


def pids_in_ns(kind: str, inode: int) -> list[int]:
    """Every PID (as seen here) whose KIND namespace has this inode."""
    return sorted(pid for pid in _pids() if ns_inode(pid, kind) == inode)


def tree_pids(root_pid: int) -> list[int]:
    """Every process in the PID namespace whose init is ``root_pid``, root first."""
    inode = ns_inode(root_pid, "pid")
    if inode is None:
        return []
    if inode == ns_inode(os.getpid(), "pid"):
        raise ValueError(f"PID {root_pid} shares haul's own PID namespace; not a workload tree")
    members = [p for p in pids_in_ns("pid", inode) if p != root_pid]
    return [root_pid, *members]


def naming(path: Path) -> list[int]:
    """Every process with a command-line argument that is ``path`` or a path under it
    (``--work-path PATH/work``), sorted."""
    top = str(path)
    found = []
    for pid in _pids():
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for arg in argv:
            text = arg.decode(errors="replace")
            if text == top or text.startswith(top + "/"):
                found.append(pid)
                break
    return sorted(found)


def state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat (R, S, T, t, Z, ...), None if gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command may hold spaces and parentheses; the state follows the last ')'.
    return raw[raw.rindex(")") + 2]


def describe(pid: int) -> str:
    """A short account of a process for error messages: state, where it waits, signals."""
    try:
        status = (PROC / str(pid) / "status").read_text()
        wchan = (PROC / str(pid) / "wchan").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return f"{pid} gone"
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    keep = ("Name", "State", "SigPnd", "ShdPnd", "SigBlk", "SigCgt", "TracerPid")
    info = " ".join(f"{k}={fields[k].strip()}" for k in keep if k in fields)
    return f"{pid} {info} wchan={wchan or '-'}"


def alive(pid: int) -> bool:
    s = state(pid)
    return s is not None and s not in ("Z", "X")


def signal_tree(root_pid: int, sig: signal.Signals) -> int:
    """Send ``sig`` to every process of the tree; return how many were signalled."""
    count = 0
    for pid in tree_pids(root_pid):
        try:
            os.kill(pid, sig)
            count += 1
        except ProcessLookupError:
            pass
    return count


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); return survivors."""
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def kill_netns_members(name: str, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every process in the named network namespace; return any survivors."""
    inode = netns_inode(name)
    if inode is None:
        return []
    return kill_ns_members("net", inode, timeout_s)


def kill_ns_members(kind: str, inode: int, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every process (but haul) whose KIND namespace has this inode; return any
    survivors."""
    pids = [p for p in pids_in_ns(kind, inode) if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return wait_gone(pids, timeout_s)
