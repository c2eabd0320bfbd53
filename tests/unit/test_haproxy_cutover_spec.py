"""The HAProxy cutover's own decisions, without HAProxy: the --lb spec, which servers a
migration concerns, and what an unreachable stats socket reads like."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest

from haul.cutover.haproxy import CutoverReport, HaproxyCutover, choose_servers
from haul.cutover.haproxy_runtime import (
    AdminState,
    HaproxyError,
    HaproxyRuntime,
    OpState,
    ServerState,
)
from haul.cutover.lb_spec import HaproxyTarget, parse_lb_spec
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookFacts, HookPoint
from haul.errors import ConfigError

FACTS = HookFacts(
    migration_id="m1",
    workload="web",
    source_host="host1",
    dest_host="host2",
    source_address="10.77.0.101/24",
    dest_address="10.77.0.102/24",
    strategy=Strategy.STOP_AND_COPY,
    phase=Phase.PREPARE,
)


class StepsSeen(HaproxyCutover):
    """The cutover with its steps recorded instead of done (HAProxy is never asked)."""

    def __init__(self) -> None:
        super().__init__(parse_lb_spec("haproxy:/nowhere.sock:web/web-{host}"))
        self.seen: list[str] = []

    async def check(self, facts: HookFacts) -> ServerState:
        self.seen.append("check")
        return _server("web-host1", "10.77.0.1", sid=1)

    async def hold_source(self, facts: HookFacts) -> None:
        self.seen.append("hold_source")

    async def cut_over(self, facts: HookFacts) -> CutoverReport:
        self.seen.append("cut_over")
        return CutoverReport(source="web/web-host1", dest="web/web-host2")

    async def roll_back(self, facts: HookFacts) -> None:
        self.seen.append("roll_back")


@pytest.mark.parametrize(
    ("point", "steps"),
    [
        (HookPoint.PRE_MIGRATE, ["check"]),
        (HookPoint.PRE_FREEZE, ["hold_source"]),
        (HookPoint.RESTORED, []),
        (HookPoint.POST_COMMIT, ["cut_over"]),
        (HookPoint.ROLLED_BACK, ["roll_back"]),
    ],
)
def test_each_hook_point_does_its_step(point: HookPoint, steps: list[str]) -> None:
    cutover = StepsSeen()
    asyncio.run(cutover.fire(point, FACTS))
    assert cutover.seen == steps


# -- parse_lb_spec --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "haproxy:/run/haproxy/admin.sock:web/web-{host}",
            HaproxyTarget(Path("/run/haproxy/admin.sock"), "web", "web-{host}"),
        ),
        (
            "haproxy:/run/haproxy.sock:be_app.v2/{host}",
            HaproxyTarget(Path("/run/haproxy.sock"), "be_app.v2", "{host}"),
        ),
        (
            "haproxy:/run/haproxy.sock:web/{host}.app,addr",
            HaproxyTarget(Path("/run/haproxy.sock"), "web", "{host}.app", set_addr=True),
        ),
        ("haproxy:/run/haproxy.sock:web/*", HaproxyTarget(Path("/run/haproxy.sock"), "web", "*")),
        # HAProxy allows ':' in names; only the socket path may not hold one
        (
            "haproxy:/s.sock:ns:web/web-{host}",
            HaproxyTarget(Path("/s.sock"), "ns:web", "web-{host}"),
        ),
    ],
)
def test_good_specs(text: str, expected: HaproxyTarget) -> None:
    target = parse_lb_spec(text)
    assert target == expected
    assert parse_lb_spec(str(target)) == target  # it prints as it is written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected haproxy:SOCKET:BACKEND/SERVER"),
        ("haproxy", "expected haproxy:SOCKET:BACKEND/SERVER"),
        ("nginx:/run/nginx.sock:web/a", "unknown load balancer 'nginx' (known: haproxy)"),
        ("haproxy:/run/haproxy.sock", "no ':' after the socket path"),
        ("haproxy::web/web-{host}", "the stats socket path is empty"),
        ("haproxy:run/haproxy.sock:web/web-{host}", "'run/haproxy.sock' must be absolute"),
        (
            "haproxy:/run/haproxy.sock:web",
            "expected BACKEND/SERVER after the socket path, got 'web'",
        ),
        ("haproxy:/run/haproxy.sock:/web-{host}", "backend '' is not a HAProxy name"),
        ("haproxy:/run/haproxy.sock:we b/web-{host}", "backend 'we b' is not a HAProxy name"),
        ("haproxy:/run/haproxy.sock:web/", "the server is empty"),
        ("haproxy:/run/haproxy.sock:web/app1", "names a single server, but a cutover moves"),
        ("haproxy:/run/haproxy.sock:web/web-{hostname}", "the only placeholder is {host}"),
        ("haproxy:/run/haproxy.sock:web/web {host}", "is not a HAProxy name around {host}"),
        ("haproxy:/run/haproxy.sock:web/a/{host}", "is not a HAProxy name around {host}"),
        ("haproxy:/run/haproxy.sock:web/web-{host},fast", "unknown option 'fast' (known: addr)"),
        (
            "haproxy:/run/haproxy.sock:web/*,addr",
            "with '*' the destination's address is always set",
        ),
    ],
)
def test_bad_specs_are_one_line_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_lb_spec(text)
    line = str(caught.value)
    assert message in line, line
    assert line.startswith(f"load balancer {text!r}: ") and "\n" not in line


def test_server_names_follow_the_hosts() -> None:
    target = parse_lb_spec("haproxy:/s:web/web-{host}")
    assert target.server_for("host2") == "web-host2"
    with pytest.raises(ConfigError, match="'web-my host' .* is not a HAProxy name"):
        target.server_for("my host")


# -- choosing the servers ---------------------------------------------------------------


def _server(
    name: str,
    address: str,
    *,
    sid: int,
    up: bool = True,
    maint: bool = False,
    checked: bool = True,
    port: int = 8000,
) -> ServerState:
    return ServerState(
        backend="web",
        name=name,
        server_id=sid,
        address=address,
        port=port,
        op_state=OpState.RUNNING if up and not maint else OpState.STOPPED,
        admin_flags=0x05 if maint else 0,
        weight=1,
        check_result=3 if up else 0,
        check_health=2 if up else 0,
        check_flags=(0x06 if checked else 0) | (0x08 if maint else 0),
    )


NAMED = (
    _server("web-host1", "10.77.0.101", sid=1),
    _server("web-host2", "10.77.0.2", sid=2, maint=True),
)


def test_named_servers_and_the_address_option() -> None:
    pair = choose_servers(
        parse_lb_spec("haproxy:/s:web/web-{host}"), NAMED, FACTS, for_cutover=True
    )
    assert (pair.source.name, pair.dest and pair.dest.name, pair.new_addr) == (
        "web-host1",
        "web-host2",
        None,
    )
    pair = choose_servers(
        parse_lb_spec("haproxy:/s:web/web-{host},addr"), NAMED, FACTS, for_cutover=True
    )
    assert pair.new_addr == ("10.77.0.102", 8000)  # the prefix length is dropped
    same = dataclasses.replace(FACTS, dest_address="10.77.0.2")
    pair = choose_servers(
        parse_lb_spec("haproxy:/s:web/web-{host},addr"), NAMED, same, for_cutover=True
    )
    assert pair.new_addr is None  # already there


def test_by_address_prefers_a_server_at_the_destination_then_an_unassigned_slot() -> None:
    target = parse_lb_spec("haproxy:/s:web/*")
    old = _server("old", "10.77.0.7", sid=2, maint=True)  # a former source, in maintenance
    slot = _server("slot1", "0.0.0.0", sid=3, maint=True)
    servers = (_server("app", "10.77.0.101", sid=1), old, slot)
    pair = choose_servers(target, servers, FACTS, for_cutover=True)
    assert (pair.source.name, pair.dest and pair.dest.name) == ("app", "slot1")
    assert pair.new_addr == ("10.77.0.102", 8000)

    there = _server("back", "10.77.0.102", sid=4, maint=True)
    pair = choose_servers(target, (*servers, there), FACTS, for_cutover=True)
    assert pair.dest == there and pair.new_addr is None

    # the address follows the workload: one server, nothing to move
    follows = dataclasses.replace(FACTS, dest_address="10.77.0.101")
    pair = choose_servers(target, servers, follows, for_cutover=True)
    assert pair.same and pair.new_addr is None

    # after a rollback there may be no destination server at all
    pair = choose_servers(target, servers[:1], FACTS, for_cutover=False)
    assert pair.dest is None


@pytest.mark.parametrize(
    ("servers", "facts", "message"),
    [
        (
            (_server("app", "10.77.0.101", sid=1),),
            FACTS,
            "no server at the destination address 10.77.0.102 and no spare server in maintenance",
        ),
        (
            (_server("x", "10.77.0.5", sid=1),),
            FACTS,
            "no server at the workload's source address 10.77.0.101 (servers: x 10.77.0.5)",
        ),
        (
            (_server("a", "10.77.0.101", sid=1), _server("b", "10.77.0.101", sid=2)),
            FACTS,
            "several servers at 10.77.0.101: a, b",
        ),
        (
            (
                _server("app", "10.77.0.101", sid=1, checked=False),
                _server("slot1", "0.0.0.0", sid=2, maint=True),
            ),
            FACTS,
            "server web/app has no health check",
        ),
        (
            NAMED,
            dataclasses.replace(FACTS, source_address=""),
            "the migration has no source address for the workload",
        ),
        (
            NAMED,
            dataclasses.replace(FACTS, source_address="host1.example"),
            "source address 'host1.example' is not an IP address",
        ),
    ],
)
def test_by_address_refusals(
    servers: tuple[ServerState, ...], facts: HookFacts, message: str
) -> None:
    with pytest.raises(HaproxyError) as caught:
        choose_servers(parse_lb_spec("haproxy:/s:web/*"), servers, facts, for_cutover=True)
    assert message in str(caught.value)


def test_named_refusals() -> None:
    target = parse_lb_spec("haproxy:/s:web/web-{host}")
    with pytest.raises(HaproxyError, match=r"no server 'web-host3' \(servers: web-host1 "):
        choose_servers(
            target, NAMED, dataclasses.replace(FACTS, dest_host="host3"), for_cutover=True
        )
    with pytest.raises(HaproxyError, match="both map to web/web-host1"):
        choose_servers(
            target, NAMED, dataclasses.replace(FACTS, dest_host="host1"), for_cutover=True
        )


# -- an unreachable stats socket ---------------------------------------------------------


def _refusal(path: Path) -> str:
    with pytest.raises(HaproxyError) as caught:
        asyncio.run(HaproxyRuntime(path, timeout_s=2).command("show cli level"))
    line = str(caught.value)
    assert str(path) in line and "\n" not in line
    return line


def test_missing_socket(tmp_path: Path) -> None:
    assert "no HAProxy stats socket" in _refusal(tmp_path / "missing.sock")


def test_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    assert "is not a socket" in _refusal(plain)


def test_a_stale_socket_nobody_listens_on(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    assert "nothing listens on HAProxy stats socket" in _refusal(stale)


def test_a_silent_listener_times_out(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen(1)  # accepts into the backlog, never answers
        with pytest.raises(HaproxyError, match=r"did not answer .*show cli level.* within 0.2 s"):
            asyncio.run(HaproxyRuntime(path, timeout_s=0.2).command("show cli level"))


def test_commands_cannot_smuggle_a_second_command() -> None:
    api = HaproxyRuntime(Path("/nonexistent"))
    with pytest.raises(HaproxyError, match="one command"):
        asyncio.run(api.command("show info; shutdown frontend fe"))
    with pytest.raises(HaproxyError, match="server name 'a;b' is not a HAProxy name"):
        asyncio.run(api.set_state("web", "a;b", AdminState.READY))
