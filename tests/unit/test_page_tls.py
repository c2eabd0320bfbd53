"""TLS on CRIU's page channels, wired without running CRIU: which options each side
gives CRIU, which arguments the lazy-pages daemon gets, and how the two agents agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from haul.agent.client import AgentAccess
from haul.agent.jobs import _peer_client
from haul.criu.options import EVERY_ADDRESS, CriuOptions, PageServer, TlsFiles
from haul.criu.service import Criu
from haul.dest.criudest import CriuDestination
from haul.dest.incoming import IncomingRegistry
from haul.engine.phases import Strategy
from haul.errors import ConfigError, UsageError
from haul.runtime.runc import Runc
from haul.source.criusource import CriuSource
from haul.source.runcsource import RuncSource
from haul.workload.proctree import ProcessTree

TLS = TlsFiles(cacert=Path("/pki/ca.crt"), cert=Path("/pki/host1.crt"), key=Path("/pki/host1.key"))
CRIU = Criu("/usr/local/sbin/criu")


def test_every_address_sends_no_address_to_criu() -> None:
    o = CriuOptions(
        images_dir=Path("/i"), page_server=PageServer(EVERY_ADDRESS, 0), tls=TLS
    ).to_proto(5, None)
    assert o.HasField("ps") and o.ps.port == 0
    assert not o.ps.HasField("address")  # CRIU then listens on every IPv4 address
    named = CriuOptions(images_dir=Path("/i"), page_server=PageServer("10.77.0.2", 0)).to_proto(
        5, None
    )
    assert named.ps.address == "10.77.0.2"


def test_a_tls_page_server_listens_on_its_address_and_checks_the_ca(tmp_path: Path) -> None:
    """Bound to the address facing the peers; the sender's certificate is checked against
    the CA and its revocation list, not against the listener's own address."""
    tls = TlsFiles(TLS.cacert, TLS.cert, TLS.key, cacrl=Path("/pki/crl.pem"))
    dest = CriuDestination(CRIU, tmp_path / "m1", listen=PageServer("10.77.0.2", 0), tls=tls)
    o = dest.page_server_options(PageServer("10.77.0.2", 0)).to_proto(5, 6)
    assert o.ps.address == "10.77.0.2"
    assert (o.tls, o.tls_cacert, o.tls_cert, o.tls_key, o.tls_cacrl) == (
        True,
        "/pki/ca.crt",
        "/pki/host1.crt",
        "/pki/host1.key",
        "/pki/crl.pem",
    )
    assert o.tls_no_cn_verify


def test_a_plain_page_server_listens_on_its_address(tmp_path: Path) -> None:
    dest = CriuDestination(CRIU, tmp_path / "m1", listen=PageServer("10.77.0.2", 0))
    o = dest.page_server_options(PageServer("10.77.0.2", 0)).to_proto(5, 6)
    assert o.ps.address == "10.77.0.2"
    assert not o.HasField("tls")


def test_a_tls_page_server_on_ipv6_listens_on_its_address(tmp_path: Path) -> None:
    dest = CriuDestination(CRIU, tmp_path / "m1", listen=PageServer("fd00::2", 0), tls=TLS)
    o = dest.page_server_options(PageServer("fd00::2", 0)).to_proto(5, 6)
    assert o.ps.address == "fd00::2" and o.tls


def test_the_lazy_pages_daemon_checks_the_sources_name(tmp_path: Path) -> None:
    dest = CriuDestination(
        CRIU, tmp_path / "m1", lazy_source=PageServer("10.77.0.1", 23456), tls=TLS
    )
    argv = dest.lazy_pages_daemon().argv(7)
    assert argv[argv.index("--address") + 1] == "10.77.0.1"
    assert argv[argv.index("--port") + 1] == "23456"
    i = argv.index("--tls")
    assert argv[i : i + 7] == [
        "--tls",
        "--tls-cacert",
        "/pki/ca.crt",
        "--tls-cert",
        "/pki/host1.crt",
        "--tls-key",
        "/pki/host1.key",
    ]
    assert "--tls-no-cn-verify" not in argv
    plain = CriuDestination(CRIU, tmp_path / "m2", lazy_source=PageServer("10.77.0.1", 23456))
    assert "--tls" not in plain.lazy_pages_daemon().argv(7)


