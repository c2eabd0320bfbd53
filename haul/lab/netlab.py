"""Create, inspect and remove a lab: hosts as network namespaces on one bridge.

Layout for prefix P and N hosts::

    P-sw       switch namespace: bridge br0, one veth end per member
    P-host1    hbr0 10.77.0.1/24 ⊃ eth0  ─┐
    ...                                   ├─ veths to br0 in P-sw
    P-hostN    hbr0 10.77.0.N/24 ⊃ eth0   │
    P-client   eth0 10.77.0.250/24       ─┘

Each host's uplink ``eth0`` is a port of the host's own bridge ``hbr0``, which
holds the host's address; workloads given an address of their own are
attached to ``hbr0`` too, so they sit on the lab's segment (haul/net/spec.py).

Everything is made through pyroute2. Each namespace is written to the ledger
before it is created; ``down`` kills every process inside the lab's
namespaces, removes them, restores recorded sysctls, and deletes the ledger.
Unless told not to, ``up`` also starts a ``haul agent`` in each host
(:mod:`haul.lab.agents`), which ``down`` stops first; then it deletes the runc
containers those agents ran (:mod:`haul.lab.hostrunc`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import AsyncIPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from haul.criu.info import PIPE_MAX_SIZE_NEEDED
from haul.errors import LabError, UsageError
from haul.lab.agents import start_agents, stop_agents
from haul.lab.hostrunc import remove_containers
from haul.lab.ledger import Ledger, known_prefixes
from haul.lab.spec import BRIDGE, HOST_BRIDGE, HOST_IFNAME, HostSpec, LabSpec
from haul.procfs import kill_netns_members, kill_ns_members, netns_inode, pids_in_ns
from haul.source.freezer import Hold, holds_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MemberStatus:
    name: str
    netns: str
    address: str
    present: bool
    processes: int


@dataclass(frozen=True, slots=True)
class LabStatus:
    prefix: str
    hosts: int
    members: tuple[MemberStatus, ...]
    switch_present: bool

    @property
    def complete(self) -> bool:
        return self.switch_present and all(m.present for m in self.members)


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _create_netns(ledger: Ledger, name: str) -> None:
    if _netns_exists(name):
        raise LabError(f"network namespace {name} already exists; is a lab with this prefix up?")
    ledger.record_netns(name)
    netns.create(name)


async def _up_link(ipr: AsyncIPRoute, ifname: str) -> int:
    index: int = (await ipr.link_lookup(ifname=ifname))[0]
    await ipr.link("set", index=index, state="up")
    return index


async def _wire_member(spec: LabSpec, member: HostSpec, bridge_index: int) -> None:
    async with AsyncIPRoute(netns=spec.switch_netns) as sw:
        await sw.link(
            "add",
            ifname=member.switch_port,
            kind="veth",
            peer={"ifname": HOST_IFNAME, "net_ns_fd": member.netns},
        )
        port = (await sw.link_lookup(ifname=member.switch_port))[0]
        await sw.link("set", index=port, master=bridge_index, state="up")
    async with AsyncIPRoute(netns=member.netns) as ipr:
        await _up_link(ipr, "lo")
        index = (await ipr.link_lookup(ifname=HOST_IFNAME))[0]
        if member.name != spec.client.name:
            # The bridge gets its uplink's MAC, set explicitly: a bridge left to choose
            # takes its ports' lowest MAC and changes it as workload veths come and go,
            # and its neighbours' ARP caches then point at a MAC no longer here.
            (uplink,) = await ipr.link("get", index=index)
            await ipr.link(
                "add", ifname=HOST_BRIDGE, kind="bridge", address=uplink.get("IFLA_ADDRESS")
            )
            bridge = (await ipr.link_lookup(ifname=HOST_BRIDGE))[0]
            await ipr.link("set", index=index, master=bridge, state="up")
            index = bridge
        await ipr.addr(
            "add",
            index=index,
            address=str(member.address.ip),
            prefixlen=member.address.network.prefixlen,
        )
        await ipr.link("set", index=index, state="up")


async def lab_up(
    spec: LabSpec, *, agents: bool = True, inventory: Path | None = None, tls: bool = False
) -> LabStatus:
    """Create the lab; on any failure, remove what was made and raise LabError.

    With ``agents``, a ``haul agent`` runs in every host (see haul.lab.agents)
    and ``inventory``, when given, is written to name them; with ``tls`` too,
    the lab has a CA and the agents do mutual TLS (pages included).
    """
    if inventory is not None and not agents:
        raise UsageError("a lab without agents has no inventory to write")
    if tls and not agents:
        raise UsageError("TLS is for the lab's agents; a lab without agents has none")
    if Ledger.load(spec.prefix) is not None:
        raise LabError(
            f"lab {spec.prefix!r} is already up (ledger {Ledger.path_for(spec.prefix)}); "
            f"run 'haul lab down --prefix {spec.prefix}' first"
        )
    if spec.root_dir.exists():
        raise LabError(
            f"{spec.root_dir} exists but no lab {spec.prefix!r} is recorded; "
            "remove it or choose another prefix"
        )
    ledger = Ledger(prefix=spec.prefix, hosts=spec.hosts)
    ledger.save()
    try:
        _create_netns(ledger, spec.switch_netns)
        async with AsyncIPRoute(netns=spec.switch_netns) as sw:
            await _up_link(sw, "lo")
            await sw.link("add", ifname=BRIDGE, kind="bridge")
            bridge_index = await _up_link(sw, BRIDGE)
        for member in spec.members():
            _create_netns(ledger, member.netns)
            await _wire_member(spec, member, bridge_index)
        ledger.record_dir(spec.root_dir)
        spec.data_path.mkdir(parents=True)
        for member in spec.members():
            member.data_backing.mkdir(parents=True)
        await _make_mount_namespaces(spec, ledger)
        _raise_pipe_size(ledger)
        if agents:
            await start_agents(spec, ledger, inventory=inventory, tls=tls)
    except (NetlinkError, OSError, LabError) as exc:
        lab_down(spec.prefix)
        if isinstance(exc, LabError):
            raise
        raise LabError(f"lab {spec.prefix!r} could not be created: {exc}") from exc
    log.info("lab %s up with %d hosts", spec.prefix, spec.hosts)
    return lab_status(spec.prefix)


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {stderr.decode(errors='replace').strip()}")


async def _make_mount_namespaces(spec: LabSpec, ledger: Ledger) -> None:
    """Give each member a mount namespace with its own data directory at the data path."""
    ledger.record_dir(spec.mntns_dir)
    spec.mntns_dir.mkdir(parents=True)
    # nsfs can be bind-mounted only onto a mount that does not propagate.
    ledger.record_mount(spec.mntns_dir)
    await _run("mount", "--bind", str(spec.mntns_dir), str(spec.mntns_dir))
    await _run("mount", "--make-private", str(spec.mntns_dir))
    for member in spec.members():
        member.mntns.touch()
        ledger.record_mount(member.mntns)
        await _run(
            "unshare",
            f"--mount={member.mntns}",
            "--propagation",
            "private",
            "--",
            "mount",
            "--bind",
            str(member.data_backing),
            str(spec.data_path),
        )


def _umount(path: str) -> str | None:
    """Unmount ``path`` if it is a mount point; return a problem, or None."""
    if not _mounted(path):
        return None
    done = subprocess.run(["umount", path], capture_output=True, text=True)
    if done.returncode != 0:
        return f"umount {path}: {done.stderr.strip()}"
    return None


def _mounts_under(directory: str) -> list[str]:
    """Mount points strictly inside ``directory``, deepest first."""
    prefix = directory.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _mounted(path: str) -> bool:
    """Whether ``path`` is a mount point here (a directory, or a file holding a namespace)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _ns_file_inode(path: str) -> int | None:
    """The namespace inode of a mounted namespace file, else None."""
    if not Path(path).is_file() or not _mounted(path):
        return None
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _kill_all(problems: list[str], where: str, kill: Callable[[], list[int]]) -> None:
    survivors = kill()
    if survivors:
        for hold in holds_of(survivors):
            Hold(hold).thaw()
        survivors = kill()
    if survivors:
        problems.append(f"{where}: processes {survivors} survived SIGKILL")


