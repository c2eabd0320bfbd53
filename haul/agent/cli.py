"""``haul agent`` (run the per-host daemon) and ``haul ca`` (its certificate authority).

Wired into the ``haul`` command by ``haul/cli.py``; ``python -m haul.agent``
runs the same agent command on its own. Heavy imports (aiohttp,
cryptography) happen inside the commands, so ``haul --help`` stays quick.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from haul.errors import HaulError, UsageError

DEFAULT_CONFIG = Path("/etc/haul/haul.toml")
DEFAULT_CA_DIR = Path("/etc/haul/ca")

agent_cli = typer.Typer(
    help="The per-host daemon: HTTP API for migrations and workloads.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ca_app = typer.Typer(
    help="The certificate authority behind the agents' mutual TLS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="the TOML file with the \\[agent] table")
]
DirOpt = Annotated[Path, typer.Option("--dir", help="where the CA's files are")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace files that exist")]


def _log_level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise UsageError(f"--log-level {name!r}: use debug, info, warning or error")
    return level


@agent_cli.callback()
def agent_cmd(
    ctx: typer.Context,
    config: ConfigOpt = DEFAULT_CONFIG,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning, error")
    ] = "info",
) -> None:
    """Run the agent until SIGTERM or SIGINT (logs are JSON lines on stderr)."""
    if ctx.invoked_subcommand is not None:
        return
    from haul.agent import jsonlog
    from haul.agent.config import load_config
    from haul.agent.server import serve

    jsonlog.configure(_log_level(log_level))
    asyncio.run(serve(load_config(config)))


@ca_app.command("init")
def ca_init_cmd(
    directory: DirOpt = DEFAULT_CA_DIR,
    name: Annotated[str, typer.Option("--name", help="the CA's common name")] = "haul CA",
    days: Annotated[int, typer.Option("--days", help="how long it is valid")] = 3650,
    force: ForceOpt = False,
) -> None:
    """Make a new CA: DIR/ca.key (mode 0600) and DIR/ca.crt."""
    from haul.agent.ca import init_ca

    pair = init_ca(directory, name=name, days=days, overwrite=force)
    sys.stdout.write(f"{pair.cert}\n{pair.key}\n")


@ca_app.command("issue")
def ca_issue_cmd(
    host: Annotated[str, typer.Argument(help="the host's name (its DNS name in the cert)")],
    ips: Annotated[
        list[str] | None, typer.Option("--ip", help="an address of the host (repeat for several)")
    ] = None,
    directory: DirOpt = DEFAULT_CA_DIR,
    days: Annotated[int, typer.Option("--days", help="how long it is valid (at most 397)")] = 365,
    force: ForceOpt = False,
) -> None:
    """Issue DIR/HOST.key (mode 0600) and DIR/HOST.crt, for server and client use.

    Give every address other hosts reach HOST at (--ip): they check it. The name is
    who the holder is to an agent: a peer when an [agent.peers] entry has that
    name, an operator when [agent.auth] operators lists it, else no one."""
    from haul.agent.ca import issue

    pair = issue(directory, host, ips or [], days=days, overwrite=force)
    sys.stdout.write(f"{pair.cert}\n{pair.key}\n")
    from haul.agent.config import certificate_addresses

    if not certificate_addresses(pair.cert):
        sys.stderr.write(
            f"note: {pair.cert.name} names no --ip address; an agent using it "
            "must be reached by name, and CRIU's TLS page transfer to it needs "
            "its address (haul ca issue HOST --ip ADDRESS --force)\n"
        )


@ca_app.command("revoke")
def ca_revoke_cmd(
    name: Annotated[
        str | None, typer.Argument(help="the certificate's name (DIR/NAME.crt)")
    ] = None,
    serial: Annotated[
        str | None, typer.Option("--serial", help="or its serial number, in hex")
    ] = None,
    directory: DirOpt = DEFAULT_CA_DIR,
) -> None:
    """Revoke a certificate: its serial goes into DIR/crl.pem, signed by the CA.

    Copy crl.pem to every agent's [agent.tls] crl path: each reads it again when it
    changes and then refuses the certificate (and so does CRIU on page channels)."""
    from haul.agent.ca import revoke

    number = None
    if serial is not None:
        try:
            number = int(serial.removeprefix("0x"), 16)
        except ValueError:
            raise UsageError(f"--serial {serial!r} is not a hexadecimal number") from None
    path = revoke(directory, name, serial=number)
    sys.stdout.write(f"{path}\n")


@ca_app.command("crl")
def ca_crl_cmd(directory: DirOpt = DEFAULT_CA_DIR) -> None:
    """Write DIR/crl.pem again (empty at first): what it revokes, signed by the CA."""
    from haul.agent.ca import write_crl

    sys.stdout.write(f"{write_crl(directory)}\n")


def main() -> None:
    """``python -m haul.agent``: the agent command alone, with haul's error handling."""
    try:
        agent_cli(prog_name="haul agent")
    except HaulError as exc:
        sys.stderr.write(f"haul agent: error: {exc.one_line()}\n")
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except KeyboardInterrupt:
        sys.exit(130)
