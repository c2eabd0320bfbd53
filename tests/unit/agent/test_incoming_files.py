"""The destination's routes for the workload's files (put data, /entries, /remove):
what they make, and what they refuse: path tricks, links on the way, the wrong kind,
a corrupt file, and any file once the copy is being restored."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from haul.agent.fakes import AUTH, Receiving
from haul.dest.incoming import IncomingState
from haul.transport.fakes import ME, snapshot


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _put(
    r: Receiving, path: str, data: bytes, *, sha: str | None = None, mode: str = "640"
) -> tuple[int, Any]:
    answer = await r.http.put(
        f"/v1/incoming/{r.migration_id}/data",
        params={"path": path},
        data=data,
        headers={**AUTH, "X-Haul-SHA256": sha or _sha(data), "X-Haul-Mode": mode},
    )
    return answer.status, await answer.json()


async def _entries(r: Receiving, *entries: dict[str, Any]) -> tuple[int, Any]:
    answer = await r.http.post(
        f"/v1/incoming/{r.migration_id}/entries", json={"entries": list(entries)}, headers=AUTH
    )
    return answer.status, await answer.json()


async def _remove(r: Receiving, *paths: str) -> tuple[int, Any]:
    answer = await r.http.post(
        f"/v1/incoming/{r.migration_id}/remove", json={"paths": list(paths)}, headers=AUTH
    )
    return answer.status, await answer.json()


def _error(answer: tuple[int, Any]) -> tuple[int, str, str]:
    status, body = answer
    return status, body["error"]["code"], body["error"]["message"]


@pytest.mark.asyncio
async def test_entries_files_and_removals_make_the_tree(incoming: Receiving) -> None:
    r = incoming
    assert await _entries(
        r,
        {"path": "d", "kind": "dir", "mode": 0o700},
        {"path": "d/e", "kind": "dir", "mode": 0o755},
        {"path": "d/l", "kind": "symlink", "mode": 0o777, "target": "/etc/passwd"},
        {"path": "p", "kind": "fifo", "mode": 0o640},
    ) == (200, {"ok": True})
    assert await _put(r, "d/f", b"first") == (200, {"bytes": 5})
    assert await _put(r, "d/f", b"again", mode="600") == (200, {"bytes": 5})  # replaced
    assert await _entries(
        r,
        {"path": "d", "kind": "dir", "mode": 0o750},  # there: its mode set
        {"path": "d/f", "kind": "file", "mode": 0o604},
        {"path": "d/l", "kind": "symlink", "mode": 0o777, "target": "/etc/passwd"},  # again
    ) == (200, {"ok": True})
    assert snapshot(r.data) == {
        "d": ("dir", 0o750, None, *ME),
        "d/e": ("dir", 0o755, None, *ME),
        "d/f": ("file", 0o604, b"again", *ME),
        "d/l": ("symlink", 0, "/etc/passwd", *ME),
        "p": ("fifo", 0o640, None, *ME),
    }
    assert await _remove(r, "d/e", "d/l", "d/gone", "p") == (200, {"removed": 3})
    assert sorted(snapshot(r.data)) == ["d", "d/f"]
    assert _error(await _remove(r, "d")) == (
        400,
        "usage",
        "cannot remove 'd': the directory is not empty here",
    )


@pytest.mark.asyncio
async def test_a_corrupt_file_never_replaces_the_good_one(incoming: Receiving) -> None:
    r = incoming
    await _put(r, "f", b"good")
    status, code, message = _error(await _put(r, "f", b"evil", sha=_sha(b"else")))
    assert (status, code) == (502, "checksum") and "SHA-256 mismatch" in message
    assert (r.data / "f").read_bytes() == b"good"
    assert os.listdir(r.data) == ["f"]  # no half-written part left


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "", ".", "./f", "a//b", "a\0b", "x" * 4096]
)
async def test_path_tricks_are_refused_everywhere(incoming: Receiving, path: str) -> None:
    r = incoming
    answers = [
        await _put(r, path, b"x"),
        await _entries(r, {"path": path, "kind": "dir", "mode": 0o755}),
        await _remove(r, path),
    ]
    for answer in answers:
        status, code, message = _error(answer)
        assert status == 400 and code in ("usage", "invalid_body"), message
    assert os.listdir(r.data) == []


@pytest.mark.asyncio
async def test_nothing_goes_through_a_link(incoming: Receiving, tmp_path: Path) -> None:
    r = incoming
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    await _entries(r, {"path": "l", "kind": "symlink", "mode": 0o777, "target": str(outside)})
    refused = [
        await _put(r, "l/keep", b"evil"),
        await _put(r, "l/new", b"evil"),
        await _entries(r, {"path": "l/d", "kind": "dir", "mode": 0o755}),
        await _entries(r, {"path": "l/keep", "kind": "file", "mode": 0o777}),
        await _remove(r, "l/keep"),
    ]
    for answer in refused:
        status, code, message = _error(answer)
        assert (status, code) == (400, "usage") and "l is a link or not a directory" in message
    # the link itself: never written through, nor its mode set through it
    assert _error(await _put(r, "l", b"evil"))[2] == (
        "cannot write file 'l': something else is there"
    )
    assert _error(await _entries(r, {"path": "l", "kind": "dir", "mode": 0o700}))[2] == (
        "cannot make dir 'l': a symlink is there"
    )
    assert _error(
        await _entries(r, {"path": "l", "kind": "symlink", "mode": 0o777, "target": "/"})
    )[2] == ("a different symlink 'l' is there")
    assert await _remove(r, "l") == (200, {"removed": 1})  # the link goes, not its target
    assert os.listdir(outside) == ["keep"] and (outside / "keep").read_text() == "keep"
    assert stat.S_IMODE(outside.stat().st_mode) != 0o777


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"path": "x", "kind": "device", "mode": 0o755}, "kind: Input should be"),
        ({"path": "x", "kind": "dir", "mode": 0o755, "uid": 1}, "uid and gid come together"),
        ({"path": "x", "kind": "dir", "mode": 0o755, "uid": 1, "gid": -1}, "greater than"),
        ({"path": "x", "kind": "dir", "mode": 0o755, "opaque": "yes"}, "opaque: String should"),
        ({"path": "x", "kind": "fifo", "mode": 0o755, "opaque": "y"}, "only a directory is"),
        ({"path": "x", "kind": "symlink", "mode": 0o777}, "a target comes with a symlink"),
        ({"path": "x", "kind": "dir", "mode": 0o755, "target": "y"}, "a target comes with"),
        ({"path": "x", "kind": "dir", "mode": 0o10000}, "mode: Input should be less"),
        ({"path": "x", "kind": "file", "mode": 0o644}, "files are sent, not made"),
        ({"path": "f", "kind": "dir", "mode": 0o755}, "cannot make dir 'f': a file is there"),
        ({"path": "f/x", "kind": "dir", "mode": 0o755}, "f is a link or not a directory"),
        ({"path": "no/x", "kind": "fifo", "mode": 0o644}, "no is not there (directories first)"),
    ],
)
async def test_entries_that_cannot_be_made_are_refused(
    incoming: Receiving, entry: dict[str, Any], says: str
) -> None:
    await _put(incoming, "f", b"file")
    status, _, message = _error(await _entries(incoming, entry))
    assert status == 400 and says in message
    assert os.listdir(incoming.data) == ["f"]


@pytest.mark.asyncio
@pytest.mark.parametrize("state", [IncomingState.RESTORING, IncomingState.RESTORED])
async def test_no_file_is_taken_once_the_copy_is_restored(
    incoming: Receiving, state: IncomingState
) -> None:
    r = incoming
    r.ctx.migrations().incoming.get(r.migration_id).state = state
    image = await r.http.put(
        f"/v1/incoming/{r.migration_id}/images/core-1.img",
        data=b"x",
        headers={**AUTH, "X-Haul-SHA256": _sha(b"x")},
    )
    answers = [
        (image.status, await image.json()),
        await _put(r, "f", b"x"),
        await _entries(r, {"path": "d", "kind": "dir", "mode": 0o755}),
        await _remove(r, "f"),
    ]
    for answer in answers:
        assert _error(answer) == (
            409,
            "wrong_state",
            f"incoming migration m1 is {state.value}: it takes no more files",
        )
    assert os.listdir(r.data) == [] and os.listdir(r.images) == []


@pytest.mark.asyncio
async def test_a_file_still_arriving_when_the_restore_begins_never_takes_its_place(
    incoming: Receiving,
) -> None:
    r = incoming
    item = r.ctx.migrations().incoming.get(r.migration_id)
    data = b"x" * (3 << 20)

    async def body() -> AsyncIterator[bytes]:
        yield data[: 1 << 20]
        await asyncio.sleep(0.05)
        item.state = IncomingState.RESTORING  # the source's restore came meanwhile
        yield data[1 << 20 :]

    answer = await r.http.put(
        f"/v1/incoming/{r.migration_id}/data",
        params={"path": "late"},
        data=body(),
        headers={**AUTH, "X-Haul-SHA256": _sha(data)},
    )
    assert _error((answer.status, await answer.json()))[:2] == (409, "wrong_state")
    assert os.listdir(r.data) == []


@pytest.mark.asyncio
async def test_sockets_files_owners_and_set_id_bits_are_made_as_sent(incoming: Receiving) -> None:
    """What CRIU needs: a reopened file's whole mode (set-id bits too), and a socket's
    path free for the socket it binds there (a socket's file, which it replaces)."""
    if os.geteuid() != 0:
        pytest.skip("giving files away needs root")
    r = incoming
    assert await _entries(
        r,
        {"path": "d", "kind": "dir", "mode": 0o2775, "uid": 1000, "gid": 1001},
        {"path": "d/s", "kind": "socket", "mode": 0o751, "uid": 1002, "gid": 1002},
        {"path": "d/l", "kind": "symlink", "mode": 0o777, "target": "s", "uid": 7, "gid": 8},
        {"path": "p", "kind": "fifo", "mode": 0o1640, "uid": 1000, "gid": 1000},
        {"path": "etc", "kind": "dir", "mode": 0o755, "opaque": "y"},
        {"path": "etc/gone", "kind": "whiteout", "mode": 0},
    ) == (200, {"ok": True})
    answer = await r.http.put(
        f"/v1/incoming/{r.migration_id}/data",
        params={"path": "d/suid"},
        data=b"x",
        headers={**AUTH, "X-Haul-SHA256": _sha(b"x"), "X-Haul-Mode": "4755", "X-Haul-Owner": "5:6"},
    )
    assert answer.status == 200
    # a new owner and mode for what is there (the link: its owner only)
    assert await _entries(
        r,
        {"path": "d/s", "kind": "socket", "mode": 0o700, "uid": 9, "gid": 9},
        {"path": "d/l", "kind": "symlink", "mode": 0o777, "target": "s", "uid": 3, "gid": 4},
        {"path": "d", "kind": "dir", "mode": 0o2775, "uid": 1000, "gid": 1001, "opaque": "y"},
        {"path": "etc", "kind": "dir", "mode": 0o755},  # no longer opaque
    ) == (200, {"ok": True})
    assert snapshot(r.data) == {
        "d": ("dir", 0o2775, "y", 1000, 1001),
        "etc": ("dir", 0o755, None, 0, 0),
        "etc/gone": ("whiteout", 0, None, 0, 0),
        "d/l": ("symlink", 0, "s", 3, 4),
        "d/s": ("socket", 0o700, None, 9, 9),
        "d/suid": ("file", 0o4755, b"x", 5, 6),
        "p": ("fifo", 0o1640, None, 1000, 1000),
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("owner", ["5", "5:x", "-1:0", "1:99999999999", "1:2:3", "0x1:2"])
async def test_a_bad_owner_is_400_and_nothing_is_written(incoming: Receiving, owner: str) -> None:
    r = incoming
    answer = await r.http.put(
        f"/v1/incoming/{r.migration_id}/data",
        params={"path": "f"},
        data=b"x",
        headers={**AUTH, "X-Haul-SHA256": _sha(b"x"), "X-Haul-Owner": owner},
    )
    assert _error((answer.status, await answer.json())) == (
        400,
        "bad_owner",
        "X-Haul-Owner must be UID:GID, two numbers",
    )
    assert os.listdir(r.data) == []


def _received(text: str) -> dict[str, float]:
    prefix = 'haul_agent_received_bytes_total{what="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


@pytest.mark.asyncio
async def test_the_bytes_received_are_counted_by_what_they_are(incoming: Receiving) -> None:
    """haul_agent_received_bytes counts what was taken: the files, the images; a
    corrupt one is not counted."""
    r = incoming
    metrics = await r.http.get("/metrics", headers=AUTH)
    assert _received(await metrics.text()) == {"image": 0.0, "data": 0.0, "blob": 0.0}
    assert await _put(r, "a", b"12345") == (200, {"bytes": 5})
    assert (await _put(r, "b", b"xyz", sha=_sha(b"other")))[0] != 200
    image = await r.http.put(
        f"/v1/incoming/{r.migration_id}/images/core-1.img",
        data=b"1234567",
        headers={**AUTH, "X-Haul-SHA256": _sha(b"1234567")},
    )
    assert image.status == 200, await image.text()
    metrics = await r.http.get("/metrics", headers=AUTH)
    assert _received(await metrics.text()) == {"image": 7.0, "data": 5.0, "blob": 0.0}
