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
from haul.source.criusource import CriuSource
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


def test_a_tls_page_server_listens_everywhere_and_checks_the_ca(tmp_path: Path) -> None:
    dest = CriuDestination(CRIU, tmp_path / "m1", listen=PageServer("10.77.0.2", 0), tls=TLS)
    o = dest.page_server_options(PageServer("10.77.0.2", 0)).to_proto(5, 6)
    assert not o.ps.HasField("address")
    assert (o.tls, o.tls_cacert, o.tls_cert, o.tls_key) == (
        True,
        "/pki/ca.crt",
        "/pki/host1.crt",
        "/pki/host1.key",
    )
    assert not o.HasField("tls_no_cn_verify")


def test_a_plain_page_server_listens_on_its_address(tmp_path: Path) -> None:
    dest = CriuDestination(CRIU, tmp_path / "m1", listen=PageServer("10.77.0.2", 0))
    o = dest.page_server_options(PageServer("10.77.0.2", 0)).to_proto(5, 6)
    assert o.ps.address == "10.77.0.2"
    assert not o.HasField("tls")


def test_a_tls_page_server_on_ipv6_is_refused_in_one_line(tmp_path: Path) -> None:
    dest = CriuDestination(CRIU, tmp_path / "m1", listen=PageServer("fd00::2", 0), tls=TLS)
    with pytest.raises(ConfigError, match="needs an IPv4 address, not fd00::2"):
        dest.page_server_options(PageServer("fd00::2", 0))


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
    assert lazy.tls == TLS
    pre = _source(tmp_path, TLS).pre_dump_options(1, DEST)
    assert pre.tls == TLS and pre.page_server == DEST


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
