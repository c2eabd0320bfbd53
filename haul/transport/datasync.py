"""Moving a workload's data directory (its files on the host) to another host.

Regular files are copied with a SHA-256 each and verified where they land;
directories and symbolic links are recreated as they are (a link's target is
not followed); FIFOs are recreated empty. Unix sockets are skipped: CRIU binds
a restored socket to its path again. Anything else (devices) is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

from haul.errors import ChecksumMismatch, TransportError
from haul.transport.imagecopy import CopyReport, FileDigest, copy_file, sha256_of


def sync_tree(src: Path, dst: Path) -> CopyReport:
    """Copy the tree ``src`` to ``dst`` (which must not exist) and verify every file."""
    started = time.monotonic()
    if dst.exists() or dst.is_symlink():
        raise TransportError(f"data directory {dst} already exists on the destination")
    if not src.is_dir():
        raise TransportError(f"data directory {src} does not exist on the source")
    digests: list[tuple[Path, FileDigest]] = []
    dst.mkdir(parents=True)
    shutil.copymode(src, dst)
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for name in sorted(dirs) + sorted(files):
            s, d = Path(root) / name, dst / rel / name
            mode = os.lstat(s).st_mode
            shown = str(rel / name)
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISDIR(mode):
                d.mkdir()
                shutil.copymode(s, d)
            elif stat.S_ISREG(mode):
                digests.append((d, copy_file(s, d, shown)))
            elif stat.S_ISFIFO(mode):
                os.mkfifo(d, stat.S_IMODE(mode))
            elif stat.S_ISSOCK(mode):
                continue
            else:
                raise TransportError(f"{s} is a device or unknown file; refusing to copy it")
        dirs[:] = [n for n in dirs if not (Path(root) / n).is_symlink()]
    for path, digest in digests:
        if sha256_of(path) != digest.sha256:
            raise ChecksumMismatch(f"data file {path} does not match its checksum")
    total = sum(d.size for _, d in digests)
    return CopyReport(len(digests), total, time.monotonic() - started)
