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
import shutil
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


def copy_file(src: Path, dst: Path, name: str) -> FileDigest:
    """Copy one file to a new path ``dst``, hashing it on the way; name it ``name``."""
    h = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
        shutil.copymode(src, dst)
    except OSError as exc:
        raise TransportError(
            f"copying {name} to {dst.parent} failed: {exc.strerror or exc}"
        ) from exc
    return FileDigest(name, size, h.hexdigest())


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fin:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_images(src: Path, dst: Path, *, merge: bool = False) -> tuple[Manifest, CopyReport]:
    """Copy every file of ``src`` into ``dst``.

    ``dst`` must be empty or absent, unless ``merge``: then it may already hold
    other files (the pages a CRIU page server wrote there), but none of the
    same name.
    """
    started = time.monotonic()
    dst.mkdir(parents=True, exist_ok=True)
    if not merge and any(dst.iterdir()):
        raise TransportError(f"destination images directory {dst} is not empty")
    digests = [copy_file(Path(e.path), dst / e.name, e.name) for e in _entries(src)]
    manifest = Manifest(tuple(digests))
    return manifest, CopyReport(len(digests), manifest.bytes, time.monotonic() - started)


def verify_images(dst: Path, manifest: Manifest, *, merge: bool = False) -> None:
    """Raise ChecksumMismatch unless ``dst`` holds exactly the manifest's files and bytes
    (with ``merge``: at least them; other files are someone else's)."""
    present = {e.name for e in _entries(dst)}
    expected = {f.name for f in manifest.files}
    if present != expected and not (merge and expected <= present):
        extra = sorted(present - expected)
        missing = sorted(expected - present)
        raise ChecksumMismatch(
            f"images in {dst} differ from what was sent: missing {missing}, unexpected {extra}"
        )
    for f in manifest.files:
        if sha256_of(dst / f.name) != f.sha256:
            raise ChecksumMismatch(f"image {dst / f.name} does not match its checksum")
