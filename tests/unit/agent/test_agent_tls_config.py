"""haul.agent.config with [agent.tls]: the certificate must name the advertised address
(CRIU's page channels and the peers' https calls check it), and the same files reach
the peers and the incoming migrations."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest
from cryptography import x509

from haul.agent.ca import init_ca, issue
from haul.agent.config import AgentConfig, certificate_addresses, parse_config
from haul.agent.context import AgentContext
from haul.criu.options import TlsFiles
from haul.errors import ConfigError


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_ca(tmp_path)
    issue(tmp_path, "host1", ["10.77.0.1"])
    issue(tmp_path, "bare")  # names no address
    return tmp_path


def _config(pki: Path, cert: str = "host1", **agent: object) -> AgentConfig:
    table: dict[str, object] = {
        "host": "host1",
        "address": "10.77.0.1",
        "state_dir": str(pki / "state"),
        "criu": sys.executable,  # any executable: CRIU is not run here
        "tls": {"ca": "ca.crt", "cert": f"{cert}.crt", "key": f"{cert}.key"},
        "peers": {"host2": {"url": "https://10.77.0.2:7477"}},
        **agent,
    }
    return parse_config({"agent": table}, where="haul.toml", base=pki)


def test_a_certificate_naming_the_address_is_taken(pki: Path) -> None:
    config = _config(pki)
    assert config.tls is not None
    assert config.tls.files() == TlsFiles(
        cacert=pki / "ca.crt", cert=pki / "host1.crt", key=pki / "host1.key"
    )
    assert certificate_addresses(pki / "host1.crt") == {"10.77.0.1"}


def test_a_certificate_not_naming_the_advertised_address_is_refused(pki: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _config(pki, advertise_address="10.77.0.9", address="0.0.0.0")
    message = info.value.one_line()
    assert message.startswith("haul.toml: agent.tls.cert: ")
    assert "does not name 10.77.0.9" in message and "(it names 10.77.0.1)" in message
    assert message.endswith("haul ca issue host1 --ip 10.77.0.9")
    with pytest.raises(ConfigError, match="names no address"):
        _config(pki, cert="bare")


def test_a_wildcard_listener_with_no_advertised_address_is_not_checked(pki: Path) -> None:
    assert _config(pki, cert="bare", address="0.0.0.0").tls is not None


def test_a_file_that_is_no_certificate_is_refused_in_one_line(pki: Path) -> None:
    (pki / "junk.crt").write_text("not a certificate\n")
    (pki / "junk.key").write_text("x")
    (pki / "junk.key").chmod(0o600)
    with pytest.raises(ConfigError) as info:
        _config(pki, cert="junk")
    assert "agent.tls.cert: " in info.value.one_line()
    assert "is not a PEM certificate" in info.value.one_line()


def test_a_host_that_is_an_address_is_named_as_one(tmp_path: Path) -> None:
    init_ca(tmp_path)
    cert = x509.load_pem_x509_certificate(issue(tmp_path, "10.77.0.5").cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.77.0.5")]


def test_the_agents_certificate_reaches_its_peers_and_incoming_migrations(pki: Path) -> None:
    config = _config(pki)
    ctx = AgentContext.create(config)
    parts = ctx.migrations()
    assert parts.incoming.tls == config.tls.files()  # type: ignore[union-attr]
    peer = parts.jobs.peers["host2"]
    assert (peer.url, peer.tls) == ("https://10.77.0.2:7477", config.tls.files())  # type: ignore[union-attr]


def test_without_tls_nothing_is_given_to_criu(pki: Path) -> None:
    config = parse_config(
        {
            "agent": {
                "host": "host1",
                "address": "10.77.0.1",
                "insecure_lab": True,
                "state_dir": str(pki / "state"),
                "auth": {"token": "t"},
                "criu": sys.executable,
                "peers": {"host2": {"url": "http://10.77.0.2:7477"}},
            }
        }
    )
    parts = AgentContext.create(config).migrations()
    assert parts.incoming.tls is None and parts.jobs.peers["host2"].tls is None
