"""Who may call what (docs/security.md): an operator everything, a peer only the incoming
and decision routes and only for the migrations it opened (or is the destination of),
anyone else nothing. Over aiohttp's test server on loopback, peers with their tokens."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from haul.agent.app import TABLES
from haul.agent.bindings import SECRET_HEADER, Bindings
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, FakeStarter, agent_client, make_config
from haul.agent.roles import ACCESS, Access
from haul.agent.routing import Route

MakeCtx = Callable[[AgentConfig], AgentContext]
HOST2 = "peer-token-of-host2"
HOST3 = "peer-token-of-host3"
AS_HOST2 = {"Authorization": f"Bearer {HOST2}"}
AS_HOST3 = {"Authorization": f"Bearer {HOST3}"}
ROUTES = [r for table in TABLES for r in table.routes]
EXAMPLES = {"id": "m1", "name": "x", "digest": "sha256:" + "0" * 64}


def _path(route: Route) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: EXAMPLES[m.group(1)], route.path)


def _config(tmp_path: Path, **extra: object) -> AgentConfig:
    peers = {
        "host2": {"url": "http://127.0.0.1:1", "inbound_token": HOST2},
        "host3": {"url": "http://127.0.0.1:2", "inbound_token": HOST3},
    }
    return make_config(tmp_path, criu="/bin/true", peers=peers, **extra)


def _operator_only() -> list[Route]:
    return [r for r in ROUTES if r.auth and ACCESS.get(r.key, Access.OPERATOR) is Access.OPERATOR]


def _error(body: Any) -> tuple[str, str]:
    assert set(body) == {"error"}, body
    return body["error"]["code"], body["error"]["message"]


OPEN_M1 = {"id": "m1", "workload": "web1", "strategy": "post-copy", "needed_bytes": 0}


def test_the_table_names_only_routes_that_exist_and_peers_get_few() -> None:
    served = {r.key for r in ROUTES}
    assert set(ACCESS) <= served
    allowed = {k for k, v in ACCESS.items() if v is not Access.OPERATOR}
    assert ("POST", "/v1/incoming") in allowed
    assert ("GET", "/v1/migrations/{id}/decision") in allowed
    assert all(
        path.startswith(("/v1/incoming", "/v1/migrations/{id}/decision")) for _, path in allowed
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("route", _operator_only(), ids=lambda r: f"{r.method} {r.path}")
async def test_a_peer_is_refused_every_operator_route(
    make_ctx: MakeCtx, tmp_path: Path, starter: FakeStarter, route: Route
) -> None:
    async with agent_client(make_ctx(_config(tmp_path))) as client:
        response = await client.request(
            route.method, _path(route), headers=AS_HOST2, json={"name": "w", "argv": ["true"]}
        )
        assert response.status == 403, await response.text()
        code, message = _error(await response.json())
        assert code == "forbidden" and "host2" in message
    assert starter.calls == []


@pytest.mark.asyncio
async def test_a_peer_cannot_start_adopt_migrate_or_run_hooks(
    make_ctx: MakeCtx, tmp_path: Path, starter: FakeStarter
) -> None:
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\ntouch " + str(tmp_path / "ran") + "\n")
    hook.chmod(0o755)
    asks = [
        ("POST", "/v1/workloads", {"name": "w", "argv": ["sh", "-c", "id"]}),
        ("POST", "/v1/workloads/adopt", {"pid": 1}),
        ("POST", "/v1/migrations", {"workload": "w", "to": "host2", "hooks": [str(hook)]}),
        ("POST", "/v1/migrations/check", {"workload": "w", "to": "host2", "hooks": [str(hook)]}),
        ("DELETE", "/v1/workloads/w", None),
        ("GET", "/v1/incoming", None),
    ]
    async with agent_client(make_ctx(_config(tmp_path))) as client:
        for method, path, body in asks:
            response = await client.request(method, path, headers=AS_HOST2, json=body)
            assert response.status == 403, (path, await response.text())
    assert starter.calls == [] and not (tmp_path / "ran").exists()


@pytest.mark.asyncio
async def test_the_operator_can_call_every_route(make_ctx: MakeCtx, tmp_path: Path) -> None:
    async with agent_client(make_ctx(_config(tmp_path))) as client:
        for route in ROUTES:
            response = await client.request(route.method, _path(route), headers=AUTH)
            assert response.status not in (401, 403), (route.key, await response.text())


@pytest.mark.asyncio
async def test_a_caller_that_is_no_peer_is_refused(make_ctx: MakeCtx, tmp_path: Path) -> None:
    async with agent_client(make_ctx(_config(tmp_path))) as client:
        for token in ("peer-token-of-host9", HOST2 + "x"):
            response = await client.post(
                "/v1/incoming", headers={"Authorization": f"Bearer {token}"}, json=OPEN_M1
            )
            assert response.status == 401
        assert not (tmp_path / "state" / "incoming" / "m1").exists()


@pytest.mark.asyncio
async def test_a_peer_works_on_the_migration_it_opened_with_its_secret(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    ctx = make_ctx(_config(tmp_path))
    async with agent_client(ctx) as client:
        checked = await client.post(
            "/v1/incoming-check", headers=AS_HOST2, json={"workload": "web1", "needed_bytes": 0}
        )
        assert checked.status == 200, await checked.text()
        opened = await client.post("/v1/incoming", headers=AS_HOST2, json=OPEN_M1)
        assert opened.status == 201, await opened.text()
        secret = (await opened.json())["secret"]
        assert secret and len(secret) >= 32
        assert ctx.migrations().incoming.get("m1").source == "host2"
        mine = {**AS_HOST2, SECRET_HEADER: secret}
        seen = await client.get("/v1/incoming/m1", headers=mine)
        assert seen.status == 200 and (await seen.json())["source"] == "host2"
        entries = {"entries": [{"path": "d", "kind": "dir", "mode": 0o755}]}
        made = await client.post("/v1/incoming/m1/entries", headers=mine, json=entries)
        assert made.status == 200, await made.text()
        # without the secret, or with a wrong one: refused before the handler
        for headers in (AS_HOST2, {**AS_HOST2, SECRET_HEADER: secret[:-1] + "x"}):
            refused = await client.post("/v1/incoming/m1/discard", headers=headers)
            assert refused.status == 403
            assert _error(await refused.json())[0] == "forbidden"
        assert ctx.migrations().incoming.get("m1").state.value == "receiving"


@pytest.mark.asyncio
async def test_a_peer_cannot_touch_another_peers_incoming_migration(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    ctx = make_ctx(_config(tmp_path))
    async with agent_client(ctx) as client:
        opened = await client.post("/v1/incoming", headers=AS_HOST2, json=OPEN_M1)
        secret = (await opened.json())["secret"]
        for path in ("/v1/incoming/m1/discard", "/v1/incoming/m1/resume", "/v1/incoming/m1/finish"):
            refused = await client.post(path, headers={**AS_HOST3, SECRET_HEADER: secret})
            assert refused.status == 403, path
            assert "host3" in _error(await refused.json())[1]
        got = await client.get("/v1/incoming/m1", headers={**AS_HOST3, SECRET_HEADER: secret})
        assert got.status == 403
        # host3's own secret for that id does not make it host3's either
        own = Bindings(ctx.config.state_dir).secret("m1", "host3")
        refused = await client.post(
            "/v1/incoming/m1/discard", headers={**AS_HOST3, SECRET_HEADER: own}
        )
        assert refused.status == 403
        assert ctx.migrations().incoming.get("m1").state.value == "opened"


@pytest.mark.asyncio
async def test_after_a_refused_open_the_peers_rollback_finds_nothing_to_discard(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    """A refused open gives no secret, and made nothing: the source's rollback discards
    without one and is told it is done (before, a 403 made the rollback "incomplete").
    Another peer's discard of a migration open here still needs that migration's
    secret, and one being opened keeps its record."""
    ctx = make_ctx(_config(tmp_path))
    async with agent_client(ctx) as client:
        refused = await client.post(
            "/v1/incoming", headers=AS_HOST2, json={**OPEN_M1, "source": "host3"}
        )
        assert refused.status == 403
        discarded = await client.post("/v1/incoming/m1/discard", headers=AS_HOST2)
        assert discarded.status == 200, await discarded.text()
        assert await discarded.json() == {"ok": True}
        opened = await client.post("/v1/incoming", headers=AS_HOST2, json=OPEN_M1)
        assert opened.status == 201
        for who in (AS_HOST2, AS_HOST3):
            refused = await client.post("/v1/incoming/m1/discard", headers=who)
            assert refused.status == 403
        assert ctx.migrations().incoming.get("m1").state.value == "opened"


@pytest.mark.asyncio
async def test_a_peer_opens_only_in_its_own_name(make_ctx: MakeCtx, tmp_path: Path) -> None:
    async with agent_client(make_ctx(_config(tmp_path))) as client:
        refused = await client.post(
            "/v1/incoming", headers=AS_HOST2, json={**OPEN_M1, "source": "host3"}
        )
        assert refused.status == 403
        assert "host2" in _error(await refused.json())[1]
        assert not (tmp_path / "state" / "incoming" / "m1").exists()


@pytest.mark.asyncio
async def test_a_peer_names_only_a_shared_directory_this_agent_allows(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    allowed = tmp_path / "shared"
    (allowed / "m2" / "images").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (allowed / "link").symlink_to(tmp_path / "elsewhere")
    config = _config(tmp_path, shared_dirs=[str(allowed)])
    ask = {**OPEN_M1, "strategy": "stop-and-copy"}
    async with agent_client(make_ctx(config)) as client:
        for where in (tmp_path / "elsewhere", allowed / "link" / "images", Path("/")):
            refused = await client.post(
                "/v1/incoming", headers=AS_HOST2, json={**ask, "shared_images": str(where)}
            )
            assert refused.status == 403, where
            assert "shared_dirs" in _error(await refused.json())[1]
        ok = await client.post(
            "/v1/incoming",
            headers=AS_HOST2,
            json={**ask, "id": "m2", "shared_images": str(allowed / "m2" / "images")},
        )
        assert ok.status == 201, await ok.text()


@pytest.mark.asyncio
async def test_only_the_destination_peer_asks_for_a_decision(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    ctx = make_ctx(_config(tmp_path))
    Bindings(ctx.config.state_dir).record_destination("m7", "host2")
    async with agent_client(ctx) as client:
        path = "/v1/migrations/m7/decision"
        asked = await client.get(path, headers=AS_HOST2)
        assert asked.status == 200, await asked.text()
        assert (await client.get(path, headers=AS_HOST3)).status == 403
        assert (await client.get(path, headers=AUTH)).status == 200
        # a migration this agent never ran has no destination: no peer may ask
        assert (await client.get("/v1/migrations/m8/decision", headers=AS_HOST2)).status == 403


def test_docs_security_lists_exactly_what_peers_may_call() -> None:
    """docs/security.md's table of peer routes is the table the agent enforces."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text()
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE|PATCH) (\S+)` \| (.+) \|$", doc, re.MULTILINE)
    kinds = {"any peer": Access.PEER, "opened": Access.PEER_INCOMING}
    kinds["destination"] = Access.PEER_DECISION
    documented = {
        (method, path): next(kind for word, kind in kinds.items() if word in who)
        for method, path, who in rows
    }
    assert documented == dict(ACCESS)


def test_the_secret_is_the_agents_own_and_survives_a_restart(tmp_path: Path) -> None:
    first = Bindings(tmp_path / "state")
    secret = first.secret("m1", "host2")
    key = tmp_path / "state" / "bindings.key"
    assert (key.stat().st_mode & 0o777) == 0o600 and len(key.read_bytes()) == 32
    again = Bindings(tmp_path / "state")  # a restarted agent
    assert again.check("m1", "host2", secret)
    assert not again.check("m2", "host2", secret) and not again.check("m1", "host3", secret)
    assert not again.check("m1", "host2", None) and not again.check("m1", "host2", "")
    other = Bindings(tmp_path / "elsewhere")  # another agent
    assert not other.check("m1", "host2", secret)
    # the source side: whom a migration went to, and the secret it was given
    first.record_destination("m1", "host2")
    first.record_secret("m1", secret)
    assert (again.destination_of("m1"), again.secret_of("m1")) == ("host2", secret)
    assert again.destination_of("m9") is None and again.destination_of("../x") is None
