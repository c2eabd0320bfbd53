"""A real agent (``python -m haul.agent``) on 127.0.0.1 with mutual TLS from a CA made in a
temporary directory, its unix socket, real workload trees and the real CRIU (root).

The test plays systemd: it hands the agent a NOTIFY_SOCKET and waits for READY=1, whose
STATUS line says which port the agent got. Every agent, workload and socket a test
starts is stopped or removed when the test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haul.agent.ca import init_ca, issue
from haul.agent.client import AgentAccess, AgentClient
from haul.agent.workloads import start_ticks
from haul.errors import (
    NoSuchWorkload,
    PeerError,
    PeerForbidden,
    PeerUnauthorized,
    TransportError,
)
from haul.procfs import alive, ns_inode

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]  # the operator's (auth.operators)
    stranger: tuple[Path, Path]  # a client cert from another CA
    peer: tuple[Path, Path]  # host2's: a peer of the agent
    nobody: tuple[Path, Path]  # of the CA, but neither an operator nor a peer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ours, other = root / "ours", root / "other"
    init_ca(ours)
    server = issue(ours, "host1", ["127.0.0.1"])
    client = issue(ours, "cli")
    peer, nobody = issue(ours, "host2"), issue(ours, "host9")
    init_ca(other)
    stranger = issue(other, "cli")
    return Pki(
        ca=ours / "ca.crt",
        server=(server.cert, server.key),
        client=(client.cert, client.key),
        stranger=(stranger.cert, stranger.key),
        peer=(peer.cert, peer.key),
        nobody=(nobody.cert, nobody.key),
    )


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    url: str
    socket: Path
    state_dir: Path
    log: Path
    notify: socket.socket

    def log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""

    def stop(self) -> int:
        """SIGTERM the agent and wait for it; SIGKILL it if it does not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _write_config(dir: Path, pki: Pki) -> Path:
    token = dir / "token"
    token.write_text("integration-token\n")
    token.chmod(0o600)
    config = dir / "haul.toml"
    config.write_text(
        "[agent]\n"
        'host = "host1"\n'
        'address = "127.0.0.1"\n'
        "port = 0\n"
        f'socket = "{dir / "run" / "agent.sock"}"\n'
        f'state_dir = "{dir / "state"}"\n'
        "min_free_mib = 1\n"
        "[agent.auth]\n"
        'token_file = "token"\n'
        'operators = ["cli"]\n'
        "[agent.tls]\n"
        f'ca = "{pki.ca}"\ncert = "{pki.server[0]}"\nkey = "{pki.server[1]}"\n'
        "[agent.peers.host2]\n"
        'url = "https://127.0.0.2:7477"\n'
    )
    return config


def _start_agent(dir: Path) -> Agent:
    notify_path = dir / f"notify-{time.monotonic_ns()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    log = dir / "agent.log"
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "haul.agent",
                "--config",
                str(dir / "haul.toml"),
                "--log-level",
                "debug",
            ],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        )
    agent = Agent(
        proc=proc,
        url="",
        socket=dir / "run" / "agent.sock",
        state_dir=dir / "state",
        log=log,
        notify=notify,
    )
    try:
        agent.url = _wait_ready(agent)
    except BaseException:
        agent.stop()
        notify.close()
        raise
    return agent


