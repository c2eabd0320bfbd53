"""The network lock of a restored copy, held by haul until the commit.

CRIU locks the workload's namespace while it dumps (``network_lock``
nftables) and, on rollback, unlocks it. On the destination, CRIU unlocks the
restored namespace at the end of its restore, before the copy has been
committed: its restored TCP sockets would then answer the peers (ACK data the
frozen source never sees) and the switch would learn the copy's MAC. So at
CRIU's post-restore notification haul puts a lock of its own on the restored
namespace: one nftables table that drops every packet in and out except on
loopback. It is removed right before the copy is resumed, after the commit;
a discarded copy takes it along with its namespace.

A CRIU killed while it dumps cannot unlock: its own table stays in the namespace
(:func:`drop_criu_locks` removes it when the source rolls back).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from haul.errors import WorkloadError
from haul.net.veth import netns_path

TABLE = "haul_lock"
#: what CRIU's own nftables lock names its table: ``inet CRIU-<its run's id>``
CRIU_TABLE_PREFIX = "CRIU-"

_LOCK = f"""
table inet {TABLE} {{
    chain input {{
        type filter hook input priority -300; policy drop;
        iif "lo" accept
    }}
    chain output {{
        type filter hook output priority -300; policy drop;
        oif "lo" accept
    }}
}}
"""


def _netns(target: int | Path) -> str:
    """A process's network namespace (by PID), or a namespace file (by path)."""
    return netns_path(target) if isinstance(target, int) else str(target)


async def _nft(target: int | Path, *args: str, script: str | None = None) -> str:
    """``nft ARGS`` in the namespace of ``target``; its standard output."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net={_netns(target)}",
        "--",
        "nft",
        *args,
        stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(script.encode() if script is not None else None)
    if proc.returncode != 0:
        raise WorkloadError(
            f"nft {' '.join(args)} in the network namespace of {target} failed: "
            f"{err.decode(errors='replace').strip()}"
        )
    return out.decode(errors="replace")


async def lock(target: int | Path) -> None:
    """Drop all traffic but loopback's in the network namespace of ``target`` (a PID, or
    the path of a namespace file)."""
    await _nft(target, "-f", "-", script=_LOCK)


async def unlock(target: int | Path) -> None:
    """Remove haul's lock; harmless when it is gone already (a repeated resume)."""
    try:
        await _nft(target, "delete", "table", "inet", TABLE)
    except WorkloadError:
        if await is_locked(target):
            raise


async def drop_criu_locks(target: int | Path) -> list[str]:
    """Remove the tables of CRIU's own lock (``inet CRIU-<id>``) from the network
    namespace of ``target``; the names removed. CRIU removes its table itself when a
    dump ends, well or not; a CRIU that was killed while it dumped leaves it, and the
    namespace stays cut off. Only while no CRIU dumps that namespace."""
    dropped = []
    for line in (await _nft(target, "list", "tables")).splitlines():
        words = line.split()
        if words[:2] == ["table", "inet"] and words[2:3] and words[2].startswith(CRIU_TABLE_PREFIX):
            await _nft(target, "delete", "table", "inet", words[2])
            dropped.append(words[2])
    return dropped


async def is_locked(target: int | Path) -> bool:
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net={_netns(target)}",
        "--",
        "nft",
        "list",
        "table",
        "inet",
        TABLE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0
