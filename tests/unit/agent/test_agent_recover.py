"""A restarted source agent finishes what its journal left open: the source tree goes
before the destination's copy runs, and an unreachable destination is told it will ask."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from haul.agent.client import AgentAccess
from haul.agent.fakes import app_client
from haul.agent.jobs import MigrationJobs
from haul.agent.journal import Journal
from haul.criu.service import Criu
from haul.engine.phases import Phase
from haul.engine.ports import JournalRecord
from haul.workload.proctree import ProcessTree


class Tree:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.alive = True

    def pids(self) -> list[int]:
        return [2**22 + 1]  # above any pid_max: no such process, SIGKILL finds none

    async def kill(self) -> None:
        self.log.append("source killed")
        self.alive = False

    def resume(self) -> int:
        self.log.append("source resumed")
        return 1


def destination(log: list[str]) -> web.Application:
    async def step(request: web.Request) -> web.Response:
        log.append(f"destination {request.match_info['step']}")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/incoming/{id}/{step}", step)
    return app


async def left_open(tmp_path: Path, phases: list[Phase]) -> Journal:
    journal = Journal(tmp_path / "journal")
    for phase in phases:
        await journal.append(JournalRecord("m1", phase, "test"))
    (tmp_path / "outgoing").mkdir()
    (tmp_path / "outgoing" / "m1.json").write_text(json.dumps({"workload": "web1", "to": "host2"}))
    return journal


def jobs(tmp_path: Path, journal: Journal, url: str, tree: Tree, moved: list[str]) -> MigrationJobs:
    async def on_moved(name: str) -> None:
        moved.append(name)

    def tree_of(name: str) -> ProcessTree:
        return tree  # type: ignore[return-value]

    return MigrationJobs(
        host="host1",
        criu=Criu("/bin/true"),
        state_dir=tmp_path,
        data_root=tmp_path / "w",
        journal=journal,
        advertise_address="127.0.0.1",
        peers={"host2": AgentAccess.of_peer(url, token="t")},
        tree_of=tree_of,
        argv_of=lambda name: [],
        on_moved=on_moved,
    )


def last(journal: Journal) -> dict[str, Any]:
    record = journal.read("m1")[-1].record
    return {"phase": record.phase, "cause": record.cause}


@pytest.mark.asyncio
async def test_committed_kills_the_source_before_the_destination_resumes(tmp_path: Path) -> None:
    log: list[str] = []
    moved: list[str] = []
    journal = await left_open(tmp_path, [Phase.RESTORE, Phase.COMMIT])
    async with app_client(destination(log)) as client:
        url = str(client.make_url("")).rstrip("/")
        lines = await jobs(tmp_path, journal, url, Tree(log), moved).recover()
    assert log == ["source killed", "destination resume", "destination finish"]
    assert moved == ["web1"]
    assert lines == ["m1: committed before the agent stopped: web1 runs on host2"]
    assert last(journal) == {"phase": Phase.DONE, "cause": "recovered"}
    assert not (tmp_path / "outgoing" / "m1.json").exists()


@pytest.mark.asyncio
async def test_an_unreachable_destination_is_left_to_ask(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log: list[str] = []
    journal = await left_open(tmp_path, [Phase.FREEZE, Phase.RESTORE])
    [line] = await jobs(tmp_path, journal, f"http://127.0.0.1:{port}", Tree(log), []).recover()
    assert log == ["source resumed"]
    assert line.startswith("m1: not committed when the agent stopped: web1 runs on host1; ")
    assert "destination host2 unreachable" in line
    assert line.endswith("host2 asks this agent for the decision and discards its copy")
    assert last(journal) == {"phase": Phase.ROLLED_BACK, "cause": "recovered"}


@pytest.mark.asyncio
async def test_what_a_migration_wrote_in_a_shared_directory_goes_with_it(tmp_path: Path) -> None:
    """A --shared-dir migration's images in SHARED/ID: removed once it is finished, the
    rest of the shared directory left as it is."""
    log: list[str] = []
    journal = await left_open(tmp_path, [Phase.FREEZE, Phase.RESTORE])
    shared = tmp_path / "shared"
    (shared / "m1" / "images").mkdir(parents=True)
    (shared / "layers" / "web1" / "upper").mkdir(parents=True)
    intent = {"workload": "web1", "to": "host2", "shared_dir": str(shared)}
    (tmp_path / "outgoing" / "m1.json").write_text(json.dumps(intent))
    async with app_client(destination(log)) as client:
        url = str(client.make_url("")).rstrip("/")
        await jobs(tmp_path, journal, url, Tree(log), []).recover()
    assert log == ["destination discard", "source resumed"]
    assert sorted(p.name for p in shared.iterdir()) == ["layers"]
    assert (shared / "layers" / "web1" / "upper").is_dir()
