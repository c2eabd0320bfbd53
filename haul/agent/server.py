"""Running the agent: its TCP listener (mutual TLS when configured) and its unix socket.

:class:`AgentServer` binds both listeners itself (so a port of 0 tells which
port it got, and the unix socket is created mode 0600 with no moment of
wider access), serves :func:`haul.agent.app.make_app`, and on
:meth:`~AgentServer.aclose` stops serving and removes its socket. The
workloads it started keep running: a restarted agent finds them in its
registry. :func:`serve` is the daemon: start, tell systemd, wait for SIGTERM
or SIGINT, close.

The agent writes only inside its state directory and at its socket path
(temporary files included: Python's are put in ``STATE/tmp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import tempfile
from pathlib import Path

from aiohttp import web

from haul.agent.app import make_app
from haul.agent.ca import server_ssl_context
from haul.agent.config import AgentConfig
from haul.agent.context import AgentContext
from haul.agent.sdnotify import Notifier
from haul.errors import ConfigError

log = logging.getLogger(__name__)

BACKLOG = 128
#: how long open requests may take to finish when the agent stops
SHUTDOWN_TIMEOUT_S = 10.0


def tcp_socket(address: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on ``address``:``port`` (0: any free port)."""
    try:
        infos = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
        )
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"agent.address {address}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {address} port {port}: {exc.strerror or exc}") from exc
    return sock


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file a dead agent left; refuse if an agent still listens there."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"agent.socket: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise ConfigError(f"agent.socket: cannot check {path}: {exc.strerror}") from exc
    finally:
        probe.close()
    raise ConfigError(f"agent.socket: another agent listens on {path}")


def unix_socket(path: Path) -> socket.socket:
    """A listening, non-blocking unix socket at ``path``, mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        hint = " (a unix socket path has at most 107 bytes)" if exc.errno == errno.EINVAL else ""
        raise ConfigError(f"agent.socket: cannot bind {path}: {exc.strerror or exc}{hint}") from exc
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise ConfigError(f"agent.socket: {path}: {exc.strerror}") from exc
    return sock


def _host_port(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return (f"[{host}]" if ":" in host else host), int(port)


class AgentServer:
    """The agent's listeners over one app. No I/O until :meth:`start`."""

    def __init__(self, config: AgentConfig, *, ctx: AgentContext | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.urls: list[str] = []
        #: the TCP port actually bound (differs from the config's when that is 0)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._socket_inode: int | None = None

    async def start(self) -> None:
        config = self.config
        ssl_context = None
        if config.tls is not None:
            ssl_context = server_ssl_context(config.tls.ca, config.tls.cert, config.tls.key)
        ctx = self.ctx if self.ctx is not None else AgentContext.create(config)
        self.ctx = ctx
        runner = web.AppRunner(
            make_app(ctx), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()  # the app's startup: state directory, registry
        self._runner = runner
        try:
            tcp = tcp_socket(config.address, config.port)
            tcp_site = web.SockSite(runner, tcp, ssl_context=ssl_context)
            await tcp_site.start()
            host, self.port = _host_port(tcp)
            self.urls.append(f"{'https' if ssl_context else 'http'}://{host}:{self.port}")
            unix = unix_socket(config.socket)
            self._socket_inode = os.stat(config.socket).st_ino
            unix_site = web.SockSite(runner, unix)
            await unix_site.start()
            self.urls.append(f"unix://{config.socket}")
        except BaseException:
            await self.aclose()
            raise
        log.info("agent %s listening on %s", config.host, ", ".join(self.urls))

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._socket_inode is not None:
            # remove the socket only if it is still ours (not one a newer agent made)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.config.socket).st_ino == self._socket_inode:
                    self.config.socket.unlink()
            self._socket_inode = None
        self.urls = []


async def serve(config: AgentConfig, *, notifier: Notifier | None = None) -> None:
    """Run the agent until SIGTERM or SIGINT, then close cleanly."""
    notifier = notifier if notifier is not None else Notifier.from_environ()
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = config.state_dir / "tmp"
    tmp.mkdir(exist_ok=True, mode=0o700)
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = str(tmp)  # `criu check` and friends write their scratch files here
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    server = AgentServer(config)
    try:
        await server.start()
        notifier.ready(f"listening on {', '.join(server.urls)}")
        await stop.wait()
        log.info("agent %s stopping", config.host)
        notifier.stopping()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.aclose()
        tempfile.tempdir = saved_tempdir
