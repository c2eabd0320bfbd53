"""Oversized numbers never reach the agent's logic: a number of thousands of digits in any
numeric field of any route's body, in a path parameter, a query parameter or a header
that carries a number is a 400 in one line, never a 500 (Python refuses to parse an
integer of more than 4300 digits with a ValueError, deep inside ``json.loads``), and a
number that parses but is beyond what the field means (4300 digits, an infinite float)
is a 400 too, never taken."""

from __future__ import annotations

import asyncio
import json
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from haul.agent.app import TABLES
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.fakes import AUTH, Receiving, agent_client

MakeCtx = Callable[[AgentConfig], AgentContext]

#: a valid body for every route that takes one, with every numeric field present
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/workloads"): {
        "name": "c1",
        "runtime": "runc",
        "image": "oci:/lab/busybox",
        "net": {"address": "10.77.0.101/24", "port": 8080},
        "memory_bytes": 64 << 20,
        "cpus": 0.5,
        "pids_limit": 32,
    },
    ("POST", "/v1/workloads/adopt"): {"pid": 4242},
    ("POST", "/v1/migrations"): {
        "workload": "w1",
        "to": "host2",
        "max_downtime_ms": 300.0,
        "max_iterations": 8,
        "timeout_s": 60.0,
        "hook_timeout_s": 5.0,
    },
    ("POST", "/v1/migrations/check"): {
        "workload": "w1",
        "to": "host2",
        "max_downtime_ms": 300.0,
        "max_iterations": 8,
        "timeout_s": 60.0,
        "hook_timeout_s": 5.0,
    },
    ("POST", "/v1/incoming-check"): {
        "workload": "w1",
        "needed_bytes": 1 << 20,
        "net": {"address": "10.77.0.101/24", "port": 8080},
    },
    ("POST", "/v1/incoming"): {
        "id": "m9",
        "workload": "w1",
        "strategy": "post-copy",
        "needed_bytes": 1 << 20,
        "lazy_source": {"address": "10.77.0.1", "port": 20001},
        "data_mode": 0o700,
        "net": {"address": "10.77.0.101/24", "port": 8080},
        "container": {"config": {}, "blob_bytes": 4096},
    },
    ("POST", "/v1/incoming/{id}/entries"): {
        "entries": [{"path": "d", "kind": "dir", "mode": 0o755, "uid": 0, "gid": 0}]
    },
    ("POST", "/v1/incoming/{id}/remove"): {"paths": ["d"]},
    ("POST", "/v1/incoming/{id}/blobs-from"): {"layout": "/srv/shared/layout"},
    ("POST", "/v1/incoming/{id}/restore"): {"lazy": False},
}

#: number literals, as they stand in the JSON text
HUGE = {
    "5000 digits": "1" * 5000,
    "minus 5000 digits": "-" + "9" * 5000,
    "4300 digits (the most Python parses)": "9" * 4300,
    "a float of 5000 digits (infinite)": "9" * 5000 + ".5",
    "1e999 (infinite)": "1e999",
}


def _numeric(annotation: Any) -> bool:
    return annotation in (int, float)


