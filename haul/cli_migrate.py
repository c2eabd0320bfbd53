"""`haul migrate` and `haul jobs`: start a migration on the source agent and watch it.

The source agent runs the migration; this command only starts it and shows
its progress, so closing the terminal strands nothing. Ctrl-C before the
commit asks the agent to abort (the workload keeps running where it was);
after the commit it is refused with a message and the command keeps watching.

Exit codes: 0 done; 1 failed and rolled back (running on the source);
2 usage; 3 refused at pre-flight, nothing touched; 4 failed with the rollback
incomplete, or after the commit (the message says what is where).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from haul.agent.client import AgentAccess, AgentClient, body_of
from haul.agent.migration_models import MigrateAsk, MigrationView
from haul.engine.phases import Strategy
from haul.errors import HaulError, NoSuchMigration, NoSuchWorkload, UsageError
from haul.inventory import HostEntry, Inventory, load_inventory

EXIT = {"done": 0, "rolled-back": 1, "refused": 3, "failed": 4}

err = Console(stderr=True, highlight=False, soft_wrap=True)  # one line stays one line
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

HostsOpt = Annotated[Path | None, typer.Option("--hosts", help="hosts inventory (TOML)")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="text or json")]


def client_for(entry: HostEntry) -> AgentClient:
    """A client of the agent an inventory entry names (haul.agent.client.AgentAccess)."""
    return AgentAccess.of_entry(entry).client()


async def find_host(inv: Inventory, workload: str) -> str | None:
    """The one host whose agent runs ``workload`` (None: none does)."""
    found: list[str] = []
    for name, entry in sorted(inv.hosts.items()):
        async with client_for(entry) as agent:
            if any(w.name == workload and w.status != "gone" for w in await agent.workloads()):
                found.append(name)
    if len(found) > 1:
        raise UsageError(f"{workload!r} runs on several hosts ({', '.join(found)}); use --from")
    return found[0] if found else None


def refused(why: str) -> int:
    """A migration refused before it began: one line, and the exit code for it."""
    err.print(f"haul: refused: {why}; nothing was touched", markup=False)
    return EXIT["refused"]


def _no_such(workload: str, where: str | None) -> str:
    if where is None:
        return f"no host in the inventory runs a workload named {workload!r}"
    return f"no workload {workload!r} on {where}"


def _progress(view: MigrationView) -> Table:
    t = Table.grid(padding=(0, 2))
    s = view.stats
    t.add_row("migration", view.id, "phase", view.phase)
    t.add_row(
        "workload", f"{view.workload}: {view.source} -> {view.dest}", "strategy", view.strategy
    )
    t.add_row(
        "sent",
        f"{s.bytes_sent / 2**20:.1f} MiB, {s.pages_sent} pages",
        "iterations",
        str(s.iterations),
    )
    t.add_row(
        "throughput", _rate(s.throughput_bytes_per_s), "dirty rate", _rate(s.dirty_rate_bytes_per_s)
    )
    t.add_row("expected downtime", _ms(s.expected_downtime_ms), "frozen", _ms(s.frozen_ms))
    t.add_row("elapsed", f"{view.elapsed_s:.1f} s", "", "")
    return t


def _rate(bytes_per_s: float | None) -> str:
    return "-" if bytes_per_s is None else f"{bytes_per_s / 2**20:.0f} MiB/s"


def _ms(value: float | None) -> str:
    return "-" if value is None or value == float("inf") else f"{value:.0f} ms"


def phase_times_ms(view: MigrationView) -> dict[str, float]:
    """How long each phase lasted, from the job's events. An event is recorded with the
    phase it ended, so a phase lasted from the event before it to its own event; a
    phase entered twice (pre-copy rounds) adds up."""
    times: dict[str, float] = {}
    before = 0.0
    for e in view.events:
        times[e.phase] = times.get(e.phase, 0.0) + max(0.0, e.t_s - before) * 1000
        before = e.t_s
    return {phase: round(ms, 1) for phase, ms in times.items()}


async def watch(agent: AgentClient, mid: str, *, live: bool) -> MigrationView:
    """Follow the migration to its end (Ctrl-C asks for an abort once), its progress
    live on the terminal when ``live``."""
    display: Live | None = None

    def show(view: MigrationView) -> None:
        nonlocal display
        if display is None:
            display = Live(_progress(view), console=err, refresh_per_second=8, transient=True)
            display.start()
        else:
            display.update(_progress(view))

    try:
        return await agent.migrations.watch(
            mid, on_view=show if live else lambda view: None, say=err.print
        )
    finally:
        if display is not None:
            display.stop()


def _result(view: MigrationView, output: str) -> None:
    """The migration's figures (a table, or JSON on stdout) and, unless it is done, one
    line on stderr saying how it ended and why, whatever the output format."""
    _figures(view, output)
    if view.outcome != "done":
        err.print(f"haul: {ending_line(view)}", markup=False)
    for p in view.problems:
        err.print(f"  {p}", markup=False)


def ending_line(view: MigrationView) -> str:
    """How a migration that is not done ended, in one line (the reason said once)."""
    outcome = view.outcome or "failed"
    reason = view.reason.removeprefix(f"{outcome}: ").strip()
    if not reason:
        reason = f"migration {view.id} ended in phase {view.phase} with no reason given"
    return f"{outcome}: {reason}"


def _figures(view: MigrationView, output: str) -> None:
    if output == "json":
        s = view.stats
        sys.stdout.write(
            json.dumps(
                {
                    "id": view.id,
                    "workload": view.workload,
                    "source": view.source,
                    "dest": view.dest,
                    "outcome": view.outcome,
                    "reason": view.reason,
                    "strategy": view.strategy,
                    "iterations": s.iterations,
                    "bytes_sent": s.bytes_sent,
                    "frozen_ms": s.frozen_ms,
                    "downtime_ms": s.frozen_ms,
                    "total_ms": round(view.elapsed_s * 1000, 1),
                    "pages_sent": s.pages_sent,
                    "throughput_bytes_per_s": s.throughput_bytes_per_s,
                    "dirty_rate_bytes_per_s": s.dirty_rate_bytes_per_s,
                    "transfer_bytes": s.transfer_bytes,
                    "files_rounds": s.files_rounds,
                    "files_presync_bytes": s.files_presync_bytes,
                    "phase_ms": phase_times_ms(view),
                    "problems": view.problems,
                    "phases": [e.model_dump() for e in view.events],
                }
            )
            + "\n"
        )
        return
    table = Table(title=f"{view.workload}: {view.source} -> {view.dest} ({view.strategy})")
    for col in ("outcome", "frozen ms", "total ms", "sent MiB", "throughput", "iterations"):
        table.add_column(col, justify="right")
    s = view.stats
    table.add_row(
        view.outcome,
        f"{s.frozen_ms:.0f}" if s.frozen_ms is not None else "-",
        f"{view.elapsed_s * 1000:.0f}",
        f"{s.bytes_sent / 2**20:.1f}",
        _rate(s.throughput_bytes_per_s),
        str(s.iterations),
    )
    out.print(table)
    phases = Table(title="time per phase")
    for col in ("phase", "ms"):
        phases.add_column(col, justify="right" if col == "ms" else "left")
    for phase, ms in phase_times_ms(view).items():
        phases.add_row(phase, f"{ms:.0f}")
    out.print(phases)


async def check(
    workload: str,
    to: str,
    source: str | None,
    ask: MigrateAsk,
    hosts: Path | None,
    output: str,
) -> int:
    """Pre-flight only: print what a migration would do; 0 if it would go, 3 if not."""
    inv = load_inventory(hosts)
    inv.host(to)
    src = source or await find_host(inv, workload)
    if src is None:
        return refused(_no_such(workload, None))
    async with client_for(inv.host(src)) as agent:
        try:
            view = await agent.migrations.check(ask)
        except NoSuchWorkload:
            return refused(_no_such(workload, src))
    if output == "json":
        sys.stdout.write(view.model_dump_json() + "\n")
    elif view.ok:
        runtimes = f"; {view.source_runtime} -> {view.dest_runtime}" if view.source_runtime else ""
        out.print(
            f"{workload}: {view.source} -> {view.dest} would go by {view.strategy} "
            f"({view.strategy_reason}; {view.workload_bytes / 2**20:.1f} MiB of memory and files; "
            f"CRIU {view.source_criu} -> {view.dest_criu}{runtimes}); nothing was touched"
        )
    else:  # one line: every problem, as a migration's refusal says them
        problems = [p.removeprefix("refused: ") for p in view.problems]
        err.print(f"haul: refused: {'; '.join(problems)}", markup=False)
    return 0 if view.ok else 3


async def migrate(
    workload: str,
    to: str,
    source: str | None,
    ask: MigrateAsk,
    hosts: Path | None,
    output: str,
) -> int:
    inv = load_inventory(hosts)
    inv.host(to)
    if workload.startswith("pid:"):
        workload, ask = await _adopt(inv, workload, source, ask)
    src = source or await find_host(inv, workload)
    if src is None:
        return refused(_no_such(workload, None))
    if src == to:
        raise UsageError(f"{workload} already runs on {to}")
    async with client_for(inv.host(src)) as agent:
        try:
            started = await agent.migrations.start(ask)
        except NoSuchWorkload:
            return refused(_no_such(workload, src))
        view = await watch(agent, started.id, live=sys.stderr.isatty() and output == "text")
    _result(view, output)
    return EXIT.get(view.outcome, 4)


async def _adopt(
    inv: Inventory, target: str, source: str | None, ask: MigrateAsk
) -> tuple[str, MigrateAsk]:
    """``pid:PID``: register that tree with the source's agent, then move it by name."""
    if source is None:
        raise UsageError("pid:PID needs --from HOST (a PID means something on one host only)")
    try:
        pid = int(target.removeprefix("pid:"))
    except ValueError:
        raise UsageError(f"{target!r} is not pid:NUMBER") from None
    async with client_for(inv.host(source)) as agent:
        name = (await agent.adopt(pid)).name
    return name, ask.model_copy(update={"workload": name})


