"""A SOCK_SEQPACKET socket as an asyncio message channel.

CRIU's RPC frames messages by the packet boundary of a SOCK_SEQPACKET socket:
one protobuf message per packet, of any size. A receiver must learn the size
first (MSG_PEEK | MSG_TRUNC) and then read exactly one packet. CRIU may attach
a file descriptor to a packet (SCM_RIGHTS); the channel hands those over too.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass, field

_INT_SIZE = array.array("i").itemsize


@dataclass(frozen=True, slots=True)
class Packet:
    data: bytes
    fds: tuple[int, ...] = field(default=())

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class ChannelClosed(ConnectionError):
    """The peer closed its end (an empty packet, or ECONNRESET)."""


class SeqPacketChannel:
    """Async send/recv of whole packets on a non-blocking SOCK_SEQPACKET socket."""

    def __init__(self, sock: socket.socket) -> None:
        if sock.type != socket.SOCK_SEQPACKET:
            raise ValueError("SeqPacketChannel needs a SOCK_SEQPACKET socket")
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._probe = bytearray(1)

    async def send(self, data: bytes) -> None:
        try:
            await self._loop.sock_sendall(self._sock, data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed("peer closed the connection") from exc

    async def recv(self, max_fds: int = 4) -> Packet:
        while True:
            try:
                return self._recv_now(max_fds)
            except BlockingIOError:
                await self._readable()

    def _recv_now(self, max_fds: int) -> Packet:
        try:
            # recv_into returns the syscall's count: with MSG_TRUNC, the packet's full size.
            size = self._sock.recv_into(self._probe, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
        except ConnectionResetError as exc:
            raise ChannelClosed("peer reset the connection") from exc
        if size == 0:
            # A zero-length packet is indistinguishable from EOF; CRIU never sends one.
            raise ChannelClosed("peer closed the connection")
        data, ancdata, flags, _ = self._sock.recvmsg(size, socket.CMSG_SPACE(max_fds * _INT_SIZE))
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _INT_SIZE
                fds.extend(array.array("i", payload[:usable]))
        packet = Packet(data, tuple(fds))
        if flags & socket.MSG_CTRUNC:
            packet.close_fds()
            raise ChannelClosed("peer sent more file descriptors than expected")
        return packet

    async def _readable(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = self._sock.fileno()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            self._loop.remove_reader(fd)

    def close(self) -> None:
        self._sock.close()