def _members(annotation: Any) -> list[Any]:
    """The types an annotation admits (X | None and Annotated unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def numeric_paths(model: type[BaseModel]) -> Iterator[tuple[str | int, ...]]:
    """Every numeric field of ``model``, nested models and lists of them included, as a
    path into a body (a list's first item stands for all of them)."""
    for name, info in model.model_fields.items():
        for kind in _members(info.annotation):
            if _numeric(kind):
                yield (name,)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from ((name, *rest) for rest in numeric_paths(kind))
            elif typing.get_origin(kind) is list:
                (item,) = typing.get_args(kind)
                for inner in _members(item):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        yield from ((name, 0, *rest) for rest in numeric_paths(inner))


def body_routes() -> list[tuple[str, str, type[BaseModel]]]:
    return [(r.method, r.path, r.body) for t in TABLES for r in t.routes if r.body is not None]


def with_number(body: dict[str, Any], path: tuple[str | int, ...], literal: str) -> bytes:
    """``body`` as JSON text with ``literal`` standing at ``path``."""
    copy = json.loads(json.dumps(body))
    node: Any = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = "@@NUMBER@@"
    return json.dumps(copy).replace('"@@NUMBER@@"', literal).encode()


def cases() -> list[Any]:
    found = []
    for method, path, model in body_routes():
        for field in numeric_paths(model):
            for label, literal in HUGE.items():
                found.append(
                    pytest.param(
                        method,
                        path,
                        field,
                        literal,
                        id=f"{method} {path} {'.'.join(map(str, field))}: {label}",
                    )
                )
    return found


def test_every_route_with_a_body_has_a_valid_body_here_with_each_numeric_field() -> None:
    """The table above covers every route that takes a body (a new one must be added),
    each base body is valid as it is, and holds every numeric field the model has: so
    in each case below the number is the only thing wrong."""
    routes = {(m, p): model for m, p, model in body_routes()}
    assert set(routes) == set(BODIES)
    for key, model in routes.items():
        body = BODIES[key]
        model.model_validate(body)
        for field in numeric_paths(model):
            node: Any = body
            for step in field:
                node = node[step]
            assert isinstance(node, int | float), (key, field)
    assert sum(1 for _ in cases()) >= 15 * len(HUGE)


def _error_line(raw: bytes) -> str:
    body = json.loads(raw)
    assert set(body) == {"error"}, body
    message = str(body["error"]["message"])
    assert "\n" not in message
    return message


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "path", "field", "literal"), cases())
async def test_a_huge_number_in_any_numeric_field_is_a_400(
    incoming: Receiving, method: str, path: str, field: tuple[str | int, ...], literal: str
) -> None:
    url = path.replace("{id}", incoming.migration_id)
    body = with_number(BODIES[(method, path)], field, literal)
    response = await incoming.http.request(
        method, url, data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    raw = await response.read()
    assert response.status == 400, raw[:300]
    message = _error_line(raw)
    # refused as a body, before any handler looked at it
    assert json.loads(raw)["error"]["code"] in ("malformed_json", "invalid_body"), message
    assert len(message) < 1000, "the number is not echoed back"


@pytest.mark.asyncio
async def test_a_huge_number_in_a_path_parameter_is_a_client_error(
    make_ctx: MakeCtx, config: AgentConfig
) -> None:
    digits = "9" * 5000
    routes = [(r.method, r.path) for t in TABLES for r in t.routes if r.path_params()]
    assert len(routes) >= 15
    async with agent_client(make_ctx(config)) as client:
        for method, path in routes:
            params = [p for p in ("id", "name", "digest") if "{" + p + "}" in path]
            for huge in params:  # one at a time (a request line holds 8190 bytes at most)
                url = path
                for param in params:
                    url = url.replace("{" + param + "}", digits if param == huge else "x1")
                response = await client.request(method, url, data=b"{}", headers=AUTH)
                raw = await response.read()
                assert response.status in (400, 404), (method, path, response.status, raw[:200])
                _error_line(raw)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("header", "value"),
    [("X-Haul-Mode", "7" * 5000), ("X-Haul-Mode", "1" + "0" * 4999), ("X-Haul-Mode", "-1")],
)
async def test_a_file_mode_beyond_its_bits_is_a_400(
    incoming: Receiving, header: str, value: str
) -> None:
    """A data file's mode is octal permission bits: 0o7777 at most."""
    response = await incoming.http.put(
        "/v1/incoming/m1/data",
        params={"path": "f"},
        data=b"x",
        headers={**AUTH, header: value, "X-Haul-SHA256": "0" * 64},
    )
    raw = await response.read()
    assert response.status == 400, raw[:200]
    assert json.loads(raw)["error"]["code"] == "bad_mode"
    assert not (incoming.data / "f").exists()


@pytest.mark.asyncio
async def test_a_huge_query_parameter_is_a_400(incoming: Receiving) -> None:
    response = await incoming.http.put(
        "/v1/incoming/m1/data",
        params={"path": "9" * 5000},
        data=b"x",
        headers={**AUTH, "X-Haul-SHA256": "0" * 64},
    )
    raw = await response.read()
    assert response.status == 400, raw[:200]
    _error_line(raw)


@pytest.mark.asyncio
async def test_a_huge_content_length_is_refused_by_the_server(
    make_ctx: MakeCtx, config: AgentConfig, tmp_path: Path
) -> None:
    async with agent_client(make_ctx(config)) as client:
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            b"POST /v1/workloads HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + AUTH["Authorization"].encode()
            + b"\r\nContent-Length: "
            + b"9" * 5000
            + b"\r\n\r\n{}"
        )
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
    assert status_line.split()[1] == b"400", status_line
