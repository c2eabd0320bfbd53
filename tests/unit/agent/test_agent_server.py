"""haul.agent.server in this process: both listeners, the socket's mode, stale sockets."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from haul.agent.client import AgentAccess
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import TOKEN, make_config
from haul.agent.server import AgentServer, unix_socket
from haul.errors import ConfigError, PeerUnauthorized

MakeCtx = Callable[[AgentConfig], AgentContext]


def test_the_unix_socket_is_0600_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "run" / "agent.sock"
    first = unix_socket(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(ConfigError, match="another agent listens on"):
            unix_socket(path)
    finally:
        first.close()
    assert path.exists()  # a dead agent's socket file
    second = unix_socket(path)
    second.close()


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        unix_socket(path)
    assert path.read_text() == "precious"


@pytest.mark.asyncio
async def test_the_server_listens_on_tcp_and_unix_and_cleans_up(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    config = make_config(tmp_path, address="127.0.0.1", port=0)
    server = AgentServer(config, ctx=make_ctx(config))
    await server.start()
    try:
        assert server.port and server.urls == [
            f"http://127.0.0.1:{server.port}",
            f"unix://{config.socket}",
        ]
        async with AgentAccess(server.urls[0], token=TOKEN).client() as client:
            assert (await client.info()).host == "host1"
        async with AgentAccess(server.urls[0]).client() as client:
            with pytest.raises(PeerUnauthorized, match="needs a bearer token"):
                await client.info()
        async with AgentAccess(server.urls[1]).client() as client:
            if os.geteuid() == 0:
                assert (await client.info()).host == "host1"
            else:
                with pytest.raises(PeerUnauthorized, match="is not root"):
                    await client.info()
    finally:
        await server.aclose()
    assert not config.socket.exists()
    assert stat.S_IMODE(config.state_dir.stat().st_mode) == 0o700
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0, "the port is closed"


@pytest.mark.asyncio
async def test_a_port_in_use_is_a_config_error_and_leaves_nothing(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = make_config(tmp_path, address="127.0.0.1", port=busy.getsockname()[1])
        server = AgentServer(config, ctx=make_ctx(config))
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1 port"):
            await server.start()
    assert not config.socket.exists()
