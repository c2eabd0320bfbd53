"""The ``haul`` command. Progress goes to stderr (rich), results to stdout.

Exit codes: 0 done; 1 failed (the message says where the workload is); 2 usage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from haul import __version__
from haul.errors import HaulError, UsageError

T = TypeVar("T")

app = typer.Typer(
    name="haul",
    help="Live migration of Linux containers and process trees between hosts, built on CRIU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lab_app = typer.Typer(help="Hosts as network namespaces on this machine.", no_args_is_help=True)
criu_app = typer.Typer(help="The CRIU haul uses, and what it can do here.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
app.add_typer(criu_app, name="criu")
from haul.agent.cli import agent_cli, ca_app  # noqa: E402

app.add_typer(agent_cli, name="agent")
app.add_typer(ca_app, name="ca")
from haul.cli_migrate import register as register_migrate  # noqa: E402

register_migrate(app)
from haul.cli_workloads import register as register_workload_commands  # noqa: E402

register_workload_commands(app)

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


class Output(enum.StrEnum):
    text = "text"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text or json")]
PrefixOpt = Annotated[str, typer.Option("--prefix", help="lab name prefix")]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("this command needs root (namespaces and CRIU)")


def _emit_json(value: object) -> None:
    def default(o: object) -> object:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        return str(o)

    sys.stdout.write(json.dumps(value, default=default, indent=2) + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(f"haul {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log what haul does")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


# --------------------------------------------------------------------- lab


@lab_app.command("up")
def lab_up_cmd(
    hosts: Annotated[int, typer.Option("--hosts", "-n", help="number of hosts")] = 2,
    prefix: PrefixOpt = "haul",
    output: OutputOpt = Output.text,
    write_inventory: Annotated[
        bool,
        typer.Option(
            "--write-inventory/--no-write-inventory",
            help="write the hosts inventory ($HAUL_HOSTS or ~/.config/haul/hosts.toml) naming "
            "the lab's agents (for the default prefix only)",
        ),
    ] = True,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="a CA for the lab; the agents do mutual TLS, and so do the page "
            "transfers between them",
        ),
    ] = False,
) -> None:
    """Create hosts host1..hostN (each running a haul agent) and a client, on one bridge."""
    from haul.inventory import inventory_path
    from haul.lab.netlab import lab_up
    from haul.lab.spec import DEFAULT_PREFIX, LabSpec

    _need_root()
    inventory = inventory_path() if write_inventory and prefix == DEFAULT_PREFIX else None
    status = _run(lab_up(LabSpec(prefix=prefix, hosts=hosts), inventory=inventory, tls=tls))
    _print_status(status, output)


@lab_app.command("down")
def lab_down_cmd(
    prefix: PrefixOpt = "haul",
    all_labs: Annotated[bool, typer.Option("--all", help="every lab on this machine")] = False,
) -> None:
    """Remove everything 'lab up' made (processes inside it included)."""
    from haul.lab.netlab import all_labs as list_labs
    from haul.lab.netlab import lab_down

    _need_root()
    for p in list_labs() if all_labs else [prefix]:
        removed = lab_down(p)
        err.print(f"lab {p}: removed {len(removed)} namespaces and directories")


@lab_app.command("status")
def lab_status_cmd(prefix: PrefixOpt = "haul", output: OutputOpt = Output.text) -> None:
    """Show the lab's hosts, addresses and how many processes run in each."""
    from haul.lab.netlab import lab_status

    _print_status(lab_status(prefix), output)


