"""HAProxy cutover with a real HAProxy in a lab: traffic moves host1 -> host2 under load.

A small HTTP service runs in host1 and in host2; HAProxy runs in the client
member; a client there keeps sending requests through HAProxy. The test plays a
migration with an address change the way the engine will drive it: the hooks
fire at pre-migrate and pre-freeze, the source service is frozen with its
network locked (SIGSTOP and an nftables drop, as CRIU's freeze and network
lock do), then "committed": the source is killed and the destination (started
stopped beforehand, as a restored copy is) resumed, and post-commit fires.
No CRIU here: the lead wires the cutover into real migrations.

The figures (largest gap between answers, slowest request) are printed with
``-s``; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from haul.cutover.haproxy import HaproxyCutover
from haul.cutover.haproxy_runtime import AdminState, HaproxyError, HaproxyRuntime
from haul.cutover.lb_spec import parse_lb_spec
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookFacts, HookPoint
from haul.lab.haproxy import (
    LabHaproxy,
    LbConfig,
    LbServer,
    lab_servers,
    start_haproxy,
    stop_haproxy,
)
from haul.lab.ledger import Ledger
from haul.lab.spec import HostSpec, LabSpec
from haul.procfs import alive

pytestmark = pytest.mark.asyncio

HERE = Path(__file__).parent
PORT = 8000
FROZEN_S = 1.5
#: requests the client must have had answered before the migration starts
WARMUP_REQUESTS = 100
WORKERS = 4


def _facts(spec: LabSpec, src: int = 1, dst: int = 2) -> HookFacts:
    return HookFacts(
        migration_id="m-test",
        workload="web",
        source_host=spec.host(src).name,
        dest_host=spec.host(dst).name,
        source_address=str(spec.host(src).address),
        dest_address=str(spec.host(dst).address),
        strategy=Strategy.STOP_AND_COPY,
        phase=Phase.COMMIT,
    )


# -- processes in the lab ---------------------------------------------------------------


class Procs:
    """Processes a test starts in the lab; all killed at the end (lab down would too)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, member: HostSpec, *argv: str, stdout: int | None = subprocess.PIPE
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*member.ns.prefix(), sys.executable, "-S", *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


async def _service(procs: Procs, host: HostSpec, name: str) -> subprocess.Popen[bytes]:
    proc = procs.start(host, str(HERE / "lbserver.py"), name, str(host.address.ip), str(PORT))
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
    assert line.strip() == b"listening", f"service {name} did not start"
    return proc


@dataclass
class Client:
    proc: subprocess.Popen[bytes]
    out: Path

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    async def wait_answers(self, n: int, timeout_s: float = 20.0) -> None:
        async with asyncio.timeout(timeout_s):
            while sum(1 for r in self.records() if r["status"] == 200) < n:
                await asyncio.sleep(0.05)

    async def stop(self) -> list[dict[str, object]]:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 40)
        return self.records()


def _client(procs: Procs, spec: LabSpec, url: str, out: Path) -> Client:
    out.write_text("")
    proc = procs.start(
        spec.client,
        str(HERE / "lbclient.py"),
        url,
        str(out),
        str(WORKERS),
        stdout=subprocess.DEVNULL,
    )
    return Client(proc, out)


def _lock_network(host: HostSpec) -> None:
    """Drop every packet in and out of the host but loopback, as CRIU's network lock."""
    rules = (
        "table inet haultest {\n"
        ' chain in { type filter hook input priority 0; iifname != "lo" drop; }\n'
        ' chain out { type filter hook output priority 0; oifname != "lo" drop; }\n'
        "}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", host.netns, "nft", "-f", "-"], input=rules.encode(), check=True
    )


def _unlock_network(host: HostSpec) -> None:
    subprocess.run(
        ["ip", "netns", "exec", host.netns, "nft", "delete", "table", "inet", "haultest"],
        check=True,
    )


