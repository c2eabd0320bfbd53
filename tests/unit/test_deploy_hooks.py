"""deploy/hooks/: each example run as haul runs it (ScriptHooks), on loopback only."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.cutover.hooks import HookError, HookScript, ScriptHooks
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookFacts, HookPoint

HOOKS = Path(__file__).resolve().parents[2] / "deploy" / "hooks"
PHASES = {
    HookPoint.PRE_MIGRATE: Phase.PREPARE,
    HookPoint.PRE_FREEZE: Phase.FREEZE,
    HookPoint.RESTORED: Phase.RESTORE,
    HookPoint.POST_COMMIT: Phase.COMMIT,
    HookPoint.ROLLED_BACK: Phase.ROLLING_BACK,
}


def facts(point: HookPoint, dest_address: str = "127.0.0.1", reason: str = "") -> HookFacts:
    return HookFacts(
        "m42",
        "web1",
        "host1",
        "host2",
        "127.0.0.2",
        dest_address,
        Strategy.STOP_AND_COPY,
        PHASES[point],
        reason,
    )


async def fire(name: str, point: HookPoint, timeout_s: float = 30.0, **changes: str) -> None:
    await ScriptHooks([HookScript(HOOKS / name, timeout_s)]).fire(point, facts(point, **changes))


def test_every_example_is_executable_and_documented() -> None:
    readme = (HOOKS / "README.md").read_text()
    examples = sorted(p.name for p in HOOKS.iterdir() if p.name != "README.md")
    assert examples == ["gate-tcp", "hold", "log-event", "wait-http"]
    for name in examples:
        assert (HOOKS / name).stat().st_mode & 0o111, f"{name} is not executable"
        assert f"`{name}`" in readme


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on (it was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- log-event -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_log_event_appends_one_line_per_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "logs" / "hooks.log"  # the directory is made
    monkeypatch.setenv("HAUL_HOOK_LOG", str(log))
    for point in HookPoint:
        reason = "hooks: gate said no" if point is HookPoint.ROLLED_BACK else ""
        await fire("log-event", point, reason=reason)
    lines = log.read_text().splitlines()
    assert [line.split()[1] for line in lines] == [p.value for p in HookPoint]
    stamp, point, rest = lines[-1].split(" ", 2)
    assert stamp[:2] == "20" and "T" in stamp
    assert rest == (
        "id=m42 workload=web1 from=host1 to=host2 source_address=127.0.0.2 "
        "dest_address=127.0.0.1 strategy=stop-and-copy phase=rolling-back "
        "reason=hooks: gate said no"
    )


@pytest.mark.asyncio
async def test_log_event_fails_in_one_line_when_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HAUL_HOOK_LOG", str(tmp_path / "file" / "hooks.log"))
    with pytest.raises(HookError, match=r"log-event at pre-migrate exited with status 1"):
        await fire("log-event", HookPoint.PRE_MIGRATE)


# -- hold -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hold_refuses_at_pre_migrate_while_the_file_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAUL_HOLD_DIR", str(tmp_path))
    await fire("hold", HookPoint.PRE_MIGRATE)
    (tmp_path / "web1").write_text("quarterly close until Friday\n")
    with pytest.raises(HookError) as raised:
        await fire("hold", HookPoint.PRE_MIGRATE)
    assert str(raised.value).endswith(
        "hold at pre-migrate exited with status 1: web1 is on hold (quarterly close until "
        f"Friday); remove {tmp_path}/web1 to let it move"
    )
    for point in HookPoint:  # only pre-migrate is gated
        if point is not HookPoint.PRE_MIGRATE:
            await fire("hold", point)


# -- gate-tcp -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_gate_tcp_passes_when_the_destination_accepts(
    listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAUL_GATE_PORT", str(listener))
    await fire("gate-tcp", HookPoint.PRE_MIGRATE)
    await fire("gate-tcp", HookPoint.RESTORED)


@pytest.mark.asyncio
async def test_gate_tcp_refuses_when_nothing_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("HAUL_GATE_PORT", str(port))
    monkeypatch.setenv("HAUL_GATE_TIMEOUT_S", "2")
    with pytest.raises(HookError) as raised:
        await fire("gate-tcp", HookPoint.RESTORED)
    assert str(raised.value).endswith(
        f"gate-tcp at restored exited with status 1: host2 (127.0.0.1) does not accept TCP "
        f"on port {port} within 2 s"
    )
    await fire("gate-tcp", HookPoint.POST_COMMIT)  # not a gated point
    await fire("gate-tcp", HookPoint.PRE_FREEZE)
    with pytest.raises(HookError, match="HAUL_DEST_ADDRESS is empty"):
        await fire("gate-tcp", HookPoint.PRE_MIGRATE, dest_address="")


# -- wait-http ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_wait_http_passes_once_the_service_answers(
    http_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAUL_HTTP_PORT", str(http_server))
    monkeypatch.setenv("HAUL_HTTP_PATH", "/healthz")
    await fire("wait-http", HookPoint.POST_COMMIT)


@pytest.mark.asyncio
async def test_wait_http_reports_a_service_that_does_not_answer_well(
    http_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAUL_HTTP_PORT", str(http_server))
    monkeypatch.setenv("HAUL_HTTP_PATH", "/not-ready")
    monkeypatch.setenv("HAUL_HTTP_TIMEOUT_S", "0.5")
    with pytest.raises(HookError) as raised:
        await fire("wait-http", HookPoint.POST_COMMIT)
    assert str(raised.value).endswith(
        f"http://127.0.0.1:{http_server}/not-ready did not answer within 0.5 s (last: HTTP 503)"
    )
    monkeypatch.setenv("HAUL_HTTP_PORT", str(free_port()))
    with pytest.raises(HookError, match=r"did not answer within 0.5 s \(last: .*refused"):
        await fire("wait-http", HookPoint.POST_COMMIT)
    await fire("wait-http", HookPoint.RESTORED)  # not a checked point
