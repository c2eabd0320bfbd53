"""HAProxy in a lab's client namespace, in front of services in the lab's hosts.

``start_haproxy`` writes a configuration (the one haul recommends for moving a
workload behind HAProxy, see :mod:`haul.cutover.haproxy`), checks it with
``haproxy -c``, and runs HAProxy in the foreground inside the client member's
network and mount namespaces: its frontend listens on the client's address,
its stats socket (level admin, mode 0600) sits in the client's work
directory. Its PID goes into the lab's ledger (``services``) as soon as it
runs, and its files are under the lab's root directory, so ``lab down``
removes all of it even when the caller crashed; ``stop_haproxy`` stops it
earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from haul.errors import LabError, UsageError
from haul.lab.agents import log_tail
from haul.lab.ledger import Ledger
from haul.lab.spec import LabSpec
from haul.procfs import alive, netns_inode, ns_inode, wait_gone

#: how long HAProxy has to answer on its stats socket after it is started
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_POLL_S = 0.05
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
SLOT_PREFIX = "slot"


@dataclass(frozen=True, slots=True)
class LbServer:
    """One ``server`` line: a name, where it is, and whether it starts in service."""

    name: str
    address: str  # an IP address; 0.0.0.0 for a slot not yet given one
    port: int
    enabled: bool = True
    check: bool = True  # health-checked (the cutover needs it)


@dataclass(frozen=True, slots=True)
class LbConfig:
    """What the lab's HAProxy serves: one frontend, one backend of servers."""

    servers: tuple[LbServer, ...]
    backend: str = "web"
    frontend_port: int = 8080
    #: the health check: ``GET <check_path>`` must answer 2xx or 3xx
    check_path: str = "/"
    #: spare servers (``slot1``..``slotN``, at 0.0.0.0, in maintenance) for cutovers that
    #: find servers by address (``BACKEND/*``); their port is the first server's
    spare_slots: int = 0
    #: the stats socket's level; only ``admin`` lets a cutover change servers
    socket_level: str = "admin"
    #: the settings a migration depends on (haul.cutover.haproxy says why these values)
    connect_timeout_ms: int = 250
    server_timeout_ms: int = 1000
    retries: int = 20
    http_reuse: str = "never"
    check_inter_ms: int = 250

    def __post_init__(self) -> None:
        for name in (self.backend, *(s.name for s in self.servers)):
            if not _NAME_RE.fullmatch(name):
                raise UsageError(
                    f"HAProxy name {name!r} may hold only letters, digits, '-', '_', '.' and ':'"
                )
        if not self.servers and not self.spare_slots:
            raise UsageError(f"backend {self.backend!r} needs at least one server or slot")
        for s in self.servers:
            try:
                ipaddress.ip_address(s.address)
            except ValueError:
                raise UsageError(f"server {s.name}: {s.address!r} is not an IP address") from None
            if not 0 < s.port < 65536:
                raise UsageError(f"server {s.name}: port {s.port} is out of range")
        if self.socket_level not in ("user", "operator", "admin"):
            raise UsageError(
                f"stats socket level {self.socket_level!r} is not user, operator or admin"
            )
        if self.http_reuse not in ("never", "safe", "aggressive", "always"):
            raise UsageError(
                f"http-reuse {self.http_reuse!r} is not never, safe, aggressive or always"
            )
        for what, value in (
            ("connect timeout", self.connect_timeout_ms),
            ("server timeout", self.server_timeout_ms),
            ("check interval", self.check_inter_ms),
        ):
            if value <= 0:
                raise UsageError(f"the {what} must be above 0 ms, not {value}")
        if self.retries < 0:
            raise UsageError(f"retries must be 0 or more, not {self.retries}")


@dataclass(frozen=True, slots=True)
class LabHaproxy:
    """A running HAProxy of a lab: where to reach it and its files."""

    name: str  # the ledger's name for it, "haproxy@client"
    pid: int
    socket: Path
    url: str  # the frontend, as the client member reaches it
    config: Path
    log: Path
    backend: str


