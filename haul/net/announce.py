"""Tell the neighbours where a moved workload is: gratuitous ARP from its namespace.

The workload keeps its address and its MAC, so the neighbours' ARP caches are
still right; what changed is the switch port behind that MAC. An unsolicited
ARP (iputils ``arping -U``) sent from the workload's own interface teaches
every bridge on the way the new port and refreshes the neighbours' entries.
``arping`` waits a second after its last probe; haul does not wait for it.
"""

from __future__ import annotations

import asyncio
import logging

from haul.net.spec import INNER_IFNAME, WorkloadNet
from haul.net.veth import netns_path

log = logging.getLogger(__name__)

_pending: set[asyncio.Task[None]] = set()


async def _reap(proc: asyncio.subprocess.Process, what: str) -> None:
    _, err = await proc.communicate()
    if proc.returncode not in (0, 1):  # 1: no answer, which unsolicited ARP expects
        log.warning("%s failed: %s", what, err.decode(errors="replace").strip())


async def announce(pid: int, net: WorkloadNet, count: int = 2) -> None:
    """Send ``count`` gratuitous ARPs for the workload's address (arping sends the first
    at once and the others a second apart); return once arping runs, not waiting for it."""
    argv = [
        "nsenter",
        f"--net={netns_path(pid)}",
        "--",
        "arping",
        "-U",
        "-c",
        str(count),
        "-I",
        INNER_IFNAME,
        net.ip,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    task = asyncio.create_task(_reap(proc, f"gratuitous ARP for {net.ip}"))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
