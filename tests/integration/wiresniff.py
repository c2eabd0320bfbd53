"""What crosses one network interface, per TCP connection: run by tests as root inside
a lab namespace, to see whether page traffic is encrypted.

    python wiresniff.py IFACE MARKER_HEX OUT_JSON READY_FILE

It captures every frame on IFACE (an AF_PACKET socket, both directions), and for
each TCP direction (``src:port>dst:port``) counts the payload bytes, keeps the
first bytes of the first payload (a TLS connection starts with a handshake
record, 0x16 0x03) and looks for MARKER in the byte stream (across segment
boundaries). It creates READY_FILE once it captures; on SIGTERM it writes
``{"flows": {...}, "drops": N}`` to OUT_JSON (drops: frames the kernel could
not queue for it) and exits.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
HEAD_BYTES = 8


@dataclass
class Flow:
    bytes: int = 0
    head: str = ""
    marker: bool = False
    tail: bytes = field(default=b"", repr=False)


def _stats(sock: socket.socket) -> tuple[int, int]:
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return packets, drops


def main() -> int:
    iface, marker_hex, out, ready = sys.argv[1:5]
    marker = bytes.fromhex(marker_hex)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
    sock.bind((iface, ETH_P_ALL))
    sock.settimeout(0.1)
    _stats(sock)  # reading the statistics resets them
    open(ready, "w").close()
    flows: dict[str, Flow] = {}
    drops = 0
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    while not stop:
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            continue
        if n < 34 or struct.unpack_from("!H", buf, 12)[0] != ETH_P_IP:
            continue
        ihl = (buf[14] & 0x0F) * 4
        if buf[23] != socket.IPPROTO_TCP:
            continue
        total = struct.unpack_from("!H", buf, 16)[0]
        end = 14 + total if total else n  # 0: a segment bigger than 64 KiB (GSO)
        tcp = 14 + ihl
        sport, dport = struct.unpack_from("!HH", buf, tcp)
        start = tcp + (buf[tcp + 12] >> 4) * 4
        if start >= end:
            continue
        key = (
            f"{socket.inet_ntoa(bytes(buf[26:30]))}:{sport}>"
            f"{socket.inet_ntoa(bytes(buf[30:34]))}:{dport}"
        )
        flow = flows.setdefault(key, Flow())
        payload = bytes(view[start:end])
        if not flow.head:
            flow.head = payload[:HEAD_BYTES].hex()
        flow.bytes += len(payload)
        if not flow.marker:
            window = flow.tail + payload
            flow.marker = marker in window
            flow.tail = window[-(len(marker) - 1) :] if len(marker) > 1 else b""
    drops += _stats(sock)[1]
    with open(out, "w") as f:
        json.dump(
            {
                "flows": {
                    k: {"bytes": v.bytes, "head": v.head, "marker": v.marker}
                    for k, v in flows.items()
                },
                "drops": drops,
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