@dataclass(frozen=True)
class Figures:
    requests: int
    failed: int
    largest_gap_s: float
    slowest_s: float

    def line(self, what: str) -> str:
        return (
            f"{what}: {self.requests} requests, {self.failed} failed, largest gap "
            f"{self.largest_gap_s * 1000:.0f} ms, slowest request "
            f"{self.slowest_s * 1000:.0f} ms"
        )


def _figures(records: list[dict[str, object]]) -> Figures:
    ends = sorted(float(str(r["end"])) for r in records if r["status"] == 200)
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    return Figures(
        requests=len(records),
        failed=sum(1 for r in records if r["status"] != 200),
        largest_gap_s=max(gaps, default=0.0),
        slowest_s=max(
            (float(str(r["end"])) - float(str(r["start"])) for r in records), default=0.0
        ),
    )


def _failures(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in records if r["status"] != 200][:5]


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


@dataclass
class Stage:
    spec: LabSpec
    proxy: LabHaproxy
    api: HaproxyRuntime
    source: subprocess.Popen[bytes]
    dest: subprocess.Popen[bytes]


async def _stage(lab: LabSpec, procs: Procs, cfg: LbConfig) -> Stage:
    """Services in host1 (serving) and host2 (stopped, as a restored copy), HAProxy."""
    source = await _service(procs, lab.host(1), "host1")
    dest = await _service(procs, lab.host(2), "host2")
    os.kill(dest.pid, signal.SIGSTOP)
    proxy = await start_haproxy(lab, cfg)
    api = HaproxyRuntime(proxy.socket)
    async with asyncio.timeout(10):  # the source passes its first checks
        while not (await api.server(cfg.backend, cfg.servers[0].name)).serving:
            await asyncio.sleep(0.05)
    return Stage(lab, proxy, api, source, dest)


def _config(lab: LabSpec, server: str) -> LbConfig:
    """Servers named after the hosts (web-host1 in service, web-host2 disabled), or for
    '*' one server at host1's address and two spare slots (server-template) at 0.0.0.0."""
    if server == "*":
        return LbConfig(
            servers=(LbServer("app", str(lab.host(1).address.ip), PORT),), spare_slots=2
        )
    return LbConfig(servers=lab_servers(lab, PORT))


@pytest_asyncio.fixture
async def by_name(lab: LabSpec, procs: Procs) -> AsyncIterator[Stage]:
    yield await _stage(lab, procs, _config(lab, "web-{host}"))


@pytest_asyncio.fixture
async def by_address(lab: LabSpec, procs: Procs) -> AsyncIterator[Stage]:
    yield await _stage(lab, procs, _config(lab, "*"))


def _freeze(stage: Stage) -> None:
    _lock_network(stage.spec.host(1))
    os.kill(stage.source.pid, signal.SIGSTOP)


def _commit(stage: Stage) -> None:
    os.kill(stage.source.pid, signal.SIGKILL)
    os.kill(stage.dest.pid, signal.SIGCONT)


# -- the cutover under load -------------------------------------------------------------


