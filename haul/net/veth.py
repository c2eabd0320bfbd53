"""Give a freshly started workload its network: a veth pair, the address, the routes.

Runs in the host's network namespace (where the agent runs). The workload's
namespace is reached through ``/proc/PID/ns/net`` of its init, or (a container's,
which haul makes before the container starts) through the file it is bind-mounted on.
"""

from __future__ import annotations

import asyncio
import contextlib

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
    return await attach_netns(workload, netns_path(pid), net, bridge)


async def attach_netns(workload: str, netns: str, net: WorkloadNet, bridge: str) -> str:
    """:func:`attach` for the network namespace at path ``netns``."""
    index = await bridge_index(bridge)
    outer = host_ifname(workload)
    try:
        async with AsyncIPRoute() as ipr:
            if await ipr.link_lookup(ifname=outer):
                raise WorkloadError(
                    f"interface {outer} for workload {workload} already exists on this host"
                )
            await ipr.link(
                "add",
                ifname=outer,
                kind="veth",
                peer={"ifname": INNER_IFNAME, "net_ns_fd": netns},
            )
            host_end = (await ipr.link_lookup(ifname=outer))[0]
            await ipr.link("set", index=host_end, master=index, state="up")
        await _configure_inside(netns, net)
    except NetlinkError as exc:
        await detach(workload)
        raise WorkloadError(
            f"cannot give workload {workload} the address {net.address}: {exc}"
        ) from exc
    except BaseException:
        await detach(workload)
        raise
    return outer


async def _configure_inside(netns: str, net: WorkloadNet) -> None:
    """Address, routes and links up inside the workload's namespace, with iproute2 run
    there. Not pyroute2's netns=: it forks a helper from the agent, and a forked child
    of an asyncio process shares its signal wake-up fd, so the helper's SIGTERM reached
    the agent's event loop as if the agent had been told to stop."""
    batch = [
        "link set lo up",
        f"addr add {net.address} dev {INNER_IFNAME}",
        f"link set {INNER_IFNAME} up",
    ]
    if net.gateway is not None:
        batch.append(f"route add default via {net.gateway}")
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net={netns}",
        "--",
        "ip",
        "-batch",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate("\n".join(batch).encode() + b"\n")
    if proc.returncode != 0:
        raise WorkloadError(
            f"cannot configure the network namespace {netns}: "
            f"{err.decode(errors='replace').strip()}"
        )


async def detach(workload: str) -> None:
    """Remove the host end of the workload's veth if it is still here (its peer goes too)."""
    async with AsyncIPRoute() as ipr:
        found = await ipr.link_lookup(ifname=host_ifname(workload))
        if found:
            with contextlib.suppress(NetlinkError):  # gone meanwhile, with its namespace
                await ipr.link("del", index=found[0])
