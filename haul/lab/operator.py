"""A lab as its operator drives it from outside, for tests and benchmarks.

``haul`` commands run as separate processes against the lab's hosts inventory
(:func:`run_haul`, :func:`ps`), exactly as an operator types them; the counter
sample started with ``haul run`` (:func:`run_counter`) and read through the
files its host's agent keeps for it; and what the agents keep on disk (their
journals) or answer (``GET /v1/incoming``). Every wait has a time limit and
ends in a :class:`~haul.errors.LabError` that says what did not happen.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from haul.agent.client import AgentAccess
from haul.errors import LabError
from haul.lab.agents import agent_socket
from haul.lab.ledger import Ledger
from haul.lab.samples import COUNTER
from haul.lab.spec import LabSpec

T = TypeVar("T")

#: how long one ``haul`` command may take (a migration of 512 MiB included)
HAUL_TIMEOUT_S = 180.0


def run_haul(
    inventory: Path, *args: str, timeout_s: float = HAUL_TIMEOUT_S, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``haul ARGS...`` with ``inventory`` as its hosts inventory, in network namespace
    ``netns`` if given (else this machine's); its output captured as text."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "haul", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "HAUL_HOSTS": str(inventory)},
    )


def run_container(inventory: Path, name: str, image: str, *extra: str, host: str = "host1") -> None:
    """``haul run --runtime runc --image IMAGE`` of ``name`` on ``host`` (``image``:
    ``oci:LAYOUT[:TAG]``), more of its options in ``extra``; asserts it started."""
    done = run_haul(
        inventory,
        "run",
        "--name",
        name,
        "--host",
        host,
        "--runtime",
        "runc",
        "--image",
        image,
        *extra,
    )
    assert done.returncode == 0, done.stderr


def ps(inventory: Path) -> list[dict[str, Any]]:
    """``haul ps -o json``: every workload of the inventory's hosts that is not gone."""
    done = run_haul(inventory, "ps", "-o", "json")
    if done.returncode != 0:
        raise LabError(f"haul ps failed: {done.stderr.strip()}")
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return [r for r in rows if r.get("status") != "gone"]


def wait_until(what: str, check: Callable[[], T], timeout_s: float = 60.0) -> T:
    """Call ``check`` until it returns something true, and return that; LabError naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.005)


# -- the counter sample, run through the agents ------------------------------------------------


def state_file(lab: LabSpec, host: str, name: str) -> Path:
    """The counter ``name``'s state file in ``host``'s agent's workload directory."""
    return lab.member(host).data_backing / "agent" / "workloads" / name / "state"


def count(lab: LabSpec, host: str, name: str) -> int:
    """The count the counter ``name`` on ``host`` last wrote (``count N mem M``)."""
    return int(state_file(lab, host, name).read_text().split()[1])


def wait_count_above(lab: LabSpec, host: str, name: str, n: int, timeout_s: float = 20.0) -> int:
    """Wait until the counter ``name`` on ``host`` has counted past ``n``; return its count."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            now = count(lab, host, name)
            if now > n:
                return now
        except (FileNotFoundError, ValueError, IndexError):
            pass
        time.sleep(0.02)
    raise LabError(f"{name} on {host} did not count past {n} in {timeout_s:g} s")


def run_counter(
    inventory: Path,
    lab: LabSpec,
    name: str,
    *,
    host: str = "host1",
    mem_mib: int = 32,
    timeout_s: float = 20.0,
) -> None:
    """``haul run`` the counter sample as ``name`` on ``host`` with ``mem_mib`` of memory;
    return once it counts (within ``timeout_s`` of being started)."""
    done = run_haul(
        inventory,
        "run",
        "--name",
        name,
        "--host",
        host,
        "--",
        sys.executable,
        "-S",
        "-E",
        str(COUNTER),
        "state",
        "--mem-mib",
        str(mem_mib),
    )
    if done.returncode != 0:
        raise LabError(f"haul run {name} failed: {done.stderr.strip()}")
    wait_count_above(lab, host, name, 2, timeout_s)


def verdict(lab: LabSpec, inventory: Path, host: str, name: str, timeout_s: float = 30.0) -> str:
    """SIGTERM the counter ``name``, which must run on ``host`` alone (its init forwards
    the signal), and return its verdict: ``PASS n`` or ``FAIL ...``."""
    rows = [r for r in ps(inventory) if r["name"] == name]
    if len(rows) != 1 or rows[0]["host"] != host:
        raise LabError(f"{name} should run on {host} alone; haul ps shows {rows}")
    os.kill(int(rows[0]["root_pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = state_file(lab, host, name).read_text()
        if text.startswith(("PASS", "FAIL")):
            return text.strip()
        time.sleep(0.05)
    raise LabError(f"{name} on {host} wrote no verdict within {timeout_s:g} s of SIGTERM")


# -- the agents ----------------------------------------------------------------------------------


def agent_pid(lab: LabSpec, host: str) -> int:
    """The PID of ``host``'s agent, as the lab's ledger has it."""
    ledger = Ledger.load(lab.prefix)
    if ledger is None or host not in ledger.agents:
        raise LabError(f"lab {lab.prefix} has no agent recorded for {host}")
    return ledger.agents[host]


def journal_dir(lab: LabSpec, host: str) -> Path:
    """Where ``host``'s agent journals its migrations."""
    return lab.member(host).data_backing / "agent" / "journal"


def journal_phases(lab: LabSpec, host: str, migration_id: str) -> list[str]:
    """The phases ``host``'s agent journaled for a migration, in order (none yet: [])."""
    try:
        text = (journal_dir(lab, host) / f"{migration_id}.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line)["phase"] for line in text.splitlines() if line.endswith("}")]


def incoming(lab: LabSpec, host: str) -> list[dict[str, Any]]:
    """``GET /v1/incoming`` of ``host``'s agent: the migrations it receives or received."""

    async def get() -> list[dict[str, Any]]:
        async with AgentAccess(f"unix://{agent_socket(lab.prefix, host)}").client() as agent:
            return [view.model_dump() for view in await agent.incoming.all()]

    return asyncio.run(get())


def received_bytes(lab: LabSpec, host: str) -> dict[str, float]:
    """What ``host``'s agent has received of incoming migrations over its API, in bytes
    by kind (image, data, blob): its ``haul_agent_received_bytes`` counters."""

    async def get() -> str:
        async with AgentAccess(f"unix://{agent_socket(lab.prefix, host)}").client() as agent:
            return await agent.metrics_text()

    found: dict[str, float] = {}
    for line in asyncio.run(get()).splitlines():
        if line.startswith("haul_agent_received_bytes_total{"):
            labels, value = line.rsplit(" ", 1)
            what = labels.split('what="', 1)[1].split('"', 1)[0]
            found[what] = float(value)
    return found
