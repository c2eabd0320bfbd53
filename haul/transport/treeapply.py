"""Applying a plan (haul/transport/treeplan.py) to a tree on this machine: the lab's
transport between hosts that share it, and the tests' way to check a plan.

Each file is copied to a temporary name next to its place, hashed as it is read,
renamed into place (a half-written file never replaces a good one), and checked
where it landed against that hash. Every entry gets its owner, then its whole mode
(set-id bits too; a link keeps no mode).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from pathlib import Path

from haul.errors import ChecksumMismatch, TransportError
from haul.transport.imagecopy import CHUNK, sha256_of
from haul.transport.rounds import Sent
from haul.transport.treeplan import Node, Plan
from haul.transport.treescan import OPAQUE, Kind, open_inside

#: the mode bits an entry keeps: all of them (CRIU checks a reopened file's whole mode)
MODE_BITS = 0o7777


def apply_plan(src: Path, dst: Path, plan: Plan) -> Sent:
    """Make ``dst`` (a directory) hold what ``plan`` says, files read from ``src``."""
    try:
        for path in plan.remove:
            _remove(dst / path)
        for node in plan.make:
            _make(dst / node.path, node)
        files = sent = 0
        unsent: list[str] = []
        for node in plan.send:
            size = _copy(src, dst, node)
            if size is None:
                unsent.append(node.path)
            else:
                files, sent = files + 1, sent + size
        for node in plan.modes:
            _set_attrs(dst / node.path, node)
    except OSError as exc:
        where = exc.filename or dst
        raise TransportError(f"updating {where} failed: {exc.strerror or exc}") from exc
    return Sent(files, sent, tuple(unsent))


def _remove(target: Path) -> None:
    try:
        if stat.S_ISDIR(os.lstat(target).st_mode):
            target.rmdir()
        else:
            target.unlink()
    except FileNotFoundError:
        pass


def _make(target: Path, node: Node) -> None:
    if node.kind is Kind.DIR:
        target.mkdir(mode=0o700)
    elif node.kind is Kind.SYMLINK and node.target is not None:
        os.symlink(node.target, target)
    elif node.kind is Kind.FIFO:
        os.mkfifo(target, 0o600)
    elif node.kind is Kind.SOCKET:
        os.mknod(target, stat.S_IFSOCK | 0o600)
    elif node.kind is Kind.WHITEOUT:
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))
    else:
        raise TransportError(f"cannot make {target}: a {node.kind.value} is sent, not made")
    _set_attrs(target, node)


def _set_attrs(target: Path, node: Node) -> None:
    """The owner, then the mode (a new owner clears set-id bits); a link's owner only."""
    is_link = stat.S_ISLNK(os.lstat(target).st_mode)
    if is_link != (node.kind is Kind.SYMLINK):
        raise TransportError(f"{target} is {'a' if is_link else 'no'} link here; not changed")
    os.chown(target, node.uid, node.gid, follow_symlinks=False)
    if not is_link:
        os.chmod(target, node.mode & MODE_BITS)
    if node.kind is Kind.DIR:
        _mark_opaque(target, node.opaque)


def _mark_opaque(target: Path, opaque: str | None) -> None:
    if opaque is not None:
        os.setxattr(target, OPAQUE, opaque.encode(), follow_symlinks=False)
        return
    try:
        os.removexattr(target, OPAQUE, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _copy(src: Path, dst: Path, node: Node) -> int | None:
    fd = open_inside(src, node.path)
    if fd is None:
        return None
    target = dst / node.path
    part = target.with_name(f".haul-{secrets.token_hex(8)}.part")
    h = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb") as fin:
        out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(out, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
                os.fchown(fout.fileno(), node.uid, node.gid)
                os.fchmod(fout.fileno(), node.mode & MODE_BITS)
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    if sha256_of(target) != h.hexdigest():
        raise ChecksumMismatch(f"data file {target} does not match its checksum")
    return size