def haproxy_config(cfg: LbConfig, *, bind_address: str, socket: Path) -> str:
    """The configuration text; every timeout and retry is there for a migration
    (see haul.cutover.haproxy, "Configuring HAProxy for a migration")."""
    slot_port = cfg.servers[0].port if cfg.servers else cfg.frontend_port
    lines = [
        "# written by haul.lab.haproxy; the reasons are in haul/cutover/haproxy.py",
        "global",
        f"    stats socket {socket} mode 600 level {cfg.socket_level}",
        "    stats timeout 30s",
        "    log stderr format raw local0 info",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    timeout client 30s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    # A SYN to a frozen source (its network is locked) or to an address that",
        "    # vanished with it is never answered: give up quickly and try again.",
        f"    timeout connect {cfg.connect_timeout_ms}ms",
        "    # A request already sent to the source when it froze is never answered once",
        "    # the source is killed: replay it after this (retry-on response-timeout).",
        "    # Just above the service's slowest normal answer.",
        f"    timeout server {cfg.server_timeout_ms}ms",
        "    timeout queue 10s",
        "    # Connection attempts and replays a request may use: at least",
        "    # (frozen window + restore + cutover) / timeout connect, with room to spare.",
        f"    retries {cfg.retries}",
        "    # Every retry may pick another server: once the destination is UP, retries go there.",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "    # Each request gets its own server connection: none is left idle towards a",
        "    # source that is about to freeze.",
        f"    http-reuse {cfg.http_reuse}",
        "",
        "frontend fe",
        f"    bind {_host_port(bind_address, cfg.frontend_port)}",
        f"    default_backend {cfg.backend}",
        "",
        f"backend {cfg.backend}",
        "    balance roundrobin",
        f"    option httpchk GET {cfg.check_path}",
        "    # Checked every inter, also the pace a server in maintenance keeps: one leaving",
        "    # it is checked within that, and UP after one good answer; two failures (at",
        "    # 100 ms intervals) take a server down.",
        f"    default-server check inter {cfg.check_inter_ms}ms fastinter 100ms "
        "downinter 100ms rise 1 fall 2",
    ]
    for s in cfg.servers:
        extra = ("" if s.enabled else " disabled") + ("" if s.check else " no-check")
        lines.append(f"    server {s.name} {_host_port(s.address, s.port)}{extra}")
    if cfg.spare_slots:
        lines.append(
            f"    server-template {SLOT_PREFIX} {cfg.spare_slots} "
            f"{_host_port('0.0.0.0', slot_port)} disabled"
        )
    return "\n".join(lines) + "\n"


def _host_port(address: str, port: int) -> str:
    ip = ipaddress.ip_address(address)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def haproxy_binary() -> Path:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise LabError("haproxy is not installed (deploy/install.sh installs it)")
    return Path(found)


def haproxy_dir(spec: LabSpec, name: str = "haproxy") -> Path:
    return spec.client.workdir / name


