"""``haul ps``, ``haul run``, ``haul adopt`` and ``haul kill``: workloads on the hosts of
the inventory.

Each command asks the agents named in the hosts inventory (``--hosts FILE``,
``HAUL_HOSTS``, or ``~/.config/haul/hosts.toml``; ``haul lab up`` writes one)
through :class:`haul.agent.client.AgentClient`. Results go to stdout: a table,
or JSON (``-o json``: ``ps`` gives an array of workloads, ``run`` and ``kill``
the one workload) whose figures have their unit in their name. Failures
are :class:`~haul.errors.HaulError` lines printed by ``haul``'s ``main()``:
an unknown host or workload exits 1, a malformed request 2.

``haul/cli.py`` adds these commands with :func:`register`. Heavy imports
(aiohttp) happen inside the commands, so ``haul --help`` stays quick.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from haul.errors import ConfigError, HaulError, NoSuchWorkload, UsageError, WorkloadError
from haul.inventory import HostEntry, Inventory, load_inventory

if TYPE_CHECKING:
    from haul.agent.client import AgentClient
    from haul.agent.models import WorkloadView

#: how long one call to an agent may take
AGENT_TIMEOUT_S = 30.0

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


class Output(enum.StrEnum):
    text = "text"
    json = "json"


HostsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--hosts",
        help="the hosts inventory (default: $HAUL_HOSTS, then ~/.config/haul/hosts.toml)",
        show_default=False,
    ),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text or json")]


# ------------------------------------------------------------------ agents


def _select(inventory: Inventory, host: str | None) -> list[tuple[str, HostEntry]]:
    """The inventory entries to ask: ``host`` alone, or every host."""
    if host is None:
        if not inventory.hosts:
            raise ConfigError("the hosts inventory names no hosts")
        return sorted(inventory.hosts.items())
    try:
        return [(host, inventory.host(host))]
    except UsageError as exc:  # an unknown host is not a malformed request: exit 1
        raise ConfigError(exc.message) from None


def client_for(entry: HostEntry) -> AgentClient:
    """A client of the agent an inventory entry names, with its token or certificate."""
    from haul.agent.client import AgentAccess

    return AgentAccess.of_entry(entry, timeout_s=AGENT_TIMEOUT_S).client()


def _one_line(host: str, exc: HaulError) -> str:
    return f"{host}: {exc.one_line()}"


async def _list_on(entry: HostEntry) -> list[WorkloadView]:
    async with client_for(entry) as agent:
        return await agent.workloads()


async def _list_all(
    hosts: Sequence[tuple[str, HostEntry]],
) -> tuple[list[tuple[str, WorkloadView]], list[str]]:
    """Every host's workloads, and one line per host that could not be asked."""
    results = await asyncio.gather(*(_list_on(e) for _, e in hosts), return_exceptions=True)
    rows: list[tuple[str, WorkloadView]] = []
    failed: list[str] = []
    for (host, _), result in zip(hosts, results, strict=True):
        if isinstance(result, HaulError):
            failed.append(_one_line(host, result))
        elif isinstance(result, BaseException):
            raise result
        else:
            rows += [(host, w) for w in result]
    return rows, failed


async def _find_on(host: str, entry: HostEntry, name: str) -> WorkloadView | None:
    async with client_for(entry) as agent:
        try:
            return await agent.workload(name)
        except NoSuchWorkload:
            return None


async def _locate(hosts: Sequence[tuple[str, HostEntry]], name: str) -> tuple[str, HostEntry]:
    """The one host that runs workload ``name``."""
    results = await asyncio.gather(
        *(_find_on(h, e, name) for h, e in hosts), return_exceptions=True
    )
    found: list[tuple[str, HostEntry]] = []
    failed: list[str] = []
    for (host, entry), result in zip(hosts, results, strict=True):
        if isinstance(result, HaulError):
            failed.append(_one_line(host, result))
        elif isinstance(result, BaseException):
            raise result
        elif result is not None:
            found.append((host, entry))
    if len(found) > 1:
        raise WorkloadError(
            f"workload {name!r} is on several hosts "
            f"({', '.join(h for h, _ in found)}); pick one with --host"
        )
    if found:
        return found[0]
    asked = ", ".join(h for h, _ in hosts)
    if failed:
        raise WorkloadError(
            f"no workload {name!r} on the hosts that answered ({asked}); "
            f"could not ask: {'; '.join(failed)}"
        )
    raise WorkloadError(f"no workload {name!r} on {'host ' if len(hosts) == 1 else ''}{asked}")


