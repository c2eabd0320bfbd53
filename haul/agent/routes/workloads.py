"""The workloads on this host: start, adopt, list, look at, kill."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from haul.agent.context import CONTEXT
from haul.agent.models import AdoptSpec, WorkloadList, WorkloadSpec, WorkloadView
from haul.agent.routing import RouteTable
from haul.agent.workloads import view_of

table = RouteTable("workloads")

NAME_PARAM = {"name": "the workload's name: ^[a-z0-9][a-z0-9_.-]{0,62}$"}


@table.json_body(
    "POST",
    "/v1/workloads",
    body=WorkloadSpec,
    response=WorkloadView,
    status=201,
    name="startWorkload",
    errors={409: "the name is taken"},
    summary="Start a process tree or a runc container on this host and register it",
)
async def start_workload(request: web.Request, spec: WorkloadSpec) -> WorkloadView:
    ctx = request.app[CONTEXT]
    record = await ctx.workloads.start(spec)
    return view_of(record, await ctx.workloads.status(record))


@table.json_body(
    "POST",
    "/v1/workloads/adopt",
    body=AdoptSpec,
    response=WorkloadView,
    status=201,
    name="adoptWorkload",
    errors={
        400: "not a tree, or a container that cannot be checkpointed here (the reasons)",
        404: "no such process or container",
        409: "the name is taken",
    },
    summary="Register an existing tree (the init of its own PID namespace) or runc container",
)
async def adopt_workload(request: web.Request, spec: AdoptSpec) -> WorkloadView:
    ctx = request.app[CONTEXT]
    if spec.container is not None:
        root = Path(spec.runc_root) if spec.runc_root is not None else None
        record = await ctx.workloads.adopt_container(spec.container, root, spec.name)
        return view_of(record, await ctx.workloads.status(record))
    assert spec.pid is not None  # AdoptSpec takes exactly one of pid and container
    return view_of(await ctx.workloads.adopt_pid(spec.pid, spec.name))


@table.json(
    "GET",
    "/v1/workloads",
    name="listWorkloads",
    response=WorkloadList,
    summary="Every registered workload with its live status",
)
async def list_workloads(request: web.Request) -> WorkloadList:
    ctx = request.app[CONTEXT]
    return WorkloadList(workloads=await ctx.workloads.views())


@table.json(
    "GET",
    "/v1/workloads/{name}",
    name="getWorkload",
    response=WorkloadView,
    params=NAME_PARAM,
    errors={404: "no such workload"},
    summary="One workload with its live status",
)
async def get_workload(request: web.Request) -> WorkloadView:
    ctx = request.app[CONTEXT]
    return await ctx.workloads.view(request.match_info["name"])


@table.json(
    "DELETE",
    "/v1/workloads/{name}",
    name="deleteWorkload",
    response=WorkloadView,
    params=NAME_PARAM,
    errors={404: "no such workload", 409: "the workload is being started or removed"},
    summary="Kill the workload's tree and forget it",
)
async def delete_workload(request: web.Request) -> WorkloadView:
    ctx = request.app[CONTEXT]
    return await ctx.workloads.remove(request.match_info["name"])
