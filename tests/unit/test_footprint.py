"""What a workload's files weigh, as the source claims them at the pre-flight and the
destination counts them as they arrive: the pre-flight's claim covers the files, so a
workload with more files than memory fits the budget the claim sets there."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from haul.criu.service import Criu
from haul.dest.fakes import StandInCopy
from haul.errors import WorkloadError
from haul.source.criusource import CriuSource
from haul.workload.footprint import ENTRY_BYTES, files_bytes
from haul.workload.proctree import ProcessTree


def test_files_count_their_size_and_other_entries_a_block(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "d" / "e").mkdir(parents=True)
    (root / "a").write_bytes(b"a" * 1000)
    (root / "d" / "e" / "b").write_bytes(b"b" * 5000)
    os.symlink("/etc/passwd", root / "link")  # not followed
    os.mkfifo(root / "d" / "pipe")
    assert files_bytes(root) == 6000 + 4 * ENTRY_BYTES  # d, d/e, link, pipe


def test_no_directory_weighs_nothing(tmp_path: Path) -> None:
    assert files_bytes(tmp_path / "missing") == 0
    (tmp_path / "file").write_text("x")
    assert files_bytes(tmp_path / "file") == 0


@pytest.fixture
def sleeper() -> Iterator[ProcessTree]:
    """A tree in a PID namespace of its own (a stopped ``sleep``, haul/dest/fakes.py)."""
    try:
        copy = StandInCopy()
    except WorkloadError as exc:
        pytest.skip(exc.one_line())
    try:
        yield ProcessTree(copy.pid)
    finally:
        copy.close()


@pytest.mark.asyncio
async def test_the_preflight_claims_the_memory_and_the_files(
    tmp_path: Path, sleeper: ProcessTree
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "big").write_bytes(b"\0" * (3 << 20))
    without = CriuSource(Criu("/bin/true"), sleeper, tmp_path / "out")
    with_files = CriuSource(Criu("/bin/true"), sleeper, tmp_path / "out", data_dir=data)
    memory = await without.check_workload()
    claimed = await with_files.check_workload()
    assert memory > 0
    # the memory may move a little between the two reads; the files are all there
    assert claimed - memory >= (3 << 20) - (1 << 20)
    assert claimed >= (3 << 20)
