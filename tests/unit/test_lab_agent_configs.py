"""haul.lab.agents without root: the agents' configs, the inventory, and what 'down' removes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from haul.agent.config import parse_config
from haul.inventory import HostEntry, Inventory, load_inventory, write_inventory
from haul.lab.agents import (
    agent_config_toml,
    agent_socket,
    lab_inventory,
    pair_token,
    shared_dir,
    stop_agents,
    token_digest,
)
from haul.lab.ledger import Ledger
from haul.lab.spec import LabSpec


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv("HAUL_LAB_STATE_DIR", str(d))
    monkeypatch.setenv("HAUL_LAB_ROOT", str(tmp_path / "lab"))
    return d


def test_each_agent_config_is_as_its_host_sees_it_with_the_others_as_peers(state: Path) -> None:
    spec = LabSpec(prefix="t1", hosts=3)
    config = parse_config(tomllib.loads(agent_config_toml(spec, 2, "tok")))
    assert config.host == "host2"
    assert (config.address, config.port, config.advertised_address()) == (
        "10.77.0.2",
        7477,
        "10.77.0.2",
    )
    assert config.socket == state / "t1" / "agents" / "host2.sock"
    assert config.state_dir == spec.data_path / "agent"  # the same path on every host
    assert config.host_ns is None and config.tls is None  # it runs inside the host
    assert config.auth.bearer_token() == "tok"  # the operator's
    assert config.insecure_lab  # plain HTTP beyond loopback: a lab only
    assert config.shared_dirs == [shared_dir("t1")]
    # each ordered pair of hosts has its own token, none of them the operator's
    assert {name: (p.url, p.bearer_token(), p.inbound()) for name, p in config.peers.items()} == {
        "host1": (
            "http://10.77.0.1:7477",
            pair_token("tok", "host2", "host1"),
            pair_token("tok", "host1", "host2"),
        ),
        "host3": (
            "http://10.77.0.3:7477",
            pair_token("tok", "host2", "host3"),
            pair_token("tok", "host3", "host2"),
        ),
    }
    tokens = {
        pair_token("tok", a, b) for a in ("host1", "host2", "host3") for b in ("host1", "host3")
    }
    assert "tok" not in tokens and len(tokens) == 6
    host1 = parse_config(tomllib.loads(agent_config_toml(spec, 1, "tok")))
    assert host1.peers["host2"].bearer_token() == config.peers["host1"].inbound()


def test_a_hosts_runc_can_be_another_or_none() -> None:
    spec = LabSpec(prefix="t1", hosts=2)
    plain = parse_config(tomllib.loads(agent_config_toml(spec, 2, "tok")))
    assert (plain.runc.binary, plain.runc.enabled) == (None, True)
    other = agent_config_toml(spec, 2, "tok", runc_binary=Path("/t/runc"), runs_containers=False)
    config = parse_config(tomllib.loads(other))
    assert (config.runc.binary, config.runc.enabled) == (Path("/t/runc"), False)
    assert config.cgroup_parent == plain.cgroup_parent  # the rest is as it was


def test_each_host_runs_containers_from_the_labs_directory_in_cgroups_of_its_own() -> None:
    configs = [
        parse_config(tomllib.loads(agent_config_toml(LabSpec(prefix=p, hosts=2), i, "tok")))
        for p in ("t1", "t2")
        for i in (1, 2)
    ]
    assert configs[0].runc.allowed_roots == [
        LabSpec(prefix="t1").root_dir,
        shared_dir("t1"),  # containers used in place there (--shared-dir)
        Path("/usr"),  # the machine's programs, for read-only mounts
        Path("/lib"),
        Path("/lib64"),
    ]
    assert [c.cgroup_parent for c in configs] == [
        "/haul/t1-host1",
        "/haul/t1-host2",
        "/haul/t2-host1",
        "/haul/t2-host2",
    ]
    assert configs[0].runc_root == LabSpec(prefix="t1").data_path / "agent" / "runc"


def test_the_inventory_names_each_agents_socket_and_its_address_for_peers(
    tmp_path: Path,
    state: Path,
) -> None:
    spec = LabSpec(prefix="t1", hosts=2)
    path = tmp_path / "hosts.toml"
    write_inventory(path, lab_inventory(spec, "tok"))
    inventory = load_inventory(path)
    assert inventory.host("host2") == HostEntry(
        url=f"unix://{state}/t1/agents/host2.sock", peer_url="http://10.77.0.2:7477", token="tok"
    )
    assert sorted(inventory.hosts) == ["host1", "host2"]


def _ledger_with_inventory(path: Path, token: str) -> Ledger:
    ledger = Ledger(prefix="t1", hosts=2, inventory=str(path), token_sha256=token_digest(token))
    ledger.save()
    return ledger


def test_down_removes_the_inventory_up_wrote_and_the_sockets(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    write_inventory(path, lab_inventory(LabSpec(prefix="t1", hosts=2), "tok"))
    ledger = _ledger_with_inventory(path, "tok")
    ledger.agents = {"host1": 2**22 + 1}  # not running: nothing to signal
    sock = agent_socket("t1", "host1")
    sock.parent.mkdir(parents=True)
    sock.touch()
    assert stop_agents(ledger) == []
    assert not path.exists() and not sock.exists()


def test_down_keeps_an_inventory_that_holds_another_token(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    write_inventory(
        path,
        Inventory(
            hosts={
                "host1": HostEntry(url="unix:///x.sock", token="tok"),
                "web": HostEntry(url="https://10.0.0.1:7477", token="other"),
            }
        ),
    )
    assert stop_agents(_ledger_with_inventory(path, "tok")) == []
    assert path.exists()


def test_the_ledger_keeps_agents_and_inventory(state: Path) -> None:
    ledger = Ledger(
        prefix="t2",
        hosts=2,
        agents={"host1": 10, "host2": 11},
        inventory="/tmp/hosts.toml",
        token_sha256="ab" * 32,
    )
    ledger.save()
    assert Ledger.load("t2") == ledger
    Ledger(prefix="t3", hosts=1).save()
    loaded = Ledger.load("t3")
    assert loaded is not None and (loaded.agents, loaded.inventory) == ({}, None)
