"""Reading CRIU's pagemap images: which pages a post-copy destination will still fetch."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from haul.criu.pagemap import (
    IMG_COMMON_MAGIC,
    PAGEMAP_MAGIC,
    PE_LAZY,
    PE_PARENT,
    PE_PRESENT,
    entries,
    lazy_bytes,
)
from haul.criu.proto import pagemap_pb2
from haul.engine.figures import PAGE_SIZE
from haul.errors import CriuError


def image(path: Path, runs: list[tuple[int, int]], *, compat: bool = False) -> Path:
    """A pagemap image with one entry per (page count, flags)."""
    records = [pagemap_pb2.pagemap_head(pages_id=2).SerializeToString()]
    for i, (pages, flags) in enumerate(runs):
        entry = pagemap_pb2.pagemap_entry(
            vaddr=0x400000 + i * 0x100000, flags=flags, compat_nr_pages=pages if compat else 0
        )
        if not compat:
            entry.nr_pages = pages
        records.append(entry.SerializeToString())
    body = b"".join(struct.pack("<I", len(r)) + r for r in records)
    path.write_bytes(struct.pack("<II", IMG_COMMON_MAGIC, PAGEMAP_MAGIC) + body)
    return path


def test_only_pages_left_for_the_lazy_daemon_count(tmp_path: Path) -> None:
    image(
        tmp_path / "pagemap-1.img",
        [(10, PE_LAZY), (3, PE_PRESENT), (4, PE_LAZY | PE_PRESENT), (7, PE_PARENT)],
    )
    image(tmp_path / "pagemap-2.img", [(5, PE_LAZY)], compat=True)  # an older CRIU's count
    assert lazy_bytes(tmp_path) == (10 + 5) * PAGE_SIZE
    assert [e.flags for e in entries(tmp_path / "pagemap-1.img")] == [2, 4, 6, 1]


def test_no_pagemap_no_lazy_pages(tmp_path: Path) -> None:
    assert lazy_bytes(tmp_path) == 0


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\x00" * 8, "is not a CRIU pagemap image"),
        (struct.pack("<III", IMG_COMMON_MAGIC, PAGEMAP_MAGIC, 50) + b"\x08\x02", "is truncated"),
        (
            struct.pack("<III", IMG_COMMON_MAGIC, PAGEMAP_MAGIC, 2)
            + b"\x08\x02"
            + struct.pack("<I", 3)
            + b"\xff\xff\xff",
            "malformed pagemap record",
        ),
    ],
)
def test_a_damaged_image_is_one_clear_error(tmp_path: Path, raw: bytes, says: str) -> None:
    (tmp_path / "pagemap-1.img").write_bytes(raw)
    with pytest.raises(CriuError) as raised:
        lazy_bytes(tmp_path)
    assert says in str(raised.value)