@pytest.mark.parametrize("server", ["web-{host}", "*"])
async def test_cutover_under_load_loses_no_request(
    lab: LabSpec, procs: Procs, tmp_path: Path, server: str
) -> None:
    stage = await _stage(lab, procs, _config(lab, server))
    target = parse_lb_spec(f"haproxy:{stage.proxy.socket}:web/{server}")
    cutover = HaproxyCutover(target)
    facts = _facts(lab)
    client = _client(procs, lab, stage.proxy.url, tmp_path / "requests.jsonl")
    await client.wait_answers(WARMUP_REQUESTS)

    await cutover.fire(HookPoint.PRE_MIGRATE, facts)
    await cutover.fire(HookPoint.PRE_FREEZE, facts)
    _freeze(stage)
    frozen_at = asyncio.get_running_loop().time()
    await asyncio.sleep(FROZEN_S)
    await cutover.fire(HookPoint.RESTORED, facts)
    _commit(stage)
    committed_at = asyncio.get_running_loop().time()
    await cutover.fire(HookPoint.POST_COMMIT, facts)
    done_at = asyncio.get_running_loop().time()
    report = cutover.last
    await client.wait_answers(len(client.records()) + 100)
    await cutover.fire(HookPoint.POST_COMMIT, facts)  # fired twice: changes nothing
    assert cutover.last is not None and cutover.last.steps == [
        f"{report.dest if report else '?'} already in service"
    ]
    await client.wait_answers(len(client.records()) + 100)
    records = await client.stop()

    figures = _figures(records)
    assert report is not None
    print(
        f"\n{figures.line(f'cutover {server}')}; frozen {FROZEN_S} s, cutover took "
        f"{(done_at - committed_at) * 1000:.0f} ms (destination UP after "
        f"{report.dest_up_s * 1000:.0f} ms), from freeze to cutover done "
        f"{(done_at - frozen_at) * 1000:.0f} ms; steps: {report.steps}"
    )
    assert figures.failed == 0, _failures(records)
    assert {r["body"] for r in records if float(str(r["end"])) < frozen_at} == {"host1"}
    assert {r["body"] for r in records if float(str(r["start"])) > done_at} == {"host2"}
    servers = {s.label: s for s in await stage.api.servers("web")}
    source, dest = servers[report.source], servers[report.dest]
    assert source.in_maint and source.check_enabled, source
    assert dest.serving and dest.check_enabled and dest.address == str(lab.host(2).address.ip)
    assert (await stage.api.stat("web", dest.name)).check_status == "L7OK"


async def test_rollback_keeps_traffic_on_the_source(
    by_name: Stage, procs: Procs, tmp_path: Path
) -> None:
    stage, lab = by_name, by_name.spec
    cutover = HaproxyCutover(parse_lb_spec(f"haproxy:{stage.proxy.socket}:web/web-{{host}}"))
    facts = _facts(lab)
    client = _client(procs, lab, stage.proxy.url, tmp_path / "requests.jsonl")
    await client.wait_answers(WARMUP_REQUESTS)

    await cutover.fire(HookPoint.PRE_MIGRATE, facts)
    await cutover.fire(HookPoint.PRE_FREEZE, facts)
    assert not (await stage.api.server("web", "web-host1")).check_enabled
    _freeze(stage)
    await asyncio.sleep(FROZEN_S)
    # A pre-commit hook failed: the engine resumes the source and fires rolled-back.
    # Someone had already put the destination in rotation; the rollback takes it out.
    await stage.api.set_state("web", "web-host2", AdminState.READY)
    _unlock_network(lab.host(1))
    os.kill(stage.source.pid, signal.SIGCONT)
    await cutover.fire(HookPoint.ROLLED_BACK, facts)
    resumed_at = asyncio.get_running_loop().time()
    await client.wait_answers(len(client.records()) + 200)
    records = await client.stop()

    figures = _figures(records)
    print(f"\n{figures.line('rollback')}; frozen {FROZEN_S} s")
    assert figures.failed == 0, _failures(records)
    source = await stage.api.server("web", "web-host1")
    dest = await stage.api.server("web", "web-host2")
    assert source.serving and source.check_enabled, source
    assert dest.in_maint, dest
    later = {r["body"] for r in records if float(str(r["start"])) > resumed_at}
    assert later == {"host1"}


async def test_destination_that_never_answers_leaves_the_source_in_service(by_name: Stage) -> None:
    stage, lab = by_name, by_name.spec
    cutover = HaproxyCutover(
        parse_lb_spec(f"haproxy:{stage.proxy.socket}:web/web-{{host}}"), up_timeout_s=1.0
    )
    facts = _facts(lab)
    await cutover.fire(HookPoint.PRE_MIGRATE, facts)
    os.kill(stage.dest.pid, signal.SIGKILL)  # the destination's service is gone
    with pytest.raises(HaproxyError) as caught:
        await cutover.fire(HookPoint.POST_COMMIT, facts)
    line = str(caught.value)
    print("\n" + line)
    assert "web/web-host2" in line and "did not come UP within 1 s" in line
    assert "L4CON" in line  # HAProxy's own account of the failed check
    assert "HAProxy sends 'web' traffic to web-host1" in line
    assert (await stage.api.server("web", "web-host1")).serving


