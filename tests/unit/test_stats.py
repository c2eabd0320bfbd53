"""Decoding CRIU's stats-dump / stats-restore images."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from haul.criu import stats
from haul.criu.proto import stats_pb2
from haul.engine.figures import PAGE_SIZE
from haul.errors import CriuError

# The framing CRIU writes (criu/include/magic.h, images/stats.proto), spelled out
# here rather than taken from haul so that a wrong constant in haul shows.
SERVICE_MAGIC = 0x55105940
STATS_MAGIC = 0x57093306


def _image(
    entry: stats_pb2.stats_entry, *, service: int = SERVICE_MAGIC, magic: int = STATS_MAGIC
) -> bytes:
    body = entry.SerializeToString()
    return struct.pack("<III", service, magic, len(body)) + body


def _dump_entry() -> stats_pb2.stats_entry:
    return stats_pb2.stats_entry(
        dump=stats_pb2.dump_stats_entry(
            freezing_time=1_001,
            frozen_time=2_002,
            memdump_time=3_003,
            memwrite_time=4_004,
            pages_scanned=5_000_000_005,
            pages_skipped_parent=6_006,
            pages_written=7_007,
            pages_lazy=8_008,
            irmap_resolve=9,
            page_pipes=10,
        )
    )


def _restore_entry() -> stats_pb2.stats_entry:
    return stats_pb2.stats_entry(
        restore=stats_pb2.restore_stats_entry(
            pages_compared=11,
            pages_skipped_cow=22,
            forking_time=33,
            restore_time=44,
            pages_restored=55,
        )
    )


def test_dump_stats_are_decoded(tmp_path: Path) -> None:
    (tmp_path / "stats-dump").write_bytes(_image(_dump_entry()))
    s = stats.read_dump_stats(tmp_path)
    assert s == stats.DumpStats(
        freezing_time_us=1_001,
        frozen_time_us=2_002,
        memdump_time_us=3_003,
        memwrite_time_us=4_004,
        pages_scanned=5_000_000_005,
        pages_skipped_parent=6_006,
        pages_written=7_007,
        pages_lazy=8_008,
    )
    assert s.bytes_written == 7_007 * PAGE_SIZE


def test_restore_stats_are_decoded(tmp_path: Path) -> None:
    (tmp_path / "stats-restore").write_bytes(_image(_restore_entry()))
    assert stats.read_restore_stats(tmp_path) == stats.RestoreStats(
        forking_time_us=33,
        restore_time_us=44,
        pages_compared=11,
        pages_skipped_cow=22,
        pages_restored=55,
    )


def test_dump_and_restore_stats_are_separate_files(tmp_path: Path) -> None:
    (tmp_path / "stats-dump").write_bytes(_image(_dump_entry()))
    assert stats.read_restore_stats(tmp_path) is None
    assert stats.read_dump_stats(tmp_path) is not None


def test_bytes_after_the_entry_are_ignored(tmp_path: Path) -> None:
    # The length prefix, not the end of the file, bounds the entry.
    (tmp_path / "stats-dump").write_bytes(_image(_dump_entry()) + b"\xff\xff\xff")
    s = stats.read_dump_stats(tmp_path)
    assert s is not None and s.pages_written == 7_007


def test_missing_files_mean_no_stats(tmp_path: Path) -> None:
    assert stats.read_dump_stats(tmp_path) is None
    assert stats.read_restore_stats(tmp_path) is None


@pytest.mark.parametrize(
    ("service", "magic"),
    [
        (SERVICE_MAGIC, STATS_MAGIC + 1),
        (SERVICE_MAGIC + 1, STATS_MAGIC),
        (STATS_MAGIC, SERVICE_MAGIC),
    ],
)
def test_wrong_magic_is_refused(tmp_path: Path, service: int, magic: int) -> None:
    (tmp_path / "stats-dump").write_bytes(_image(_dump_entry(), service=service, magic=magic))
    with pytest.raises(CriuError, match="not a CRIU stats image") as info:
        stats.read_dump_stats(tmp_path)
    assert info.value.request == "stats"


def test_big_endian_header_is_refused(tmp_path: Path) -> None:
    body = _dump_entry().SerializeToString()
    raw = struct.pack(">III", SERVICE_MAGIC, STATS_MAGIC, len(body)) + body
    (tmp_path / "stats-dump").write_bytes(raw)
    with pytest.raises(CriuError):
        stats.read_dump_stats(tmp_path)


def test_truncated_body_is_refused(tmp_path: Path) -> None:
    raw = _image(_restore_entry())
    (tmp_path / "stats-restore").write_bytes(raw[:-1])
    with pytest.raises(CriuError, match="truncated"):
        stats.read_restore_stats(tmp_path)


@pytest.mark.parametrize("length", [0, 4, 11])
def test_file_shorter_than_the_header_is_refused(tmp_path: Path, length: int) -> None:
    raw = struct.pack("<III", SERVICE_MAGIC, STATS_MAGIC, 0)[:length]
    (tmp_path / "stats-dump").write_bytes(raw)
    with pytest.raises(CriuError, match="too short"):
        stats.read_dump_stats(tmp_path)


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x05abc",  # field 1 claims 5 bytes, 3 follow
        b"\xff\xff\xff\xff",  # an unterminated varint tag
        b"\x08",  # a varint field with no value
    ],
)
def test_garbage_body_is_refused(tmp_path: Path, body: bytes) -> None:
    raw = struct.pack("<III", SERVICE_MAGIC, STATS_MAGIC, len(body)) + body
    (tmp_path / "stats-dump").write_bytes(raw)
    with pytest.raises(CriuError, match="malformed"):
        stats.read_dump_stats(tmp_path)


def test_unreadable_stats_path_is_a_criu_error(tmp_path: Path) -> None:
    (tmp_path / "stats-dump").mkdir()
    with pytest.raises(CriuError, match="cannot read"):
        stats.read_dump_stats(tmp_path)
