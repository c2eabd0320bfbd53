"""Agents in the lab: 'up' starts one in each host and writes the inventory; they answer
on their sockets and, with the lab token, to the other hosts; 'haul run / ps / kill'
work through them; 'down' leaves no agent, socket, namespace or inventory behind."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from haul.agent.client import AgentAccess
from haul.errors import LabError
from haul.inventory import load_inventory
from haul.lab.agents import agent_log_path, agent_socket, lab_dir, sockets_dir
from haul.lab.ledger import Ledger
from haul.lab.netlab import lab_down, lab_up
from haul.lab.spec import LabSpec
from haul.procfs import alive, netns_inode, ns_inode, wait_gone

pytestmark = pytest.mark.asyncio

#: runs the haul command (named haul in its messages)
HAUL = "import sys\nfrom haul.cli import main\nsys.argv[0] = 'haul'\nmain()\n"


def _haul(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HAUL, *args], capture_output=True, text=True, timeout=60
    )


def _curl(netns: str, url: str, token: str) -> tuple[int, str]:
    """GET ``url`` from inside ``netns``; return (HTTP status, body)."""
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            f"Authorization: Bearer {token}",
            "-w",
            "\n%{http_code}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


async def test_every_agent_answers_on_its_socket_and_to_the_other_hosts(
    lab_with_agents: tuple[LabSpec, Path],
) -> None:
    spec, inventory_path = lab_with_agents
    inventory = load_inventory(inventory_path)
    assert sorted(inventory.hosts) == ["host1", "host2"]
    assert stat.S_IMODE(inventory_path.stat().st_mode) == 0o600
    for i in (1, 2):
        host = spec.host(i)
        entry = inventory.host(host.name)
        assert entry.url == f"unix://{agent_socket(spec.prefix, host.name)}"
        assert entry.peer_url == f"http://10.77.0.{i}:7477"
        async with AgentAccess(entry.url).client() as agent:  # root on the socket needs no token
            assert (await agent.health()).ok
            assert (await agent.info()).host == host.name
        # The agent runs inside the host, and keeps its state in the host's own data.
        ledger = Ledger.load(spec.prefix)
        assert ledger is not None
        pid = ledger.agents[host.name]
        assert ns_inode(pid, "net") == netns_inode(host.netns)
        assert ns_inode(pid, "mnt") == os.stat(host.mntns).st_ino
        assert (host.data_backing / "agent").is_dir()
        assert stat.S_IMODE((host.workdir / "agent.toml").stat().st_mode) == 0o600
    token = inventory.host("host1").bearer()
    assert token
    # Over TCP, from the other host's namespace, with the lab token.
    status, body = _curl(spec.host(2).netns, "http://10.77.0.1:7477/v1/info", token)
    assert status == 200 and json.loads(body)["host"] == "host1"
    status, body = _curl(spec.host(1).netns, "http://10.77.0.2:7477/v1/info", token)
    assert status == 200 and json.loads(body)["host"] == "host2"
    status, body = _curl(spec.client.netns, "http://10.77.0.2:7477/v1/workloads", "wrong")
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"


async def test_run_ps_kill_through_the_cli(lab_with_agents: tuple[LabSpec, Path]) -> None:
    spec, inventory = lab_with_agents
    hosts = ("--hosts", str(inventory))
    run = _haul(
        "run", "--name", "sleeper", "--host", "host2", *hosts, "-o", "json", "--", "sleep", "600"
    )
    assert run.returncode == 0, run.stderr
    started = json.loads(run.stdout)
    assert (started["host"], started["name"], started["status"]) == ("host2", "sleeper", "running")
    root_pid = started["root_pid"]
    assert alive(root_pid)
    assert ns_inode(root_pid, "net") == netns_inode(spec.host(2).netns)

    ps = _haul("ps", *hosts, "-o", "json")
    assert ps.returncode == 0, ps.stderr
    rows = json.loads(ps.stdout)
    assert [(r["host"], r["name"], r["status"], r["root_pid"], r["argv"]) for r in rows] == [
        ("host2", "sleeper", "running", root_pid, ["sleep", "600"])
    ]
    assert rows[0]["uptime_s"] >= 0
    only1 = _haul("ps", "--host", "host1", *hosts, "-o", "json")
    assert only1.returncode == 0 and json.loads(only1.stdout) == []
    text = _haul("ps", *hosts)
    assert text.returncode == 0 and "sleeper" in text.stdout and "host2" in text.stdout

    taken = _haul("run", "--name", "sleeper", "--host", "host2", *hosts, "--", "true")
    assert taken.returncode == 1 and taken.stderr.count("\n") == 1, taken.stderr

    kill = _haul("kill", "sleeper", *hosts, "-o", "json")  # no --host: found on host2
    assert kill.returncode == 0, kill.stderr
    assert json.loads(kill.stdout)["host"] == "host2"
    assert wait_gone([root_pid], 10) == [], "the workload's tree is really gone"
    assert json.loads(_haul("ps", *hosts, "-o", "json").stdout) == []

    again = _haul("kill", "sleeper", *hosts)
    assert again.returncode == 1
    assert again.stderr.startswith("haul: error: no workload 'sleeper'")
    assert again.stderr.count("\n") == 1
    unknown = _haul("ps", "--host", "host9", *hosts)
    assert unknown.returncode == 1 and "unknown host 'host9'" in unknown.stderr
    assert unknown.stderr.count("\n") == 1
    bad = _haul("kill", "Not/A/Name", *hosts)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


async def test_down_leaves_no_agent_socket_namespace_or_inventory(tmp_path: Path) -> None:
    spec = LabSpec(prefix="t" + secrets.token_hex(3), hosts=3)
    inventory = tmp_path / "hosts.toml"
    before = _netns()
    try:
        await lab_up(spec, inventory=inventory)
        ledger = Ledger.load(spec.prefix)
        assert ledger is not None and ledger.inventory == str(inventory)
        pids = list(ledger.agents.values())
        assert len(pids) == 3 and all(alive(p) for p in pids)
        assert all(agent_socket(spec.prefix, f"host{i}").exists() for i in (1, 2, 3))
    finally:
        lab_down(spec.prefix)
    assert not any(alive(p) for p in pids)
    assert not sockets_dir(spec.prefix).exists() and not lab_dir(spec.prefix).exists()
    assert _netns() == before
    assert not inventory.exists()
    assert Ledger.load(spec.prefix) is None


async def test_down_keeps_an_inventory_someone_rewrote(tmp_path: Path) -> None:
    spec = LabSpec(prefix="t" + secrets.token_hex(3), hosts=1)
    inventory = tmp_path / "hosts.toml"
    try:
        await lab_up(spec, inventory=inventory)
        inventory.write_text('[hosts.web]\nurl = "https://10.0.0.1:7477"\ntoken = "mine"\n')
    finally:
        lab_down(spec.prefix)
    assert inventory.exists()


async def test_an_agent_that_cannot_start_fails_up_with_its_log(tmp_path: Path) -> None:
    spec = LabSpec(prefix="t" + secrets.token_hex(3), hosts=2)
    # Something that is not a socket where host2's agent must listen: it refuses to start.
    blocker = agent_socket(spec.prefix, "host2")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a socket")
    before = _netns()
    try:
        with pytest.raises(LabError, match="agent on host2 exited.*is not a socket"):
            await lab_up(spec, inventory=tmp_path / "hosts.toml")
    finally:
        lab_down(spec.prefix)
    assert Ledger.load(spec.prefix) is None, "up took the lab down"
    assert _netns() == before and not lab_dir(spec.prefix).exists()
    assert not spec.root_dir.exists() and not agent_log_path(spec.host(2)).exists()
    assert not (tmp_path / "hosts.toml").exists()