def lab_down(prefix: str) -> list[str]:
    """Remove everything the ledger of ``prefix`` lists; return what was removed.

    Safe to call twice, after a crash, or for a lab that is not up.
    """
    ledger = Ledger.load(prefix)
    if ledger is None:
        return []
    removed: list[str] = []
    problems: list[str] = stop_agents(ledger)
    # runc containers with a network namespace of their own are in none of the lab's
    # namespaces: runc deletes them (and their cgroups go) while the hosts still exist
    problems += remove_containers(LabSpec(prefix=ledger.prefix, hosts=ledger.hosts))
    # Workloads with a network namespace of their own are found by their host's mount
    # namespace; those frozen in a migration's hold die only once it is thawed.
    for mount in ledger.mounts:
        inode = _ns_file_inode(mount)
        if inode is not None:
            _kill_all(problems, mount, functools.partial(kill_ns_members, "mnt", inode))
    for name in reversed(ledger.netns):
        _kill_all(problems, name, functools.partial(kill_netns_members, name))
    for mount in reversed(ledger.mounts):
        problem = _umount(mount)
        if problem is None:
            removed.append(mount)
        else:
            problems.append(problem)
    for name in reversed(ledger.netns):
        if not _netns_exists(name):
            continue
        try:
            netns.remove(name)
            removed.append(name)
        except OSError as exc:
            problems.append(f"{name}: {exc}")
    for d in ledger.dirs:
        # Whatever was mounted inside the lab's directories (a test's tmpfs) goes too.
        for mount in _mounts_under(d):
            problem = _umount(mount)
            if problem is not None:
                problems.append(problem)
        try:
            shutil.rmtree(d)
            removed.append(d)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"{d}: {exc.strerror}")
    # A machine-wide setting goes back only when no other lab still relies on it; until
    # then the value to put back is handed to a lab still up, so the last one down
    # restores it (a lab raised it first, others found it raised and recorded nothing).
    others_up = [p for p in known_prefixes() if p != prefix]
    heir = next((h for h in map(Ledger.load, others_up) if h is not None), None)
    for key, value in ledger.sysctls.items():
        if heir is not None:
            heir.sysctls.setdefault(key, value)
            continue
        try:
            Path("/proc/sys", key.replace(".", "/")).write_text(value)
        except OSError as exc:
            problems.append(f"sysctl {key}: {exc}")
    if heir is not None and ledger.sysctls:
        heir.save()
    if problems:
        raise LabError(f"lab {prefix!r} only partly removed: " + "; ".join(problems))
    ledger.delete()
    log.info("lab %s down: removed %s", prefix, ", ".join(removed) or "nothing")
    return removed


