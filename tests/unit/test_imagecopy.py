"""Checksummed copying of an images directory, and verifying what landed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from haul.errors import ChecksumMismatch, TransportError
from haul.transport import imagecopy
from haul.transport.imagecopy import FileDigest, copy_images, verify_images

CONTENTS = {
    "core-42.img": b"\x01\x02core" * 100,
    "empty.img": b"",
    "inventory.img": b"inv",
    "pages-1.img": bytes(range(256)) * 40 + b"tail",  # many chunks, last one partial
    "pstree.img": b"\x00" * 1000,  # exactly a whole number of chunks
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks so the files above span several reads, as real images span 1 MiB ones.
    monkeypatch.setattr(imagecopy, "CHUNK", 100)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    for name, data in CONTENTS.items():
        (d / name).write_bytes(data)
    return d


@pytest.fixture
def copied(src: Path, tmp_path: Path) -> tuple[Path, imagecopy.Manifest]:
    dst = tmp_path / "dst"
    manifest, _ = copy_images(src, dst)
    return dst, manifest


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_copy_is_byte_for_byte(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "deep" / "dst"  # parents are created
    copy_images(src, dst)
    assert _files(dst) == CONTENTS


def test_manifest_lists_every_file_with_size_and_sha256(src: Path, tmp_path: Path) -> None:
    manifest, report = copy_images(src, tmp_path / "dst")
    assert manifest.files == tuple(
        FileDigest(name, len(data), hashlib.sha256(data).hexdigest())
        for name, data in sorted(CONTENTS.items())
    )
    total = sum(len(d) for d in CONTENTS.values())
    assert manifest.bytes == total
    assert (report.files, report.bytes) == (len(CONTENTS), total)
    assert report.seconds >= 0


def test_copy_into_an_existing_empty_directory(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    copy_images(src, dst)
    assert _files(dst) == CONTENTS


def test_copy_of_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    manifest, report = copy_images(tmp_path / "src", tmp_path / "dst")
    assert manifest.files == ()
    assert (report.files, report.bytes) == (0, 0)
    verify_images(tmp_path / "dst", manifest)


def test_verify_passes_on_an_untouched_copy(copied: tuple[Path, imagecopy.Manifest]) -> None:
    dst, manifest = copied
    verify_images(dst, manifest)


@pytest.mark.parametrize("offset", [0, 5000, -1])
def test_verify_catches_a_flipped_byte(
    copied: tuple[Path, imagecopy.Manifest], offset: int
) -> None:
    dst, manifest = copied
    path = dst / "pages-1.img"
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="pages-1.img"):
        verify_images(dst, manifest)


def test_verify_catches_a_missing_file(copied: tuple[Path, imagecopy.Manifest]) -> None:
    dst, manifest = copied
    (dst / "empty.img").unlink()
    with pytest.raises(ChecksumMismatch, match=r"missing \['empty.img'\]"):
        verify_images(dst, manifest)


def test_verify_catches_an_extra_file(copied: tuple[Path, imagecopy.Manifest]) -> None:
    dst, manifest = copied
    (dst / "extra.img").write_bytes(b"")
    with pytest.raises(ChecksumMismatch, match=r"unexpected \['extra.img'\]"):
        verify_images(dst, manifest)


def test_verify_catches_a_truncated_file(copied: tuple[Path, imagecopy.Manifest]) -> None:
    dst, manifest = copied
    path = dst / "core-42.img"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ChecksumMismatch, match="core-42.img"):
        verify_images(dst, manifest)


def test_verify_against_another_copy_manifest(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    copy_images(src, dst)
    (src / "inventory.img").write_bytes(b"changed")
    other, _ = copy_images(src, tmp_path / "dst2")
    with pytest.raises(ChecksumMismatch, match="inventory.img"):
        verify_images(dst, other)


def test_copy_refuses_a_symlink_and_copies_nothing(src: Path, tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"outside the images")
    os.symlink(target, src / "aa-link.img")
    dst = tmp_path / "dst"
    with pytest.raises(TransportError, match="aa-link.img"):
        copy_images(src, dst)
    assert list(dst.iterdir()) == []


def test_copy_refuses_a_subdirectory_and_copies_nothing(src: Path, tmp_path: Path) -> None:
    (src / "zz-sub").mkdir()
    dst = tmp_path / "dst"
    with pytest.raises(TransportError, match="zz-sub"):
        copy_images(src, dst)
    assert list(dst.iterdir()) == []


def test_copy_refuses_a_non_empty_destination(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "old.img").write_bytes(b"from before")
    with pytest.raises(TransportError, match="not empty"):
        copy_images(src, dst)
    assert _files(dst) == {"old.img": b"from before"}


def test_copy_of_a_missing_source_is_a_transport_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="cannot list"):
        copy_images(tmp_path / "nothing", tmp_path / "dst")


def test_verify_refuses_a_symlink_in_the_destination(
    copied: tuple[Path, imagecopy.Manifest], tmp_path: Path
) -> None:
    dst, manifest = copied
    (dst / "inventory.img").unlink()
    os.symlink(tmp_path / "src" / "inventory.img", dst / "inventory.img")
    with pytest.raises(TransportError, match="not a regular file"):
        verify_images(dst, manifest)
