"""One name, one holder: workloads (started, adopted, being removed) and copies arriving
by migration share one registry of names on a host, taken at once. Seen on a lab host2:
``POST /v1/incoming`` for a name, then ``POST /v1/workloads`` with it, then the
migration's discard: the new workload kept running with its whole directory gone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, FakeStarter, Receiving, agent_client, make_config, receiving
from haul.agent.names import Names
from haul.agent.wire import Conflict
from haul.dest import leftovers
from haul.dest.fakes import StandInCopy
from haul.dest.incoming import IncomingState
from haul.dest.leftovers import IncomingRecord
from haul.engine.phases import Strategy
from haul.errors import WorkloadError
from haul.procfs import alive
from haul.workload.proctree import ProcessTree

pytestmark = pytest.mark.asyncio

MakeCtx = Callable[[AgentConfig], AgentContext]
SLEEP = ["sleep", "300"]
OPEN = {"workload": "web1", "strategy": "post-copy", "needed_bytes": 0}


@pytest.fixture
def tree_init() -> Iterator[StandInCopy]:
    """The init of a PID namespace of its own, as ``adopt pid:PID`` takes."""
    try:
        init = StandInCopy()
    except WorkloadError as exc:
        pytest.skip(exc.one_line())
    try:
        yield init
    finally:
        init.close()


async def _error(answer: Any) -> tuple[int, str, str]:
    body = await answer.json()
    return answer.status, body["error"]["code"], body["error"]["message"]


async def test_a_name_arriving_cannot_be_started_and_its_discard_removes_only_its_own(
    incoming: Receiving, starter: FakeStarter, tree_init: StandInCopy
) -> None:
    r = incoming
    (r.data / "state").write_text("arrived\n")
    started = await r.http.post("/v1/workloads", json={"name": "web1", "argv": SLEEP}, headers=AUTH)
    status, code, message = await _error(started)
    assert (status, code) == (409, "workload_exists")
    assert "incoming migration m1" in message and "\n" not in message
    assert starter.calls == [] and r.ctx.workloads.records() == []
    adopted = await r.http.post(
        "/v1/workloads/adopt", json={"pid": tree_init.pid, "name": "web1"}, headers=AUTH
    )
    assert (await _error(adopted))[:2] == (409, "workload_exists")
    discarded = await r.http.post("/v1/incoming/m1/discard", headers=AUTH)
    assert discarded.status == 200 and not r.data.exists()
    # the name is free again
    again = await r.http.post("/v1/workloads", json={"name": "web1", "argv": SLEEP}, headers=AUTH)
    assert again.status == 201 and len(starter.calls) == 1


async def test_a_workload_s_name_cannot_arrive_and_its_files_stay(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    async with agent_client(make_ctx(config)) as http:
        started = await http.post(
            "/v1/workloads", json={"name": "web1", "argv": SLEEP}, headers=AUTH
        )
        assert started.status == 201
        home = config.state_dir / "workloads" / "web1"
        (home / "state").write_text("mine\n")
        for ask in (OPEN, {**OPEN, "strategy": "stop-and-copy"}):
            opened = await http.post("/v1/incoming", json={"id": "m1", **ask}, headers=AUTH)
            status, code, message = await _error(opened)
            assert (status, code) == (409, "workload_exists") and "a workload" in message
        checked = await http.post(
            "/v1/incoming-check", json={"workload": "web1", "needed_bytes": 0}, headers=AUTH
        )
        assert (await _error(checked))[:2] == (409, "workload_exists")
        assert (home / "state").read_text() == "mine\n"
        assert not leftovers.record_path(config.state_dir / "incoming", "m1").exists()
        assert alive(starter.pids[0])


async def test_two_migrations_bringing_one_name_one_is_refused(incoming: Receiving) -> None:
    other = await incoming.http.post("/v1/incoming", json={"id": "m2", **OPEN}, headers=AUTH)
    status, code, message = await _error(other)
    assert (status, code) == (409, "workload_exists") and "incoming migration m1" in message
    assert [i.migration_id for i in incoming.ctx.migrations().incoming.items()] == ["m1"]
    assert incoming.data.is_dir()


async def test_starts_and_opens_of_one_name_at_once_one_wins(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    async with agent_client(make_ctx(make_config(config.state_dir.parent))) as http:
        answers = await asyncio.gather(
            http.post("/v1/incoming", json={"id": "m1", **OPEN}, headers=AUTH),
            http.post("/v1/workloads", json={"name": "web1", "argv": SLEEP}, headers=AUTH),
            http.post("/v1/incoming", json={"id": "m2", **OPEN}, headers=AUTH),
            http.post("/v1/workloads", json={"name": "web1", "argv": SLEEP}, headers=AUTH),
        )
        statuses = [a.status for a in answers]
        assert statuses.count(201) == 1 and statuses.count(409) == 3, statuses


async def test_a_restarted_agent_keeps_a_workload_s_files_from_a_stale_incoming_record(
    make_ctx: MakeCtx, tmp_path: Path, starter: FakeStarter
) -> None:
    """What the race left before this registry: an incoming record for a name that a
    workload holds. The sweep at start leaves that workload's directory alone."""
    config = make_config(tmp_path, criu="/bin/true")
    async with agent_client(make_ctx(config)) as http:
        assert (
            await http.post("/v1/workloads", json={"name": "web1", "argv": SLEEP}, headers=AUTH)
        ).status == 201
    home = config.state_dir / "workloads" / "web1"
    (home / "state").write_text("mine\n")
    root = config.state_dir / "incoming"
    (root / "m0").mkdir(parents=True)
    leftovers.write_record(root, "m0", IncomingRecord(workload="web1", strategy=Strategy.POST_COPY))
    async with receiving(make_ctx(config), workload="web2"):
        assert (home / "state").read_text() == "mine\n"
        assert not leftovers.record_path(root, "m0").exists() and not (root / "m0").exists()


async def test_a_name_has_one_holder_at_a_time() -> None:
    names = Names()
    names.claim("web1", "incoming migration m1")
    with pytest.raises(Conflict, match="incoming migration m1"):
        names.claim("web1", "a workload")
    names.claim("web1", "a workload", replacing="incoming migration m1")
    assert names.holder("web1") == "a workload"
    names.release("web1", "incoming migration m1")  # not its holder any more: nothing
    assert names.holder("web1") == "a workload"
    with pytest.raises(Conflict):
        names.claim("web1", "a workload starting", replacing="incoming migration m1")
    names.release("web1", "a workload")
    assert names.holder("web1") is None


async def test_an_adopted_copy_takes_the_name_over_without_a_gap(
    incoming: Receiving, tree_init: StandInCopy
) -> None:
    r = incoming
    item = r.ctx.migrations().incoming.get(r.migration_id)
    item.dest.tree = ProcessTree(tree_init.pid)
    item.state = IncomingState.RESUMED
    assert r.ctx.workloads.names.holder("web1") == "incoming migration m1"
    assert (await r.http.post("/v1/incoming/m1/finish", headers=AUTH)).status == 200
    assert r.ctx.workloads.names.holder("web1") == "a workload"
    assert [(w.name, w.root_pid) for w in r.ctx.workloads.records()] == [("web1", tree_init.pid)]
    started = await r.http.post("/v1/workloads", json={"name": "web1", "argv": SLEEP}, headers=AUTH)
    assert (await _error(started))[:2] == (409, "workload_exists")
    assert (await r.http.delete("/v1/workloads/web1", headers=AUTH)).status == 200
    assert r.ctx.workloads.names.holder("web1") is None
