"""Liveness, readiness, what this host is, metrics, and the API's own description."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from haul import __version__
from haul.agent.context import CONTEXT, AgentContext
from haul.agent.hostinfo import criu_view, free_bytes, kernel_release, read_cpu
from haul.agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from haul.agent.models import AgentInfo, Check, CriuView, Health, Readiness
from haul.agent.openapi import build_openapi
from haul.agent.routing import ROUTES, Reply, RouteTable
from haul.agent.wire import JSON
from haul.errors import HaulError

table = RouteTable("health")

PROBE_NAME = ".ready-probe"


@table.json(
    "GET",
    "/healthz",
    name="healthz",
    response=Health,
    auth=False,
    summary="The agent process answers (no credentials needed)",
)
async def healthz(request: web.Request) -> Health:
    return Health(ok=True)


async def _criu_check(ctx: AgentContext) -> Check:
    try:
        info = await ctx.criu.get()
    except HaulError as exc:
        return Check(name="criu", ok=False, detail=exc.one_line())
    if not info.check_ok:
        return Check(name="criu", ok=False, detail=info.check_error or "criu check fails")
    return Check(name="criu", ok=True, detail=f"CRIU {info.version} at {info.path}")


def _probe_write(state_dir: Path) -> None:
    probe = state_dir / PROBE_NAME
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"ok\n")
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


async def _state_dir_check(ctx: AgentContext) -> Check:
    state_dir = ctx.config.state_dir
    try:
        await asyncio.to_thread(_probe_write, state_dir)
    except OSError as exc:
        return Check(
            name="state_dir", ok=False, detail=f"cannot write in {state_dir}: {exc.strerror}"
        )
    return Check(name="state_dir", ok=True, detail=f"{state_dir} is writable")


def _free_space_check(ctx: AgentContext) -> Check:
    state_dir = ctx.config.state_dir
    try:
        free = free_bytes(state_dir)
    except OSError as exc:
        return Check(name="free_space", ok=False, detail=f"{state_dir}: {exc.strerror}")
    need = ctx.config.min_free_bytes
    detail = f"{free // 2**20} MiB free in {state_dir}, need {need // 2**20} MiB"
    return Check(name="free_space", ok=free >= need, detail=detail)


def _host_ns_check(ctx: AgentContext) -> Check | None:
    host = ctx.config.host_namespaces()
    if not host.prefix():
        return None
    missing = host.missing()
    if missing is not None:
        return Check(name="host_namespaces", ok=False, detail=f"{missing} does not exist")
    return Check(name="host_namespaces", ok=True, detail=" ".join(host.prefix()[1:-1]))


@table.json(
    "GET",
    "/readyz",
    name="readyz",
    response=Readiness,
    also={503: "not ready"},
    summary="Whether this agent can take part in a migration now, check by check",
)
async def readyz(request: web.Request) -> Readiness | Reply[Readiness]:
    ctx = request.app[CONTEXT]
    checks = [await _criu_check(ctx), await _state_dir_check(ctx), _free_space_check(ctx)]
    ns = _host_ns_check(ctx)
    if ns is not None:
        checks.append(ns)
    readiness = Readiness.of(checks)
    return readiness if readiness.ready else Reply(readiness, 503)


@table.json(
    "GET",
    "/v1/info",
    name="info",
    response=AgentInfo,
    summary="This host: kernel, CPU, CRIU version and features, free space",
)
async def info(request: web.Request) -> AgentInfo:
    ctx = request.app[CONTEXT]
    criu: CriuView | None = None
    criu_error = ""
    try:
        criu = criu_view(await ctx.criu.get())
    except HaulError as exc:
        criu_error = exc.one_line()
    try:
        free = free_bytes(ctx.config.state_dir)
    except OSError:
        free = 0
    return AgentInfo(
        host=ctx.config.host,
        haul_version=__version__,
        kernel_release=kernel_release(),
        criu=criu,
        criu_error=criu_error,
        cpu=await asyncio.to_thread(read_cpu),
        state_dir_free_bytes=free,
    )


@table.raw(
    "GET",
    "/metrics",
    name="metrics",
    media_type=METRICS_CONTENT_TYPE,
    summary="Prometheus metrics (text exposition format)",
)
async def metrics(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    return web.Response(body=ctx.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


@table.raw(
    "GET",
    "/v1/openapi.json",
    name="openapi",
    media_type=JSON,
    summary="This document: the agent's API in OpenAPI 3.1",
)
async def openapi(request: web.Request) -> web.StreamResponse:
    routes = request.app[ROUTES]
    doc = build_openapi(
        routes,
        title="haul agent",
        version=__version__,
        description="The per-host daemon of haul: health, host facts, workloads.",
    )
    return web.json_response(doc)