def _wait_ready(agent: Agent) -> str:
    """Wait for READY=1 from the agent; return the https URL its STATUS line gives."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            pytest.fail(f"the agent exited with {agent.proc.returncode}: {agent.log_tail()}")
        try:
            message = agent.notify.recv(4096).decode()
        except TimeoutError:
            continue
        fields = dict(line.split("=", 1) for line in message.splitlines())
        if fields.get("READY") == "1":
            assert fields["MAINPID"] == str(agent.proc.pid)
            urls = fields["STATUS"].removeprefix("listening on ").split(", ")
            assert f"unix://{agent.socket}" in urls
            return next(u for u in urls if u.startswith("https://127.0.0.1:"))
    pytest.fail(f"the agent was not ready within {READY_TIMEOUT_S} s: {agent.log_tail()}")


def _kill_registered_workloads(state_dir: Path) -> None:
    """SIGKILL every workload the registry lists that is still the process it started."""
    registry = state_dir / "workloads.json"
    if not registry.exists():
        return
    for w in json.loads(registry.read_text())["workloads"]:
        pid = w["root_pid"]
        if start_ticks(pid) == w["start_ticks"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def agent_dir(tmp_path: Path, pki: Pki) -> Iterator[Path]:
    _write_config(tmp_path, pki)
    yield tmp_path
    _kill_registered_workloads(tmp_path / "state")


@pytest.fixture
def agent(agent_dir: Path) -> Iterator[Agent]:
    running = _start_agent(agent_dir)
    try:
        yield running
    finally:
        running.stop()
        running.notify.close()
        _kill_registered_workloads(running.state_dir)
        with contextlib.suppress(FileNotFoundError):
            running.socket.unlink()


def _tls_client(agent: Agent, pki: Pki, cert: tuple[Path, Path] | None) -> AgentClient:
    crt, key = cert if cert is not None else (None, None)
    return AgentAccess(agent.url, ca=pki.ca, cert=crt, key=key, timeout_s=20).client()


@pytest.mark.asyncio
async def test_a_client_with_a_cert_from_the_ca_is_served(agent: Agent, pki: Pki) -> None:
    async with _tls_client(agent, pki, pki.client) as client:
        assert (await client.health()).ok
        ready = await client.readiness()
        assert ready.ready and ready.failing == [], ready.checks
        info = await client.info()
        assert info.host == "host1"
        assert info.criu is not None and info.criu.check_ok
        assert (info.criu.major, info.criu.minor) >= (4, 1)
        assert info.cpu.flags
        assert await client.workloads() == []
    # the agent wrote nothing but its state directory and its socket (and CRIU's scratch
    # directory, inside the state directory, is gone again)
    made = {p.name for p in agent.state_dir.parent.iterdir() if not p.name.startswith("notify-")}
    assert made == {"haul.toml", "token", "agent.log", "run", "state"}
    assert [p.name for p in (agent.state_dir.parent / "run").iterdir()] == ["agent.sock"]
    assert list((agent.state_dir / "tmp").iterdir()) == []
    assert stat.S_IMODE(agent.state_dir.stat().st_mode) == 0o700


@pytest.mark.asyncio
async def test_a_client_without_a_cert_is_refused(agent: Agent, pki: Pki) -> None:
    async with _tls_client(agent, pki, None) as client:
        with pytest.raises((TransportError, PeerError)) as info:
            await client.info()
        if isinstance(info.value, PeerError):
            assert isinstance(info.value, PeerUnauthorized)
    assert agent.proc.poll() is None


@pytest.mark.asyncio
async def test_a_client_cert_from_another_ca_is_refused(agent: Agent, pki: Pki) -> None:
    async with _tls_client(agent, pki, pki.stranger) as client:
        with pytest.raises(TransportError):
            await client.info()
    # and plain HTTP to the TLS port gets nothing either
    async with AgentAccess(
        agent.url.replace("https", "http"), token="integration-token", timeout_s=5
    ).client() as client:
        with pytest.raises((TransportError, PeerError)):
            await client.info()
    assert agent.proc.poll() is None


@pytest.mark.asyncio
async def test_a_peers_certificate_may_not_act_as_an_operator(agent: Agent, pki: Pki) -> None:
    """Any certificate of haul's CA is not enough: a peer's reaches only the peer routes
    (docs/security.md), one naming no peer and no operator nothing at all."""
    async with _tls_client(agent, pki, pki.peer) as client:
        with pytest.raises(PeerForbidden, match="peer host2 may not call POST /v1/workloads"):
            await client.start_workload("evil", ["sh", "-c", "touch /tmp/haul-pwned"])
        with pytest.raises(PeerForbidden):
            await client.adopt(os.getpid())
        with pytest.raises(PeerForbidden):
            await client.workloads()
    async with _tls_client(agent, pki, pki.nobody) as client:
        with pytest.raises(PeerUnauthorized, match="host9 is neither an operator nor a peer"):
            await client.workloads()
    async with _tls_client(agent, pki, pki.client) as client:
        assert await client.workloads() == []
    assert agent.proc.poll() is None


@pytest.mark.asyncio
async def test_the_unix_socket_serves_root_without_a_token(agent: Agent) -> None:
    st = agent.socket.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    async with AgentAccess(f"unix://{agent.socket}").client() as client:
        assert (await client.info()).host == "host1"
        assert (await client.readiness()).ready


@pytest.mark.asyncio
async def test_a_workload_is_started_listed_and_killed(agent: Agent, pki: Pki) -> None:
    async with _tls_client(agent, pki, pki.client) as client:
        view = await client.start_workload("sleeper", ["sleep", "600"])
        pid = view.root_pid
        try:
            assert view.status.value == "running"
            assert alive(pid)
            assert ns_inode(pid, "pid") != ns_inode(os.getpid(), "pid"), "its own PID namespace"
            listed = await client.workloads()
            assert [(w.name, w.root_pid, w.status.value) for w in listed] == [
                ("sleeper", pid, "running")
            ]
            gone = await client.delete_workload("sleeper")
            assert gone.status.value == "gone"
            assert not alive(pid)
            assert await client.workloads() == []
            with pytest.raises(NoSuchWorkload):
                await client.workload("sleeper")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.asyncio
async def test_sigterm_closes_cleanly_and_a_restarted_agent_knows_its_workloads(
    agent_dir: Path,
) -> None:
    first = _start_agent(agent_dir)
    second: Agent | None = None
    try:
        async with AgentAccess(f"unix://{first.socket}").client() as client:
            view = await client.start_workload("survivor", ["sleep", "600"])
        assert first.stop() == 0, first.log_tail()
        assert first.notify.recv(4096) == b"STOPPING=1"
        assert not first.socket.exists(), "the agent removes its socket"
        assert alive(view.root_pid), "workloads outlive the agent"

        second = _start_agent(agent_dir)
        async with AgentAccess(f"unix://{second.socket}").client() as client:
            listed = await client.workloads()
            assert [(w.name, w.root_pid, w.status.value) for w in listed] == [
                ("survivor", view.root_pid, "running")
            ]
            await client.delete_workload("survivor")
        assert not alive(view.root_pid)
        assert second.stop() == 0, second.log_tail()
    finally:
        for a in (first, second):
            if a is not None:
                a.stop()
                a.notify.close()
