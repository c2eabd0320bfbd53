"""The one client of the agents' API: the settings it is made from (AgentAccess), its
calls against the agent's app, and the agent's error codes as exception classes."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from haul.agent import wire
from haul.agent.app import MAX_BODY_BYTES, make_app
from haul.agent.client import AgentAccess
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import TOKEN, FakeStarter, ScriptedAgent, app_client, kill_workloads
from haul.criu.options import TlsFiles
from haul.errors import (
    PEER_ERRORS,
    BadWorkloadName,
    ConfigError,
    HaulError,
    MigrationEnded,
    NoSuchMigration,
    NoSuchWorkload,
    PastCommit,
    PeerBadRequest,
    PeerConflict,
    PeerCriuError,
    PeerError,
    PeerFailed,
    PeerNotFound,
    PeerUnauthorized,
    PeerUsageError,
    TransportError,
    UsageError,
    WorkloadExists,
    peer_error,
)
from haul.inventory import HostEntry
from haul.transport.treeplan import Node
from haul.transport.treescan import Kind

MakeCtx = Callable[[AgentConfig], AgentContext]
HAUL = Path(__file__).resolve().parents[3] / "haul"
#: codes haul raises on its side of a call, never sent by an agent
LOCAL_CODES = {"bad_decision"}

MIGRATION = {
    "id": "m1",
    "workload": "web1",
    "source": "host1",
    "dest": "host2",
    "phase": "freeze",
    "strategy": "stop-and-copy",
    "committed": False,
    "finished": False,
    "elapsed_s": 1.0,
    "stats": {
        "strategy": "stop-and-copy",
        "iterations": 0,
        "bytes_sent": 0,
        "dump_bytes": 0,
        "transfer_bytes": 0,
        "frozen_ms": None,
        "expected_downtime_ms": None,
    },
}


# -- the error codes -------------------------------------------------------------------


def _codes_the_agent_sends() -> set[str]:
    """Every wire code in haul's sources: the ApiError kinds' defaults, the families
    of HaulError and what any other maps to, and each ``code="..."`` and
    ``error_response(STATUS, "code"``."""
    codes = {kind.code for kind in (wire.ApiError, *wire.ApiError.__subclasses__())}
    codes |= {code for _, _, code in wire._FAMILIES}
    codes.add(wire.http_status_of(HaulError("any other"))[1])
    for path in HAUL.rglob("*.py"):
        text = path.read_text()
        codes |= set(re.findall(r'\bcode="([a-z0-9_]+)"', text))
        codes |= set(re.findall(r'error_response\(\s*\d+,\s*"([a-z0-9_]+)"', text))
    return codes - LOCAL_CODES


def test_every_code_an_agent_sends_has_its_class() -> None:
    sent = _codes_the_agent_sends()
    assert {
        "no_workload",
        "workload_exists",
        "no_migration",
        "past_commit",
        "usage",
        "criu",
        "unauthorized",
        "malformed_json",
        "internal",
    } <= sent  # the scan works
    assert sent - set(PEER_ERRORS) == set(), "codes an agent sends that no class stands for"
    assert set(PEER_ERRORS) - sent == set(), "classes for codes no agent sends"


def test_each_code_has_one_class() -> None:
    classes = list(PEER_ERRORS.values())
    assert sum(len(c.codes) for c in set(classes)) == len(PEER_ERRORS)


@pytest.mark.parametrize("code", sorted(PEER_ERRORS))
def test_one_function_makes_the_class_of_each_code(code: str) -> None:
    exc = peer_error(code, "agent x: it failed")
    assert type(exc) is PEER_ERRORS[code] and code in type(exc).codes
    assert isinstance(exc, PeerError) and exc.code == code
    assert exc.one_line() == "agent x: it failed"


def test_the_families_a_caller_acts_on() -> None:
    assert isinstance(peer_error("no_workload", "m"), PeerNotFound)
    assert isinstance(peer_error("no_migration", "m"), PeerNotFound)
    assert isinstance(peer_error("workload_exists", "m"), PeerConflict)
    assert isinstance(peer_error("past_commit", "m"), PeerConflict)
    assert isinstance(peer_error("bad_name", "m"), PeerBadRequest)
    assert isinstance(peer_error("usage", "m"), PeerBadRequest)
    assert isinstance(peer_error("criu", "m"), PeerFailed)
    assert not isinstance(peer_error("no_migration", "m"), PeerFailed)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, PeerBadRequest),
        (401, PeerUnauthorized),
        (404, PeerNotFound),
        (409, PeerConflict),
        (500, PeerFailed),
        (502, PeerFailed),
        (418, PeerError),
    ],
)
def test_an_unknown_code_goes_by_its_status(status: int, cls: type[PeerError]) -> None:
    exc = peer_error("http_teapot", "m", status=status)
    assert type(exc) is cls and exc.code == "http_teapot"
    assert type(peer_error("http_teapot", "m")) is PeerError


# -- the settings: AgentAccess ---------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://x", "host:7477", "unix://", "http://"])
def test_addresses_the_client_cannot_use(url: str) -> None:
    with pytest.raises(UsageError):
        AgentAccess(url)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"url": "http://h:1", "ca": Path("/ca")}, "TLS files .*ca.* not https"),
        (
            {"url": "unix:///s", "cert": Path("/c"), "key": Path("/k"), "ca": Path("/ca")},
            "not https",
        ),
        ({"url": "https://h:1", "ca": Path("/ca"), "cert": Path("/c")}, "both its cert and"),
        ({"url": "https://h:1", "cert": Path("/c"), "key": Path("/k")}, "goes with the CA"),
    ],
)
def test_tls_files_that_do_not_fit(fields: dict[str, object], expected: str) -> None:
    with pytest.raises(UsageError, match=expected):
        AgentAccess(**fields)  # type: ignore[arg-type]


def test_an_inventory_entry_gives_its_tls_files_only_over_https(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    files = {"ca": tmp_path / "ca.crt", "cert": tmp_path / "c.crt", "key": tmp_path / "c.key"}
    over_tls = AgentAccess.of_entry(
        HostEntry(url="https://10.0.0.1:7477", token_file=token, **files)
    )
    assert over_tls.token == "from-a-file" and not over_tls.peer
    assert over_tls.tls == TlsFiles(cacert=files["ca"], cert=files["cert"], key=files["key"])
    local = AgentAccess.of_entry(
        HostEntry(url="unix:///run/a.sock", token="t", **files), timeout_s=5
    )
    assert (local.ca, local.cert, local.key, local.tls) == (None, None, None, None)
    assert local.timeout_s == 5


def test_a_peer_is_called_with_this_agents_certificate_over_https_only() -> None:
    tls = TlsFiles(cacert=Path("/pki/ca.crt"), cert=Path("/pki/h1.crt"), key=Path("/pki/h1.key"))
    https = AgentAccess.of_peer("https://10.0.0.2:7477", token="t", tls=tls)
    assert https.peer and https.tls == tls and https.timeout_s is None
    plain = AgentAccess.of_peer("http://10.0.0.2:7477", token="t", tls=tls)
    assert plain.tls is None and plain.ssl_context() is None


def test_an_https_peer_needs_this_agents_certificate() -> None:
    bare = AgentAccess.of_peer("https://10.0.0.2:7477", token="t")
    with pytest.raises(ConfigError, match=r"has no certificate .*\[agent\.tls\]"):
        bare.client(name="source host2")
    # the CLI may call an https agent with the system's trust store
    assert AgentAccess("https://10.0.0.2:7477", token="t").ssl_context() is None


def test_the_tls_context_trusts_the_ca_and_shows_the_certificate(tmp_path: Path) -> None:
    from haul.agent.ca import init_ca, issue

    init_ca(tmp_path)
    pair = issue(tmp_path, "host1", ["127.0.0.1"])
    access = AgentAccess.of_peer(
        "https://127.0.0.1:7477",
        tls=TlsFiles(cacert=tmp_path / "ca.crt", cert=pair.cert, key=pair.key),
    )
    context = access.ssl_context()
    assert context is not None and context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


# -- the calls, against the agent's app ------------------------------------------------


@pytest.mark.asyncio
async def test_the_client_speaks_every_route(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    ctx = make_ctx(config)
    async with TestServer(make_app(ctx)) as server:
        url = f"http://{server.host}:{server.port}"
        try:
            async with AgentAccess(url, token=TOKEN).client() as agent:
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
                assert await agent.migrations.all() == []
                decision = await agent.migrations.decision("m-never")
                assert (decision.id, decision.decision) == ("m-never", "unknown")
                assert await agent.incoming.all() == []
        finally:
            await kill_workloads(ctx)


@pytest.mark.asyncio
async def test_error_answers_raise_the_class_of_the_agents_code(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    ctx = make_ctx(config)
    async with TestServer(make_app(ctx)) as server:
        url = f"http://{server.host}:{server.port}"
        try:
            async with AgentAccess(url, token=TOKEN).client() as agent:
                with pytest.raises(NoSuchWorkload) as info:
                    await agent.workload("nope")
                assert info.value.code == "no_workload"
                assert info.value.one_line() == (
                    f"agent {url}: GET /v1/workloads/nope: no workload 'nope' on this host"
                )
                await agent.start_workload("w1", ["sleep", "600"])
                with pytest.raises(WorkloadExists):
                    await agent.start_workload("w1", ["sleep", "600"])
                with pytest.raises((BadWorkloadName, PeerNotFound)):
                    await agent.workload("../etc")
                with pytest.raises(UsageError):
                    await agent.start_workload("../x", ["true"])  # refused before any call
                with pytest.raises(NoSuchMigration, match="no migration 'm9' on this host"):
                    await agent.migrations.get("m9")
                with pytest.raises(NoSuchMigration):
                    await agent.migrations.abort("m9")
                with pytest.raises(PeerUsageError, match="no incoming migration 'm9'"):
                    await agent.incoming.get("m9")
            async with AgentAccess(url, token="wrong").client(name="source host1") as agent:
                with pytest.raises(PeerUnauthorized) as denied:
                    await agent.info()
                assert denied.value.one_line() == "source host1: the bearer token is not valid"
                assert (await agent.health()).ok
        finally:
            await kill_workloads(ctx)


@pytest.mark.asyncio
async def test_no_agent_there_is_a_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        async with AgentAccess(f"http://127.0.0.1:{port}", token="t").client() as agent:
            with pytest.raises(TransportError, match=f"agent http://127.0.0.1:{port}: GET"):
                await agent.health()
        named = AgentAccess.of_peer(f"http://127.0.0.1:{port}").client(name="destination h2")
        async with named as agent:
            with pytest.raises(
                TransportError,
                match=rf"destination h2 unreachable \(http://"
                rf"127\.0\.0\.1:{port}\): POST /v1/incoming/m1/resume: ",
            ):
                await agent.incoming.resume("m1")
    async with AgentAccess("unix:///nonexistent/agent.sock").client() as agent:
        with pytest.raises(TransportError):
            await agent.health()


@pytest.mark.asyncio
async def test_an_agent_that_does_not_answer_in_time_is_a_transport_error() -> None:
    fake = ScriptedAgent({("GET", "/healthz"): [(200, {"ok": True})]}, delay_s=5)
    async with app_client(fake.app()) as http:
        url = str(http.make_url("")).rstrip("/")
        async with AgentAccess(url, timeout_s=0.2).client(name="source host1") as agent:
            with pytest.raises(
                TransportError,
                match=r"source host1 unreachable \(http://.*\): "
                r"GET /healthz: timed out after 0 s",
            ):
                await agent.health()


@pytest.mark.asyncio
async def test_an_answer_that_is_not_the_model_is_a_transport_error() -> None:
    fake = ScriptedAgent({("GET", "/v1/migrations/m1"): [(200, {"id": "m1"})]})
    async with app_client(fake.app()) as http:
        url = str(http.make_url("")).rstrip("/")
        async with AgentAccess(url).client(name="source host1") as agent:
            with pytest.raises(
                TransportError, match="source host1: unexpected answer for MigrationView"
            ):
                await agent.migrations.get("m1")


@pytest.mark.asyncio
async def test_uploads_stream_the_file_with_its_checksum_and_mode(tmp_path: Path) -> None:
    fake = ScriptedAgent(
        {
            ("PUT", "/v1/incoming/m1/images/pages-1.img"): [(200, {"bytes": 3})],
            ("PUT", "/v1/incoming/m1/data"): [(200, {"bytes": 3})],
            ("POST", "/v1/incoming/m1/entries"): [(200, {"ok": True})],
            ("POST", "/v1/incoming/m1/remove"): [(200, {"removed": 1})],
            ("POST", "/v1/incoming/m1/restore"): [(200, {"pid": 42, "duration_s": 0.5})],
        }
    )
    image = tmp_path / "pages-1.img"
    image.write_bytes(b"abc" * 500_000)  # more than one chunk
    async with app_client(fake.app()) as http:
        url = str(http.make_url("")).rstrip("/")
        async with AgentAccess.of_peer(url, token="peer-token").client("destination h2") as a:
            await a.incoming.put_image("m1", "pages-1.img", image, "ab" * 32)
            await a.incoming.put_data("m1", "sub/f", image, "cd" * 32, 0o640, (1000, 100))
            with image.open("rb") as opened:
                opened.seek(3)  # an open file goes from where it is
                await a.incoming.put_data("m1", "sub/g", opened, "ef" * 32, 0o600)
            await a.incoming.make_entries(
                "m1",
                [Node("sub", Kind.DIR, 0o2750, gid=5), Node("sub/l", Kind.SYMLINK, 0o777, "../x")],
            )
            assert await a.incoming.remove_entries("m1", ["old"]) == 1
            restored = await a.incoming.restore("m1", lazy=True)
    assert (restored.pid, restored.pages_bytes) == (42, 0)
    put_image, put_data, put_open, entries, remove, restore = fake.seen
    assert put_image.body == image.read_bytes()
    assert put_image.headers["X-Haul-SHA256"] == "ab" * 32
    assert put_image.headers["Authorization"] == "Bearer peer-token"
    assert (put_data.query, put_data.headers["X-Haul-Mode"]) == ({"path": "sub/f"}, "640")
    assert put_data.headers["X-Haul-Owner"] == "1000:100"
    assert put_open.body == image.read_bytes()[3:] and put_open.headers["X-Haul-Mode"] == "600"
    assert "X-Haul-Owner" not in put_open.headers  # none given: the agent's own
    assert json.loads(entries.body) == {
        "entries": [
            {"path": "sub", "kind": "dir", "mode": 0o2750, "uid": 0, "gid": 5},
            {
                "path": "sub/l",
                "kind": "symlink",
                "mode": 0o777,
                "target": "../x",
                "uid": 0,
                "gid": 0,
            },
        ]
    }
    assert remove.body == b'{"paths":["old"]}'
    assert restore.body == b'{"lazy":true}'


@pytest.mark.asyncio
async def test_many_entries_go_in_order_in_requests_the_agent_takes() -> None:
    fake = ScriptedAgent(
        {
            ("POST", "/v1/incoming/m1/entries"): [(200, {"ok": True})],
            ("POST", "/v1/incoming/m1/remove"): [(200, {"removed": 7})],
        }
    )
    nodes = [Node(f"d/{i:06}", Kind.DIR, 0o755) for i in range(25_000)]
    long_paths = [("x" * 200 + f"/{i}") for i in range(3_000)]
    async with app_client(fake.app()) as http:
        url = str(http.make_url("")).rstrip("/")
        async with AgentAccess(url).client("destination h2") as a:
            await a.incoming.make_entries("m1", nodes)
            removed = await a.incoming.remove_entries("m1", long_paths)
    makes = [json.loads(s.body)["entries"] for s in fake.seen if s.path.endswith("/entries")]
    removes = [json.loads(s.body)["paths"] for s in fake.seen if s.path.endswith("/remove")]
    assert len(makes) > 2 and len(removes) > 1
    assert [e["path"] for batch in makes for e in batch] == [n.path for n in nodes]
    assert [p for batch in removes for p in batch] == long_paths
    assert removed == 7 * len(removes)  # the answers add up
    assert max(len(s.body) for s in fake.seen) < MAX_BODY_BYTES // 2


@pytest.mark.asyncio
async def test_watch_asks_for_an_abort_once_when_cancelled() -> None:
    running, ended = (
        dict(MIGRATION),
        {**MIGRATION, "phase": "rolled-back", "finished": True, "outcome": "rolled-back"},
    )
    fake = ScriptedAgent(
        {
            ("GET", "/v1/migrations/m1"): [(200, running)] * 3 + [(200, ended)],
            ("POST", "/v1/migrations/m1/abort"): [(200, running)],
        }
    )
    said: list[str] = []
    seen: list[str] = []
    async with app_client(fake.app()) as http:
        url = str(http.make_url("")).rstrip("/")
        async with AgentAccess(url).client() as agent:
            task = asyncio.create_task(
                agent.migrations.watch(
                    "m1", on_view=lambda v: seen.append(v.phase), say=said.append, poll_s=0.05
                )
            )
            while len(fake.seen) < 2:
                await asyncio.sleep(0.01)
            task.cancel()  # as Ctrl-C does to asyncio.run's main task
            view = await task
    assert view.outcome == "rolled-back" and seen[-1] == "rolled-back"
    assert fake.calls().count(("POST", "/v1/migrations/m1/abort")) == 1
    assert said == ["aborting: the workload stays where it was"]


@pytest.mark.parametrize(
    ("code", "cls"), [("past_commit", PastCommit), ("migration_ended", MigrationEnded)]
)
@pytest.mark.asyncio
async def test_a_refused_abort_is_said_and_the_watch_goes_on(
    code: str, cls: type[PeerError]
) -> None:
    ended = {**MIGRATION, "phase": "done", "finished": True, "outcome": "done"}
    fake = ScriptedAgent(
        {
            ("GET", "/v1/migrations/m1"): [(200, MIGRATION)] * 3 + [(200, ended)],
            ("POST", "/v1/migrations/m1/abort"): [
                (409, {"error": {"code": code, "message": "it can only finish"}})
            ],
        }
    )
    said: list[str] = []
    async with app_client(fake.app()) as http:
        url = str(http.make_url("")).rstrip("/")
        async with AgentAccess(url).client() as agent:
            with pytest.raises(cls):
                await agent.migrations.abort("m1")
            task = asyncio.create_task(agent.migrations.watch("m1", say=said.append, poll_s=0.05))
            while len(fake.seen) < 3:
                await asyncio.sleep(0.01)
            task.cancel()
            assert (await task).outcome == "done"
    assert said == [f"not aborted: agent {url}: POST /v1/migrations/m1/abort: it can only finish"]


@pytest.mark.asyncio
async def test_the_agents_own_failures_keep_their_family() -> None:
    fake = ScriptedAgent(
        {
            ("POST", "/v1/incoming/m1/restore"): [
                (500, {"error": {"code": "criu", "message": "CRIU restore: errno 1"}})
            ]
        }
    )
    async with app_client(fake.app()) as http:
        url = str(http.make_url("")).rstrip("/")
        async with AgentAccess(url).client("destination host2") as agent:
            with pytest.raises(PeerCriuError) as info:
                await agent.incoming.restore("m1", lazy=False)
    assert info.value.one_line() == "destination host2: CRIU restore: errno 1"
