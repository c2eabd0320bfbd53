"""The agents' limits with real agents in lab hosts and real CRIU (docs/limits.md).

- Twenty ``POST /v1/incoming`` (stop-and-copy: each starts a CRIU page server) and then
  nothing, as a source that dies or never meant to send anything: those beyond
  ``max_incoming`` are refused in one line, and once ``incoming_idle_s`` has passed
  no CRIU process of theirs is left on host2, nor anything of them on its disk; a
  real migration to host2 then succeeds.
- The byte budget: a workload with more files than memory moves (its files are part
  of the pre-flight's claim); when it writes far more than its claim once the
  pre-flight is done (a hook at pre-freeze makes it deterministic), the destination
  refuses what goes over the budget and the migration rolls back, the workload
  running on the source; the next migration, claiming what is there now, goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import tomllib
from pathlib import Path

import pytest

from haul.agent.client import AgentAccess
from haul.agent.config import parse_config
from haul.agent.migration_models import IncomingOpen
from haul.engine.phases import Strategy
from haul.errors import PeerBusy
from haul.lab.agents import agent_config_path, agent_socket, restart_agent
from haul.lab.operator import (
    agent_pid,
    count,
    incoming,
    ps,
    run_counter,
    run_haul,
    verdict,
    wait_count_above,
    wait_until,
)
from haul.lab.spec import LabSpec
from haul.procfs import netns_inode, pids_in_ns

MIB = 1 << 20


def limit_agent(lab: LabSpec, host: str, **limits: float) -> None:
    """Restart ``host``'s agent with these ``[agent.limits]``."""
    path = agent_config_path(lab.member(host))
    text = path.read_text() + "\n[agent.limits]\n"
    text += "".join(f"{key} = {value}\n" for key, value in limits.items())
    parse_config(tomllib.loads(text), where=str(path), base=path.parent)
    path.write_text(text)
    asyncio.run(restart_agent(lab, host))


def others_in_netns(lab: LabSpec, host: str) -> list[int]:
    """Every process in ``host``'s network namespace but its agent."""
    inode = netns_inode(lab.member(host).netns)
    assert inode is not None
    agent = agent_pid(lab, host)
    return [p for p in pids_in_ns("net", inode) if p != agent]


def exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def open_many(lab: LabSpec, n: int) -> list[str]:
    """``n`` stop-and-copy incoming migrations opened on host2, as a source would open
    them; what each got: "opened", or the refusal's line."""
    got = []
    async with AgentAccess(f"unix://{agent_socket(lab.prefix, 'host2')}").client() as agent:
        for i in range(n):
            ask = IncomingOpen(
                id=f"idle{i}",
                workload=f"idle{i}",
                strategy=Strategy.STOP_AND_COPY,
                needed_bytes=MIB,
                source="host1",
            )
            try:
                opened = await agent.incoming.open(ask)
            except PeerBusy as exc:
                got.append(exc.one_line())
            else:
                assert opened.page_server is not None
                got.append("opened")
    return got


def test_incoming_migrations_that_go_nowhere_are_reaped_with_their_page_servers(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    lab, inventory = lab_with_agents
    limit_agent(lab, "host2", max_incoming=16, incoming_idle_s=5)
    assert others_in_netns(lab, "host2") == []
    got = asyncio.run(open_many(lab, 20))
    assert got[:16] == ["opened"] * 16
    assert len(got) == 20 and all("max_incoming = 16" in line for line in got[16:]), got[16:]
    print(f"\nthe 17th open: {got[16]}")
    servers = others_in_netns(lab, "host2")
    assert len(servers) == 16, "a CRIU page server for each migration opened"
    assert all(exe(p).endswith("/criu") for p in servers), [exe(p) for p in servers]
    assert len(incoming(lab, "host2")) == 16
    state = lab.member("host2").data_backing / "agent"
    # nothing arrives: after incoming_idle_s, the reaper discards them all
    wait_until(
        "the reaper",
        lambda: others_in_netns(lab, "host2") == [] and incoming(lab, "host2") == [],
        timeout_s=60,
    )
    assert sorted(p.name for p in (state / "incoming").iterdir()) == []
    assert not any(p.name.startswith("idle") for p in (state / "workloads").iterdir())
    # and a real migration to host2 goes through
    run_counter(inventory, lab, "web", mem_mib=32)
    done = run_haul(inventory, "migrate", "web", "--to", "host2", "--strategy", "stop-and-copy")
    assert done.returncode == 0, done.stderr
    assert verdict(lab, inventory, "host2", "web").startswith("PASS")


def grow_hook(directory: Path, target: Path, size: int) -> Path:
    """A hook that, at pre-freeze (after the pre-flight claimed what there was), writes
    ``size`` bytes to ``target`` (a path as the source host sees it)."""
    hook = directory / "grow"
    hook.write_text(
        "#!/bin/sh\n"
        '[ "$HAUL_POINT" = pre-freeze ] || exit 0\n'
        f"head -c {size} /dev/urandom > {target}\n"
    )
    hook.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return hook


@pytest.mark.parametrize("strategy", ["stop-and-copy", "post-copy"])
def test_what_goes_over_the_claims_budget_is_refused_and_the_migration_rolls_back(
    lab_with_agents: tuple[LabSpec, Path], tmp_path: Path, strategy: str
) -> None:
    lab, inventory = lab_with_agents
    limit_agent(lab, "host2", upload_margin=1.0, upload_slack_bytes=MIB)
    run_counter(inventory, lab, "web", mem_mib=32)
    host1_data = lab.member("host1").data_backing / "agent" / "workloads" / "web"
    (host1_data / "files").write_bytes(os.urandom(96 * MIB))  # more files than memory
    files = sha(host1_data / "files")
    done = run_haul(inventory, "migrate", "web", "--to", "host2", "--strategy", strategy)
    assert done.returncode == 0, done.stderr
    host2_data = lab.member("host2").data_backing / "agent" / "workloads" / "web"
    assert sha(host2_data / "files") == files
    # back to host1, then once more to host2, growing by 128 MiB after its pre-flight
    back = run_haul(inventory, "migrate", "web", "--to", "host1", "--strategy", strategy)
    assert back.returncode == 0, back.stderr
    seen = lab.data_path / "agent" / "workloads" / "web" / "grown"  # as host1 sees it
    hook = grow_hook(tmp_path, seen, 128 * MIB)
    over = run_haul(
        inventory, "migrate", "web", "--to", "host2", "--strategy", strategy, "--hook", str(hook)
    )
    assert over.returncode == 1, over.stderr
    assert over.stderr.count("\n") == 1, over.stderr
    assert "is over its byte budget" in over.stderr and "web runs on host1" in over.stderr
    print(f"\n{strategy}: {over.stderr.strip()}")
    assert [(r["host"], r["name"]) for r in ps(inventory)] == [("host1", "web")]
    n = count(lab, "host1", "web")
    assert wait_count_above(lab, "host1", "web", n) > n
    assert incoming(lab, "host2") == [] and others_in_netns(lab, "host2") == []
    assert not host2_data.exists()
    assert list((lab.member("host2").data_backing / "agent" / "incoming").iterdir()) == []
    # the next migration claims what is there now, and goes
    grown = sha(host1_data / "grown")
    again = run_haul(inventory, "migrate", "web", "--to", "host2", "--strategy", strategy)
    assert again.returncode == 0, again.stderr
    assert sha(host2_data / "grown") == grown
    assert verdict(lab, inventory, "host2", "web").startswith("PASS")
