"""A sample web service with state to lose: a request counter and a block of memory.

    python3 -S -E web.py --outfile PATH [--port 8080] [--bind ADDR] [--mem-mib N] [--seed S]

It fills N MiB with pseudo-random bytes derived from the seed (MiB number i is
``random.Random("haul-web:<seed>:<i>").randbytes(1 MiB)``), then serves
HTTP/1.1 with keep-alive on ADDR:PORT (all IPv4 addresses by default; port 0
picks a free one), single-threaded on poll(2):

- ``GET /`` counts the request and answers ``count <n> mem_mib <N> seed <S>``
  with the count also in an ``X-Count`` header. Nothing in the answer depends on
  the host it runs on, so answers before and after a move compare.
- ``GET /check`` regenerates the memory from the seed, compares it block by
  block, and answers ``PASS count <n>`` (200) or ``FAIL <what> count <n>``
  (500). It does not count itself, and it blocks the service for as long as
  the comparison takes (0.15 s per 100 MiB on an idle core here, 0.6 s on a busy one).
- ``GET /health`` answers ``ok`` and counts nothing: for load balancers' checks.

Once listening it writes ``ready port <P> mem_mib <N> seed <S>`` to PATH; on
SIGTERM (or SIGINT) it stops serving, checks its memory the same way and
writes its verdict there, ``PASS <n>`` or ``FAIL <reason> count <n>``, then
exits (status 0 on PASS). Files are written whole and renamed into place, so a
reader never sees half a line. A restored copy that lost or corrupted its
memory cannot write PASS, and one that restarted from zero shows a count that
does not continue the one its clients saw.

It imports only the standard library and holds nothing CRIU cannot dump and
restore: sockets, one pipe (the signal wakeup), no epoll, no threads.
"""

import os
import random
import selectors
import signal
import socket
import sys

MIB = 1 << 20
MAX_HEAD = 64 << 10  # bytes of request line and headers before we refuse
RECV_SIZE = 64 << 10

_stop = False