def register(app: typer.Typer) -> None:
    @app.command("migrate")
    def migrate_cmd(
        workload: Annotated[str, typer.Argument(help="the workload's name")],
        to: Annotated[str, typer.Option("--to", help="destination host")],
        source: Annotated[str | None, typer.Option("--from", help="source host")] = None,
        strategy: Annotated[Strategy, typer.Option("--strategy")] = Strategy.AUTO,
        max_downtime: Annotated[float, typer.Option("--max-downtime", help="ms")] = 300.0,
        max_iterations: Annotated[int, typer.Option("--max-iterations")] = 8,
        timeout: Annotated[float | None, typer.Option("--timeout", help="s per phase")] = None,
        shared_dir: Annotated[
            Path | None,
            typer.Option("--shared-dir", help="memory through this directory (both hosts see it)"),
        ] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="pre-flight only")] = False,
        hook: Annotated[
            list[str] | None,
            typer.Option(
                "--hook",
                help="executable on the source host, called at each hook point "
                "(repeatable; after the agent's \\[agent.hooks])",
            ),
        ] = None,
        hook_timeout: Annotated[
            float | None,
            typer.Option("--hook-timeout", help="s per --hook call (default: the agent's)"),
        ] = None,
        lb: Annotated[
            str | None,
            typer.Option(
                "--lb",
                help="HAProxy cutover: haproxy:SOCKET:BACKEND/SERVER[,addr] (SERVER: "
                "a name with {host}, or * to find servers by address); default: the source "
                "agent's \\[agent.lb] entry for the workload",
            ),
        ] = None,
        hosts: HostsOpt = None,
        output: OutputOpt = "text",
    ) -> None:
        """Move a running workload to another host; exactly one copy runs at any time.

        Hooks: a failing hook before the commit (pre-migrate, pre-freeze, restored)
        aborts the migration, which rolls back; after it (post-commit, rolled-back) it
        is reported and changes nothing. See deploy/hooks/README.md.
        """
        if output not in ("text", "json"):
            raise UsageError("--output is text or json")
        for path in hook or []:
            if not path.startswith("/"):
                raise UsageError(
                    f"--hook {path}: give an absolute path on the source host (hooks run there)"
                )
        if hook_timeout is not None and not 0 < hook_timeout <= 3600:
            raise UsageError("--hook-timeout must be more than 0 and at most 3600 s")
        if lb is not None:
            from haul.cutover.lb_spec import parse_lb_spec

            parse_lb_spec(lb)  # bad input: one line here, before any call
        ask = body_of(  # a flag out of bounds: one line, not pydantic's report
            MigrateAsk,
            "haul migrate",
            workload=workload if not workload.startswith("pid:") else "pending",
            to=to,
            strategy=strategy,
            max_downtime_ms=max_downtime,
            max_iterations=max_iterations,
            timeout_s=timeout,
            shared_dir=str(shared_dir.resolve()) if shared_dir else None,
            hooks=hook or [],
            hook_timeout_s=hook_timeout,
            lb=lb,
        )
        run = check if dry_run else migrate
        raise typer.Exit(asyncio.run(run(workload, to, source, ask, hosts, output)))

    @app.command("check")
    def check_cmd(
        workload: Annotated[str, typer.Argument(help="the workload's name")],
        to: Annotated[str, typer.Option("--to", help="destination host")],
        source: Annotated[str | None, typer.Option("--from", help="source host")] = None,
        strategy: Annotated[Strategy, typer.Option("--strategy")] = Strategy.AUTO,
        shared_dir: Annotated[
            Path | None,
            typer.Option("--shared-dir", help="as haul migrate's: through this directory"),
        ] = None,
        hosts: HostsOpt = None,
        output: OutputOpt = "text",
    ) -> None:
        """Pre-flight only: would this migration go, and how? Nothing is touched."""
        ask = MigrateAsk(
            workload=workload,
            to=to,
            strategy=strategy,
            shared_dir=str(shared_dir.resolve()) if shared_dir else None,
        )
        raise typer.Exit(asyncio.run(check(workload, to, source, ask, hosts, output)))

    jobs = typer.Typer(help="Migrations the agents ran or run.", no_args_is_help=True)
    app.add_typer(jobs, name="jobs")

    @jobs.command("list")
    def jobs_list(hosts: HostsOpt = None, output: OutputOpt = "text") -> None:
        """Every migration every agent of the inventory knows."""
        views = asyncio.run(_all_jobs(load_inventory(hosts)))
        if output == "json":
            sys.stdout.write(json.dumps([v.model_dump() for v in views]) + "\n")
            return
        table = Table()
        for col in ("id", "workload", "from", "to", "phase", "strategy", "frozen ms"):
            table.add_column(col)
        for v in views:
            table.add_row(
                v.id,
                v.workload,
                v.source,
                v.dest,
                v.phase,
                v.strategy,
                f"{v.stats.frozen_ms:.0f}" if v.stats.frozen_ms is not None else "-",
            )
        out.print(table)

    @jobs.command("show")
    def jobs_show(mid: str, hosts: HostsOpt = None) -> None:
        views = [v for v in asyncio.run(_all_jobs(load_inventory(hosts))) if v.id == mid]
        if not views:
            raise UsageError(f"no migration {mid!r} on any host")
        sys.stdout.write(views[0].model_dump_json(indent=2) + "\n")

    @jobs.command("abort")
    def jobs_abort(mid: str, hosts: HostsOpt = None) -> None:
        """Abort a migration before its commit point (it rolls back)."""
        asyncio.run(_abort(load_inventory(hosts), mid))
        err.print(f"migration {mid}: abort requested")


async def _all_jobs(inv: Inventory) -> list[MigrationView]:
    views: list[MigrationView] = []
    for _, entry in sorted(inv.hosts.items()):
        async with client_for(entry) as agent:
            views += await agent.migrations.all()
    return views


async def _abort(inv: Inventory, mid: str) -> None:
    for _, entry in sorted(inv.hosts.items()):
        async with client_for(entry) as agent:
            try:
                await agent.migrations.abort(mid)
                return
            except NoSuchMigration:
                continue
    raise UsageError(f"no migration {mid!r} on any host")


__all__ = ["HaulError", "register"]
