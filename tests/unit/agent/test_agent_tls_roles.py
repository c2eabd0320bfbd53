"""Roles from client certificates, and revocation, over a real TLS listener on loopback:
a certificate of haul's CA is not enough by itself; its name must be an operator's or a
peer's in this agent's configuration, and not revoked (docs/security.md)."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from haul.agent.ca import crl_serials, init_ca, issue, revoke, write_crl
from haul.agent.client import AgentAccess
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import make_config
from haul.agent.migration_models import IncomingCheck
from haul.agent.server import AgentServer
from haul.errors import ConfigError, PeerForbidden, PeerUnauthorized, TransportError, UsageError

CHECK = IncomingCheck(workload="web1", needed_bytes=0)
MakeCtx = Callable[[AgentConfig], AgentContext]


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    init_ca(directory)
    issue(directory, "host1", ["127.0.0.1"])
    for name in ("host2", "host9", "ops"):
        issue(directory, name)
    write_crl(directory)
    return directory


def _config(tmp_path: Path, ca: Path) -> AgentConfig:
    return make_config(
        tmp_path,
        address="127.0.0.1",
        port=0,
        criu="/bin/true",
        auth={"operators": ["ops"]},
        tls={
            "ca": str(ca / "ca.crt"),
            "cert": str(ca / "host1.crt"),
            "key": str(ca / "host1.key"),
            "crl": str(ca / "crl.pem"),
        },
        peers={"host2": {"url": "https://127.0.0.2:7477"}},
    )


@pytest_asyncio.fixture
async def server(make_ctx: MakeCtx, tmp_path: Path, ca: Path) -> AsyncIterator[AgentServer]:
    config = _config(tmp_path, ca)
    agent = AgentServer(config, ctx=make_ctx(config))
    await agent.start()
    try:
        yield agent
    finally:
        await agent.aclose()


def _as(server: AgentServer, ca: Path, name: str) -> AgentAccess:
    return AgentAccess(
        server.urls[0], ca=ca / "ca.crt", cert=ca / f"{name}.crt", key=ca / f"{name}.key"
    )


@pytest.mark.asyncio
async def test_an_operator_certificate_may_do_everything(server: AgentServer, ca: Path) -> None:
    async with _as(server, ca, "ops").client() as client:
        assert (await client.info()).host == "host1"
        assert await client.workloads() == []


@pytest.mark.asyncio
async def test_a_peer_certificate_reaches_only_the_peer_routes(
    server: AgentServer, ca: Path
) -> None:
    async with _as(server, ca, "host2").client() as client:
        await client.incoming.check(CHECK)
        with pytest.raises(PeerForbidden, match="host2"):
            await client.info()
        with pytest.raises(PeerForbidden):
            await client.start_workload("w", ["true"])


@pytest.mark.asyncio
async def test_a_certificate_of_the_ca_naming_no_peer_is_refused(
    server: AgentServer, ca: Path
) -> None:
    async with _as(server, ca, "host9").client() as client:
        with pytest.raises(PeerUnauthorized, match="host9 is neither an operator nor a peer"):
            await client.incoming.check(CHECK)


@pytest.mark.asyncio
async def test_a_revoked_certificate_is_refused_from_the_next_request_on(
    server: AgentServer, ca: Path
) -> None:
    async with _as(server, ca, "host2").client() as client:
        await client.incoming.check(CHECK)
    revoke(ca, "host2")
    async with _as(server, ca, "host2").client() as client:
        with pytest.raises((PeerUnauthorized, TransportError), match="revoked"):
            await client.incoming.check(CHECK)
    async with _as(server, ca, "ops").client() as client:  # the others still get in
        await client.info()


def test_revoke_signs_a_crl_naming_the_serial(ca: Path) -> None:
    from cryptography import x509

    serial = x509.load_pem_x509_certificate((ca / "host9.crt").read_bytes()).serial_number
    assert crl_serials(ca / "crl.pem", ca / "ca.crt") == frozenset()
    revoke(ca, "host9")
    revoke(ca, "host9")  # again: no change, no error
    assert crl_serials(ca / "crl.pem", ca / "ca.crt") == frozenset({serial})
    st = (ca / "crl.pem").stat()
    assert stat.S_IMODE(st.st_mode) == 0o644
    with pytest.raises(UsageError, match="no certificate host5"):
        revoke(ca, "host5")


def test_a_crl_another_ca_signed_is_refused(tmp_path: Path, ca: Path) -> None:
    other = tmp_path / "other"
    init_ca(other)
    write_crl(other)
    with pytest.raises(ConfigError, match="not signed by"):
        crl_serials(other / "crl.pem", ca / "ca.crt")


def test_the_agent_refuses_a_key_others_can_read(tmp_path: Path, ca: Path) -> None:
    os.chmod(ca / "host1.key", 0o644)
    with pytest.raises(ConfigError, match=r"agent\.tls\.key: .*host1\.key is readable by others"):
        _config(tmp_path, ca)
    os.chmod(ca / "host1.key", 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        _config(tmp_path, ca)


def test_haul_ca_revoke_names_a_certificate_by_name_or_serial(tmp_path: Path) -> None:
    from cryptography import x509
    from typer.testing import CliRunner

    from haul.cli import app

    d = str(tmp_path / "pki")
    runner = CliRunner()
    for args in (["init"], ["issue", "host2"], ["issue", "host3"], ["crl"]):
        done = runner.invoke(app, ["ca", *args, "--dir", d])
        assert done.exit_code == 0, done.output
    serials = {
        name: x509.load_pem_x509_certificate((tmp_path / "pki" / f"{name}.crt").read_bytes())
        for name in ("host2", "host3")
    }
    assert runner.invoke(app, ["ca", "revoke", "host2", "--dir", d]).exit_code == 0
    hex3 = f"{serials['host3'].serial_number:x}"
    assert runner.invoke(app, ["ca", "revoke", "--serial", hex3, "--dir", d]).exit_code == 0
    assert crl_serials(tmp_path / "pki" / "crl.pem", tmp_path / "pki" / "ca.crt") == {
        c.serial_number for c in serials.values()
    }
    bad = runner.invoke(app, ["ca", "revoke", "--serial", "xyz", "--dir", d])
    assert isinstance(bad.exception, UsageError) and "not a hexadecimal" in str(bad.exception)