# ------------------------------------------------------------------ output


def _started(when: datetime) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def workload_json(host: str, w: WorkloadView, now: datetime | None = None) -> dict[str, object]:
    now = now if now is not None else datetime.now(UTC)
    return {
        "host": host,
        "name": w.name,
        "status": w.status.value,
        "root_pid": w.root_pid,
        "started_at": w.started_at.isoformat(),
        "uptime_s": round(max(0.0, (now - w.started_at).total_seconds()), 3),
        "argv": list(w.argv),
        "cwd": w.cwd,
        "data_dir": w.data_dir,
        "log_path": w.log_path,
        "address": w.net.address if w.net is not None else None,
        "port": w.net.port if w.net is not None else None,
        "runtime": w.runtime,
        "image": w.image,
    }


def short_image(image: str | None) -> str:
    """An image as the table shows it: the layout's directory name and the tag
    (``oci:/srv/images/web:v1`` -> ``web:v1``); JSON has the whole reference."""
    if image is None:
        return "-"
    head, _, tag = image.rpartition(":")
    name = head.rstrip("/").rsplit("/", 1)[-1]
    return f"{name}:{tag}" if head.startswith("oci:/") and name else image


def _emit(
    rows: Sequence[tuple[str, WorkloadView]],
    output: Output,
    *,
    title: str | None,
    single: bool = False,
) -> None:
    if output is Output.json:
        docs = [workload_json(h, w) for h, w in rows]
        value: object = docs[0] if single else docs
        sys.stdout.write(json.dumps(value, indent=2) + "\n")
        return
    table = Table(title=title)
    columns = ("host", "name", "runtime", "status", "root pid", "address", "image", "started")
    for col in (*columns, "argv"):
        table.add_column(col, justify="right" if col == "root pid" else "left")
    for host, w in rows:
        address = (
            "-" if w.net is None else (w.net.address + (f" :{w.net.port}" if w.net.port else ""))
        )
        table.add_row(
            host,
            w.name,
            w.runtime,
            w.status.value,
            str(w.root_pid),
            address,
            short_image(w.image),
            _started(w.started_at),
            shlex.join(w.argv),
        )
    out.print(table)


# ------------------------------------------------------------------ commands


