"""The source's side of the decision (decide, GET /v1/migrations/{id}/decision) and the
destination's way of asking it (SourceAsker), over aiohttp's test server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from haul.agent.app import make_app
from haul.agent.ca import init_ca, issue, server_ssl_context
from haul.agent.client import AgentAccess
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.decisions import SourceAsker, decide
from haul.agent.fakes import AUTH, TOKEN, agent_client, make_config
from haul.agent.jobs import Job
from haul.agent.journal import JournalEntry
from haul.criu.options import TlsFiles
from haul.dest.undecided import Verdict
from haul.engine.commands import CleanUp, Command, RecordCommit, RestoreStopped
from haul.engine.events import (
    CommitRecorded,
    Event,
    HookFired,
    MigrationStarted,
    RolledBack,
    StepFailed,
)
from haul.engine.fakes import answer
from haul.engine.machine import Migration
from haul.engine.phases import Phase, Strategy
from haul.engine.ports import HookPoint, JournalRecord
from haul.engine.spec import MigrationSpec
from haul.errors import ConfigError, PeerError, TransportError

MakeCtx = Callable[[AgentConfig], AgentContext]


def until(command: Command) -> list[Event]:
    """The events of a stop-and-copy migration going well up to ``command`` (not run)."""
    m = Migration(MigrationSpec("m1", "web1", "host1", "host2", strategy=Strategy.STOP_AND_COPY))
    events: list[Event] = [MigrationStarted()]
    (next_,) = m.handle(events[0])
    while next_ != command:
        events.append(answer(next_))
        (next_,) = m.handle(events[-1])
    return events


TO_RESTORE = until(RestoreStopped(lazy=False))


def job_after(events: list[Event]) -> Job:
    m = Migration(MigrationSpec("m1", "web1", "host1", "host2", strategy=Strategy.STOP_AND_COPY))
    for event in events:
        m.handle(event)
    return Job(m, started_at=0.0)


def journal(*phases: Phase) -> list[JournalEntry]:
    return [JournalEntry(JournalRecord("m1", p, "test"), float(i)) for i, p in enumerate(phases)]


# -- decide ------------------------------------------------------------------------------


def test_a_live_job_before_its_commit_record_is_in_flight() -> None:
    restoring = job_after(TO_RESTORE)
    assert restoring.phase is Phase.RESTORE
    assert decide("m1", restoring, []).decision == "in-flight"
    # COMMIT is entered, but nothing is decided until the record is written
    deciding = job_after(until(RecordCommit()))
    assert deciding.phase is Phase.COMMIT and not deciding.migration.committed
    view = decide("m1", deciding, journal(Phase.COMMIT))  # a job outweighs the journal
    assert view.decision == "in-flight"
    assert (view.workload, view.dest) == ("web1", "host2")


def test_a_live_job_after_its_commit_record_is_committed_whatever_follows() -> None:
    committed = [*until(RecordCommit()), CommitRecorded()]
    assert decide("m1", job_after(committed), []).decision == "committed"
    failing = [*committed] + [StepFailed(Phase.COMMIT, "refused", "dest host2")] * 4
    stranded = job_after(failing)
    assert stranded.phase is Phase.FAILED
    assert decide("m1", stranded, []).decision == "committed"
    cleaning = job_after(until(CleanUp()))
    assert cleaning.phase is Phase.CLEANUP
    assert decide("m1", cleaning, []).decision == "committed"


def test_a_live_job_rolling_back_or_rolled_back_is_rolled_back() -> None:
    failed = [*TO_RESTORE, StepFailed(Phase.RESTORE, "restore failed", "dest host2")]
    assert job_after(failed).phase is Phase.ROLLING_BACK
    assert decide("m1", job_after(failed), []).decision == "rolled-back"
    for problems in ((), ("dest host2: unreachable",)):
        done = job_after([*failed, RolledBack(problems), HookFired(HookPoint.ROLLED_BACK)])
        assert done.phase in (Phase.ROLLED_BACK, Phase.FAILED)
        assert decide("m1", done, []).decision == "rolled-back"


@pytest.mark.asyncio
async def test_running_says_whether_the_job_still_runs() -> None:
    job = job_after(TO_RESTORE)
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    job.task = asyncio.create_task(wait())  # type: ignore[assignment]
    assert decide("m1", job, []).running
    gate.set()
    await job.task
    assert not decide("m1", job, []).running


@pytest.mark.parametrize(
    ("phases", "decision"),
    [
        ((), "unknown"),
        ((Phase.PREPARE, Phase.FREEZE, Phase.TRANSFER, Phase.RESTORE), "rolled-back"),
        ((Phase.PREPARE, Phase.RESTORE, Phase.ROLLING_BACK, Phase.ROLLED_BACK), "rolled-back"),
        ((Phase.PREPARE, Phase.RESTORE, Phase.COMMIT), "committed"),
        ((Phase.PREPARE, Phase.RESTORE, Phase.COMMIT, Phase.DONE), "committed"),
        ((Phase.PREPARE, Phase.RESTORE, Phase.COMMIT, Phase.FAILED), "committed"),
    ],
)
def test_after_a_restart_the_journal_decides(phases: tuple[Phase, ...], decision: str) -> None:
    view = decide("m1", None, journal(*phases))
    assert view.decision == decision and not view.running
    assert view.workload == ""


# -- the route and the asker ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.asyncio
async def test_a_destination_asks_a_source_agent(make_ctx: MakeCtx, tmp_path: Path) -> None:
    ctx = make_ctx(make_config(tmp_path, criu="/bin/true"))
    async with agent_client(ctx) as client:
        await ctx.journal.append(JournalRecord("m-commit", Phase.RESTORE, "RestoredStopped"))
        await ctx.journal.append(JournalRecord("m-commit", Phase.COMMIT, "commit"))
        await ctx.journal.append(JournalRecord("m-gone", Phase.FREEZE, "DestinationPrepared"))
        url = str(client.make_url("")).rstrip("/")
        ask = SourceAsker({"host1": AgentAccess.of_peer(url, token=TOKEN)})
        assert (await ask("host1", "m-commit")).verdict is Verdict.COMMITTED
        assert (await ask("host1", "m-gone")).verdict is Verdict.ROLLED_BACK
        unknown = await ask("host1", "m-never")
        assert unknown.verdict is Verdict.UNKNOWN and "no journal" in unknown.detail
        with pytest.raises(PeerError, match="bad migration id"):
            await ask("host1", "-bad")
        wrong = AgentAccess.of_peer(url, token="wrong")
        with pytest.raises(PeerError, match="token"):
            await SourceAsker({"host1": wrong})("host1", "m-commit")
        with pytest.raises(ConfigError, match="host9 is not among this agent's peers"):
            await ask("host9", "m-commit")
        raw = await client.get("/v1/migrations/m-commit/decision", headers=AUTH)
        assert raw.status == 200
        assert (await raw.json())["decision"] == "committed"
    closed = SourceAsker(
        {"host1": AgentAccess.of_peer(f"http://127.0.0.1:{_free_port()}", token=TOKEN)}
    )
    with pytest.raises(TransportError, match="source host1 unreachable"):
        await closed("host1", "m-commit")


@pytest.mark.asyncio
async def test_incoming_routes_list_what_arrives(make_ctx: MakeCtx, tmp_path: Path) -> None:
    ctx = make_ctx(make_config(tmp_path, criu="/bin/true"))
    async with agent_client(ctx) as client:
        listed = await client.get("/v1/incoming", headers=AUTH)
        assert listed.status == 200 and await listed.json() == {"incoming": []}
        one = await client.get("/v1/incoming/m1", headers=AUTH)
        assert one.status == 400
        assert "no incoming migration 'm1'" in (await one.json())["error"]["message"]


@pytest.mark.asyncio
async def test_a_destination_asks_its_source_over_mutual_tls(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """A source agent with certificates takes only callers with one from its CA: the
    asker calls it with the CA and this agent's own certificate, as for anything else."""
    pki = tmp_path / "pki"
    init_ca(pki)
    source, dest = issue(pki, "host1", ["127.0.0.1"]), issue(pki, "host2", ["127.0.0.1"])
    init_ca(tmp_path / "other", name="another CA")
    stranger = issue(tmp_path / "other", "host2", ["127.0.0.1"])
    peers = {"host2": {"url": "https://127.0.0.1:1"}}  # the asker: a peer, by its certificate
    ctx = make_ctx(make_config(tmp_path, criu="/bin/true", peers=peers))
    await ctx.journal.append(JournalRecord("m-commit", Phase.COMMIT, "commit"))
    ctx.bindings.record_destination("m-commit", "host2")  # and the migration's destination
    server = TestServer(make_app(ctx), host="127.0.0.1")
    await server.start_server(ssl=server_ssl_context(pki / "ca.crt", source.cert, source.key))
    try:
        url = f"https://127.0.0.1:{server.port}"
        ours = TlsFiles(cacert=pki / "ca.crt", cert=dest.cert, key=dest.key)
        answer = await SourceAsker({"host1": AgentAccess.of_peer(url, tls=ours)})(
            "host1", "m-commit"
        )
        assert answer.verdict is Verdict.COMMITTED
        foreign = TlsFiles(cacert=pki / "ca.crt", cert=stranger.cert, key=stranger.key)
        with pytest.raises(
            TransportError, match="source host1 unreachable.*refuses a client certificate"
        ):
            await SourceAsker({"host1": AgentAccess.of_peer(url, tls=foreign)})("host1", "m-commit")
        with pytest.raises(ConfigError, match="no certificate"):
            await SourceAsker({"host1": AgentAccess.of_peer(url)})("host1", "m-commit")
    finally:
        await server.close()
