"""A keep-alive HTTP load client that records every request, like ``ab -g``.

``LoadGen(url, connections=N).run(duration_s)`` keeps N HTTP/1.1 keep-alive
connections and sends ``GET`` on each as soon as the previous answer is in
(a closed loop, as ``ab -c N -k``), or at most one per ``interval_s`` per
connection. Every request becomes a :class:`~haul.lab.loadrun.Sample`: when it
started (seconds since the run started, monotonic), how long it took, its status
or error, the connection it went on, and the service's ``X-Count`` when it sent
one. The run's result is a :class:`~haul.lab.loadrun.LoadRun` (its figures and
TSV file are in :mod:`haul.lab.loadrun`).

A request that fails (reset, refused, closed early, timed out, malformed or
non-2xx/3xx answer) is recorded as failed and never retried: the connection is
dropped and the next request opens a new one (counted in ``reconnects``).
Stopping lets each connection finish the request it has in flight, so the
service's count of requests it answered and the client's count of answers
agree.

The caller marks what happened during the run on the same clock: ``mark``
(a point) and ``begin``/``end`` or ``window`` (a span, such as a migration);
they go into the result and onto the plot (:mod:`haul.lab.plot`).

From another process (for instance inside a lab's client namespace through
``ip netns exec``)::

    python -m haul.lab.loadgen URL [--duration S] [--connections N] [--tsv FILE]
        [--png FILE] [--control-stdin]

prints a JSON summary on stdout. With ``--control-stdin`` it reads lines
``begin LABEL``, ``end LABEL``, ``mark LABEL`` and ``stop`` from stdin and
stamps them on arrival; ``t0_monotonic`` in the summary lets a caller map its
own ``time.monotonic()`` readings (the clock is machine-wide) onto the run.
In-process, :func:`netns_connector` opens the connections inside a named
network namespace instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from haul.errors import UsageError
from haul.lab.loadrun import LoadRun, Mark, Sample, Window

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: opens a connection to (host, port); the default is asyncio.open_connection
Connector = Callable[[str, int], Awaitable[Streams]]


# ------------------------------------------------------------------ the wire


class BadResponse(ValueError):
    """The server's answer is not HTTP/1.x we can read."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    keep_alive: bool
    first_byte: float  # monotonic time of the answer's first byte


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    """Read one HTTP/1.x response (body read and discarded); raise BadResponse if malformed."""
    try:
        first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        raise BadResponse("connection closed before an answer") from None
    first_byte = time.monotonic()
    try:
        head = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise BadResponse("connection closed in the answer's head") from None
    except asyncio.LimitOverrunError:
        raise BadResponse("answer head too large") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadResponse(f"bad status line {lines[0][:60]!r}")
    version, status = parts[0], int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadResponse(f"bad header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    try:
        if head_only or status in (204, 304) or 100 <= status < 200:
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            await _read_chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise BadResponse("bad Content-Length") from None
            await reader.readexactly(length)
        else:
            await reader.read()  # delimited by the end of the connection
            keep = False
    except asyncio.IncompleteReadError:
        raise BadResponse("connection closed in the answer's body") from None
    return Response(status, headers, keep, first_byte)


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadResponse("bad chunk size") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return
        await reader.readexactly(size + 2)


def _target(url: str) -> tuple[str, int, bytes]:
    """Host, port and the request bytes for ``url``; UsageError if it is not http://."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"load URL {url!r} must be http://HOST[:PORT]/PATH")
    try:
        port = parts.port or 80
    except ValueError:
        raise UsageError(f"load URL {url!r} has a bad port") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "User-Agent: haul-loadgen\r\nAccept: */*\r\n\r\n"
    )
    return parts.hostname, port, request.encode("latin-1")


async def _open(host: str, port: int) -> Streams:
    return await asyncio.open_connection(host, port)


async def http_get(
    url: str, *, timeout_s: float = 30.0, connect: Connector | None = None
) -> tuple[int, bytes]:
    """One GET on a new connection: status and body (for /check and the like)."""
    host, port, request = _target(url)
    async with asyncio.timeout(timeout_s):
        reader, writer = await (connect or _open)(host, port)
        try:
            writer.write(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            await writer.drain()
            response = await read_response(reader, head_only=True)
            if "content-length" in response.headers:
                body = await reader.readexactly(int(response.headers["content-length"]))
            else:
                body = await reader.read()
            return response.status, body
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# ------------------------------------------------------------------ namespaces

_CLONE_NEWNET = 0x40000000


def _socket_in_netns(path: Path, family: int) -> socket.socket:
    """A TCP socket created inside the network namespace at ``path``.

    A fresh thread enters the namespace, makes the socket (which stays in the
    namespace it was made in) and ends, so no other thread, and no pooled one,
    ever runs in another namespace. Needs CAP_SYS_ADMIN.
    """
    made: list[socket.socket] = []
    failed: list[str] = []

    def enter_and_make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with path.open("rb") as ns:
            if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                failed.append(f"cannot enter network namespace {path}: errno {err}")
                return
        made.append(socket.socket(family, socket.SOCK_STREAM))

    worker = threading.Thread(target=enter_and_make, name=f"netns-{path.name}")
    worker.start()
    worker.join()
    if failed or not made:
        raise OSError(failed[0] if failed else f"no socket made in {path}")
    return made[0]


def netns_connector(netns: str, netns_dir: Path = Path("/run/netns")) -> Connector:
    """A connector whose connections start in the named network namespace."""
    path = netns_dir / netns

    async def connect(host: str, port: int) -> Streams:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = await asyncio.to_thread(_socket_in_netns, path, family)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    return connect


# ------------------------------------------------------------------ the client


@dataclass(slots=True)
class _Open:
    label: str
    start_s: float


@dataclass(slots=True)
class _State:
    samples: list[Sample] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    open_windows: list[_Open] = field(default_factory=list)
    reconnects: int = 0


class LoadGen:
    """N keep-alive connections sending GET to ``url`` until stopped or for a duration."""

    def __init__(
        self,
        url: str,
        *,
        connections: int = 1,
        timeout_s: float = 30.0,
        interval_s: float = 0.0,
        retry_pause_s: float = 0.05,
        connect: Connector | None = None,
    ) -> None:
        if connections < 1:
            raise UsageError(f"load needs at least one connection, not {connections}")
        if timeout_s <= 0 or interval_s < 0 or retry_pause_s < 0:
            raise UsageError("load timeout must be positive, interval and pause not negative")
        self.url = url
        self.host, self.port, self._request = _target(url)
        self.connections = connections
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.retry_pause_s = retry_pause_s
        self._connect = connect or _open
        self._state = _State()
        self._t0: float | None = None
        self._t0_wall = 0.0
        self._stop: asyncio.Event | None = None
        self._stop_at: float | None = None

    # -- the clock and the caller's marks

    def now(self) -> float:
        """Seconds since the run started (0.0 before it has)."""
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def since_start(self, monotonic: float) -> float:
        """A ``time.monotonic()`` reading as seconds since the run started."""
        return monotonic - (self._t0 if self._t0 is not None else monotonic)

    def mark(self, label: str, at_s: float | None = None) -> Mark:
        mark = Mark(label, self.now() if at_s is None else at_s)
        self._state.marks.append(mark)
        return mark

    def begin(self, label: str) -> None:
        """Open a window now (close it with ``end(label)``)."""
        self._state.open_windows.append(_Open(label, self.now()))

    def end(self, label: str) -> Window:
        for i, w in enumerate(self._state.open_windows):
            if w.label == label:
                del self._state.open_windows[i]
                return self.add_window(label, w.start_s, self.now())
        raise UsageError(f"no open window {label!r} to end")

    def add_window(self, label: str, start_s: float, end_s: float) -> Window:
        """Record a window known after the fact (times in seconds since the run started)."""
        window = Window(label, start_s, end_s)
        self._state.windows.append(window)
        return window

    @contextlib.contextmanager
    def window(self, label: str) -> Iterator[None]:
        self.begin(label)
        try:
            yield
        finally:
            self.end(label)

    # -- progress, for a caller that watches

    @property
    def completed(self) -> int:
        return len(self._state.samples)

    @property
    def failed(self) -> int:
        return sum(1 for s in self._state.samples if not s.ok)

    # -- running

    def stop(self) -> None:
        """Let every connection finish its request in flight, then end the run."""
        if self._stop_at is None:
            self._stop_at = self.now()
        if self._stop is not None:
            self._stop.set()

    async def run(self, duration_s: float | None = None) -> LoadRun:
        """Send requests until ``stop()`` or for ``duration_s``; return what was recorded."""
        if self._t0 is not None:
            raise UsageError("a LoadGen runs once; make a new one")
        self._stop = asyncio.Event()
        self._t0 = time.monotonic()
        self._t0_wall = time.time()
        if self._stop_at is not None:  # stopped before it started
            self._stop.set()
        async with asyncio.TaskGroup() as tg:
            for n in range(self.connections):
                tg.create_task(self._connection(n))
            if duration_s is not None:
                tg.create_task(self._stop_after(duration_s))
        end = self._stop_at if self._stop_at is not None else self.now()
        for w in self._state.open_windows:  # a window the caller left open ends with the run
            self._state.windows.append(Window(w.label, w.start_s, end))
        self._state.open_windows.clear()
        return LoadRun(
            url=self.url,
            connections=self.connections,
            t0_monotonic=self._t0,
            t0_wall=self._t0_wall,
            end_s=end,
            reconnects=self._state.reconnects,
            samples=tuple(sorted(self._state.samples, key=lambda s: s.start_s)),
            windows=tuple(sorted(self._state.windows, key=lambda w: w.start_s)),
            marks=tuple(sorted(self._state.marks, key=lambda m: m.t_s)),
        )

    async def _stop_after(self, duration_s: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), duration_s)
        self.stop()

    async def _connection(self, n: int) -> None:
        assert self._stop is not None and self._t0 is not None
        streams: Streams | None = None
        opened = 0
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                sample, streams, new = await self._one(n, started, streams)
                if new:
                    opened += 1
                    if opened > 1:
                        self._state.reconnects += 1
                self._state.samples.append(sample)
                if self._stop.is_set():
                    break
                if not sample.ok:
                    await self._pause(started + sample.latency_s + self.retry_pause_s)
                elif self.interval_s:
                    await self._pause(started + self.interval_s)
        finally:
            if streams is not None:
                _close(streams[1])

    async def _pause(self, until: float) -> None:
        assert self._stop is not None
        delay = until - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _one(
        self, n: int, started: float, streams: Streams | None
    ) -> tuple[Sample, Streams | None, bool]:
        """One request on connection ``n``: its sample, the connection to go on with, and
        whether this request opened a new one."""
        assert self._t0 is not None
        connect_s = wait_s = 0.0
        new = streams is None
        try:
            async with asyncio.timeout(self.timeout_s):
                if streams is None:
                    streams = await self._connect(self.host, self.port)
                    connect_s = time.monotonic() - started
                reader, writer = streams
                writer.write(self._request)
                await writer.drain()
                sent = time.monotonic()
                response = await read_response(reader)
        except (OSError, TimeoutError, BadResponse, asyncio.LimitOverrunError) as exc:
            if streams is not None:
                _close(streams[1])
            return self._sample(n, started, connect_s, wait_s, 0, None, _describe(exc)), None, new
        wait_s = response.first_byte - sent
        served = response.headers.get("x-count")
        sample = self._sample(
            n,
            started,
            connect_s,
            wait_s,
            response.status,
            int(served) if served and served.isdigit() else None,
            "",
        )
        if not response.keep_alive or not sample.ok:
            _close(streams[1])
            return sample, None, new
        return sample, streams, new

    def _sample(
        self,
        n: int,
        started: float,
        connect_s: float,
        wait_s: float,
        status: int,
        served: int | None,
        error: str,
    ) -> Sample:
        assert self._t0 is not None
        return Sample(
            start_s=started - self._t0,
            latency_s=time.monotonic() - started,
            connect_s=connect_s,
            wait_s=wait_s,
            status=status,
            conn=n,
            served=served,
            error=error,
        )


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------ command line


async def _control(load: LoadGen, stream: asyncio.StreamReader) -> None:
    """Apply ``begin|end|mark LABEL`` and ``stop`` lines from ``stream``; stop at its end."""
    while line := await stream.readline():
        word, _, label = line.decode(errors="replace").strip().partition(" ")
        try:
            if word == "begin":
                load.begin(label)
            elif word == "end":
                load.end(label)
            elif word == "mark":
                load.mark(label)
            elif word == "stop":
                break
            elif word:
                print(f"loadgen: ignored control line {line!r}", file=sys.stderr)
        except UsageError as exc:
            print(f"loadgen: {exc}", file=sys.stderr)
    load.stop()


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _main(args: argparse.Namespace) -> LoadRun:
    load = LoadGen(
        args.url,
        connections=args.connections,
        timeout_s=args.timeout,
        interval_s=args.interval_ms / 1000,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, load.stop)
    control: asyncio.Task[None] | None = None
    if args.control_stdin:
        control = asyncio.create_task(_control(load, await _stdin_reader()))
    try:
        return await load.run(args.duration)
    finally:
        if control is not None:
            control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await control


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m haul.lab.loadgen",
        description="Send keep-alive GETs to URL and record every request (like ab -g).",
    )
    parser.add_argument("url")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds to run (default: until SIGINT/SIGTERM or 'stop')",
    )
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=0.0,
        help="least time between request starts on one connection",
    )
    parser.add_argument("--tsv", type=Path, help="write every request here (ab -g columns)")
    parser.add_argument("--png", type=Path, help="write the latency plot here")
    parser.add_argument("--title", default="", help="the plot's title")
    parser.add_argument(
        "--control-stdin",
        action="store_true",
        help="read 'begin|end|mark LABEL' and 'stop' lines from stdin",
    )
    args = parser.parse_args(argv)
    try:
        run = asyncio.run(_main(args))
    except UsageError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    if args.tsv:
        run.write_tsv(args.tsv)
    if args.png:
        from haul.lab.plot import write_latency_png

        write_latency_png(args.png, run, title=args.title or f"latency of GET {run.url}")
    print(json.dumps(run.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
