"""What a workload's network is, and where its pieces sit.

Layout (bridged, not routed): a workload started with an address runs in a
network namespace of its own. Its interface ``eth0`` (holding the address) is
one end of a veth pair; the other end sits on the host's bridge, which also
holds the host's uplink. So the workload is a station on the same layer-2
segment as its host, with its own MAC address. CRIU dumps the namespace with
the workload (interfaces, addresses, routes, MAC, TCP connections with
``--tcp-established``); on the destination CRIU re-creates the veth pair and
puts the host end on the destination's bridge (``--external
veth[eth0]:HOSTIF@BRIDGE``). The address and the MAC are the same there, so
the only news for the neighbours is which switch port leads to that MAC,
which a gratuitous ARP from the workload announces.

The host end's name is derived from the workload's name, so both hosts use
the same one and a leftover is attributable.

The host's bridge must have a MAC address of its own, set explicitly (the lab
gives it its uplink's): a bridge left to choose takes the lowest MAC of its
ports and changes it whenever a workload's veth joins or leaves, and the
host's neighbours then send to a MAC that is no longer there until their ARP
entries expire (tens of seconds without traffic to the host itself).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from haul.errors import UsageError

#: the interface inside the workload's namespace
INNER_IFNAME = "eth0"
#: Linux interface names are at most 15 bytes
IFNAMSIZ = 15


def host_ifname(workload: str) -> str:
    """The host end of a workload's veth: "vh" and a digest of the name (fits IFNAMSIZ)."""
    return "vh" + hashlib.sha256(workload.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class WorkloadNet:
    """A workload's address (with its prefix length), its service port, its gateway."""

    address: ipaddress.IPv4Interface
    port: int | None = None
    gateway: ipaddress.IPv4Address | None = None

    @classmethod
    def parse(
        cls, address: str, port: int | None = None, gateway: str | None = None
    ) -> WorkloadNet:
        """From an operator's input, e.g. ``10.77.0.101/24``: the prefix length is
        required, it says which subnet the workload's neighbours are on."""
        if "/" not in address:
            raise UsageError(
                f"workload address {address!r} needs its prefix length, e.g. {address}/24"
            )
        try:
            iface = ipaddress.IPv4Interface(address)
        except ValueError as exc:
            raise UsageError(f"bad workload address {address!r}: {exc}") from None
        if iface.network.prefixlen >= 31:
            raise UsageError(
                f"workload address {address!r}: the prefix must leave room "
                "for neighbours (at most /30)"
            )
        if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
            raise UsageError(
                f"workload address {address!r} is its subnet's network or broadcast address"
            )
        if port is not None and not 1 <= port <= 65535:
            raise UsageError(f"bad port {port}: 1-65535")
        gw = None
        if gateway:
            try:
                gw = ipaddress.IPv4Address(gateway)
            except ValueError as exc:
                raise UsageError(f"bad gateway {gateway!r}: {exc}") from None
            if gw not in iface.network:
                raise UsageError(f"gateway {gw} is not in the workload's subnet {iface.network}")
        return cls(iface, port, gw)

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @property
    def endpoint(self) -> str:
        """``ADDR`` or ``ADDR:PORT``, as hooks and load balancers see the workload."""
        return f"{self.ip}:{self.port}" if self.port else self.ip
