"""haul.lab.agents with TLS, without root: the lab's CA and certificates, the agents'
configs (mutual TLS, https peers) and the inventory (the CLI's certificate)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from cryptography import x509

from haul.agent.config import certificate_addresses, parse_config
from haul.errors import LabError
from haul.inventory import load_inventory, write_inventory
from haul.lab.agents import CLI_CERT, agent_config_toml, lab_inventory, make_lab_pki, pki_dir
from haul.lab.spec import LabSpec


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv("HAUL_LAB_STATE_DIR", str(d))
    monkeypatch.setenv("HAUL_LAB_ROOT", str(tmp_path / "lab"))
    return d


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_lab_ca_signs_a_certificate_per_host_naming_its_address(state: Path) -> None:
    spec = LabSpec(prefix="t1", hosts=3)
    pki = make_lab_pki(spec)
    assert pki == pki_dir("t1") == state / "t1" / "pki"
    ca = _cert(pki / "ca.crt")
    for i in (1, 2, 3):
        cert = _cert(pki / f"host{i}.crt")
        cert.verify_directly_issued_by(ca)
        assert certificate_addresses(pki / f"host{i}.crt") == {f"10.77.0.{i}"}
    _cert(pki / f"{CLI_CERT}.crt").verify_directly_issued_by(ca)
    assert (pki / "ca.key").stat().st_mode & 0o077 == 0
    with pytest.raises(LabError, match="exists"):
        make_lab_pki(spec)


def test_a_tls_agent_config_does_mutual_tls_with_https_peers(state: Path) -> None:
    spec = LabSpec(prefix="t1", hosts=3)
    pki = make_lab_pki(spec)
    config = parse_config(tomllib.loads(agent_config_toml(spec, 2, "tok", tls=True)))
    assert config.tls is not None
    assert (config.tls.ca, config.tls.cert, config.tls.key) == (
        pki / "ca.crt",
        pki / "host2.crt",
        pki / "host2.key",
    )
    assert {name: p.url for name, p in config.peers.items()} == {
        "host1": "https://10.77.0.1:7477",
        "host3": "https://10.77.0.3:7477",
    }
    assert config.auth.bearer_token() == "tok"  # the lab's token, as in a plain lab
    assert config.auth.operators == [CLI_CERT]  # the CLI's certificate is the operator's
    assert config.tls.crl == pki / "crl.pem" and not config.insecure_lab
    # peers are known by their certificates: no tokens go between agents
    assert all(p.bearer_token() is None and p.inbound() is None for p in config.peers.values())


def test_the_plain_lab_is_unchanged_by_default(state: Path) -> None:
    config = parse_config(tomllib.loads(agent_config_toml(LabSpec(prefix="t1"), 1, "tok")))
    assert config.tls is None
    assert config.peers["host2"].url == "http://10.77.0.2:7477"


def test_the_tls_inventory_gives_the_cli_its_certificate(tmp_path: Path, state: Path) -> None:
    spec = LabSpec(prefix="t1", hosts=2)
    pki = make_lab_pki(spec)
    path = tmp_path / "hosts.toml"
    write_inventory(path, lab_inventory(spec, "tok", tls=True))
    entry = load_inventory(path).host("host1")
    assert entry.url == f"unix://{state}/t1/agents/host1.sock"  # from this machine
    assert entry.peer_url == "https://10.77.0.1:7477"  # from the lab's client namespace
    assert (entry.ca, entry.cert, entry.key) == (
        pki / "ca.crt",
        pki / f"{CLI_CERT}.crt",
        pki / f"{CLI_CERT}.key",
    )
    assert entry.token == "tok"  # 'down' tells its inventory by the token
