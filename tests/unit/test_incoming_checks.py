"""What a destination accepts over the wire: names, paths, and checked file writes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from haul.dest.datatree import check_data_path
from haul.dest.incoming import (
    _write_checked,
    check_id,
    check_image_name,
    check_workload,
)
from haul.errors import ChecksumMismatch, UsageError


@pytest.mark.parametrize("name", ["pages-1.img", "core-42.img", "inventory.img", "stats-dump"])
def test_image_names_accepted(name: str) -> None:
    assert check_image_name(name) == name


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", ".hidden", "x" * 200, "a\nb"])
def test_image_names_refused(name: str) -> None:
    with pytest.raises(UsageError):
        check_image_name(name)


@pytest.mark.parametrize("path", ["state", "a/b/c.txt", "dir.with.dots/x"])
def test_data_paths_accepted(path: str) -> None:
    assert str(check_data_path(path)) == path


@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "", ".", "./a", "a//b", "a/", "a\0b", "a" * 4096]
)
def test_data_paths_refused(path: str) -> None:
    with pytest.raises(UsageError):
        check_data_path(path)


@pytest.mark.parametrize("bad", ["../w", "W", "-x", "a/b", "", "a" * 64])
def test_workload_names_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        check_workload(bad)


def test_ids() -> None:
    assert check_id("m-20261125-ab12") == "m-20261125-ab12"
    with pytest.raises(UsageError):
        check_id("../x")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


@pytest.mark.asyncio
async def test_checked_write_keeps_a_good_file(tmp_path: Path) -> None:
    data = b"abc" * 1000
    n = await _write_checked(
        tmp_path / "f", _chunks(data[:10], data[10:]), hashlib.sha256(data).hexdigest()
    )
    assert n == len(data) and (tmp_path / "f").read_bytes() == data


@pytest.mark.asyncio
async def test_checked_write_removes_a_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatch):
        await _write_checked(tmp_path / "f", _chunks(b"abd"), hashlib.sha256(b"abc").hexdigest())
    assert not (tmp_path / "f").exists()


@pytest.mark.asyncio
async def test_checked_write_never_overwrites_or_follows_links(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    digest = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(UsageError, match="already received"):
        await _write_checked(tmp_path / "link", _chunks(b"x"), digest)
    with pytest.raises(UsageError, match="already received"):
        await _write_checked(tmp_path / "target", _chunks(b"x"), digest)
    assert (tmp_path / "target").read_text() == "keep"
