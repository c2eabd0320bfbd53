"""Give a freshly started workload its network: a veth pair, the address, the routes.

Runs in the host's network namespace (where the agent runs). The workload's
namespace is reached through ``/proc/PID/ns/net`` of its init.
"""

from __future__ import annotations

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from haul.errors import WorkloadError
from haul.net.spec import INNER_IFNAME, WorkloadNet, host_ifname


def netns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


async def bridge_index(bridge: str) -> int:
    """The host bridge's index; raise one clear line when there is none."""
    async with AsyncIPRoute() as ipr:
        found = await ipr.link_lookup(ifname=bridge)
        if not found:
            raise WorkloadError(f"this host has no bridge {bridge!r} for workload addresses")
        return int(found[0])


async def attach(workload: str, pid: int, net: WorkloadNet, bridge: str) -> str:
    """Create the workload's veth (host end on ``bridge``), configure its namespace.

    Returns the host end's name. On failure, whatever was made is removed.
    """
    index = await bridge_index(bridge)
    outer = host_ifname(workload)
    try:
        async with AsyncIPRoute() as ipr:
            if await ipr.link_lookup(ifname=outer):
                raise WorkloadError(f"interface {outer} for workload {workload} already "
                                    "exists on this host")
            await ipr.link("add", ifname=outer, kind="veth",
                           peer={"ifname": INNER_IFNAME, "net_ns_fd": netns_path(pid)})
            host_end = (await ipr.link_lookup(ifname=outer))[0]
            await ipr.link("set", index=host_end, master=index, state="up")
        async with AsyncIPRoute(netns=netns_path(pid)) as inner:
            lo = (await inner.link_lookup(ifname="lo"))[0]
            await inner.link("set", index=lo, state="up")
            eth = (await inner.link_lookup(ifname=INNER_IFNAME))[0]
            await inner.addr("add", index=eth, address=net.ip,
                             prefixlen=net.address.network.prefixlen)
            await inner.link("set", index=eth, state="up")
            if net.gateway is not None:
                await inner.route("add", dst="0.0.0.0/0", gateway=str(net.gateway))
    except NetlinkError as exc:
        await detach(workload)
        raise WorkloadError(f"cannot give workload {workload} the address {net.address}: "
                            f"{exc}") from exc
    except BaseException:
        await detach(workload)
        raise
    return outer


async def detach(workload: str) -> None:
    """Remove the host end of the workload's veth if it is still here (its peer goes too)."""
    async with AsyncIPRoute() as ipr:
        found = await ipr.link_lookup(ifname=host_ifname(workload))
        if found:
            try:
                await ipr.link("del", index=found[0])
            except NetlinkError:
                pass  # gone meanwhile, with its namespace
