"""A workload's files as a manifest: every entry under a root, by relative path.

What the rounds (haul/transport/rounds.py) compare from one scan to the next. The
tree is read one directory at a time through file descriptors opened with
O_NOFOLLOW, so a workload that swaps a directory for a link while it is scanned
or read cannot make haul read outside its tree: a symbolic link is an entry with
its target, never followed. Every entry carries its permission bits (set-id and
sticky bits too: CRIU checks the whole mode of a file it opens again at restore)
and its owner. A unix socket's file is an entry as well: the destination makes a
socket file there (no socket listens on it), which is what CRIU needs of a bound
socket's path: its restore removes a socket's file at that path, binds the
restored socket there and gives it the mode and owner it dumped (a path held by
anything but a socket's file would make that bind fail), while a socket's file no
socket of the workload is bound to stays as the source had it. A container's
writable layer (an overlay's upper directory) also holds what the container removed
from its image: a whiteout (a character device 0:0) where a file was, and a
directory made again where one was removed is opaque (its ``trusted.overlay.opaque``
attribute): both are entries, or the image's files would come back on the
destination. Other devices are refused. The workload runs while it is scanned: what
vanishes meanwhile is simply not in the manifest.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from haul.errors import TransportError

#: a directory opened to be read, never through a link
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: errors that mean "not there, or no longer what the scan saw" while the workload runs
GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO})
#: the extended attribute that makes an overlay's upper directory opaque ("y")
OPAQUE = "trusted.overlay.opaque"
#: what the value of OPAQUE may be (an opaque directory; one that holds xattr whiteouts)
OPAQUE_VALUES = ("y", "x")


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    FIFO = "fifo"
    #: a unix socket's file
    SOCKET = "socket"
    #: an overlay whiteout: a character device 0:0, where a container removed a file
    WHITEOUT = "whiteout"


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry as the scan saw it (size and times matter for regular files only)."""

    kind: Kind
    #: permission bits with set-id and sticky bits (stat.S_IMODE)
    mode: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    #: a symbolic link's target, as it is written
    target: str | None = None
    #: the owner, by number (the destination's numbers are the same users)
    uid: int = 0
    gid: int = 0
    #: a directory's OPAQUE attribute (an overlay's upper directory), or None
    opaque: str | None = None


#: relative path ("a/b") -> entry; the root itself is not in it
Manifest = Mapping[str, Entry]


def entry_of(st: os.stat_result, target: str | None = None) -> Entry:
    """The entry for an lstat result. Raises for a device."""
    mode = st.st_mode
    kinds = (
        (stat.S_ISDIR, Kind.DIR),
        (stat.S_ISREG, Kind.FILE),
        (stat.S_ISLNK, Kind.SYMLINK),
        (stat.S_ISFIFO, Kind.FIFO),
        (stat.S_ISSOCK, Kind.SOCKET),
        (lambda m: stat.S_ISCHR(m) and st.st_rdev == 0, Kind.WHITEOUT),
    )
    for test, kind in kinds:
        if test(mode):
            return Entry(
                kind,
                stat.S_IMODE(mode),
                st.st_size if kind is Kind.FILE else 0,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_ino,
                target,
                st.st_uid,
                st.st_gid,
            )
    raise TransportError("is a device or special file; a workload's files cannot carry it")


def scan(root: Path) -> dict[str, Entry]:
    """Every entry under the directory ``root``, sorted by path (none when there is no
    ``root``: a workload without a data directory has no files)."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TransportError(f"cannot read the data directory {root}: {exc.strerror}") from exc
    found: dict[str, Entry] = {}
    try:
        _scan_dir(root, fd, PurePosixPath(), found)
    finally:
        os.close(fd)
    return found


def _scan_dir(root: Path, fd: int, rel: PurePosixPath, found: dict[str, Entry]) -> None:
    for name, st in _listing(root, fd, rel):
        path = rel / name
        target = None
        if stat.S_ISLNK(st.st_mode):
            target = _readlink(name, fd)
            if target is None:
                continue
        try:
            entry = entry_of(st, target)
        except TransportError as exc:
            raise TransportError(f"{root / path} {exc.message}") from None
        found[path.as_posix()] = entry
        if entry.kind is Kind.DIR:
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in GONE:
                    continue  # replaced since it was listed: the next round sees what it is
                raise TransportError(f"cannot read {root / path}: {exc.strerror}") from exc
            try:
                opaque = _opaque(sub)
                if opaque is not None:
                    found[path.as_posix()] = replace(entry, opaque=opaque)
                _scan_dir(root, sub, path, found)
            finally:
                os.close(sub)


def _listing(root: Path, fd: int, rel: PurePosixPath) -> Iterator[tuple[str, os.stat_result]]:
    try:
        with os.scandir(fd) as it:
            names = sorted(e.name for e in it)
    except OSError as exc:
        raise TransportError(f"cannot list {root / rel}: {exc.strerror}") from exc
    for name in names:
        try:
            yield name, os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since it was listed


def _opaque(fd: int) -> str | None:
    """The OPAQUE attribute of the directory open at ``fd`` (None: none, or no xattrs)."""
    try:
        value = os.getxattr(fd, OPAQUE).decode(errors="replace")
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return None
        raise TransportError(f"cannot read {OPAQUE}: {exc.strerror}") from exc
    return value if value in OPAQUE_VALUES else None


def _readlink(name: str, fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=fd)
    except OSError as exc:
        if exc.errno in GONE or exc.errno == errno.EINVAL:  # gone, or no longer a link
            return None
        raise TransportError(f"cannot read the link {name}: {exc.strerror}") from exc


def open_inside(root: Path, rel: str) -> int | None:
    """A descriptor to read the regular file ``rel`` under ``root``, reached without
    following any link; None when it is gone or no longer a regular file there."""
    parts = PurePosixPath(rel).parts
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise TransportError(f"cannot read the data directory {root}: {exc.strerror}") from exc
    try:
        for part in parts[:-1]:
            sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        found = os.open(parts[-1], flags, dir_fd=fd)
    except OSError as exc:
        if exc.errno in GONE:
            return None
        raise TransportError(f"cannot read {root / rel}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        return None
    return found
