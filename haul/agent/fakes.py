"""Fakes of what an agent needs from its host, for tests: no root, no CRIU, no namespaces.

:class:`FakeStarter` starts trees as plain processes (in their own session, not in
new namespaces) and :class:`FakeCriu` answers from a table. A test kills every
process it started (:meth:`FakeStarter.kill_all`, :func:`kill_workloads`), whatever
happened. The agent itself never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from haul.agent.app import make_app
from haul.agent.config import AgentConfig, parse_config
from haul.agent.context import AgentContext
from haul.agent.models import WorkloadStatus
from haul.agent.workloads import status_of
from haul.criu.info import CriuInfo
from haul.criu.results import CriuFeatures, CriuVersion
from haul.errors import HaulError
from haul.nsexec import HostNs
from haul.procfs import alive
from haul.workload.proctree import ProcessTree

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def criu_info(check_ok: bool = True) -> CriuInfo:
    return CriuInfo(
        path="/fake/criu",
        version=CriuVersion(4, 1, 1),
        features=CriuFeatures(mem_track=False, lazy_pages=True, pidfd_store=True),
        check_ok=check_ok,
        check_error="" if check_ok else "Error (criu/cr-check.c:1): fake check fails",
    )


@dataclass
class FakeCriu:
    """What gather() answers; ``error`` makes it raise instead."""

    info: CriuInfo = field(default_factory=criu_info)
    error: HaulError | None = None
    calls: int = 0

    async def __call__(self) -> CriuInfo:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.info


@dataclass
class FakeStarter:
    """Starts ``argv`` as a plain process (no namespaces), as start_tree would be called."""

    calls: list[list[str]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    async def __call__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        host: HostNs = HostNs(),
        cwd: Path = Path("/"),
    ) -> ProcessTree:
        self.calls.append(list(argv))
        with log_path.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=cwd,
                start_new_session=True,
            )
        self.pids.append(proc.pid)
        return ProcessTree(proc.pid, launcher=proc, log_path=log_path)

    def kill_all(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def alive(self) -> list[int]:
        return [p for p in self.pids if alive(p)]


def make_config(tmp_path: Path, **agent: object) -> AgentConfig:
    table: dict[str, object] = {
        "host": "host1",
        # loopback: plain TCP beyond it needs TLS or insecure_lab (docs/security.md)
        "address": "127.0.0.1",
        "state_dir": str(tmp_path / "state"),
        "socket": str(tmp_path / "agent.sock"),
        "min_free_mib": 0,
        "auth": {"token": TOKEN},
    }
    table.update(agent)
    return parse_config({"agent": table}, base=tmp_path)


@contextlib.asynccontextmanager
async def app_client(
    app: web.Application,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The app served on 127.0.0.1 (a free port) and a client of it, closed afterwards."""
    async with TestClient(TestServer(app)) as client:
        yield client


@contextlib.asynccontextmanager
async def agent_client(
    ctx: AgentContext,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """``ctx``'s app served and a client of it; its workloads are killed at the end."""
    async with app_client(make_app(ctx)) as client:
        try:
            yield client
        finally:
            await kill_workloads(ctx)


async def kill_workloads(ctx: AgentContext) -> None:
    """Kill every registered workload's process while the event loop still runs."""
    for record in ctx.workloads.records():
        if status_of(record) is not WorkloadStatus.GONE:
            with contextlib.suppress(HaulError):
                await ctx.workloads.tree(record.name).kill(5.0)


def silent_criu(directory: Path) -> Path:
    """A CRIU binary (``criu swrk FD``) that reads every request and answers none, and
    exits when its caller hangs up: what it is asked hangs until it is cancelled, and
    nothing of it is left once its session closed."""
    path = directory / "silent-criu"
    path.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "fd = int(sys.argv[2])\n"
        "while os.read(fd, 1 << 16):\n"
        "    pass\n"
    )
    path.chmod(0o755)
    return path


class FakeDisk:
    """A disk whose free space is what ``extra_bytes`` left of it once what is under
    ``root`` now and later (file sizes, read on every call) is taken: as an agent's
    incoming migrations write there, it fills (set ``IncomingRegistry.free_bytes`` to
    :meth:`free`)."""

    def __init__(self, root: Path, extra_bytes: int) -> None:
        self.root = root
        self.capacity = self.used() + extra_bytes

    def used(self) -> int:
        total = 0
        for path in self.root.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and not path.is_symlink():
                    total += path.stat().st_size
        return total

    def free(self, path: Path) -> int:
        return self.capacity - self.used()


@dataclass(frozen=True)
class Seen:
    """One request a ScriptedAgent received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedAgent:
    """An HTTP app that answers each (method, path) from a script and records every
    request: the answers of a key are given in turn, the last one again and again; a
    key with no script is a 404 ``not_found`` as the agent would answer it."""

    script: dict[tuple[str, str], list[tuple[int, object]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    #: how long each answer takes
    delay_s: float = 0.0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.Response:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                await request.read(),
            )
        )
        await asyncio.sleep(self.delay_s)
        answers = self.script.get((request.method, request.path))
        if not answers:
            return web.json_response(
                {"error": {"code": "not_found", "message": f"no route {request.path}"}}, status=404
            )
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.json_response(body, status=status)

    def calls(self) -> list[tuple[str, str]]:
        return [(s.method, s.path) for s in self.seen]


@dataclass
class Receiving:
    """An agent app with one incoming migration open, served on 127.0.0.1, and where
    that migration's images and the workload's files land."""

    http: TestClient[web.Request, web.Application]
    ctx: AgentContext
    migration_id: str
    data: Path
    images: Path

    @property
    def url(self) -> str:
        return str(self.http.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def receiving(ctx: AgentContext, workload: str = "web1") -> AsyncIterator[Receiving]:
    """``ctx``'s app with the incoming migration "m1" of ``workload`` open (post-copy:
    no page server to start, so no CRIU is run)."""
    async with agent_client(ctx) as http:
        opened = await http.post(
            "/v1/incoming",
            json={"id": "m1", "workload": workload, "strategy": "post-copy", "needed_bytes": 0},
            headers=AUTH,
        )
        if opened.status != 201:
            raise AssertionError(f"opening m1 failed: {await opened.text()}")
        item = ctx.migrations().incoming.get("m1")
        yield Receiving(http, ctx, "m1", ctx.config.workloads_dir / workload, item.dest.images)
