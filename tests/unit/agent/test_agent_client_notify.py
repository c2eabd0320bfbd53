"""The agent's HTTP client against a test server, and sd_notify against a datagram socket."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from haul.agent.app import make_app
from haul.agent.client import AgentClient
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import TOKEN, FakeStarter, kill_workloads
from haul.agent.sdnotify import Notifier
from haul.errors import PeerError, TransportError, UsageError

MakeCtx = Callable[[AgentConfig], AgentContext]


@pytest.mark.asyncio
async def test_the_client_speaks_every_route(make_ctx: MakeCtx, config: AgentConfig,
                                             starter: FakeStarter) -> None:
    ctx = make_ctx(config)
    async with TestServer(make_app(ctx)) as server:
        url = f"http://{server.host}:{server.port}"
        try:
            async with AgentClient(url, token=TOKEN) as agent:
                assert (await agent.health()).ok
                assert (await agent.readiness()).ready
                assert (await agent.info()).host == "host1"
                assert "haul_agent_requests_total" in await agent.metrics_text()
                assert "/v1/workloads" in (await agent.openapi())["paths"]
                view = await agent.start_workload("w1", ["sleep", "600"])
                assert view.status.value == "running"
                assert [w.name for w in await agent.workloads()] == ["w1"]
                assert (await agent.workload("w1")).root_pid == view.root_pid
                assert (await agent.delete_workload("w1")).status.value == "gone"
                assert await agent.workloads() == []
        finally:
            await kill_workloads(ctx)


@pytest.mark.asyncio
async def test_error_answers_become_peer_errors_with_the_agents_code(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    ctx = make_ctx(config)
    async with TestServer(make_app(ctx)) as server:
        url = f"http://{server.host}:{server.port}"
        try:
            async with AgentClient(url, token=TOKEN) as agent:
                with pytest.raises(PeerError) as info:
                    await agent.workload("nope")
                assert info.value.code == "no_workload"
                assert info.value.one_line() == (
                    f"agent {url}: GET /v1/workloads/nope: no workload 'nope' on this host")
                await agent.start_workload("w1", ["sleep", "600"])
                with pytest.raises(PeerError) as info:
                    await agent.start_workload("w1", ["sleep", "600"])
                assert info.value.code == "workload_exists"
                with pytest.raises(PeerError) as info:
                    await agent.workload("../etc")
                assert info.value.code in ("bad_name", "not_found")
                with pytest.raises(UsageError):
                    await agent.start_workload("../x", ["true"])
            async with AgentClient(url, token="wrong") as agent:
                with pytest.raises(PeerError) as info:
                    await agent.info()
                assert info.value.code == "unauthorized"
                assert (await agent.health()).ok
        finally:
            await kill_workloads(ctx)


@pytest.mark.asyncio
async def test_no_agent_there_is_a_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        async with AgentClient(f"http://127.0.0.1:{port}", token="t") as agent:
            with pytest.raises(TransportError, match=f"agent http://127.0.0.1:{port}: GET"):
                await agent.health()
    async with AgentClient("unix:///nonexistent/agent.sock") as agent:
        with pytest.raises(TransportError):
            await agent.health()


@pytest.mark.parametrize("url", ["ftp://x", "host:7477", "unix://", "http://"])
def test_addresses_the_client_cannot_use(url: str) -> None:
    with pytest.raises(UsageError):
        AgentClient(url)


# ------------------------------------------------------------------ sd_notify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_ready_is_sent_to_notify_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "OTHER": "x"}
    notifier = Notifier.from_environ(env)
    assert env == {"OTHER": "x"}, "children must not inherit NOTIFY_SOCKET"
    assert notifier.ready("listening on http://127.0.0.1:1")
    lines = sock.recv(4096).decode().split("\n")
    assert lines == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=listening on http://127.0.0.1:1"]
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_an_abstract_notify_socket() -> None:
    name = "haul-test-" + secrets.token_hex(4)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).ready()
        assert sock.recv(4096).startswith(b"READY=1\n")


def test_without_notify_socket_nothing_happens(tmp_path: Path) -> None:
    assert not Notifier.from_environ({}).ready()
    assert not Notifier(str(tmp_path / "nobody-listens")).ready()
    assert not Notifier("vsock:2:1234").ready()
