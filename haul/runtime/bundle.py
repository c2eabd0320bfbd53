"""A container's bundle, made by haul: its config.json, root filesystem, network
namespace, cgroup and CRIU configuration file.

Each container has a directory of its own, ``STATE/containers/NAME`` (:class:`ContainerDirs`):

- ``bundle/config.json``: the image's (or the given bundle's) runtime configuration,
  edited by :func:`runtime_config`: no terminal; the command, when one is given; the
  root filesystem by absolute path; ``linux.cgroupsPath`` of its own (lab hosts share
  one machine's cgroups: two hosts must never name the same one); the network
  namespace by path when the container has its own address (runc dumps a namespace
  it created itself as empty, so haul makes it and names it), none otherwise (the
  container shares the host's network); and the ``org.criu.config`` annotation naming
  ``criu.conf``, the CRIU options runc's checkpoint and restore read (set per
  migration; created empty, or with the network lock and TCP options when the
  container has its own namespace); the limits ``haul run`` was given (memory, CPU,
  PIDs) in ``linux.resources``, which a migration carries with the configuration, so
  runc sets them on the container's cgroup wherever it is restored.
- ``bundle/rootfs``: for an image, an overlay mount whose lower layer is the image's
  unpacked rootfs in the host's image cache (read-only, shared by every container of
  that image) and whose upper layer is ``upper/`` (with ``work/``): everything the
  container writes lands in ``upper/`` alone. A given bundle or rootfs is used as it is.
- ``netns``: a bind mount of the container's network namespace (nsfs), with ``lo`` up.

The container's stdin, stdout and stderr are /dev/null (haul/runtime/runc.py): CRIU
cannot dump a descriptor of a host file (docs/environment.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haul.errors import ContainerError, UsageError

CRIU_CONFIG_ANNOTATION = "org.criu.config"
#: what a container's CRIU configuration holds when it has a network namespace of its
#: own: lock it with nftables (there are no iptables tools here) and dump its TCP
#: connections (docs/environment.md)
OWN_NETNS_CRIU_OPTIONS = ("network-lock nftables", "tcp-established")
#: characters overlayfs takes as separators in its mount options
_OVERLAY_UNSAFE = (",", ":", "\n", "\\")
CGROUP_FS_TYPES = ("cgroup", "cgroup2")


@dataclass(frozen=True, slots=True)
class ContainerDirs:
    """Where the pieces of one container live."""

    directory: Path

    @property
    def bundle(self) -> Path:
        return self.directory / "bundle"

    @property
    def config(self) -> Path:
        return self.bundle / "config.json"

    @property
    def rootfs(self) -> Path:
        """The overlay's mount point (for an image)."""
        return self.bundle / "rootfs"

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def work(self) -> Path:
        return self.directory / "work"

    @property
    def criu_config(self) -> Path:
        return self.directory / "criu.conf"

    @property
    def netns(self) -> Path:
        return self.directory / "netns"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"


#: the CFS period a CPU limit is given in (the kernel's default), microseconds
CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    """What a container may use, as its cgroup enforces it (None: no limit set here;
    whatever its configuration says stays)."""

    memory_bytes: int | None = None
    #: CPUs' worth of time per period (0.5: half of one CPU)
    cpus: float | None = None
    pids: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.memory_bytes, self.cpus, self.pids))


def set_limits(linux: dict[str, Any], limits: Limits) -> None:
    """Write ``limits`` into a configuration's ``linux.resources`` (memory.limit,
    cpu.quota and cpu.period, pids.limit); the rest of it stays."""
    resources = linux.setdefault("resources", {})
    if limits.memory_bytes is not None:
        resources.setdefault("memory", {})["limit"] = limits.memory_bytes
    if limits.cpus is not None:
        cpu = resources.setdefault("cpu", {})
        cpu["quota"] = round(limits.cpus * CPU_PERIOD_US)
        cpu["period"] = CPU_PERIOD_US
    if limits.pids is not None:
        resources.setdefault("pids", {})["limit"] = limits.pids


def cgroups_path(parent: str, name: str) -> str:
    """The container's ``linux.cgroupsPath``: ``PARENT/NAME`` (PARENT is per host)."""
    return f"{parent.rstrip('/')}/{name}"


def inside_roots(path: Path, roots: Sequence[Path], what: str) -> Path:
    """``path`` with every symbolic link resolved, if it lies in one of ``roots`` (as
    this host sees them); a UsageError line otherwise."""
    if not path.is_absolute():
        raise UsageError(f"{what} {path} is not an absolute path")
    real = Path(os.path.realpath(path))
    for root in roots:
        if real.is_relative_to(Path(os.path.realpath(root))):
            return real
    allowed = ", ".join(str(r) for r in roots) or "none configured"
    raise UsageError(
        f"{what} {path} is outside the directories this agent allows "
        f"(agent.runc.allowed_roots: {allowed})"
    )


