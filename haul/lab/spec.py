"""The shape of a lab: names and addresses, derived from a prefix and a host count.

Every name a lab creates starts with its prefix, so labs with different prefixes
never collide and a leftover is attributable. Interfaces live inside the lab's
namespaces (the bridge in its own switch namespace), so nothing is added to the
machine's own network namespace and the test subnet is reachable only from
inside the lab.

Each member also has a mount namespace in which its own data directory
(``<root>/<host>/data``) is mounted at the lab's common data path
(``<root>/data``): a workload's files at that path are the host's own, as on
separate machines, and moving a workload moves its files.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from haul.errors import UsageError
from haul.nsexec import HostNs

DEFAULT_PREFIX = "haul"
MAX_HOSTS = 50
SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
CLIENT_HOST_INDEX = 250
BRIDGE = "br0"
HOST_IFNAME = "eth0"
#: in every host (not the client): holds the host's uplink and address, and the host
#: ends of its workloads' veths (haul/net/spec.py)
HOST_BRIDGE = "hbr0"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True, slots=True)
class HostSpec:
    name: str  # "host1", "client"
    netns: str  # "<prefix>-host1"
    address: ipaddress.IPv4Interface
    switch_port: str  # the veth end on the bridge, inside the switch namespace
    workdir: Path  # a directory only this host uses (images, logs), as haul sees it
    mntns: Path  # the file that holds this host's mount namespace

    @property
    def ns(self) -> HostNs:
        return HostNs(net=self.netns, mnt=self.mntns)

    @property
    def data_backing(self) -> Path:
        """This host's data directory as haul (outside the host) sees it."""
        return self.workdir / "data"


@dataclass(frozen=True, slots=True)
class LabSpec:
    prefix: str = DEFAULT_PREFIX
    hosts: int = 2

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise UsageError(
                f"lab prefix {self.prefix!r} must be 1-8 lowercase letters or digits, "
                "starting with a letter"
            )
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise UsageError(f"a lab has 1 to {MAX_HOSTS} hosts, not {self.hosts}")

    @property
    def root_dir(self) -> Path:
        return lab_root() / self.prefix

    @property
    def data_path(self) -> Path:
        """Where every host sees its own data directory."""
        return self.root_dir / "data"

    @property
    def mntns_dir(self) -> Path:
        """Holds the hosts' mount namespace files (a private bind mount of itself)."""
        return mntns_root() / self.prefix

    @property
    def switch_netns(self) -> str:
        return f"{self.prefix}-sw"

    def host(self, index: int) -> HostSpec:
        name = f"host{index}"
        return HostSpec(
            name=name,
            netns=f"{self.prefix}-{name}",
            address=_iface(index),
            switch_port=name,
            workdir=self.root_dir / name,
            mntns=self.mntns_dir / name,
        )

    @property
    def client(self) -> HostSpec:
        return HostSpec(
            name="client",
            netns=f"{self.prefix}-client",
            address=_iface(CLIENT_HOST_INDEX),
            switch_port="client",
            workdir=self.root_dir / "client",
            mntns=self.mntns_dir / "client",
        )

    def members(self) -> tuple[HostSpec, ...]:
        """Every namespace attached to the bridge: the hosts, then the client."""
        return (*(self.host(i) for i in range(1, self.hosts + 1)), self.client)

    def member(self, name: str) -> HostSpec:
        for m in self.members():
            if m.name == name:
                return m
        raise UsageError(
            f"no host {name!r} in lab {self.prefix!r} "
            f"(it has {', '.join(m.name for m in self.members())})"
        )


def mntns_root() -> Path:
    return Path(os.environ.get("HAUL_LAB_MNTNS_ROOT", "/run/haul/lab-mnt"))


def lab_root() -> Path:
    return Path(os.environ.get("HAUL_LAB_ROOT", "/var/lib/haul/lab"))


def _iface(index: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"{SUBNET.network_address + index}/{SUBNET.prefixlen}")
