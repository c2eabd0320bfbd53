"""Workloads through the API, with trees started as plain processes (no root): names,
conflicts, the registry file, a restarted agent, and PIDs that are not ours any more."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, FakeStarter, agent_client, kill_workloads
from haul.agent.models import WorkloadSpec, WorkloadStatus
from haul.agent.workloads import Registry, WorkloadRecord, start_ticks, status_of
from haul.errors import WorkloadError
from haul.procfs import alive

MakeCtx = Callable[[AgentConfig], AgentContext]
SLEEP = ["sleep", "600"]


def _registry(config: AgentConfig) -> dict[str, dict[str, object]]:
    data = json.loads((config.state_dir / "workloads.json").read_text())
    return {w["name"]: w for w in data["workloads"]}


@pytest.mark.asyncio
async def test_start_list_get_delete(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.post(
            "/v1/workloads", json={"name": "web1", "argv": SLEEP}, headers=AUTH
        )
        assert response.status == 201, await response.text()
        started = await response.json()
        pid = started["root_pid"]
        assert started["status"] == "running" and started["argv"] == SLEEP
        assert started["cwd"] == str(config.state_dir / "workloads" / "web1")
        assert started["log_path"] == str(config.state_dir / "workloads" / "web1" / "log")
        assert starter.pids == [pid]

        assert _registry(config)["web1"]["root_pid"] == pid
        assert os.stat(config.state_dir / "workloads.json").st_mode & 0o077 == 0

        listing = await (await client.get("/v1/workloads", headers=AUTH)).json()
        assert [w["name"] for w in listing["workloads"]] == ["web1"]
        one = await (await client.get("/v1/workloads/web1", headers=AUTH)).json()
        assert one == started

        response = await client.delete("/v1/workloads/web1", headers=AUTH)
        assert response.status == 200
        assert (await response.json())["status"] == "gone"
        assert not alive(pid)
        assert _registry(config) == {}
        assert not (config.state_dir / "workloads" / "web1").exists()
        assert (await client.get("/v1/workloads/web1", headers=AUTH)).status == 404
        assert (await client.delete("/v1/workloads/web1", headers=AUTH)).status == 404


@pytest.mark.asyncio
async def test_a_taken_name_is_409_and_starts_nothing(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    async with agent_client(make_ctx(config)) as client:
        body = {"name": "w", "argv": SLEEP}
        assert (await client.post("/v1/workloads", json=body, headers=AUTH)).status == 201
        response = await client.post("/v1/workloads", json=body, headers=AUTH)
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "workload_exists"
        assert len(starter.calls) == 1


@pytest.mark.asyncio
async def test_two_starts_of_one_name_at_once_start_one_tree(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    async with agent_client(make_ctx(config)) as client:
        body = {"name": "w", "argv": SLEEP}
        responses = await asyncio.gather(
            *(client.post("/v1/workloads", json=body, headers=AUTH) for _ in range(4))
        )
        assert sorted(r.status for r in responses) == [201, 409, 409, 409]
        assert len(starter.calls) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "name", ["../x", "..", ".hidden", "Web", "a/b", "-x", "x" * 64, "", "a b", "é"]
)
async def test_bad_names_are_400_and_touch_nothing(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter, name: str
) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.post(
            "/v1/workloads", json={"name": name, "argv": SLEEP}, headers=AUTH
        )
        assert response.status == 400
        assert "name" in (await response.json())["error"]["message"]
    assert starter.calls == []
    assert list((config.state_dir / "workloads").iterdir()) == []
    assert not (config.state_dir / "x").exists()


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["Web", "..x%2F..", ".hidden", "x" * 64])
async def test_bad_names_in_the_path_are_400(
    make_ctx: MakeCtx, config: AgentConfig, name: str
) -> None:
    async with agent_client(make_ctx(config)) as client:
        for method in ("GET", "DELETE"):
            response = await client.request(method, f"/v1/workloads/{name}", headers=AUTH)
            assert response.status == 400, (method, name)
            assert (await response.json())["error"]["code"] == "bad_name"


@pytest.mark.asyncio
async def test_data_dir_is_the_cwd_and_must_exist(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter, tmp_path: Path
) -> None:
    data = tmp_path / "data" / "web1"
    async with agent_client(make_ctx(config)) as client:
        body = {"name": "web1", "argv": ["sh", "-c", "pwd; exec sleep 600"], "data_dir": str(data)}
        response = await client.post("/v1/workloads", json=body, headers=AUTH)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "no_data_dir"
        assert starter.calls == []
        assert list((config.state_dir / "workloads").iterdir()) == []
        data.mkdir(parents=True)
        response = await client.post("/v1/workloads", json=body, headers=AUTH)
        assert response.status == 201
        view = await response.json()
        assert view["cwd"] == view["data_dir"] == str(data)
        log = Path(view["log_path"])
        for _ in range(200):
            if log.exists() and log.read_text():
                break
            await asyncio.sleep(0.01)
        assert log.read_text().strip() == str(data)


@pytest.mark.asyncio
async def test_a_stopped_and_an_exited_workload_show_as_such(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    import signal

    async with agent_client(make_ctx(config)) as client:
        view = await (
            await client.post("/v1/workloads", json={"name": "w", "argv": SLEEP}, headers=AUTH)
        ).json()
        pid = view["root_pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(200):
                got = await (await client.get("/v1/workloads/w", headers=AUTH)).json()
                if got["status"] == "stopped":
                    break
                await asyncio.sleep(0.01)
            assert got["status"] == "stopped"
        finally:
            os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            got = await (await client.get("/v1/workloads/w", headers=AUTH)).json()
            if got["status"] == "gone":
                break
            await asyncio.sleep(0.01)
        assert got["status"] == "gone"
        # a gone workload is still listed until it is deleted, and deleting it kills nothing
        assert (await client.delete("/v1/workloads/w", headers=AUTH)).status == 200


@pytest.mark.asyncio
async def test_a_restarted_agent_knows_and_can_kill_what_it_started(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    first = make_ctx(config)
    async with agent_client(first) as client:
        view = await (
            await client.post("/v1/workloads", json={"name": "w", "argv": SLEEP}, headers=AUTH)
        ).json()
        # the agent goes away; the workload stays (agent_client would kill it: forget it first)
        first.workloads._records.clear()
    pid = view["root_pid"]
    assert alive(pid)
    second = make_ctx(config)
    try:
        async with agent_client(second) as client:
            listing = await (await client.get("/v1/workloads", headers=AUTH)).json()
            assert [(w["name"], w["root_pid"], w["status"]) for w in listing["workloads"]] == [
                ("w", pid, "running")
            ]
            assert (await client.delete("/v1/workloads/w", headers=AUTH)).status == 200
            assert not alive(pid)
    finally:
        await kill_workloads(first)


@pytest.mark.asyncio
async def test_a_reused_pid_is_gone_not_ours(tmp_path: Path) -> None:
    """A registry entry whose PID now belongs to another process is never signalled."""
    me = os.getpid()
    ticks = start_ticks(me)
    assert ticks is not None
    record = WorkloadRecord(
        name="w",
        argv=["x"],
        root_pid=me,
        start_ticks=ticks - 1,
        started_at="2026-01-01T00:00:00Z",
        cwd="/",
        data_dir=None,
        log_path="/dev/null",
    )
    assert status_of(record) is WorkloadStatus.GONE
    assert status_of(record.model_copy(update={"start_ticks": ticks})) is WorkloadStatus.RUNNING


def test_the_registry_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "workloads.json")
    assert registry.load() == {}
    record = WorkloadRecord(
        name="w",
        argv=["sleep", "1"],
        root_pid=123,
        start_ticks=4,
        started_at="2026-01-01T00:00:00Z",
        cwd="/",
        data_dir=None,
        log_path="/l",
    )
    registry.save({"w": record})
    assert registry.load() == {"w": record}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["workloads.json"]


def test_a_damaged_registry_is_an_error_not_an_empty_host(tmp_path: Path) -> None:
    (tmp_path / "workloads.json").write_text('{"version": 1, "workloads": [{')
    with pytest.raises(WorkloadError, match="is damaged"):
        Registry(tmp_path / "workloads.json").load()
    (tmp_path / "workloads.json").write_text('{"version": 9, "workloads": []}')
    with pytest.raises(WorkloadError, match="has version 9"):
        Registry(tmp_path / "workloads.json").load()


@pytest.mark.asyncio
async def test_a_start_that_fails_to_register_kills_its_tree(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(config)
    await ctx.open()

    def refuse(records: object) -> None:
        raise WorkloadError("disk full")

    monkeypatch.setattr(ctx.workloads.registry, "save", refuse)
    with pytest.raises(WorkloadError, match="disk full"):
        await ctx.workloads.start(WorkloadSpec(name="w", argv=SLEEP))
    assert starter.pids and not starter.alive()
    assert ctx.workloads.records() == []
