"""haul.agent.ca: the CA's files, the certificates' chains and extensions, and TLS contexts
that do mutual TLS (checked with an in-memory handshake, no network)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from haul.agent.ca import (
    client_ssl_context,
    host_files,
    init_ca,
    issue,
    server_ssl_context,
)
from haul.errors import ConfigError, UsageError


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_ten_year_ec_ca_with_a_private_key(tmp_path: Path) -> None:
    pair = init_ca(tmp_path / "ca")
    assert _mode(pair.key) == 0o600
    ca = _cert(pair.cert)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    years = (ca.not_valid_after_utc - ca.not_valid_before_utc) / datetime.timedelta(days=365)
    assert 9.9 < years < 10.1
    ca.verify_directly_issued_by(ca)


def test_issue_makes_a_server_and_client_cert_the_ca_signed(tmp_path: Path) -> None:
    init_ca(tmp_path)
    pair = issue(tmp_path, "host1", ["10.77.0.1", "::1"])
    assert pair == host_files(tmp_path, "host1")
    assert _mode(pair.key) == 0o600
    ca, cert = _cert(tmp_path / "ca.crt"), _cert(pair.cert)
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["host1"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.77.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc


def test_the_chain_verifies_for_the_name_and_the_address(tmp_path: Path) -> None:
    init_ca(tmp_path)
    issue(tmp_path, "host1", ["10.77.0.1"])
    store = Store([_cert(tmp_path / "ca.crt")])
    leaf = _cert(tmp_path / "host1.crt")
    for name in (x509.DNSName("host1"), x509.IPAddress(ipaddress.ip_address("10.77.0.1"))):
        chain = PolicyBuilder().store(store).build_server_verifier(name).verify(leaf, [])
        assert len(chain) == 2
    client = PolicyBuilder().store(store).build_client_verifier().verify(leaf, [])
    assert len(client.chain) == 2


def test_a_cert_from_another_ca_does_not_verify(tmp_path: Path) -> None:
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    issue(tmp_path / "b", "host1")
    store = Store([_cert(tmp_path / "a" / "ca.crt")])
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("host1")).verify(
            _cert(tmp_path / "b" / "host1.crt"), []
        )


def test_files_are_not_replaced_unless_forced(tmp_path: Path) -> None:
    first = init_ca(tmp_path).cert.read_bytes()
    with pytest.raises(UsageError, match="exists"):
        init_ca(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == first
    assert init_ca(tmp_path, overwrite=True).cert.read_bytes() != first
    issue(tmp_path, "h")
    with pytest.raises(UsageError, match="h.key exists"):
        issue(tmp_path, "h")
    issue(tmp_path, "h", overwrite=True)


@pytest.mark.parametrize("host", ["../evil", "a/b", "", "ca", "-x", "a b"])
def test_host_names_that_are_not_names_are_refused(tmp_path: Path, host: str) -> None:
    init_ca(tmp_path)
    with pytest.raises(UsageError, match="not a host name"):
        issue(tmp_path, host)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


def test_bad_addresses_and_a_missing_ca_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run 'haul ca init' first"):
        issue(tmp_path, "h")
    init_ca(tmp_path)
    with pytest.raises(UsageError, match="'10.0.0.300' is not an IP address"):
        issue(tmp_path, "h", ["10.0.0.300"])


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A TLS handshake over memory; raises ssl.SSLError when either side refuses."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    done = {"s": False, "c": False}
    for _ in range(20):
        for side, obj, out, peer_in in (("c", c, c_out, s_in), ("s", s, s_out, c_in)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done.values()):
            # TLS 1.3: the server checks the client certificate after the client finished;
            # a refusal then reaches the client on its first read
            c.write(b"ping")
            s_in.write(c_out.read())
            assert s.read(4) == b"ping"
            return
    raise AssertionError("handshake did not finish")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", "host1", ["127.0.0.1"])
    issue(tmp_path / "ca", "cli")
    init_ca(tmp_path / "other")
    issue(tmp_path / "other", "cli")
    return tmp_path


def _server(pki: Path) -> ssl.SSLContext:
    d = pki / "ca"
    ctx = server_ssl_context(d / "ca.crt", d / "host1.crt", d / "host1.key")
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    return ctx


def test_mutual_tls_with_certs_from_the_ca(pki: Path) -> None:
    d = pki / "ca"
    client = client_ssl_context(d / "ca.crt", d / "cli.crt", d / "cli.key")
    assert client.check_hostname
    _handshake(_server(pki), client, "host1")
    _handshake(_server(pki), client, "127.0.0.1")


def test_a_client_without_a_cert_is_refused(pki: Path) -> None:
    with pytest.raises(ssl.SSLError):
        _handshake(_server(pki), client_ssl_context(pki / "ca" / "ca.crt"), "host1")


def test_a_client_cert_from_another_ca_is_refused(pki: Path) -> None:
    o = pki / "other"
    client = client_ssl_context(pki / "ca" / "ca.crt", o / "cli.crt", o / "cli.key")
    with pytest.raises(ssl.SSLError):
        _handshake(_server(pki), client, "host1")


def test_a_server_with_the_wrong_name_is_refused(pki: Path) -> None:
    d = pki / "ca"
    client = client_ssl_context(d / "ca.crt", d / "cli.crt", d / "cli.key")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(_server(pki), client, "host2")


def test_unreadable_tls_files_are_config_errors(pki: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the CA certificate"):
        client_ssl_context(pki / "nope.crt")
    d = pki / "ca"
    with pytest.raises(ConfigError, match="cannot load the certificate"):
        server_ssl_context(d / "ca.crt", d / "host1.crt", d / "cli.key")
    with pytest.raises(UsageError, match="both"):
        client_ssl_context(d / "ca.crt", d / "cli.crt")