async def start_haproxy(
    spec: LabSpec, cfg: LbConfig, *, name: str = "haproxy", timeout_s: float = START_TIMEOUT_S
) -> LabHaproxy:
    """Run HAProxy in the lab's client member; return once its stats socket answers."""
    ledger = Ledger.load(spec.prefix)
    if ledger is None:
        raise LabError(f"lab {spec.prefix!r} is not up")
    if not _NAME_RE.fullmatch(name) or "/" in name:
        raise UsageError(f"HAProxy instance name {name!r} is not a plain name")
    service = f"{name}@{spec.client.name}"
    old = ledger.services.get(service)
    if old is not None and _ours(spec, old):
        raise LabError(f"{service} already runs in lab {spec.prefix!r} (PID {old})")
    directory = haproxy_dir(spec, name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket = directory / "admin.sock"
    socket.unlink(missing_ok=True)
    config = directory / "haproxy.cfg"
    log = directory / "haproxy.log"
    config.write_text(haproxy_config(cfg, bind_address=str(spec.client.address.ip), socket=socket))
    argv = [*spec.client.ns.prefix(), str(haproxy_binary())]
    check = await asyncio.create_subprocess_exec(
        *argv,
        "-c",
        "-q",
        "-f",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await check.communicate()
    if check.returncode != 0:
        text = " | ".join(
            line.strip() for line in out.decode(errors="replace").splitlines() if line.strip()
        )
        raise LabError(f"HAProxy refused the configuration {config}: {text}")
    with log.open("ab") as logfile:
        proc = subprocess.Popen(
            [*argv, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
        )
    _SPAWNED.append(proc)
    ledger.record_service(service, proc.pid)
    url = f"http://{_host_port(str(spec.client.address.ip), cfg.frontend_port)}/"
    running = LabHaproxy(
        name=service,
        pid=proc.pid,
        socket=socket,
        url=url,
        config=config,
        log=log,
        backend=cfg.backend,
    )
    try:
        await _wait_answering(proc, socket, log, timeout_s)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(_stop, spec, running))
        raise
    return running


async def _wait_answering(
    proc: subprocess.Popen[bytes], socket: Path, log: Path, timeout_s: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if proc.poll() is not None:
            raise LabError(f"HAProxy exited with status {proc.returncode}: {log_tail(log)}")
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_unix_connection(str(socket))
            try:
                writer.write(b"show info\n")
                await writer.drain()
                if b"Pid:" in await reader.read():
                    return
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if loop.time() >= deadline:
            raise LabError(
                f"HAProxy did not answer on {socket} within {timeout_s:.0f} s: {log_tail(log)}"
            )
        await asyncio.sleep(_POLL_S)


def _ours(spec: LabSpec, pid: int) -> bool:
    """Whether ``pid`` still runs inside the lab's client namespace (not a reused PID)."""
    inode = netns_inode(spec.client.netns)
    return inode is not None and alive(pid) and ns_inode(pid, "net") == inode


def _stop(spec: LabSpec, proxy: LabHaproxy) -> None:
    if _ours(spec, proxy.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proxy.pid, signal.SIGTERM)
        if wait_gone([proxy.pid], STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proxy.pid, signal.SIGKILL)
            if wait_gone([proxy.pid], STOP_TIMEOUT_S):
                raise LabError(f"HAProxy (PID {proxy.pid}) survived SIGKILL")
    _reap(proxy.pid)
    proxy.socket.unlink(missing_ok=True)
    ledger = Ledger.load(spec.prefix)
    if ledger is not None and ledger.services.get(proxy.name) == proxy.pid:
        ledger.forget_service(proxy.name)


async def stop_haproxy(spec: LabSpec, proxy: LabHaproxy) -> None:
    """Stop HAProxy (SIGTERM, then SIGKILL) and forget it in the ledger; idempotent."""
    await asyncio.shield(asyncio.to_thread(_stop, spec, proxy))


def _reap(pid: int) -> None:
    for proc in list(_SPAWNED):
        if proc.pid == pid:
            proc.poll()
            if proc.returncode is not None:
                _SPAWNED.remove(proc)


def lab_servers(
    spec: LabSpec,
    port: int,
    *,
    hosts: Sequence[int] = (1, 2),
    enabled: Sequence[int] = (1,),
    template: str = "web-{host}",
) -> tuple[LbServer, ...]:
    """One server per lab host, named after it, at the host's address."""
    return tuple(
        LbServer(
            name=template.replace("{host}", spec.host(i).name),
            address=str(spec.host(i).address.ip),
            port=port,
            enabled=i in enabled,
        )
        for i in hosts
    )


#: HAProxy processes started here, kept so they are reaped once stopped
_SPAWNED: list[subprocess.Popen[bytes]] = []
