"""Migrations this host runs as the source: start, watch, abort."""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web

from haul.agent.config import AgentConfig
from haul.agent.context import CONTEXT
from haul.agent.decision_models import DecisionView
from haul.agent.decisions import decide
from haul.agent.jobs import Job
from haul.agent.journal import check_migration_id
from haul.agent.migration_models import (
    CheckView,
    EventView,
    MigrateAsk,
    MigrationList,
    MigrationView,
    StatsView,
)
from haul.agent.routing import RouteTable
from haul.agent.wire import NotFound
from haul.cutover.haproxy import HaproxyCutover
from haul.cutover.hooks import HookScript, ScriptHooks, chain, check_hook_path
from haul.cutover.lb_spec import parse_lb_spec
from haul.engine.phases import TERMINAL
from haul.engine.ports import HooksPort
from haul.errors import ConfigError, UsageError

table = RouteTable("migrations")
ID = {"id": "the migration's id"}


def view(job: Job) -> MigrationView:
    m = job.migration
    s = m.stats()
    outcome = job.outcome
    return MigrationView(
        id=job.id,
        workload=m.spec.workload,
        source=m.spec.source_host,
        dest=m.spec.dest_host,
        phase=m.phase.value,
        strategy=m.strategy.value,
        committed=m.committed,
        finished=m.phase in TERMINAL and (job.task is None or job.task.done()),
        outcome=outcome.phase.value if outcome else (m.phase.value if m.phase in TERMINAL else ""),
        reason=outcome.reason if outcome else (job.error or m.reason),
        problems=list(outcome.problems) if outcome else [],
        elapsed_s=time.monotonic() - job.started_at,
        stats=StatsView(
            strategy=s.strategy.value,
            iterations=s.iterations,
            bytes_sent=s.bytes_sent,
            dump_bytes=s.dump_bytes,
            transfer_bytes=s.transfer_bytes,
            frozen_ms=s.frozen_s * 1000 if s.frozen_s is not None else None,
            expected_downtime_ms=s.expected_downtime_ms,
            pages_sent=s.pages_sent,
            throughput_bytes_per_s=s.throughput_bytes_per_s,
            dirty_rate_bytes_per_s=s.dirty_rate_bytes_per_s,
            strategy_reason=s.strategy_reason,
            files_rounds=s.files_rounds,
            files_presync_bytes=s.files_presync_bytes,
        ),
        events=[EventView(t_s=t, phase=p, event=e) for t, p, e in job.events],
    )


def migration_hooks(config: AgentConfig, ask: MigrateAsk) -> HooksPort | None:
    """Everything called at the hook points: the scripts, then the load balancer's
    cutover (``lb`` of the request, else the agent's [agent.lb] entry for the workload).
    Bad paths or specs are a 400 here, before anything starts."""
    spec = ask.lb if ask.lb is not None else config.lb.get(ask.workload)
    cutover = None
    if spec is not None:
        try:
            cutover = HaproxyCutover(parse_lb_spec(spec))
        except ConfigError as exc:
            raise UsageError(exc.one_line()) from None
    return chain(script_hooks(config, ask), cutover)


def script_hooks(config: AgentConfig, ask: MigrateAsk) -> ScriptHooks | None:
    """The agent's [agent.hooks] scripts, then the request's; each must be an executable
    here (UsageError, a 400, otherwise)."""
    asked = ask.hook_timeout_s if ask.hook_timeout_s is not None else config.hooks.timeout_s
    scripts = [
        HookScript(check_hook_path(path, host=config.host), timeout)
        for paths, timeout in ((config.hooks.scripts, config.hooks.timeout_s), (ask.hooks, asked))
        for path in paths
    ]
    return ScriptHooks(scripts) if scripts else None


@table.json_body(
    "POST",
    "/v1/migrations",
    body=MigrateAsk,
    response=MigrationView,
    status=202,
    name="startMigration",
    errors={404: "no such workload"},
    summary="Move a workload of this host to another host (runs in the agent)",
)
async def start(request: web.Request, ask: MigrateAsk) -> MigrationView:
    ctx = request.app[CONTEXT]
    hooks = migration_hooks(ctx.config, ask)
    job = await ctx.migrations().jobs.start(
        ask.workload,
        ask.to,
        strategy=ask.strategy,
        max_downtime_ms=ask.max_downtime_ms,
        max_iterations=ask.max_iterations,
        timeout_s=ask.timeout_s,
        shared_dir=Path(ask.shared_dir) if ask.shared_dir else None,
        hooks=hooks,
    )
    return view(job)


@table.json_body(
    "POST",
    "/v1/migrations/check",
    body=MigrateAsk,
    response=CheckView,
    name="checkMigration",
    errors={404: "no such workload"},
    summary="Pre-flight only: would this migration go? Nothing is touched",
)
async def check(request: web.Request, ask: MigrateAsk) -> CheckView:
    ctx = request.app[CONTEXT]
    migration_hooks(ctx.config, ask)  # a hook that cannot run is refused here too
    jobs = ctx.migrations().jobs
    chosen, why, problems, report = await jobs.check(
        ask.workload,
        ask.to,
        ask.strategy,
        shared_dir=Path(ask.shared_dir) if ask.shared_dir else None,
    )
    return CheckView(
        ok=chosen is not None,
        workload=ask.workload,
        source=ctx.config.host,
        dest=ask.to,
        strategy=chosen.value if chosen else "",
        strategy_reason=why,
        problems=problems,
        workload_bytes=report.workload_bytes if report else 0,
        source_criu=report.source.criu_version if report else "",
        dest_criu=report.dest.criu_version if report else "",
        source_runtime=str(report.source.runtime or "") if report else "",
        dest_runtime=str(report.dest.runtime or "") if report else "",
    )


@table.json(
    "GET",
    "/v1/migrations",
    response=MigrationList,
    name="listMigrations",
    summary="Migrations this agent ran or runs",
)
async def list_migrations(request: web.Request) -> MigrationList:
    jobs = request.app[CONTEXT].migrations().jobs
    return MigrationList(migrations=[view(j) for j in jobs.all()])


@table.json(
    "GET",
    "/v1/migrations/{id}",
    response=MigrationView,
    params=ID,
    name="getMigration",
    errors={404: "no such migration on this host"},
    summary="One migration: phase, figures, events",
)
async def get(request: web.Request) -> MigrationView:
    return view(request.app[CONTEXT].migrations().jobs.get(request.match_info["id"]))


@table.json(
    "POST",
    "/v1/migrations/{id}/abort",
    response=MigrationView,
    params=ID,
    name="abortMigration",
    errors={404: "no such migration on this host", 409: "past the commit point, or already ended"},
    summary="Abort before the commit: the workload keeps running here",
)
async def abort(request: web.Request) -> MigrationView:
    return view(request.app[CONTEXT].migrations().jobs.abort(request.match_info["id"]))


@table.json(
    "GET",
    "/v1/migrations/{id}/decision",
    response=DecisionView,
    params=ID,
    name="migrationDecision",
    summary="What this host, as the source, decided for a migration: committed, "
    "rolled-back, in-flight or unknown (asked by a destination that holds a "
    "restored copy and never heard it)",
)
async def decision(request: web.Request) -> DecisionView:
    jobs = request.app[CONTEXT].migrations().jobs
    mid = check_migration_id(request.match_info["id"])
    try:
        job: Job | None = jobs.get(mid)
    except NotFound:
        job = None
    return decide(mid, job, jobs.journal.read(mid) if job is None else [])