@lab_app.command("image", context_settings={"allow_interspersed_args": False})
def lab_image_cmd(
    prefix: PrefixOpt = "haul",
    tag: Annotated[str, typer.Option("--tag", help="the image's tag")] = "latest",
    cmd: Annotated[
        list[str] | None,
        typer.Argument(
            help="its command, after -- (default: a shell loop counting into /data/count)",
            metavar="CMD",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Build a tiny busybox OCI image layout in the lab's directory (where its agents may
    read it; 'lab down' removes it) and print its reference, for haul run --image."""
    from haul.errors import LabError
    from haul.lab.images import COUNTER_CMD, build_busybox_image, set_command
    from haul.lab.ledger import Ledger
    from haul.lab.spec import LabSpec
    from haul.runtime.images import ImageRef

    _need_root()
    if Ledger.load(prefix) is None:
        raise LabError(f"lab {prefix!r} is not up: 'haul lab up' first")
    layout = LabSpec(prefix=prefix).root_dir / "images" / "busybox"
    if not (layout / "index.json").is_file():
        build_busybox_image(layout)
    ref = ImageRef(layout)
    if cmd or tag != ref.tag:
        ref = set_command(ref, cmd or COUNTER_CMD, tag=tag)
    sys.stdout.write(f"{ref}\n")


def _print_status(status: Any, output: Output) -> None:
    if output is Output.json:
        _emit_json(dataclasses.asdict(status) | {"complete": status.complete})
        return
    table = Table(title=f"lab {status.prefix}")
    for col in ("host", "netns", "address", "present", "processes"):
        table.add_column(col)
    for m in status.members:
        table.add_row(
            m.name, m.netns, m.address, "yes" if m.present else "MISSING", str(m.processes)
        )
    out.print(table)


# --------------------------------------------------------------------- criu


@criu_app.command("info")
def criu_info_cmd(output: OutputOpt = Output.text) -> None:
    """CRIU's path, version, kernel features, and whether 'criu check' passes."""
    from haul.criu.info import gather
    from haul.install_record import criu_binary

    _need_root()
    info = _run(gather(criu_binary()))
    if output is Output.json:
        _emit_json(info)
        return
    out.print(f"criu       {info.path} ({info.version})")
    out.print(f"check      {'passes' if info.check_ok else 'FAILS: ' + info.check_error}")
    for name, value in dataclasses.asdict(info.features).items():
        out.print(f"{name:<10} {'yes' if value else 'no'}")


# --------------------------------------------------------------------- demo


@app.command("demo")
def demo_cmd(
    mem_mib: Annotated[int, typer.Option("--mem-mib", help="memory the web service holds")] = 256,
    strategy: Annotated[
        str, typer.Option("--strategy", help="auto|post-copy|stop-and-copy|pre-copy")
    ] = "auto",
    out_dir: Annotated[
        Path, typer.Option("--out", help="where to write haul-demo.png and haul-demo.tsv")
    ] = Path("."),
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="process: the service as a process tree; runc: in a runc container "
            "(the lab's busybox image, the host's Python mounted read-only)",
        ),
    ] = "process",
    output: OutputOpt = Output.text,
) -> None:
    """Move a web service host1 -> host2 -> host1 under load through HAProxy, in a lab:
    a table of what the client saw, and a latency plot (PNG)."""
    from haul.engine.phases import Strategy
    from haul.lab.demo import run_demo

    _need_root()
    if mem_mib < 1:
        raise UsageError("--mem-mib must be 1 or more")
    try:
        chosen = Strategy(strategy)
    except ValueError:
        raise UsageError(
            f"unknown strategy {strategy!r} (auto, post-copy, stop-and-copy, pre-copy)"
        ) from None
    if runtime not in ("process", "runc"):
        raise UsageError(f"unknown runtime {runtime!r} (process, runc)")
    say = (lambda m: err.print(f"[dim]>[/dim] {m}")) if output is Output.text else (lambda m: None)
    result = _run(
        run_demo(
            mem_mib=mem_mib,
            strategy=chosen,
            out_dir=out_dir,
            runtime="runc" if runtime == "runc" else "process",
            say=say,
        )
    )
    load = result.load
    if output is Output.json:
        _emit_json(
            {
                "passed": result.passed,
                "runtime": result.runtime,
                "mem_mib": result.mem_mib,
                "moves": [dataclasses.asdict(m) for m in result.moves],
                "load": load.as_json(),
                "check": result.check,
                "verdict": result.verdict,
                "served": result.served,
                "png": str(result.png),
                "tsv": str(result.tsv),
            }
        )
    else:
        what = "web service in a runc container" if result.runtime == "runc" else "web service"
        moves = Table(title=f"haul demo: a {mem_mib} MiB {what} moved under load")
        for col in ("move", "strategy", "outcome", "frozen ms", "total ms"):
            moves.add_column(col, justify="left" if col in ("move", "strategy") else "right")
        for m in result.moves:
            moves.add_row(
                f"{m.label} ({m.source} -> {m.dest})",
                m.strategy,
                m.outcome,
                f"{m.frozen_ms:.0f}" if m.frozen_ms is not None else "-",
                f"{m.total_ms:.0f}",
            )
        out.print(moves)
        seen = Table(
            title=f"what the client saw through HAProxy ({load.connections} keep-alive connections)"
        )
        for col in ("requests", "failed", "largest gap ms", "p50 ms", "p99 ms", "max ms", "req/s"):
            seen.add_column(col, justify="right")
        seen.add_row(
            str(load.requests),
            str(load.failed),
            f"{load.largest_gap_s * 1000:.0f}",
            f"{load.p50_s * 1000:.2f}",
            f"{load.p99_s * 1000:.2f}",
            f"{load.max_s * 1000:.0f}",
            f"{load.rate_per_s:.0f}",
        )
        out.print(seen)
        out.print(
            f"service: {result.check}; verdict {result.verdict}; it counted "
            f"{result.served} requests, the client saw {load.ok} answered"
        )
        out.print(f"latency plot: {result.png}   every request: {result.tsv}")
    if not result.passed:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except HaulError as exc:
        sys.stderr.write(f"haul: error: {exc.one_line()}\n")
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except KeyboardInterrupt:
        err.print("haul: interrupted")
        sys.exit(130)
