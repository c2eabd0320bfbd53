"""Copying a CRIU images directory to another directory, with checksums.

The sender hashes every file as it reads it (SHA-256) into a manifest; the
receiving side verifies what landed against the manifest before anything is
restored from it. Only regular files directly in the directory are copied;
links, devices and sub-directories are refused, so an images directory can
never smuggle a path outside the destination.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from haul.errors import ChecksumMismatch, TransportError

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileDigest:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[FileDigest, ...]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, slots=True)
class CopyReport:
    files: int
    bytes: int
    seconds: float


def _entries(src: Path) -> list[os.DirEntry[str]]:
    try:
        entries = sorted(os.scandir(src), key=lambda e: e.name)
    except OSError as exc:
        raise TransportError(f"cannot list images in {src}: {exc.strerror}") from exc
    for e in entries:
        mode = e.stat(follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise TransportError(f"{src / e.name} is not a regular file; refusing to copy it")
    return entries


def copy_images(src: Path, dst: Path) -> tuple[Manifest, CopyReport]:
    """Copy every file of ``src`` into ``dst`` (created, must be empty or absent)."""
    started = time.monotonic()
    dst.mkdir(parents=True, exist_ok=True)
    if any(dst.iterdir()):
        raise TransportError(f"destination images directory {dst} is not empty")
    digests: list[FileDigest] = []
    for entry in _entries(src):
        h = hashlib.sha256()
        size = 0
        target = dst / entry.name
        try:
            with open(entry.path, "rb") as fin, open(target, "xb") as fout:
                while chunk := fin.read(CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise TransportError(
                f"copying {entry.name} to {dst} failed: {exc.strerror or exc}"
            ) from exc
        digests.append(FileDigest(entry.name, size, h.hexdigest()))
    manifest = Manifest(tuple(digests))
    return manifest, CopyReport(len(digests), manifest.bytes, time.monotonic() - started)


def verify_images(dst: Path, manifest: Manifest) -> None:
    """Raise ChecksumMismatch unless ``dst`` holds exactly the manifest's files and bytes."""
    present = {e.name for e in _entries(dst)}
    expected = {f.name for f in manifest.files}
    if present != expected:
        extra = sorted(present - expected)
        missing = sorted(expected - present)
        raise ChecksumMismatch(
            f"images in {dst} differ from what was sent: missing {missing}, unexpected {extra}"
        )
    for f in manifest.files:
        h = hashlib.sha256()
        with open(dst / f.name, "rb") as fin:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
        if h.hexdigest() != f.sha256:
            raise ChecksumMismatch(f"image {dst / f.name} does not match its checksum")