def ps_cmd(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="only this host (default: every host of the inventory)",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Output.text,
    hosts_file: HostsFileOpt = None,
) -> None:
    """List the workloads on one host, or on every host of the inventory."""
    hosts = _select(load_inventory(hosts_file), host)
    rows, failed = asyncio.run(_list_all(hosts))
    rows.sort(key=lambda r: (r[0], r[1].name))
    _emit(rows, output, title=None if host is None else f"workloads on {host}")
    if failed:
        raise ConfigError("could not list every host: " + "; ".join(failed))


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str, flag: str) -> int:
    """``64M``, ``1.5G``, ``512KiB`` or a number of bytes, as bytes (K, M, G, T: powers
    of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"{flag} {text!r}: give bytes, or a number with K, M, G or T")
    return int(float(match[1]) * _UNITS[match[2].upper()])


class RuntimeChoice(enum.StrEnum):
    process = "process"
    runc = "runc"


def run_cmd(
    name: Annotated[str, typer.Option("--name", help="the workload's name", show_default=False)],
    host: Annotated[str, typer.Option("--host", help="the host to run it on", show_default=False)],
    data_dir: Annotated[
        str | None,
        typer.Option(
            "--data-dir",
            help="its data directory and cwd, as the host sees it (default: one the agent makes)",
            show_default=False,
        ),
    ] = None,
    ip: Annotated[
        str | None,
        typer.Option(
            "--ip",
            help="an address of its own, with prefix length (e.g. 10.77.0.101/24): it "
            "runs in its own network namespace on the host's bridge, and the address moves "
            "with it",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            help="the port it serves on (told to hooks and load balancers)",
            show_default=False,
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", help="its default route (with --ip)", show_default=False),
    ] = None,
    runtime: Annotated[
        RuntimeChoice,
        typer.Option(
            "--runtime",
            help="process: a process tree haul starts; runc: an OCI container "
            "(with --image, --bundle or --rootfs)",
        ),
    ] = RuntimeChoice.process,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="runc: an OCI image layout on the host, oci:/PATH[:TAG] (default tag latest)",
            show_default=False,
        ),
    ] = None,
    bundle: Annotated[
        str | None,
        typer.Option("--bundle", help="runc: a bundle directory on the host", show_default=False),
    ] = None,
    rootfs: Annotated[
        str | None,
        typer.Option(
            "--rootfs",
            help="runc: a root filesystem on the host (runc's default configuration; give CMD)",
            show_default=False,
        ),
    ] = None,
    mount: Annotated[
        list[str] | None,
        typer.Option(
            "--mount",
            help="runc: SRC:DST[:ro], the host's SRC mounted read-only at DST in the "
            "container (repeatable; SRC in the agent's allowed roots, and the same on every "
            "host it moves to)",
            show_default=False,
        ),
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(
            "--memory",
            help="runc: its memory limit, bytes or with K, M, G (powers of 1024), e.g. 64M",
            show_default=False,
        ),
    ] = None,
    cpus: Annotated[
        float | None,
        typer.Option(
            "--cpus", help="runc: CPUs' worth of time it may use, e.g. 0.5", show_default=False
        ),
    ] = None,
    pids_limit: Annotated[
        int | None,
        typer.Option(
            "--pids-limit", help="runc: how many tasks it may have at once", show_default=False
        ),
    ] = None,
    shared_dir: Annotated[
        Path | None,
        typer.Option(
            "--shared-dir",
            help="runc with --image: its writable layer in this directory, which the hosts "
            "it moves between see too (migrate --shared-dir then sends none of it)",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Output.text,
    hosts_file: HostsFileOpt = None,
    argv: Annotated[
        list[str] | None,
        typer.Argument(
            help="the command to run, after -- (a container's overrides its image's)",
            metavar="CMD",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start CMD as workload NAME on HOST, or a runc container, through that host's agent."""
    from haul.agent.models import MountSpec, NetSpec
    from haul.net.spec import WorkloadNet
    from haul.runtime.mounts import BindMount

    sources = [f for f, v in (("--image", image), ("--bundle", bundle), ("--rootfs", rootfs)) if v]
    if runtime is RuntimeChoice.process and sources:
        raise UsageError(f"{', '.join(sources)}: only with --runtime runc")
    if runtime is RuntimeChoice.runc and len(sources) != 1:
        raise UsageError(
            "--runtime runc takes one of --image, --bundle and --rootfs"
            + (f", not {' and '.join(sources)}" if sources else "")
        )
    if runtime is RuntimeChoice.process and not argv:
        raise UsageError("give the command to run after --")
    if runtime is RuntimeChoice.process and mount:
        raise UsageError("--mount: only with --runtime runc (a process tree sees its host)")
    mounts = [BindMount.parse(text) for text in mount or []]
    given = (("--memory", memory), ("--cpus", cpus), ("--pids-limit", pids_limit))
    limits = [flag for flag, value in given if value is not None]
    if runtime is RuntimeChoice.process and limits:
        raise UsageError(f"{', '.join(limits)}: only with --runtime runc")
    if shared_dir is not None and image is None:
        raise UsageError(
            "--shared-dir: only with --runtime runc --image (a bundle's or rootfs's files "
            "are used where they are: put them in the shared directory)"
        )
    memory_bytes = parse_bytes(memory, "--memory") if memory is not None else None
    ((_, entry),) = _select(load_inventory(hosts_file), host)
    if ip is None and (port is not None or gateway is not None):
        raise UsageError("--port and --gateway go with --ip")
    net = None
    if ip is not None:
        WorkloadNet.parse(ip, port, gateway)  # bad input: one line here, before any call
        net = NetSpec(address=ip, port=port, gateway=gateway)

    async def start() -> WorkloadView:
        async with client_for(entry) as agent:
            return await agent.start_workload(
                name,
                argv or [],
                data_dir=data_dir,
                net=net,
                runtime=runtime.value,
                image=image,
                bundle=bundle,
                rootfs=rootfs,
                mounts=[MountSpec(source=str(m.source), destination=m.destination) for m in mounts],
                memory_bytes=memory_bytes,
                cpus=cpus,
                pids_limit=pids_limit,
                shared_dir=str(shared_dir.absolute()) if shared_dir is not None else None,
            )

    view = asyncio.run(start())
    _emit([(host, view)], output, title=f"started on {host}", single=True)


