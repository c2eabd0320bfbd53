"""A tiny HTTP/1.1 service for load-balancer tests: answers every GET with its name.

    python3 lbserver.py NAME ADDRESS PORT

Run inside a lab host's network namespace; keep-alive, one thread per connection.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = b"?"

    def do_GET(self) -> None:
        # One write per answer, as most servers do for small answers: an answer cut in
        # two by the freeze could not be completed by anyone once the source is gone.
        body = self.name + b"\n"
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    name, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    Handler.name = name.encode()
    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
