"""The load client: its HTTP reading, and its request loop over a socketpair with a
scripted server (no network). The record of a run is tested in test_loadrun.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from haul.errors import UsageError
from haul.lab.loadgen import BadResponse, LoadGen, Streams, read_response

# ------------------------------------------------------------------ reading answers


async def _read(data: bytes, eof: bool = True) -> tuple[int, bool, dict[str, str], bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    r = await read_response(reader)
    rest = await reader.read() if eof else b""
    return r.status, r.keep_alive, r.headers, rest


@pytest.mark.asyncio
async def test_read_response_with_length_leaves_the_next_answer() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Count: 7\r\n\r\nhelloHTTP/1.1 404 Not Found\r\n"
    )
    status, keep, headers, rest = await _read(data)
    assert (status, keep, headers["x-count"]) == (200, True, "7")
    assert rest == b"HTTP/1.1 404 Not Found\r\n"


@pytest.mark.asyncio
async def test_read_response_chunked_and_close_delimited() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: 1\r\n\r\nNEXT"
    )
    assert (await _read(chunked))[3] == b"NEXT"
    status, keep, _, rest = await _read(b"HTTP/1.0 200 OK\r\n\r\nbody till the end")
    assert (status, keep, rest) == (200, False, b"")
    assert (await _read(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))[
        1
    ] is False
    assert (await _read(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"))[
        1
    ] is True
    assert (await _read(b"HTTP/1.1 204 No Content\r\n\r\nNEXT"))[3] == b"NEXT"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"", "closed before an answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "closed in the answer's head"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed in the answer's body"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
    ],
)
async def test_read_response_refuses_what_is_not_http(data: bytes, what: str) -> None:
    with pytest.raises(BadResponse, match=what):
        await _read(data)


def test_bad_urls_and_settings_are_refused() -> None:
    for url in ("https://x/", "x:80/", "http:///path", "http://x:port/"):
        with pytest.raises(UsageError):
            LoadGen(url)
    with pytest.raises(UsageError):
        LoadGen("http://x/", connections=0)
    with pytest.raises(UsageError):
        LoadGen("http://x/", timeout_s=0)


def test_windows_and_marks() -> None:
    load = LoadGen("http://x/")
    load.begin("A->B")
    load.mark("frozen")
    window = load.end("A->B")
    assert window.label == "A->B" and window.start_s <= window.end_s
    with pytest.raises(UsageError, match="no open window"):
        load.end("A->B")
    with load.window("B->A"):
        pass
    load.add_window("later", 1.0, 2.0)
    assert [w.label for w in load._state.windows] == ["A->B", "B->A", "later"]


# ------------------------------------------------------------------ the request loop

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class ScriptedServer:
    """The far ends of socketpairs, served by ``handler``; counts every request it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, host: str, port: int) -> Streams:
        mine, theirs = socket.socketpair()
        self.connections += 1
        reader, writer = await asyncio.open_connection(sock=mine)
        self.tasks.append(asyncio.create_task(self._serve(reader, writer)))
        return await asyncio.open_connection(sock=theirs)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                self.requests += 1
                await self.handler(reader, writer, self.requests)
                if writer.is_closing():
                    return
        finally:
            writer.close()

    async def aclose(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def answer(writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Count: {n}\r\n\r\nok".encode())


@pytest.mark.asyncio
async def test_a_failed_request_is_recorded_and_never_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n in (5, 9):
            writer.close()  # hang up without answering
        else:
            answer(writer, n)

    server = ScriptedServer(handler)
    load = LoadGen("http://svc:8080/", connections=2, connect=server.connect, retry_pause_s=0.0)
    try:
        stopper = asyncio.get_running_loop().call_later(0.3, load.stop)
        run = await load.run()
        stopper.cancel()
    finally:
        await server.aclose()
    s = run.summary()
    assert s.failed == 2
    assert {f.error for f in run.failures()} == {"connection closed before an answer"}
    # every request the server read is one the client recorded, once
    assert s.requests == server.requests
    assert sorted(x.served for x in run.samples if x.ok) == sorted(
        n for n in range(1, server.requests + 1) if n not in (5, 9)
    )
    # two first connections, then one new connection after each failure
    assert server.connections == 2 + 2 and run.reconnects == s.reconnects == 2


@pytest.mark.asyncio
async def test_stopping_lets_the_request_in_flight_finish() -> None:
    stop_now = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 3:
            stop_now.set()
            await asyncio.sleep(0.1)  # answer only after the client was told to stop
        answer(writer, n)

    server = ScriptedServer(handler)
    load = LoadGen("http://svc/", connect=server.connect)
    try:
        task = asyncio.create_task(load.run())
        await stop_now.wait()
        load.stop()
        run = await task
    finally:
        await server.aclose()
    assert [x.served for x in run.samples] == [1, 2, 3]
    assert all(x.ok for x in run.samples)
    assert run.samples[-1].end_s > run.end_s  # it completed after the stop


@pytest.mark.asyncio
async def test_a_silent_server_times_out_as_a_failure() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            answer(writer, n)
        # later requests get no answer at all

    server = ScriptedServer(handler)
    load = LoadGen("http://svc/", connect=server.connect, timeout_s=0.05, retry_pause_s=0.0)
    try:
        run = await load.run(duration_s=0.3)
    finally:
        await server.aclose()
    assert run.samples[0].ok and run.samples[0].served == 1
    assert len(run.samples) >= 2
    assert all(x.error == "timeout" for x in run.samples[1:])
    assert run.summary().requests == server.requests


@pytest.mark.asyncio
async def test_windows_left_open_end_with_the_run() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        answer(writer, n)

    server = ScriptedServer(handler)
    load = LoadGen("http://svc/", connect=server.connect, interval_s=0.01)
    try:
        task = asyncio.create_task(load.run(duration_s=0.2))
        await asyncio.sleep(0.05)
        load.begin("A->B")
        run = await task
    finally:
        await server.aclose()
    assert [w.label for w in run.windows] == ["A->B"]
    assert run.windows[0].end_s == run.end_s
    assert run.as_json()["windows"] == [
        {"label": "A->B", "start_s": round(run.windows[0].start_s, 4), "end_s": round(run.end_s, 4)}
    ]
