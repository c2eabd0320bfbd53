"""The agent's limits ([agent.limits], docs/limits.md), through its API with fakes: how
many incoming migrations and migrations it takes at once (a 429 in one line beyond),
each incoming migration's byte budget (a 413), the disk's free space against what
actually arrives and the journal's reserve (a 507), and uploads written off the event
loop."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, FakeDisk, agent_client, make_config, silent_criu
from haul.dest.intake import ENTRY_BYTES, IntakeLimits
from haul.errors import ConfigError

MakeCtx = Callable[[AgentConfig], AgentContext]
Client = TestClient[web.Request, web.Application]
KIB = 1 << 10
MIB = 1 << 20


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _error(body: Any) -> tuple[str, str]:
    assert set(body) == {"error"}, body
    message = str(body["error"]["message"])
    assert "\n" not in message
    return str(body["error"]["code"]), message


async def open_incoming(
    client: Client, mid: str, *, needed_bytes: int = 0, workload: str | None = None
) -> tuple[int, Any]:
    answer = await client.post(
        "/v1/incoming",
        json={
            "id": mid,
            "workload": workload or f"w-{mid}",
            "strategy": "post-copy",
            "needed_bytes": needed_bytes,
        },
        headers=AUTH,
    )
    return answer.status, await answer.json()


async def put_image(client: Client, mid: str, name: str, data: bytes | Any) -> tuple[int, Any]:
    sha = _sha(data) if isinstance(data, bytes) else _sha(b"".join(data.parts))
    answer = await client.put(
        f"/v1/incoming/{mid}/images/{name}",
        data=io.BytesIO(data) if isinstance(data, bytes) else data.stream(),
        headers={**AUTH, "X-Haul-SHA256": sha},
    )
    return answer.status, await answer.json()


async def put_data(client: Client, mid: str, path: str, data: bytes) -> tuple[int, Any]:
    answer = await client.put(
        f"/v1/incoming/{mid}/data",
        params={"path": path},
        data=io.BytesIO(data),
        headers={**AUTH, "X-Haul-SHA256": _sha(data), "X-Haul-Mode": "644"},
    )
    return answer.status, await answer.json()


async def wait_finished(client: Client, mid: str) -> None:
    async with asyncio.timeout(30):
        while True:
            view = await (await client.get(f"/v1/migrations/{mid}", headers=AUTH)).json()
            if view["finished"]:
                return
            await asyncio.sleep(0.02)


class Streamed:
    """A body sent in chunks, with no length given up front (as the transport sends)."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts

    async def stream(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
            await asyncio.sleep(0)


# ------------------------------------------------------------------ the configuration


def test_limits_have_defaults_and_bounds(tmp_path: Path) -> None:
    limits = make_config(tmp_path).limits
    assert (limits.max_incoming, limits.max_migrations) == (8, 4)
    assert (limits.incoming_idle_s, limits.incoming_deadline_s) == (300.0, 21600.0)
    assert (limits.upload_margin, limits.upload_slack_bytes) == (1.25, 64 * MIB)
    assert limits.journal_reserve_bytes == 64 * MIB
    set_ = make_config(tmp_path, limits={"max_incoming": 2, "journal_reserve_bytes": 0}).limits
    assert (set_.max_incoming, set_.journal_reserve_bytes) == (2, 0)


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ({"max_incoming": 0}, "agent.limits.max_incoming: Input should be greater than or equal"),
        ({"incoming_idle_s": 0}, "agent.limits.incoming_idle_s: Input should be greater than 0"),
        ({"upload_margin": 0.5}, "agent.limits.upload_margin: Input should be greater than or"),
        ({"incoming_deadline_s": float("inf")}, "agent.limits.incoming_deadline_s: Input should"),
        ({"max_incomng": 3}, "agent.limits.max_incomng: Extra inputs are not permitted"),
    ],
)
def test_a_bad_limit_is_one_line_naming_it(
    tmp_path: Path, limits: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(tmp_path, limits=limits)
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_the_deadline_is_no_shorter_than_the_idle_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(tmp_path, limits={"incoming_idle_s": 60, "incoming_deadline_s": 30})
    assert "incoming_deadline_s" in str(raised.value)


def test_the_budget_is_the_preflights_claim_with_margin_and_slack() -> None:
    limits = IntakeLimits(margin=1.25, slack_bytes=MIB)
    assert limits.budget(0) == MIB
    assert limits.budget(100 * MIB) == 125 * MIB + MIB


# ------------------------------------------------------------------ how many at once


@pytest.mark.asyncio
async def test_incoming_migrations_beyond_max_incoming_are_a_429(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    ctx = make_ctx(make_config(tmp_path, criu="/bin/true", limits={"max_incoming": 2}))
    async with agent_client(ctx) as client:
        assert (await open_incoming(client, "m1"))[0] == 201
        assert (await open_incoming(client, "m2"))[0] == 201
        status, body = await open_incoming(client, "m3")
        assert status == 429
        code, message = _error(body)
        assert code == "too_many"
        assert message == (
            "host1 takes no more incoming migrations now: 2 are open here "
            "([agent.limits] max_incoming = 2); nothing of m3 was made here"
        )
        assert not (ctx.config.state_dir / "incoming" / "m3").exists()
        assert not (ctx.config.workloads_dir / "w-m3").exists()
        discarded = await client.post("/v1/incoming/m1/discard", headers=AUTH)
        assert discarded.status == 200
        assert (await open_incoming(client, "m3"))[0] == 201


@pytest.mark.asyncio
async def test_opens_at_once_count_before_they_finish(make_ctx: MakeCtx, tmp_path: Path) -> None:
    """Opening takes several steps (room, record, page server): opens sent together
    cannot all slip in before the first is counted."""
    ctx = make_ctx(make_config(tmp_path, criu="/bin/true", limits={"max_incoming": 3}))
    async with agent_client(ctx) as client:
        answers = await asyncio.gather(*(open_incoming(client, f"m{i}") for i in range(8)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] * 3 + [429] * 5


@pytest.mark.asyncio
async def test_migrations_beyond_max_migrations_are_a_429(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """Two workloads, one migration at a time: the second is refused while the first
    runs (its pre-flight hangs on a CRIU that never answers), and goes once it ended."""
    config = make_config(
        tmp_path,
        criu=str(silent_criu(tmp_path)),
        limits={"max_migrations": 1},
        peers={"host2": {"url": "http://127.0.0.1:9", "token": "t"}},
    )
    async with agent_client(make_ctx(config)) as client:
        for name in ("w1", "w2"):
            started = await client.post(
                "/v1/workloads", json={"name": name, "argv": ["sleep", "300"]}, headers=AUTH
            )
            assert started.status == 201, await started.text()
        first = await client.post(
            "/v1/migrations", json={"workload": "w1", "to": "host2"}, headers=AUTH
        )
        assert first.status == 202, await first.text()
        mid = (await first.json())["id"]
        second = await client.post(
            "/v1/migrations", json={"workload": "w2", "to": "host2"}, headers=AUTH
        )
        assert second.status == 429
        code, message = _error(await second.json())
        assert code == "too_many"
        assert message == (
            "host1 runs 1 migration already ([agent.limits] max_migrations = 1); "
            "w2 keeps running on host1, try again once one has ended"
        )
        assert (await client.post(f"/v1/migrations/{mid}/abort", headers=AUTH)).status == 200
        await wait_finished(client, mid)
        third = await client.post(
            "/v1/migrations", json={"workload": "w2", "to": "host2"}, headers=AUTH
        )
        assert third.status == 202, await third.text()
        mid = (await third.json())["id"]
        assert (await client.post(f"/v1/migrations/{mid}/abort", headers=AUTH)).status == 200
        await wait_finished(client, mid)


# ------------------------------------------------------------------ the byte budget


@pytest.mark.asyncio
async def test_what_arrives_is_counted_against_the_budget(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """Budget 1 MiB (the pre-flight's 1 MiB, no margin, no slack). What is held counts:
    a data file sent again replaces itself, a removed one frees its bytes, a refused
    upload leaves nothing and frees what it took."""
    config = make_config(
        tmp_path, criu="/bin/true", limits={"upload_margin": 1.0, "upload_slack_bytes": 0}
    )
    ctx = make_ctx(config)
    async with agent_client(ctx) as client:
        assert (await open_incoming(client, "m1", needed_bytes=MIB))[0] == 201
        images = ctx.migrations().incoming.get("m1").dest.images
        assert (await put_image(client, "m1", "a.img", b"a" * 400 * KIB))[0] == 200
        assert (await put_data(client, "m1", "f", b"1" * 400 * KIB))[0] == 200
        assert (await put_data(client, "m1", "f", b"2" * 400 * KIB))[0] == 200  # replaced
        status, body = await put_image(client, "m1", "b.img", Streamed(*[b"b" * 100 * KIB] * 4))
        assert status == 413
        code, message = _error(body)
        assert code == "over_budget"
        assert message.startswith("incoming migration m1 is over its byte budget: ")
        assert "1.0 MiB allowed" in message and "[agent.limits]" in message
        assert not (images / "b.img").exists()
        remove = await client.post("/v1/incoming/m1/remove", json={"paths": ["f"]}, headers=AUTH)
        assert (await remove.json()) == {"removed": 1}
        assert (await put_image(client, "m1", "b.img", b"b" * 400 * KIB))[0] == 200
        entries = await client.post(
            "/v1/incoming/m1/entries",
            json={"entries": [{"path": "d", "kind": "dir", "mode": 0o755}]},
            headers=AUTH,
        )
        assert entries.status == 200
        intake = ctx.migrations().incoming.get("m1").intake
        assert intake.charged == 800 * KIB + ENTRY_BYTES
        status, body = await put_image(client, "m1", "c.img", b"c" * 300 * KIB)
        assert (status, _error(body)[0]) == (413, "over_budget")
        assert intake.charged == 800 * KIB + ENTRY_BYTES, "the refused upload freed its bytes"


@pytest.mark.asyncio
async def test_a_data_file_resent_near_the_edge_is_not_counted_twice(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path, criu="/bin/true", limits={"upload_margin": 1.0, "upload_slack_bytes": 0}
    )
    async with agent_client(make_ctx(config)) as client:
        assert (await open_incoming(client, "m1", needed_bytes=MIB))[0] == 201
        for fill in b"123":
            assert (await put_data(client, "m1", "big", bytes([fill]) * 900 * KIB))[0] == 200


@pytest.mark.asyncio
async def test_a_claim_of_zero_bytes_gets_the_slack_only(make_ctx: MakeCtx, tmp_path: Path) -> None:
    """needed_bytes is what the caller says: whatever it says, what it sends is bounded
    by it (and what it says is checked against the room here)."""
    config = make_config(tmp_path, criu="/bin/true", limits={"upload_slack_bytes": 64 * KIB})
    async with agent_client(make_ctx(config)) as client:
        assert (await open_incoming(client, "m1", needed_bytes=0))[0] == 201
        assert (await put_image(client, "m1", "a.img", b"a" * 64 * KIB))[0] == 200
        status, body = await put_data(client, "m1", "f", b"x")
        assert (status, _error(body)[0]) == (413, "over_budget")


# ------------------------------------------------------------------ the disk and the reserve


@pytest.mark.asyncio
async def test_the_disk_is_checked_against_what_arrives_and_the_reserve_kept(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """A disk of 3 MiB more than the state directory holds now, 1 MiB of it kept for
    the journal: 1.5 MiB arrive, the next 1 MiB would eat into the reserve (refused,
    and its part gone); a claim beyond the room left is refused at the open."""
    config = make_config(
        tmp_path,
        criu="/bin/true",
        limits={"journal_reserve_bytes": MIB, "upload_slack_bytes": 100 * MIB},
    )
    ctx = make_ctx(config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    disk = FakeDisk(config.state_dir, extra_bytes=3 * MIB)
    ctx.migrations().incoming.free_bytes = disk.free
    async with agent_client(ctx) as client:
        assert (await open_incoming(client, "m1"))[0] == 201
        images = ctx.migrations().incoming.get("m1").dest.images
        assert (await put_image(client, "m1", "a.img", b"a" * (3 * MIB // 2)))[0] == 200
        status, body = await put_image(client, "m1", "b.img", Streamed(*[b"b" * 256 * KIB] * 4))
        assert status == 507
        code, message = _error(body)
        assert code == "no_room"
        assert message.startswith("no room for incoming migration m1 here: ")
        assert "1.0 MiB kept for the journal ([agent.limits] journal_reserve_bytes)" in message
        assert not (images / "b.img").exists()
        assert disk.free(config.state_dir) >= 3 * MIB // 2 - 64 * KIB, "b.img's part is gone"
        status, body = await open_incoming(client, "m2", needed_bytes=2 * MIB)
        assert status == 507
        code, message = _error(body)
        assert message.startswith("no room for incoming migration m2 here: 1.5 MiB free in ")
        assert code == "no_room" and message.endswith("; nothing was made here")
        assert not (config.state_dir / "incoming" / "m2").exists()
        # and the pre-flight says so first, touching nothing
        check = await client.post(
            "/v1/incoming-check",
            json={"workload": "w-m2", "needed_bytes": 2 * MIB},
            headers=AUTH,
        )
        assert check.status == 507
        code, message = _error(await check.json())
        assert code == "no_room" and message.startswith("no room for w-m2's incoming migration")


# ------------------------------------------------------------------ off the event loop


@pytest.mark.asyncio
async def test_uploads_are_written_off_the_event_loop(
    make_ctx: MakeCtx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: list[threading.Thread] = []
    real_write = os.write

    def spy(fd: int, data: Any) -> int:
        writers.append(threading.current_thread())
        return real_write(fd, data)

    ctx = make_ctx(make_config(tmp_path, criu="/bin/true"))
    async with agent_client(ctx) as client:
        assert (await open_incoming(client, "m1", needed_bytes=8 * MIB))[0] == 201
        loop_thread = threading.current_thread()
        monkeypatch.setattr(os, "write", spy)
        assert (await put_image(client, "m1", "a.img", Streamed(*[b"a" * MIB] * 3)))[0] == 200
        assert (await put_data(client, "m1", "f", b"f" * 3 * MIB))[0] == 200
        monkeypatch.undo()
    assert writers, "the uploads were written with os.write"
    assert all(t is not loop_thread for t in writers)


@pytest.mark.asyncio
async def test_only_the_latest_ended_migrations_are_remembered(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """Ended migrations are kept for GET /v1/migrations up to a number (their journals
    stay): an agent that runs migrations for months does not grow with them."""
    config = make_config(
        tmp_path, criu="/bin/true", peers={"host2": {"url": "http://127.0.0.1:9", "token": "t"}}
    )
    ctx = make_ctx(config)
    async with agent_client(ctx) as client:
        ctx.migrations().jobs.ended_kept = 2
        started = await client.post(
            "/v1/workloads", json={"name": "w1", "argv": ["sleep", "300"]}, headers=AUTH
        )
        assert started.status == 201
        ids = []
        for _ in range(4):  # each ends at once: this CRIU answers nothing
            answer = await client.post(
                "/v1/migrations", json={"workload": "w1", "to": "host2"}, headers=AUTH
            )
            assert answer.status == 202, await answer.text()
            ids.append((await answer.json())["id"])
            await wait_finished(client, ids[-1])
        listed = await (await client.get("/v1/migrations", headers=AUTH)).json()
        assert [m["id"] for m in listed["migrations"]] == ids[1:]
        gone = await client.get(f"/v1/migrations/{ids[0]}", headers=AUTH)
        assert gone.status == 404
