"""The workloads on this host: start, list, look at, kill."""

from __future__ import annotations

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
    summary="Start a process tree on this host and register it",
)
async def start_workload(request: web.Request, spec: WorkloadSpec) -> WorkloadView:
    ctx = request.app[CONTEXT]
    record = await ctx.workloads.start(spec)
    return view_of(record)


@table.json_body(
    "POST",
    "/v1/workloads/adopt",
    body=AdoptSpec,
    response=WorkloadView,
    status=201,
    name="adoptWorkload",
    errors={404: "no such process", 409: "the name is taken"},
    summary="Register an existing tree (the init of its own PID namespace)",
)
async def adopt_workload(request: web.Request, spec: AdoptSpec) -> WorkloadView:
    ctx = request.app[CONTEXT]
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
    return WorkloadList(workloads=[view_of(r) for r in ctx.workloads.records()])


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
    return view_of(ctx.workloads.get(request.match_info["name"]))


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
