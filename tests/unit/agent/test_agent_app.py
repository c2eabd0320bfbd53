"""The agent's app over aiohttp's test server: auth, JSON errors, health, info, metrics, OpenAPI."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel

from haul.agent.app import TABLES, make_app
from haul.agent.auth import peer_uid
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, TOKEN, FakeCriu, FakeStarter, agent_client, app_client, criu_info
from haul.agent.hostinfo import cpu_of
from haul.agent.routes import health
from haul.agent.routing import RouteTable
from haul.errors import ConfigError, CriuError

MakeCtx = Callable[[AgentConfig], AgentContext]
PROTECTED = [
    ("GET", "/readyz"),
    ("GET", "/v1/info"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/workloads"),
    ("GET", "/v1/workloads/x"),
    ("DELETE", "/v1/workloads/x"),
    ("POST", "/v1/workloads"),
    ("GET", "/no/such/route"),
]


def _error(body: Any) -> tuple[str, str]:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}
    assert "\n" not in body["error"]["message"]
    return body["error"]["code"], body["error"]["message"]


# ------------------------------------------------------------------ auth


@pytest.mark.asyncio
async def test_healthz_needs_no_credentials(make_ctx: MakeCtx, config: AgentConfig) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.get("/healthz")
        assert response.status == 200
        assert await response.json() == {"ok": True}


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_other_route_refuses_a_caller_without_a_token(
    make_ctx: MakeCtx, config: AgentConfig, method: str, path: str
) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.request(method, path)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert _error(await response.json())[0] == "unauthorized"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}x", "Bearer s3cret", f"Basic {TOKEN}", "Bearer", f"{TOKEN}"]
)
async def test_a_wrong_token_is_refused(
    make_ctx: MakeCtx, config: AgentConfig, header: str
) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.get("/v1/info", headers={"Authorization": header})
        assert response.status == 401
        _error(await response.json())


@pytest.mark.asyncio
async def test_the_right_token_is_let_in(make_ctx: MakeCtx, config: AgentConfig) -> None:
    async with agent_client(make_ctx(config)) as client:
        for scheme in ("Bearer", "bearer"):
            response = await client.get("/v1/info", headers={"Authorization": f"{scheme} {TOKEN}"})
            assert response.status == 200


@pytest.mark.asyncio
async def test_a_refused_request_changes_nothing(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter
) -> None:
    registry = config.state_dir / "workloads.json"
    async with agent_client(make_ctx(config)) as client:
        before = registry.read_bytes() if registry.exists() else None
        response = await client.post(
            "/v1/workloads",
            json={"name": "w", "argv": ["sleep", "60"]},
            headers={"Authorization": "Bearer wrong"},
        )
        assert response.status == 401
        assert starter.calls == []
        assert (registry.read_bytes() if registry.exists() else None) == before
        assert not (config.state_dir / "workloads" / "w").exists()
        listing = await client.get("/v1/workloads", headers=AUTH)
        assert (await listing.json())["workloads"] == []


@pytest.mark.asyncio
async def test_unknown_routes_are_401_before_they_are_404(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    """An anonymous caller learns nothing about which routes exist."""
    async with agent_client(make_ctx(config)) as client:
        assert (await client.get("/v1/secret")).status == 401
        assert (await client.get("/v1/secret", headers=AUTH)).status == 404


@pytest.mark.asyncio
async def test_root_on_the_unix_socket_needs_no_token(
    make_ctx: MakeCtx, config: AgentConfig, tmp_path: Path
) -> None:
    import aiohttp

    runner = web.AppRunner(make_app(make_ctx(config)))
    await runner.setup()
    path = tmp_path / "a.sock"
    site = web.UnixSite(runner, str(path))
    await site.start()
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s,
            s.get("http://agent/v1/info") as response,
        ):
            if os.geteuid() == 0:
                assert response.status == 200
            else:
                assert response.status == 401
                assert "is not root" in (await response.json())["error"]["message"]
    finally:
        await runner.cleanup()


def test_peer_uid_reads_the_kernels_credentials() -> None:
    class Transport:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def get_extra_info(self, name: str) -> object:
            return self.sock if name == "socket" else None

    class Request:
        def __init__(self, sock: socket.socket) -> None:
            self.transport = Transport(sock)

    a, b = socket.socketpair(socket.AF_UNIX)
    tcp = socket.socket(socket.AF_INET)
    try:
        assert peer_uid(Request(a)) == os.geteuid()  # type: ignore[arg-type]
        assert peer_uid(Request(tcp)) is None  # type: ignore[arg-type]
    finally:
        for s in (a, b, tcp):
            s.close()


# ------------------------------------------------------------------ JSON errors


@pytest.mark.asyncio
async def test_unknown_route_and_wrong_method_answer_json(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.get("/v2/nothing", headers=AUTH)
        assert response.status == 404
        assert _error(await response.json()) == ("not_found", "no route GET /v2/nothing")
        response = await client.put("/v1/workloads", headers=AUTH)
        assert response.status == 405
        assert _error(await response.json())[0] == "method_not_allowed"
        assert response.headers["Allow"] == "GET, POST"


@pytest.mark.asyncio
@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2", b"\xff\xfe"])
async def test_malformed_json_is_400(
    make_ctx: MakeCtx, config: AgentConfig, body: bytes, starter: FakeStarter
) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.post(
            "/v1/workloads", data=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert response.status == 400
        assert _error(await response.json())[0] == "malformed_json"
    assert starter.calls == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "w"}, "argv: a process workload needs a command"),
        ({"name": "w", "argv": []}, "argv: a process workload needs a command"),
        ({"name": "w", "argv": "sleep 1"}, "argv: Input should be a valid list"),
        ({"name": "w", "argv": ["a\x00b"]}, "argv.0: an argument may not contain a NUL byte"),
        ({"name": "w", "argv": ["true"], "colour": "red"}, "colour: Extra inputs"),
        ({"name": "w", "argv": ["true"], "data_dir": "rel/dir"}, "data_dir: must be an absolute"),
        ({"name": "w", "argv": ["true"], "data_dir": "/a/../b"}, "data_dir: must not contain"),
        ([1, 2], "Input should be a valid dictionary"),
        ({"name": "w", "argv": ["true"], "image": "oci:/i"}, "image: only for runtime runc"),
        ({"name": "w", "runtime": "runc"}, "runc takes exactly one of image, bundle and rootfs"),
        (
            {"name": "w", "runtime": "runc", "image": "oci:/i", "bundle": "/b"},
            "exactly one of image, bundle and rootfs (given: image, bundle)",
        ),
        ({"name": "w", "runtime": "runc", "rootfs": "/r"}, "bare rootfs needs a command"),
        ({"name": "w", "runtime": "runc", "image": "/i"}, "image: image '/i': give an OCI"),
        ({"name": "w", "runtime": "runc", "image": "oci:/i:a b"}, "bad tag 'a b'"),
        ({"name": "w", "runtime": "runc", "bundle": "b"}, "bundle: must be an absolute path"),
        (
            {"name": "w", "runtime": "runc", "image": "oci:/i", "data_dir": "/d"},
            "data_dir: only for process workloads",
        ),
        ({"name": "w", "runtime": "docker", "image": "oci:/i"}, "runtime: Input should be"),
    ],
)
async def test_a_body_that_fails_validation_is_400_in_one_line(
    make_ctx: MakeCtx, config: AgentConfig, starter: FakeStarter, body: object, says: str
) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.post("/v1/workloads", json=body, headers=AUTH)
        assert response.status == 400
        code, message = _error(await response.json())
        assert code == "invalid_body"
        assert says in message, message
    assert starter.calls == []


@pytest.mark.asyncio
async def test_a_handler_bug_still_answers_json(make_ctx: MakeCtx, config: AgentConfig) -> None:
    class Boom(BaseModel):
        ok: bool

    table = RouteTable("test")

    @table.json("GET", "/v1/boom", name="boom", summary="fails", response=Boom)
    async def boom(request: web.Request) -> Boom:
        raise KeyError("bug")

    async with agent_client_with(make_ctx(config), (*TABLES, table)) as client:
        response = await client.get("/v1/boom", headers=AUTH)
        assert response.status == 500
        assert _error(await response.json()) == (
            "internal",
            "internal error (KeyError); see the agent's log",
        )


def agent_client_with(ctx: AgentContext, tables: tuple[RouteTable, ...]) -> Any:
    return app_client(make_app(ctx, tables=tables))


@pytest.mark.asyncio
async def test_an_area_of_routes_is_added_by_a_table(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    class Echo(BaseModel):
        text: str

    table = RouteTable("echo")

    @table.json_body("POST", "/v1/echo", body=Echo, response=Echo, name="echo", summary="echo")
    async def echo(request: web.Request, body: Echo) -> Echo:
        return Echo(text=body.text * 2)

    async with agent_client_with(make_ctx(config), (*TABLES, table)) as client:
        response = await client.post("/v1/echo", json={"text": "ab"}, headers=AUTH)
        assert await response.json() == {"text": "abab"}
        doc = await (await client.get("/v1/openapi.json", headers=AUTH)).json()
        assert doc["paths"]["/v1/echo"]["post"]["operationId"] == "echo"


def test_a_route_declared_twice_is_refused(make_ctx: MakeCtx, config: AgentConfig) -> None:
    with pytest.raises(ValueError, match="in two tables"):
        make_app(make_ctx(config), tables=(health.table, health.table))
    table = RouteTable("t")
    table.raw("GET", "/x", name="x", summary="x", media_type="text/plain")(health.metrics)
    with pytest.raises(ValueError, match="declared twice"):
        table.raw("GET", "/x", name="y", summary="y", media_type="text/plain")(health.metrics)


# ------------------------------------------------------------------ OpenAPI


@pytest.mark.asyncio
async def test_openapi_lists_exactly_the_registered_routes(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    app = make_app(make_ctx(config))
    registered = {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None
    }
    async with app_client(app) as client:
        response = await client.get("/v1/openapi.json", headers=AUTH)
        assert response.status == 200
        doc = await response.json()
    assert doc["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == registered
    assert ("GET", "/healthz") in documented and ("POST", "/v1/workloads") in documented
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/v1/info"]["get"]


@pytest.mark.asyncio
async def test_openapi_schemas_come_from_the_handlers_models(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    async with agent_client(make_ctx(config)) as client:
        doc = await (await client.get("/v1/openapi.json", headers=AUTH)).json()
    schemas = doc["components"]["schemas"]

    def resolve(ref: dict[str, str]) -> dict[str, Any]:
        name = ref["$ref"].removeprefix("#/components/schemas/")
        schema: dict[str, Any] = schemas[name]
        return schema

    start = doc["paths"]["/v1/workloads"]["post"]
    spec = resolve(start["requestBody"]["content"]["application/json"]["schema"])
    assert spec["required"] == ["name"]
    assert spec["properties"]["runtime"]["enum"] == ["process", "runc"]
    assert spec["properties"]["name"]["pattern"] == "^[a-z0-9][a-z0-9_.-]{0,62}$"
    assert spec["additionalProperties"] is False
    assert set(start["responses"]) == {"201", "400", "401", "403", "409"}
    assert start["x-haul-callers"] == "operators"  # who may call it (haul/agent/roles.py)
    opening = doc["paths"]["/v1/incoming"]["post"]
    assert opening["x-haul-callers"] == "operators and peers"
    assert "x-haul-callers" not in doc["paths"]["/healthz"]["get"]
    view = resolve(start["responses"]["201"]["content"]["application/json"]["schema"])
    assert {"name", "root_pid", "status", "started_at"} <= set(view["properties"])
    error = resolve(start["responses"]["409"]["content"]["application/json"]["schema"])
    assert error["properties"]["error"]["$ref"].endswith("/ErrorDetail")
    get = doc["paths"]["/v1/workloads/{name}"]["get"]
    assert get["parameters"][0]["name"] == "name" and get["parameters"][0]["in"] == "path"
    ready = doc["paths"]["/readyz"]["get"]["responses"]
    assert ready["200"]["content"] == ready["503"]["content"]
    assert "text/plain" in next(
        iter(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"])
    )
    # every $ref anywhere resolves
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', str(doc).replace("'", '"'))
    assert refs and all(r in schemas for r in refs)


# ------------------------------------------------------------------ readiness and info


@pytest.mark.asyncio
async def test_readyz_is_200_when_every_check_passes(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    async with agent_client(make_ctx(config)) as client:
        response = await client.get("/readyz", headers=AUTH)
        body = await response.json()
        assert response.status == 200, body
        assert body["ready"] is True and body["failing"] == []
        assert [c["name"] for c in body["checks"]] == ["criu", "state_dir", "free_space"]
        assert not (config.state_dir / health.PROBE_NAME).exists()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("setup", "failing", "says"),
    [
        ("criu_raises", "criu", "CRIU version: CRIU is not there"),
        ("criu_check_fails", "criu", "fake check fails"),
        ("no_space", "free_space", "need 1073741824 MiB"),
        ("no_criu", "criu", "agent.criu:"),
    ],
)
async def test_readyz_is_503_and_lists_what_fails(
    fake_criu: FakeCriu,
    starter: FakeStarter,
    tmp_path: Path,
    setup: str,
    failing: str,
    says: str,
) -> None:
    from haul.agent.fakes import make_config

    overrides: dict[str, object] = {}
    if setup == "no_space":
        overrides["min_free_mib"] = 2**30
    if setup == "criu_raises":
        fake_criu.error = CriuError("CRIU is not there", request="version")
    if setup == "criu_check_fails":
        fake_criu.info = criu_info(check_ok=False)
    if setup == "no_criu":
        overrides["criu"] = str(tmp_path / "no-criu")
    config = make_config(tmp_path, **overrides)
    if setup == "no_criu":
        ctx = AgentContext.create(config, start=starter)  # the real CRIU lookup
    else:
        ctx = AgentContext.create(config, gather_criu=fake_criu, start=starter)
    async with agent_client(ctx) as client:
        response = await client.get("/readyz", headers=AUTH)
        assert response.status == 503
        body = await response.json()
    assert body["ready"] is False
    bad = [c for c in body["checks"] if not c["ok"]]
    assert [c["name"] for c in bad] == body["failing"] == [failing]
    assert says in bad[0]["detail"]


@pytest.mark.asyncio
async def test_readyz_fails_when_the_state_dir_is_gone(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    async with agent_client(make_ctx(config)) as client:
        config.state_dir.rename(config.state_dir.with_name("elsewhere"))
        response = await client.get("/readyz", headers=AUTH)
        body = await response.json()
    assert response.status == 503
    failing = {c["name"]: c["detail"] for c in body["checks"] if not c["ok"]}
    assert set(failing) == {"state_dir", "free_space"}
    assert failing["state_dir"].startswith(f"cannot write in {config.state_dir}")


@pytest.mark.asyncio
async def test_criu_is_asked_once_for_a_while(
    make_ctx: MakeCtx, config: AgentConfig, fake_criu: FakeCriu
) -> None:
    async with agent_client(make_ctx(config)) as client:
        for _ in range(3):
            await client.get("/readyz", headers=AUTH)
            await client.get("/v1/info", headers=AUTH)
    assert fake_criu.calls == 1


@pytest.mark.asyncio
async def test_info_describes_the_host(make_ctx: MakeCtx, config: AgentConfig) -> None:
    async with agent_client(make_ctx(config)) as client:
        info = await (await client.get("/v1/info", headers=AUTH)).json()
    assert info["host"] == "host1"
    assert info["kernel_release"] == os.uname().release
    assert info["criu"]["version"] == "4.1.1"
    assert info["criu"]["features"] == {"mem_track": False, "lazy_pages": True, "pidfd_store": True}
    assert info["cpu"]["count"] >= 1
    assert info["state_dir_free_bytes"] > 0


@pytest.mark.asyncio
async def test_info_says_why_criu_is_missing(
    make_ctx: MakeCtx, config: AgentConfig, fake_criu: FakeCriu
) -> None:
    fake_criu.error = ConfigError("no CRIU: run deploy/install.sh")
    async with agent_client(make_ctx(config)) as client:
        info = await (await client.get("/v1/info", headers=AUTH)).json()
    assert info["criu"] is None
    assert info["criu_error"] == "no CRIU: run deploy/install.sh"


def test_cpuinfo_is_parsed_for_x86_and_arm() -> None:
    x86 = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: sse2 avx\n"
        "\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: sse2 avx\n"
    )
    cpu = cpu_of(x86)
    assert (cpu.vendor, cpu.model, cpu.count, cpu.flags) == (
        "GenuineIntel",
        "Xeon",
        2,
        ["avx", "sse2"],
    )
    arm = "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    cpu = cpu_of(arm)
    assert (cpu.vendor, cpu.model, cpu.count, cpu.flags) == ("0x41", "0xd0c", 1, ["asimd", "fp"])


# ------------------------------------------------------------------ metrics


@pytest.mark.asyncio
async def test_metrics_count_requests_by_route_and_status(
    make_ctx: MakeCtx, tmp_path: Path, config: AgentConfig
) -> None:
    from haul.agent.fakes import make_config

    async with agent_client(make_ctx(config)) as client:
        await client.get("/healthz")
        await client.get("/healthz")
        await client.get("/v1/info")
        await client.get("/v1/workloads/nope", headers=AUTH)
        await client.get("/not/a/route", headers=AUTH)
        response = await client.get("/metrics", headers=AUTH)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert 'haul_agent_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
    assert 'haul_agent_requests_total{method="GET",route="/v1/info",status="401"} 1.0' in text
    assert (
        'haul_agent_requests_total{method="GET",route="/v1/workloads/{name}",status="404"} 1.0'
    ) in text
    assert 'route="unmatched",status="404"' in text
    assert "haul_agent_workloads 0.0" in text
    assert "haul_agent_migrations_active 0.0" in text
    # another app counts on its own
    other = AgentContext.create(make_config(tmp_path / "other"))
    assert b"/healthz" not in other.metrics.render()