async def test_address_following_the_workload_keeps_one_server(by_address: Stage) -> None:
    stage, lab = by_address, by_address.spec
    cutover = HaproxyCutover(parse_lb_spec(f"haproxy:{stage.proxy.socket}:web/*"))
    facts = dataclasses.replace(_facts(lab), dest_address=str(lab.host(1).address))
    await cutover.fire(HookPoint.PRE_MIGRATE, facts)
    await cutover.fire(HookPoint.PRE_FREEZE, facts)
    assert not (await stage.api.server("web", "app")).check_enabled
    await cutover.fire(HookPoint.POST_COMMIT, facts)
    app = await stage.api.server("web", "app")
    assert app.serving and app.check_enabled
    slots = [s for s in await stage.api.servers("web") if s.name.startswith("slot")]
    assert all(s.in_maint and s.address == "0.0.0.0" for s in slots)


# -- refusals at pre-migrate ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_tail", "expected"),
    [
        ("nope/web-{host}", "no backend 'nope'"),
        ("web/app-{host}", "no server 'app-host1'"),
        ("web/*", "no server at the workload's source address 10.77.0.1"),
    ],
)
async def test_pre_migrate_refuses_what_haproxy_does_not_have(
    lab: LabSpec, spec_tail: str, expected: str
) -> None:
    servers = lab_servers(lab, PORT)
    if spec_tail == "web/*":  # no server at host1's address
        servers = (LbServer("other", "10.77.0.9", PORT),)
    proxy = await start_haproxy(lab, LbConfig(servers=servers))
    api = HaproxyRuntime(proxy.socket)
    before = await api.servers("web")
    cutover = HaproxyCutover(parse_lb_spec(f"haproxy:{proxy.socket}:{spec_tail}"))
    with pytest.raises(HaproxyError) as caught:
        await cutover.fire(HookPoint.PRE_MIGRATE, _facts(lab))
    line = str(caught.value)
    print("\n" + line)
    assert expected in line and "nothing touched" in line and "\n" not in line
    assert await api.servers("web") == before


async def test_pre_migrate_refuses_servers_without_checks_and_low_socket_levels(
    lab: LabSpec,
) -> None:
    unchecked = tuple(
        LbServer(s.name, s.address, s.port, s.enabled, check=False) for s in lab_servers(lab, PORT)
    )
    proxy = await start_haproxy(lab, LbConfig(servers=unchecked))
    cutover = HaproxyCutover(parse_lb_spec(f"haproxy:{proxy.socket}:web/web-{{host}}"))
    with pytest.raises(HaproxyError, match=r"web/web-host1 has no health check"):
        await cutover.fire(HookPoint.PRE_MIGRATE, _facts(lab))
    await stop_haproxy(lab, proxy)
    assert not alive(proxy.pid) and not proxy.socket.exists()
    ledger = Ledger.load(lab.prefix)
    assert ledger is not None and proxy.name not in ledger.services

    operator = await start_haproxy(
        lab, LbConfig(servers=lab_servers(lab, PORT), socket_level="operator"), name="haproxy-op"
    )
    ledger = Ledger.load(lab.prefix)
    assert ledger is not None and ledger.services == {"haproxy-op@client": operator.pid}
    cutover = HaproxyCutover(parse_lb_spec(f"haproxy:{operator.socket}:web/web-{{host}}"))
    with pytest.raises(HaproxyError, match=r"at level 'operator'; a cutover needs 'level admin'"):
        await cutover.fire(HookPoint.PRE_MIGRATE, _facts(lab))
    # and were it not checked first, HAProxy's own refusal reads as one line too
    with pytest.raises(
        HaproxyError,
        match=r"HAProxy refused 'set server web/web-host2 state "
        r"ready': permission denied",
    ):
        await HaproxyRuntime(operator.socket).set_state("web", "web-host2", AdminState.READY)