def _source(tmp_path: Path, tls: TlsFiles | None) -> CriuSource:
    return CriuSource(
        CRIU,
        ProcessTree(4242),
        tmp_path / "out",
        tls=tls,
        lazy_listen=PageServer("10.77.0.1", 23456),
    )


DEST = PageServer("10.77.0.2", 40001)


def test_the_final_dump_sends_pages_over_tls(tmp_path: Path) -> None:
    o = _source(tmp_path, TLS).dump_options(lazy=False, dest_page_server=DEST)
    assert o.page_server == DEST and o.tls == TLS
    lazy = _source(tmp_path, TLS).dump_options(lazy=True, dest_page_server=DEST)
    assert lazy.page_server == PageServer("10.77.0.1", 23456) and lazy.lazy_pages
    assert lazy.tls == TLS.listening()  # it listens: the CA checks the destination
    assert o.tls is not None and not o.tls.no_cn_verify  # it connects: the name counts
    pre = _source(tmp_path, TLS).pre_dump_options(1, DEST)
    assert pre.tls == TLS and pre.page_server == DEST


def test_the_lazy_page_server_is_bound_to_its_address_by_a_config_file(tmp_path: Path) -> None:
    """CRIU's RPC takes no address for a lazy dump's page server; a CRIU configuration
    file of the dump's own does."""
    lazy = _source(tmp_path, TLS).dump_options(lazy=True)
    assert lazy.config_file == tmp_path / "out" / "work" / "lazy-server.conf"
    assert lazy.to_proto(5, 6).config_file == str(lazy.config_file)
    assert (
        _source(tmp_path, TLS).dump_options(lazy=False, dest_page_server=DEST).config_file is None
    )
    everywhere = CriuSource(
        CRIU, ProcessTree(4242), tmp_path / "o2", lazy_listen=PageServer(EVERY_ADDRESS, 1)
    )
    assert everywhere.dump_options(lazy=True).config_file is None


def test_tls_as_criu_configuration_file_lines() -> None:
    tls = TlsFiles(Path("/p/ca.crt"), Path("/p/h.crt"), Path("/p/h.key"), Path("/p/crl.pem"))
    assert tls.config_lines() == [
        "tls",
        "tls-cacert /p/ca.crt",
        "tls-cert /p/h.crt",
        "tls-key /p/h.key",
        "tls-cacrl /p/crl.pem",
    ]
    assert tls.listening().config_lines()[-1] == "tls-no-cn-verify"
    with pytest.raises(ConfigError, match="no blanks"):
        TlsFiles(Path("/my pki/ca.crt"), Path("/p/h.crt"), Path("/p/h.key")).config_lines()


def test_no_tls_when_the_pages_stay_here_or_the_agent_has_no_certificate(
    tmp_path: Path,
) -> None:
    assert _source(tmp_path, TLS).dump_options(lazy=False).tls is None
    assert _source(tmp_path, TLS).pre_dump_options(1).tls is None
    plain = _source(tmp_path, None).dump_options(lazy=False, dest_page_server=DEST)
    assert plain.tls is None and plain.page_server is not None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("ours", "asked", "expected"),
    [
        (None, True, "this agent has no certificates"),
        (TLS, False, "takes pages only over TLS"),
    ],
)
async def test_both_agents_must_agree_on_tls_before_anything_is_made(
    tmp_path: Path,
    ours: TlsFiles | None,
    asked: bool,
    expected: str,
) -> None:
    registry = IncomingRegistry(
        CRIU,
        tmp_path / "incoming",
        data_root=tmp_path / "data",
        listen_address="10.77.0.2",
        tls=ours,
    )
    with pytest.raises(UsageError, match=expected):
        await registry.open("m1", "web1", Strategy.STOP_AND_COPY, 0, None, page_tls=asked)
    assert not (tmp_path / "incoming").exists() and not (tmp_path / "data").exists()


