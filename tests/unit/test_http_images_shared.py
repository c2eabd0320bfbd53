"""What HttpTransport sends of CRIU's images: all, all but the pages (a process tree's
--shared-dir), or none (a container's --shared-dir: runc restores from that directory)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from haul.transport.http import HttpTransport
from haul.transport.treeplan import Node


class Recorded:
    """Uploads that only note the images they were given."""

    def __init__(self) -> None:
        self.images: list[str] = []

    async def put_image(self, migration_id: str, name: str, path: Path, sha256: str) -> None:
        self.images.append(name)

    async def put_data(
        self, migration_id: str, rel: str, source: Path | BinaryIO, sha256: str, mode: int
    ) -> None:
        raise AssertionError("no files here")

    async def make_entries(self, migration_id: str, nodes: Sequence[Node]) -> None:
        raise AssertionError("no files here")

    async def remove_entries(self, migration_id: str, paths: Sequence[str]) -> int:
        raise AssertionError("no files here")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("how", "sent"),
    [
        ({}, ["core-1.img", "inventory.img", "pages-1.img"]),
        ({"skip_pages": True}, ["core-1.img", "inventory.img"]),
        ({"images_shared": True}, []),
    ],
)
async def test_the_images_sent(tmp_path: Path, how: dict[str, bool], sent: list[str]) -> None:
    for name, size in (("core-1.img", 40), ("inventory.img", 8), ("pages-1.img", 4096)):
        (tmp_path / name).write_bytes(b"x" * size)
    uploads = Recorded()
    figures = await HttpTransport(uploads, "m1", tmp_path, **how).transfer_images()
    assert uploads.images == sent
    assert figures.files == len(sent)
    assert figures.bytes_sent == sum((tmp_path / name).stat().st_size for name in sent)
