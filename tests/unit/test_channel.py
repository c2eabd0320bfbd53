"""SeqPacketChannel over a real AF_UNIX SOCK_SEQPACKET socketpair."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from haul.criu.channel import ChannelClosed, SeqPacketChannel

BIG = 4 << 20


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    peer.settimeout(5)
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.mark.asyncio
async def test_each_recv_returns_exactly_one_packet(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    chan = SeqPacketChannel(ours)
    sent = [b"a", b"bb" * 1000, b"\x00" * 7, b"last"]
    for data in sent:
        peer.send(data)
    got = [await chan.recv() for _ in sent]
    assert [p.data for p in got] == sent
    assert all(p.fds == () for p in got)


@pytest.mark.asyncio
async def test_recv_waits_for_a_packet_that_comes_later(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    chan = SeqPacketChannel(ours)
    task = asyncio.create_task(chan.recv())
    await asyncio.sleep(0.01)
    assert not task.done()
    peer.send(b"late")
    packet = await asyncio.wait_for(task, 5)
    assert packet.data == b"late"


@pytest.mark.asyncio
async def test_send_writes_one_packet_per_call(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    chan = SeqPacketChannel(ours)
    await chan.send(b"first")
    await chan.send(b"second, longer")
    assert peer.recv(1024) == b"first"
    assert peer.recv(1024) == b"second, longer"


@pytest.mark.asyncio
async def test_a_4_mib_packet_arrives_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    # A SEQPACKET send is atomic and must fit the sender's buffer.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BIG + 4096)
    if peer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < BIG + 4096:
        pytest.skip("net.core.wmem_max is too small to send a 4 MiB packet here")
    chan = SeqPacketChannel(ours)
    data = bytes(range(256)) * (BIG // 256)
    peer.sendall(data)
    packet = await chan.recv()
    assert len(packet.data) == BIG
    assert packet.data == data
    # nothing of it is left over for the next recv
    peer.send(b"next")
    assert (await chan.recv()).data == b"next"


@pytest.mark.asyncio
async def test_an_attached_fd_arrives_usable(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    chan = SeqPacketChannel(ours)
    r, w = os.pipe()
    try:
        socket.send_fds(peer, [b"with an fd"], [w])
        os.close(w)
        w = -1
        packet = await chan.recv()
        assert packet.data == b"with an fd"
        assert len(packet.fds) == 1
        os.write(packet.fds[0], b"through the passed fd")
        packet.close_fds()
        # every write end is closed now, so the read sees the data and then EOF
        assert os.read(r, 100) == b"through the passed fd"
        assert os.read(r, 100) == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.mark.asyncio
async def test_too_many_fds_close_the_channel_without_leaking(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    chan = SeqPacketChannel(ours)
    pipes = [os.pipe() for _ in range(3)]
    try:
        socket.send_fds(peer, [b"three fds"], [w for _, w in pipes])
        before = _open_fds()
        with pytest.raises(ChannelClosed):
            await chan.recv(max_fds=2)
        assert _open_fds() == before
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


@pytest.mark.asyncio
async def test_peer_close_is_channel_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    chan = SeqPacketChannel(ours)
    peer.send(b"before close")
    peer.close()
    assert (await chan.recv()).data == b"before close"
    with pytest.raises(ChannelClosed):
        await chan.recv()


@pytest.mark.asyncio
async def test_peer_close_wakes_a_waiting_recv(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    chan = SeqPacketChannel(ours)
    task = asyncio.create_task(chan.recv())
    await asyncio.sleep(0.01)
    peer.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(task, 5)


def test_stream_socket_is_refused() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(ValueError, match="SOCK_SEQPACKET"):
            SeqPacketChannel(a)
    finally:
        a.close()
        b.close()