def lab_status(prefix: str) -> LabStatus:
    ledger = Ledger.load(prefix)
    if ledger is None:
        raise LabError(f"lab {prefix!r} is not up (no ledger at {Ledger.path_for(prefix)})")
    spec = LabSpec(prefix=ledger.prefix, hosts=ledger.hosts)
    members = []
    for m in spec.members():
        inode = netns_inode(m.netns)
        procs = 0
        if inode is not None:
            procs = len([p for p in pids_in_ns("net", inode) if p != os.getpid()])
        members.append(
            MemberStatus(
                name=m.name,
                netns=m.netns,
                address=str(m.address),
                present=inode is not None,
                processes=procs,
            )
        )
    return LabStatus(
        prefix=spec.prefix,
        hosts=spec.hosts,
        members=tuple(members),
        switch_present=_netns_exists(spec.switch_netns),
    )


def all_labs() -> list[str]:
    return known_prefixes()


def _raise_pipe_size(ledger: Ledger) -> None:
    """Post-copy needs fs.pipe-max-size raised here (no CAP_SYS_RESOURCE, see
    docs/environment.md); the old value goes to the ledger, for ``down``."""
    path = Path("/proc/sys/fs/pipe-max-size")
    current = path.read_text().strip()
    if int(current) < PIPE_MAX_SIZE_NEEDED:
        ledger.sysctls.setdefault("fs.pipe-max-size", current)
        ledger.save()
        path.write_text(str(PIPE_MAX_SIZE_NEEDED))


def set_sysctl(prefix: str, key: str, value: str) -> None:
    """Set a machine-wide sysctl for the lab's lifetime; ``down`` puts it back."""
    ledger = Ledger.load(prefix)
    if ledger is None:
        raise LabError(f"lab {prefix!r} is not up")
    path = Path("/proc/sys", key.replace(".", "/"))
    before = path.read_text().strip()
    if key not in ledger.sysctls:
        ledger.sysctls[key] = before
        ledger.save()
    path.write_text(value)
