"""LabSpec: the names, addresses and directories a lab derives from prefix and host count."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from haul.errors import UsageError
from haul.lab.spec import LabSpec, lab_root


def test_hosts_get_consecutive_addresses_in_the_lab_subnet() -> None:
    spec = LabSpec(prefix="t", hosts=3)
    for i in (1, 2, 3):
        assert spec.host(i).address == ipaddress.IPv4Interface(f"10.77.0.{i}/24")
    assert spec.client.address == ipaddress.IPv4Interface("10.77.0.250/24")


def test_names_carry_the_prefix() -> None:
    spec = LabSpec(prefix="lab7", hosts=2)
    h2 = spec.host(2)
    assert (h2.name, h2.netns, h2.switch_port) == ("host2", "lab7-host2", "host2")
    c = spec.client
    assert (c.name, c.netns, c.switch_port) == ("client", "lab7-client", "client")
    assert spec.switch_netns == "lab7-sw"


def test_members_are_the_hosts_then_the_client() -> None:
    spec = LabSpec(prefix="m", hosts=3)
    assert [m.name for m in spec.members()] == ["host1", "host2", "host3", "client"]
    assert spec.members()[1] == spec.host(2)
    assert spec.members()[-1] == spec.client


def test_the_largest_lab_has_distinct_names_and_addresses() -> None:
    spec = LabSpec(prefix="big", hosts=50)
    members = spec.members()
    assert len(members) == 51
    subnet = ipaddress.IPv4Network("10.77.0.0/24")
    assert len({m.address for m in members}) == 51
    assert all(m.address.network == subnet for m in members)
    assert all(
        m.address.ip not in (subnet.network_address, subnet.broadcast_address) for m in members
    )
    assert len({m.netns for m in members} | {spec.switch_netns}) == 52
    # interface names (switch ports) must fit IFNAMSIZ
    assert all(len(m.switch_port) <= 15 for m in members)


@pytest.mark.parametrize("prefix", ["a", "haul", "abcdefgh", "x9", "lab2"])
def test_good_prefixes(prefix: str) -> None:
    assert LabSpec(prefix=prefix).host(1).netns == f"{prefix}-host1"


@pytest.mark.parametrize(
    "prefix",
    ["", "Haul", "1lab", "abcdefghi", "ha-ul", "ha_ul", "ha ul", "hé", "lab/1", "-lab"],
)
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(UsageError, match="prefix"):
        LabSpec(prefix=prefix)


def test_prefix_with_trailing_newline_is_refused() -> None:
    with pytest.raises(UsageError):
        LabSpec(prefix="haul\n")


@pytest.mark.parametrize("hosts", [1, 50])
def test_host_count_bounds_are_accepted(hosts: int) -> None:
    assert len(LabSpec(hosts=hosts).members()) == hosts + 1


@pytest.mark.parametrize("hosts", [0, -1, 51, 250])
def test_bad_host_counts_are_refused(hosts: int) -> None:
    with pytest.raises(UsageError, match="hosts"):
        LabSpec(hosts=hosts)


def test_member_finds_hosts_and_client_by_name() -> None:
    spec = LabSpec(prefix="f", hosts=2)
    assert spec.member("host2") == spec.host(2)
    assert spec.member("client") == spec.client


@pytest.mark.parametrize("name", ["host3", "host0", "f-host1", "Host1", ""])
def test_member_refuses_unknown_names_and_lists_the_real_ones(name: str) -> None:
    spec = LabSpec(prefix="f", hosts=2)
    with pytest.raises(UsageError) as info:
        spec.member(name)
    text = str(info.value)
    assert repr(name) in text
    assert "host1, host2, client" in text


def test_workdirs_live_under_haul_lab_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAUL_LAB_ROOT", str(tmp_path / "labs"))
    spec = LabSpec(prefix="w", hosts=2)
    assert lab_root() == tmp_path / "labs"
    assert spec.root_dir == tmp_path / "labs" / "w"
    assert spec.host(1).workdir == tmp_path / "labs" / "w" / "host1"
    assert spec.client.workdir == tmp_path / "labs" / "w" / "client"
    assert len({m.workdir for m in spec.members()}) == 3


def test_lab_root_is_read_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = LabSpec(prefix="w")
    monkeypatch.setenv("HAUL_LAB_ROOT", str(tmp_path / "one"))
    assert spec.host(1).workdir == tmp_path / "one" / "w" / "host1"
    monkeypatch.setenv("HAUL_LAB_ROOT", str(tmp_path / "two"))
    assert spec.host(1).workdir == tmp_path / "two" / "w" / "host1"