def kill_cmd(
    name: Annotated[str, typer.Argument(help="the workload's name", show_default=False)],
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="the host that runs it (default: ask every host)", show_default=False
        ),
    ] = None,
    output: OutputOpt = Output.text,
    hosts_file: HostsFileOpt = None,
) -> None:
    """Kill workload NAME's process tree on whichever host runs it, and forget it."""
    from haul.agent.models import WORKLOAD_NAME_RE

    if not WORKLOAD_NAME_RE.fullmatch(name):
        raise UsageError(f"{name!r} is not a workload name ({WORKLOAD_NAME_RE.pattern})")
    hosts = _select(load_inventory(hosts_file), host)

    async def kill() -> tuple[str, WorkloadView]:
        where, entry = await _locate(hosts, name)
        async with client_for(entry) as agent:
            try:
                return where, await agent.delete_workload(name)
            except NoSuchWorkload:  # it ended and was removed meanwhile
                raise WorkloadError(f"no workload {name!r} on {where}") from None

    where, view = asyncio.run(kill())
    _emit([(where, view)], output, title=f"killed on {where}", single=True)


def _one_host(inventory: Inventory, host: str | None) -> tuple[str, HostEntry]:
    """``host``, or the inventory's only host."""
    if host is None and len(inventory.hosts) > 1:
        raise UsageError(f"--host: which host is it on ({', '.join(sorted(inventory.hosts))})?")
    ((name, entry),) = _select(inventory, host)
    return name, entry


def adopt_cmd(
    target: Annotated[
        str,
        typer.Argument(
            help="runc:ID (a container started with runc run -d) or pid:PID (a tree)",
            metavar="runc:ID|pid:PID",
            show_default=False,
        ),
    ],
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="the host it runs on (default: the only one)", show_default=False
        ),
    ] = None,
    runc_root: Annotated[
        str | None,
        typer.Option(
            "--runc-root",
            help="the runc root it was started under, as the host sees it (default runc's, "
            "/run/runc)",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="its workload name (default: the container's ID, or pid-PID)",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Output.text,
    hosts_file: HostsFileOpt = None,
) -> None:
    """Make an existing container or process tree a workload of its host's agent; a
    container that runc and CRIU could not checkpoint there is refused, with the reasons."""
    kind, _, what = target.partition(":")
    if kind not in ("runc", "pid") or not what:
        raise UsageError(f"{target!r}: give runc:CONTAINER_ID or pid:PID")
    if kind == "pid" and runc_root is not None:
        raise UsageError("--runc-root goes with runc:ID")
    pid = 0
    if kind == "pid":
        try:
            pid = int(what)
        except ValueError:
            raise UsageError(f"{target!r} is not pid:NUMBER") from None
    where, entry = _one_host(load_inventory(hosts_file), host)

    async def adopt() -> WorkloadView:
        async with client_for(entry) as agent:
            if kind == "runc":
                return await agent.adopt_container(what, runc_root=runc_root, name=name)
            return await agent.adopt(pid, name)

    view = asyncio.run(adopt())
    _emit([(where, view)], output, title=f"adopted on {where}", single=True)


def register(app: typer.Typer) -> None:
    """Add ``ps``, ``run``, ``adopt`` and ``kill`` to ``app`` (the ``haul`` command)."""
    app.command("ps")(ps_cmd)
    app.command("run", context_settings={"allow_interspersed_args": False})(run_cmd)
    app.command("adopt")(adopt_cmd)
    app.command("kill")(kill_cmd)