def read_config(path: Path, what: str) -> dict[str, Any]:
    """A runtime configuration (config.json) as a dict; ContainerError if unreadable."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ContainerError(f"{what}: {path} does not exist") from None
    except OSError as exc:
        raise ContainerError(f"{what}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ContainerError(f"{what}: {path} is not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("process"), dict):
        raise ContainerError(f"{what}: {path} is not a runtime configuration (no process)")
    return data


def root_path(config: dict[str, Any], bundle: Path) -> Path:
    """The root filesystem a configuration names, relative paths taken from ``bundle``."""
    root = config.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str):
        raise ContainerError(f"{bundle}/config.json names no root filesystem (root.path)")
    path = Path(root["path"])
    return path if path.is_absolute() else bundle / path


def runtime_config(
    source: dict[str, Any],
    *,
    rootfs: Path,
    cgroups_path: str,
    criu_config: Path,
    netns: Path | None,
    args: Sequence[str] | None = None,
    readonly: bool | None = None,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """``source`` edited for haul (see the module's docstring), with ``limits`` in its
    ``linux.resources``; ``source`` is not changed."""
    config = copy.deepcopy(source)
    process = config.setdefault("process", {})
    process["terminal"] = False
    process.pop("consoleSize", None)
    if args:
        process["args"] = list(args)
    if not process.get("args"):
        raise UsageError("the container has no command: its configuration gives none; give one")
    root = config.setdefault("root", {})
    root["path"] = str(rootfs)
    if readonly is not None:
        root["readonly"] = readonly
    linux = config.setdefault("linux", {})
    linux["cgroupsPath"] = cgroups_path
    if limits:
        set_limits(linux, limits)
    namespaces = [ns for ns in linux.get("namespaces", []) if ns.get("type") != "network"]
    if netns is not None:
        namespaces.append({"type": "network", "path": str(netns)})
    linux["namespaces"] = namespaces
    annotations = config.get("annotations") or {}
    annotations[CRIU_CONFIG_ANNOTATION] = str(criu_config)
    config["annotations"] = annotations
    return config


def write_config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1) + "\n")


def write_criu_config(path: Path, *, own_netns: bool) -> None:
    """The container's CRIU configuration file, as a start leaves it."""
    options = OWN_NETNS_CRIU_OPTIONS if own_netns else ()
    path.write_text("".join(f"{line}\n" for line in options))


# ---------------------------------------------------------------- mounts


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def is_mount_point(path: Path) -> bool:
    return str(path) in mount_points()


async def _run(*argv: str, what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        raise ContainerError(f"{what}: {lines[-1] if lines else f'exit {proc.returncode}'}")


def _overlay_safe(path: Path) -> str:
    text = str(path)
    if any(c in text for c in _OVERLAY_UNSAFE):
        raise ContainerError(f"{path} holds a character overlayfs cannot take (, : \\)")
    return text


async def mount_overlay(
    *, lower: Path, upper: Path, work: Path, target: Path, shared: bool = False
) -> None:
    """Mount an overlay of ``lower`` (read-only) and ``upper`` (the writes) at ``target``.

    ``shared``: ``upper`` is on storage another host mounts too (a container's layer
    moved in place, haul/runtime/sharedlayer.py). overlayfs marks an upper directory in
    use and, with its ``index`` feature on, refuses a second mount of it; ``index=off``
    makes that a warning. Two mounts exist only between a migration's freeze and the
    end of its commit or rollback, while neither container runs (the source frozen,
    the copy stopped), each with a work directory of its own (docs/containers.md)."""
    options = (
        f"lowerdir={_overlay_safe(lower)},upperdir={_overlay_safe(upper)},"
        f"workdir={_overlay_safe(work)}"
    )
    if shared:
        options += ",index=off"
    for path in (upper, work, target):
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
    await _run(
        "mount", "-t", "overlay", "overlay", "-o", options, str(target), what=f"mount {target}"
    )


async def unmount(target: Path) -> None:
    """Unmount ``target`` if something is mounted there (every layer of mounts)."""
    while is_mount_point(target):
        await _run("umount", str(target), what=f"umount {target}")


# ---------------------------------------------------------------- network namespace


async def create_netns(path: Path) -> None:
    """A new network namespace kept by a bind mount at ``path``, with ``lo`` up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=False)
    try:
        await _run("unshare", f"--net={path}", "true", what=f"network namespace {path}")
        await _run(
            "nsenter", f"--net={path}", "ip", "link", "set", "lo", "up", what=f"lo in {path}"
        )
    except BaseException:
        await asyncio.shield(remove_netns(path))
        raise


async def remove_netns(path: Path) -> None:
    """Unmount and remove a namespace file :func:`create_netns` made (the namespace
    goes when nothing else holds it)."""
    await unmount(path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def netns_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


# ---------------------------------------------------------------- cgroups


def cgroup_mounts() -> list[Path]:
    """Where this host's cgroup hierarchies are mounted (v1 controllers and v2)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in CGROUP_FS_TYPES and fields[3] == "/":
                found.append(Path(fields[4]))
    return found


def cgroup_dirs(path: str) -> list[Path]:
    """The directories of cgroup ``path`` that exist, in every hierarchy."""
    relative = path.strip("/")
    return [m / relative for m in cgroup_mounts() if relative and (m / relative).is_dir()]


def remove_cgroups(path: str) -> list[str]:
    """Remove cgroup ``path`` in every hierarchy if runc left it, then its parents that
    are empty now, short of the top level (other hosts' containers may share it).
    Returns what could not be removed."""
    parts = path.strip("/").split("/")
    problems = []
    for depth in range(len(parts), 1, -1):
        for directory in cgroup_dirs("/".join(parts[:depth])):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if depth == len(parts):
                    problems.append(f"cgroup {directory}: {exc.strerror}")
    return problems
