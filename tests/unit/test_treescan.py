"""Scanning a workload's files into a manifest, and reading one without following links."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from haul.errors import TransportError
from haul.transport.fakes import DirNode, FifoNode, FileNode, LinkNode, WhiteoutNode, build
from haul.transport.treescan import Kind, open_inside, scan


def test_a_scan_sees_every_kind_with_what_tells_a_change(tmp_path: Path) -> None:
    build(
        tmp_path,
        {
            "d": DirNode({"f": FileNode(b"abc", 0o640), "e": DirNode(mode=0o750)}),
            "l": LinkNode("../outside"),
            "p": FifoNode(0o600),
        },
    )
    found = scan(tmp_path)
    assert list(found) == ["d", "d/e", "d/f", "l", "p"]
    f = found["d/f"]
    st = os.lstat(tmp_path / "d" / "f")
    assert (f.kind, f.mode, f.size) == (Kind.FILE, 0o640, 3)
    assert (f.mtime_ns, f.ctime_ns, f.inode) == (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    assert (found["d/e"].kind, found["d/e"].mode) == (Kind.DIR, 0o750)
    assert (found["l"].kind, found["l"].target) == (Kind.SYMLINK, "../outside")
    assert (found["p"].kind, found["p"].mode) == (Kind.FIFO, 0o600)


def test_a_link_to_a_directory_is_an_entry_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("no")
    root = tmp_path / "root"
    root.mkdir()
    (root / "in").symlink_to(outside)
    assert list(scan(root)) == ["in"]


def test_a_socket_s_file_is_an_entry_with_its_mode_and_owner(tmp_path: Path) -> None:
    """CRIU binds a restored socket to its path again and gives the file the mode and
    owner it dumped; a socket's file that no socket of the workload holds stays as it is
    (haul/transport/treescan.py)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        os.chmod(tmp_path / "sock", 0o751)
        (tmp_path / "f").write_text("x")
        found = scan(tmp_path)
    assert list(found) == ["f", "sock"]
    sock = found["sock"]
    assert (sock.kind, sock.mode, sock.uid, sock.gid) == (
        Kind.SOCKET,
        0o751,
        os.geteuid(),
        os.getegid(),
    )


def test_owners_and_set_id_bits_are_seen(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving files away needs root")
    build(
        tmp_path,
        {
            "f": FileNode(b"x", 0o4755, owner=(1000, 1001)),
            "d": DirNode(mode=0o2775, owner=(0, 1002)),
            "l": LinkNode("f", owner=(1003, 1003)),
        },
    )
    found = scan(tmp_path)
    assert (found["f"].mode, found["f"].uid, found["f"].gid) == (0o4755, 1000, 1001)
    assert (found["d"].mode, found["d"].uid, found["d"].gid) == (0o2775, 0, 1002)
    assert (found["l"].uid, found["l"].gid) == (1003, 1003)


def test_an_overlay_s_whiteouts_and_opaque_directories_are_entries(tmp_path: Path) -> None:
    """What a container removed from its image, in its writable layer."""
    if os.geteuid() != 0:
        pytest.skip("whiteouts and trusted attributes need root")
    build(
        tmp_path,
        {
            "gone": WhiteoutNode(),
            "etc": DirNode({"only": FileNode(b"x")}, opaque="y"),
            "d": DirNode(),
        },
    )
    found = scan(tmp_path)
    assert list(found) == ["d", "etc", "etc/only", "gone"]
    assert (found["gone"].kind, found["gone"].mode) == (Kind.WHITEOUT, 0)
    assert (found["etc"].kind, found["etc"].opaque) == (Kind.DIR, "y")
    assert found["d"].opaque is None


def test_a_device_is_refused_in_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    (tmp_path / "d").mkdir()
    os.mknod(tmp_path / "d" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    with pytest.raises(TransportError) as caught:
        scan(tmp_path)
    assert caught.value.one_line() == (
        f"{tmp_path / 'd' / 'null'} is a device or special file; a workload's files cannot carry it"
    )


def test_no_data_directory_is_no_files(tmp_path: Path) -> None:
    assert scan(tmp_path / "absent") == {}


def test_open_inside_reads_a_file_and_nothing_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("secret")
    root = tmp_path / "root"
    root.mkdir()
    build(root, {"d": DirNode({"f": FileNode(b"mine")}), "p": FifoNode(), "l": LinkNode("d/f")})
    (root / "via").symlink_to(outside)
    fd = open_inside(root, "d/f")
    assert fd is not None
    with os.fdopen(fd, "rb") as f:
        assert f.read() == b"mine"
    assert open_inside(root, "via/f") is None  # a parent that is a link
    assert open_inside(root, "l") is None  # the file itself is a link
    assert open_inside(root, "p") is None  # a FIFO is not read (nor blocks)
    assert open_inside(root, "d/gone") is None
    assert open_inside(root, "d/f/x") is None
