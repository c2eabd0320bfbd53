"""sd_notify against a datagram socket."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.agent.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_ready_is_sent_to_notify_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "OTHER": "x"}
    notifier = Notifier.from_environ(env)
    assert env == {"OTHER": "x"}, "children must not inherit NOTIFY_SOCKET"
    assert notifier.ready("listening on http://127.0.0.1:1")
    lines = sock.recv(4096).decode().split("\n")
    assert lines == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=listening on http://127.0.0.1:1"]
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_an_abstract_notify_socket() -> None:
    name = "haul-test-" + secrets.token_hex(4)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).ready()
        assert sock.recv(4096).startswith(b"READY=1\n")


def test_without_notify_socket_nothing_happens(tmp_path: Path) -> None:
    assert not Notifier.from_environ({}).ready()
    assert not Notifier(str(tmp_path / "nobody-listens")).ready()
    assert not Notifier("vsock:2:1234").ready()