@pytest.mark.asyncio
async def test_an_https_peer_is_called_with_this_agents_certificate(tmp_path: Path) -> None:
    from haul.agent.ca import init_ca, issue

    init_ca(tmp_path)
    pair = issue(tmp_path, "host1", ["10.77.0.1"])
    tls = TlsFiles(cacert=tmp_path / "ca.crt", cert=pair.cert, key=pair.key)
    async with _peer_client(
        AgentAccess.of_peer("https://10.77.0.2:7477", tls=tls), "host2"
    ) as client:
        assert client.access.tls == tls
    async with _peer_client(
        AgentAccess.of_peer("http://10.77.0.2:7477", token="t", tls=tls), "host2"
    ) as client:
        assert client.access.tls is None  # a plain peer: plain pages too


@pytest.mark.asyncio
async def test_an_https_peer_without_a_certificate_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"https://10\.77\.0\.2:7477 is https, but this agent "
        r"has no certificate .*\[agent\.tls\]",
    ):
        async with _peer_client(AgentAccess.of_peer("https://10.77.0.2:7477", token="t"), "host2"):
            pass


def test_a_page_server_asks_for_no_notifications(tmp_path: Path) -> None:
    """It outlives its request: a notification sent after the answer would find the RPC
    session closed, and CRIU would end the page server for it."""
    dest = CriuDestination(CRIU, tmp_path / "m1", listen=PageServer("10.77.0.2", 0))
    o = dest.page_server_options(PageServer("10.77.0.2", 0)).to_proto(5, 6)
    assert not o.notify_scripts


def _runc_source(tmp_path: Path, tls: TlsFiles | None, owned: bool = True) -> RuncSource:
    return RuncSource(
        CRIU,
        Runc(tmp_path / "runc"),
        "c1",
        tmp_path / "out",
        criu_config=tmp_path / "bundle" / "criu.conf" if owned else None,
        lazy_listen=PageServer("10.77.0.1", 23456),
        tls=tls,
    )


def test_a_containers_pages_go_over_tls_through_crius_configuration_files(
    tmp_path: Path,
) -> None:
    """runc gives CRIU no TLS options: haul's CRIU configuration files do, the one in
    runc's environment (every container) and the one the bundle names (haul's own)."""
    source = _runc_source(tmp_path, TLS)
    source._write_criu_config(page_server=True, lazy=False)
    sent = source.env_config.read_text().splitlines()
    assert sent[sent.index("tls") :] == [
        "tls",
        "tls-cacert /pki/ca.crt",
        "tls-cert /pki/host1.crt",
        "tls-key /pki/host1.key",
    ]  # it connects: the destination's certificate must name its address
    assert (tmp_path / "bundle" / "criu.conf").read_text() == source.env_config.read_text()
    source._write_criu_config(page_server=False, lazy=True)
    served = source.env_config.read_text().splitlines()
    assert {"tls", "tls-no-cn-verify", "address 10.77.0.1"} <= set(served)
    source._write_criu_config(page_server=False, lazy=False)  # pages stay here
    assert "tls" not in source.env_config.read_text().splitlines()
    plain = _runc_source(tmp_path / "p", None, owned=False)
    plain._write_criu_config(page_server=True, lazy=True)
    assert "tls" not in plain.env_config.read_text().splitlines()


@pytest.mark.asyncio
async def test_an_arriving_container_gets_the_agents_tls_when_asked(tmp_path: Path) -> None:
    from haul.dest.fakes import FakeArrivals

    arrivals = FakeArrivals(CRIU, tmp_path / "homes")
    registry = IncomingRegistry(
        CRIU,
        tmp_path / "incoming",
        data_root=tmp_path / "data",
        listen_address="10.77.0.2",
        tls=TLS,
        arrivals=arrivals,
    )
    await registry.open(
        "m1", "c1", Strategy.POST_COPY, 0, PageServer("10.77.0.1", 1), page_tls=True, container={}
    )
    assert arrivals.tls == TLS