def _on_signal(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def block(seed: str, index: int) -> bytes:
    """The content of MiB number ``index`` for ``seed``."""
    return random.Random(f"haul-web:{seed}:{index}").randbytes(MIB)


def fill(memory: bytearray, seed: str) -> None:
    for i in range(len(memory) // MIB):
        memory[i * MIB : (i + 1) * MIB] = block(seed, i)


def first_bad_mib(memory: bytearray, seed: str) -> int:
    """The first MiB that differs from what the seed gives, or -1 when all agree."""
    view = memoryview(memory)
    try:
        for i in range(len(memory) // MIB):
            if view[i * MIB : (i + 1) * MIB] != block(seed, i):
                return i
        return -1
    finally:
        view.release()


def write_file(path: str, line: str) -> None:
    """Replace PATH's content with one line, atomically (write aside, then rename)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


class Service:
    def __init__(self, memory: bytearray, mem_mib: int, seed: str) -> None:
        self.memory = memory
        self.mem_mib = mem_mib
        self.seed = seed
        self.count = 0

    def verdict(self) -> tuple[bool, str]:
        bad = first_bad_mib(self.memory, self.seed)
        if bad < 0:
            return True, f"PASS count {self.count}"
        return False, f"FAIL memory differs from the seed's at MiB {bad} count {self.count}"

    def answer(self, method: str, target: str) -> tuple[int, str, list[tuple[str, str]]]:
        """Status, body and extra headers for one request."""
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "only GET\n", [("Allow", "GET, HEAD")]
        if path == "/":
            self.count += 1
            body = f"count {self.count} mem_mib {self.mem_mib} seed {self.seed}\n"
            return 200, body, [("X-Count", str(self.count))]
        if path == "/check":
            ok, text = self.verdict()
            return (200 if ok else 500), text + "\n", [("X-Count", str(self.count))]
        if path == "/health":
            return 200, "ok\n", []
        return 404, f"no {path} here: try /, /check or /health\n", []


REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


def response(
    status: int, body: str, extra: list[tuple[str, str]], close: bool, head_only: bool = False
) -> bytes:
    data = body.encode()
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        "Server: haul-sample-web",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(data)}",
    ]
    lines += [f"{k}: {v}" for k, v in extra]
    lines.append("Connection: close" if close else "Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + data


class Conn:
    """One client connection: bytes in, whole requests parsed, answers queued."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # close once outbuf is sent
        self.events = selectors.EVENT_READ  # what the selector waits for on it

    def requests(self, service: Service) -> None:
        """Answer every whole request in inbuf (pipelined ones in order)."""
        while not self.closing:
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.inbuf) > MAX_HEAD:
                    self.fail(431, "request head too large\n")
                return
            head = bytes(self.inbuf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self.fail(400, "bad request line\n")
                return
            method, target, version = parts
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    self.fail(400, "bad header line\n")
                    return
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:
                self.fail(501, "request bodies in chunks are not supported\n")
                return
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self.fail(400, "bad Content-Length\n")
                return
            if length < 0 or length > MAX_HEAD:
                self.fail(413, "request body too large\n")
                return
            if len(self.inbuf) < end + 4 + length:
                return  # the body is still coming
            del self.inbuf[: end + 4 + length]
            connection = headers.get("connection", "").lower()
            close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
            status, body, extra = service.answer(method, target)
            self.outbuf += response(status, body, extra, close, head_only=method == "HEAD")
            if close:
                self.closing = True

    def fail(self, status: int, body: str) -> None:
        self.outbuf += response(status, body, [], close=True)
        self.closing = True


class Server:
    def __init__(self, service: Service, listener: socket.socket, wakeup: int) -> None:
        self.service = service
        self.listener = listener
        self.wakeup = wakeup
        self.selector = selectors.PollSelector()
        self.selector.register(listener, selectors.EVENT_READ, None)
        self.selector.register(wakeup, selectors.EVENT_READ, None)
        self.conns: dict[int, Conn] = {}

    def run(self) -> None:
        while not _stop:
            for key, mask in self.selector.select():
                if key.fileobj is self.listener:
                    self.accept()
                elif key.fileobj == self.wakeup:
                    self.drain_wakeup()
                else:
                    conn = key.data
                    if mask & selectors.EVENT_READ:
                        self.readable(conn)
                    if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                        self.flush(conn)

    def drain_wakeup(self) -> None:
        try:
            while os.read(self.wakeup, 512):
                pass
        except BlockingIOError:
            pass

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ECONNABORTED, EMFILE: the next poll tries again
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.conns[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        if not data:
            # The peer is done sending. Answer what it sent before (it counted), then close.
            conn.requests(self.service)
            conn.closing = True
            self.flush(conn)
            return
        conn.inbuf += data
        conn.requests(self.service)
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        """Send what is queued; then wait for what the connection needs next."""
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(conn)
                return
            del conn.outbuf[:sent]
        if conn.closing and not conn.outbuf:
            self.close(conn)
            return
        want = 0 if conn.closing else selectors.EVENT_READ
        if conn.outbuf:
            want |= selectors.EVENT_WRITE
        if want != conn.events:
            self.selector.modify(conn.sock, want, conn)
            conn.events = want

    def close(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self.selector.unregister(conn.sock)
            self.conns.pop(fd, None)
        conn.sock.close()

    def shutdown(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)
        self.selector.unregister(self.listener)
        self.listener.close()
        self.selector.close()


USAGE = "usage: web.py --outfile PATH [--port 8080] [--bind ADDR] [--mem-mib N] [--seed S]\n"


def parse(args: list[str]) -> dict[str, str]:
    options = {
        "--outfile": "",
        "--port": "8080",
        "--bind": "0.0.0.0",
        "--mem-mib": "0",
        "--seed": "1",
    }
    i = 0
    while i < len(args):
        if args[i] not in options or i + 1 >= len(args):
            raise SystemExit(f"web.py: unknown or incomplete option {args[i]}\n{USAGE}")
        options[args[i]] = args[i + 1]
        i += 2
    if not options["--outfile"]:
        raise SystemExit(f"web.py: --outfile is required\n{USAGE}")
    return options


def main() -> int:
    options = parse(sys.argv[1:])
    outfile, seed = options["--outfile"], options["--seed"]
    mem_mib = int(options["--mem-mib"])
    memory = bytearray(mem_mib * MIB)
    fill(memory, seed)
    service = Service(memory, mem_mib, seed)

    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((options["--bind"], int(options["--port"])))
    listener.listen(128)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    server = Server(service, listener, rfd)
    write_file(outfile, f"ready port {port} mem_mib {mem_mib} seed {seed}")
    print(f"web: listening on {options['--bind']}:{port}, {mem_mib} MiB, seed {seed}", flush=True)

    server.run()

    server.shutdown()
    ok, text = service.verdict()
    verdict = f"PASS {service.count}" if ok else text
    write_file(outfile, verdict)
    print(f"web: {verdict}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
