"""A TCP stream to keep across a migration: a checking echo server and its client.

    python3 -S -E stream.py serve OUTFILE [--port P]
    python3 -S -E stream.py send HOST [--port P] [--duration S] [--interval-ms MS]

The stream is the decimal numbers 0, 1, 2, ... each as a fixed 12-byte record.
``serve`` accepts connections one at a time, checks that what arrives is that
stream without a gap or a repeat, and echoes every byte back. On SIGTERM it
writes ``PASS <records>`` or ``FAIL <reason>`` to OUTFILE and exits.
``send`` holds one connection for the whole run, sends a record every
interval, reads the echo and checks it is the record it sent; it never
reconnects. At the end it prints one JSON line: records sent and echoed, the
largest gap between two echoes (ms), and ``error`` (a reset, an EOF, a
mismatch or a timeout), empty when the stream stayed intact.
"""

import json
import signal
import socket
import sys
import time

RECORD = 12
_stop = False


def _on_term(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def record(n: int) -> bytes:
    return f"{n:011d}\n".encode()


def _opts(args: list[str], defaults: dict[str, str]) -> dict[str, str]:
    opts = dict(defaults)
    for i in range(0, len(args), 2):
        if args[i] not in opts or i + 1 >= len(args):
            raise SystemExit(f"stream.py: bad option {args[i]}")
        opts[args[i]] = args[i + 1]
    return opts


def serve(outfile: str, port: int) -> int:
    signal.signal(signal.SIGTERM, _on_term)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4)
    listener.settimeout(0.2)
    expected, pending, verdict = 0, b"", ""
    conn = None
    while not _stop and not verdict:
        try:
            if conn is None:
                conn, _ = listener.accept()
                conn.settimeout(0.2)
                expected, pending = 0, b""  # every connection starts its stream at 0
                continue
            data = conn.recv(65536)
        except (TimeoutError, InterruptedError):
            continue
        if not data:
            conn.close()
            conn = None
            continue
        pending += data
        while len(pending) >= RECORD:
            if pending[:RECORD] != record(expected):
                verdict = f"FAIL expected record {expected}, got {pending[:RECORD]!r}"
                break
            pending = pending[RECORD:]
            expected += 1
        conn.sendall(data)
    with open(outfile, "w") as f:
        f.write((verdict or f"PASS {expected}") + "\n")
    return 1 if verdict else 0


def send(host: str, port: int, duration_s: float, interval_s: float) -> int:
    counts = {"sent": 0, "echoed": 0}
    largest_gap_s = 0.0
    error = ""
    conn = socket.create_connection((host, port), timeout=5)
    conn.settimeout(30)
    started = last = time.monotonic()
    n = 0
    try:
        while time.monotonic() - started < duration_s:
            out = record(n)
            conn.sendall(out)
            counts["sent"] = n + 1
            got = b""
            while len(got) < RECORD:
                chunk = conn.recv(RECORD - len(got))
                if not chunk:
                    raise ConnectionError("the server closed the connection (EOF)")
                got += chunk
            if got != out:
                raise ValueError(f"echo of record {n} was {got!r}")
            now = time.monotonic()
            largest_gap_s = max(largest_gap_s, now - last)
            last = now
            n += 1
            counts["echoed"] = n
            time.sleep(interval_s)
    except (OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    print(
        json.dumps({**counts, "largest_gap_ms": round(largest_gap_s * 1000, 1), "error": error}),
        flush=True,
    )
    return 1 if error else 0


def main() -> int:
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "serve":
        o = _opts(args[2:], {"--port": "9000"})
        return serve(args[1], int(o["--port"]))
    if len(args) >= 2 and args[0] == "send":
        o = _opts(args[2:], {"--port": "9000", "--duration": "10", "--interval-ms": "10"})
        return send(
            args[1], int(o["--port"]), float(o["--duration"]), int(o["--interval-ms"]) / 1000
        )
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main())
