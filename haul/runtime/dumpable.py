"""Whether a running container can be checkpointed by runc and CRIU here, read from /proc.

Used before haul takes over a container someone else started (``haul adopt runc:ID``).
What CRIU needs of a runc container on these machines (docs/environment.md):

- its stdin, stdout and stderr are /dev/null, pipes, or files of the container's own
  mounts: a descriptor of a host file cannot be dumped (CRIU finds no mount for it in
  the container: ``Can't lookup mount=... for fd=...``), nor a terminal or a socket;
- its network namespace is the host's, or one kept at a path (a bind mount) that its
  configuration names: runc dumps a namespace it created itself as empty;
- it is in a cgroup v1 freezer hierarchy, which runc's pause and CRIU's freeze use.

Each check returns what is wrong, as words that follow "cannot be checkpointed:".
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

NULL_DEVICE = os.makedev(1, 3)
#: character devices that are terminals: /dev/tty*, /dev/console, /dev/ptmx, pty slaves
_TTY_MAJORS = (4, 5, 136, 137, 138, 139, 140, 141, 142, 143)
STDIO_NAMES = ("stdin", "stdout", "stderr")
FREEZER_ROOT = Path("/sys/fs/cgroup/freezer")


def stdio_problem(
    fd: int, link: str | None, rdev: int | None, mnt_id: int | None, container_mounts: set[int]
) -> str | None:
    """What is wrong with descriptor ``fd`` (0-2) of a container's init, or None.

    ``link`` is the readlink of /proc/PID/fd/FD (None: closed), ``rdev`` its device
    (None unless a character device), ``mnt_id`` the mount it is on (fdinfo), and
    ``container_mounts`` the mount IDs of the container's mount namespace."""
    name = STDIO_NAMES[fd]
    if link is None or link.startswith("pipe:["):
        return None
    if rdev is not None:
        if rdev == NULL_DEVICE:
            return None
        if os.major(rdev) in _TTY_MAJORS:
            return f"its {name} is a terminal ({link})"
        return f"its {name} is the device {link}"
    if link.startswith("socket:["):
        return f"its {name} is a socket"
    if link.startswith("anon_inode:"):
        return f"its {name} is {link}"
    if mnt_id is not None and mnt_id in container_mounts:
        return None
    return (
        f"its {name} is {link}, a file of the host (CRIU dumps /dev/null, pipes and "
        "files inside the container only)"
    )


def _mnt_id(pid: int, fd: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def mount_ids(pid: int) -> set[int]:
    """The IDs of the mounts in ``pid``'s mount namespace."""
    try:
        text = Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return set()
    return {int(line.split()[0]) for line in text.splitlines() if line.strip()}


def stdio_problems(pid: int) -> list[str]:
    mounts = mount_ids(pid)
    problems = []
    for fd in range(3):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            link: str | None = os.readlink(path)
            st = os.stat(path)
        except FileNotFoundError:
            link, st = None, None
        except OSError as exc:
            problems.append(f"its {STDIO_NAMES[fd]} cannot be read ({exc.strerror})")
            continue
        rdev = st.st_rdev if st is not None and stat.S_ISCHR(st.st_mode) else None
        problem = stdio_problem(fd, link, rdev, _mnt_id(pid, fd), mounts)
        if problem:
            problems.append(problem)
    return problems


def netns_inode_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def configured_netns(config: dict[str, Any]) -> str | None:
    """The network namespace path a runtime configuration names, or None."""
    linux = config.get("linux")
    namespaces = linux.get("namespaces", []) if isinstance(linux, dict) else []
    for ns in namespaces:
        if isinstance(ns, dict) and ns.get("type") == "network":
            path = ns.get("path")
            return str(path) if path else None
    return None


def netns_problem(pid: int, config: dict[str, Any]) -> tuple[str | None, str | None]:
    """The container's network namespace path (None: the host's) and what is wrong."""
    inode = netns_inode_of(pid)
    if inode is None:
        return None, "its network namespace cannot be read"
    if inode == netns_inode_of(os.getpid()):
        return None, None
    path = configured_netns(config)
    if path is not None:
        try:
            if os.stat(path).st_ino == inode:
                return path, None
        except OSError:
            pass
    return None, (
        "its network namespace was made by runc, which checkpoints such a namespace "
        "empty (give it the host's, or one kept at a path its config.json names)"
    )


def freezer_cgroup(pid: int) -> str | None:
    """The cgroup v1 freezer cgroup of ``pid`` (e.g. ``/haul/host1/web``), or None."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return path
    return None


def freezer_problem(pid: int, freezer_root: Path = FREEZER_ROOT) -> str | None:
    path = freezer_cgroup(pid)
    if path is None:
        return "it is in no cgroup v1 freezer (runc pause and CRIU's freeze need one here)"
    if not (freezer_root / path.lstrip("/") / "freezer.state").is_file():
        return f"its freezer cgroup {path} has no freezer.state under {freezer_root}"
    return None
