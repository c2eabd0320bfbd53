"""A client that keeps sending GET requests and records every one (like ``ab -g``).

    python3 lbclient.py URL OUTFILE [WORKERS]

Each worker holds a keep-alive connection and sends one request after the
other. Every request becomes one JSON line in OUTFILE: worker, start and end
(time.monotonic(), the same clock as the test's), HTTP status or the error,
and the body (the name of the server that answered). SIGTERM stops the
workers after their current request.
"""

import http.client
import json
import signal
import sys
import threading
import time
import urllib.parse
from typing import TextIO

stop = threading.Event()
lock = threading.Lock()


def worker(index: int, url: str, out: TextIO) -> None:
    parts = urllib.parse.urlsplit(url)
    conn = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        start = time.monotonic()
        record = {"w": index, "start": start}
        try:
            conn.request("GET", parts.path or "/")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
            record.update(status=resp.status, body=body)
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            record.update(status=0, error=f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = None
        record["end"] = time.monotonic()
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()
        if record["status"] != 200:
            time.sleep(0.01)


def main() -> int:
    url, path = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with open(path, "a") as out:
        threads = [threading.Thread(target=worker, args=(i, url, out)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # wakes up for SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
