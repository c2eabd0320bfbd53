"""Applying a plan (haul/transport/treeplan.py) to a tree on this machine: the lab's
transport between hosts that share it, and the tests' way to check a plan.

Each file is copied to a temporary name next to its place, hashed as it is read,
renamed into place (a half-written file never replaces a good one), and checked
where it landed against that hash.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path

from haul.errors import ChecksumMismatch, TransportError
from haul.transport.imagecopy import CHUNK, sha256_of
from haul.transport.rounds import Sent
from haul.transport.treeplan import Node, Plan
from haul.transport.treescan import Kind, open_inside

#: permission bits a sent file or FIFO keeps (no set-id bits: the receiver writes as root)
FILE_BITS = 0o777


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
            _chmod(dst / node.path, node)
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
        target.mkdir()
        os.chmod(target, node.mode)
    elif node.kind is Kind.SYMLINK and node.target is not None:
        os.symlink(node.target, target)
    elif node.kind is Kind.FIFO:
        os.mkfifo(target)
        os.chmod(target, node.mode & FILE_BITS)
    else:
        raise TransportError(f"cannot make {target}: a {node.kind.value} is sent, not made")


def _chmod(target: Path, node: Node) -> None:
    if stat.S_ISLNK(os.lstat(target).st_mode):
        raise TransportError(f"{target} is a link here; its mode is not set")
    os.chmod(target, node.mode if node.kind is Kind.DIR else node.mode & FILE_BITS)


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
                os.fchmod(fout.fileno(), node.mode & FILE_BITS)
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    if sha256_of(target) != h.hexdigest():
        raise ChecksumMismatch(f"data file {target} does not match its checksum")
    return size
