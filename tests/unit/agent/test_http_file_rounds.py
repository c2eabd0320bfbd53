"""The workload's files in rounds through HttpTransport, the agents' client and a real
destination agent app: a full pass and a delta while the workload "runs", then the
frozen delta; the destination's tree equals the source's, and each round sent only
what changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haul.agent.client import AgentAccess
from haul.agent.fakes import TOKEN, Receiving
from haul.errors import PeerChecksumMismatch
from haul.transport.fakes import (
    ME,
    DirNode,
    FifoNode,
    FileNode,
    LinkNode,
    MeddlingUploads,
    SocketNode,
    Tree,
    build,
    morph,
    snapshot,
)
from haul.transport.http import HttpTransport, IncomingUploads

FIRST: Tree = {
    "keep": DirNode({"a.txt": FileNode(b"a" * 100), "b.bin": FileNode(bytes(range(256)) * 40)}),
    "mod.txt": FileNode(b"1234", 0o600),
    "gone.txt": FileNode(b"bye"),
    "becomes-file": DirNode({"x": FileNode(b"x")}),
    "sub": DirNode({"deep": DirNode({"f": FileNode(b"deep")})}, 0o755),
}
#: another owner, when this test may give files away (as root)
OTHER = (1000, 1001) if os.geteuid() == 0 else ME
#: before round 2: new, modified at the same size in the same mtime tick, deleted,
#: dir -> file, a symbolic link, a FIFO, an empty directory, a socket's file, a
#: set-uid file of another owner
SECOND: Tree = {
    **FIRST,
    "new.txt": FileNode(b"new!"),
    "mod.txt": FileNode(b"abcd", 0o600),
    "becomes-file": FileNode(b"now a file"),
    "link": LinkNode("keep/a.txt"),
    "pipe": FifoNode(0o640),
    "empty": DirNode(mode=0o700),
    "sock": SocketNode(0o755),
    "suid": FileNode(b"s", 0o4755, OTHER),
}
SECOND = {k: v for k, v in SECOND.items() if k != "gone.txt"}
#: before the frozen round: one file grows, one comes, one goes, a link points
#: elsewhere, a directory's mode changes, the FIFO goes, the empty directory changes
#: owner, the socket's file its mode
THIRD: Tree = {
    **{k: v for k, v in SECOND.items() if k not in ("new.txt", "pipe")},
    "sub": DirNode({"deep": DirNode({"f": FileNode(b"deeper")})}, 0o750),
    "late.txt": FileNode(b"late"),
    "link": LinkNode("mod.txt"),
    "empty": DirNode(mode=0o700, owner=OTHER),
    "sock": SocketNode(0o700),
}


def _transport(r: Receiving, uploads: IncomingUploads, tmp_path: Path) -> HttpTransport:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / "core-1.img").write_bytes(b"core" * 10)
    (images / "pages-1.img").write_bytes(b"p" * 4096)
    transport = HttpTransport(uploads, r.migration_id, images, source_data=tmp_path / "src")
    assert transport.files is not None
    # every file here is fresh: a real tree's are older than the racy window (its own
    # test in tests/unit/test_file_rounds.py)
    transport.files.racy_window_ns = 0
    return transport


@pytest.mark.asyncio
async def test_three_rounds_leave_the_same_tree_and_the_last_sends_only_changes(
    incoming: Receiving, tmp_path: Path
) -> None:
    r = incoming
    src = tmp_path / "src"
    src.mkdir()
    build(src, FIRST)
    async with AgentAccess.of_peer(r.url, token=TOKEN).client("destination host2") as agent:
        transport = _transport(r, agent.incoming, tmp_path)
        full = await transport.sync_files(1)
        assert (full.round, full.files, full.removed) == (1, 6, 0)
        assert full.bytes_sent == 100 + 10240 + 4 + 3 + 1 + 4
        assert snapshot(r.data) == snapshot(src)

        morph(src, FIRST, SECOND, same_tick=True)
        delta = await transport.sync_files(2)
        assert (delta.files, delta.bytes_sent) == (4, 4 + 4 + 10 + 1)  # new, mod, ..., suid
        assert delta.removed == 3  # gone.txt, becomes-file/x, becomes-file
        assert snapshot(r.data) == snapshot(src)

        morph(src, SECOND, THIRD, same_tick=True)
        frozen = await transport.transfer_images()
    last = transport.files.history[-1] if transport.files else None
    assert last is not None and (last.round, last.files, last.bytes_sent) == (3, 2, 6 + 4)
    assert last.removed == 3  # new.txt, pipe, link (its target changed)
    assert (frozen.files, frozen.bytes_sent) == (2 + 2, 40 + 4096 + 6 + 4)
    assert snapshot(r.data) == snapshot(src)
    assert snapshot(r.data)["sub"] == ("dir", 0o750, None, *ME)
    assert snapshot(r.data)["suid"] == ("file", 0o4755, b"s", *OTHER)
    assert snapshot(r.data)["sock"] == ("socket", 0o700, None, *ME)
    assert snapshot(r.data)["empty"] == ("dir", 0o700, None, *OTHER)
    assert sorted(p.name for p in r.images.iterdir()) == ["core-1.img", "pages-1.img"]


@pytest.mark.asyncio
async def test_a_file_changed_while_it_is_sent_goes_again_next_round(
    incoming: Receiving, tmp_path: Path
) -> None:
    r = incoming
    src = tmp_path / "src"
    src.mkdir()
    build(src, {"busy": FileNode(b"v1" * 1000), "calm": FileNode(b"calm")})

    def write(rel: str) -> None:
        if rel == "busy":
            (src / "busy").write_bytes(b"v2" * 1000)  # after its hashing, before its sending

    async with AgentAccess.of_peer(r.url, token=TOKEN).client("destination host2") as agent:
        uploads = MeddlingUploads(agent.incoming, write)
        transport = _transport(r, uploads, tmp_path)
        first = await transport.sync_files(1)
        assert (first.files, first.bytes_sent) == (1, 4)  # busy did not take
        assert sorted(p.name for p in r.data.iterdir()) == ["calm"]
        second = await transport.sync_files(2)
        assert (second.files, second.bytes_sent) == (1, 2000)
    assert snapshot(r.data) == snapshot(src)
    assert (r.data / "busy").read_bytes() == b"v2" * 1000


@pytest.mark.asyncio
async def test_in_the_frozen_round_a_file_that_changes_fails_the_transfer(
    incoming: Receiving, tmp_path: Path
) -> None:
    r = incoming
    src = tmp_path / "src"
    src.mkdir()
    build(src, {"busy": FileNode(b"v1")})

    def write(rel: str) -> None:
        (src / rel).write_bytes(b"v2")

    async with AgentAccess.of_peer(r.url, token=TOKEN).client("destination host2") as agent:
        transport = _transport(r, MeddlingUploads(agent.incoming, write), tmp_path)
        with pytest.raises(PeerChecksumMismatch, match="'busy' arrived corrupt"):
            await transport.transfer_images()
    assert list(r.data.iterdir()) == []
