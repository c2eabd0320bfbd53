"""The workload's data directory on the destination, as the source's rounds change it.

Every path comes over the wire: it is checked to be relative and to stay inside
(:func:`check_data_path`), and reached from the workload's directory one component
at a time with O_NOFOLLOW, so no link (one the source sent earlier, say) leads a
write outside. A file is written to a temporary name next to its place, checked
against its SHA-256, and only then renamed into place: a half-written or corrupt
file never replaces a good one. Nothing runs in this directory until the copy is
restored, so what is checked here stays true.

Entries keep the owner the source says (by number) and their whole mode, set-id and
sticky bits too: CRIU refuses to restore a process whose open file's mode differs from
the one it dumped. The source can restore any process as root here anyway, so a
set-id file it sends grants it nothing it did not have. A unix socket's file is made
as one (no socket listens on it): CRIU's restore replaces it with the socket it binds
there (haul/transport/treescan.py). In a container's writable layer, a whiteout (a
character device 0:0: no device at all) is made where the container removed a file of
its image, and a directory is marked opaque (``trusted.overlay.opaque``) as on the source.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from haul.dest.intake import write_chunks
from haul.errors import ChecksumMismatch, HaulError, TransportError, UsageError

#: a directory on the way, opened without following a link
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: the longest path and link target taken (Linux's PATH_MAX less the NUL)
PATH_MAX = 4095
#: the mode bits an entry keeps: all of them (see the module's docstring)
MODE_BITS = 0o7777
#: the kinds of entry the source makes here (files are sent; "file" sets a file's mode)
KINDS = ("dir", "symlink", "fifo", "socket", "whiteout", "file")
#: the attribute that marks an overlay's upper directory opaque, and its values (as
#: haul/transport/treescan.py reads them on the source)
OPAQUE = "trusted.overlay.opaque"
OPAQUE_VALUES = ("y", "x")
#: (uid, gid) an entry is given, or None: the agent's own
Owner = tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class DataEntry:
    """An entry the source makes here, or sets the mode and owner of
    (see :meth:`DataTree.make`)."""

    path: str
    kind: str
    mode: int
    target: str | None = None
    owner: Owner = None
    #: a directory's opaque mark (OPAQUE_VALUES), or None
    opaque: str | None = None


def check_data_path(value: str) -> PurePosixPath:
    p = PurePosixPath(value)
    if (
        p.is_absolute()
        or not p.parts
        or len(value) > PATH_MAX
        or "\0" in value
        or any(part in ("..", ".", "") for part in p.parts)
        or p.as_posix() != value
    ):
        raise UsageError(
            f"bad data path {value!r}: must be relative, written plainly, and stay inside"
        )
    return p


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "whiteout"  # a device other than 0:0 is checked where it matters
    return "file" if stat.S_ISREG(mode) else "other"


class DataTree:
    """One workload's data directory here: ``base``, which this agent made."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        """The directory that holds ``path`` (a descriptor) and the last name of it."""
        rel = check_data_path(path)
        try:
            fd = os.open(self.base, DIR_FLAGS)
        except OSError as exc:
            raise TransportError(f"cannot open {self.base}: {exc.strerror}") from exc
        try:
            for depth, part in enumerate(rel.parts[:-1], 1):
                try:
                    sub = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    way = "/".join(rel.parts[:depth])
                    raise self._bad_way(path, way, exc) from None
                os.close(fd)
                fd = sub
            yield fd, rel.parts[-1]
        finally:
            os.close(fd)

    @staticmethod
    def _bad_way(path: str, way: str, exc: OSError) -> HaulError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return UsageError(f"bad data path {path!r}: {way} is a link or not a directory")
        if exc.errno == errno.ENOENT:
            return UsageError(f"bad data path {path!r}: {way} is not there (directories first)")
        return TransportError(f"cannot open {way} for {path!r}: {exc.strerror}")

    @staticmethod
    def _found(fd: int, name: str) -> str | None:
        try:
            return _kind_of(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return None

    def make(
        self,
        path: str,
        kind: str,
        mode: int,
        target: str | None = None,
        owner: Owner = None,
        opaque: str | None = None,
    ) -> None:
        """A directory (made, or its mode set; marked ``opaque`` or not), a symbolic
        link, a FIFO, a socket's file or a whiteout (made), or an existing file's mode
        set; each with ``owner`` (the owner first, then the mode; a link has no mode).
        What is there already must be of that kind."""
        if kind not in KINDS:
            raise UsageError(f"bad entry kind {kind!r} for {path!r}")
        if opaque is not None and (kind != "dir" or opaque not in OPAQUE_VALUES):
            raise UsageError(f"bad entry {path!r}: only a directory is opaque (y or x)")
        if (kind == "symlink") != (target is not None):
            raise UsageError(f"bad entry {path!r}: a target comes with a symlink, and only then")
        if target is not None and (not target or len(target) > PATH_MAX or "\0" in target):
            raise UsageError(f"bad symlink target for {path!r}")
        with self._parent(path) as (fd, name):
            found = DataTree._found(fd, name)
            if found is not None and found != kind:
                raise UsageError(f"cannot make {kind} {path!r}: a {found} is there")
            try:
                self._make(fd, name, kind, target, exists=found is not None)
                if owner is not None:
                    os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                if kind != "symlink":
                    # not a link (checked above), so this changes the entry itself
                    os.chmod(name, mode & MODE_BITS, dir_fd=fd)
                if kind == "dir":
                    _mark_opaque(fd, name, opaque)
            except OSError as exc:
                raise TransportError(f"cannot make {kind} {path!r}: {exc.strerror}") from exc

    @staticmethod
    def _make(fd: int, name: str, kind: str, target: str | None, exists: bool) -> None:
        if kind == "symlink" and target is not None:
            if exists and os.readlink(name, dir_fd=fd) != target:
                raise UsageError(f"a different symlink {name!r} is there")
            if not exists:
                os.symlink(target, name, dir_fd=fd)
            return
        if exists:
            return
        if kind == "dir":
            os.mkdir(name, 0o700, dir_fd=fd)
        elif kind == "fifo":
            os.mkfifo(name, 0o600, dir_fd=fd)
        elif kind == "socket":
            os.mknod(name, stat.S_IFSOCK | 0o600, dir_fd=fd)
        elif kind == "whiteout":
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=fd)
        else:
            raise UsageError(f"file {name!r} is not there; files are sent, not made")

    def remove(self, path: str) -> bool:
        """Remove one entry (a directory must be empty); False when it was not there."""
        with self._parent(path) as (fd, name):
            found = DataTree._found(fd, name)
            if found is None:
                return False
            try:
                if found == "dir":
                    os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise UsageError(
                        f"cannot remove {path!r}: the directory is not empty here"
                    ) from None
                raise TransportError(f"cannot remove {path!r}: {exc.strerror}") from exc
            return True

    async def write_file(
        self,
        path: str,
        chunks: AsyncIterator[bytes],
        sha256: str,
        mode: int,
        still_open: Callable[[], object] = lambda: None,
        owner: Owner = None,
    ) -> int:
        """Receive the file ``path`` (new, or replacing a file there) with ``owner`` and
        ``mode``; its size. ``still_open`` raises when the file may no longer take its
        place (it is called right before, once the whole file arrived)."""
        with self._parent(path) as (fd, name):
            if DataTree._found(fd, name) not in (None, "file"):
                raise UsageError(f"cannot write file {path!r}: something else is there")
            part = f".haul-{secrets.token_hex(8)}.part"
            try:
                out = os.open(
                    part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd
                )
            except OSError as exc:
                raise TransportError(f"cannot create {path!r}: {exc.strerror}") from exc
            try:
                size = await _write_all(out, chunks, sha256, path)
                if owner is not None:
                    os.fchown(out, *owner)
                os.fchmod(out, mode & MODE_BITS)
                os.close(out)
                out = -1
                still_open()
                os.rename(part, name, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError as exc:
                raise TransportError(f"writing {path!r} failed: {exc.strerror}") from exc
            finally:
                if out >= 0:
                    os.close(out)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part, dir_fd=fd)
            return size


def _mark_opaque(fd: int, name: str, opaque: str | None) -> None:
    """Mark the directory ``name`` (in ``fd``, not a link) opaque, or not."""
    sub = os.open(name, DIR_FLAGS, dir_fd=fd)
    try:
        if opaque is not None:
            os.setxattr(sub, OPAQUE, opaque.encode())
            return
        try:
            os.removexattr(sub, OPAQUE)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    finally:
        os.close(sub)


async def _write_all(fd: int, chunks: AsyncIterator[bytes], sha256: str, path: str) -> int:
    h = hashlib.sha256()
    size = await write_chunks(fd, chunks, h)  # in a worker thread, not on the event loop
    if h.hexdigest() != sha256.lower():
        raise ChecksumMismatch(f"data file {path!r} arrived corrupt (SHA-256 mismatch)")
    return size
